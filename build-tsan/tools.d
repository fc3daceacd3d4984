build-tsan/tools.o: fs/tools.c fs/tools.h fs/buf.h fs/config.h fs/gen.h \
 fs/errclass.h fs/log.h fs/metrics.h fs/names.h fs/util.h
fs/tools.h:
fs/buf.h:
fs/config.h:
fs/gen.h:
fs/errclass.h:
fs/log.h:
fs/metrics.h:
fs/names.h:
fs/util.h:

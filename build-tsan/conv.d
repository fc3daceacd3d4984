build-tsan/conv.o: fs/conv.c fs/conv.h fs/errclass.h fs/config.h fs/gen.h \
 fs/buf.h fs/log.h fs/metrics.h fs/models.h fs/names.h fs/retry.h \
 fs/util.h
fs/conv.h:
fs/errclass.h:
fs/config.h:
fs/gen.h:
fs/buf.h:
fs/log.h:
fs/metrics.h:
fs/models.h:
fs/names.h:
fs/retry.h:
fs/util.h:

build-tsan/gen.o: fs/gen.c fs/gen.h fs/buf.h fs/errclass.h fs/api.h \
 fs/config.h fs/http.h fs/log.h fs/metrics.h fs/mock.h fs/models.h \
 fs/retry.h fs/sse.h fs/tools.h fs/util.h
fs/gen.h:
fs/buf.h:
fs/errclass.h:
fs/api.h:
fs/config.h:
fs/http.h:
fs/log.h:
fs/metrics.h:
fs/mock.h:
fs/models.h:
fs/retry.h:
fs/sse.h:
fs/tools.h:
fs/util.h:

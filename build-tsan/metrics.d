build-tsan/metrics.o: fs/metrics.c fs/metrics.h fs/buf.h fs/errclass.h \
 fs/retry.h
fs/metrics.h:
fs/buf.h:
fs/errclass.h:
fs/retry.h:

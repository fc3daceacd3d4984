build-tsan/health.o: fs/health.c fs/health.h fs/config.h fs/models.h \
 fs/errclass.h fs/retry.h
fs/health.h:
fs/config.h:
fs/models.h:
fs/errclass.h:
fs/retry.h:

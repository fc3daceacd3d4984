build-tsan/retry.o: fs/retry.c fs/retry.h fs/config.h fs/log.h fs/util.h
fs/retry.h:
fs/config.h:
fs/log.h:
fs/util.h:

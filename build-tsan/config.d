build-tsan/config.o: fs/config.c fs/config.h fs/log.h
fs/config.h:
fs/log.h:

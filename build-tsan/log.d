build-tsan/log.o: fs/log.c fs/log.h
fs/log.h:

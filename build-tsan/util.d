build-tsan/util.o: fs/util.c fs/util.h
fs/util.h:

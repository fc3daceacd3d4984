build-tsan/buf.o: fs/buf.c fs/buf.h
fs/buf.h:

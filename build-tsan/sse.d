build-tsan/sse.o: fs/sse.c fs/sse.h fs/buf.h
fs/sse.h:
fs/buf.h:

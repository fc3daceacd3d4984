build-tsan/api.o: fs/api.c fs/api.h fs/buf.h fs/errclass.h fs/config.h
fs/api.h:
fs/buf.h:
fs/errclass.h:
fs/config.h:

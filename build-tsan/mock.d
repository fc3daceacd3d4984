build-tsan/mock.o: fs/mock.c fs/mock.h fs/api.h fs/buf.h fs/errclass.h \
 fs/config.h fs/util.h
fs/mock.h:
fs/api.h:
fs/buf.h:
fs/errclass.h:
fs/config.h:
fs/util.h:

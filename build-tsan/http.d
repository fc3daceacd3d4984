build-tsan/http.o: fs/http.c fs/http.h fs/buf.h fs/errclass.h fs/config.h \
 fs/log.h fs/util.h
fs/http.h:
fs/buf.h:
fs/errclass.h:
fs/config.h:
fs/log.h:
fs/util.h:

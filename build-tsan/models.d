build-tsan/models.o: fs/models.c fs/models.h fs/errclass.h fs/buf.h \
 fs/config.h fs/http.h fs/log.h fs/util.h
fs/models.h:
fs/errclass.h:
fs/buf.h:
fs/config.h:
fs/http.h:
fs/log.h:
fs/util.h:

build-tsan/main.o: fs/main.c fs/config.h fs/conv.h fs/errclass.h fs/gen.h \
 fs/buf.h fs/http.h fs/log.h fs/models.h fs/ops.h \
 /usr/include/fuse3/fuse_lowlevel.h /usr/include/fuse3/fuse_common.h \
 /usr/include/fuse3/libfuse_config.h /usr/include/fuse3/fuse_opt.h \
 /usr/include/fuse3/fuse_log.h fs/retry.h fs/tools.h
fs/config.h:
fs/conv.h:
fs/errclass.h:
fs/gen.h:
fs/buf.h:
fs/http.h:
fs/log.h:
fs/models.h:
fs/ops.h:
/usr/include/fuse3/fuse_lowlevel.h:
/usr/include/fuse3/fuse_common.h:
/usr/include/fuse3/libfuse_config.h:
/usr/include/fuse3/fuse_opt.h:
/usr/include/fuse3/fuse_log.h:
fs/retry.h:
fs/tools.h:

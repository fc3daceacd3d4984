build-tsan/ops.o: fs/ops.c fs/ops.h /usr/include/fuse3/fuse_lowlevel.h \
 /usr/include/fuse3/fuse_common.h /usr/include/fuse3/libfuse_config.h \
 /usr/include/fuse3/fuse_opt.h /usr/include/fuse3/fuse_log.h fs/buf.h \
 fs/config.h fs/conv.h fs/errclass.h fs/health.h fs/jsonl.h fs/log.h \
 fs/metrics.h fs/models.h fs/names.h fs/tools.h fs/util.h
fs/ops.h:
/usr/include/fuse3/fuse_lowlevel.h:
/usr/include/fuse3/fuse_common.h:
/usr/include/fuse3/libfuse_config.h:
/usr/include/fuse3/fuse_opt.h:
/usr/include/fuse3/fuse_log.h:
fs/buf.h:
fs/config.h:
fs/conv.h:
fs/errclass.h:
fs/health.h:
fs/jsonl.h:
fs/log.h:
fs/metrics.h:
fs/models.h:
fs/names.h:
fs/tools.h:
fs/util.h:

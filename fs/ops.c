/* ops.c - the FUSE low-level operations table, filled from the fs_*.c
 * files (see fs_int.h for which does what), and the layer's set-up. */
#include "ops.h"

#include "fs_int.h"
#include "tooldef.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

const struct config *fs_cfg;
int fs_state_fd = -1, fs_tools_fd = -1;
uid_t fs_uid;
gid_t fs_gid;
time_t fs_start_time;

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Writes must reach us one by one and at once: no writeback cache. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* Cached pages go when size or mtime change (lmsfs appends). */
	if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
		conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
	/* Bigger requests: 1 MiB per read/write instead of 128 KiB. */
	conn->max_write = 1u << 20;
	/* No OPENDIR/RELEASEDIR per directory, and every listing cached
	 * (fs_dir.c); lmsfs announces the changes it makes. */
	if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
		conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
		fs_no_opendir = 1;
	}
	/* Reads of backing files are spliced to the kernel through a pipe
	 * (fs_read.c): no copy through a buffer of ours. */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
}

int ops_init(const struct config *c, int sfd)
{
	fs_cfg = c;
	fs_state_fd = sfd;
	fs_uid = getuid();
	fs_gid = getgid();
	fs_start_time = time(NULL);
	if (mkdirat(sfd, "tools", 0700) < 0 && errno != EEXIST)
		return -errno;
	fs_tools_fd = tooldef_dir_fd();
	if (fs_tools_fd < 0)
		fs_tools_fd = openat(sfd, "tools", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	return fs_tools_fd < 0 ? -errno : 0;
}

const struct fuse_lowlevel_ops ops_table = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.readlink = op_readlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.create = op_create,
};

/* fs_file.c - open files: handles and their dispatch. Open, read, write,
 * flush, release, fsync and truncate go to the file_ops of the file's
 * kind (fs_special.c says which); this file also holds the simple kinds:
 * plain files, stream, and generated files (health, metrics, the files of models/,
 * .status, tools/.status). */
#include "fs_int.h"

#include "conv.h"
#include "fsio.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "tooldef.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- handles -------------------------------------------------------------- */

static void fh_free_link(struct hlink *l)
{
	fh_free((struct fh *)l);
}

struct fh_each_arg {
	void (*fn)(struct fh *f, void *arg);
	void *arg;
};

static void each_file(struct hlink *l, void *arg)
{
	struct fh_each_arg *a = arg;
	if (!l->is_dir)
		a->fn((struct fh *)l, a->arg);
}

void fh_each(void (*fn)(struct fh *f, void *arg), void *arg)
{
	struct fh_each_arg a = {fn, arg};
	hlink_each(each_file, &a);
}

struct fh *fh_new(const struct file_ops *ops, uint64_t ino)
{
	struct fh *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->ops = ops;
	f->kind = ops->kind;
	f->fd = -1;
	f->ino = ino;
	pthread_mutex_init(&f->lock, NULL);
	buf_init(&f->data, 0);
	hlink_add(&f->link, 0, fh_free_link);
	return f;
}

void fh_free(struct fh *f)
{
	if (!f)
		return;
	hlink_del(&f->link);
	if (f->fd >= 0)
		close(f->fd);
	buf_free(&f->data);
	free(f->answer);
	conv_put(f->conv);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

void fh_record_times(struct fh *f, int to_set, const struct stat *attr)
{
	pthread_mutex_lock(&f->lock);
	if (to_set & FUSE_SET_ATTR_MODE) {
		f->mode_set = 1;
		f->new_mode = attr->st_mode & 07777;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		f->times_set = 1;
		f->times[0].tv_sec = f->times[1].tv_sec = 0;
		f->times[0].tv_nsec = f->times[1].tv_nsec = UTIME_OMIT;
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			f->times[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			f->times[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			f->times[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			f->times[1] = attr->st_mtim;
	}
	pthread_mutex_unlock(&f->lock);
}

struct times_arg {
	const struct file_ops *ops;
	uint64_t ino;
	int to_set;
	const struct stat *attr;
};

static void note_times(struct fh *f, void *arg)
{
	const struct times_arg *t = arg;
	if (f->ops == t->ops && f->writable && f->ino == t->ino)
		fh_record_times(f, t->to_set, t->attr);
}

void fh_note_times(const struct file_ops *ops, uint64_t ino, int to_set,
		   const struct stat *attr)
{
	struct times_arg t = {ops, ino, to_set, attr};
	fh_each(note_times, &t);
}

int fh_new_fd(const struct file_ops *ops, uint64_t ino, int fd, struct fh **out)
{
	struct fh *f = fh_new(ops, ino);
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	f->fd = fd;
	*out = f;
	return 0;
}

struct fh *FH(struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

/* --- replies --------------------------------------------------------------- */

void prepare_slice(const char *data, size_t total, size_t size, off_t off,
			  struct prepared *p)
{
	p->err = 0;
	p->buf = NULL;
	p->len = 0;
	if ((size_t)off >= total)
		return;
	if (size > total - (size_t)off)
		size = total - (size_t)off;
	p->buf = malloc(size ? size : 1);
	if (!p->buf) {
		p->err = ENOMEM;
		return;
	}
	memcpy(p->buf, data + off, size);
	p->len = size;
}

void send_prepared(fuse_req_t req, struct prepared *p)
{
	if (p->err)
		fuse_reply_err(req, p->err);
	else
		fuse_reply_buf(req, p->buf, p->len);
	free(p->buf);
	p->buf = NULL;
}

void note_reject(const char *conv, const char *what, const char *why)
{
	struct conv *c = conv_get(conv);
	char msg[700];
	snprintf(msg, sizeof(msg), "%s: %s", what, why);
	log_warnx("conversation %s: refused %s", conv, msg);
	if (c) {
		conv_note_rejected(c, msg);
		conv_put(c);
	}
}

/* --- plain files ------------------------------------------------------------- */

int open_backing(const struct nodeinfo *ni, int flags, mode_t mode)
{
	char p[PATH_MAX];
	int ret;
	if (ni->kind == K_TFILE)
		return fsio_open(fs_tools_fd, ni->name, flags, mode);
	ret = node_path(p, sizeof(p), ni);
	if (ret)
		return ret;
	return fsio_open(conv_root_fd(), p, flags, mode);
}

/* A plain file of the backing store (tools, editor files, settings): the
 * caller's flags as they are, O_EXCL when creating; cached by the kernel. */
static int plain_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		      int creating, struct fh **out, int *cache)
{
	int fd = open_backing(ni, (flags & ~(O_CREAT | O_EXCL)) |
					  (creating ? O_CREAT | O_EXCL : 0),
			      mode);
	if (fd < 0)
		return fd;
	*cache = CACHE_PAGES;
	return fh_new_fd(&plain_ops, ino, fd, out);
}

static ssize_t plain_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			   size_t size, off_t off, int append)
{
	(void)ni;
	(void)append;
	ssize_t n = pwrite(f->fd, data, size, off);
	return n < 0 ? -errno : n;
}

static int plain_fsync(struct fh *f, const struct nodeinfo *ni, int datasync)
{
	(void)ni;
	return (datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0 ? -errno : 0;
}

int truncate_plain(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	int fd, ret = 0;
	(void)f;
	fd = open_backing(ni, O_WRONLY, 0);
	if (fd < 0)
		return fd;
	if (ftruncate(fd, size) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* A temporary renamed over messages.jsonl right after this keeps the
 * lines appended meanwhile (fs_hist.c). */
static void plain_release(struct fh *f, const struct nodeinfo *ni)
{
	(void)f;
	if (ni->kind == K_CFILE)
		temp_closed(ni->conv, ni->name);
}

const struct file_ops plain_ops = {
	.kind = FH_PASS,
	.open = plain_open,
	.release = plain_release,
	.write = plain_write,
	.fsync = plain_fsync,
	.truncate = truncate_plain,
};

/* --- stream: append-only ------------------------------------------------------ */

static int stream_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		       int creating, struct fh **out, int *cache)
{
	int wr = (flags & O_ACCMODE) != O_RDONLY, fd;

	if (wr && (flags & O_TRUNC)) {
		struct stat st;
		char p[PATH_MAX];
		if (cpath(p, sizeof(p), ni->conv, ni->name) == 0 &&
		    fstatat(conv_root_fd(), p, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_size > 0)
			return -EPERM;
	}
	/* Writers append whatever offset they ask for: lmsfs appends to the
	 * same file at the same time. */
	fd = open_backing(ni, (wr ? O_RDWR | O_APPEND : O_RDONLY) |
				      (creating ? O_CREAT | O_EXCL : 0),
			  mode);
	if (fd < 0 || (fd = fh_new_fd(&stream_ops, ino, fd, out)) < 0)
		return fd;
	(*out)->writable = wr;
	/* Readers keep their pages: every append lmsfs makes drops them
	 * (conv_changed), and so does a size the kernel sees grow. */
	*cache = wr ? CACHE_NONE : CACHE_KEEP;
	return 0;
}

static ssize_t stream_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			    size_t size, off_t off, int append)
{
	struct stat st;
	ssize_t n;

	if (fstat(f->fd, &st) < 0)
		return -errno;
	/* Append-only: new text goes at the end, nothing is rewritten. */
	if (off != st.st_size && !append) {
		log_warnx("conversation %s: refused a write into the middle of stream", ni->conv);
		return -EPERM;
	}
	n = pwrite(f->fd, data, size, st.st_size);
	if (n > 0) {
		char p[PATH_MAX];
		/* Readers' cached pages: the kernel does not drop them for a
		 * write it did not cache. */
		if (snprintf(p, sizeof(p), "conversations/%s/%s", ni->conv, ni->name) <
		    (int)sizeof(p))
			fs_notify_path(p);
	}
	return n < 0 ? -errno : n;
}

/* It may grow (zeros, like a disk), never shrink. */
static int stream_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	struct stat st;
	char p[PATH_MAX];
	int ret = cpath(p, sizeof(p), ni->conv, ni->name);
	if (ret)
		return ret;
	if (fstatat(conv_root_fd(), p, &st, AT_SYMLINK_NOFOLLOW) == 0 && size < st.st_size)
		return -EPERM;
	return truncate_plain(ni, f, size);
}

const struct file_ops stream_ops = {
	.kind = FH_STREAM,
	.open = stream_open,
	.write = stream_write,
	.fsync = plain_fsync,
	.truncate = stream_truncate,
};

/* --- generated files: made when opened, like /proc ---------------------------- */

static int fill_generated(struct fh *f, const struct nodeinfo *ni)
{
	char *s = NULL;
	int ret = 0;

	switch (ni->kind) {
	case K_HEALTH:
		s = health_json(fs_cfg);
		break;
	case K_METRICS:
		return metrics_render(&f->data);
	case K_MODEL:
		s = model_json(ni->name);
		if (!s)
			return -ENOENT;
		break;
	case K_STATUS: {
		struct conv *c = conv_get(ni->conv);
		if (!c)
			return -ENOENT;
		s = conv_status_json(c);
		conv_put(c);
		break;
	}
	case K_TSTATUS:
		s = tooldef_status();
		break;
	default:
		return -EINVAL;
	}
	if (!s)
		return -ENOMEM;
	ret = buf_puts(&f->data, s);
	free(s);
	return ret;
}

static int generated_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags,
			  mode_t mode, int creating, struct fh **out, int *cache)
{
	(void)mode;
	(void)creating;
	struct fh *f;
	int ret;

	if ((flags & O_ACCMODE) != O_RDONLY)
		return -EACCES;
	f = fh_new(&generated_ops, ino);
	if (!f)
		return -ENOMEM;
	ret = fill_generated(f, ni);
	if (ret) {
		fh_free(f);
		return ret;
	}
	*cache = CACHE_NONE;
	*out = f;
	return 0;
}

/* Serves f->data: generated content, or a writer's pending copy. */
void read_data(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	struct prepared p;
	pthread_mutex_lock(&f->lock);
	prepare_slice(f->data.data, f->data.len, size, off, &p);
	pthread_mutex_unlock(&f->lock);
	send_prepared(req, &p);
}

const struct file_ops generated_ops = {
	.kind = FH_BUF,
	.open = generated_open,
	.read = read_data,
};

/* --- dispatch ------------------------------------------------------------------- */

static void reply_open(fuse_req_t req, struct fuse_file_info *fi, struct fh *f, int cache)
{
	fi->fh = (uintptr_t)f;
	fi->direct_io = cache == CACHE_NONE;
	fi->keep_cache = cache == CACHE_KEEP;
	/* A reader's close() has nothing to commit (every flush acts on
	 * what was written): no FLUSH round trip. */
	fi->noflush = (fi->flags & O_ACCMODE) == O_RDONLY;
	if (fuse_reply_open(req, fi) == -ENOENT)
		fh_free(f); /* the opener went away */
}

/* Opens (or creates) a file; shared by open and create. */
static int do_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		   int creating, struct fh **out, int *cache)
{
	const struct file_ops *ops = special_ops(ni);
	*cache = CACHE_NONE;
	if (!ops)
		return -EISDIR;
	return ops->open(ino, ni, flags, mode, creating, out, cache);
}

void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nodeinfo ni;
	struct fh *f = NULL;
	int cache, ret = node_info(ino, &ni);

	if (ret == 0)
		ret = do_open(ino, &ni, fi->flags, 0644, 0, &f, &cache);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	reply_open(req, fi, f, cache);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct nodeinfo pi, ni;
	struct fh *f = NULL;
	struct stat st;
	struct fuse_entry_param e;
	uint64_t ino;
	int cache, ret = node_info(parent, &pi);
	enum kind k;

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (pi.kind == K_MODELS) {
		models_op_create(req, parent, name, mode, fi);
		return;
	}
	if (pi.kind != K_CONV && pi.kind != K_TOOLS && pi.kind != K_SUBDIR) {
		fuse_reply_err(req, pi.kind == K_CONVS ? EPERM : EACCES);
		return;
	}
	if (pi.kind == K_CONV && is_hidden_ctl(name, &k)) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	ret = names_file_ok(name);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	memset(&ni, 0, sizeof(ni));
	ni.kind = pi.kind == K_CONV ? K_CFILE : pi.kind == K_SUBDIR ? K_SFILE : K_TFILE;
	ni.parent = parent;
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
	if (pi.kind == K_SUBDIR)
		snprintf(ni.sub, sizeof(ni.sub), "%.7s", pi.name);
	if (ni.kind == K_CFILE)
		temp_remember(ni.conv, name);
	ret = do_open(0, &ni, fi->flags, mode & 07777, 1, &f, &cache);
	if (ret == 0)
		ret = attr_of(0, &ni, &st);
	if (ret) {
		fh_free(f);
		fuse_reply_err(req, -ret);
		return;
	}
	if (!node_get(parent, name, ni.kind, &ino)) {
		fh_free(f);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	f->ino = ino;
	fill_entry(&e, ino, &ni, &st);
	fi->fh = (uintptr_t)f;
	fi->direct_io = cache == CACHE_NONE;
	fi->keep_cache = cache == CACHE_KEEP;
	if (fuse_reply_create(req, &e, fi) != 0) {
		fh_free(f);
		node_forget(ino, 1);
	}
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	     struct fuse_file_info *fi)
{
	(void)ino;
	struct fh *f = FH(fi);

	(f->ops->read ? f->ops->read : read_fd)(req, f, size, off);
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
	      struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	ssize_t n;
	int ret = node_info(ino, &ni);

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (f->ops->write_req) {
		f->ops->write_req(req, f, &ni, data, size, off, (fi->flags & O_APPEND) != 0);
		return;
	}
	if (!f->ops->write) {
		fuse_reply_err(req, EBADF);
		return;
	}
	n = f->ops->write(f, &ni, data, size, off, (fi->flags & O_APPEND) != 0);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	int ret = 0;

	if (f->ops->flush_req) {
		ret = node_info(ino, &ni);
		if (ret == 0)
			f->ops->flush_req(req, f, &ni);
		else
			fuse_reply_err(req, -ret);
		return;
	}
	if (f->ops->flush && (ret = node_info(ino, &ni)) == 0) {
		pthread_mutex_lock(&f->lock);
		ret = f->ops->flush(f, &ni);
		pthread_mutex_unlock(&f->lock);
	}
	fuse_reply_err(req, -ret);
}

void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;

	if (f->ops->release && node_info(ino, &ni) == 0) {
		pthread_mutex_lock(&f->lock);
		f->ops->release(f, &ni);
		pthread_mutex_unlock(&f->lock);
	}
	fh_free(f);
	fuse_reply_err(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	int ret = 0;

	if (f->ops->fsync && (ret = node_info(ino, &ni)) == 0) {
		pthread_mutex_lock(&f->lock);
		ret = f->ops->fsync(f, &ni, datasync);
		pthread_mutex_unlock(&f->lock);
	}
	fuse_reply_err(req, -ret);
}

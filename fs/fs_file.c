/* fs_file.c - open files: handles, open and create, and read, write,
 * flush, release and fsync for every kind of file (prompt, .ctl, stream,
 * generated files, plain files; messages.jsonl's writes are checked in
 * fs_hist.c and .reply's reads wait in fs_wait.c). */
#include "fs_int.h"

#include "config.h"
#include "conv.h"
#include "fsio.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "names.h"
#include "ops.h"
#include "store.h"
#include "tools.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;

static struct hlink handles = {&handles, &handles, 0};

void hlink_add(struct hlink *l, int is_dir)
{
	l->is_dir = is_dir;
	pthread_mutex_lock(&handles_lock);
	l->next = handles.next;
	l->prev = &handles;
	handles.next->prev = l;
	handles.next = l;
	pthread_mutex_unlock(&handles_lock);
}

void fh_each(void (*fn)(struct fh *f, void *arg), void *arg)
{
	pthread_mutex_lock(&handles_lock);
	for (struct hlink *l = handles.next; l != &handles; l = l->next)
		if (!l->is_dir)
			fn((struct fh *)l, arg);
	pthread_mutex_unlock(&handles_lock);
}

void hlink_del(struct hlink *l)
{
	pthread_mutex_lock(&handles_lock);
	l->prev->next = l->next;
	l->next->prev = l->prev;
	pthread_mutex_unlock(&handles_lock);
}

struct fh *fh_new(enum fh_kind kind, uint64_t ino)
{
	struct fh *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->kind = kind;
	f->fd = -1;
	f->ino = ino;
	pthread_mutex_init(&f->lock, NULL);
	buf_init(&f->data, 0);
	hlink_add(&f->link, 0);
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

struct fh *FH(struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

static void reply_open(fuse_req_t req, struct fuse_file_info *fi, struct fh *f,
		       int direct)
{
	fi->fh = (uintptr_t)f;
	fi->direct_io = direct == CACHE_NONE;
	fi->keep_cache = direct == CACHE_KEEP;
	if (fuse_reply_open(req, fi) == -ENOENT)
		fh_free(f); /* the opener went away */
}

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
		s = tools_status();
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

static int open_backing(const struct nodeinfo *ni, int flags, mode_t mode)
{
	char p[PATH_MAX];
	int ret;
	if (ni->kind == K_TFILE)
		return fsio_open(fs_tools_fd, ni->name, flags, mode);
	ret = cpath(p, sizeof(p), ni->conv, ni->name);
	if (ret)
		return ret;
	return fsio_open(conv_root_fd(), p, flags, mode);
}

/* A plain file of the backing store (tools, editor files, settings): the
 * caller's flags as they are, O_EXCL when creating. */
static int open_pass(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		     int creating, struct fh **out)
{
	int fd = open_backing(ni, (flags & ~(O_CREAT | O_EXCL)) |
					  (creating ? O_CREAT | O_EXCL : 0),
			      mode);
	if (fd < 0)
		return fd;
	*out = fh_new(FH_PASS, ino);
	if (!*out) {
		close(fd);
		return -ENOMEM;
	}
	(*out)->fd = fd;
	return 0;
}

/* Opens (or creates) a file; shared by open and create. */
static int do_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags,
		   mode_t mode, int creating, struct fh **out, int *direct)
{
	int acc = flags & O_ACCMODE, wr = acc != O_RDONLY;
	struct fh *f = NULL;
	int ret = 0;

	*direct = CACHE_NONE;
	switch (ni->kind) {
	case K_ROOT: case K_MODELS: case K_CONVS: case K_TOOLS: case K_CONV:
		return -EISDIR;
	case K_HEALTH: case K_METRICS: case K_MODEL: case K_STATUS: case K_TSTATUS:
		if (wr)
			return -EACCES;
		f = fh_new(FH_BUF, ino);
		if (!f)
			return -ENOMEM;
		ret = fill_generated(f, ni);
		break;
	case K_REPLY:
		if (wr)
			return -EACCES;
		{
			struct conv *c = conv_get(ni->conv);
			if (!c)
				return -ENOENT;
			f = fh_new(FH_REPLY, ino);
			if (f) {
				f->target = conv_wait_target(c);
				f->conv = c;
			} else {
				conv_put(c);
			}
		}
		break;
	case K_CTL:
		if (!wr)
			return -EACCES;
		f = fh_new(FH_CTL, ino);
		break;
	case K_TFILE:
		ret = open_pass(ino, ni, flags, mode, creating, &f);
		*direct = CACHE_PAGES;
		break;
	case K_CFILE:
		if (strcmp(ni->name, "prompt") == 0) {
			if (creating) {
				int fd = open_backing(ni, O_WRONLY | O_CREAT, mode);
				if (fd < 0)
					return fd;
				close(fd);
			}
			f = fh_new(FH_PROMPT, ino);
			if (f) {
				f->writable = wr;
				f->data.max = (size_t)fs_cfg->max_prompt_bytes;
			}
			break;
		}
		if (strcmp(ni->name, "messages.jsonl") == 0) {
			int fd = open_backing(ni, O_RDONLY | (creating ? O_CREAT : 0), mode);
			if (fd < 0)
				return fd;
			f = fh_new(FH_HIST, ino);
			if (!f) {
				close(fd);
				return -ENOMEM;
			}
			f->fd = fd;
			f->writable = wr;
			f->data.max = STORE_HISTORY_MAX;
			/* Readers go through the page cache, kept from one open
			 * to the next (readahead; a second cat or grep costs no
			 * FUSE round trips). Appends by lmsfs change size and
			 * mtime, which the kernel sees on its next getattr
			 * (attributes are never cached) and then drops the
			 * stale pages (FUSE_CAP_AUTO_INVAL_DATA). */
			if (!wr)
				*direct = CACHE_KEEP;
			if (wr && (flags & O_APPEND) && !(flags & O_TRUNC))
				f->mode = HM_APPEND;
			else if (wr)
				ret = hist_open_replace(f, ni, flags, creating);
			break;
		}
		if (strcmp(ni->name, "stream") == 0) {
			int fd;
			if (wr && (flags & O_TRUNC)) {
				struct stat st;
				char p[PATH_MAX];
				cpath(p, sizeof(p), ni->conv, ni->name);
				if (fstatat(conv_root_fd(), p, &st, 0) == 0 && st.st_size > 0)
					return -EPERM;
			}
			/* Writers append whatever offset they ask for: lmsfs
			 * appends to the same file at the same time. */
			fd = open_backing(ni, (acc == O_RDONLY ? O_RDONLY : O_RDWR | O_APPEND) |
						      (creating ? O_CREAT | O_EXCL : 0),
					  mode);
			if (fd < 0)
				return fd;
			f = fh_new(FH_STREAM, ino);
			if (f) {
				f->fd = fd;
				f->writable = wr;
			} else {
				close(fd);
			}
			break;
		}
		ret = open_pass(ino, ni, flags, mode, creating, &f);
		*direct = CACHE_PAGES;
		break;
	}
	if (!f)
		return ret ? ret : -ENOMEM;
	if (ret) {
		fh_free(f);
		return ret;
	}
	*out = f;
	return 0;
}

void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nodeinfo ni;
	struct fh *f = NULL;
	int direct, ret = node_info(ino, &ni);

	if (ret == 0)
		ret = do_open(ino, &ni, fi->flags, 0644, 0, &f, &direct);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	reply_open(req, fi, f, direct);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct nodeinfo pi, ni;
	struct fh *f = NULL;
	struct stat st;
	struct fuse_entry_param e;
	uint64_t ino;
	int direct, ret = node_info(parent, &pi);
	enum kind k;

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (pi.kind != K_CONV && pi.kind != K_TOOLS) {
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
	ni.kind = pi.kind == K_CONV ? K_CFILE : K_TFILE;
	ni.parent = parent;
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
	if (ni.kind == K_CFILE)
		temp_remember(ni.conv, name);
	ret = do_open(0, &ni, fi->flags, mode & 07777, 1, &f, &direct);
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
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr = st;
	e.attr.st_ino = ino;
	e.entry_timeout = 1.0;
	fi->fh = (uintptr_t)f;
	fi->direct_io = direct == CACHE_NONE;
	fi->keep_cache = direct == CACHE_KEEP;
	if (fuse_reply_create(req, &e, fi) != 0) {
		fh_free(f);
		node_forget(ino, 1);
	}
}

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

void ops_cleanup(void)
{
	for (;;) {
		struct hlink *l;
		pthread_mutex_lock(&handles_lock);
		l = handles.next == &handles ? NULL : handles.next;
		pthread_mutex_unlock(&handles_lock);
		if (!l)
			break;
		if (l->is_dir)
			dir_free((struct dirh *)l);
		else
			fh_free((struct fh *)l);
	}
}

/* --- read / write ---------------------------------------------------------- */

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)ino;
	struct fh *f = FH(fi);

	switch (f->kind) {
	case FH_REPLY:
		read_reply(req, f, size, off);
		return;
	case FH_PROMPT:
	case FH_CTL:
		fuse_reply_buf(req, NULL, 0);
		return;
	case FH_BUF:
		if ((size_t)off >= f->data.len) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		{
			struct prepared p;
			prepare_slice(f->data.data, f->data.len, size, off, &p);
			send_prepared(req, &p);
		}
		return;
	case FH_HIST:
		pthread_mutex_lock(&f->lock);
		if (f->writable && f->mode == HM_REPLACE) {
			struct prepared p;
			prepare_slice(f->data.data, f->data.len, size, off, &p);
			pthread_mutex_unlock(&f->lock);
			send_prepared(req, &p);
			return;
		}
		if (f->writable && f->mode == HM_APPEND && f->data.len) {
			/* An a+ reader sees its own appends before they are
			 * committed at close: they follow the file. */
			struct stat st;
			if (fstat(f->fd, &st) == 0 && off >= st.st_size) {
				struct prepared p;
				prepare_slice(f->data.data, f->data.len, size, off - st.st_size, &p);
				pthread_mutex_unlock(&f->lock);
				send_prepared(req, &p);
				return;
			}
		}
		pthread_mutex_unlock(&f->lock);
		break;
	default:
		break;
	}
	{
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = f->fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
	}
}

static int ctl_command(const struct nodeinfo *ni, const char *cmd, char *why,
		       size_t whylen)
{
	struct conv *c = conv_get(ni->conv);
	int ret;
	if (!c)
		return -ENOENT;
	if (strcmp(cmd, "cancel") == 0)
		ret = conv_cancel(c, why, whylen);
	else if (strcmp(cmd, "retry") == 0)
		ret = conv_retry(c, why, whylen);
	else {
		snprintf(why, whylen, "unknown command '%.40s' (use cancel or retry)", cmd);
		ret = -EINVAL;
	}
	conv_put(c);
	return ret;
}

static int prompt_submit(struct fh *f, const struct nodeinfo *ni)
{
	char why[700] = "";
	struct conv *c;
	char *t;
	int ret;

	if (f->refused) {
		/* Part of this prompt was refused: sending the rest would be
		 * sending something the user did not write. */
		buf_reset(&f->data);
		return 0;
	}
	if (f->data.len == 0)
		return 0;
	if (utf8_valid_prefix(f->data.data, f->data.len, 0) != f->data.len) {
		/* The text ended inside a character. */
		note_reject(ni->conv, "prompt", "not valid UTF-8 text");
		buf_reset(&f->data);
		return -EINVAL;
	}
	t = trim(f->data.data);
	if (!*t) {
		buf_reset(&f->data);
		return 0;
	}
	c = conv_get(ni->conv);
	if (!c)
		return -ENOENT;
	ret = conv_submit(c, t, strlen(t), why, sizeof(why));
	if (ret)
		log_warnx("conversation %s: prompt refused: %s", ni->conv, why);
	conv_put(c);
	buf_reset(&f->data);
	f->prechecked = 0;
	return ret;
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char *data,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	char why[700] = "";
	int ret = node_info(ino, &ni);
	ssize_t n;

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	switch (f->kind) {
	case FH_PASS:
		n = pwrite(f->fd, data, size, off);
		if (n < 0)
			fuse_reply_err(req, errno);
		else
			fuse_reply_write(req, (size_t)n);
		return;
	case FH_STREAM: {
		struct stat st;
		if (fstat(f->fd, &st) < 0) {
			fuse_reply_err(req, errno);
			return;
		}
		/* Append-only: new text goes at the end, nothing is rewritten. */
		if (off != st.st_size && !(fi->flags & O_APPEND)) {
			log_warnx("conversation %s: refused a write into the middle of stream",
				  ni.conv);
			fuse_reply_err(req, EPERM);
			return;
		}
		n = pwrite(f->fd, data, size, st.st_size);
		if (n < 0)
			fuse_reply_err(req, errno);
		else
			fuse_reply_write(req, (size_t)n);
		return;
	}
	case FH_PROMPT: {
		struct conv *c;
		pthread_mutex_lock(&f->lock);
		if (!f->prechecked) {
			/* Refuse what is knowable now, from write(): the shell sees it. */
			c = conv_get(ni.conv);
			ret = c ? conv_precheck(c, why, sizeof(why)) : -ENOENT;
			conv_put(c);
			if (ret) {
				f->refused = 1;
				pthread_mutex_unlock(&f->lock);
				note_reject(ni.conv, "prompt", why);
				fuse_reply_err(req, -ret);
				return;
			}
			f->prechecked = 1;
		}
		ret = buf_append(&f->data, data, size);
		if (ret == 0 && utf8_valid_prefix(f->data.data, f->data.len, 1) != f->data.len) {
			/* Refused from write(), so that the shell sees it. */
			f->refused = 1;
			pthread_mutex_unlock(&f->lock);
			note_reject(ni.conv, "prompt", "not valid UTF-8 text (or a NUL byte)");
			fuse_reply_err(req, EINVAL);
			return;
		}
		if (ret)
			f->refused = 1;
		pthread_mutex_unlock(&f->lock);
		if (ret) {
			char msg[100];
			snprintf(msg, sizeof(msg), "longer than max_prompt_bytes (%ld)",
				 fs_cfg->max_prompt_bytes);
			note_reject(ni.conv, "prompt", msg);
			fuse_reply_err(req, -ret);
			return;
		}
		fuse_reply_write(req, size);
		return;
	}
	case FH_CTL: {
		char cmd[128];
		size_t i = 0, start;
		/* One command per line. */
		while (i < size) {
			while (i < size && (data[i] == '\n' || data[i] == ' ' || data[i] == '\r'))
				i++;
			start = i;
			while (i < size && data[i] != '\n')
				i++;
			if (i > start) {
				size_t l = i - start;
				if (l >= sizeof(cmd))
					l = sizeof(cmd) - 1;
				memcpy(cmd, data + start, l);
				cmd[l] = '\0';
				ret = ctl_command(&ni, trim(cmd), why, sizeof(why));
				if (ret) {
					log_warnx("conversation %s: .ctl: %s", ni.conv, why);
					note_reject(ni.conv, ".ctl", why);
					fuse_reply_err(req, -ret);
					return;
				}
			}
		}
		fuse_reply_write(req, size);
		return;
	}
	case FH_HIST: {
		size_t before;
		pthread_mutex_lock(&f->lock);
		before = f->data.len;
		if (f->mode == HM_APPEND || (size_t)off == f->data.len) {
			ret = buf_append(&f->data, data, size);
			if (ret == 0)
				ret = hist_check(f, 0, why, sizeof(why));
		} else {
			/* A write inside the text: splice it in, check at close. */
			size_t end = (size_t)off + size;
			if (end > f->data.max) {
				ret = -EFBIG;
			} else {
				if (end > f->data.len) {
					size_t grow = end - f->data.len;
					char *z = calloc(1, grow);
					ret = z ? buf_append(&f->data, z, grow) : -ENOMEM;
					free(z);
				}
				if (ret == 0)
					memcpy(f->data.data + off, data, size);
				if ((size_t)off < f->checked)
					f->checked = 0;
			}
		}
		if (ret) {
			/* The whole write-back is abandoned: the old history stays. */
			f->refused = 1;
			if (f->data.len > before && (f->mode == HM_APPEND || (size_t)off == before)) {
				f->data.len = before;
				f->data.data[before] = '\0';
				if (f->checked > before)
					f->checked = 0;
			}
			pthread_mutex_unlock(&f->lock);
			if (!why[0])
				snprintf(why, sizeof(why), "%s", strerror(-ret));
			note_reject(ni.conv, "messages.jsonl", why);
			fuse_reply_err(req, ret == -EFBIG ? EFBIG : EINVAL);
			return;
		}
		f->dirty = 1;
		pthread_mutex_unlock(&f->lock);
		fuse_reply_write(req, size);
		return;
	}
	default:
		fuse_reply_err(req, EBADF);
	}
}

void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	int ret = 0;

	if (f->kind != FH_PROMPT && f->kind != FH_HIST) {
		fuse_reply_err(req, 0);
		return;
	}
	ret = node_info(ino, &ni);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	pthread_mutex_lock(&f->lock);
	if (f->kind == FH_PROMPT)
		ret = prompt_submit(f, &ni);
	else if (f->refused)
		ret = -EINVAL;
	else if (f->dirty)
		ret = hist_commit(f, &ni);
	pthread_mutex_unlock(&f->lock);
	fuse_reply_err(req, -ret);
}

void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;

	if ((f->kind == FH_PROMPT || f->kind == FH_HIST) && node_info(ino, &ni) == 0) {
		pthread_mutex_lock(&f->lock);
		if (f->kind == FH_PROMPT)
			prompt_submit(f, &ni);
		else if (!f->refused && (f->dirty || f->trunc_pending))
			hist_commit(f, &ni);
		pthread_mutex_unlock(&f->lock);
	}
	fh_free(f);
	fuse_reply_err(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	struct fh *f = FH(fi);
	struct nodeinfo ni;
	int ret = 0;

	if (f->kind == FH_HIST && f->dirty && node_info(ino, &ni) == 0) {
		pthread_mutex_lock(&f->lock);
		ret = f->refused ? -EINVAL : hist_commit(f, &ni);
		pthread_mutex_unlock(&f->lock);
	} else if (f->fd >= 0 && (f->kind == FH_PASS || f->kind == FH_STREAM)) {
		if ((datasync ? fdatasync(f->fd) : fsync(f->fd)) < 0)
			ret = -errno;
	}
	fuse_reply_err(req, -ret);
}

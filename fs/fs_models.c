/* fs_models.c - models/ as a place to act: touch or write a model's file
 * to load it, rm to unload it; the request waits (without a thread) until
 * the server is done, and an interrupt (Ctrl-C) ends the wait at once.
 *
 * Which request waits: never CREATE, which the kernel answers holding
 * models/'s lock (every lookup and listing there would wait for the
 * load). A writer's write() that completes a JSON object of settings
 * loads with them and is answered when loaded (shells ignore errors of
 * close(), not of write()); touch, which writes nothing and creates
 * without O_TRUNC, loads at its first close (it dup2()s the file and
 * closes the first descriptor unchecked: the result is told again by the
 * next close, which it checks). A close after an incomplete object
 * fails with EINVAL; an empty write (: >) loads nothing. */
#include "fs_int.h"

#include "log.h"
#include "models.h"
#include "names.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Load settings are a small JSON object. */
#define MODEL_SETTINGS_MAX (64u << 10)

/* --- requests waiting for a load or an unload ---------------------------- */

enum mop_kind { MOP_WRITE, MOP_FLUSH, MOP_UNLINK };

struct mop {
	struct mop *next; /* mops_lock */
	uint64_t id;	  /* ours: the done callback's context */
	uint64_t op;	  /* models_load.c's; mops_lock */
	fuse_req_t req;
	enum mop_kind kind;
	fuse_ino_t parent;
	char name[NAME_MAX + 1];
	size_t size;	 /* MOP_WRITE: the bytes to acknowledge */
	int ready;	 /* mops_lock: the interrupt callback is registered */
	int finished;	 /* mops_lock: ended before ready (err holds how) */
	int interrupted; /* mops_lock: interrupted before ready */
	int err;
};

/* mops_lock is a leaf. No reply is sent while it is held. */
static pthread_mutex_t mops_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mop *mops;      /* mops_lock */
static uint64_t next_mop = 1; /* mops_lock */

static void fallback_attr(uint64_t ino, struct stat *st);

/* Files created in models/ and still open: they exist (for getattr and
 * lookup) until closed, loaded or not. */
struct created {
	struct created *next; /* mops_lock */
	char name[NAME_MAX + 1];
	int open; /* handles */
};
static struct created *created; /* mops_lock */

static void created_add(const char *name)
{
	struct created *c;

	pthread_mutex_lock(&mops_lock);
	for (c = created; c && strcmp(c->name, name) != 0; c = c->next)
		;
	if (!c && (c = calloc(1, sizeof(*c)))) {
		snprintf(c->name, sizeof(c->name), "%s", name);
		c->next = created;
		created = c;
	}
	if (c)
		c->open++;
	pthread_mutex_unlock(&mops_lock);
}

static void created_drop(const char *name)
{
	struct created **pp, *c;

	pthread_mutex_lock(&mops_lock);
	for (pp = &created; (c = *pp); pp = &c->next)
		if (strcmp(c->name, name) == 0) {
			if (--c->open == 0) {
				*pp = c->next;
				free(c);
			}
			break;
		}
	pthread_mutex_unlock(&mops_lock);
}

static int created_has(const char *name)
{
	struct created *c;

	pthread_mutex_lock(&mops_lock);
	for (c = created; c && strcmp(c->name, name) != 0; c = c->next)
		;
	pthread_mutex_unlock(&mops_lock);
	return c != NULL;
}

int models_created_attr(uint64_t ino, const char *name, struct stat *st)
{
	if (!created_has(name))
		return -ENOENT;
	fallback_attr(ino, st);
	return 0;
}

static struct mop *mop_take(uint64_t id)
{
	struct mop **pp, *m;
	for (pp = &mops; (m = *pp); pp = &m->next)
		if (m->id == id) {
			*pp = m->next;
			return m;
		}
	return NULL;
}

static struct mop *mop_find(uint64_t id)
{
	struct mop *m;
	for (m = mops; m && m->id != id; m = m->next)
		;
	return m;
}

static void fallback_attr(uint64_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | 0644;
	st->st_nlink = 1;
	st->st_uid = fs_uid;
	st->st_gid = fs_gid;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = fs_start_time;
}

/* Answers a created file: its entry and a handle whose close loads the
 * model (touch: even when nothing was written). */
static void reply_created(fuse_req_t req, fuse_ino_t parent, const char *name,
			  struct fuse_file_info *fi, int touch)
{
	struct nodeinfo ni;
	struct fuse_entry_param e;
	struct fh *f;
	uint64_t ino;

	memset(&ni, 0, sizeof(ni));
	ni.kind = K_MODEL;
	ni.parent = parent;
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	if (!node_get(parent, name, K_MODEL, &ino)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	f = fh_new(&model_ops, ino);
	if (!f) {
		node_forget(ino, 1);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	created_add(name);
	f->writable = 1;
	f->model_touch = touch;
	f->model_created = 1;
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	/* A load that is not yet in the list (or named otherwise) still
	 * gets a file to close. */
	if (attr_of(ino, &ni, &e.attr) != 0)
		fallback_attr(ino, &e.attr);
	e.attr.st_ino = ino;
	/* Not cached: once closed, a file whose load failed is gone. */
	e.entry_timeout = 0;
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &e, fi) != 0) {
		created_drop(name);
		fh_free(f);
		node_forget(ino, 1);
	}
}

static void note_result(struct fh *f, void *arg)
{
	struct mop *m = arg;
	pthread_mutex_lock(&f->lock);
	if (f->ops == &model_ops && f->model_op == m->id)
		f->model_err = m->err;
	pthread_mutex_unlock(&f->lock);
}

/* The handle that asked (if still open) keeps the result for its next
 * close. */
static void remember(struct mop *m, int err)
{
	if (m->kind == MOP_UNLINK)
		return;
	m->err = err;
	fh_each(note_result, m);
}

static void mop_reply(struct mop *m, int err)
{
	remember(m, err);
	if (err == 0 && m->kind == MOP_WRITE) {
		fuse_reply_write(m->req, m->size);
		return;
	}
	if (err == 0 && m->kind == MOP_UNLINK)
		node_drop_name(m->parent, m->name);
	fuse_reply_err(m->req, -err);
}

static void on_interrupt(fuse_req_t req, void *data)
{
	(void)req;
	uint64_t id = (uint64_t)(uintptr_t)data, op = 0;
	struct mop *m;

	pthread_mutex_lock(&mops_lock);
	m = mop_find(id);
	if (m && !m->ready) {
		m->interrupted = 1; /* the registering thread replies */
		m = NULL;
	} else if (m) {
		m = mop_take(id);
		op = m->op;
	}
	pthread_mutex_unlock(&mops_lock);
	if (m) {
		remember(m, -EINTR);
		fuse_reply_err(m->req, EINTR);
		free(m);
		models_op_cancel(op);
	}
}

/* From the operation's thread, once the server is done. */
static void on_done(void *ctx, int err, const char *msg)
{
	(void)msg; /* logged and in health already */
	uint64_t id = (uint64_t)(uintptr_t)ctx;
	struct mop *m;

	pthread_mutex_lock(&mops_lock);
	m = mop_find(id);
	if (m && !m->ready) {
		m->finished = 1;
		m->err = err;
		m = NULL;
	} else if (m) {
		m = mop_take(id);
	}
	pthread_mutex_unlock(&mops_lock);
	if (m) {
		mop_reply(m, err);
		free(m);
	}
}

/* Starts the load (settings may be NULL) or unload of name for req, which
 * is answered when it ends. */
static void defer(struct mop *m, const char *settings, size_t len)
{
	char why[1024] = "", *id = names_model_decode(m->name);
	uint64_t op = 0;
	int ret, finished, interrupted;

	if (!id) {
		mop_reply(m, -ENOENT);
		free(m);
		return;
	}
	pthread_mutex_lock(&mops_lock);
	m->next = mops;
	mops = m;
	pthread_mutex_unlock(&mops_lock);
	ret = m->kind == MOP_UNLINK
		  ? models_unload_start(id, on_done, (void *)(uintptr_t)m->id,
					&op, why, sizeof(why))
		  : models_load_start(id, settings, len, on_done,
				      (void *)(uintptr_t)m->id, &op, why,
				      sizeof(why));
	free(id);
	pthread_mutex_lock(&mops_lock);
	if (ret != 0)
		mop_take(m->id);
	m->op = op;
	pthread_mutex_unlock(&mops_lock);
	if (ret != 0) {
		log_info("models/%s: %s", m->name, why);
		mop_reply(m, ret);
		free(m);
		return;
	}
	fuse_req_interrupt_func(m->req, on_interrupt, (void *)(uintptr_t)m->id);
	pthread_mutex_lock(&mops_lock);
	m->ready = 1;
	finished = m->finished;
	interrupted = m->interrupted;
	if (finished || interrupted)
		mop_take(m->id);
	pthread_mutex_unlock(&mops_lock);
	if (interrupted) {
		models_op_cancel(op);
		remember(m, -EINTR);
		fuse_reply_err(m->req, EINTR);
		free(m);
	} else if (finished) {
		mop_reply(m, m->err);
		free(m);
	}
}

static struct mop *mop_new(fuse_req_t req, enum mop_kind kind,
			   fuse_ino_t parent, const char *name)
{
	struct mop *m = calloc(1, sizeof(*m));
	if (!m) {
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	pthread_mutex_lock(&mops_lock);
	m->id = next_mop++;
	pthread_mutex_unlock(&mops_lock);
	m->req = req;
	m->kind = kind;
	m->parent = parent;
	snprintf(m->name, sizeof(m->name), "%s", name);
	return m;
}

/* --- the operations ------------------------------------------------------ */

void models_op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	(void)mode;
	char why[1024], *id;
	int ret;

	if (strcmp(name, MODELS_AVAILABLE) == 0) {
		fuse_reply_err(req, EACCES);
		return;
	}
	/* What can be told now (no /api/v1, not downloaded) is told now;
	 * the load itself waits for the close. */
	id = names_model_decode(name);
	ret = id ? models_load_check(id, why, sizeof(why)) : -ENOENT;
	if (ret && id)
		log_info("models/%s: %s", name, why);
	free(id);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	reply_created(req, parent, name, fi, !(fi->flags & O_TRUNC));
}

void models_op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mop *m;

	if (strcmp(name, MODELS_AVAILABLE) == 0) {
		fuse_reply_err(req, EACCES);
		return;
	}
	m = mop_new(req, MOP_UNLINK, parent, name);
	if (m)
		defer(m, NULL, 0);
}

/* --- a model's file ----------------------------------------------------------
 */

static int model_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags,
		      mode_t mode, int creating, struct fh **out, int *cache)
{
	(void)mode;
	(void)creating;
	struct fh *f;
	char *s = NULL;

	if ((flags & O_ACCMODE) == O_RDONLY) {
		s = model_json(ni->name);
		if (!s)
			return -ENOENT;
	} else if (strcmp(ni->name, MODELS_AVAILABLE) == 0) {
		return -EACCES;
	}
	f = fh_new(&model_ops, ino);
	if (!f) {
		free(s);
		return -ENOMEM;
	}
	if (s && buf_puts(&f->data, s) != 0) {
		free(s);
		fh_free(f);
		return -ENOMEM;
	}
	/* A second touch while the first one's load runs: its close waits for
	 * that load (joins it). */
	f->model_touch = !s && !(flags & O_TRUNC) && created_has(ni->name);
	free(s);
	f->writable = !s;
	*cache = CACHE_NONE;
	*out = f;
	return 0;
}

static int blank(const char *data, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", data[i]))
			return 0;
	return 1;
}

/* Whether data is (the start of) a JSON object: 1 complete, 0 not yet,
 * -1 never. */
static int settings_state(const char *data, size_t len)
{
	size_t i = 0;
	cJSON *o;

	while (i < len && strchr(" \t\r\n", data[i]))
		i++;
	if (i == len)
		return 0;
	if (data[i] != '{')
		return -1;
	o = cJSON_ParseWithLength(data, len);
	if (!o)
		return 0;
	cJSON_Delete(o);
	return 1;
}

/* A write of load settings: once they make a JSON object, the load
 * starts and the write is answered when it ends. An append (`>>`) is
 * taken as a write from the start. */
static void model_write(fuse_req_t req, struct fh *f, const struct nodeinfo *ni,
			const char *data, size_t size, off_t off, int append)
{
	struct mop *m = mop_new(req, MOP_WRITE, ni->parent, ni->name);
	char *settings = NULL;
	int ret = 0, st = 0;
	size_t len = 0;

	if (!m)
		return;
	m->size = size;
	pthread_mutex_lock(&f->lock);
	/* The content shown is never stored: `>>` writes from the start. */
	if (append)
		off = (off_t)f->data.len;
	if (!f->writable)
		ret = -EBADF;
	else if (f->model_asked)
		ret = blank(data, size) ? 0 : -EINVAL; /* settings were used */
	else if ((size_t)off != f->data.len)
		ret = -EINVAL;
	else if (f->data.len + size > MODEL_SETTINGS_MAX)
		ret = -EFBIG;
	else if (buf_append(&f->data, data, size) != 0)
		ret = -ENOMEM;
	if (ret == 0 && !f->model_asked) {
		st = settings_state(f->data.data, f->data.len);
		if (st < 0) {
			f->data.len -= size;
			ret = -EINVAL;
		} else if (st > 0) {
			f->model_asked = 1;
			f->model_op = m->id;
			len = f->data.len;
			settings = strndup(f->data.data, len);
			if (!settings)
				ret = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&f->lock);
	if (ret == -EINVAL)
		log_info("models/%s: load settings must be one JSON object",
			 ni->name);
	if (ret != 0 || st <= 0) {
		if (ret)
			fuse_reply_err(req, -ret);
		else
			fuse_reply_write(req, size);
		free(m);
		free(settings);
		return;
	}
	defer(m, settings, len);
	free(settings);
}

/* touch's close: loads, answered when loaded. A close after a load tells
 * its result again; after settings that never made an object, EINVAL. */
static void model_flush(fuse_req_t req, struct fh *f, const struct nodeinfo *ni)
{
	struct mop *m = mop_new(req, MOP_FLUSH, ni->parent, ni->name);
	int ret = 0, load = 0, partial = 0, loaded = 0;

	if (!m)
		return;
	if (f->model_touch) {
		/* A touch whose file was created by one still open: when
		 * that one's load is over, the model is loaded and there is
		 * nothing to do (no second instance). */
		char *id = names_model_decode(ni->name);
		int downloaded;
		if (id)
			models_known(id, &loaded, &downloaded);
		free(id);
	}
	pthread_mutex_lock(&f->lock);
	if (!f->writable) {
		ret = 0;
	} else if (f->model_asked) {
		ret = f->model_err;
	} else if (f->data.len > 0) {
		f->model_asked = 1;
		ret = f->model_err = -EINVAL;
		partial = 1;
	} else if (f->model_touch && loaded) {
		f->model_asked = 1;
	} else if (f->model_touch) {
		f->model_asked = 1;
		f->model_op = m->id;
		load = 1;
	}
	pthread_mutex_unlock(&f->lock);
	if (!load) {
		if (partial)
			log_info("models/%s: load settings are not a complete "
				 "JSON object",
				 ni->name);
		fuse_reply_err(req, -ret);
		free(m);
		return;
	}
	defer(m, NULL, 0);
}

static void model_release(struct fh *f, const struct nodeinfo *ni)
{
	if (f->model_created)
		created_drop(ni->name);
}

static int model_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	(void)ni;
	(void)f;
	return size == 0 ? 0 : -EINVAL;
}

const struct file_ops model_ops = {
    .kind = FH_BUF,
    .open = model_open,
    .read = read_data,
    .write_req = model_write,
    .flush_req = model_flush,
    .release = model_release,
    .truncate = model_truncate,
};

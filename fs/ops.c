/* ops.c - FUSE low-level operations: the tree, file handles, waiters.
 *
 * The tree is synthesised at the top (models/, health, metrics) and passed
 * through to state_dir below conversations/ and tools/, with the special
 * rules for prompt, messages.jsonl, stream and the hidden control files.
 *
 * Lock order: nodes_lock, waiters_lock and temps_lock are leaves;
 * handles_lock -> a file handle's lock (hist_note_times); a file handle's
 * lock may be held while calling into conv.c (which takes its own locks:
 * table lock -> conversation lock -> history lock, see conv.h).
 * No FUSE reply is sent while holding any of these locks: once a reply is
 * out, the reader may close the file and a release on another thread may
 * free the handle (hence the "prepared" replies for reads).
 */
#include "ops.h"

#include "buf.h"
#include "config.h"
#include "conv.h"
#include "fsio.h"
#include "health.h"
#include "jsonl.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "names.h"
#include "store.h"
#include "tooldef.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

enum kind {
	K_ROOT = 1, K_MODELS, K_CONVS, K_TOOLS, K_HEALTH, K_METRICS,
	K_MODEL, K_CONV, K_CFILE, K_REPLY, K_STATUS, K_CTL, K_TFILE, K_TSTATUS
};

#define INO_ROOT 1
#define INO_FIRST_DYNAMIC 100
#define NB 16384

struct node {
	uint64_t ino;
	uint64_t parent;
	char *name;
	enum kind kind;
	uint64_t nlookup;
	int hashed_name;        /* reachable by (parent, name) */
	struct node *next_ino;  /* nodes_lock */
	struct node *next_name; /* nodes_lock */
};

static void temp_remember(const char *conv, const char *name);

static const struct config *cfg;
static int state_fd = -1, tools_fd = -1;
static uid_t my_uid;
static gid_t my_gid;
static time_t start_time;

static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node *by_ino[NB], *by_name[NB]; /* nodes_lock */
static uint64_t next_ino = INO_FIRST_DYNAMIC;  /* nodes_lock */

static const struct {
	const char *name;
	enum kind kind;
	uint64_t ino;
} fixed[] = {
	{"models", K_MODELS, 2},   {"conversations", K_CONVS, 3},
	{"tools", K_TOOLS, 4},     {"health", K_HEALTH, 5},
	{"metrics", K_METRICS, 6},
};
#define NFIXED (sizeof(fixed) / sizeof(fixed[0]))

/* --- node table ---------------------------------------------------------- */

static unsigned name_hash(uint64_t parent, const char *name)
{
	unsigned h = 2166136261u ^ (unsigned)parent;
	while (*name)
		h = (h ^ (unsigned char)*name++) * 16777619u;
	return h % NB;
}

static struct node *ino_find(uint64_t ino)
{
	for (struct node *n = by_ino[ino % NB]; n; n = n->next_ino)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct node *name_find(uint64_t parent, const char *name)
{
	for (struct node *n = by_name[name_hash(parent, name)]; n; n = n->next_name)
		if (n->parent == parent && strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

static void name_unhash(struct node *n)
{
	struct node **pp;
	if (!n->hashed_name)
		return;
	for (pp = &by_name[name_hash(n->parent, n->name)]; *pp; pp = &(*pp)->next_name)
		if (*pp == n) {
			*pp = n->next_name;
			break;
		}
	n->hashed_name = 0;
}

static void name_hash_in(struct node *n)
{
	unsigned h = name_hash(n->parent, n->name);
	n->next_name = by_name[h];
	by_name[h] = n;
	n->hashed_name = 1;
}

static struct node *node_insert(uint64_t ino, uint64_t parent, const char *name,
				enum kind kind)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	n->ino = ino;
	n->parent = parent;
	n->kind = kind;
	n->next_ino = by_ino[ino % NB];
	by_ino[ino % NB] = n;
	name_hash_in(n);
	return n;
}

/* Finds or creates the node for (parent, name) and counts a lookup. */
static struct node *node_get(uint64_t parent, const char *name, enum kind kind,
			     uint64_t *ino)
{
	struct node *n;
	pthread_mutex_lock(&nodes_lock);
	n = name_find(parent, name);
	if (n && n->kind != kind) {
		name_unhash(n); /* the name now means something else */
		n = NULL;
	}
	if (!n)
		n = node_insert(next_ino++, parent, name, kind);
	if (n) {
		n->nlookup++;
		*ino = n->ino;
	}
	pthread_mutex_unlock(&nodes_lock);
	return n;
}

struct nodeinfo {
	enum kind kind;
	uint64_t parent;
	char name[NAME_MAX + 1];
	char conv[NAME_MAX + 1]; /* for files under a conversation */
};

/* Copies what we need about an inode so that no lock is held later. */
static int node_info(uint64_t ino, struct nodeinfo *ni)
{
	struct node *n, *p;
	int ret = 0;

	memset(ni, 0, sizeof(*ni));
	if (ino == INO_ROOT) {
		ni->kind = K_ROOT;
		return 0;
	}
	for (size_t i = 0; i < NFIXED; i++)
		if (fixed[i].ino == ino) {
			ni->kind = fixed[i].kind;
			ni->parent = INO_ROOT;
			snprintf(ni->name, sizeof(ni->name), "%s", fixed[i].name);
			return 0;
		}
	pthread_mutex_lock(&nodes_lock);
	n = ino_find(ino);
	if (!n) {
		ret = -ESTALE;
		goto out;
	}
	ni->kind = n->kind;
	ni->parent = n->parent;
	snprintf(ni->name, sizeof(ni->name), "%s", n->name);
	if (n->kind == K_CFILE || n->kind == K_REPLY || n->kind == K_STATUS ||
	    n->kind == K_CTL) {
		p = ino_find(n->parent);
		if (!p) {
			ret = -ESTALE;
			goto out;
		}
		snprintf(ni->conv, sizeof(ni->conv), "%s", p->name);
	} else if (n->kind == K_CONV) {
		snprintf(ni->conv, sizeof(ni->conv), "%s", n->name);
	}
out:
	pthread_mutex_unlock(&nodes_lock);
	return ret;
}

static void node_forget(uint64_t ino, uint64_t nlookup)
{
	struct node *n, **pp;
	if (ino < INO_FIRST_DYNAMIC)
		return;
	pthread_mutex_lock(&nodes_lock);
	n = ino_find(ino);
	if (n) {
		n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
		if (n->nlookup == 0) {
			name_unhash(n);
			for (pp = &by_ino[ino % NB]; *pp; pp = &(*pp)->next_ino)
				if (*pp == n) {
					*pp = n->next_ino;
					break;
				}
			free(n->name);
			free(n);
		}
	}
	pthread_mutex_unlock(&nodes_lock);
}

/* The name (parent, name) no longer exists. */
static void node_drop_name(uint64_t parent, const char *name)
{
	struct node *n;
	pthread_mutex_lock(&nodes_lock);
	n = name_find(parent, name);
	if (n)
		name_unhash(n);
	pthread_mutex_unlock(&nodes_lock);
}

static void node_move(uint64_t parent, const char *name, uint64_t newparent,
		      const char *newname)
{
	struct node *n, *victim;
	char *nn = strdup(newname);
	pthread_mutex_lock(&nodes_lock);
	victim = name_find(newparent, newname);
	if (victim)
		name_unhash(victim);
	n = name_find(parent, name);
	if (n && nn) {
		name_unhash(n);
		free(n->name);
		n->name = nn;
		nn = NULL;
		n->parent = newparent;
		name_hash_in(n);
	}
	pthread_mutex_unlock(&nodes_lock);
	free(nn);
}

/* --- helpers --------------------------------------------------------------- */

static int is_hidden_ctl(const char *name, enum kind *k)
{
	if (strcmp(name, ".reply") == 0)
		*k = K_REPLY;
	else if (strcmp(name, ".status") == 0)
		*k = K_STATUS;
	else if (strcmp(name, ".ctl") == 0)
		*k = K_CTL;
	else
		return 0;
	return 1;
}

/* "conv/name" relative to the conversations directory. */
static int cpath(char *out, size_t n, const char *conv, const char *name)
{
	int len = snprintf(out, n, "%s/%s", conv, name);
	return (len < 0 || (size_t)len >= n) ? -ENAMETOOLONG : 0;
}

/* The JSON of the loaded model whose file name is fname (malloc'd), or
 * NULL when no such model is loaded. */
static char *model_json(const char *fname)
{
	char *id = names_model_decode(fname), *json = NULL;
	struct model_list *l;

	if (!id)
		return NULL;
	l = models_get(0);
	for (size_t i = 0; i < l->n && !json; i++)
		if (strcmp(l->v[i].id, id) == 0)
			json = strdup(l->v[i].json);
	models_put(l);
	free(id);
	return json;
}

static void synth_attr(struct stat *st, uint64_t ino, mode_t mode, off_t size)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = mode;
	st->st_nlink = S_ISDIR(mode) ? 2 : 1;
	st->st_uid = my_uid;
	st->st_gid = my_gid;
	st->st_size = size;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = start_time;
}

static int attr_of(uint64_t ino, const struct nodeinfo *ni, struct stat *st)
{
	char p[PATH_MAX];
	int ret;

	switch (ni->kind) {
	case K_ROOT:
	case K_MODELS:
		synth_attr(st, ino, S_IFDIR | (ni->kind == K_ROOT ? 0755 : 0555), 0);
		return 0;
	case K_CONVS:
		if (fstatat(conv_root_fd(), ".", st, 0) < 0)
			return -errno;
		break;
	case K_TOOLS:
		if (fstat(tools_fd, st) < 0)
			return -errno;
		break;
	case K_MODEL: {
		char *json = model_json(ni->name);
		if (!json)
			return -ENOENT;
		synth_attr(st, ino, S_IFREG | 0444, (off_t)strlen(json));
		free(json);
		return 0;
	}
	case K_HEALTH:
	case K_METRICS:
		/* Generated when opened, like /proc: size 0, read to EOF. */
		synth_attr(st, ino, S_IFREG | 0444, 0);
		st->st_mtime = time(NULL);
		return 0;
	case K_REPLY:
	case K_STATUS:
		synth_attr(st, ino, S_IFREG | 0444, 0);
		return 0;
	case K_CTL:
		synth_attr(st, ino, S_IFREG | 0200, 0);
		return 0;
	case K_TSTATUS:
		synth_attr(st, ino, S_IFREG | 0444, 0);
		return 0;
	case K_CONV:
		if (fstatat(conv_root_fd(), ni->name, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		break;
	case K_CFILE:
		ret = cpath(p, sizeof(p), ni->conv, ni->name);
		if (ret)
			return ret;
		if (fstatat(conv_root_fd(), p, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		if (strcmp(ni->name, "prompt") == 0)
			st->st_size = 0;
		break;
	case K_TFILE:
		if (fstatat(tools_fd, ni->name, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		break;
	}
	st->st_ino = ino;
	return 0;
}

/* Attributes are never cached: answers grow files behind the kernel's back
 * (tail must see the size at once), and lmsfs's private files change the
 * directories' times (tar compares them before and after reading). */
#define ATTR_TIMEOUT 0.0

static void reply_entry(fuse_req_t req, uint64_t ino, const struct stat *st)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr = *st;
	e.attr.st_ino = ino;
	e.attr_timeout = ATTR_TIMEOUT;
	e.entry_timeout = 1.0;
	if (fuse_reply_entry(req, &e) != 0)
		node_forget(ino, 1); /* the kernel never saw it: no FORGET comes */
}

/* Looks up (parent, name) and, when found, counts the lookup and replies. */
static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi, ni;
	struct stat st;
	enum kind kind;
	uint64_t ino;
	int ret;

	ret = node_info(parent, &pi);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	memset(&ni, 0, sizeof(ni));
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	switch (pi.kind) {
	case K_ROOT:
		for (size_t i = 0; i < NFIXED; i++)
			if (strcmp(fixed[i].name, name) == 0) {
				ni.kind = fixed[i].kind;
				ret = attr_of(fixed[i].ino, &ni, &st);
				if (ret)
					fuse_reply_err(req, -ret);
				else
					reply_entry(req, fixed[i].ino, &st);
				return;
			}
		fuse_reply_err(req, ENOENT);
		return;
	case K_MODELS:
		/* attr_of below answers ENOENT for a model that is not loaded. */
		kind = K_MODEL;
		break;
	case K_CONVS:
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		kind = K_CONV;
		break;
	case K_CONV:
		if (is_hidden_ctl(name, &kind)) {
			struct stat dst;
			if (fstatat(conv_root_fd(), pi.conv, &dst, 0) < 0) {
				fuse_reply_err(req, ENOENT);
				return;
			}
			snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
			break;
		}
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		snprintf(ni.conv, sizeof(ni.conv), "%s", pi.conv);
		kind = K_CFILE;
		break;
	case K_TOOLS:
		if (strcmp(name, ".status") == 0) {
			kind = K_TSTATUS;
			break;
		}
		if (names_file_ok(name) != 0) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		kind = K_TFILE;
		break;
	default:
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	ni.kind = kind;
	ni.parent = parent;
	ret = attr_of(0, &ni, &st);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (kind == K_CONV && !S_ISDIR(st.st_mode)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!node_get(parent, name, kind, &ino)) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	reply_entry(req, ino, &st);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_lookup(req, parent, name);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++)
		node_forget(f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct nodeinfo ni;
	struct stat st;
	int ret = node_info(ino, &ni);
	if (ret == 0)
		ret = attr_of(ino, &ni, &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* --- file handles ------------------------------------------------------- */

/* Every open file and directory handle is listed, so that the ones the
 * kernel never released (the mount went away under them) are freed when
 * lmsfs exits. */
struct hlink {
	struct hlink *prev, *next; /* handles_lock */
	int is_dir;
};
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hlink handles = {&handles, &handles, 0};

static void hlink_add(struct hlink *l, int is_dir)
{
	l->is_dir = is_dir;
	pthread_mutex_lock(&handles_lock);
	l->next = handles.next;
	l->prev = &handles;
	handles.next->prev = l;
	handles.next = l;
	pthread_mutex_unlock(&handles_lock);
}

static void hlink_del(struct hlink *l)
{
	pthread_mutex_lock(&handles_lock);
	l->prev->next = l->next;
	l->next->prev = l->prev;
	pthread_mutex_unlock(&handles_lock);
}

enum fh_kind { FH_PASS, FH_BUF, FH_PROMPT, FH_HIST, FH_STREAM, FH_REPLY, FH_CTL };
enum hist_mode { HM_APPEND, HM_REPLACE };

struct fh {
	struct hlink link;   /* first: a handle is found from its link */
	enum fh_kind kind;
	pthread_mutex_t lock;
	int fd;              /* FH_PASS, FH_STREAM, FH_HIST reads */
	uint64_t ino;
	struct buf data;     /* generated content, prompt text, written history */
	int writable;
	/* FH_HIST */
	enum hist_mode mode;
	int dirty;
	int trunc_pending;
	size_t checked;      /* bytes of data already validated (whole lines) */
	int refused;         /* a write was refused: commit nothing from here */
	int times_set;       /* futimens/fchmod on a pending history write: */
	struct timespec times[2]; /* applied again after the commit replaced */
	int mode_set;        /* the file */
	mode_t new_mode;
	off_t base_size;     /* HM_REPLACE: the history's size and generation */
	uint64_t base_gen;   /* when opened: what lies past base_size since was
				appended meanwhile and is kept (hist_commit) */
	/* FH_PROMPT */
	int prechecked;
	/* FH_REPLY */
	struct conv *conv;   /* referenced: survives a rename of the directory */
	uint64_t target;
	int have_answer;
	char *answer;
	size_t answer_len;
	int answer_err;
};

static struct fh *fh_new(enum fh_kind kind, uint64_t ino)
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

static void fh_free(struct fh *f)
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

/* How the kernel may cache a file's data (do_open's *direct). */
enum { CACHE_PAGES = 0, CACHE_NONE = 1, CACHE_KEEP = 2 };

static struct fh *FH(struct fuse_file_info *fi)
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
		s = health_json(cfg);
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

/* Whole-history check of f->data from f->checked on; final says the last
 * line is complete even without a newline. */
static int hist_check(struct fh *f, int final, char *why, size_t whylen)
{
	const char *d = f->data.data ? f->data.data : "";
	size_t end = f->data.len, pos = f->checked;

	while (pos < end) {
		const char *nl = memchr(d + pos, '\n', end - pos);
		size_t l;
		if (!nl && !final) {
			if (end - pos > JSONL_MAX_LINE) {
				snprintf(why, whylen, "a line is longer than %u bytes",
					 JSONL_MAX_LINE);
				return -EFBIG;
			}
			break;
		}
		l = nl ? (size_t)(nl - (d + pos)) : end - pos;
		if (l > JSONL_MAX_LINE) {
			snprintf(why, whylen, "a line is longer than %u bytes", JSONL_MAX_LINE);
			return -EFBIG;
		}
		int ret = jsonl_check_line(d + pos, l, why, whylen);
		if (ret)
			return ret;
		pos += l + (nl ? 1 : 0);
		f->checked = pos;
	}
	return 0;
}

static void note_reject(const char *conv, const char *what, const char *why)
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

/* A conversation's directory, opened without following symlinks. */
static int conv_dir(const char *conv)
{
	return fsio_open(conv_root_fd(), conv, O_RDONLY | O_DIRECTORY, 0);
}

/* A write to disk failed: counted, logged, kept for health. */
static void note_storage(const char *conv, const char *what, int err)
{
	char msg[600];
	if (err != -ENOSPC && err != -EDQUOT && err != -EIO && err != -EROFS)
		return;
	snprintf(msg, sizeof(msg), "conversation %s: %s: %s", conv, what, strerror(-err));
	log_warnx("storage: %s", msg);
	metrics_storage_failure(msg);
}

/* data + what was appended to the history since base_size (the lines
 * lmsfs, or a user's >>, appended while this writer had the file open),
 * unless data already ends with them. History lock held. *out is data
 * itself or a malloc'd merge. */
static int merge_appended(int dfd, const char *data, size_t n, off_t base_size,
			  char **merged, size_t *mlen)
{
	off_t size = store_hist_size(dfd);
	char *tail = NULL, *m;
	size_t tlen = 0;
	int ret, nl;

	*merged = NULL;
	*mlen = 0;
	if (size <= base_size)
		return 0;
	ret = store_hist_read_from(dfd, base_size, &tail, &tlen);
	if (ret)
		return ret;
	if (tlen == 0 || (n >= tlen && memcmp(data + n - tlen, tail, tlen) == 0)) {
		free(tail);
		return 0;
	}
	nl = n > 0 && data[n - 1] != '\n';
	m = malloc(n + (size_t)nl + tlen + 1);
	if (!m) {
		free(tail);
		return -ENOMEM;
	}
	memcpy(m, data, n);
	if (nl)
		m[n] = '\n';
	memcpy(m + n + nl, tail, tlen);
	m[n + nl + tlen] = '\0';
	free(tail);
	*merged = m;
	*mlen = n + (size_t)nl + tlen;
	return 0;
}

/* Writes a validated history back. Returns 0 or -errno. */
static int hist_commit(struct fh *f, const struct nodeinfo *ni)
{
	char why[300] = "";
	const char *data = f->data.data ? f->data.data : "";
	struct conv *c;
	int ret, dfd;

	/* An append is checked as it arrives; a replacement may have been
	 * edited anywhere, so it is checked whole. */
	if (f->mode == HM_REPLACE)
		f->checked = 0;
	ret = hist_check(f, 1, why, sizeof(why));
	if (ret) {
		note_reject(ni->conv, "messages.jsonl", why);
		return ret == -EFBIG ? -EFBIG : -EINVAL;
	}
	c = conv_get(ni->conv);
	if (!c) {
		f->refused = 1;
		return -ENOENT;
	}
	dfd = conv_dir(ni->conv);
	if (dfd < 0) {
		f->refused = 1;
		conv_put(c);
		note_storage(ni->conv, "opening the conversation directory", dfd);
		return dfd;
	}
	conv_hist_lock(c);
	if (f->mode == HM_APPEND) {
		ret = store_hist_append(dfd, data, f->data.len, STORE_SYNC | STORE_CREATE, NULL);
		if (ret == 0) {
			buf_reset(&f->data);
			f->checked = 0;
		}
	} else if (conv_hist_gen(c) != f->base_gen) {
		/* Someone else replaced the history since this writer opened
		 * it: which lines to keep cannot be known. */
		ret = -EBUSY;
		snprintf(why, sizeof(why), "messages.jsonl was replaced by another writer "
					   "while this one had it open; nothing written");
	} else {
		char *merged = NULL;
		size_t mlen = 0;
		ret = merge_appended(dfd, data, f->data.len, f->base_size, &merged, &mlen);
		if (ret == 0)
			ret = merged ? store_hist_replace(dfd, merged, mlen)
				     : store_hist_replace(dfd, data, f->data.len);
		free(merged);
		if (ret == 0) {
			conv_hist_replaced(c);
			f->base_gen = conv_hist_gen(c);
			f->base_size = store_hist_size(dfd);
		}
	}
	if (ret == 0 && f->mode_set)
		fchmodat(dfd, STORE_HISTORY, f->new_mode, 0);
	if (ret == 0 && f->times_set)
		utimensat(dfd, STORE_HISTORY, f->times, AT_SYMLINK_NOFOLLOW);
	conv_hist_unlock(c);
	conv_put(c);
	close(dfd);
	if (ret == 0) {
		f->dirty = 0;
		f->trunc_pending = 0;
		return 0;
	}
	/* Refused once, refused for good: a later flush or the release must
	 * not write what close() reported as not written. */
	f->refused = 1;
	if (why[0])
		note_reject(ni->conv, "messages.jsonl", why);
	else
		note_storage(ni->conv, "writing messages.jsonl", ret);
	return ret;
}

static int open_backing(const struct nodeinfo *ni, int flags, mode_t mode)
{
	char p[PATH_MAX];
	int ret;
	if (ni->kind == K_TFILE)
		return fsio_open(tools_fd, ni->name, flags, mode);
	ret = cpath(p, sizeof(p), ni->conv, ni->name);
	if (ret)
		return ret;
	return fsio_open(conv_root_fd(), p, flags, mode);
}

/* A writer that replaces the history: remember its size and generation
 * now (hist_commit keeps what is appended past them meanwhile) and, for an
 * in-place edit, take the copy it edits, all under the history lock. */
static int hist_open_replace(struct fh *f, const struct nodeinfo *ni, int flags,
			     int creating)
{
	struct conv *c = conv_get(ni->conv);
	struct stat st;
	int ret = 0;

	if (!c)
		return -ENOENT;
	f->mode = HM_REPLACE;
	f->trunc_pending = (flags & O_TRUNC) != 0;
	conv_hist_lock(c);
	f->base_gen = conv_hist_gen(c);
	if (fstat(f->fd, &st) < 0)
		ret = -errno;
	else
		f->base_size = st.st_size;
	/* In-place edits (no O_TRUNC) work on a copy, checked at close. */
	if (ret == 0 && !(flags & O_TRUNC) && !creating && st.st_size > 0) {
		size_t n = (size_t)st.st_size;
		char *all = n <= STORE_HISTORY_MAX ? malloc(n) : NULL;
		if (n > STORE_HISTORY_MAX)
			ret = -EFBIG;
		else if (!all)
			ret = -ENOMEM;
		else if (pread(f->fd, all, n, 0) != st.st_size)
			ret = -EIO;
		else
			ret = buf_append(&f->data, all, n);
		free(all);
	}
	conv_hist_unlock(c);
	conv_put(c);
	return ret;
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
				f->data.max = (size_t)cfg->max_prompt_bytes;
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

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
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

/* --- waiting readers ------------------------------------------------------ */

struct waiter {
	struct waiter *next;
	uint64_t id;
	fuse_req_t req;
	struct fh *f;
	struct conv *conv; /* f->conv: compared, not referenced */
	size_t size;
	off_t off;
	int ready;       /* may be answered (registration finished) */
	int busy;        /* a thread is checking it outside waiters_lock; it
			    stays listed, and that thread replies */
	int interrupted; /* set by on_interrupt when it could not reply */
	unsigned stamp;  /* last ops_answer_done pass that looked at it */
};

static pthread_mutex_t waiters_lock = PTHREAD_MUTEX_INITIALIZER;
static struct waiter *waiters;   /* waiters_lock */
static uint64_t next_waiter_id = 1; /* waiters_lock */
static int shutting_down;        /* waiters_lock */

/* A reply computed under the handle's lock and sent after unlocking it:
 * once a reply is out, the reader may close the file and a release on
 * another thread may free the handle, so nothing may touch it after. */
struct prepared {
	int err;
	char *buf;
	size_t len;
};

static void prepare_slice(const char *data, size_t total, size_t size, off_t off,
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

/* f->lock held. */
static void prepare_answer(struct fh *f, size_t size, off_t off, struct prepared *p)
{
	if (f->answer_err && (off == 0 || f->answer_len == 0)) {
		p->err = f->answer_err;
		p->buf = NULL;
		p->len = 0;
		return;
	}
	prepare_slice(f->answer, f->answer_len, size, off, p);
}

static void send_prepared(fuse_req_t req, struct prepared *p)
{
	if (p->err)
		fuse_reply_err(req, p->err);
	else
		fuse_reply_buf(req, p->buf, p->len);
	free(p->buf);
	p->buf = NULL;
}

/* Takes the answer into f when it is there. f->lock held. */
static int try_answer(struct fh *f)
{
	if (f->have_answer)
		return 1;
	if (conv_answer(f->conv, f->target, &f->answer, &f->answer_len, &f->answer_err))
		f->have_answer = 1;
	return f->have_answer;
}

static struct waiter *waiter_take(uint64_t id)
{
	struct waiter **pp, *w;
	for (pp = &waiters; (w = *pp); pp = &w->next)
		if (w->id == id) {
			*pp = w->next;
			return w;
		}
	return NULL;
}

static void on_interrupt(fuse_req_t req, void *data)
{
	(void)req;
	uint64_t id = (uint64_t)(uintptr_t)data;
	struct waiter *w;

	pthread_mutex_lock(&waiters_lock);
	for (w = waiters; w && w->id != id; w = w->next)
		;
	if (w && (!w->ready || w->busy)) {
		w->interrupted = 1; /* the thread holding it replies */
		w = NULL;
	} else if (w) {
		w = waiter_take(id);
	}
	pthread_mutex_unlock(&waiters_lock);
	if (w) {
		fuse_reply_err(w->req, EINTR);
		free(w);
	}
}

void ops_answer_done(struct conv *conv)
{
	static unsigned passes; /* waiters_lock */
	unsigned stamp;
	struct waiter *w;

	pthread_mutex_lock(&waiters_lock);
	stamp = ++passes;
	pthread_mutex_unlock(&waiters_lock);
	/* One waiter at a time, each looked at once in this pass. A waiter
	 * being looked at stays listed and busy, so that an interrupt
	 * arriving meanwhile is not lost (on_interrupt marks it instead). */
	for (;;) {
		struct prepared p = {0, NULL, 0};
		int answered, interrupted;

		pthread_mutex_lock(&waiters_lock);
		for (w = waiters; w; w = w->next)
			if (w->ready && !w->busy && w->conv == conv && w->stamp != stamp)
				break;
		if (w) {
			w->busy = 1;
			w->stamp = stamp;
		}
		pthread_mutex_unlock(&waiters_lock);
		if (!w)
			break;

		pthread_mutex_lock(&w->f->lock);
		answered = try_answer(w->f);
		if (answered)
			prepare_answer(w->f, w->size, w->off, &p);
		pthread_mutex_unlock(&w->f->lock);

		pthread_mutex_lock(&waiters_lock);
		interrupted = w->interrupted;
		if (answered || interrupted)
			waiter_take(w->id);
		else
			w->busy = 0; /* not this reader's answer yet */
		pthread_mutex_unlock(&waiters_lock);
		if (answered) {
			send_prepared(w->req, &p);
			free(w);
		} else if (interrupted) {
			fuse_reply_err(w->req, EINTR);
			free(w);
		}
	}
}

static void read_reply(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	struct waiter *w;
	uint64_t id;

	struct prepared p;

	pthread_mutex_lock(&f->lock);
	if (try_answer(f)) {
		prepare_answer(f, size, off, &p);
		pthread_mutex_unlock(&f->lock);
		send_prepared(req, &p);
		return;
	}
	pthread_mutex_unlock(&f->lock);

	w = calloc(1, sizeof(*w));
	if (!w) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	w->req = req;
	w->f = f;
	w->size = size;
	w->off = off;
	w->conv = f->conv;
	pthread_mutex_lock(&waiters_lock);
	if (shutting_down) {
		pthread_mutex_unlock(&waiters_lock);
		free(w);
		fuse_reply_err(req, ESHUTDOWN);
		return;
	}
	id = w->id = next_waiter_id++;
	w->next = waiters;
	waiters = w;
	pthread_mutex_unlock(&waiters_lock);

	/* Without holding our locks: it may call on_interrupt at once. */
	fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)id);

	pthread_mutex_lock(&waiters_lock);
	w->ready = 1;
	if (w->interrupted) {
		waiter_take(id);
		pthread_mutex_unlock(&waiters_lock);
		fuse_reply_err(req, EINTR);
		free(w);
		return;
	}
	pthread_mutex_unlock(&waiters_lock);
	/* The answer may have finished while we registered. */
	pthread_mutex_lock(&f->lock);
	if (try_answer(f)) {
		struct waiter *x;
		pthread_mutex_unlock(&f->lock);
		pthread_mutex_lock(&waiters_lock);
		for (x = waiters; x && x->id != id; x = x->next)
			;
		/* A busy waiter is being answered by ops_answer_done. */
		w = (x && !x->busy) ? waiter_take(id) : NULL;
		pthread_mutex_unlock(&waiters_lock);
		if (w) {
			pthread_mutex_lock(&f->lock);
			prepare_answer(f, size, off, &p);
			pthread_mutex_unlock(&f->lock);
			send_prepared(req, &p);
			free(w);
		}
		return;
	}
	pthread_mutex_unlock(&f->lock);
}

struct dirh;
static void dir_free(struct dirh *d);

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

void ops_shutdown(void)
{
	struct waiter *w, **pp, *gone = NULL;
	pthread_mutex_lock(&waiters_lock);
	shutting_down = 1;
	for (pp = &waiters; (w = *pp);) {
		if (w->busy) {
			w->interrupted = 1; /* its holder replies */
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		w->next = gone;
		gone = w;
	}
	pthread_mutex_unlock(&waiters_lock);
	while ((w = gone)) {
		gone = w->next;
		fuse_reply_err(w->req, ESHUTDOWN);
		free(w);
	}
}

/* --- read / write ---------------------------------------------------------- */

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
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

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data,
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
				 cfg->max_prompt_bytes);
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

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
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

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
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

/* --- attributes -------------------------------------------------------------- */

static int truncate_history(const struct nodeinfo *ni, off_t size)
{
	char why[300] = "";
	char *data = NULL;
	size_t len = 0;
	struct conv *c;
	int ret, dfd;

	c = conv_get(ni->conv);
	if (!c)
		return -ENOENT;
	dfd = conv_dir(ni->conv);
	if (dfd < 0) {
		conv_put(c);
		return dfd;
	}
	/* Read, check and write back under the history lock: nothing may
	 * replace the file in between. */
	conv_hist_lock(c);
	ret = store_hist_read(dfd, &data, &len);
	if (ret == 0 && (size_t)size > len) {
		/* Zeros are not JSON lines: growing is refused, not padded. */
		snprintf(why, sizeof(why), "cannot grow the history (%zu bytes) to %lld: "
					   "only whole JSON lines can be added",
			 len, (long long)size);
		ret = -EINVAL;
	}
	if (ret == 0 && (size_t)size < len) {
		ret = jsonl_check(data, (size_t)size, why, sizeof(why), NULL);
		if (ret == 0)
			ret = store_hist_replace(dfd, data, (size_t)size);
		else
			ret = -EINVAL;
		if (ret == 0)
			conv_hist_replaced(c);
	}
	conv_hist_unlock(c);
	conv_put(c);
	close(dfd);
	free(data);
	if (ret == -EINVAL && why[0])
		note_reject(ni->conv, "truncating messages.jsonl", why);
	else if (ret)
		note_storage(ni->conv, "truncating messages.jsonl", ret);
	return ret;
}

/* Times set on messages.jsonl while a writer holds it open (cp -a, tar:
 * futimens before close, which FUSE sends without the handle): the commit
 * at close writes a new file, which must carry them too. */
static void hist_note_times(uint64_t ino, int to_set, const struct stat *attr)
{
	pthread_mutex_lock(&handles_lock);
	for (struct hlink *l = handles.next; l != &handles; l = l->next) {
		struct fh *f = (struct fh *)l;
		if (l->is_dir || f->kind != FH_HIST || !f->writable || f->ino != ino)
			continue;
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
	pthread_mutex_unlock(&handles_lock);
}

static int truncate_plain(int dfd, const char *rel, off_t size)
{
	int fd = fsio_open(dfd, rel, O_WRONLY, 0), ret = 0;
	if (fd < 0)
		return fd;
	if (ftruncate(fd, size) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct nodeinfo ni;
	struct stat st;
	char p[PATH_MAX];
	int dfd, ret = node_info(ino, &ni);
	const char *rel;

	if (ret)
		goto out;
	if (ni.kind == K_CFILE) {
		ret = cpath(p, sizeof(p), ni.conv, ni.name);
		dfd = conv_root_fd();
		rel = p;
	} else if (ni.kind == K_TFILE) {
		dfd = tools_fd;
		rel = ni.name;
	} else if (ni.kind == K_CONV) {
		dfd = conv_root_fd();
		rel = ni.name;
	} else if (ni.kind == K_CONVS || ni.kind == K_TOOLS) {
		dfd = ni.kind == K_CONVS ? conv_root_fd() : tools_fd;
		rel = ".";
	} else {
		/* Synthesised files: only harmless time updates (touch). */
		ret = (to_set & ~(FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
				  FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW))
			      ? -EACCES
			      : 0;
		if (ret == 0) {
			ret = attr_of(ino, &ni, &st);
			if (ret == 0) {
				fuse_reply_attr(req, &st, 0);
				return;
			}
		}
		goto out;
	}
	if (ret)
		goto out;
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (ni.kind != K_CFILE && ni.kind != K_TFILE) {
			ret = -EISDIR;
			goto out;
		}
		if (ni.kind == K_CFILE && strcmp(ni.name, "messages.jsonl") == 0) {
			struct fh *f = fi ? FH(fi) : NULL;
			if (f && f->kind == FH_HIST && f->writable && f->mode == HM_REPLACE) {
				pthread_mutex_lock(&f->lock);
				if ((size_t)attr->st_size <= f->data.len) {
					f->data.len = (size_t)attr->st_size;
					if (f->data.data)
						f->data.data[f->data.len] = '\0';
					f->checked = 0;
					f->dirty = 1;
				} else {
					/* Zeros are not JSON lines. */
					ret = -EINVAL;
				}
				pthread_mutex_unlock(&f->lock);
				if (ret)
					note_reject(ni.conv, "truncating messages.jsonl",
						    "cannot grow the history: only whole JSON "
						    "lines can be added");
			} else {
				ret = truncate_history(&ni, attr->st_size);
			}
		} else if (ni.kind == K_CFILE && strcmp(ni.name, "stream") == 0) {
			/* Append-only: it may grow (zeros, like a disk), never
			 * shrink. */
			if (fstatat(dfd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    attr->st_size < st.st_size)
				ret = -EPERM;
			else
				ret = truncate_plain(dfd, rel, attr->st_size);
		} else if (ni.kind == K_CFILE && strcmp(ni.name, "prompt") == 0) {
			ret = 0; /* always empty */
		} else {
			ret = truncate_plain(dfd, rel, attr->st_size);
		}
		if (ret)
			goto out;
	}
	if (ni.kind == K_CFILE && strcmp(ni.name, STORE_HISTORY) == 0 &&
	    (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)))
		hist_note_times(ino, to_set, attr);
	if ((ni.kind == K_CFILE || ni.kind == K_TFILE) &&
	    fstatat(dfd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
		log_warnx("refused to change a symlink: %s", rel);
		ret = -ELOOP;
		goto out;
	}
	if (to_set & FUSE_SET_ATTR_MODE) {
		if (fchmodat(dfd, rel, attr->st_mode & 07777, 0) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t u = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t g = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (fchownat(dfd, rel, u, g, AT_SYMLINK_NOFOLLOW) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2];
		tv[0].tv_sec = 0;
		tv[1].tv_sec = 0;
		tv[0].tv_nsec = UTIME_OMIT;
		tv[1].tv_nsec = UTIME_OMIT;
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		if (utimensat(dfd, rel, tv, AT_SYMLINK_NOFOLLOW) < 0) {
			ret = -errno;
			goto out;
		}
	}
	ret = attr_of(ino, &ni, &st);
	if (ret == 0) {
		fuse_reply_attr(req, &st, 0);
		return;
	}
out:
	fuse_reply_err(req, -ret);
}

/* --- directories ------------------------------------------------------------ */

struct dirh {
	struct hlink link; /* first, as in struct fh */
	size_t n;
	char **names;
	unsigned char *types;
};

static int dir_add(struct dirh *d, const char *name, unsigned char type)
{
	char **nn = realloc(d->names, (d->n + 1) * sizeof(*nn));
	unsigned char *nt;
	if (!nn)
		return -ENOMEM;
	d->names = nn;
	nt = realloc(d->types, d->n + 1);
	if (!nt)
		return -ENOMEM;
	d->types = nt;
	d->names[d->n] = strdup(name);
	if (!d->names[d->n])
		return -ENOMEM;
	d->types[d->n] = type;
	d->n++;
	return 0;
}

static void dir_free(struct dirh *d)
{
	hlink_del(&d->link);
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	free(d->names);
	free(d->types);
	free(d);
}

static int list_backing(struct dirh *d, int dfd, const char *rel, int dirs_only)
{
	int fd = openat(dfd, rel, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	DIR *dp;
	struct dirent *de;
	int ret = 0;

	if (fd < 0)
		return -errno;
	dp = fdopendir(fd);
	if (!dp) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(dp)) && ret == 0) {
		if (de->d_name[0] == '.' &&
		    (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
			continue;
		if (!strncmp(de->d_name, NAMES_PRIVATE_PREFIX, strlen(NAMES_PRIVATE_PREFIX)))
			continue;
		if (dirs_only && de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		ret = dir_add(d, de->d_name, de->d_type);
	}
	closedir(dp);
	return ret;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct nodeinfo ni;
	struct dirh *d;
	int ret = node_info(ino, &ni);

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	hlink_add(&d->link, 1);
	dir_add(d, ".", DT_DIR);
	dir_add(d, "..", DT_DIR);
	switch (ni.kind) {
	case K_ROOT:
		for (size_t i = 0; i < NFIXED; i++)
			dir_add(d, fixed[i].name,
				fixed[i].kind == K_HEALTH || fixed[i].kind == K_METRICS ? DT_REG
											: DT_DIR);
		break;
	case K_MODELS: {
		struct model_list *l = models_get(0);
		for (size_t i = 0; i < l->n; i++) {
			char *e = names_model_encode(l->v[i].id);
			if (e)
				dir_add(d, e, DT_REG);
			free(e);
		}
		models_put(l);
		break;
	}
	case K_CONVS:
		ret = list_backing(d, conv_root_fd(), ".", 1);
		break;
	case K_CONV:
		ret = list_backing(d, conv_root_fd(), ni.name, 0);
		break;
	case K_TOOLS:
		ret = list_backing(d, tools_fd, ".", 0);
		break;
	default:
		ret = -ENOTDIR;
	}
	if (ret) {
		dir_free(d);
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)d;
	/* conversations/ changes only through the mount (mkdir, rmdir, mv),
	 * which the kernel sees: its listing may be cached. Inside a
	 * conversation lmsfs itself creates files, so that one is not. */
	fi->cache_readdir = ni.kind == K_CONVS;
	fi->keep_cache = ni.kind == K_CONVS;
	if (fuse_reply_open(req, fi) == -ENOENT)
		dir_free(d);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)ino;
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;
	char *out = malloc(size);
	size_t used = 0;

	if (!out) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = (size_t)off; i < d->n; i++) {
		struct stat st;
		size_t need;
		memset(&st, 0, sizeof(st));
		st.st_ino = 0x7fffffff00000000ull + i;
		st.st_mode = (mode_t)(d->types[i] == DT_DIR ? S_IFDIR : S_IFREG);
		need = fuse_add_direntry(req, out + used, size - used, d->names[i], &st,
					 (off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, out, used);
	free(out);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	dir_free((struct dirh *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct nodeinfo pi, ni;
	struct stat st;
	uint64_t ino;
	int ret = node_info(parent, &pi);

	if (ret == 0 && pi.kind != K_CONVS)
		ret = pi.kind == K_CONV ? -EPERM : -EACCES;
	if (ret == 0)
		ret = conv_mkdir(name, mode);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	memset(&ni, 0, sizeof(ni));
	ni.kind = K_CONV;
	snprintf(ni.name, sizeof(ni.name), "%s", name);
	ret = attr_of(0, &ni, &st);
	if (ret || !node_get(parent, name, K_CONV, &ino)) {
		fuse_reply_err(req, ret ? -ret : ENOMEM);
		return;
	}
	reply_entry(req, ino, &st);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi;
	int ret = node_info(parent, &pi);
	if (ret == 0 && pi.kind != K_CONVS)
		ret = pi.kind == K_ROOT ? -EBUSY : -ENOTDIR;
	if (ret == 0)
		ret = conv_rmdir(name);
	if (ret == 0)
		node_drop_name(parent, name);
	fuse_reply_err(req, -ret);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct nodeinfo pi;
	char p[PATH_MAX];
	enum kind k;
	int ret = node_info(parent, &pi);

	if (ret)
		goto out;
	if (pi.kind == K_CONV) {
		if (is_hidden_ctl(name, &k)) {
			ret = -EPERM;
			goto out;
		}
		ret = names_file_ok(name);
		if (ret == 0)
			ret = cpath(p, sizeof(p), pi.conv, name);
		if (ret == 0 && unlinkat(conv_root_fd(), p, 0) < 0)
			ret = -errno;
	} else if (pi.kind == K_TOOLS) {
		ret = names_file_ok(name);
		if (ret == 0 && unlinkat(tools_fd, name, 0) < 0)
			ret = -errno;
	} else {
		ret = -EACCES;
	}
	if (ret == 0)
		node_drop_name(parent, name);
out:
	fuse_reply_err(req, -ret);
}

/* Files created in a conversation (an editor's or sed's temporary) remember
 * the history's size and generation at that moment: renamed over
 * messages.jsonl, they keep what lmsfs appended meanwhile. A small table;
 * the oldest entry goes first. temps_lock is a leaf. */
#define NTEMPS 32
static struct tempbase {
	char conv[NAME_MAX + 1];
	char name[NAME_MAX + 1];
	off_t size;
	uint64_t gen;
	unsigned long stamp; /* 0: free */
} temps[NTEMPS];           /* temps_lock */
static unsigned long temps_clock; /* temps_lock */
static pthread_mutex_t temps_lock = PTHREAD_MUTEX_INITIALIZER;

static int is_special_file(const char *name)
{
	return !strcmp(name, STORE_HISTORY) || !strcmp(name, STORE_STREAM) ||
	       !strcmp(name, STORE_PROMPT) || !strcmp(name, "model") ||
	       !strcmp(name, "system") || !strcmp(name, "params.json");
}

static void temp_remember(const char *conv, const char *name)
{
	struct conv *c;
	struct tempbase t = {.stamp = 1};
	int dfd, slot = 0;
	off_t size;

	if (is_special_file(name) || !(c = conv_get(conv)))
		return;
	dfd = conv_dir(conv);
	if (dfd >= 0) {
		conv_hist_lock(c);
		size = store_hist_size(dfd);
		t.size = size > 0 ? size : 0;
		t.gen = conv_hist_gen(c);
		conv_hist_unlock(c);
		close(dfd);
	}
	conv_put(c);
	if (dfd < 0)
		return;
	snprintf(t.conv, sizeof(t.conv), "%s", conv);
	snprintf(t.name, sizeof(t.name), "%s", name);
	pthread_mutex_lock(&temps_lock);
	for (int i = 1; i < NTEMPS; i++)
		if (temps[i].stamp < temps[slot].stamp)
			slot = i;
	t.stamp = ++temps_clock;
	temps[slot] = t;
	pthread_mutex_unlock(&temps_lock);
}

/* Takes the entry for conv/name; 0 when found. */
static int temp_take(const char *conv, const char *name, off_t *size, uint64_t *gen)
{
	int ret = -ENOENT;
	pthread_mutex_lock(&temps_lock);
	for (int i = 0; i < NTEMPS; i++)
		if (temps[i].stamp && !strcmp(temps[i].conv, conv) &&
		    !strcmp(temps[i].name, name)) {
			*size = temps[i].size;
			*gen = temps[i].gen;
			temps[i].stamp = 0;
			ret = 0;
			break;
		}
	pthread_mutex_unlock(&temps_lock);
	return ret;
}

/* Renames conversation file `name` over messages.jsonl: checked whole,
 * with the lines appended since the file was created kept after its own
 * (see temp_remember). History lock held. */
static int rename_over_history(struct conv *c, const char *conv, const char *name,
			       const char *from, const char *to, unsigned flags)
{
	char *data = NULL, *merged = NULL, why[300];
	size_t len, mlen;
	off_t base;
	uint64_t gen;
	int ret, dfd;

	ret = fsio_read(conv_root_fd(), from, STORE_HISTORY_MAX, &data, &len);
	if (ret)
		return ret;
	if (jsonl_check(data, len, why, sizeof(why), NULL) != 0) {
		free(data);
		note_reject(conv, "renaming over messages.jsonl", why);
		return -EINVAL;
	}
	if (c && temp_take(conv, name, &base, &gen) == 0 && gen == conv_hist_gen(c) &&
	    (dfd = conv_dir(conv)) >= 0) {
		ret = merge_appended(dfd, data, len, base, &merged, &mlen);
		close(dfd);
		if (ret == 0 && merged)
			ret = fsio_replace(conv_root_fd(), from, merged, mlen);
	}
	free(merged);
	free(data);
	if (ret == 0 && renameat2(conv_root_fd(), from, conv_root_fd(), to, flags) < 0)
		ret = -errno;
	if (ret == 0 && c)
		conv_hist_replaced(c);
	if (ret == 0)
		fsio_sync_parent(conv_root_fd(), to);
	return ret;
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct nodeinfo pi, npi;
	char from[PATH_MAX], to[PATH_MAX];
	enum kind k;
	int ret = node_info(parent, &pi);

	if (ret == 0)
		ret = node_info(newparent, &npi);
	if (ret)
		goto out;
	if (flags & ~RENAME_NOREPLACE) {
		ret = -EINVAL;
		goto out;
	}
	if (pi.kind == K_CONVS && npi.kind == K_CONVS) {
		ret = conv_rename(name, newname, flags);
	} else if (pi.kind == K_CONV && npi.kind == K_CONV) {
		struct conv *c;
		if (is_hidden_ctl(name, &k) || is_hidden_ctl(newname, &k)) {
			ret = -EPERM;
			goto out;
		}
		ret = names_file_ok(newname);
		if (ret == 0)
			ret = names_file_ok(name);
		if (ret == 0)
			ret = cpath(from, sizeof(from), pi.conv, name);
		if (ret == 0)
			ret = cpath(to, sizeof(to), npi.conv, newname);
		if (ret)
			goto out;
		if (strcmp(newname, "stream") == 0 || strcmp(name, "stream") == 0) {
			/* The transcript is append-only: it may not be replaced. */
			struct stat st;
			if (strcmp(newname, "stream") == 0 &&
			    fstatat(conv_root_fd(), to, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    st.st_size > 0) {
				ret = -EPERM;
				goto out;
			}
		}
		c = conv_get(npi.conv);
		if (c)
			conv_hist_lock(c);
		if (strcmp(newname, STORE_HISTORY) == 0)
			ret = rename_over_history(c, npi.conv, name, from, to, flags);
		else if (renameat2(conv_root_fd(), from, conv_root_fd(), to, flags) < 0)
			ret = -errno;
		else if (c && strcmp(name, STORE_HISTORY) == 0)
			conv_hist_replaced(c); /* moved away (vim's backup) */
		if (c) {
			conv_hist_unlock(c);
			conv_put(c);
		}
	} else if (pi.kind == K_TOOLS && npi.kind == K_TOOLS) {
		ret = names_file_ok(newname);
		if (ret == 0 && renameat2(tools_fd, name, tools_fd, newname, flags) < 0)
			ret = -errno;
	} else if (pi.kind == K_CONVS || npi.kind == K_CONVS) {
		ret = -EPERM; /* conversations do not nest */
	} else {
		ret = -EXDEV;
	}
	if (ret == 0)
		node_move(parent, name, newparent, newname);
out:
	fuse_reply_err(req, -ret);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	(void)parent; (void)name; (void)mode; (void)rdev;
	fuse_reply_err(req, EPERM);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	(void)link; (void)parent; (void)name;
	fuse_reply_err(req, EPERM);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	(void)ino; (void)newparent; (void)newname;
	fuse_reply_err(req, EPERM);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	if (fstatvfs(state_fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

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
}

int ops_init(const struct config *c, int sfd)
{
	cfg = c;
	state_fd = sfd;
	my_uid = getuid();
	my_gid = getgid();
	start_time = time(NULL);
	if (mkdirat(sfd, "tools", 0700) < 0 && errno != EEXIST)
		return -errno;
	tools_fd = tooldef_dir_fd();
	if (tools_fd < 0)
		tools_fd = openat(sfd, "tools", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	return tools_fd < 0 ? -errno : 0;
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
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.create = op_create,
};

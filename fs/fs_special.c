/* fs_special.c - which names mean something (the synthesised root files,
 * models/, the hidden control files and the special files of a
 * conversation) and the attributes every node shows. */
#include "fs_int.h"

#include "attach.h"
#include "conv.h"
#include "fsio.h"
#include "models.h"
#include "names.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The root: fixed names and inode numbers. */
const struct root_entry fs_root_entries[] = {
	{"models", K_MODELS, 2},   {"conversations", K_CONVS, 3},
	{"tools", K_TOOLS, 4},     {"health", K_HEALTH, 5},
	{"metrics", K_METRICS, 6},
};
const size_t fs_n_root_entries = sizeof(fs_root_entries) / sizeof(fs_root_entries[0]);

/* --- the special files of a conversation ---------------------------------
 *
 * One entry per name that means something in conversations/NAME/. Adding a
 * special file is adding an entry here (and its file_ops). Every other
 * name is a plain file kept as written (editor swap files, sed temps). */
enum {
	SP_HIDDEN = 1, /* not listed by readdir; cannot be created or removed */
	SP_EMPTY = 2,  /* always shows size 0 */
	SP_DAEMON = 4, /* lmsfs writes it: while the conversation is busy its
			  attributes are not cached at all (a change someone
			  forgot to announce is still seen at once) */
};

/* Caching (fs_int.h): `timeout` is how long the kernel keeps the entry
 * and the attributes. lmsfs announces its own changes (conv_changed), so
 * every file here may be cached long; the data caching of open files is
 * each file_ops' open (history readers keep their pages, stream and the
 * generated files are read directly). */
static const struct special {
	const char *name;
	enum kind kind;
	const struct file_ops *ops;
	unsigned flags;
	double timeout;
} conv_files[] = {
	{STORE_PROMPT, K_CFILE, &prompt_ops, SP_EMPTY, FS_CACHE_LONG},
	{STORE_HISTORY, K_CFILE, &hist_ops, SP_DAEMON, FS_CACHE_LONG},
	{STORE_STREAM, K_CFILE, &stream_ops, SP_DAEMON, FS_CACHE_LONG},
	{STORE_REASONING, K_CFILE, &stream_ops, SP_DAEMON, FS_CACHE_LONG},
	{"model", K_CFILE, &setting_ops, 0, FS_CACHE_LONG},
	{"system", K_CFILE, &setting_ops, 0, FS_CACHE_LONG},
	{"params.json", K_CFILE, &setting_ops, 0, FS_CACHE_LONG},
	{".reply", K_REPLY, &reply_ops, SP_HIDDEN, FS_CACHE_LONG},
	{".status", K_STATUS, &generated_ops, SP_HIDDEN, FS_CACHE_LONG},
	{".ctl", K_CTL, &ctl_ops, SP_HIDDEN, FS_CACHE_LONG},
};
#define NCONV_FILES (sizeof(conv_files) / sizeof(conv_files[0]))

static const struct special *conv_file(const char *name)
{
	for (size_t i = 0; i < NCONV_FILES; i++)
		if (strcmp(conv_files[i].name, name) == 0)
			return &conv_files[i];
	return NULL;
}

int is_hidden_ctl(const char *name, enum kind *k)
{
	const struct special *sp = conv_file(name);
	if (!sp || !(sp->flags & SP_HIDDEN))
		return 0;
	*k = sp->kind;
	return 1;
}

int is_special_file(const char *name)
{
	return conv_file(name) != NULL;
}

const struct file_ops *special_ops(const struct nodeinfo *ni)
{
	const struct special *sp;

	switch (ni->kind) {
	case K_ROOT:
	case K_MODELS:
	case K_CONVS:
	case K_TOOLS:
	case K_CONV:
		return NULL;
	case K_MODEL:
		return &model_ops;
	case K_HEALTH:
	case K_METRICS:
	case K_TSTATUS:
		return &generated_ops;
	case K_TFILE:
		return strcmp(ni->name, "mcp.json") == 0 ? &mcpconf_ops : &plain_ops;
	case K_SFILE:
		return &plain_ops;
	case K_SUBDIR:
		return NULL;
	case K_REPLY:
	case K_STATUS:
	case K_CTL:
	case K_CFILE:
		sp = conv_file(ni->name);
		return sp ? sp->ops : &plain_ops;
	}
	return NULL;
}

/* "conv/name" relative to the conversations directory. */
int cpath(char *out, size_t n, const char *conv, const char *name)
{
	int len = snprintf(out, n, "%s/%s", conv, name);
	return (len < 0 || (size_t)len >= n) ? -ENAMETOOLONG : 0;
}

int is_conv_subdir(const char *name)
{
	return strcmp(name, ATTACH_OUTBOX) == 0 || strcmp(name, ATTACH_FILES) == 0;
}

int node_path(char *out, size_t n, const struct nodeinfo *ni)
{
	int len;
	if (ni->kind != K_SFILE)
		return cpath(out, n, ni->conv, ni->name);
	len = snprintf(out, n, "%s/%s/%s", ni->conv, ni->sub, ni->name);
	return (len < 0 || (size_t)len >= n) ? -ENAMETOOLONG : 0;
}

/* A conversation's directory, opened without following symlinks. */
int conv_dir(const char *conv)
{
	return fsio_open(conv_root_fd(), conv, O_RDONLY | O_DIRECTORY, 0);
}

/* The JSON of the loaded model whose file name is fname (malloc'd), or
 * NULL when no such model is loaded; for .available, the list of
 * downloaded models. */
char *model_json(const char *fname)
{
	char *id, *json = NULL;
	struct model_list *l;

	if (strcmp(fname, MODELS_AVAILABLE) == 0) {
		/* Every downloaded model, named as its file would be. */
		struct buf b;
		buf_init(&b, 16u << 20);
		if (models_available_text(&b) == 0)
			json = strndup(b.data ? b.data : "", b.len);
		buf_free(&b);
		return json;
	}
	id = names_model_decode(fname);
	if (!id)
		return NULL;
	l = models_get(0);
	for (size_t i = 0; i < l->n && !json; i++)
		if (strcmp(l->v[i].id, id) == 0 && models_allowed(id))
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
	st->st_uid = fs_uid;
	st->st_gid = fs_gid;
	st->st_size = size;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = fs_start_time;
}

int attr_of(uint64_t ino, const struct nodeinfo *ni, struct stat *st)
{
	char p[PATH_MAX];
	int ret;

	switch (ni->kind) {
	case K_ROOT:
	case K_MODELS:
		/* models/ is writable (touch loads, rm unloads); root too. */
		synth_attr(st, ino, S_IFDIR | 0755, 0);
		/* models/ changes with the server: a new time each time it is
		 * looked at makes the kernel list it again (its listing is
		 * cached, and dropped when the directory's mtime changed). */
		if (ni->kind == K_MODELS)
			clock_gettime(CLOCK_REALTIME, &st->st_mtim);
		return 0;
	case K_CONVS:
		if (fstatat(conv_root_fd(), ".", st, 0) < 0)
			return -errno;
		break;
	case K_TOOLS:
		if (fstat(fs_tools_fd, st) < 0)
			return -errno;
		break;
	case K_MODEL: {
		char *json = model_json(ni->name);
		if (!json)
			return models_created_attr(ino, ni->name, st);
		synth_attr(st, ino,
			   S_IFREG | (strcmp(ni->name, MODELS_AVAILABLE) == 0 ? 0444 : 0644),
			   (off_t)strlen(json));
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
		if (conv_file(ni->name) && (conv_file(ni->name)->flags & SP_EMPTY))
			st->st_size = 0;
		break;
	case K_TFILE:
		if (fstatat(fs_tools_fd, ni->name, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		break;
	case K_SUBDIR:
	case K_SFILE:
		ret = node_path(p, sizeof(p), ni);
		if (ret)
			return ret;
		if (fstatat(conv_root_fd(), p, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		if (ni->kind == K_SUBDIR && !S_ISDIR(st->st_mode))
			return -ENOENT;
		break;
	}
	st->st_ino = ino;
	return 0;
}

/* --- caching ---------------------------------------------------------------- */

void cache_policy(const struct nodeinfo *ni, struct cache_policy *p)
{
	const struct special *sp;

	p->entry = p->attr = FS_CACHE_LONG;
	switch (ni->kind) {
	case K_ROOT:
	case K_CONVS:
	case K_TOOLS:
	case K_CONV:
	case K_TFILE:
	case K_TSTATUS:
		break; /* changed through the mount, or synthesised and fixed */
	case K_MODELS:
		p->attr = 0; /* see attr_of */
		break;
	case K_SUBDIR:
		/* attach/ and files/: lmsfs moves files between them; their
		 * times, asked each time, tell the kernel when to list again. */
		p->attr = 0;
		break;
	case K_SFILE:
		/* Moved out of attach/ behind the kernel's back. */
		p->entry = p->attr = 0;
		break;
	case K_HEALTH:
	case K_METRICS:
		p->attr = 0; /* their time is the time they are looked at */
		break;
	case K_MODEL:
		/* Models come and go with the server: asked again each time.
		 * The name too: a name the kernel still held for a model that
		 * another client unloaded would make `touch` open the old
		 * file (loading nothing) instead of creating it (a load). */
		p->entry = 0;
		p->attr = 0;
		break;
	case K_REPLY:
	case K_STATUS:
	case K_CTL:
	case K_CFILE:
		sp = conv_file(ni->name);
		if (!sp)
			break; /* the user's own files, changed through the mount */
		p->entry = p->attr = sp->timeout;
		if ((sp->flags & SP_DAEMON) && conv_busy(ni->conv))
			p->attr = 0;
		break;
	}
}

void fill_entry(struct fuse_entry_param *e, uint64_t ino, const struct nodeinfo *ni,
		const struct stat *st)
{
	struct cache_policy p;

	cache_policy(ni, &p);
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->attr = *st;
	e->attr.st_ino = ino;
	e->attr_timeout = p.attr;
	e->entry_timeout = p.entry;
}

/* fs_special.c - which names mean something (the synthesised root files,
 * models/, the hidden control files and the special files of a
 * conversation) and the attributes every node shows. */
#include "fs_int.h"

#include "conv.h"
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

/* --- helpers --------------------------------------------------------------- */

int is_hidden_ctl(const char *name, enum kind *k)
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

int is_special_file(const char *name)
{
	return !strcmp(name, STORE_HISTORY) || !strcmp(name, STORE_STREAM) ||
	       !strcmp(name, STORE_PROMPT) || !strcmp(name, "model") ||
	       !strcmp(name, "system") || !strcmp(name, "params.json");
}

/* "conv/name" relative to the conversations directory. */
int cpath(char *out, size_t n, const char *conv, const char *name)
{
	int len = snprintf(out, n, "%s/%s", conv, name);
	return (len < 0 || (size_t)len >= n) ? -ENAMETOOLONG : 0;
}

/* The JSON of the loaded model whose file name is fname (malloc'd), or
 * NULL when no such model is loaded. */
char *model_json(const char *fname)
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
		synth_attr(st, ino, S_IFDIR | (ni->kind == K_ROOT ? 0755 : 0555), 0);
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
		if (fstatat(fs_tools_fd, ni->name, st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		break;
	}
	st->st_ino = ino;
	return 0;
}

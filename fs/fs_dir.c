/* fs_dir.c - directory listings: the root, models/, conversations/, a
 * conversation (hidden and private files left out) and tools/.
 *
 * Where the kernel allows it, directories are not opened at all (no
 * OPENDIR and RELEASEDIR round trips per directory: find, du and grep -r
 * enter thousands) and every listing is cached by the kernel; readdir
 * then lists by inode number, from a listing made when reading starts at
 * offset 0 and kept for the reads that follow (listings_lock, a leaf). */
#include "fs_int.h"

#include "conv.h"
#include "fsio.h"
#include "models.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- directories ------------------------------------------------------------ */

struct dirh {
	struct hlink link; /* first, as in struct fh (opened directories) */
	int refs;          /* listings_lock (kept listings) */
	uint64_t ino;
	struct nodeinfo ni; /* the directory, as of the last listing */
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

static void dir_clear(struct dirh *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->names[i]);
	free(d->names);
	free(d->types);
	d->names = NULL;
	d->types = NULL;
	d->n = 0;
}

static void dir_free(struct dirh *d)
{
	hlink_del(&d->link);
	dir_clear(d);
	free(d);
}

static void dir_free_link(struct hlink *l)
{
	dir_free((struct dirh *)l);
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
		if (names_private(de->d_name))
			continue;
		if (dirs_only && de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		ret = dir_add(d, de->d_name, de->d_type);
	}
	closedir(dp);
	return ret;
}

/* Lists directory d->ino, by its current name, into d (0 or -errno). */
static int dir_fill(struct dirh *d)
{
	int ret = node_info(d->ino, &d->ni);

	dir_clear(d);
	if (ret == 0)
		ret = dir_add(d, ".", DT_DIR);
	if (ret == 0)
		ret = dir_add(d, "..", DT_DIR);
	if (ret)
		return ret;
	switch (d->ni.kind) {
	case K_ROOT:
		for (size_t i = 0; i < fs_n_root_entries && ret == 0; i++)
			ret = dir_add(d, fs_root_entries[i].name,
				      fs_root_entries[i].kind == K_HEALTH ||
						      fs_root_entries[i].kind == K_METRICS
					      ? DT_REG
					      : DT_DIR);
		break;
	case K_MODELS: {
		struct model_list *l = models_get(0);
		for (size_t i = 0; i < l->n; i++) {
			char *e;
			if (!models_allowed(l->v[i].id))
				continue; /* models/ shows what may be used */
			e = names_model_encode(l->v[i].id);
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
		ret = list_backing(d, conv_root_fd(), d->ni.name, 0);
		break;
	case K_TOOLS:
		ret = list_backing(d, fs_tools_fd, ".", 0);
		break;
	case K_SUBDIR: {
		/* Opened without following a symlink planted since lookup. */
		char p[PATH_MAX];
		int fd;
		ret = cpath(p, sizeof(p), d->ni.conv, d->ni.name);
		fd = ret ? ret : fsio_open(conv_root_fd(), p, O_RDONLY | O_DIRECTORY, 0);
		ret = fd < 0 ? fd : list_backing(d, fd, ".", 0);
		if (fd >= 0)
			close(fd);
		break;
	}
	default:
		ret = -ENOTDIR;
	}
	return ret;
}

int fs_no_opendir;

void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dirh *d;
	int ret;

	if (fs_no_opendir) {
		/* From now on the kernel opens directories by itself and caches
		 * every listing (FUSE_CAP_NO_OPENDIR_SUPPORT). */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	hlink_add(&d->link, 1, dir_free_link);
	d->ino = ino;
	ret = node_info(ino, &d->ni);
	if (ret == 0 && !(d->ni.kind == K_ROOT || d->ni.kind == K_MODELS || d->ni.kind == K_CONVS ||
			  d->ni.kind == K_CONV || d->ni.kind == K_TOOLS || d->ni.kind == K_SUBDIR))
		ret = -ENOTDIR;
	if (ret) {
		dir_free(d);
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)d;
	/* conversations/ changes only through the mount (mkdir, rmdir, mv),
	 * which the kernel sees: its listing may be cached. So may a
	 * conversation's: the files lmsfs creates there are announced
	 * (conv_changed drops the cached listing). */
	fi->cache_readdir = d->ni.kind == K_CONVS || d->ni.kind == K_CONV;
	fi->keep_cache = fi->cache_readdir;
	if (fuse_reply_open(req, fi) == -ENOENT)
		dir_free(d);
}

/* What an entry of directory d is (kind, names) for a lookup. */
static int child_info(const struct dirh *d, uint64_t dino, size_t idx, const char *name,
		      struct nodeinfo *ni)
{
	memset(ni, 0, sizeof(*ni));
	snprintf(ni->name, sizeof(ni->name), "%s", name);
	ni->parent = dino;
	switch (d->ni.kind) {
	case K_ROOT:
		for (size_t i = 0; i < fs_n_root_entries; i++)
			if (strcmp(fs_root_entries[i].name, name) == 0)
				ni->kind = fs_root_entries[i].kind;
		return ni->kind ? 0 : -ENOENT;
	case K_CONVS:
		ni->kind = K_CONV;
		snprintf(ni->conv, sizeof(ni->conv), "%s", name);
		return 0;
	case K_CONV:
		snprintf(ni->conv, sizeof(ni->conv), "%s", d->ni.name);
		ni->kind = is_conv_subdir(name) && d->types[idx] == DT_DIR ? K_SUBDIR : K_CFILE;
		return 0;
	case K_SUBDIR:
		/* attach/ and files/ hold plain files (moved by lmsfs). */
		snprintf(ni->conv, sizeof(ni->conv), "%s", d->ni.conv);
		snprintf(ni->sub, sizeof(ni->sub), "%.7s", d->ni.name);
		ni->kind = K_SFILE;
		return 0;
	case K_TOOLS:
		ni->kind = K_TFILE;
		return 0;
	default:
		return -ENOENT; /* models/: looked up one by one */
	}
}

/* READDIRPLUS: each entry with its attributes, counted as a lookup, so
 * that ls -l, find and du ask nothing more per entry. */
static size_t add_plus(fuse_req_t req, struct dirh *d, uint64_t dino, size_t i, char *out,
		       size_t room)
{
	struct fuse_entry_param e;
	struct nodeinfo ni;
	struct stat st;
	uint64_t ino = 0;
	size_t need;
	const char *name = d->names[i];
	int dot = !strcmp(name, ".") || !strcmp(name, "..");

	memset(&e, 0, sizeof(e));
	if (!dot && child_info(d, dino, i, name, &ni) == 0 && attr_of(0, &ni, &st) == 0 &&
	    !(ni.kind == K_CONV && !S_ISDIR(st.st_mode)) &&
	    (d->ni.kind == K_ROOT ? (ino = node_find(INO_ROOT, name)) != 0
				  : names_file_ok(name) == 0 &&
					    node_get(dino, name, ni.kind, &ino) != NULL)) {
		fill_entry(&e, ino, &ni, &st);
	} else {
		/* No attributes: the kernel looks it up if it needs to. */
		e.attr.st_ino = 0x7fffffff00000000ull + i;
		e.attr.st_mode = (mode_t)(d->types[i] == DT_DIR ? S_IFDIR : S_IFREG);
	}
	need = fuse_add_direntry_plus(req, out, room, name, &e, (off_t)(i + 1));
	if (need > room && ino)
		node_forget(ino, 1); /* not sent: the kernel never counts it
					(fixed numbers are never counted) */
	return need;
}

/* --- listings of directories never opened --------------------------------- */

#define NLISTINGS 16

static pthread_mutex_t listings_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dirh *listings[NLISTINGS]; /* listings_lock; each holds a ref */
static unsigned next_slot;               /* listings_lock */

static void listing_put(struct dirh *d)
{
	int last;

	if (!d)
		return;
	pthread_mutex_lock(&listings_lock);
	last = --d->refs == 0;
	pthread_mutex_unlock(&listings_lock);
	if (last) {
		dir_clear(d);
		free(d);
	}
}

/* The listing of directory ino to read from offset off: made afresh at
 * offset 0 (the start of a reading, or rewinddir), else the one kept. */
static int listing_get(uint64_t ino, off_t off, struct dirh **out)
{
	struct dirh *d = NULL, *old = NULL;
	unsigned slot;
	int ret;

	pthread_mutex_lock(&listings_lock);
	for (slot = 0; slot < NLISTINGS; slot++)
		if (listings[slot] && listings[slot]->ino == ino)
			break;
	if (off > 0 && slot < NLISTINGS) {
		d = listings[slot];
		d->refs++;
	}
	pthread_mutex_unlock(&listings_lock);
	if (d) {
		*out = d;
		return 0;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->ino = ino;
	ret = dir_fill(d);
	if (ret) {
		dir_clear(d);
		free(d);
		return ret;
	}
	d->refs = 2; /* ours and the table's */
	pthread_mutex_lock(&listings_lock);
	for (slot = 0; slot < NLISTINGS; slot++)
		if (listings[slot] && listings[slot]->ino == ino)
			break;
	if (slot == NLISTINGS)
		slot = next_slot++ % NLISTINGS;
	old = listings[slot];
	listings[slot] = d;
	pthread_mutex_unlock(&listings_lock);
	listing_put(old);
	*out = d;
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, int plus)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh, *kept = NULL;
	char *out;
	size_t used = 0;
	int ret;

	/* Listed when read from the start, and again after rewinddir: a
	 * snapshot taken at opendir would still show a conversation renamed
	 * or removed since (the kernel may have served the first reading of
	 * this handle from its cache). */
	if (!d)
		ret = listing_get(ino, off, &kept);
	else
		ret = off == 0 ? dir_fill(d) : 0;
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (!d)
		d = kept;
	out = malloc(size);
	if (!out) {
		listing_put(kept);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = (size_t)off; i < d->n; i++) {
		struct stat st;
		size_t need;
		if (plus) {
			need = add_plus(req, d, ino, i, out + used, size - used);
		} else {
			memset(&st, 0, sizeof(st));
			st.st_ino = 0x7fffffff00000000ull + i;
			st.st_mode = (mode_t)(d->types[i] == DT_DIR ? S_IFDIR : S_IFREG);
			need = fuse_add_direntry(req, out + used, size - used, d->names[i], &st,
						 (off_t)(i + 1));
		}
		if (need > size - used)
			break;
		used += need;
	}
	listing_put(kept);
	fuse_reply_buf(req, out, used);
	free(out);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 0);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 1);
}

void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	dir_free((struct dirh *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

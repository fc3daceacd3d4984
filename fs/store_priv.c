/* store_priv.c - a conversation's private directory .lmsfs/: making it,
 * moving the files of the earlier layout into it, removing it (store.h). */
#include "store.h"

#include "fsio.h"
#include "log.h"
#include "names.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int store_private_keep_users_file(int dirfd, const char *name)
{
	struct stat st;
	char to[32];
	int i;

	if (fstatat(dirfd, STORE_PRIVATE, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(st.st_mode))
		return 0;
	for (i = 0; i < 100; i++) {
		if (i == 0)
			snprintf(to, sizeof(to), "%s~", STORE_PRIVATE);
		else
			snprintf(to, sizeof(to), "%s~%d", STORE_PRIVATE, i);
		if (renameat2(dirfd, STORE_PRIVATE, dirfd, to,
			      RENAME_NOREPLACE) == 0)
			break;
		if (errno != EEXIST)
			return 0; /* then lmsfs's directory cannot be made:
				     refused */
	}
	if (i == 100)
		return 0;
	log_warnx("conversation %s: renamed your file %s to %s (the name is "
		  "lmsfs's own now)",
		  name ? name : "", STORE_PRIVATE, to);
	return 1;
}

int store_private_open(int dirfd, int create)
{
	int fd = fsio_open(dirfd, STORE_PRIVATE, O_RDONLY | O_DIRECTORY, 0);

	if (fd == -ENOTDIR && create &&
	    store_private_keep_users_file(dirfd, NULL))
		fd = -ENOENT;
	if (fd != -ENOENT || !create)
		return fd;
	/* mkdirat never follows a symlink in its place (EEXIST, and the open
	 * below refuses it). */
	if (mkdirat(dirfd, STORE_PRIVATE, 0700) == 0) {
		/* Its entry must be durable before the files made in it. */
		if (fsync(dirfd) < 0) {
			int err = -errno;
			unlinkat(dirfd, STORE_PRIVATE, AT_REMOVEDIR);
			return err;
		}
	} else if (errno != EEXIST) {
		return -errno;
	}
	return fsio_open(dirfd, STORE_PRIVATE, O_RDONLY | O_DIRECTORY, 0);
}

/* The name an earlier-layout file gets in .lmsfs/: the prefix dropped
 * (".lmsfs.queue" -> "queue", ".lmsfs.tmp.model" -> "tmp.model"), and the
 * spool's own scratch names made the new ones (".lmsfs.tmp..lmsfs.queue"
 * -> "tmp.queue"). */
static void new_name(const char *old, char *buf, size_t len)
{
	const char *rest = old + strlen(NAMES_PRIVATE_PREFIX);
	size_t pl = strlen(NAMES_PRIVATE_PREFIX);

	if ((!strncmp(rest, "tmp.", 4) || !strncmp(rest, "old.", 4)) &&
	    !strncmp(rest + 4, NAMES_PRIVATE_PREFIX, pl))
		snprintf(buf, len, "%.4s%s", rest, rest + 4 + pl);
	else
		snprintf(buf, len, "%s", rest);
}

/* Appends the spool old (in dirfd) to the one in .lmsfs/ (pfd), synced:
 * both hold prompts (a run of an earlier version after this one). */
static int merge_spools(int dirfd, const char *old, int pfd)
{
	char *data = NULL;
	size_t len = 0;
	int ret = fsio_read(dirfd, old, 256u << 20, &data, &len);

	if (ret == 0 && len > 0)
		ret = fsio_append(pfd, STORE_SPOOL, data, len,
				  FSIO_SYNC | FSIO_LINES, NULL);
	free(data);
	if (ret == 0 && unlinkat(dirfd, old, 0) < 0)
		ret = -errno;
	return ret;
}

/* Moves one file; 1 when moved, 0 when nothing was to be done, -errno. */
static int move_one(int dirfd, int pfd, const char *old)
{
	struct stat so, sn;
	char nn[NAME_MAX + 1];

	new_name(old, nn, sizeof(nn));
	if (!nn[0] || fstatat(dirfd, old, &so, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (S_ISLNK(so.st_mode)) {
		/* Nothing lmsfs made (and never followed): it goes. */
		log_warnx("removing the symlink %s", old);
		return unlinkat(dirfd, old, 0) == 0 ? 1 : -errno;
	}
	if (!S_ISREG(so.st_mode))
		return 0; /* nor this: left alone, never read */
	if (renameat2(dirfd, old, pfd, nn, RENAME_NOREPLACE) == 0)
		return 1;
	if (errno != EEXIST)
		return -errno;
	if (fstatat(pfd, nn, &sn, AT_SYMLINK_NOFOLLOW) == 0 &&
	    sn.st_ino == so.st_ino && sn.st_dev == so.st_dev) {
		/* One file under both names (a rename a crash cut). */
		return unlinkat(dirfd, old, 0) == 0 ? 1 : -errno;
	}
	if (!strcmp(nn, STORE_SPOOL)) {
		if (fstatat(pfd, nn, &sn, AT_SYMLINK_NOFOLLOW) == 0 &&
		    sn.st_size == 0)
			return renameat(dirfd, old, pfd, nn) == 0 ? 1 : -errno;
		int r = merge_spools(dirfd, old, pfd);
		return r == 0 ? 1 : r;
	}
	/* A marker or a scratch file in both places (an earlier version ran
	 * after this one): the newer one is kept. */
	if (fstatat(pfd, nn, &sn, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(sn.st_mode) &&
	    (so.st_mtim.tv_sec > sn.st_mtim.tv_sec ||
	     (so.st_mtim.tv_sec == sn.st_mtim.tv_sec &&
	      so.st_mtim.tv_nsec > sn.st_mtim.tv_nsec)))
		return renameat(dirfd, old, pfd, nn) == 0 ? 1 : -errno;
	return unlinkat(dirfd, old, 0) == 0 ? 1 : -errno;
}

int store_private_migrate(int dirfd, const char *name)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC),
	    pfd = -1;
	int ret = 0, moved = 0;
	DIR *d;
	struct dirent *de;

	if (fd < 0)
		return -errno;
	moved = store_private_keep_users_file(dirfd, name);
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		int r;
		if (strncmp(de->d_name, NAMES_PRIVATE_PREFIX,
			    strlen(NAMES_PRIVATE_PREFIX)) != 0)
			continue;
		if (pfd < 0 && (pfd = store_private_open(dirfd, 1)) < 0) {
			ret = pfd;
			break;
		}
		r = move_one(dirfd, pfd, de->d_name);
		if (r < 0 && ret == 0)
			ret = r;
		moved += r > 0;
	}
	closedir(d);
	/* Both directories synced before anything reads or writes the files
	 * in their new place: a crash leaves each in one of the two. */
	if (moved && ((pfd >= 0 && fsync(pfd) < 0) || fsync(dirfd) < 0) &&
	    ret == 0)
		ret = -errno;
	if (pfd >= 0)
		close(pfd);
	if (ret)
		log_warnx(
		    "conversation %s: cannot move lmsfs's files into %s/: %s",
		    name, STORE_PRIVATE, strerror(-ret));
	else if (moved)
		log_info("conversation %s: moved %d of lmsfs's files into %s/",
			 name, moved, STORE_PRIVATE);
	return ret;
}

void store_private_remove(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int pfd = fsio_open(dirfd, STORE_PRIVATE, O_RDONLY | O_DIRECTORY, 0);
	DIR *d;
	struct dirent *de;

	if (pfd >= 0 && (d = fdopendir(pfd))) {
		while ((de = readdir(d)))
			if (strcmp(de->d_name, ".") &&
			    strcmp(de->d_name, "..") &&
			    unlinkat(pfd, de->d_name, 0) < 0 && errno == EISDIR)
				unlinkat(pfd, de->d_name, AT_REMOVEDIR);
		closedir(d);
	} else if (pfd >= 0) {
		close(pfd);
	}
	/* The directory, or a symlink or file planted in its place. */
	if (unlinkat(dirfd, STORE_PRIVATE, AT_REMOVEDIR) < 0 &&
	    errno == ENOTDIR)
		unlinkat(dirfd, STORE_PRIVATE, 0);
	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, NAMES_PRIVATE_PREFIX,
			     strlen(NAMES_PRIVATE_PREFIX)))
			unlinkat(fd, de->d_name, 0);
	closedir(d);
}

int store_replace(int dirfd, const char *path, const void *data, size_t n)
{
	const char *slash = strrchr(path, '/');
	int cfd = dirfd, pfd, ret;

	if (slash) {
		char parent[NAME_MAX + 1];
		if ((size_t)(slash - path) >= sizeof(parent))
			return -ENAMETOOLONG;
		snprintf(parent, sizeof(parent), "%.*s", (int)(slash - path),
			 path);
		cfd = fsio_open(dirfd, parent, O_RDONLY | O_DIRECTORY, 0);
		if (cfd < 0)
			return cfd;
	}
	pfd = store_private_open(cfd, 1);
	ret = pfd < 0 ? pfd
		      : fsio_replace_via(cfd, slash ? slash + 1 : path, pfd,
					 data, n);
	if (pfd >= 0)
		close(pfd);
	if (slash)
		close(cfd);
	return ret;
}

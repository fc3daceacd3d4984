/* fsio.c - careful file I/O below the state directory (see fsio.h). */
#include "fsio.h"

#include "log.h"
#include "names.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int openat2_missing; /* set once when the kernel lacks openat2 */

/* Without openat2: path opened one component at a time, each with
 * O_NOFOLLOW (a symlink anywhere on the way: ELOOP), ".." and absolute
 * paths refused (EXDEV), as RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH do.
 * An fd, or -1 and errno. */
static int open_walk(int dirfd, const char *path, int flags, mode_t mode)
{
	char buf[4200], *p = buf, *slash;
	int cur = dirfd, fd, err;

	if (path[0] == '/') {
		errno = EXDEV;
		return -1;
	}
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (;;) {
		slash = strchr(p, '/');
		if (slash)
			*slash = '\0';
		if (!strcmp(p, "..")) {
			fd = -1;
			errno = EXDEV;
			break;
		}
		if (!slash) {
			fd = openat(cur, *p ? p : ".", flags | O_NOFOLLOW, mode);
			break;
		}
		if (*p && strcmp(p, ".")) {
			struct stat st;
			fd = openat(cur, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0 && errno == ENOTDIR &&
			    fstatat(cur, p, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
				errno = ELOOP;
			if (fd < 0)
				break;
			if (cur != dirfd)
				close(cur);
			cur = fd;
		}
		p = slash + 1;
	}
	err = errno;
	if (cur != dirfd)
		close(cur);
	errno = err;
	return fd;
}

int fsio_open(int dirfd, const char *path, int flags, mode_t mode)
{
	int fd = -1;

	flags |= O_CLOEXEC;
	if (!__atomic_load_n(&openat2_missing, __ATOMIC_RELAXED)) {
		struct open_how how;
		memset(&how, 0, sizeof(how));
		how.flags = (unsigned long long)flags;
		how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
		how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
		fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
		if (fd < 0 && errno == ENOSYS)
			__atomic_store_n(&openat2_missing, 1, __ATOMIC_RELAXED);
	}
	if (__atomic_load_n(&openat2_missing, __ATOMIC_RELAXED))
		fd = open_walk(dirfd, path, flags, mode);
	if (fd >= 0)
		return fd;
	if (errno == ELOOP || errno == EXDEV) {
		log_warnx("refused to follow a symlink (or a path leaving the state "
			  "directory): %s",
			  path);
		return -ELOOP;
	}
	return -errno;
}

int fsio_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

int fsio_read(int dirfd, const char *path, size_t max, char **out, size_t *len)
{
	struct stat st;
	/* O_NONBLOCK: a FIFO planted in place of a file must not hang us. */
	int fd = fsio_open(dirfd, path, O_RDONLY | O_NONBLOCK, 0);
	int ret = 0;
	char *data = NULL;
	size_t got = 0;

	*out = NULL;
	if (len)
		*len = 0;
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		goto out;
	}
	if ((size_t)st.st_size > max) {
		ret = -EFBIG;
		goto out;
	}
	data = malloc((size_t)st.st_size + 1);
	if (!data) {
		ret = -ENOMEM;
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, data + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	data[got] = '\0';
	*out = data;
	data = NULL;
	if (len)
		*len = got;
out:
	free(data);
	close(fd);
	return ret;
}

char *fsio_read_setting(int dirfd, const char *path)
{
	char *data = NULL, *t;
	size_t len;

	if (fsio_read(dirfd, path, 1u << 20, &data, &len) != 0)
		return NULL;
	t = data;
	/* A UTF-8 byte order mark (Windows editors) is not part of it. */
	if (len >= 3 && memcmp(t, "\xEF\xBB\xBF", 3) == 0)
		t += 3;
	t = trim(t);
	if (!*t) {
		free(data);
		return NULL;
	}
	memmove(data, t, strlen(t) + 1);
	return data;
}

/* Cuts fd back to size after a failed write; logs when even that fails. */
static void roll_back(int fd, off_t size)
{
	while (ftruncate(fd, size) < 0) {
		if (errno == EINTR)
			continue;
		log_warn("cannot undo a failed write (the file keeps %s)",
			 "its partial data");
		return;
	}
}

static int append_at(int fd, const void *data, size_t n, int flags, off_t *at)
{
	struct stat st;
	char last;
	int ret = 0, lead;
	off_t old;

	if (fstat(fd, &st) < 0)
		return -errno;
	old = st.st_size;
	/* Whole lines: first end the file's last line if it lacks its
	 * newline. */
	lead = (flags & FSIO_LINES) && n && ((const char *)data)[0] != '\n' && old > 0 &&
	       pread(fd, &last, 1, old - 1) == 1 && last != '\n';
	if (lead)
		ret = fsio_write_all(fd, "\n", 1);
	if (at)
		*at = old + lead;
	if (ret == 0)
		ret = fsio_write_all(fd, data, n);
	if (ret == 0 && (flags & FSIO_LINES) && n && ((const char *)data)[n - 1] != '\n')
		ret = fsio_write_all(fd, "\n", 1);
	if (ret == 0 && (flags & FSIO_SYNC) && fdatasync(fd) < 0)
		ret = -errno;
	if (ret != 0)
		roll_back(fd, old);
	return ret;
}

int fsio_append_fd(int fd, const void *data, size_t n)
{
	return append_at(fd, data, n, 0, NULL);
}

int fsio_append(int dirfd, const char *path, const void *data, size_t n, int flags,
		off_t *at)
{
	int fd = fsio_open(dirfd, path, O_RDWR | O_APPEND, 0), created = 0, ret;

	if (fd == -ENOENT && (flags & FSIO_CREATE)) {
		fd = fsio_open(dirfd, path, O_RDWR | O_APPEND | O_CREAT | O_EXCL,
			       (flags & FSIO_PRIVATE) ? 0600 : 0644);
		if (fd >= 0)
			created = 1;
		else if (fd == -EEXIST)
			fd = fsio_open(dirfd, path, O_RDWR | O_APPEND, 0);
	}
	if (fd < 0)
		return fd;
	ret = append_at(fd, data, n, flags, at);
	close(fd);
	if (created && ret != 0) {
		unlinkat(dirfd, path, 0);
		return ret;
	}
	/* A new file is durable only once its directory entry is. */
	if (created && (ret = fsio_sync_parent(dirfd, path)) != 0)
		unlinkat(dirfd, path, 0);
	return ret;
}

/* dirfd/path's directory part ("." when none) into buf. */
static void parent_of(const char *path, char *buf, size_t len)
{
	const char *slash = strrchr(path, '/');
	if (slash)
		snprintf(buf, len, "%.*s", (int)(slash - path), path);
	else
		snprintf(buf, len, ".");
}

int fsio_sync_parent(int dirfd, const char *path)
{
	char parent[4200];
	int pfd, ret = 0;

	parent_of(path, parent, sizeof(parent));
	pfd = fsio_open(dirfd, parent, O_RDONLY | O_DIRECTORY, 0);
	if (pfd < 0)
		return pfd;
	if (fsync(pfd) < 0)
		ret = -errno;
	close(pfd);
	return ret;
}

/* path with its last component prefixed (".lmsfs.tmp.NAME"). */
static void private_name(char *buf, size_t len, const char *path, const char *what)
{
	const char *slash = strrchr(path, '/');
	if (slash)
		snprintf(buf, len, "%.*s/%s%s.%s", (int)(slash - path), path,
			 NAMES_PRIVATE_PREFIX, what, slash + 1);
	else
		snprintf(buf, len, "%s%s.%s", NAMES_PRIVATE_PREFIX, what, path);
}

/* The temporary (tmp) and the old file's second link (old) are names in
 * sdirfd, on the same filesystem as dirfd/path. */
static int replace_via(int dirfd, const char *path, int sdirfd, const char *tmp,
		       const char *old, const void *data, size_t n)
{
	struct stat st;
	mode_t mode = 0644;
	int fd, ret, have_old = 0, had_old = 0;

	if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (S_ISLNK(st.st_mode)) {
			log_warnx("refused to replace a symlink: %s", path);
			return -ELOOP;
		}
		mode = st.st_mode & 07777;
		had_old = 1;
	}
	unlinkat(sdirfd, tmp, 0);
	fd = fsio_open(sdirfd, tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0)
		return fd;
	/* The replacement keeps the permissions of what it replaces. */
	if (fchmod(fd, mode) < 0)
		log_warn("replacing %s: cannot keep its mode", path);
	ret = fsio_write_all(fd, data, n);
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	close(fd);
	/* The old file stays reachable until the new one is durable, so that
	 * a failure can put it back. */
	if (ret == 0) {
		unlinkat(sdirfd, old, 0);
		have_old = linkat(dirfd, path, sdirfd, old, 0) == 0;
	}
	if (ret == 0 && renameat(sdirfd, tmp, dirfd, path) < 0)
		ret = -errno;
	if (ret == 0) {
		/* The rename itself must survive a power cut too. If that sync
		 * fails, the old state comes back and the failure is reported;
		 * if it cannot come back, the change stands and is not. */
		ret = fsio_sync_parent(dirfd, path);
		if (ret != 0 && had_old && have_old && renameat(sdirfd, old, dirfd, path) == 0) {
			have_old = 0;
		} else if (ret != 0 && !had_old && unlinkat(dirfd, path, 0) == 0) {
			/* There was nothing: there is nothing again. */
		} else if (ret != 0) {
			log_warnx("replaced %s, but syncing its directory failed (%s) and the "
				  "old file could not be put back",
				  path, strerror(-ret));
			ret = 0;
		}
	}
	if (ret != 0)
		unlinkat(sdirfd, tmp, 0);
	if (have_old)
		unlinkat(sdirfd, old, 0);
	return ret;
}

int fsio_replace(int dirfd, const char *path, const void *data, size_t n)
{
	char tmp[4200], old[4200];

	private_name(tmp, sizeof(tmp), path, "tmp");
	private_name(old, sizeof(old), path, "old");
	return replace_via(dirfd, path, dirfd, tmp, old, data, n);
}

int fsio_replace_via(int dirfd, const char *path, int scratchfd, const void *data, size_t n)
{
	const char *base = strrchr(path, '/');
	char tmp[300], old[300];

	base = base ? base + 1 : path;
	if (snprintf(tmp, sizeof(tmp), "tmp.%s", base) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	snprintf(old, sizeof(old), "old.%s", base);
	return replace_via(dirfd, path, scratchfd, tmp, old, data, n);
}

int fsio_truncate(int dirfd, const char *path, off_t size)
{
	int fd = fsio_open(dirfd, path, O_WRONLY, 0), ret = 0;
	if (fd < 0)
		return fd;
	if (ftruncate(fd, size) < 0 || fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

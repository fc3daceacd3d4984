/* fsio.h - careful file I/O below the state directory: opens that never
 * follow a symlink, writes that are all-or-nothing, durable replacement.
 *
 * Every function returns 0 (or an fd) on success and -errno on failure.
 * A failed or short write is rolled back: the file is truncated to the
 * length it had before, so a failure never leaves part of a write behind.
 */
#ifndef LMSFS_FSIO_H
#define LMSFS_FSIO_H

#include <stddef.h>
#include <sys/types.h>

/* openat() relative to dirfd that refuses (-ELOOP) any symlink on the
 * way and any path leaving dirfd (openat2 RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS; on kernels without openat2, one component at a
 * time with O_NOFOLLOW, ".." and absolute paths refused). O_CLOEXEC
 * is added. A refused symlink is logged. Returns an fd or -errno. */
int fsio_open(int dirfd, const char *path, int flags, mode_t mode);

/* write() everything or fail. Returns 0 or -errno. */
int fsio_write_all(int fd, const void *p, size_t n);

/* Reads dirfd/path whole into a malloc'd NUL-terminated buffer of at most
 * max bytes (-EFBIG when larger). */
int fsio_read(int dirfd, const char *path, size_t max, char **out, size_t *len);

/* Reads a small settings file (at most 1 MiB), a leading UTF-8 BOM
 * dropped, trimmed; malloc'd. NULL when absent, empty, too large or
 * refused. */
char *fsio_read_setting(int dirfd, const char *path);

/* Flags for fsio_append. */
enum {
	FSIO_CREATE = 1, /* create the file (and fsync its directory) */
	FSIO_SYNC = 2,   /* fdatasync before returning */
	FSIO_LINES = 4,  /* whole lines: a newline first when the file does not
			    end in one, and a final newline when data lacks it */
	FSIO_PRIVATE = 8, /* created with mode 0600 (else 0644) */
};
/* Appends data to dirfd/path. On any failure the file is truncated back
 * to its old length. *at (may be NULL) gets the offset where data starts.
 * The caller serialises appenders that must not interleave. */
int fsio_append(int dirfd, const char *path, const void *data, size_t n, int flags,
		off_t *at);
/* The same on an open O_APPEND fd (rolled back on failure). */
int fsio_append_fd(int fd, const void *data, size_t n);

/* Writes data to dirfd/path atomically: a private temporary beside it
 * (mode of the file it replaces), fsync, rename, fsync of the directory.
 * On failure the old file is as it was (put back if the directory sync
 * failed) and no temporary is left; when the old file cannot be put back
 * the change stands, is logged, and 0 is returned. */
int fsio_replace(int dirfd, const char *path, const void *data, size_t n);
/* The same with the temporary and the old file's second link made in the
 * directory scratchfd (same filesystem) as "tmp.NAME" and "old.NAME", so
 * that the directory of path sees only the final rename. */
int fsio_replace_via(int dirfd, const char *path, int scratchfd, const void *data, size_t n);

/* Truncates dirfd/path to size and fsyncs it. */
int fsio_truncate(int dirfd, const char *path, off_t size);

/* fsyncs the directory that holds dirfd/path ("." for dirfd itself). */
int fsio_sync_parent(int dirfd, const char *path);

#endif

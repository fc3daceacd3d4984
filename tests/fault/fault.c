/* fault.c - an LD_PRELOAD shim that makes one chosen file operation of the
 * lmsfs daemon fail, to test that it never loses data.
 *
 * It wraps write, pwrite, pwrite64, writev, fsync, fdatasync, rename,
 * renameat, renameat2, ftruncate, ftruncate64, open, open64, openat,
 * openat64 and syscall(SYS_openat2, ...). A call counts only when it
 * targets the state directory named by LMSFS_FAULT_DIR (the directory itself
 * or anything below it); everything else (sockets, pipes, /dev/fuse, the
 * log, files elsewhere) passes through uncounted. The target of an fd is
 * read from /proc/self/fd/N at every call, so fd reuse cannot fool it; a
 * path relative to a directory fd is joined to that fd's target. Paths are
 * compared as text: neither ".." nor symlinks in a path argument are
 * resolved (the daemon uses neither). Every process that loads the shim
 * with the same control file counts into it; lmsfs starts its tools with a
 * clean environment, so they do not load it.
 *
 * Control goes through the file named by LMSFS_FAULT_CTL, mapped shared by
 * the shim (on the first wrapped call) and by the test. Without
 * LMSFS_FAULT_CTL (or LMSFS_FAULT_DIR) the shim only passes calls through.
 * Layout, little-endian, every field naturally aligned, 4096 bytes in all:
 *
 *   off  size  field
 *     0     4  magic: 0x544c464c ("LFLT")
 *     4     4  version: 1
 *     8     8  generation: the test bumps it after writing the fields below
 *    16     4  armed class: 0 none, 1 write (write, pwrite, pwrite64,
 *              writev), 2 sync (fsync, fdatasync), 3 rename (rename,
 *              renameat, renameat2), 4 ftruncate (ftruncate, ftruncate64),
 *              5 open (open, open64, openat, openat64, openat2; any flags)
 *    20     4  errno to inject
 *    24     8  target N, 1-based, counted from the arming
 *    32     8  fired: how many faults were injected in this generation
 *    40     8  acknowledged generation: written by the shim when it has
 *              reset the counters for a new generation
 *    48    48  counters: calls per class 0..5 since the arming (8 bytes
 *              each; index 0 is unused)
 *    96     4  class of the last injected fault
 *   100     4  reserved
 *   104   256  name of the last injected call and its path, NUL-terminated
 *
 * When the shim sees a new generation, the first thread to notice zeroes
 * the counters and "fired" and stores the generation at offset 40. The Nth
 * counted call of the armed class after that returns -1 with the errno
 * without doing the real call; it fires once per generation, since only one
 * call can be the Nth. Each injected fault is logged to stderr (the daemon
 * log) with the call and the path.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define FAULT_MAGIC 0x544c464cu
#define FAULT_VERSION 1u
#define CTL_SIZE 4096

enum { C_NONE, C_WRITE, C_SYNC, C_RENAME, C_TRUNC, C_OPEN, C_COUNT };

struct ctl {
	uint32_t magic;
	uint32_t version;
	uint64_t generation;
	uint32_t armed;
	uint32_t err;
	uint64_t target;
	uint64_t fired;
	uint64_t ack_generation;
	uint64_t count[C_COUNT];
	uint32_t last_class;
	uint32_t reserved;
	char last_what[256];
};

_Static_assert(sizeof(struct ctl) == 360, "control file layout");
_Static_assert(__builtin_offsetof(struct ctl, count) == 48,
	       "control file layout");
_Static_assert(__builtin_offsetof(struct ctl, last_what) == 104,
	       "control file layout");

/* The real functions, found with dlsym(RTLD_NEXT) on first use. */
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *,
			     unsigned int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static long (*real_syscall)(long, ...);

/* Looks a real function up once; concurrent first calls find the same one. */
#define REAL(name)                                                             \
	({                                                                     \
		__typeof__(real_##name) f_ =                                   \
		    __atomic_load_n(&real_##name, __ATOMIC_ACQUIRE);           \
		if (!f_) {                                                     \
			f_ = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name); \
			__atomic_store_n(&real_##name, f_, __ATOMIC_RELEASE);  \
		}                                                              \
		f_;                                                            \
	})

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct ctl *ctl;	   /* NULL: inert */
static char dir[PATH_MAX]; /* the state directory, resolved */
static size_t dirlen;
static uint64_t my_generation; /* the last generation this process saw */

/* Maps the control file and resolves the directory; leaves ctl NULL (the
 * shim inert) when either is missing or the file is not a control file. */
static void init(void)
{
	const char *cpath = getenv("LMSFS_FAULT_CTL");
	const char *dpath = getenv("LMSFS_FAULT_DIR");
	int (*op)(const char *, int, ...) = REAL(open);
	struct stat st;
	void *p;
	int fd;

	if (!cpath || !*cpath || !dpath || !*dpath || !op)
		return;
	if (!realpath(dpath, dir))
		return;
	dirlen = strlen(dir);
	while (dirlen > 1 && dir[dirlen - 1] == '/')
		dir[--dirlen] = '\0';
	fd = op(cpath, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return;
	/* A short file would fault (SIGBUS) when touched past its end. */
	if (fstat(fd, &st) < 0 || st.st_size < CTL_SIZE) {
		close(fd);
		return;
	}
	p = mmap(NULL, CTL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return;
	if (((struct ctl *)p)->magic != FAULT_MAGIC ||
	    ((struct ctl *)p)->version != FAULT_VERSION) {
		munmap(p, CTL_SIZE);
		return;
	}
	__atomic_store_n(&ctl, (struct ctl *)p, __ATOMIC_RELEASE);
}

static struct ctl *get_ctl(void)
{
	pthread_once(&once, init);
	return __atomic_load_n(&ctl, __ATOMIC_ACQUIRE);
}

/* Whether an absolute path is the state directory or below it. */
static int in_dir(const char *path)
{
	return strncmp(path, dir, dirlen) == 0 &&
	       (path[dirlen] == '\0' || path[dirlen] == '/' || dirlen == 1);
}

/* The target of an fd (AT_FDCWD: the working directory) into out. */
static int fd_path(int fd, char *out, size_t size)
{
	char link[64];
	ssize_t n;

	if (fd == AT_FDCWD)
		return getcwd(out, size) ? 0 : -1;
	if (fd < 0)
		return -1;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, out, size - 1);
	if (n <= 0)
		return -1;
	out[n] = '\0';
	return out[0] == '/' ? 0 : -1; /* sockets, pipes: "socket:[123]" */
}

/* A path relative to dirfd (or absolute) as an absolute path into out. */
static int at_path(int dirfd, const char *path, char *out, size_t size)
{
	size_t n;

	if (!path)
		return -1;
	if (path[0] == '/') {
		snprintf(out, size, "%s", path);
		return 0;
	}
	if (fd_path(dirfd, out, size) != 0)
		return -1;
	n = strlen(out);
	if (path[0] && !(path[0] == '.' && path[1] == '\0'))
		snprintf(out + n, size - n, "%s%s", n > 1 ? "/" : "", path);
	return 0;
}

static void reset_if_new_generation(struct ctl *c)
{
	uint64_t gen = __atomic_load_n(&c->generation, __ATOMIC_ACQUIRE);
	uint64_t ack = __atomic_load_n(&c->ack_generation, __ATOMIC_ACQUIRE);

	if (gen == ack &&
	    gen == __atomic_load_n(&my_generation, __ATOMIC_RELAXED))
		return;
	__atomic_store_n(&my_generation, gen, __ATOMIC_RELAXED);
	if (gen != ack &&
	    __atomic_compare_exchange_n(&c->ack_generation, &ack, gen, 0,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		for (int i = 0; i < C_COUNT; i++)
			__atomic_store_n(&c->count[i], 0, __ATOMIC_RELAXED);
		__atomic_store_n(&c->fired, 0, __ATOMIC_RELEASE);
	}
}

/* Counts a call of class cls on path; returns the errno to inject, or 0 to
 * let the call through. */
static int count(int cls, const char *call, const char *path)
{
	struct ctl *c = get_ctl();
	uint64_t n;
	int err;

	if (!c || !path || !in_dir(path))
		return 0;
	reset_if_new_generation(c);
	n = __atomic_add_fetch(&c->count[cls], 1, __ATOMIC_ACQ_REL);
	if ((int)__atomic_load_n(&c->armed, __ATOMIC_ACQUIRE) != cls ||
	    n != __atomic_load_n(&c->target, __ATOMIC_ACQUIRE))
		return 0;
	err = (int)__atomic_load_n(&c->err, __ATOMIC_ACQUIRE);
	if (err <= 0)
		return 0;
	{
		char msg[PATH_MAX + 160];
		int len;
		snprintf(c->last_what, sizeof(c->last_what), "%s %s", call,
			 path);
		__atomic_store_n(&c->last_class, (uint32_t)cls,
				 __ATOMIC_RELAXED);
		__atomic_add_fetch(&c->fired, 1, __ATOMIC_ACQ_REL);
		len = snprintf(msg, sizeof(msg),
			       "lmsfs-fault: injected %s into %s #%llu: %s\n",
			       strerrorname_np(err) ? strerrorname_np(err)
						    : "an error",
			       call, (unsigned long long)n, path);
		if (len > (int)sizeof(msg) - 1)
			len = (int)sizeof(msg) - 1;
		REAL(write)(2, msg, (size_t)len);
	}
	return err;
}

/* Counts an fd-based call. */
static int count_fd(int cls, const char *call, int fd)
{
	char path[PATH_MAX];

	if (!get_ctl() || fd_path(fd, path, sizeof(path)) != 0)
		return 0;
	return count(cls, call, path);
}

/* Counts a path-based call; either path of a rename may match. */
static int count_at(int cls, const char *call, int dirfd, const char *p,
		    int dirfd2, const char *p2)
{
	char path[PATH_MAX], path2[PATH_MAX];

	if (!get_ctl() || at_path(dirfd, p, path, sizeof(path)) != 0)
		return 0;
	if (!in_dir(path) && p2 &&
	    at_path(dirfd2, p2, path2, sizeof(path2)) == 0 && in_dir(path2))
		return count(cls, call, path2);
	return count(cls, call, path);
}

#define FAIL_IF(expr)                                                          \
	do {                                                                   \
		int e_ = (expr);                                               \
		if (e_) {                                                      \
			errno = e_;                                            \
			return -1;                                             \
		}                                                              \
	} while (0)

ssize_t write(int fd, const void *buf, size_t n)
{
	FAIL_IF(count_fd(C_WRITE, "write", fd));
	return REAL(write)(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	FAIL_IF(count_fd(C_WRITE, "pwrite", fd));
	return REAL(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	FAIL_IF(count_fd(C_WRITE, "pwrite64", fd));
	return REAL(pwrite64)(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
	FAIL_IF(count_fd(C_WRITE, "writev", fd));
	return REAL(writev)(fd, iov, iovcnt);
}

int fsync(int fd)
{
	FAIL_IF(count_fd(C_SYNC, "fsync", fd));
	return REAL(fsync)(fd);
}

int fdatasync(int fd)
{
	FAIL_IF(count_fd(C_SYNC, "fdatasync", fd));
	return REAL(fdatasync)(fd);
}

int rename(const char *from, const char *to)
{
	FAIL_IF(count_at(C_RENAME, "rename", AT_FDCWD, from, AT_FDCWD, to));
	return REAL(rename)(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
	FAIL_IF(count_at(C_RENAME, "renameat", fromfd, from, tofd, to));
	return REAL(renameat)(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to,
	      unsigned int flags)
{
	FAIL_IF(count_at(C_RENAME, "renameat2", fromfd, from, tofd, to));
	return REAL(renameat2)(fromfd, from, tofd, to, flags);
}

int ftruncate(int fd, off_t len)
{
	FAIL_IF(count_fd(C_TRUNC, "ftruncate", fd));
	return REAL(ftruncate)(fd, len);
}

int ftruncate64(int fd, off64_t len)
{
	FAIL_IF(count_fd(C_TRUNC, "ftruncate64", fd));
	return REAL(ftruncate64)(fd, len);
}

/* The mode argument exists only when the flags create a file. */
#define MODE_ARG(flags, mode)                                                  \
	do {                                                                   \
		if ((flags)&O_CREAT || ((flags)&O_TMPFILE) == O_TMPFILE) {     \
			va_list ap_;                                           \
			va_start(ap_, flags);                                  \
			mode = va_arg(ap_, int);                               \
			va_end(ap_);                                           \
		}                                                              \
	} while (0)

int open(const char *path, int flags, ...)
{
	int mode = 0;
	MODE_ARG(flags, mode);
	FAIL_IF(count_at(C_OPEN, "open", AT_FDCWD, path, AT_FDCWD, NULL));
	return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	int mode = 0;
	MODE_ARG(flags, mode);
	FAIL_IF(count_at(C_OPEN, "open64", AT_FDCWD, path, AT_FDCWD, NULL));
	return REAL(open64)(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	int mode = 0;
	MODE_ARG(flags, mode);
	FAIL_IF(count_at(C_OPEN, "openat", dirfd, path, AT_FDCWD, NULL));
	return REAL(openat)(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	int mode = 0;
	MODE_ARG(flags, mode);
	FAIL_IF(count_at(C_OPEN, "openat64", dirfd, path, AT_FDCWD, NULL));
	return REAL(openat64)(dirfd, path, flags, mode);
}

/* syscall() passes its six argument registers on whatever the number; only
 * SYS_openat2 is counted (as an open). Reading six variadic longs is what
 * glibc's own syscall() does with its registers. */
long syscall(long number, ...)
{
	long a[6];
	va_list ap;

	va_start(ap, number);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
#ifdef SYS_openat2
	if (number == SYS_openat2)
		FAIL_IF(count_at(C_OPEN, "openat2", (int)a[0],
				 (const char *)a[1], AT_FDCWD, NULL));
#endif
	return REAL(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* fs_read.c - replies to reads of backing files: the file's bytes are
 * spliced into a pipe of the replying thread's own, then from that pipe to
 * the kernel, so the reply says exactly how many bytes it carries.
 *
 * Why not hand libfuse the file itself: its splice path writes the reply's
 * header (with the length asked for) before it reads the file, so a file cut
 * shorter meanwhile (a retry, recovery, a user's rewrite) makes the kernel
 * refuse the whole reply (EINVAL) and the reader waits forever. Here the
 * length is known before the header is made. When a pipe cannot be had,
 * the bytes go through memory.
 */
#include "fs_int.h"

#include "conv.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Each thread's pipe, closed when the thread ends. */
struct rpipe {
	int fd[2];
	size_t size;
};

static pthread_key_t rpipe_key;
static pthread_once_t rpipe_once = PTHREAD_ONCE_INIT;

static void rpipe_free(void *p)
{
	struct rpipe *rp = p;
	close(rp->fd[0]);
	close(rp->fd[1]);
	free(rp);
}

static void rpipe_init(void)
{
	if (pthread_key_create(&rpipe_key, rpipe_free) != 0)
		abort();
}

/* This thread's pipe, able to hold size bytes, or NULL. */
static struct rpipe *rpipe_get(size_t size)
{
	struct rpipe *rp;
	int got;

	pthread_once(&rpipe_once, rpipe_init);
	rp = pthread_getspecific(rpipe_key);
	if (!rp) {
		rp = calloc(1, sizeof(*rp));
		if (!rp)
			return NULL;
		if (pipe2(rp->fd, O_CLOEXEC) != 0) {
			free(rp);
			return NULL;
		}
		if (pthread_setspecific(rpipe_key, rp) != 0) {
			rpipe_free(rp);
			return NULL;
		}
		got = fcntl(rp->fd[0], F_GETPIPE_SZ);
		rp->size = got > 0 ? (size_t)got : 0;
	}
	if (rp->size < size) {
		got = fcntl(rp->fd[0], F_SETPIPE_SZ, (int)size);
		if (got <= 0)
			return NULL;
		rp->size = (size_t)got;
	}
	return rp;
}

/* Forgets this thread's pipe and what it holds (a new one next time). */
static void rpipe_drop(struct rpipe *rp)
{
	pthread_setspecific(rpipe_key, NULL);
	rpipe_free(rp);
}

/* Drops what a failed reply left in the pipe (it must start empty). */
static void rpipe_drain(struct rpipe *rp)
{
	int left = 0;
	if (ioctl(rp->fd[0], FIONREAD, &left) == 0 && left == 0)
		return;
	rpipe_drop(rp);
}

static void read_via_memory(fuse_req_t req, int fd, size_t size, off_t off)
{
	char *b = malloc(size ? size : 1);
	ssize_t n;

	if (!b) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	do
		n = pread(fd, b, size, off);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_buf(req, b, (size_t)n);
	free(b);
}

void read_fd(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	/* A pipe holds pages: size bytes from an offset inside a page span
	 * one page more than size fills. */
	long page = sysconf(_SC_PAGESIZE);
	struct rpipe *rp = size ? rpipe_get(size + 2 * (size_t)(page > 0 ? page : 4096)) : NULL;
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);
	loff_t pos = off;
	size_t got = 0;

	if (!rp) {
		read_via_memory(req, f->fd, size, off);
		return;
	}
	/* Never blocking on the pipe: a full pipe would wait for a reader
	 * that is this very thread. 0 is the end of the file. */
	while (got < size) {
		ssize_t n = splice(f->fd, &pos, rp->fd[1], NULL, size - got, SPLICE_F_NONBLOCK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			break;
		if (n < 0) {
			/* Not spliceable, or the pipe is full: the whole read
			 * goes through memory instead (a short reply would
			 * read as the end of the file). */
			rpipe_drop(rp);
			read_via_memory(req, f->fd, size, off);
			return;
		}
		got += (size_t)n;
	}
	if (got == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	bv.buf[0].size = got;
	bv.buf[0].flags = FUSE_BUF_IS_FD;
	bv.buf[0].fd = rp->fd[0];
	fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
	rpipe_drain(rp); /* a reply that failed may have left bytes */
}

/* lmsfs replaces some files whole (a committed rewrite of messages.jsonl,
 * params.json or mcp.json is a new file renamed in place) while the mount
 * shows one inode: a reader that held the file open across the change
 * must read what is in place now, as its fstat shows, not the old file
 * (tail -f would miss every later answer, and the pages it read would be
 * served to other readers from the kernel's cache). The new file takes
 * the old one's descriptor number (dup3), so a read of the handle running
 * meanwhile reads one or the other whole. */
void read_fd_current(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	char p[PATH_MAX];
	struct nodeinfo ni;
	struct stat held, now;
	int fd, r;

	if (node_info(f->ino, &ni) != 0 || fstat(f->fd, &held) != 0)
		goto read;
	if (ni.kind == K_TFILE)
		r = fstatat(fs_tools_fd, ni.name, &now, AT_SYMLINK_NOFOLLOW);
	else
		r = node_path(p, sizeof(p), &ni) == 0 ? fstatat(conv_root_fd(), p, &now,
								AT_SYMLINK_NOFOLLOW)
						       : -1;
	if (r != 0 || (now.st_ino == held.st_ino && now.st_dev == held.st_dev))
		goto read;
	fd = open_backing(&ni, O_RDONLY, 0);
	if (fd >= 0) {
		pthread_mutex_lock(&f->lock);
		/* On failure the old file stays: no worse than before. */
		(void)dup3(fd, f->fd, O_CLOEXEC);
		pthread_mutex_unlock(&f->lock);
		close(fd);
	}
read:
	read_fd(req, f, size, off);
}

/* fs_mcpconf.c - tools/mcp.json: writes are checked (from write() when they
 * can no longer become a JSON object, else at close) and replace the file
 * whole, or are refused with EINVAL. */
#include "fs_int.h"

#include "fsio.h"
#include "jsonobj.h"
#include "log.h"
#include "mcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Larger than any mcp.json people write; a bigger write is EFBIG. */
#define MCPCONF_MAX (1u << 20)

/* Readers read the file; writers get a copy (the file's content, or
 * nothing with O_TRUNC) that replaces it at close once it parses. */
static int mcpconf_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
			int creating, struct fh **out, int *cache)
{
	int wr = (flags & O_ACCMODE) != O_RDONLY, fd;
	struct fh *f;

	*cache = CACHE_NONE;
	if (!wr) {
		fd = open_backing(ni, O_RDONLY, 0);
		return fd < 0 ? fd : fh_new_fd(&mcpconf_ops, ino, fd, out);
	}
	if (creating) {
		/* The name must exist for the create reply; empty is a valid
		 * mcp.json (no servers). */
		fd = open_backing(ni, O_WRONLY | O_CREAT | O_EXCL, mode);
		if (fd < 0)
			return fd;
		close(fd);
	}
	f = fh_new(&mcpconf_ops, ino);
	if (!f)
		return -ENOMEM;
	buf_init(&f->data, MCPCONF_MAX);
	f->writable = 1;
	f->created = creating;
	if (flags & O_TRUNC) {
		f->dirty = 1;
	} else if (!creating) {
		char *data = NULL;
		size_t len = 0;
		int ret = fsio_read(fs_tools_fd, ni->name, MCPCONF_MAX, &data, &len);
		if (ret == 0)
			ret = buf_append(&f->data, data, len) ? -EFBIG : 0;
		free(data);
		if (ret != 0 && ret != -ENOENT) {
			fh_free(f);
			return ret;
		}
	}
	*out = f;
	return 0;
}

static void mcpconf_read(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	if (f->writable)
		read_data(req, f, size, off);
	else if (off == 0)
		read_fd_current(req, f, size, off); /* a new read: the file now */
	else
		read_fd(req, f, size, off); /* one read, one file: never torn */
}

/* Handle's lock held. The writer's copy is refused for good: the old file
 * stays, the reason goes to tools/.status and the log. */
static void refuse(struct fh *f, const struct nodeinfo *ni, const char *why)
{
	f->refused = 1;
	log_warnx("tools/mcp.json: write refused: %s (the old file is kept)", why);
	mcp_note_write(why);
	/* There was no old file: the empty one made to open it goes. */
	if (f->created) {
		struct stat st;
		if (fstatat(fs_tools_fd, ni->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_size == 0)
			unlinkat(fs_tools_fd, ni->name, 0);
		f->created = 0;
	}
}

static ssize_t mcpconf_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			     size_t size, off_t off, int append)
{
	char why[300];
	ssize_t ret;
	size_t at;

	pthread_mutex_lock(&f->lock);
	if (f->refused) {
		pthread_mutex_unlock(&f->lock);
		return -EINVAL;
	}
	at = append ? f->data.len : (size_t)off;
	if (off < 0 || at + size > MCPCONF_MAX) {
		pthread_mutex_unlock(&f->lock);
		return -EFBIG;
	}
	while (f->data.len < at + size) {
		static const char zero[256];
		size_t need = at + size - f->data.len;
		if (buf_append(&f->data, zero, need > sizeof(zero) ? sizeof(zero) : need)) {
			pthread_mutex_unlock(&f->lock);
			return -EFBIG;
		}
	}
	memcpy(f->data.data + at, data, size);
	f->dirty = 1;
	/* Text that can no longer become a JSON object is refused now, so
	 * that a shell's `echo ... >` sees the error (it ignores close's). */
	if (!f->refused && jsonobj_prefix_check(ni->name, f->data.data, f->data.len, why,
						 sizeof(why)) != 0)
		refuse(f, ni, why);
	ret = f->refused ? -EINVAL : (ssize_t)size;
	pthread_mutex_unlock(&f->lock);
	return ret;
}

/* Handle's lock held. The copy replaces mcp.json when it parses. last: no
 * more writes can come (the release). A text that may still become a JSON
 * object is refused for this close only: other processes may share the
 * descriptor (`{ echo '{'; cat body; echo '}'; } > mcp.json`, where cat's
 * exit closes its copy) and write the rest. */
static int commit(struct fh *f, const struct nodeinfo *ni, int last)
{
	const char *d = f->data.data ? f->data.data : "";
	char why[400], why2[300];
	int ret;

	if (!f->writable || !f->dirty || f->refused)
		return f->refused ? -EINVAL : 0;
	if (mcp_check(d, f->data.len, why, sizeof(why)) != 0) {
		if (last || jsonobj_prefix_check(ni->name, d, f->data.len, why2, sizeof(why2)) != 0)
			refuse(f, ni, why);
		else
			mcp_note_write(why);
		return -EINVAL;
	}
	ret = fsio_replace(fs_tools_fd, ni->name, f->data.data ? f->data.data : "", f->data.len);
	if (ret != 0)
		return ret;
	f->dirty = 0;
	mcp_note_write(NULL);
	return 0;
}

/* An emptied copy waits for the release: a shell's `> mcp.json` flushes
 * once before anything is written (dup2, then close), and committing then
 * would empty the file before a write that may be refused. */
static int mcpconf_flush(struct fh *f, const struct nodeinfo *ni)
{
	if (f->writable && !f->refused && f->dirty && f->data.len == 0)
		return 0;
	return commit(f, ni, 0);
}

static void mcpconf_release(struct fh *f, const struct nodeinfo *ni)
{
	commit(f, ni, 1);
}

static int mcpconf_fsync(struct fh *f, const struct nodeinfo *ni, int datasync)
{
	(void)datasync;
	return commit(f, ni, 0);
}

/* truncate(2) of the file is a write of its first size bytes. */
static int mcpconf_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	struct fh tmp;
	int ret;

	if (size < 0 || size > (off_t)MCPCONF_MAX)
		return -EFBIG;
	if (f && f->writable) {
		pthread_mutex_lock(&f->lock);
		if ((size_t)size <= f->data.len)
			f->data.len = (size_t)size;
		else
			while (f->data.len < (size_t)size && buf_putc(&f->data, '\0') == 0)
				;
		f->dirty = 1;
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	memset(&tmp, 0, sizeof(tmp));
	buf_init(&tmp.data, MCPCONF_MAX);
	tmp.writable = 1;
	tmp.dirty = 1;
	{
		char *data = NULL;
		size_t len = 0;
		if (fsio_read(fs_tools_fd, ni->name, MCPCONF_MAX, &data, &len) == 0)
			buf_append(&tmp.data, data, len < (size_t)size ? len : (size_t)size);
		free(data);
	}
	while (tmp.data.len < (size_t)size && buf_putc(&tmp.data, '\0') == 0)
		;
	ret = commit(&tmp, ni, 1);
	buf_free(&tmp.data);
	return ret;
}

const struct file_ops mcpconf_ops = {
	.kind = FH_BUF,
	.open = mcpconf_open,
	.read = mcpconf_read,
	.write = mcpconf_write,
	.flush = mcpconf_flush,
	.release = mcpconf_release,
	.fsync = mcpconf_fsync,
	.truncate = mcpconf_truncate,
};

int mcpconf_check_rename(const char *from)
{
	char *data = NULL, why[400];
	size_t len = 0;
	int ret = fsio_read(fs_tools_fd, from, MCPCONF_MAX, &data, &len);

	if (ret != 0)
		return ret;
	ret = mcp_check(data, len, why, sizeof(why));
	free(data);
	if (ret != 0) {
		log_warnx("tools/mcp.json: rename refused: %s (the old file is kept)", why);
		mcp_note_write(why);
	}
	return ret;
}

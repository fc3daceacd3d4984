/* fs_prompt.c - the files that talk to a conversation: prompt (text
 * written and closed is submitted; what can be refused is refused from
 * write()) and .ctl (cancel, retry). */
#include "fs_int.h"

#include "config.h"
#include "conv.h"
#include "log.h"
#include "metrics.h"
#include "utf8.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* --- prompt ------------------------------------------------------------------- */

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
	conv_put(c);
	if (ret) {
		/* Seen by close() only (a shell's echo ignores it): .status,
		 * health and metrics must say it too. */
		note_reject(ni->conv, "prompt", why);
		if (ret == -ENOSPC || ret == -EDQUOT || ret == -EIO)
			metrics_storage_failure(why);
	}
	buf_reset(&f->data);
	f->prechecked = 0;
	return ret;
}

/* Whether the state directory has room for a prompt of len bytes (with
 * its spool line and history line): refused from write() when not, since
 * a shell's echo never sees close()'s ENOSPC. 0 or -ENOSPC. */
static int room_for(size_t len)
{
	struct statvfs sv;
	unsigned long long need = 2ull * len + (64u << 10);
	if (fstatvfs(conv_root_fd(), &sv) != 0)
		return 0; /* cannot tell: close() will */
	return (unsigned long long)sv.f_bavail * sv.f_frsize < need ? -ENOSPC : 0;
}

static int prompt_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		       int creating, struct fh **out, int *cache)
{
	struct fh *f;

	if (creating) {
		int fd = open_backing(ni, O_WRONLY | O_CREAT, mode);
		if (fd < 0)
			return fd;
		close(fd);
	}
	f = fh_new(&prompt_ops, ino);
	if (!f)
		return -ENOMEM;
	f->writable = (flags & O_ACCMODE) != O_RDONLY;
	f->data.max = (size_t)fs_cfg->max_prompt_bytes;
	*cache = CACHE_NONE;
	*out = f;
	return 0;
}

/* Reads return nothing: a prompt is not kept in the file. */
static void read_nothing(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	(void)f;
	(void)size;
	(void)off;
	fuse_reply_buf(req, NULL, 0);
}

static ssize_t prompt_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			    size_t size, off_t off, int append)
{
	char why[700] = "";
	int ret;
	(void)off;
	(void)append;

	pthread_mutex_lock(&f->lock);
	if (!f->prechecked) {
		/* Refuse what is knowable now, from write(): the shell sees it. */
		struct conv *c = conv_get(ni->conv);
		ret = c ? conv_precheck(c, why, sizeof(why)) : -ENOENT;
		conv_put(c);
		if (ret) {
			f->refused = 1;
			pthread_mutex_unlock(&f->lock);
			note_reject(ni->conv, "prompt", why);
			return ret;
		}
		f->prechecked = 1;
	}
	ret = buf_append(&f->data, data, size);
	if (ret == 0 && (ret = room_for(f->data.len)) != 0) {
		f->refused = 1;
		pthread_mutex_unlock(&f->lock);
		snprintf(why, sizeof(why), "no room on the disk for the prompt");
		note_reject(ni->conv, "prompt", why);
		metrics_storage_failure(why);
		return ret;
	}
	if (ret == 0 && utf8_valid_prefix(f->data.data, f->data.len, 1) != f->data.len) {
		/* Refused from write(), so that the shell sees it. */
		f->refused = 1;
		pthread_mutex_unlock(&f->lock);
		note_reject(ni->conv, "prompt", "not valid UTF-8 text (or a NUL byte)");
		return -EINVAL;
	}
	if (ret)
		f->refused = 1;
	pthread_mutex_unlock(&f->lock);
	if (ret) {
		snprintf(why, sizeof(why), "longer than max_prompt_bytes (%ld)",
			 fs_cfg->max_prompt_bytes);
		note_reject(ni->conv, "prompt", why);
		return ret;
	}
	return (ssize_t)size;
}

/* Submitted at the first flush (the shell's close), so that .status counts
 * it before close() returns; the release submits what a flush missed. */
static int prompt_flush(struct fh *f, const struct nodeinfo *ni)
{
	return prompt_submit(f, ni);
}

static void prompt_release(struct fh *f, const struct nodeinfo *ni)
{
	prompt_submit(f, ni);
}

/* Always empty. */
static int prompt_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	(void)ni;
	(void)f;
	(void)size;
	return 0;
}

const struct file_ops prompt_ops = {
	.kind = FH_PROMPT,
	.open = prompt_open,
	.read = read_nothing,
	.write = prompt_write,
	.flush = prompt_flush,
	.release = prompt_release,
	.truncate = prompt_truncate,
};

/* --- .ctl --------------------------------------------------------------------- */

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

static int ctl_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		    int creating, struct fh **out, int *cache)
{
	(void)ni;
	(void)mode;
	(void)creating;
	if ((flags & O_ACCMODE) == O_RDONLY)
		return -EACCES;
	*out = fh_new(&ctl_ops, ino);
	*cache = CACHE_NONE;
	return *out ? 0 : -ENOMEM;
}

/* One command per line. */
static ssize_t ctl_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			 size_t size, off_t off, int append)
{
	char cmd[128], why[700] = "";
	size_t i = 0, start;
	(void)f;
	(void)off;
	(void)append;

	while (i < size) {
		while (i < size && (data[i] == '\n' || data[i] == ' ' || data[i] == '\r'))
			i++;
		start = i;
		while (i < size && data[i] != '\n')
			i++;
		if (i > start) {
			size_t l = i - start;
			int ret;
			if (l >= sizeof(cmd))
				l = sizeof(cmd) - 1;
			memcpy(cmd, data + start, l);
			cmd[l] = '\0';
			ret = ctl_command(ni, trim(cmd), why, sizeof(why));
			if (ret) {
				log_warnx("conversation %s: .ctl: %s", ni->conv, why);
				note_reject(ni->conv, ".ctl", why);
				return ret;
			}
		}
	}
	return (ssize_t)size;
}

const struct file_ops ctl_ops = {
	.kind = FH_CTL,
	.open = ctl_open,
	.read = read_nothing,
	.write = ctl_write,
	.truncate = prompt_truncate,
};

/* fs_setting.c - the settings files of a conversation (model, system,
 * params.json): what a writer writes is kept aside, checked, and put in
 * place whole at close (atomically); what cannot be used is refused with
 * EINVAL or EFBIG from write() when it can be known then, else from close,
 * with the reason in .status, and the old content stays. */
#include "fs_int.h"

#include "conv.h"
#include "fsio.h"
#include "jsonobj.h"
#include "log.h"
#include "store.h"
#include "utf8.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The largest settings file lmsfs reads (fsio_read_setting). */
#define SETTING_MAX (1u << 20)

static const char BOM[] = "\xEF\xBB\xBF";

/* Whether data can be used as the settings file `name`: 0, or -EFBIG /
 * -EINVAL with a reason. final: the text is complete (not while writes
 * still arrive). */
static int setting_check(const char *name, const char *data, size_t len, int final,
			 char *why, size_t whylen)
{
	const char *nul = memchr(data, '\0', len);
	size_t ok;

	if (len > SETTING_MAX) {
		snprintf(why, whylen, "larger than 1 MiB (settings files are read whole)");
		return -EFBIG;
	}
	if (nul) {
		snprintf(why, whylen, "contains a NUL byte at byte %zu", (size_t)(nul - data) + 1);
		return -EINVAL;
	}
	ok = utf8_valid_prefix(data, len, !final);
	if (ok < len) {
		snprintf(why, whylen, "not valid UTF-8 at byte %zu", ok + 1);
		return -EINVAL;
	}
	if (!final && strcmp(name, "params.json") == 0)
		return jsonobj_prefix_check(name, data, len, why, whylen);
	if (final && strcmp(name, "params.json") == 0) {
		char *copy = strndup(data, len), *t;
		cJSON *o = NULL;
		int ret = 0;
		if (!copy)
			return -ENOMEM;
		t = copy;
		if (strncmp(t, BOM, 3) == 0)
			t += 3;
		t = trim(t);
		if (*t && !cJSON_IsObject(o = cJSON_Parse(t))) {
			snprintf(why, whylen, "params.json must hold one JSON object (%s)",
				 o ? "it holds another JSON value" : "not valid JSON");
			ret = -EINVAL;
		}
		cJSON_Delete(o);
		free(copy);
		return ret;
	}
	return 0;
}

/* One settings file replaced at a time (fsio_replace's scratch names are
 * per file): writers closing at once each put their whole text in place,
 * in turn. A leaf: held for system calls only. */
static pthread_mutex_t commit_lock = PTHREAD_MUTEX_INITIALIZER;

/* Puts data in place of the file, atomically; then the mode and times a
 * writer's handle was given meanwhile (f may be NULL). */
static int setting_commit(const struct nodeinfo *ni, struct fh *f, const char *data,
			  size_t len)
{
	int dfd = conv_dir(ni->conv), ret;
	if (dfd < 0)
		return dfd;
	pthread_mutex_lock(&commit_lock);
	ret = store_replace(dfd, ni->name, data, len);
	if (ret == 0 && f && f->mode_set && fchmodat(dfd, ni->name, f->new_mode, 0) < 0)
		log_warn("conversation %s: cannot set the mode of %s", ni->conv, ni->name);
	if (ret == 0 && f && f->times_set &&
	    utimensat(dfd, ni->name, f->times, AT_SYMLINK_NOFOLLOW) < 0)
		log_warn("conversation %s: cannot set the times of %s", ni->conv, ni->name);
	pthread_mutex_unlock(&commit_lock);
	close(dfd);
	return ret;
}

static int setting_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
			int creating, struct fh **out, int *cache)
{
	int wr = (flags & O_ACCMODE) != O_RDONLY, fd;
	struct fh *f;

	*cache = CACHE_NONE;
	if (!wr) {
		fd = open_backing(ni, O_RDONLY, 0);
		return fd < 0 ? fd : fh_new_fd(&setting_ops, ino, fd, out);
	}
	/* An empty file means "not set": creating one changes nothing. */
	fd = open_backing(ni, O_RDONLY | (creating ? O_CREAT | O_EXCL : 0), mode);
	if (fd < 0 || (fd = fh_new_fd(&setting_ops, ino, fd, &f)) < 0)
		return fd;
	f->writable = 1;
	f->data.max = SETTING_MAX + 1;
	if (flags & O_TRUNC) {
		f->dirty = 1;
	} else {
		/* Edits in place work on a copy. */
		char *d = NULL;
		size_t len = 0;
		int dfd = conv_dir(ni->conv), ret = dfd;
		if (dfd >= 0) {
			ret = fsio_read(dfd, ni->name, SETTING_MAX, &d, &len);
			close(dfd);
		}
		if (ret == 0)
			ret = buf_append(&f->data, d, len);
		free(d);
		if (ret) {
			fh_free(f);
			return ret;
		}
	}
	*out = f;
	return 0;
}

static void setting_read(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	if (f->writable)
		read_data(req, f, size, off); /* a writer reads its copy */
	else if (off == 0)
		read_fd_current(req, f, size, off); /* a new read: the file now */
	else
		read_fd(req, f, size, off); /* one read, one file: never torn */
}

static ssize_t setting_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			     size_t size, off_t off, int append)
{
	char why[300] = "";
	size_t end;
	int ret = 0;

	pthread_mutex_lock(&f->lock);
	if (append)
		off = (off_t)f->data.len;
	end = (size_t)off + size;
	if (f->refused) {
		ret = f->refused;
	} else if (off < 0 || end > SETTING_MAX) {
		snprintf(why, sizeof(why), "larger than 1 MiB (settings files are read whole)");
		ret = -EFBIG;
	} else {
		if (end > f->data.len) {
			size_t grow = end - f->data.len;
			char *z = calloc(1, grow);
			ret = z ? buf_append(&f->data, z, grow) : -ENOMEM;
			free(z);
		}
		if (ret == 0 && size > 0) {
			memcpy(f->data.data + off, data, size);
			f->dirty = 1;
			ret = setting_check(ni->name, f->data.data, f->data.len, 0, why,
					    sizeof(why));
		}
	}
	if (ret && why[0])
		f->refused = ret;
	pthread_mutex_unlock(&f->lock);
	if (ret && why[0])
		note_reject(ni->conv, ni->name, why);
	return ret ? ret : (ssize_t)size;
}

/* The whole text checked, then put in place; a refused write commits
 * nothing. last: no more writes can come (the release). A text that is
 * not whole yet but may still become whole (unfinished JSON, a cut UTF-8
 * sequence) is refused for this close only: other processes may share
 * the descriptor (`{ echo '{'; cat body; echo '}'; } > params.json`, where
 * cat's exit closes its copy) and write the rest. Handle's lock held. */
static int setting_commit_fh(struct fh *f, const struct nodeinfo *ni, int last)
{
	char why[300] = "", why2[300];
	const char *d = f->data.data ? f->data.data : "";
	int ret;

	if (!f->writable)
		return 0;
	if (f->refused)
		return f->refused;
	if (!f->dirty)
		return 0;
	ret = setting_check(ni->name, d, f->data.len, 1, why, sizeof(why));
	if (ret) {
		if (last || setting_check(ni->name, d, f->data.len, 0, why2, sizeof(why2)) != 0)
			f->refused = ret;
		note_reject(ni->conv, ni->name, why);
		return ret;
	}
	ret = setting_commit(ni, f, f->data.data ? f->data.data : "", f->data.len);
	if (ret == 0)
		f->dirty = 0;
	return ret;
}

/* At close (each flush of the handle), so that close() reports a refusal.
 * An empty text waits for the release: a shell's `> file` flushes once
 * before anything is written (dup2, then close), and committing then would
 * empty the file before a write that may be refused. */
static int setting_flush(struct fh *f, const struct nodeinfo *ni)
{
	if (f->writable && !f->refused && f->dirty && f->data.len == 0)
		return 0;
	return setting_commit_fh(f, ni, 0);
}

/* The last close: what is still pending (an emptied file) is committed. */
static void setting_release(struct fh *f, const struct nodeinfo *ni)
{
	if (setting_commit_fh(f, ni, 1) != 0 && !f->refused)
		log_warnx("conversation %s: cannot write %s", ni->conv, ni->name);
}

static int setting_fsync(struct fh *f, const struct nodeinfo *ni, int datasync)
{
	(void)datasync;
	return setting_commit_fh(f, ni, 0);
}

/* ftruncate on a writer's handle cuts its copy; truncate(2) cuts the file
 * (checked like a write). */
static int setting_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	char why[300] = "", *d = NULL;
	size_t len = 0;
	int ret, dfd;

	if (size < 0 || (size_t)size > SETTING_MAX) {
		note_reject(ni->conv, ni->name, "larger than 1 MiB (settings files are read whole)");
		return -EFBIG;
	}
	if (f && f->writable) {
		pthread_mutex_lock(&f->lock);
		ret = 0;
		if ((size_t)size <= f->data.len) {
			f->data.len = (size_t)size;
		} else {
			size_t grow = (size_t)size - f->data.len;
			char *z = calloc(1, grow);
			ret = z ? buf_append(&f->data, z, grow) : -ENOMEM;
			free(z);
		}
		f->dirty = 1;
		pthread_mutex_unlock(&f->lock);
		return ret;
	}
	dfd = conv_dir(ni->conv);
	if (dfd < 0)
		return dfd;
	ret = fsio_read(dfd, ni->name, SETTING_MAX, &d, &len);
	close(dfd);
	if (ret == 0 && (size_t)size > len) {
		char *nd = realloc(d, (size_t)size + 1);
		if (!nd) {
			ret = -ENOMEM;
		} else {
			d = nd;
			memset(d + len, 0, (size_t)size - len);
		}
	}
	if (ret == 0)
		ret = setting_check(ni->name, d, (size_t)size, 1, why, sizeof(why));
	if (ret == 0)
		ret = setting_commit(ni, NULL, d, (size_t)size);
	else if (why[0])
		note_reject(ni->conv, ni->name, why);
	free(d);
	return ret;
}

int setting_rename_check(const char *name, const char *from, char *why, size_t whylen)
{
	char *d = NULL;
	size_t len = 0;
	int ret;

	if (strcmp(name, "model") && strcmp(name, "system") && strcmp(name, "params.json"))
		return 0;
	ret = fsio_read(conv_root_fd(), from, SETTING_MAX, &d, &len);
	if (ret == -EFBIG)
		snprintf(why, whylen, "larger than 1 MiB (settings files are read whole)");
	else if (ret == 0)
		ret = setting_check(name, d, len, 1, why, whylen);
	free(d);
	return ret;
}

const struct file_ops setting_ops = {
	.kind = FH_BUF,
	.open = setting_open,
	.read = setting_read,
	.write = setting_write,
	.flush = setting_flush,
	.release = setting_release,
	.fsync = setting_fsync,
	.truncate = setting_truncate,
};

/* fs_hist.c - messages.jsonl as users write it: every line checked,
 * written back whole (atomically) or appended at close, with the lines
 * lmsfs appended meanwhile kept; truncation, times set by cp -a and tar,
 * and temporaries renamed over it. */
#include "fs_int.h"

#include "conv.h"
#include "fsio.h"
#include "jsonl.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whole-history check of f->data from f->checked on; final says the last
 * line is complete even without a newline. */
static int hist_check(struct fh *f, int final, char *why, size_t whylen)
{
	const char *d = f->data.data ? f->data.data : "";
	size_t end = f->data.len, pos = f->checked;

	while (pos < end) {
		const char *nl = memchr(d + pos, '\n', end - pos);
		size_t l;
		if (!nl && !final) {
			if (end - pos > JSONL_MAX_LINE) {
				snprintf(why, whylen, "a line is longer than %u bytes",
					 JSONL_MAX_LINE);
				return -EFBIG;
			}
			break;
		}
		l = nl ? (size_t)(nl - (d + pos)) : end - pos;
		if (l > JSONL_MAX_LINE) {
			snprintf(why, whylen, "a line is longer than %u bytes", JSONL_MAX_LINE);
			return -EFBIG;
		}
		int ret = jsonl_check_line(d + pos, l, why, whylen);
		if (ret)
			return ret;
		pos += l + (nl ? 1 : 0);
		f->checked = pos;
	}
	return 0;
}


/* A write to disk failed: counted, logged, kept for health. */
static void note_storage(const char *conv, const char *what, int err)
{
	char msg[600];
	if (err != -ENOSPC && err != -EDQUOT && err != -EIO && err != -EROFS)
		return;
	snprintf(msg, sizeof(msg), "conversation %s: %s: %s", conv, what, strerror(-err));
	log_warnx("storage: %s", msg);
	metrics_storage_failure(msg);
}

/* How much of tail data already ends with: the longest prefix of tail
 * that is a suffix of data, both cut at line boundaries (a writer that read
 * some of the lines appended meanwhile, like sed reading to EOF). */
static size_t overlap(const char *data, size_t n, const char *tail, size_t tlen)
{
	for (size_t k = tlen; k > 0; k--) {
		if (tail[k - 1] != '\n' || k > n)
			continue;
		if ((k == n || data[n - k - 1] == '\n') && memcmp(data + n - k, tail, k) == 0)
			return k;
	}
	return 0;
}

/* data + what was appended to the history since base_size (the lines
 * lmsfs, or a user's >>, appended while this writer had the file open).
 * History lock held, generation unchanged since base_size was taken. What
 * lies past base_size must be whole valid lines starting at a line
 * boundary, or the file changed in a way the generation missed: -EBUSY.
 * *merged is NULL when there is nothing to add. */
static int merge_appended(int dfd, const char *data, size_t n, off_t base_size,
			  char **merged, size_t *mlen, char *why, size_t whylen)
{
	off_t size = store_hist_size(dfd);
	char *tail = NULL, *m;
	size_t tlen = 0, skip;
	int ret, nl;

	*merged = NULL;
	*mlen = 0;
	if (size <= base_size)
		return 0;
	ret = store_hist_read_from(dfd, base_size > 0 ? base_size - 1 : 0, &tail, &tlen);
	if (ret)
		return ret;
	/* The byte before base_size ends a line, or lmsfs's append began with
	 * the newline the last line lacked. */
	if (base_size > 0) {
		size_t cut = tlen > 0 && tail[0] == '\n' ? 1 : tlen > 1 && tail[1] == '\n' ? 2 : 0;
		if (!cut) {
			free(tail);
			snprintf(why, whylen, "messages.jsonl changed under this writer in a "
					      "way that cannot be merged; nothing written");
			return -EBUSY;
		}
		memmove(tail, tail + cut, tlen - cut + 1);
		tlen -= cut;
	}
	if (jsonl_check(tail, tlen, why, whylen, NULL) != 0) {
		free(tail);
		snprintf(why, whylen, "messages.jsonl changed under this writer in a way "
				      "that cannot be merged; nothing written");
		return -EBUSY;
	}
	skip = overlap(data, n, tail, tlen);
	if (skip == tlen) {
		free(tail);
		return 0;
	}
	nl = n > 0 && data[n - 1] != '\n';
	m = malloc(n + (size_t)nl + (tlen - skip) + 1);
	if (!m) {
		free(tail);
		return -ENOMEM;
	}
	memcpy(m, data, n);
	if (nl)
		m[n] = '\n';
	memcpy(m + n + nl, tail + skip, tlen - skip);
	m[n + nl + tlen - skip] = '\0';
	free(tail);
	*merged = m;
	*mlen = n + (size_t)nl + tlen - skip;
	return 0;
}

/* Writes a validated history back. Returns 0 or -errno. */
static int hist_commit(struct fh *f, const struct nodeinfo *ni)
{
	char why[300] = "";
	const char *data = f->data.data ? f->data.data : "";
	struct conv *c;
	int ret, dfd;

	/* An append is checked as it arrives; a replacement may have been
	 * edited anywhere, so it is checked whole. */
	if (f->mode == HM_REPLACE)
		f->checked = 0;
	ret = hist_check(f, 1, why, sizeof(why));
	if (ret) {
		note_reject(ni->conv, "messages.jsonl", why);
		return ret == -EFBIG ? -EFBIG : -EINVAL;
	}
	c = conv_get(ni->conv);
	if (!c) {
		f->refused = 1;
		return -ENOENT;
	}
	dfd = conv_dir(ni->conv);
	if (dfd < 0) {
		f->refused = 1;
		conv_put(c);
		note_storage(ni->conv, "opening the conversation directory", dfd);
		return dfd;
	}
	conv_hist_lock(c);
	if (f->mode == HM_APPEND) {
		ret = store_hist_append(dfd, data, f->data.len, STORE_SYNC | STORE_CREATE, NULL);
		if (ret == 0) {
			buf_reset(&f->data);
			f->checked = 0;
		}
	} else if (conv_hist_gen(c) != f->base_gen) {
		/* Someone else replaced the history since this writer opened
		 * it: which lines to keep cannot be known. */
		ret = -EBUSY;
		snprintf(why, sizeof(why), "messages.jsonl was replaced by another writer "
					   "while this one had it open; nothing written");
	} else {
		char *merged = NULL;
		size_t mlen = 0;
		ret = merge_appended(dfd, data, f->data.len, f->base_size, &merged, &mlen, why,
				     sizeof(why));
		if (ret == 0)
			ret = merged ? store_hist_replace(dfd, merged, mlen)
				     : store_hist_replace(dfd, data, f->data.len);
		free(merged);
		if (ret == 0) {
			conv_hist_replaced(c);
			f->base_gen = conv_hist_gen(c);
			f->base_size = store_hist_size(dfd);
		}
	}
	if (ret == 0 && f->mode_set)
		if (fchmodat(dfd, STORE_HISTORY, f->new_mode, 0) < 0)
			log_warn("conversation %s: cannot set the mode of messages.jsonl", ni->conv);
	if (ret == 0 && f->times_set)
		utimensat(dfd, STORE_HISTORY, f->times, AT_SYMLINK_NOFOLLOW);
	conv_hist_unlock(c);
	/* What the kernel cached of the file may differ from what is now on
	 * disk (lines merged in, or a write refused). */
	conv_changed(c, STORE_HISTORY);
	conv_put(c);
	close(dfd);
	if (ret == 0) {
		f->dirty = 0;
		f->trunc_pending = 0;
		return 0;
	}
	/* Refused once, refused for good: a later flush or the release must
	 * not write what close() reported as not written. */
	f->refused = 1;
	if (why[0])
		note_reject(ni->conv, "messages.jsonl", why);
	else
		note_storage(ni->conv, "writing messages.jsonl", ret);
	return ret;
}

/* A writer that replaces the history: remember its size and generation
 * now (hist_commit keeps what is appended past them meanwhile) and, for an
 * in-place edit, take the copy it edits, all under the history lock. */
static int hist_open_replace(struct fh *f, const struct nodeinfo *ni, int flags,
			     int creating)
{
	struct conv *c = conv_get(ni->conv);
	struct stat st;
	int ret = 0;

	if (!c)
		return -ENOENT;
	f->mode = HM_REPLACE;
	f->trunc_pending = (flags & O_TRUNC) != 0;
	conv_hist_lock(c);
	f->base_gen = conv_hist_gen(c);
	/* Opened before the lock: the name may point elsewhere by now (a
	 * replacement, or the recovery that loading the conversation ran). */
	{
		int fd = open_backing(ni, O_RDONLY, 0);
		if (fd >= 0) {
			close(f->fd);
			f->fd = fd;
		}
	}
	if (fstat(f->fd, &st) < 0)
		ret = -errno;
	else
		f->base_size = st.st_size;
	/* In-place edits (no O_TRUNC) work on a copy, checked at close. */
	if (ret == 0 && !(flags & O_TRUNC) && !creating && st.st_size > 0) {
		size_t n = (size_t)st.st_size;
		char *all = n <= STORE_HISTORY_MAX ? malloc(n) : NULL;
		if (n > STORE_HISTORY_MAX)
			ret = -EFBIG;
		else if (!all)
			ret = -ENOMEM;
		else if (pread(f->fd, all, n, 0) != st.st_size)
			ret = -EIO;
		else
			ret = buf_append(&f->data, all, n);
		free(all);
	}
	conv_hist_unlock(c);
	conv_put(c);
	return ret;
}

/* --- attributes -------------------------------------------------------------- */

static int truncate_history(const struct nodeinfo *ni, off_t size)
{
	char why[300] = "";
	char *data = NULL;
	size_t len = 0;
	struct conv *c;
	int ret, dfd;

	c = conv_get(ni->conv);
	if (!c)
		return -ENOENT;
	dfd = conv_dir(ni->conv);
	if (dfd < 0) {
		conv_put(c);
		return dfd;
	}
	/* Read, check and write back under the history lock: nothing may
	 * replace the file in between. */
	conv_hist_lock(c);
	ret = store_hist_read(dfd, &data, &len);
	if (ret == 0 && (size_t)size > len) {
		/* Zeros are not JSON lines: growing is refused, not padded. */
		snprintf(why, sizeof(why), "cannot grow the history (%zu bytes) to %lld: "
					   "only whole JSON lines can be added",
			 len, (long long)size);
		ret = -EINVAL;
	}
	if (ret == 0 && (size_t)size < len) {
		ret = jsonl_check(data, (size_t)size, why, sizeof(why), NULL);
		if (ret == 0)
			ret = store_hist_replace(dfd, data, (size_t)size);
		else
			ret = -EINVAL;
		if (ret == 0)
			conv_hist_replaced(c);
	}
	conv_hist_unlock(c);
	conv_changed(c, STORE_HISTORY);
	conv_put(c);
	close(dfd);
	free(data);
	if (ret == -EINVAL && why[0])
		note_reject(ni->conv, "truncating messages.jsonl", why);
	else if (ret)
		note_storage(ni->conv, "truncating messages.jsonl", ret);
	return ret;
}

/* Renames conversation file `name` over messages.jsonl: checked whole;
 * a temporary created and closed just now (sed -i) keeps the lines
 * appended since it was created after its own (see temp_remember); if the
 * history was replaced meanwhile, -EBUSY. History lock held: nothing here
 * takes the conversation's lock (why says what to report after unlocking). */
int rename_over_history(struct conv *c, const char *conv, const char *name,
			const char *from, const char *to, unsigned flags, char *why,
			size_t whylen)
{
	char *data = NULL, *merged = NULL;
	size_t len, mlen;
	off_t base;
	uint64_t gen;
	int ret, dfd;

	ret = fsio_read(conv_root_fd(), from, STORE_HISTORY_MAX, &data, &len);
	if (ret)
		return ret;
	if (jsonl_check(data, len, why, whylen, NULL) != 0) {
		free(data);
		return -EINVAL;
	}
	if (c && temp_take(conv, name, &base, &gen) == 0) {
		if (gen != conv_hist_gen(c)) {
			snprintf(why, whylen, "messages.jsonl was replaced while this file "
					      "was written; nothing renamed");
			ret = -EBUSY;
		} else if ((dfd = conv_dir(conv)) >= 0) {
			ret = merge_appended(dfd, data, len, base, &merged, &mlen, why, whylen);
			close(dfd);
			if (ret == 0 && merged)
				ret = store_replace(conv_root_fd(), from, merged, mlen);
		}
	}
	free(merged);
	free(data);
	if (ret == 0 && renameat2(conv_root_fd(), from, conv_root_fd(), to, flags) < 0)
		ret = -errno;
	if (ret == 0 && c) {
		conv_hist_replaced(c);
		conv_changed(c, STORE_HISTORY); /* lines merged in */
	}
	if (ret == 0)
		fsio_sync_parent(conv_root_fd(), to);
	return ret;
}

/* --- the handle -------------------------------------------------------------- */

static int hist_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		     int creating, struct fh **out, int *cache)
{
	int wr = (flags & O_ACCMODE) != O_RDONLY, ret = 0;
	int fd = open_backing(ni, O_RDONLY | (creating ? O_CREAT : 0), mode);
	struct fh *f;

	if (fd < 0 || (fd = fh_new_fd(&hist_ops, ino, fd, &f)) < 0)
		return fd;
	f->writable = wr;
	f->data.max = STORE_HISTORY_MAX;
	/* Readers go through the page cache, kept from one open to the next
	 * (readahead; a second cat or grep costs no FUSE round trips).
	 * Every change lmsfs makes drops the pages and attributes
	 * (conv_changed); a change of size or mtime the kernel sees drops
	 * them too (FUSE_CAP_AUTO_INVAL_DATA). */
	*cache = wr ? CACHE_NONE : CACHE_KEEP;
	if (wr && (flags & O_APPEND) && !(flags & O_TRUNC))
		f->mode = HM_APPEND;
	else if (wr)
		ret = hist_open_replace(f, ni, flags, creating);
	if (ret) {
		fh_free(f);
		return ret;
	}
	*out = f;
	return 0;
}

static void hist_read(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	pthread_mutex_lock(&f->lock);
	if (f->writable && f->mode == HM_REPLACE) {
		/* A writer reads the copy it edits. */
		pthread_mutex_unlock(&f->lock);
		read_data(req, f, size, off);
		return;
	}
	if (f->writable && f->mode == HM_APPEND && f->data.len) {
		/* An a+ reader sees its own appends before they are committed
		 * at close: they follow the file. */
		struct stat st;
		if (fstat(f->fd, &st) == 0 && off >= st.st_size) {
			struct prepared p;
			prepare_slice(f->data.data, f->data.len, size, off - st.st_size, &p);
			pthread_mutex_unlock(&f->lock);
			send_prepared(req, &p);
			return;
		}
	}
	pthread_mutex_unlock(&f->lock);
	read_fd_current(req, f, size, off);
}

/* Appends are checked line by line as they arrive; a write inside the text
 * is spliced into the copy and the whole is checked at close. */
static ssize_t hist_write(struct fh *f, const struct nodeinfo *ni, const char *data,
			  size_t size, off_t off, int append)
{
	char why[700] = "";
	size_t before;
	int ret = 0;
	(void)append;

	pthread_mutex_lock(&f->lock);
	before = f->data.len;
	if (f->mode == HM_APPEND || (size_t)off == f->data.len) {
		ret = buf_append(&f->data, data, size);
		if (ret == 0)
			ret = hist_check(f, 0, why, sizeof(why));
	} else {
		size_t end = (size_t)off + size;
		if (end > f->data.max) {
			ret = -EFBIG;
		} else {
			if (end > f->data.len) {
				size_t grow = end - f->data.len;
				char *z = calloc(1, grow);
				ret = z ? buf_append(&f->data, z, grow) : -ENOMEM;
				free(z);
			}
			if (ret == 0)
				memcpy(f->data.data + off, data, size);
			if ((size_t)off < f->checked)
				f->checked = 0;
		}
	}
	if (ret) {
		/* The whole write-back is abandoned: the old history stays. */
		f->refused = 1;
		if (f->data.len > before && (f->mode == HM_APPEND || (size_t)off == before)) {
			f->data.len = before;
			f->data.data[before] = '\0';
			if (f->checked > before)
				f->checked = 0;
		}
		pthread_mutex_unlock(&f->lock);
		if (!why[0])
			snprintf(why, sizeof(why), "%s", strerror(-ret));
		note_reject(ni->conv, "messages.jsonl", why);
		return ret == -EFBIG ? -EFBIG : -EINVAL;
	}
	f->dirty = 1;
	pthread_mutex_unlock(&f->lock);
	return (ssize_t)size;
}

static int hist_flush(struct fh *f, const struct nodeinfo *ni)
{
	if (f->refused)
		return -EINVAL;
	return f->dirty ? hist_commit(f, ni) : 0;
}

/* What no flush committed (": >" takes effect here, see README). */
static void hist_release(struct fh *f, const struct nodeinfo *ni)
{
	if (!f->refused && (f->dirty || f->trunc_pending))
		hist_commit(f, ni);
}

static int hist_fsync(struct fh *f, const struct nodeinfo *ni, int datasync)
{
	(void)datasync;
	if (!f->dirty)
		return 0;
	return f->refused ? -EINVAL : hist_commit(f, ni);
}

/* With the writer's handle, its copy is cut; without, the file itself.
 * Never grown: zeros are not JSON lines. */
static int hist_truncate(const struct nodeinfo *ni, struct fh *f, off_t size)
{
	int ret = 0;

	if (!f || f->kind != FH_HIST || !f->writable || f->mode != HM_REPLACE)
		return truncate_history(ni, size);
	pthread_mutex_lock(&f->lock);
	if ((size_t)size <= f->data.len) {
		f->data.len = (size_t)size;
		if (f->data.data)
			f->data.data[f->data.len] = '\0';
		f->checked = 0;
		f->dirty = 1;
	} else {
		ret = -EINVAL;
	}
	pthread_mutex_unlock(&f->lock);
	if (ret)
		note_reject(ni->conv, "truncating messages.jsonl",
			    "cannot grow the history: only whole JSON lines can be added");
	return ret;
}

const struct file_ops hist_ops = {
	.kind = FH_HIST,
	.open = hist_open,
	.read = hist_read,
	.write = hist_write,
	.flush = hist_flush,
	.release = hist_release,
	.fsync = hist_fsync,
	.truncate = hist_truncate,
};

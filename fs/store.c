/* store.c - the on-disk layout of a conversation (see store.h). */
#include "store.h"

#include "attach.h"

#include "fsio.h"
#include "jsonl.h"
#include "log.h"
#include "msgs.h"
#include "utf8.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* --- history ------------------------------------------------------------ */

int store_hist_append(int dirfd, const char *data, size_t n, int flags, off_t *at)
{
	int f = FSIO_LINES;
	if (flags & STORE_SYNC)
		f |= FSIO_SYNC;
	if (flags & STORE_CREATE)
		f |= FSIO_CREATE;
	return fsio_append(dirfd, STORE_HISTORY, data, n, f, at);
}

int store_hist_replace(int dirfd, const char *data, size_t n)
{
	return store_replace(dirfd, STORE_HISTORY, data, n);
}

int store_hist_truncate(int dirfd, off_t size)
{
	return fsio_truncate(dirfd, STORE_HISTORY, size);
}

off_t store_hist_size(int dirfd)
{
	struct stat st;
	int fd = fsio_open(dirfd, STORE_HISTORY, O_RDONLY, 0);
	off_t size;
	if (fd < 0)
		return fd;
	size = fstat(fd, &st) == 0 ? st.st_size : -errno;
	close(fd);
	return size;
}

int store_hist_open(int dirfd)
{
	return fsio_open(dirfd, STORE_HISTORY, O_RDONLY, 0);
}

int store_hist_read(int dirfd, char **out, size_t *len)
{
	return fsio_read(dirfd, STORE_HISTORY, STORE_HISTORY_MAX, out, len);
}

int store_hist_read_from(int dirfd, off_t from, char **out, size_t *len)
{
	struct stat st;
	int fd = fsio_open(dirfd, STORE_HISTORY, O_RDONLY, 0), ret = 0;
	size_t n;
	char *d;

	*out = NULL;
	*len = 0;
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	n = st.st_size > from ? (size_t)(st.st_size - from) : 0;
	if (n > STORE_HISTORY_MAX) {
		ret = -EFBIG;
		goto out;
	}
	d = malloc(n + 1);
	if (!d) {
		ret = -ENOMEM;
		goto out;
	}
	if (n && pread(fd, d, n, from) != (ssize_t)n) {
		free(d);
		ret = -EIO;
		goto out;
	}
	d[n] = '\0';
	*out = d;
	*len = n;
out:
	close(fd);
	return ret;
}

char *store_hist_last_line(int dirfd, off_t *offset)
{
	int fd = store_hist_open(dirfd);
	struct stat st;
	char *data = NULL, *line = NULL;
	size_t want = 64 << 10;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || st.st_size == 0)
		goto out;
	/* Read the tail, a bigger piece each time, until the last line's
	 * start is in it; never more than twice the longest valid line. */
	for (;;) {
		off_t start;
		size_t end, b;
		char *nd;

		if ((off_t)want > st.st_size)
			want = (size_t)st.st_size;
		start = st.st_size - (off_t)want;
		nd = realloc(data, want + 1);
		if (!nd)
			goto out;
		data = nd;
		if (pread(fd, data, want, start) != (ssize_t)want)
			goto out;
		data[want] = '\0';
		end = want;
		while (end > 0 && (data[end - 1] == '\n' || data[end - 1] == '\r' ||
				   data[end - 1] == ' '))
			end--;
		b = end;
		while (b > 0 && data[b - 1] != '\n')
			b--;
		if (b > 0 || start == 0) {
			line = strndup(data + b, end - b);
			if (offset)
				*offset = start + (off_t)b;
			goto out;
		}
		if (want >= 2 * (size_t)JSONL_MAX_LINE)
			goto out; /* a line too long to look at */
		want *= 2;
	}
out:
	free(data);
	close(fd);
	return line;
}

cJSON *store_hist_last_message(int dirfd, off_t *offset)
{
	char *l = store_hist_last_line(dirfd, offset);
	cJSON *m = l ? cJSON_Parse(l) : NULL;
	free(l);
	if (!cJSON_IsObject(m)) {
		cJSON_Delete(m);
		return NULL;
	}
	return m;
}

const char *store_role(const cJSON *m)
{
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
	return cJSON_IsString(r) ? r->valuestring : "";
}

int store_awaits_answer(const cJSON *m)
{
	const char *r = store_role(m);
	return !strcmp(r, "user") || !strcmp(r, "tool") || !strcmp(r, "function");
}

int store_hist_for_request(int dirfd, struct buf *out, char *first_role, size_t rolelen,
			   char *why, size_t whylen)
{
	return store_hist_for_request_files(dirfd, out, first_role, rolelen, why, whylen, 0, 0, 0);
}

int store_hist_for_request_files(int dirfd, struct buf *out, char *first_role,
				 size_t rolelen, char *why, size_t whylen, long max_file,
				 long max_total, unsigned flags)
{
	struct attach_budget budget = {dirfd, max_file, max_total, 0};
	char *data = NULL;
	size_t len;
	int rc = store_hist_read(dirfd, &data, &len);

	first_role[0] = '\0';
	if (rc == -ENOENT)
		return 0;
	if (rc != 0) {
		snprintf(why, whylen, "cannot read messages.jsonl: %s", strerror(-rc));
		return rc;
	}
	why[0] = '\0';
	rc = msgs_from_history_files(data, len, out, first_role, rolelen, flags,
				     max_file > 0 ? attach_expand : NULL, &budget, why, whylen);
	free(data);
	if (rc) {
		if (!why[0])
			snprintf(why, whylen, "the history is too large to send");
		return rc;
	}
	return 0;
}

static char *print_line(cJSON *m)
{
	char *s = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	return s;
}

char *store_user_line(const char *text, const char *id)
{
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", "user");
	cJSON_AddStringToObject(m, "content", text);
	if (id && id[0])
		cJSON_AddStringToObject(m, "lmsfs_id", id);
	return print_line(m);
}

char *store_user_line_files(int dirfd, const char *text, const char *files, const char *id)
{
	cJSON *m, *parts, *t;

	if (!files)
		return store_user_line(text, id);
	m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", "user");
	parts = cJSON_AddArrayToObject(m, "content");
	t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", "text");
	cJSON_AddStringToObject(t, "text", text);
	cJSON_AddItemToArray(parts, t);
	if (attach_add_refs(dirfd, parts, files) != 0) {
		cJSON_Delete(m);
		return NULL;
	}
	if (id && id[0])
		cJSON_AddStringToObject(m, "lmsfs_id", id);
	return print_line(m);
}

char *store_tool_result_line(const char *name, const char *call_id, const char *content,
			     int legacy)
{
	cJSON *m = cJSON_CreateObject();
	if (legacy) {
		cJSON_AddStringToObject(m, "role", "function");
		cJSON_AddStringToObject(m, "name", name ? name : "unknown");
	} else {
		cJSON_AddStringToObject(m, "role", "tool");
		cJSON_AddStringToObject(m, "tool_call_id", call_id ? call_id : "");
	}
	cJSON_AddStringToObject(m, "content", content);
	return print_line(m);
}

char *store_marked_answer_line(const char *text, size_t len, const char *status)
{
	cJSON *m = cJSON_CreateObject();
	char *fixed = utf8_repair(text ? text : "", text ? len : 0);
	cJSON_AddStringToObject(m, "role", "assistant");
	cJSON_AddStringToObject(m, "content", fixed ? fixed : "");
	free(fixed);
	cJSON_AddStringToObject(m, "lmsfs_status", status);
	return print_line(m);
}

/* --- stream ------------------------------------------------------------- */

int store_stream_open(int dirfd)
{
	return fsio_open(dirfd, STORE_STREAM, O_WRONLY | O_APPEND | O_CREAT, 0644);
}

int store_reasoning_open(int dirfd)
{
	return fsio_open(dirfd, STORE_REASONING, O_RDWR | O_APPEND | O_CREAT, 0644);
}

int store_reasoning_line_open(int fd)
{
	struct stat st;
	char last;

	if (fstat(fd, &st) != 0 || st.st_size == 0)
		return 0;
	return pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n';
}

int store_stream_write(int dirfd, const char *text, size_t len)
{
	int fd = fsio_open(dirfd, STORE_STREAM, O_WRONLY | O_APPEND, 0), ret;
	if (fd < 0)
		return fd;
	ret = fsio_append_fd(fd, text, len);
	close(fd);
	return ret;
}

void store_mark(int dirfd, const char *fmt, ...)
{
	char line[1200];
	va_list ap;
	int n;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	/* Marked lines are single lines, whatever the message held. */
	for (int i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	line[n++] = '\n';
	store_stream_write(dirfd, line, (size_t)n);
}

off_t store_stream_size(int dirfd)
{
	struct stat st;
	return fstatat(dirfd, STORE_STREAM, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			       S_ISREG(st.st_mode)
		       ? st.st_size
		       : 0;
}

char *store_stream_text_from(int dirfd, off_t offset, size_t max, size_t *len)
{
	int fd = fsio_open(dirfd, STORE_STREAM, O_RDONLY, 0);
	struct stat st;
	char *t = NULL, *w;
	size_t n;

	*len = 0;
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || st.st_size <= offset)
		goto out;
	n = (size_t)(st.st_size - offset);
	if (n > max)
		n = max;
	t = malloc(n + 1);
	if (!t || pread(fd, t, n, offset) != (ssize_t)n) {
		free(t);
		t = NULL;
		goto out;
	}
	t[n] = '\0';
	/* Drop marked lines (tool activity) from the text. */
	w = t;
	for (char *r = t; r < t + n;) {
		char *nl = memchr(r, '\n', (size_t)(t + n - r));
		size_t l = nl ? (size_t)(nl - r) + 1 : (size_t)(t + n - r);
		if (l < 8 || strncmp(r, "[lmsfs] ", 8) != 0) {
			memmove(w, r, l);
			w += l;
		}
		r += l;
	}
	*w = '\0';
	*len = (size_t)(w - t);
out:
	close(fd);
	return t;
}

/* --- the running answer's marker ---------------------------------------- */

int store_partial_set(int dirfd)
{
	char txt[96];
	int n = snprintf(txt, sizeof(txt), "{\"stream_offset\":%lld}\n",
			 (long long)store_stream_size(dirfd));
	int pfd = store_private_open(dirfd, 1), fd, ret;
	if (pfd < 0)
		return pfd;
	fd = fsio_open(pfd, STORE_PARTIAL, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	close(pfd);
	if (fd < 0)
		return fd;
	ret = fsio_write_all(fd, txt, (size_t)n);
	close(fd);
	return ret;
}

int store_partial_get(int dirfd, off_t *offset)
{
	char *data = NULL;
	size_t len;
	cJSON *o, *off;
	if (fsio_read(dirfd, STORE_PARTIAL_PATH, 4096, &data, &len) != 0)
		return 0;
	o = cJSON_Parse(data);
	off = cJSON_GetObjectItemCaseSensitive(o, "stream_offset");
	/* A marker the crash cut short still says an answer was running. */
	*offset = cJSON_IsNumber(off) && off->valuedouble >= 0 ? (off_t)off->valuedouble
							      : -1;
	cJSON_Delete(o);
	free(data);
	return 1;
}

void store_partial_clear(int dirfd)
{
	int pfd = store_private_open(dirfd, 0);
	if (pfd < 0)
		return;
	unlinkat(pfd, STORE_PARTIAL, 0);
	close(pfd);
}

/* --- settings and ids ----------------------------------------------------- */

char *store_setting(int dirfd, const char *name)
{
	return fsio_read_setting(dirfd, name);
}

void store_new_id(char id[STORE_ID_LEN])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char r[8];
	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
		/* No entropy (never on Linux >= 3.17): time and address. */
		struct timespec ts;
		unsigned long long v;
		clock_gettime(CLOCK_REALTIME, &ts);
		v = (unsigned long long)ts.tv_nsec * 2654435761u ^ (unsigned long long)ts.tv_sec ^
		    (unsigned long long)(uintptr_t)id;
		memcpy(r, &v, sizeof(r));
	}
	for (int i = 0; i < 8; i++) {
		id[2 * i] = hex[r[i] >> 4];
		id[2 * i + 1] = hex[r[i] & 15];
	}
	id[16] = '\0';
}

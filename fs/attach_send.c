/* attach_send.c - a file reference of the history expanded into the
 * content part a request carries (see attach.h): images base64-encoded
 * straight into the request's buffer, text escaped as a JSON string. */
#include "attach.h"

#include "fsio.h"
#include "names.h"
#include "utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Raw bytes read per step: a multiple of 3, so each step's base64 stands
 * alone. */
#define B64_IN (3u * 16384u)

void attach_b64(const unsigned char *in, size_t n, char *out)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i = 0, o = 0;
	for (; i + 3 <= n; i += 3) {
		unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (i < n) {
		unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
}

/* Reads up to n bytes (fewer only at the end of the file). */
static ssize_t read_full(int fd, unsigned char *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int put_image(int fd, const char *mime, off_t size, struct buf *out)
{
	unsigned char *in = malloc(B64_IN);
	char *enc = malloc(B64_IN / 3 * 4);
	size_t need = 64 + strlen(mime) + ((size_t)size + 2) / 3 * 4;
	int ret = in && enc ? 0 : -ENOMEM;

	/* One allocation of the final size: no regrowth, no second copy. */
	if (ret == 0)
		ret = buf_grow(out, need);
	if (ret == 0)
		ret = buf_printf(out, "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:%s;base64,",
				 mime);
	/* Never more than the size checked against the caps, even if the
	 * file grows while it is read. */
	for (size_t left = (size_t)size; ret == 0 && left;) {
		ssize_t r = read_full(fd, in, left < B64_IN ? left : B64_IN);
		if (r < 0) {
			ret = (int)r;
			break;
		}
		if (r == 0)
			break;
		attach_b64(in, (size_t)r, enc);
		ret = buf_append(out, enc, ((size_t)r + 2) / 3 * 4);
		left -= (size_t)r;
		if ((size_t)r < B64_IN && left)
			break; /* it shrank */
	}
	if (ret == 0)
		ret = buf_puts(out, "\"}}");
	free(in);
	free(enc);
	return ret;
}

/* s[0..n) as the inside of a JSON string (valid UTF-8 assumed). */
static int put_escaped(struct buf *out, const char *s, size_t n)
{
	size_t start = 0;
	int ret = 0;
	for (size_t i = 0; i < n && ret == 0; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		ret = buf_append(out, s + start, i - start);
		if (c == '\n')
			snprintf(esc, sizeof(esc), "\\n");
		else if (c == '"' || c == '\\')
			snprintf(esc, sizeof(esc), "\\%c", c);
		else if (c == '\t')
			snprintf(esc, sizeof(esc), "\\t");
		else
			snprintf(esc, sizeof(esc), "\\u%04x", c);
		if (ret == 0)
			ret = buf_puts(out, esc);
		start = i + 1;
	}
	if (ret == 0)
		ret = buf_append(out, s + start, n - start);
	return ret;
}

static int put_text(int fd, const char *name, off_t size, struct buf *out, char *why,
		    size_t whylen)
{
	char *data = malloc((size_t)size + 1);
	size_t skip;
	ssize_t r;
	int ret;

	if (!data)
		return -ENOMEM;
	r = read_full(fd, (unsigned char *)data, (size_t)size);
	if (r < 0) {
		free(data);
		return (int)r;
	}
	if (utf8_valid_prefix(data, (size_t)r, 0) != (size_t)r) {
		free(data);
		snprintf(why, whylen,
			 "files/%s is neither a PNG or JPEG image nor UTF-8 text: it cannot be sent "
			 "(edit its line in messages.jsonl)",
			 name);
		return -EINVAL;
	}
	/* A UTF-8 byte order mark is no part of the text (settings files and
	 * history lines drop it too). */
	skip = r >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
	ret = buf_puts(out, "{\"type\":\"text\",\"text\":\"[file ");
	if (ret == 0)
		ret = put_escaped(out, name, strlen(name));
	if (ret == 0)
		ret = buf_puts(out, "]\\n");
	if (ret == 0)
		ret = put_escaped(out, data + skip, (size_t)r - skip);
	if (ret == 0)
		ret = buf_puts(out, "\"}");
	free(data);
	return ret;
}

int attach_expand(void *arg, const char *path, struct buf *out, char *why, size_t whylen)
{
	struct attach_budget *b = arg;
	const char *name = path;
	unsigned char head[16];
	const char *mime;
	struct stat st;
	ssize_t r;
	int fd, ret;

	if (strncmp(path, ATTACH_FILES "/", strlen(ATTACH_FILES "/")) == 0)
		name = path + strlen(ATTACH_FILES "/");
	if (name == path || names_file_ok(name) != 0) {
		snprintf(why, whylen,
			 "a file reference names %s: it must be files/NAME, a file in the "
			 "conversation's files/",
			 path);
		return -EINVAL;
	}
	fd = fsio_open(b->dirfd, path, O_RDONLY | O_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(why, whylen, "%s, attached in messages.jsonl, cannot be read: %s", path,
			 fd == -ENOENT ? "it is no longer in files/" : strerror(-fd));
		return fd;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(why, whylen, "%s, attached in messages.jsonl, is not a plain file", path);
		return -EINVAL;
	}
	if (st.st_size > b->max_file || st.st_size > b->max_total - b->used) {
		close(fd);
		if (st.st_size > b->max_file)
			snprintf(why, whylen, "%s is %lld bytes, over max_attach_bytes (%ld)", path,
				 (long long)st.st_size, b->max_file);
		else
			snprintf(why, whylen,
				 "the files attached in messages.jsonl add up to over "
				 "max_attach_request_bytes (%ld) at %s",
				 b->max_total, path);
		return -EFBIG;
	}
	b->used += (long)st.st_size;
	r = pread(fd, head, sizeof(head), 0);
	mime = r > 0 ? attach_image_type(head, (size_t)r) : NULL;
	if (mime)
		ret = put_image(fd, mime, st.st_size, out);
	else
		ret = put_text(fd, name, st.st_size, out, why, whylen);
	close(fd);
	if (ret && !why[0])
		snprintf(why, whylen, "%s cannot be sent: %s", path,
			 ret == -EFBIG ? "the request would be too large" : strerror(-ret));
	return ret;
}

/* buf.c - a growable byte buffer with a hard size cap.
 *
 * Storage grows by doubling so that appending byte by byte stays linear, but
 * never beyond max + 1 bytes (the +1 is the terminating NUL).
 */
#include "buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_CAP 64

static size_t buf_limit(const struct buf *b)
{
	/* One byte is always kept back for the NUL. */
	return b->max && b->max < SIZE_MAX - 1 ? b->max : SIZE_MAX - 1;
}

/* Makes room for n more bytes plus the NUL. */
static int buf_reserve(struct buf *b, size_t n)
{
	size_t limit = buf_limit(b);
	size_t need, cap;
	char *p;

	if (n > limit || b->len > limit - n)
		return -EFBIG;
	need = b->len + n + 1;
	if (b->data && need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : BUF_MIN_CAP;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	if (cap > limit + 1)
		cap = limit + 1;
	p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	if (!b->data)
		p[0] = '\0';
	b->data = p;
	b->cap = cap;
	return 0;
}

void buf_init(struct buf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
	int rc = buf_reserve(b, n);

	if (rc)
		return rc;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

int buf_puts(struct buf *b, const char *s)
{
	return buf_append(b, s, strlen(s));
}

int buf_putc(struct buf *b, char c) { return buf_append(b, &c, 1); }

int buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	rc = buf_reserve(b, (size_t)n);
	if (rc)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

void buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		buf_reset(b);
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
	b->data[b->len] = '\0';
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

char *buf_take(struct buf *b)
{
	char *p = b->data;

	if (!p)
		p = calloc(1, 1);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	return p;
}

void buf_free(struct buf *b)
{
	if (!b)
		return;
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

/* --- growing ahead and inserting at the front -------------------------- */

int buf_grow(struct buf *b, size_t n)
{
	return buf_reserve(b, n);
}

int buf_prepend(struct buf *b, const void *p, size_t n)
{
	int ret = buf_reserve(b, n);
	if (ret)
		return ret;
	memmove(b->data + n, b->data, b->len + 1);
	memcpy(b->data, p, n);
	b->len += n;
	return 0;
}

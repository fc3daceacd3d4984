/* buf.h - a growable byte buffer with a hard size cap.
 *
 * The buffer owns its storage. buf_free() releases it; buf_take() hands it
 * to the caller (who then frees it with free()) and leaves the buffer empty.
 * Every append fails with -EFBIG instead of growing past `max`, so data that
 * comes from the network or from a user can never grow without bound. The
 * contents are always NUL-terminated (the NUL is not counted in len).
 */
#ifndef LMSFS_BUF_H
#define LMSFS_BUF_H

#include <stddef.h>

struct buf {
	char *data;  /* NUL-terminated when non-NULL */
	size_t len;  /* bytes used, excluding the NUL */
	size_t cap;  /* bytes allocated */
	size_t max;  /* hard cap on len; 0 means SIZE_MAX */
};

void buf_init(struct buf *b, size_t max);
/* Returns 0, -EFBIG when the cap would be passed, -ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_putc(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Returns the malloc'd, NUL-terminated contents (never NULL unless out of
 * memory) and empties the buffer. The caller frees it. */
char *buf_take(struct buf *b);
void buf_free(struct buf *b);
/* Makes room for n more bytes (the cap applies): appends up to n bytes
 * then cost no further allocation. 0, -EFBIG or -ENOMEM. */
int buf_grow(struct buf *b, size_t n);
/* Inserts p[0..n) before the contents, in place (no second copy of a
 * large buffer). Same returns. */
int buf_prepend(struct buf *b, const void *p, size_t n);

#endif

/* think.h - "<think>...</think>" at the start of an answer's text, told
 * apart from the answer for servers that do not separate reasoning
 * (split_think_tags).
 *
 * Text is fed piece by piece as it arrives; tags may be cut anywhere
 * between pieces. Whitespace before "<think>", right after it and right
 * after "</think>" is dropped. Text that does not start with "<think>" is
 * passed on untouched; a "<think>" later in an answer is text. A think
 * block that never closes is all reasoning. Pure: no I/O, no allocation.
 */
#ifndef LMSFS_THINK_H
#define LMSFS_THINK_H

#include <stddef.h>

struct think {
	int state;      /* enum in think.c; 0: nothing seen yet */
	size_t m;       /* bytes of the tag matched so far */
	char hold[24];  /* the start, held until it is known to be a tag */
	size_t nhold;
};

/* Called with each piece: reasoning 1 for reasoning, 0 for answer text.
 * A non-zero return stops the feed and is returned. */
typedef int (*think_fn)(void *ctx, int reasoning, const char *s, size_t n);

void think_init(struct think *t);
int think_feed(struct think *t, const char *s, size_t n, think_fn fn, void *ctx);
/* The text ended: what is held is passed on. */
int think_end(struct think *t, think_fn fn, void *ctx);
/* Whether every later piece is answer text (nothing left to split). */
int think_done(const struct think *t);

#endif

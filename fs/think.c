/* think.c - <think> blocks at the start of an answer (see think.h). */
#include "think.h"

#include <string.h>

enum { T_START = 0, T_OPENED, T_IN, T_AFTER, T_OUT };

static const char OPEN[] = "<think>", CLOSE[] = "</think>";
#define OPEN_LEN (sizeof(OPEN) - 1)
#define CLOSE_LEN (sizeof(CLOSE) - 1)

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

void think_init(struct think *t)
{
	memset(t, 0, sizeof(*t));
}

int think_done(const struct think *t)
{
	return t->state == T_OUT;
}

static int emit(think_fn fn, void *ctx, int reasoning, const char *s, size_t n)
{
	return n ? fn(ctx, reasoning, s, n) : 0;
}

/* The start: whitespace and a prefix of "<think>" are held. *used gets
 * how much of s was taken. */
static int start(struct think *t, const char *s, size_t n, size_t *used, think_fn fn,
		 void *ctx)
{
	size_t i;
	for (i = 0; i < n; i++) {
		size_t b = 0, r;
		if (t->nhold == sizeof(t->hold)) {
			t->state = T_OUT;
			*used = i;
			return emit(fn, ctx, 0, t->hold, t->nhold);
		}
		t->hold[t->nhold++] = s[i];
		while (b < t->nhold && is_space(t->hold[b]))
			b++;
		r = t->nhold - b;
		if (r == 0)
			continue;
		if (r > OPEN_LEN || memcmp(t->hold + b, OPEN, r) != 0) {
			t->state = T_OUT;
			*used = i + 1;
			return emit(fn, ctx, 0, t->hold, t->nhold);
		}
		if (r == OPEN_LEN) {
			t->state = T_OPENED;
			t->nhold = 0;
			*used = i + 1;
			return 0;
		}
	}
	*used = n;
	return 0;
}

/* Inside the block: reasoning up to "</think>", which may be cut between
 * pieces (t->m bytes of it matched so far, not yet passed on). */
static int inside(struct think *t, const char *s, size_t n, size_t *used, think_fn fn,
		  void *ctx)
{
	size_t i, rs = 0;
	int rc;
	for (i = 0; i < n; i++) {
		char c = s[i];
		if (t->m > 0 && c != CLOSE[t->m]) {
			/* Not the tag after all: what matched was reasoning. */
			if ((rc = emit(fn, ctx, 1, CLOSE, t->m)) != 0)
				return rc;
			t->m = 0;
			rs = i;
		}
		if (c == CLOSE[t->m]) {
			if (t->m == 0 && (rc = emit(fn, ctx, 1, s + rs, i - rs)) != 0)
				return rc;
			t->m++;
			rs = i + 1;
			if (t->m == CLOSE_LEN) {
				t->m = 0;
				t->state = T_AFTER;
				*used = i + 1;
				return 0;
			}
		}
	}
	*used = n;
	return emit(fn, ctx, 1, s + rs, n - rs);
}

int think_feed(struct think *t, const char *s, size_t n, think_fn fn, void *ctx)
{
	while (n > 0) {
		size_t used = 0;
		int rc = 0;
		switch (t->state) {
		case T_START:
			rc = start(t, s, n, &used, fn, ctx);
			break;
		case T_OPENED:
		case T_AFTER:
			/* Whitespace right after a tag is dropped. */
			while (used < n && is_space(s[used]))
				used++;
			if (used < n)
				t->state = t->state == T_OPENED ? T_IN : T_OUT;
			break;
		case T_IN:
			rc = inside(t, s, n, &used, fn, ctx);
			break;
		default:
			return emit(fn, ctx, 0, s, n);
		}
		if (rc)
			return rc;
		s += used;
		n -= used;
	}
	return 0;
}

int think_end(struct think *t, think_fn fn, void *ctx)
{
	int rc = 0;
	if (t->state == T_START && t->nhold)
		rc = emit(fn, ctx, 0, t->hold, t->nhold);
	else if (t->state == T_IN && t->m)
		rc = emit(fn, ctx, 1, CLOSE, t->m);
	t->nhold = 0;
	t->m = 0;
	t->state = T_OUT;
	return rc;
}

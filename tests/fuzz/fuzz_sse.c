/* libFuzzer target: the SSE parser, fed in pieces whose sizes come from the
 * input itself, must never crash and must give the same events as a single
 * feed. */
#include "sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct acc {
	unsigned long h;
	size_t n;
};

static int on_event(void *ctx, const char *ev, const char *data, size_t len)
{
	struct acc *a = ctx;
	for (size_t i = 0; i < len; i++)
		a->h = a->h * 31 + (unsigned char)data[i];
	for (; *ev; ev++)
		a->h = a->h * 37 + (unsigned char)*ev;
	a->n++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct acc one = {0, 0}, many = {0, 0};
	struct sse_parser *p;
	size_t i = 0, step;
	int r1, r2 = 0;

	if (n == 0)
		return 0;
	step = (d[0] % 7) + 1;
	p = sse_new(1 << 16, on_event, &one);
	r1 = sse_feed(p, (const char *)d + 1, n - 1);
	if (r1 == 0)
		r1 = sse_finish(p);
	sse_free(p);
	p = sse_new(1 << 16, on_event, &many);
	for (i = 1; i < n && r2 == 0; i += step)
		r2 = sse_feed(p, (const char *)d + i, (n - i) < step ? n - i : step);
	if (r2 == 0)
		r2 = sse_finish(p);
	sse_free(p);
	if (r1 == 0 && r2 == 0 && (one.h != many.h || one.n != many.n))
		abort();
	return 0;
}

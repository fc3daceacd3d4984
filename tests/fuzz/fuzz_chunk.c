/* libFuzzer target: decoding server replies (SSE data payloads and whole
 * completions) into an answer, then rendering the history line. */
#include "api.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int on_text(void *ctx, const char *t, size_t n)
{
	(void)ctx;
	(void)t;
	(void)n;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct api_answer a;
	char *line;
	size_t start = 0;

	api_answer_init(&a);
	a.split_think = n % 3 == 0;
	/* Newline-separated payloads, as a stream would deliver them. */
	for (size_t i = 0; i <= n; i++) {
		if (i == n || d[i] == '\n') {
			api_feed_event(&a, (const char *)d + start, i - start, on_text, NULL);
			start = i + 1;
		}
	}
	line = api_assistant_line(&a, n % 2 ? "cancelled" : NULL, NULL);
	free(line);
	api_answer_free(&a);
	api_answer_init(&a);
	api_decode_completion(&a, (const char *)d, n, on_text, NULL);
	api_answer_free(&a);
	return 0;
}

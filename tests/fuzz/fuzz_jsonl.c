/* libFuzzer target: the history validator; whole-buffer and line-by-line
 * checks must agree. */
#include "jsonl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	char why[256];
	size_t bad = 0, start = 0;
	int whole = jsonl_check((const char *)d, n, why, sizeof(why), &bad);
	int lines = 0;

	for (size_t i = 0; i <= n && lines == 0; i++) {
		if (i == n || d[i] == '\n') {
			lines = jsonl_check_line((const char *)d + start, i - start, why,
						 sizeof(why));
			start = i + 1;
		}
	}
	if ((whole == 0) != (lines == 0))
		abort();
	return 0;
}

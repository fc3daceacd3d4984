/* utf8.c - the one UTF-8 validator and repairer (see utf8.h). */
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

/* Length of the UTF-8 sequence at s (n bytes available), 0 if invalid,
 * -1 if valid so far but cut short. */
static int utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	int len;
	unsigned min;
	if (c == 0)
		return 0;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		min = 0x10000;
	} else {
		return 0;
	}
	unsigned cp = c & (0x7F >> len);
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return -1;
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

size_t utf8_valid_prefix(const char *s, size_t n, int partial_ok)
{
	size_t i = 0;
	while (i < n) {
		int l = utf8_seq((const unsigned char *)s + i, n - i);
		if (l == -1)
			return partial_ok ? n : i;
		if (l == 0)
			return i;
		i += (size_t)l;
	}
	return i;
}

char *utf8_repair(const char *s, size_t n)
{
	char *out = malloc(n * 3 + 1), *o = out;
	size_t i = 0;
	if (!out)
		return NULL;
	while (i < n) {
		int l = utf8_seq((const unsigned char *)s + i, n - i);
		if (l <= 0) {
			memcpy(o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(o, s + i, (size_t)l);
		o += l;
		i += (size_t)l;
	}
	*o = '\0';
	return out;
}


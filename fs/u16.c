/* u16.c - UTF-16 halves in the JSON a server sends (see u16.h).
 *
 * cJSON refuses a string holding a lone surrogate escape ("\ud83d" without
 * its low half), and with it the whole event. u16_prepare() therefore
 * rewrites each lone half's escape into the three bytes that UTF-8 would
 * use for it (ED A0..BF 80..BF: never valid UTF-8, so they cannot be
 * mistaken for text), and the decoded strings are then mended: a high half
 * followed by a low half (raw, as CESU-8 servers send them) becomes the
 * real character, a high half at the very end of a piece waits for the
 * next piece, anything else becomes U+FFFD. */
#include "u16.h"

#include <stdlib.h>
#include <string.h>

#define FFFD U16_FFFD

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The code unit of the escape "\uXXXX" at p (6 bytes available), or -1. */
static long u_escape(const char *p)
{
	long v = 0;
	if (p[0] != '\\' || p[1] != 'u')
		return -1;
	for (int i = 2; i < 6; i++) {
		int h = hexval((unsigned char)p[i]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

static int is_high(long u)
{
	return u >= 0xD800 && u <= 0xDBFF;
}

static int is_low(long u)
{
	return u >= 0xDC00 && u <= 0xDFFF;
}

/* A copy of the JSON text with "\u0000" made "\uFFFD" (a NUL would cut a
 * string short for C: a tool name "real\u0000../x" would read as "real")
 * and each lone surrogate escape made its three raw bytes; NULL when
 * nothing needs to change (or out of memory: cJSON then judges the
 * original). Never longer than the original. */
char *u16_prepare(const char *d, size_t len, size_t *outlen)
{
	char *out;
	size_t i = 0, o = 0;
	int changed = 0;

	if (!memmem(d, len, "\\u", 2))
		return NULL;
	out = malloc(len ? len : 1);
	if (!out)
		return NULL;
	while (i < len) {
		long u, u2;
		if (d[i] != '\\' || i + 1 >= len) {
			out[o++] = d[i++];
			continue;
		}
		u = i + 6 <= len ? u_escape(d + i) : -1;
		if (u < 0) { /* another escape: copied whole, "\\" included */
			out[o++] = d[i++];
			out[o++] = d[i++];
			continue;
		}
		u2 = i + 12 <= len ? u_escape(d + i + 6) : -1;
		if (u == 0) {
			memcpy(out + o, "\\uFFFD", 6);
			changed = 1;
		} else if (is_high(u) && is_low(u2)) {
			memcpy(out + o, d + i, 12); /* a pair: cJSON's job */
			o += 12;
			i += 12;
			continue;
		} else if (is_high(u) || is_low(u)) {
			out[o++] = (char)0xED;
			out[o++] = (char)(0x80 | ((u >> 6) & 0x3F));
			out[o++] = (char)(0x80 | (u & 0x3F));
			i += 6;
			changed = 1;
			continue;
		} else {
			memcpy(out + o, d + i, 6);
		}
		o += 6;
		i += 6;
	}
	if (!changed) {
		free(out);
		return NULL;
	}
	*outlen = o;
	return out;
}

/* The surrogate whose three raw bytes start at p (n bytes left), or 0. */
static unsigned half_at(const char *p, size_t n)
{
	const unsigned char *q = (const unsigned char *)p;
	if (n < 3 || q[0] != 0xED || q[1] < 0xA0 || q[1] > 0xBF ||
	    (q[2] & 0xC0) != 0x80)
		return 0;
	return 0xD000u | ((q[1] & 0x3Fu) << 6) | (q[2] & 0x3Fu);
}

static size_t put_pair(char *o, unsigned hi, unsigned lo)
{
	unsigned c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
	o[0] = (char)(0xF0 | (c >> 18));
	o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
	o[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

/* The piece s[0..n) mended (see above) into out, which has room for n + 4
 * bytes; returns the length. *hi (may be NULL: nothing is held) is the high
 * half held from the previous piece, and receives the one this piece ends
 * with. */
size_t u16_mend(const char *s, size_t n, unsigned *hi, char *out)
{
	size_t i = 0, o = 0;

	if (hi && *hi) {
		unsigned lo = half_at(s, n);
		if (is_low(lo)) {
			o += put_pair(out, *hi, lo);
			i = 3;
		} else {
			memcpy(out, FFFD, 3);
			o = 3;
		}
		*hi = 0;
	}
	while (i < n) {
		unsigned u = half_at(s + i, n - i), lo;
		if (!u) {
			out[o++] = s[i++];
			continue;
		}
		lo = is_high(u) ? half_at(s + i + 3, n - i - 3) : 0;
		if (is_low(lo)) {
			o += put_pair(out + o, u, lo);
			i += 6;
		} else if (is_high(u) && i + 3 == n && hi) {
			*hi = u;
			i += 3;
		} else {
			memcpy(out + o, FFFD, 3);
			o += 3;
			i += 3;
		}
	}
	return o;
}

/* A malloc'd copy of s with every half made U+FFFD (names, ids). */
char *u16_dup_mended(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(n + 5);
	if (out)
		out[u16_mend(s, n, NULL, out)] = '\0';
	return out;
}

/* Makes every half in a message U+FFFD, in place (same length). */
void u16_mend_in_place(char *s)
{
	for (size_t n = strlen(s); *s; s++, n--)
		if (half_at(s, n))
			memcpy(s, FFFD, 3);
}


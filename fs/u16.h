/* u16.h - UTF-16 halves in the JSON a server sends: some servers cut a
 * string between the two halves of a surrogate pair ("abcd\ud83d" in one
 * event, "\ude00ef" in the next), which cJSON refuses. These functions make
 * such text parse, then join the halves again, or make a lone half U+FFFD.
 * Pure: no I/O. */
#ifndef LMSFS_U16_H
#define LMSFS_U16_H

#include <stddef.h>

/* U+FFFD in UTF-8 (3 bytes). */
#define U16_FFFD "\xEF\xBF\xBD"

/* A copy of the JSON text with "\u0000" made "\uFFFD" and each lone
 * surrogate escape made its three raw bytes (never valid UTF-8); NULL when
 * nothing needs to change (or out of memory). Never longer than d. */
char *u16_prepare(const char *d, size_t len, size_t *outlen);
/* The piece s[0..n) mended into out (room for n + 4 bytes): a high half
 * followed by a low half becomes the character, a high half at the very
 * end is held in *hi for the next piece (hi NULL: nothing is held), any
 * other half becomes U+FFFD. Returns the length. */
size_t u16_mend(const char *s, size_t n, unsigned *hi, char *out);
/* A malloc'd copy of s with every half made U+FFFD (names, ids). */
char *u16_dup_mended(const char *s);
/* Makes every half in s U+FFFD, in place (same length). */
void u16_mend_in_place(char *s);

#endif

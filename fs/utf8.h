/* utf8.h - the one UTF-8 validator and repairer: no NUL, no overlong
 * forms, no surrogates, nothing above U+10FFFF. Pure. */
#ifndef LMSFS_UTF8_H
#define LMSFS_UTF8_H

#include <stddef.h>

/* Length of the longest prefix of s[0..n) that is valid UTF-8 (no NUL,
 * no overlong forms or surrogates). When partial_ok, an incomplete
 * sequence at the very end counts as valid (more bytes may follow). */
size_t utf8_valid_prefix(const char *s, size_t n, int partial_ok);
/* A malloc'd copy of s[0..n) with every invalid byte replaced by U+FFFD. */
char *utf8_repair(const char *s, size_t n);

#endif

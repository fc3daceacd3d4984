/* util.h - small helpers with no dependencies: clocks, UTF-8, trimming,
 * flags shared between threads. (File I/O is in fsio.h.) */
#ifndef LMSFS_UTIL_H
#define LMSFS_UTIL_H

#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

long long now_ms(void);
double now_s(void); /* monotonic, seconds */

/* Length of the longest prefix of s[0..n) that is valid UTF-8 (no NUL,
 * no overlong forms or surrogates). When partial_ok, an incomplete
 * sequence at the very end counts as valid (more bytes may follow). */
size_t utf8_valid_prefix(const char *s, size_t n, int partial_ok);
/* A malloc'd copy of s[0..n) with every invalid byte replaced by U+FFFD. */
char *utf8_repair(const char *s, size_t n);
/* A JSON value pretty-printed as the content of a file (ends in a newline);
 * malloc'd, NULL when out of memory. */
struct cJSON;
char *json_text_file(const struct cJSON *v);
/* Trims ASCII whitespace at both ends in place; returns s. */
char *trim(char *s);

/* A flag shared between threads (cancel requests): relaxed atomics. */
static inline int flag_get(const volatile int *f)
{
	return f && __atomic_load_n(f, __ATOMIC_RELAXED);
}
static inline void flag_set(volatile int *f, int v)
{
	__atomic_store_n(f, v, __ATOMIC_RELAXED);
}
/* Doubles read by other threads (progress). */
static inline double dbl_get(const double *d)
{
	double v;
	__atomic_load(d, &v, __ATOMIC_RELAXED);
	return v;
}
static inline void dbl_set(double *d, double v)
{
	__atomic_store(d, &v, __ATOMIC_RELAXED);
}

#endif

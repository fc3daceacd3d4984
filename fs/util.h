/* util.h - small helpers with no dependencies: clocks, a string hash,
 * trimming, flags shared between threads. (File I/O is in fsio.h, UTF-8
 * in utf8.h.) */
#ifndef LMSFS_UTIL_H
#define LMSFS_UTIL_H

#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

long long now_ms(void);
double now_s(void); /* monotonic, seconds */

/* A JSON value pretty-printed as the content of a file (ends in a newline);
 * malloc'd, NULL when out of memory. */
struct cJSON;
char *json_text_file(const struct cJSON *v);
/* FNV-1a of s, started from seed (for hash tables). */
unsigned util_strhash(unsigned seed, const char *s);
/* Trims ASCII whitespace at both ends in place; returns s. */
char *trim(char *s);
/* v rounded to `decimals` places, as the double nearest to that decimal
 * (so that JSON shows no more places: round(v * 10^d) / 10^d, never
 * round(v / 0.1) * 0.1, which gives 510.70000000000005). decimals 0-6. */
double round_to(double v, int decimals);

/* A flag shared between threads (cancel requests): relaxed atomics. Its
 * value (0 when f is NULL), not only whether it is set. */
static inline int flag_get(const volatile int *f)
{
	return f ? __atomic_load_n(f, __ATOMIC_RELAXED) : 0;
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

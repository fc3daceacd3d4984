/* util.h - small helpers with no dependencies: clocks, file I/O that
 * retries short writes, durable appends. */
#ifndef LMSFS_UTIL_H
#define LMSFS_UTIL_H

#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

long long now_ms(void);
double now_s(void); /* monotonic, seconds */

/* write()/pwrite() everything or fail: 0 or -errno. */
int write_all(int fd, const void *p, size_t n);
/* Reads a whole file relative to dirfd into a malloc'd NUL-terminated
 * buffer of at most max bytes. Returns 0 or -errno (-EFBIG when larger). */
int read_file_at(int dirfd, const char *path, size_t max, char **out,
		 size_t *len);
/* Writes data to dirfd/path atomically: a temporary beside it, fsync,
 * rename, fsync of the directory. Returns 0 or -errno. */
int replace_file_at(int dirfd, const char *path, const void *data, size_t n);
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
/* A small settings file (model, system, params.json) relative to dirfd,
 * trimmed; malloc'd, NULL when absent, empty or over 1 MiB. */
char *read_setting_at(int dirfd, const char *name);
/* Appends whole lines to dirfd/path: a newline first when the file does
 * not end in one (a user may have left it so), the data, and a final
 * newline when the data lacks it. create: O_CREAT; sync: fdatasync.
 * Returns 0 or -errno. */
int append_lines_at(int dirfd, const char *path, const char *data, size_t n,
		    int create, int sync);
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

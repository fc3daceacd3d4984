/* check.h - the few assertion macros the unit tests share.
 *
 * Each failed check prints one line with file, line and the expression; the
 * test keeps going. CHECK_DONE() prints "N passed, M failed" and yields the
 * exit status for main().
 */
#ifndef LMSFS_CHECK_H
#define LMSFS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (cond) {                                                    \
			check_passed++;                                        \
		} else {                                                       \
			check_failed++;                                        \
			printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
		}                                                              \
	} while (0)

#define CHECK_INT(a, b)                                                        \
	do {                                                                   \
		long long check_a_ = (long long)(a),                           \
			  check_b_ = (long long)(b);                           \
		if (check_a_ == check_b_) {                                    \
			check_passed++;                                        \
		} else {                                                       \
			check_failed++;                                        \
			printf("FAIL %s:%d: %s == %s (%lld != %lld)\n",        \
			       __FILE__, __LINE__, #a, #b, check_a_,           \
			       check_b_);                                      \
		}                                                              \
	} while (0)

#define CHECK_STR(a, b)                                                        \
	do {                                                                   \
		const char *check_a_ = (a), *check_b_ = (b);                   \
		if (check_a_ && check_b_ && strcmp(check_a_, check_b_) == 0) { \
			check_passed++;                                        \
		} else {                                                       \
			check_failed++;                                        \
			printf("FAIL %s:%d: %s == %s (\"%s\" != \"%s\")\n",    \
			       __FILE__, __LINE__, #a, #b,                     \
			       check_a_ ? check_a_ : "(null)",                 \
			       check_b_ ? check_b_ : "(null)");                \
		}                                                              \
	} while (0)

/* Substring test, for error messages. */
#define CHECK_HAS(hay, needle)                                                 \
	do {                                                                   \
		const char *check_h_ = (hay), *check_n_ = (needle);            \
		if (check_h_ && strstr(check_h_, check_n_)) {                  \
			check_passed++;                                        \
		} else {                                                       \
			check_failed++;                                        \
			printf("FAIL %s:%d: \"%s\" does not contain \"%s\"\n", \
			       __FILE__, __LINE__,                             \
			       check_h_ ? check_h_ : "(null)", check_n_);      \
		}                                                              \
	} while (0)

#define CHECK_DONE()                                                           \
	(printf("%d passed, %d failed\n", check_passed, check_failed),         \
	 check_failed ? 1 : 0)

#endif

/* log.c - diagnostics: stderr in the foreground, syslog when daemonized.
 *
 * Each message is formatted into a local buffer first and then written with
 * one fprintf() or syslog() call, so messages from different threads never
 * interleave. The level and the destination are atomics; progname is set by
 * log_init() before any thread starts.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU strerror_r, asprintf, strndup */
#endif
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#define LOG_MSG_MAX 2048

static const char *log_progname = "lmsfs";
static atomic_int log_level = LOG_LVL_INFO;
static atomic_int log_syslog;

void log_init(const char *progname, enum log_level level)
{
	if (progname && *progname) {
		const char *slash = strrchr(progname, '/');
		log_progname = slash && slash[1] ? slash + 1 : progname;
	}
	atomic_store(&log_level, level);
}

void log_set_level(enum log_level level) { atomic_store(&log_level, level); }

void log_to_syslog(void)
{
	openlog(log_progname, LOG_PID, LOG_DAEMON);
	atomic_store(&log_syslog, 1);
}

int log_level_parse(const char *s)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	int i;

	if (!s)
		return -1;
	for (i = 0; i < 4; i++)
		if (strcasecmp(s, names[i]) == 0)
			return i;
	if (strcasecmp(s, "warning") == 0)
		return LOG_LVL_WARN;
	return -1;
}

/* errnum < 0: no strerror suffix. */
static void log_emit(int prio, int errnum, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void log_emit(int prio, int errnum, const char *fmt, va_list ap)
{
	char msg[LOG_MSG_MAX];
	char ebuf[128];
	const char *es;
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (errnum >= 0) {
		es = strerror_r(errnum, ebuf, sizeof(ebuf));
		n = strlen(msg);
		snprintf(msg + n, sizeof(msg) - n, ": %s", es);
	}
	if (atomic_load(&log_syslog))
		syslog(prio, "%s", msg);
	else
		fprintf(stderr, "%s: %s\n", log_progname, msg);
}

#define LOG_BODY(lvl, prio, errnum)                                            \
	do {                                                                   \
		va_list ap;                                                    \
		if (atomic_load(&log_level) < (lvl))                           \
			return;                                                \
		va_start(ap, fmt);                                             \
		log_emit((prio), (errnum), fmt, ap);                           \
		va_end(ap);                                                    \
	} while (0)

void log_debug(const char *fmt, ...) { LOG_BODY(LOG_LVL_DEBUG, LOG_DEBUG, -1); }

void log_info(const char *fmt, ...) { LOG_BODY(LOG_LVL_INFO, LOG_INFO, -1); }

void log_warn(const char *fmt, ...)
{
	int saved = errno;

	LOG_BODY(LOG_LVL_WARN, LOG_WARNING, saved);
	errno = saved;
}

void log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_LVL_WARN, LOG_WARNING, -1);
}

void fatal(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	log_emit(LOG_CRIT, saved, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(LOG_CRIT, -1, fmt, ap);
	va_end(ap);
	exit(1);
}

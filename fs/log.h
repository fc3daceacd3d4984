/* log.h - diagnostics: stderr in the foreground, syslog when daemonized.
 *
 * log_warn() appends strerror(errno); log_warnx() does not. fatal() and
 * fatalx() log and exit(1); they are for startup only.
 */
#ifndef LMSFS_LOG_H
#define LMSFS_LOG_H

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void log_init(const char *progname, enum log_level level);
void log_set_level(enum log_level level);
/* Switch to syslog (after daemonizing). */
void log_to_syslog(void);
int log_level_parse(const char *s); /* -1 when unknown */

void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn, format(printf, 1, 2))) void fatal(const char *fmt, ...);
__attribute__((noreturn, format(printf, 1, 2))) void fatalx(const char *fmt, ...);

#endif

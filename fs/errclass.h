/* errclass.h - the one place that decides what kind of failure happened.
 *
 * A failure is classified from the curl result, the HTTP status and the
 * error body (LM Studio sends {"error": "text"} or {"error": {"message",
 * "type", "code", ...}}). Each class has a stable name (shown in stream,
 * .status, health, metrics) and the errno a system call returns for it.
 */
#ifndef LMSFS_ERRCLASS_H
#define LMSFS_ERRCLASS_H

#include <stddef.h>

enum err_class {
	EC_NONE = 0,
	EC_UNREACHABLE,   /* connect refused, DNS, reset before a reply */
	EC_TIMEOUT,       /* connect or whole-request timeout */
	EC_RATE_LIMITED,  /* HTTP 429 */
	EC_AUTH,          /* HTTP 401/403 */
	EC_MODEL_NOT_FOUND,
	EC_NO_MODEL,      /* nothing loaded / no model could be chosen */
	EC_MODEL_NOT_ALLOWED,
	EC_CONTEXT,       /* context too long */
	EC_BAD_REQUEST,   /* other 4xx */
	EC_SERVER,        /* 5xx */
	EC_PROTOCOL,      /* garbage, truncated stream, oversize response */
	EC_BREAKER,       /* circuit open: failed without trying */
	EC_CANCELLED,     /* user cancelled */
	EC_INTERRUPTED,   /* daemon stopped mid-answer */
	EC_STORAGE,       /* the answer could not be written to disk */
	EC__COUNT
};

const char *errclass_name(enum err_class c);
/* errno a system call returns for the class (positive). */
int errclass_errno(enum err_class c);
/* Whether a request that failed this way may be tried again. */
int errclass_retryable(enum err_class c);

/* Classifies an HTTP reply that was not 2xx, or a 2xx body that carried an
 * "error" member. `body` may be NULL. Writes a readable message (the
 * server's own text when it gave one) to msg. */
enum err_class errclass_from_http(long status, const char *body, size_t len,
				  char *msg, size_t msglen);
/* Classifies the text of an error object found inside a 200 stream. */
enum err_class errclass_from_error_json(const void *cjson_error, long status,
					char *msg, size_t msglen);

#endif

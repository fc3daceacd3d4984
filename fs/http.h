/* http.h - the HTTP client: libcurl with a pool of warm easy handles.
 *
 * Thread-safe: every call takes an easy handle from a pool (at most
 * max_idle_connections are kept), each with the connection it last used;
 * DNS and TLS sessions are shared through one curl share object. So a
 * connection opened by one generation is reused by the next, in any
 * conversation, streamed or not.
 */
#ifndef LMSFS_HTTP_H
#define LMSFS_HTTP_H

#include "buf.h"
#include "errclass.h"

struct config;

struct http_reply {
	long status;             /* HTTP status, 0 when none arrived */
	enum err_class transport; /* EC_NONE unless the transfer failed */
	char err[256];           /* readable reason when transport != EC_NONE */
	struct buf body;         /* body, or the error body when a sink was given */
	long retry_after_ms;     /* Retry-After header, -1 when absent */
	int sink_stopped;        /* the sink asked to stop */
	long timeout_ms;         /* input: overrides `timeout` when > 0 */
};

/* Data callback for streamed 2xx bodies. Return 0 to go on; > 0 when the
 * answer is complete (the rest of the body is read and dropped, within a
 * small bound, so that the connection is kept for the next request); < 0 to
 * abort at once (the connection is closed). Either way r->sink_stopped is
 * set and the request returns 0 whatever happens to the rest. */
typedef int (*http_sink_fn)(void *ctx, const char *p, size_t n);

/* Call once before threads start. Returns 0 or -ENOMEM. */
int http_init(const struct config *cfg);
void http_cleanup(void);

void http_reply_init(struct http_reply *r, size_t body_cap);
void http_reply_free(struct http_reply *r);

/* Sends METHOD base_url+path with an optional JSON body. A 2xx body goes to
 * sink when one is given (a streamed request: `timeout` then bounds silence
 * between bytes instead of the whole transfer), else into r->body (capped;
 * an oversize body fails with EC_PROTOCOL). Non-2xx bodies always land in
 * r->body. *cancel (may be NULL) aborts the transfer when it becomes
 * non-zero. Returns 0 when a reply arrived (look at r->status), or -errno
 * with r->transport and r->err set: errclass_from_curl decides the class,
 * and r->transport is EC_NONE exactly when 0 is returned. */
int http_request(const char *method, const char *path, const char *json,
		 http_sink_fn sink, void *ctx, const volatile int *cancel,
		 struct http_reply *r);

#endif

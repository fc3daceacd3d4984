/* errclass.h - the one place that decides what kind of failure happened.
 *
 * Every failure of a request is classified here: the curl result of the
 * transfer (errclass_from_curl, fed by http.c), the HTTP status and error
 * body (errclass_from_http; LM Studio sends {"error": "text"} or
 * {"error": {"message", "type", "code", ...}}), an error event inside a 200
 * stream (errclass_from_error_json, fed by api.c), and the verdict on a
 * whole attempt (errclass_of_attempt, fed by gen.c). Callers pass facts and
 * use the class they get back; they do not re-map it. Each class has a
 * stable name (shown in stream, .status, health, metrics), the errno a
 * system call returns for it, and what it means for retries, the circuit
 * breaker and the server's reachability.
 *
 * Pure: no I/O, no curl headers (curl codes come in as ints; their values
 * are part of libcurl's ABI). Messages are written to caller buffers.
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
	EC_RESOURCES,     /* the daemon ran out of file descriptors or memory */
	EC__COUNT
};

const char *errclass_name(enum err_class c);
/* errno a system call returns for the class (positive). */
int errclass_errno(enum err_class c);
/* Whether a request that failed this way may be tried again. */
int errclass_retryable(enum err_class c);
/* What a request that ended this way (after its retries) tells the
 * circuit breaker (retry.h). */
enum err_verdict {
	EV_NONE,   /* nothing: rate limited (alive but busy), cancelled,
		    * interrupted, refused by the breaker itself */
	EV_ALIVE,  /* the server answered properly, even with a refusal
		    * (success, 4xx other than 429): resets the count */
	EV_FAILED, /* the server's failure (down, slow, 5xx, nonsense):
		    * counts toward opening the breaker */
};
enum err_verdict errclass_verdict(enum err_class c);
/* Whether the server answered at all, even with a refusal (health's
 * "reachable"). EC_NONE counts as answered. */
int errclass_server_answered(enum err_class c);
/* The class of a request whose model could not be chosen because listing
 * the models failed with `list_class`: refused credentials stay EC_AUTH,
 * anything else means the server cannot be used (EC_UNREACHABLE). */
enum err_class errclass_of_model_listing(enum err_class list_class);

/* What http.c saw of one finished transfer, besides curl's result. */
struct errclass_transfer {
	long status;          /* HTTP status, 0 when no reply began */
	int streamed;         /* a sink took the 2xx body */
	size_t body_bytes;    /* body bytes received */
	int sink_stopped;     /* the sink asked to stop */
	int error_body_cut;   /* a non-2xx body was cut at its cap on purpose */
	int silent;           /* aborted: no byte arrived for silence_ms */
	int overflow;         /* a 2xx body outgrew body_cap */
	int cancelled;        /* the caller's cancel flag was set */
	long silence_ms;      /* the bound on silence (streams), for messages */
	size_t body_cap;      /* the body's cap, for messages */
	const char *curl_msg; /* curl's text for the result (may be NULL) */
	int sys_errno;        /* errno of a local failure (opening a socket),
				 0 when none */
};

/* Classifies the transfer from curl's result (a CURLcode as an int; 0 is
 * CURLE_OK) and the facts above. EC_NONE means a reply arrived, to be
 * judged by its status and body; anything else is a transport failure,
 * with a readable reason in msg ("" for EC_NONE). */
enum err_class errclass_from_curl(int curl_code,
				  const struct errclass_transfer *t, char *msg,
				  size_t msglen);

/* A local system call failed with errno err (positive or negative): out
 * of file descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) is
 * EC_RESOURCES, a local failure worth another try that says nothing about
 * the server and is never the request's fault; anything else is
 * `otherwise`. */
enum err_class errclass_of_local(int err, enum err_class otherwise);

/* Classifies an HTTP reply that was not 2xx, or a 2xx body that carried an
 * "error" member. `body` may be NULL. Writes a readable message (the
 * server's own text when it gave one) to msg. */
enum err_class errclass_from_http(long status, const char *body, size_t len,
				  char *msg, size_t msglen);
/* Classifies an "error" member: text or {"message", "type", "code"}. The
 * same rules serve an HTTP error body (`status` its 4xx/5xx) and an error
 * inside a 2xx reply, an SSE error event above all (`status` 0 or 2xx):
 * there a numeric "code" (400, "400") or the "type" (invalid_request_error,
 * BadRequestError, authentication_error, not_found_error,
 * rate_limit_error, ...) stands for the status, so that an in-stream bad
 * request is `bad_request`, not retried. Model not found, no model loaded
 * and context overflow are recognised by code or message whatever the
 * status; an error that names nothing else is EC_SERVER (5xx, or a 2xx
 * reply whose server gave up). Writes the message, "HTTP N: " first when
 * status is not 0. */
enum err_class errclass_from_error_json(const void *cjson_error, long status,
					char *msg, size_t msglen);

/* Everything known about one finished chat-completion attempt. */
struct errclass_attempt {
	enum err_class transport;  /* errclass_from_curl's class */
	const char *transport_msg; /* and its message */
	long status;               /* HTTP status of the reply */
	const char *body;          /* the reply's body (may be NULL) */
	size_t body_len;
	enum err_class answer_err; /* an error in the 2xx payload: an error
				    * event or member, or a payload that did
				    * not decode; EC_NONE when none */
	const char *answer_msg;    /* its message */
	int streamed;              /* the reply was an event stream */
	int chunks;                /* text-bearing chunks that arrived */
	int done;                  /* the stream's [DONE] arrived */
	int finished;              /* a finish_reason arrived */
	int has_content;           /* the answer holds some text */
	int n_calls;               /* tool calls in the answer */
};

/* The class of the attempt: EC_NONE for a complete answer. A connection
 * lost after text arrived is a truncated answer (EC_PROTOCOL), never
 * "unreachable"; so is a stream that ends without [DONE] or a
 * finish_reason, and a reply that holds no answer at all. Writes the
 * reason to msg (untouched for EC_NONE). */
enum err_class errclass_of_attempt(const struct errclass_attempt *a, char *msg,
				   size_t msglen);

#endif

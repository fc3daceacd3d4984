/* errclass.c - failure classification: curl result, HTTP status, error
 * body, in-stream error and finished attempt to a class; class to errno. */
#include "errclass.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The few libcurl codes that decide a class. CURLcode values are part of
 * libcurl's ABI and never change; test_errclass.c checks these against
 * <curl/curl.h>, which this pure module does not include. */
enum {
	CURL_OK = 0,
	CURL_COULDNT_RESOLVE_PROXY = 5,
	CURL_COULDNT_RESOLVE_HOST = 6,
	CURL_COULDNT_CONNECT = 7,
	CURL_PARTIAL_FILE = 18,
	CURL_WRITE_ERROR = 23,
	CURL_OUT_OF_MEMORY = 27,
	CURL_OPERATION_TIMEDOUT = 28,
	CURL_ABORTED_BY_CALLBACK = 42,
	CURL_GOT_NOTHING = 52,
	CURL_SEND_ERROR = 55,
	CURL_RECV_ERROR = 56,
};

/* retry: worth another try. verdict: what it tells the breaker.
 * noreply: the server did not answer at all. */
static const struct {
	const char *name;
	int err;
	int retry;
	enum err_verdict verdict;
	int noreply;
} table[EC__COUNT] = {
	[EC_NONE] = {"none", 0, 0, EV_ALIVE, 0},
	[EC_UNREACHABLE] = {"unreachable", EHOSTDOWN, 1, EV_FAILED, 1},
	[EC_TIMEOUT] = {"timeout", ETIMEDOUT, 1, EV_FAILED, 1},
	[EC_RATE_LIMITED] = {"rate_limited", EBUSY, 1, EV_NONE, 0},
	[EC_AUTH] = {"auth", EACCES, 0, EV_ALIVE, 0},
	[EC_MODEL_NOT_FOUND] = {"model_not_found", ENOENT, 0, EV_ALIVE, 0},
	[EC_NO_MODEL] = {"no_model", ENOENT, 0, EV_ALIVE, 0},
	[EC_MODEL_NOT_ALLOWED] = {"model_not_allowed", EACCES, 0, EV_ALIVE, 0},
	[EC_CONTEXT] = {"context_too_long", E2BIG, 0, EV_ALIVE, 0},
	[EC_BAD_REQUEST] = {"bad_request", EINVAL, 0, EV_ALIVE, 0},
	[EC_SERVER] = {"server_error", EIO, 1, EV_FAILED, 0},
	[EC_PROTOCOL] = {"protocol", EPROTO, 0, EV_FAILED, 1},
	[EC_BREAKER] = {"circuit_open", EBUSY, 0, EV_NONE, 0},
	[EC_CANCELLED] = {"cancelled", ECANCELED, 0, EV_NONE, 0},
	[EC_INTERRUPTED] = {"interrupted", EIO, 0, EV_NONE, 0},
	[EC_STORAGE] = {"storage", EIO, 0, EV_NONE, 0},
	[EC_RESOURCES] = {"resources", EMFILE, 1, EV_NONE, 0},
};

static int valid(enum err_class c)
{
	return c > 0 && c < EC__COUNT;
}

const char *errclass_name(enum err_class c)
{
	return (c == EC_NONE || valid(c)) ? table[c].name : "unknown";
}

int errclass_errno(enum err_class c)
{
	return valid(c) ? table[c].err : EIO;
}

int errclass_retryable(enum err_class c)
{
	return valid(c) ? table[c].retry : 0;
}

enum err_verdict errclass_verdict(enum err_class c)
{
	return (c == EC_NONE || valid(c)) ? table[c].verdict : EV_NONE;
}

int errclass_server_answered(enum err_class c)
{
	return valid(c) ? !table[c].noreply : 1;
}

enum err_class errclass_of_model_listing(enum err_class list_class)
{
	return list_class == EC_AUTH ? EC_AUTH : EC_UNREACHABLE;
}

static int out_of_resources(int err)
{
	if (err < 0)
		err = -err;
	return err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS;
}

enum err_class errclass_of_local(int err, enum err_class otherwise)
{
	return out_of_resources(err) ? EC_RESOURCES : otherwise;
}

static int contains(const char *hay, const char *needle)
{
	return hay && strcasestr(hay, needle) != NULL;
}

/* The HTTP status an error object stands for when no error status came
 * with it (an error event inside a 200 stream, an error member in a 2xx
 * body): a numeric "code" (400, or "400" as LiteLLM sends it), else its
 * "type" as OpenAI, vLLM and LiteLLM name them. 0 when it says nothing. */
static long implied_status(const cJSON *e)
{
	static const struct {
		const char *type;
		long status;
	} types[] = {
	    {"invalid_request", 400}, {"badrequest", 400},
	    {"bad_request", 400},     {"validation", 400},
	    {"unprocessable", 422},   {"authentication", 401},
	    {"unauthorized", 401},    {"permission", 403},
	    {"forbidden", 403},       {"not_found", 404},
	    {"notfound", 404},        {"rate_limit", 429},
	    {"ratelimit", 429},       {"too_many_requests", 429},
	};
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
	long n = 0;

	if (cJSON_IsNumber(c)) {
		n = (long)c->valuedouble;
	} else if (cJSON_IsString(c) && strlen(c->valuestring) == 3 &&
		   strspn(c->valuestring, "0123456789") == 3) {
		n = strtol(c->valuestring, NULL, 10);
	}
	if (n >= 400 && n <= 599)
		return n;
	if (!cJSON_IsString(t))
		return 0;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (contains(t->valuestring, types[i].type))
			return types[i].status;
	return 0;
}

enum err_class errclass_from_error_json(const void *jv, long status,
					char *msg, size_t msglen)
{
	const cJSON *e = jv;
	const char *text = NULL, *code = NULL, *type = NULL;
	long st = status; /* what decides: the reply's status if it is an
			   * error's, else what the error object says */

	if (cJSON_IsString(e)) {
		text = e->valuestring;
	} else if (cJSON_IsObject(e)) {
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
		if (cJSON_IsString(m))
			text = m->valuestring;
		if (cJSON_IsString(c))
			code = c->valuestring;
		if (cJSON_IsString(t))
			type = t->valuestring;
		if (st < 400)
			st = implied_status(e);
	}
	if (status)
		snprintf(msg, msglen, "HTTP %ld: %s", status,
			 text ? text : "(no message)");
	else
		snprintf(msg, msglen, "%s", text ? text : "(no message)");

	if (contains(code, "model_not_found") ||
	    contains(text, "invalid model identifier") ||
	    (contains(text, "model") && contains(text, "not found")))
		return EC_MODEL_NOT_FOUND;
	if (contains(text, "no models loaded"))
		return EC_NO_MODEL;
	if (contains(code, "context_length") || contains(text, "context length") ||
	    contains(text, "context window") || contains(text, "context overflow") ||
	    contains(text, "too many tokens"))
		return EC_CONTEXT;
	if (st == 401 || st == 403 || contains(type, "authentication"))
		return EC_AUTH;
	if (st == 429 || contains(code, "rate_limit"))
		return EC_RATE_LIMITED;
	if (st >= 500)
		return EC_SERVER;
	if (st >= 400)
		return EC_BAD_REQUEST;
	/* An error in a 2xx reply that names no client error: the server
	 * gave up. */
	return EC_SERVER;
}

enum err_class errclass_from_http(long status, const char *body, size_t len,
				  char *msg, size_t msglen)
{
	enum err_class c;
	cJSON *root = body ? cJSON_ParseWithLength(body, len) : NULL;
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");

	if (e) {
		c = errclass_from_error_json(e, status, msg, msglen);
	} else {
		/* No JSON error member: keep the first line of the body. */
		char first[200] = "";
		if (body && len) {
			size_t n = strcspn(body, "\r\n");
			if (n >= sizeof(first))
				n = sizeof(first) - 1;
			memcpy(first, body, n);
			first[n] = '\0';
		}
		snprintf(msg, msglen, "HTTP %ld%s%s", status, first[0] ? ": " : "",
			 first);
		if (status == 401 || status == 403)
			c = EC_AUTH;
		else if (status == 429)
			c = EC_RATE_LIMITED;
		else if (status == 404 && contains(first, "model"))
			c = EC_MODEL_NOT_FOUND;
		else if (status >= 500)
			c = EC_SERVER;
		else if (status >= 400)
			c = EC_BAD_REQUEST;
		else
			c = EC_PROTOCOL;
	}
	cJSON_Delete(root);
	return c;
}

enum err_class errclass_from_curl(int rc, const struct errclass_transfer *t,
				  char *msg, size_t msglen)
{
	enum err_class c;

	msg[0] = '\0';
	if (rc == CURL_OK)
		return EC_NONE;
	if (t->sink_stopped)
		return EC_NONE; /* the sink had what it needed; whatever became
				 * of the rest of the reply (read to its end,
				 * cut, bounded) tells nothing */
	if (rc == CURL_WRITE_ERROR && t->error_body_cut)
		return EC_NONE; /* an error reply, its body cut at the cap */
	if (rc == CURL_ABORTED_BY_CALLBACK && t->silent) {
		snprintf(msg, msglen, "no data from the server for %ld ms",
			 t->silence_ms);
		return EC_TIMEOUT;
	}
	if (rc == CURL_WRITE_ERROR && t->overflow) {
		snprintf(msg, msglen, "response larger than %zu bytes",
			 t->body_cap);
		return EC_PROTOCOL;
	}
	if (out_of_resources(t->sys_errno) || rc == CURL_OUT_OF_MEMORY) {
		int e = out_of_resources(t->sys_errno) ? abs(t->sys_errno) : ENOMEM;
		snprintf(msg, msglen, "cannot make the request: %s (the daemon is out of %s)",
			 strerror(e), e == EMFILE || e == ENFILE ? "file descriptors" : "memory");
		return EC_RESOURCES;
	}
	if ((rc == CURL_WRITE_ERROR || rc == CURL_ABORTED_BY_CALLBACK) &&
	    t->cancelled) {
		snprintf(msg, msglen, "cancelled");
		return EC_CANCELLED;
	}
	switch (rc) {
	case CURL_COULDNT_CONNECT:
	case CURL_COULDNT_RESOLVE_HOST:
	case CURL_COULDNT_RESOLVE_PROXY:
	case CURL_SEND_ERROR:
	case CURL_GOT_NOTHING:
		c = EC_UNREACHABLE;
		break;
	case CURL_OPERATION_TIMEDOUT:
		c = EC_TIMEOUT;
		break;
	case CURL_ABORTED_BY_CALLBACK:
		c = EC_CANCELLED;
		break;
	case CURL_RECV_ERROR:
	case CURL_PARTIAL_FILE:
		/* A connection dropped before any byte of the body (a server
		 * restarting, a stale kept-alive connection) is worth another
		 * try: nothing of the answer can have been shown. */
		c = t->body_bytes == 0 ? EC_UNREACHABLE : EC_PROTOCOL;
		break;
	default:
		c = EC_PROTOCOL;
		break;
	}
	if (rc == CURL_OPERATION_TIMEDOUT && t->streamed && t->status)
		snprintf(msg, msglen, "no data from the server for %ld ms",
			 t->silence_ms);
	else
		snprintf(msg, msglen, "%s",
			 t->curl_msg ? t->curl_msg : "transfer failed");
	return c;
}

enum err_class errclass_of_attempt(const struct errclass_attempt *a, char *msg,
				   size_t msglen)
{
	enum err_class c;

	if (a->transport != EC_NONE) {
		/* A transfer that failed as garbage after the payload said
		 * why (an error event, a chunk that did not decode): the
		 * payload's reason is the better one. */
		if (a->transport == EC_PROTOCOL && a->answer_err != EC_NONE) {
			c = a->answer_err;
			snprintf(msg, msglen, "%s",
				 a->answer_msg ? a->answer_msg : "");
		} else {
			c = a->transport;
			snprintf(msg, msglen, "%s",
				 a->transport_msg ? a->transport_msg : "");
		}
		/* A connection cut after text arrived is a truncated answer. */
		if (c == EC_UNREACHABLE && a->chunks > 0)
			c = EC_PROTOCOL;
		return c;
	}
	if (a->status < 200 || a->status >= 300)
		return errclass_from_http(a->status, a->body, a->body_len, msg,
					  msglen);
	if (a->answer_err != EC_NONE) {
		snprintf(msg, msglen, "%s", a->answer_msg ? a->answer_msg : "");
		return a->answer_err;
	}
	if (a->streamed && !a->done && !a->finished) {
		snprintf(msg, msglen, "the server closed the stream before "
				      "the answer ended");
		return EC_PROTOCOL;
	}
	if (!a->has_content && a->n_calls == 0 && !a->finished) {
		snprintf(msg, msglen,
			 "the server's reply held no answer (no choices, "
			 "no text, no finish_reason)");
		return EC_PROTOCOL;
	}
	return EC_NONE;
}

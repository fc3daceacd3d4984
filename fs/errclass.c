/* errclass.c - failure classification: curl/HTTP/body to a class. */
#include "errclass.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct {
	const char *name;
	int err;
	int retry;
} table[EC__COUNT] = {
	[EC_NONE] = {"none", 0, 0},
	[EC_UNREACHABLE] = {"unreachable", EHOSTDOWN, 1},
	[EC_TIMEOUT] = {"timeout", ETIMEDOUT, 1},
	[EC_RATE_LIMITED] = {"rate_limited", EAGAIN, 1},
	[EC_AUTH] = {"auth", EACCES, 0},
	[EC_MODEL_NOT_FOUND] = {"model_not_found", ENOENT, 0},
	[EC_NO_MODEL] = {"no_model", ENOENT, 0},
	[EC_MODEL_NOT_ALLOWED] = {"model_not_allowed", EACCES, 0},
	[EC_CONTEXT] = {"context_too_long", E2BIG, 0},
	[EC_BAD_REQUEST] = {"bad_request", EINVAL, 0},
	[EC_SERVER] = {"server_error", EIO, 1},
	[EC_PROTOCOL] = {"protocol", EPROTO, 0},
	[EC_BREAKER] = {"circuit_open", EBUSY, 0},
	[EC_CANCELLED] = {"cancelled", ECANCELED, 0},
	[EC_INTERRUPTED] = {"interrupted", EIO, 0},
	[EC_STORAGE] = {"storage", EIO, 0},
};

const char *errclass_name(enum err_class c)
{
	return (c >= 0 && c < EC__COUNT) ? table[c].name : "unknown";
}

int errclass_errno(enum err_class c)
{
	return (c > 0 && c < EC__COUNT) ? table[c].err : EIO;
}

int errclass_retryable(enum err_class c)
{
	return (c > 0 && c < EC__COUNT) ? table[c].retry : 0;
}

static int contains(const char *hay, const char *needle)
{
	return hay && strcasestr(hay, needle) != NULL;
}

enum err_class errclass_from_error_json(const void *jv, long status,
					char *msg, size_t msglen)
{
	const cJSON *e = jv;
	const char *text = NULL, *code = NULL, *type = NULL;

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
	if (status == 401 || status == 403 || contains(type, "authentication"))
		return EC_AUTH;
	if (status == 429 || contains(code, "rate_limit"))
		return EC_RATE_LIMITED;
	if (status >= 500)
		return EC_SERVER;
	if (status >= 400)
		return EC_BAD_REQUEST;
	/* An error event inside a 200 stream: the server gave up. */
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

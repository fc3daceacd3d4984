/* jsonl.c - validation of a conversation history in JSON Lines form.
 *
 * A history is sent back to the server as it is, so every line is checked
 * here before lmsfs accepts it: one JSON object per line, valid UTF-8, and
 * the fields each message role needs. Reasons are meant for a human who just
 * edited the file with sed or an editor.
 */
#include "jsonl.h"

#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int why_set(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int why_set(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Copies a user-supplied string into out for quoting in a reason: cut short,
 * with anything unprintable (or a quote) shown as '?'. */
static const char *shown(const char *s, char *out, size_t outlen)
{
	size_t i, n = strlen(s);

	if (n > outlen - 1)
		n = outlen - 1;
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		out[i] = ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\'
			     ? '?'
			     : (char)ch;
	}
	out[n] = '\0';
	if (strlen(s) > n && n >= 3)
		memcpy(out + n - 3, "...", 3);
	return out;
}

static const char *type_name(const cJSON *v)
{
	if (cJSON_IsObject(v))
		return "an object";
	if (cJSON_IsArray(v))
		return "an array";
	if (cJSON_IsString(v))
		return "a string";
	if (cJSON_IsNumber(v))
		return "a number";
	if (cJSON_IsBool(v))
		return "a boolean";
	if (cJSON_IsNull(v))
		return "null";
	return "something else";
}

/* An array of content parts: [{"type": "text", "text": "..."}, ...]. */
static int check_parts(const cJSON *arr, const char *role, char *why,
		       size_t whylen)
{
	const cJSON *part, *type, *text;
	int i = 0;

	if (cJSON_GetArraySize(arr) == 0)
		return why_set(why, whylen,
			       "%s message: \"content\" is an empty array",
			       role);
	cJSON_ArrayForEach(part, arr)
	{
		i++;
		type = cJSON_GetObjectItemCaseSensitive(part, "type");
		if (!cJSON_IsObject(part) || !cJSON_IsString(type))
			return why_set(why, whylen,
				       "%s message: content part %d is not an "
				       "object with a \"type\" string",
				       role, i);
		if (strcmp(type->valuestring, "text") == 0) {
			text = cJSON_GetObjectItemCaseSensitive(part, "text");
			if (!cJSON_IsString(text))
				return why_set(
				    why, whylen,
				    "%s message: text part %d has no "
				    "\"text\" string",
				    role, i);
		}
	}
	return 0;
}

/* {"name": string, "arguments": string}, as in tool_calls[].function and
 * the legacy function_call. */
static int check_call(const cJSON *fn, const char *what, char *why,
		      size_t whylen)
{
	if (!cJSON_IsObject(fn))
		return why_set(why, whylen,
			       "assistant message: %s is not an object", what);
	if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")))
		return why_set(why, whylen,
			       "assistant message: %s has no \"name\" string",
			       what);
	if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "arguments")))
		return why_set(why, whylen,
			       "assistant message: %s has no \"arguments\" "
			       "string",
			       what);
	return 0;
}

static int check_assistant(const cJSON *msg, char *why, size_t whylen)
{
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
	const cJSON *calls =
	    cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
	const cJSON *fcall =
	    cJSON_GetObjectItemCaseSensitive(msg, "function_call");
	const cJSON *call, *id, *type;
	char what[48];
	int i = 0, rc;

	if (content && !cJSON_IsString(content) && !cJSON_IsNull(content))
		return why_set(
		    why, whylen,
		    "assistant message: \"content\" must be a string "
		    "or null, not %s",
		    type_name(content));
	if (calls) {
		if (!cJSON_IsArray(calls))
			return why_set(
			    why, whylen,
			    "assistant message: \"tool_calls\" is not "
			    "an array");
		if (cJSON_GetArraySize(calls) == 0)
			return why_set(why, whylen,
				       "assistant message: \"tool_calls\" is "
				       "empty");
		cJSON_ArrayForEach(call, calls)
		{
			i++;
			if (!cJSON_IsObject(call))
				return why_set(
				    why, whylen,
				    "assistant message: tool call %d "
				    "is not an object",
				    i);
			id = cJSON_GetObjectItemCaseSensitive(call, "id");
			if (!cJSON_IsString(id))
				return why_set(
				    why, whylen,
				    "assistant message: tool call %d "
				    "has no \"id\" string",
				    i);
			type = cJSON_GetObjectItemCaseSensitive(call, "type");
			if (!cJSON_IsString(type) ||
			    strcmp(type->valuestring, "function") != 0)
				return why_set(
				    why, whylen,
				    "assistant message: tool call %d "
				    "needs \"type\": \"function\"",
				    i);
			snprintf(what, sizeof(what), "tool call %d function",
				 i);
			rc = check_call(
			    cJSON_GetObjectItemCaseSensitive(call, "function"),
			    what, why, whylen);
			if (rc)
				return rc;
		}
	}
	if (fcall) {
		rc = check_call(fcall, "\"function_call\"", why, whylen);
		if (rc)
			return rc;
	}
	if (!cJSON_IsString(content) && !calls && !fcall)
		return why_set(
		    why, whylen,
		    "assistant message without content or tool_calls");
	return 0;
}

static int check_message(const cJSON *msg, char *why, size_t whylen)
{
	const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(msg, "name");
	const char *r;
	char tmp[40];

	if (!role)
		return why_set(why, whylen, "message without \"role\"");
	if (!cJSON_IsString(role))
		return why_set(why, whylen, "\"role\" must be a string, not %s",
			       type_name(role));
	r = role->valuestring;
	if (name && !cJSON_IsString(name))
		return why_set(why, whylen, "\"name\" must be a string, not %s",
			       type_name(name));

	if (strcmp(r, "system") == 0 || strcmp(r, "user") == 0 ||
	    strcmp(r, "developer") == 0) {
		if (!content)
			return why_set(why, whylen,
				       "%s message without content", r);
		if (cJSON_IsArray(content))
			return check_parts(content, r, why, whylen);
		if (!cJSON_IsString(content))
			return why_set(why, whylen,
				       "%s message: \"content\" must be a "
				       "string or an array, not %s",
				       r, type_name(content));
		return 0;
	}
	if (strcmp(r, "assistant") == 0)
		return check_assistant(msg, why, whylen);
	if (strcmp(r, "tool") == 0) {
		if (!cJSON_IsString(
			cJSON_GetObjectItemCaseSensitive(msg, "tool_call_id")))
			return why_set(why, whylen,
				       "tool message without tool_call_id");
		if (!cJSON_IsString(content))
			return why_set(why, whylen,
				       "tool message without content string");
		return 0;
	}
	if (strcmp(r, "function") == 0) {
		if (!cJSON_IsString(name))
			return why_set(why, whylen,
				       "function message without name");
		if (!cJSON_IsString(content))
			return why_set(
			    why, whylen,
			    "function message without content string");
		return 0;
	}
	return why_set(why, whylen, "unknown role \"%s\"",
		       shown(r, tmp, sizeof(tmp)));
}

static int is_blank(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return 0;
	return 1;
}

int jsonl_check_line(const char *line, size_t len, char *why, size_t whylen)
{
	const char *end = NULL;
	const char *nul;
	cJSON *msg;
	size_t bad, i;
	int rc;

	if (is_blank(line, len))
		return 0;
	if (len > JSONL_MAX_LINE)
		return why_set(why, whylen, "line too long (over %u MiB)",
			       JSONL_MAX_LINE >> 20);
	nul = memchr(line, '\0', len);
	if (nul)
		return why_set(why, whylen, "contains a NUL byte at byte %zu",
			       (size_t)(nul - line) + 1);
	bad = utf8_valid_prefix(line, len, 0);
	if (bad < len)
		return why_set(why, whylen, "not valid UTF-8 at byte %zu",
			       bad + 1);

	msg = cJSON_ParseWithLengthOpts(line, len, &end, 0);
	if (!msg) {
		if (end && end >= line && end < line + len)
			return why_set(why, whylen,
				       "not valid JSON (at byte %zu)",
				       (size_t)(end - line) + 1);
		return why_set(why, whylen, "not valid JSON (ends too early)");
	}
	for (i = end ? (size_t)(end - line) : len; i < len; i++) {
		if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') {
			cJSON_Delete(msg);
			return why_set(why, whylen,
				       "not valid JSON: unexpected text after "
				       "the object (at byte %zu)",
				       i + 1);
		}
	}
	if (!cJSON_IsObject(msg))
		rc = why_set(why, whylen, "not a JSON object (got %s)",
			     type_name(msg));
	else
		rc = check_message(msg, why, whylen);
	cJSON_Delete(msg);
	return rc;
}

int jsonl_check(const char *data, size_t len, char *why, size_t whylen,
		size_t *bad_line)
{
	char reason[256];
	size_t pos = 0, lineno = 0, n;
	const char *nl;

	if (bad_line)
		*bad_line = 0;
	while (pos < len) {
		nl = memchr(data + pos, '\n', len - pos);
		n = nl ? (size_t)(nl - (data + pos)) : len - pos;
		lineno++;
		if (jsonl_check_line(data + pos, n, reason, sizeof(reason))) {
			if (bad_line)
				*bad_line = lineno;
			return why_set(why, whylen, "line %zu: %s", lineno,
				       reason);
		}
		pos += n + 1;
	}
	return 0;
}

/* mock.c - the built-in provider: deterministic answers without a server.
 *
 * Reads the request body as a server would. When the request offers tools
 * and the last user message names one, it calls it, taking arguments from
 * "key=value" words in the prompt; after a tool result it answers with that
 * result. A prompt containing "mock:error" fails like a server error (for
 * demonstrations). Text streams word by word with mock_delay between words.
 */
#include "mock.h"

#include "config.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A user message's text: its content, or the first text part when the
 * content is an array of parts (a prompt with attachments). */
static const char *user_text(const cJSON *m)
{
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content"), *part;

	if (cJSON_IsString(c))
		return c->valuestring;
	if (!cJSON_IsArray(c))
		return "";
	cJSON_ArrayForEach(part, c)
	{
		const char *type = str(part, "type");
		if (type && strcmp(type, "text") == 0 && str(part, "text"))
			return str(part, "text");
	}
	return "";
}

static int word_in(const char *text, const char *word)
{
	size_t n = strlen(word);
	for (const char *p = text; (p = strstr(p, word)); p += n) {
		int before = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
		int after = !(isalnum((unsigned char)p[n]) || p[n] == '_' || p[n] == '-');
		if (before && after)
			return 1;
	}
	return 0;
}

/* "key=value" words of the prompt that name a parameter of the tool. */
static char *args_from_prompt(const char *prompt, const cJSON *fn)
{
	const cJSON *props = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(fn, "parameters"), "properties");
	cJSON *args = cJSON_CreateObject();
	char *copy = strdup(prompt), *save = NULL, *tok, *out;

	for (tok = copy ? strtok_r(copy, " \t\n", &save) : NULL; tok;
	     tok = strtok_r(NULL, " \t\n", &save)) {
		char *eq = strchr(tok, '=');
		const cJSON *schema;
		if (!eq || eq == tok)
			continue;
		*eq = '\0';
		schema = cJSON_GetObjectItemCaseSensitive(props, tok);
		if (!schema)
			continue;
		size_t vl = strlen(eq + 1);
		while (vl && strchr(".,;!?", eq[vl]))
			eq[vl--] = '\0';
		const char *type = str(schema, "type");
		if (type && (!strcmp(type, "number") || !strcmp(type, "integer")))
			cJSON_AddNumberToObject(args, tok, atof(eq + 1));
		else if (type && !strcmp(type, "boolean"))
			cJSON_AddBoolToObject(args, tok, !strcmp(eq + 1, "true"));
		else
			cJSON_AddStringToObject(args, tok, eq + 1);
	}
	free(copy);
	out = cJSON_PrintUnformatted(args);
	cJSON_Delete(args);
	return out;
}

static int emit_words(const struct config *cfg, const char *text, api_text_fn fn,
		      void *ctx, struct api_answer *ans, const volatile int *cancel)
{
	const char *p = text;
	while (*p) {
		const char *q = p;
		while (*q == ' ')
			q++;
		while (*q && *q != ' ')
			q++;
		if (flag_get(cancel))
			return -1;
		buf_append(&ans->content, p, (size_t)(q - p));
		ans->chunks++;
		if (fn)
			fn(ctx, p, (size_t)(q - p));
		p = q;
		if (*p && cfg->mock_delay_ms > 0) {
			struct timespec ts = {cfg->mock_delay_ms / 1000,
					      (cfg->mock_delay_ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
	return 0;
}

enum err_class mock_complete(const struct config *cfg, const char *body,
			     struct api_answer *ans, api_text_fn fn, void *ctx,
			     const volatile int *cancel, char *msg, size_t msglen)
{
	cJSON *req = cJSON_Parse(body);
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
	const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
	const cJSON *fns = cJSON_GetObjectItemCaseSensitive(req, "functions");
	const cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
	const char *role = str(last, "role"), *prompt = "";
	enum err_class ret = EC_NONE;
	char *text = NULL;
	int n_user = 0;
	const cJSON *m;

	cJSON_ArrayForEach(m, msgs)
	{
		if (str(m, "role") && !strcmp(str(m, "role"), "user")) {
			n_user++;
			prompt = user_text(m);
		}
	}
	if (role && (!strcmp(role, "tool") || !strcmp(role, "function"))) {
		const char *res = str(last, "content");
		size_t n = strlen(res ? res : "") + 64;
		text = malloc(n);
		if (text)
			snprintf(text, n, "The tool answered: %s", res ? res : "");
		if (text) {
			size_t l = strlen(text);
			while (l && (text[l - 1] == '\n' || text[l - 1] == ' '))
				text[--l] = '\0';
		}
	} else if (strstr(prompt, "mock:error")) {
		snprintf(msg, msglen, "HTTP 500: the mock server failed as asked (mock:error)");
		ret = EC_SERVER;
		goto out;
	} else {
		const cJSON *t, *list = tools ? tools : fns;
		cJSON_ArrayForEach(t, list)
		{
			const cJSON *f = tools ? cJSON_GetObjectItemCaseSensitive(t, "function") : t;
			const char *name = str(f, "name");
			if (name && word_in(prompt, name)) {
				char *a = args_from_prompt(prompt, f);
				ans->calls[0].id = strdup("call_mock_1");
				ans->calls[0].name = strdup(name);
				buf_puts(&ans->calls[0].args, a ? a : "{}");
				free(a);
				ans->n_calls = 1;
				ans->legacy_call = tools == NULL;
				snprintf(ans->finish, sizeof(ans->finish), "%s",
					 tools ? "tool_calls" : "function_call");
				ans->done = 1;
				goto out;
			}
		}
		size_t n = strlen(prompt) + 200;
		text = malloc(n);
		if (text)
			snprintf(text, n,
				 "This is the lmsfs mock model (turn %d). You said: %s", n_user,
				 prompt);
	}
	if (!text) {
		snprintf(msg, msglen, "out of memory");
		ret = EC_PROTOCOL;
		goto out;
	}
	if (emit_words(cfg, text, fn, ctx, ans, cancel) != 0) {
		snprintf(msg, msglen, "cancelled");
		ret = EC_CANCELLED;
		goto out;
	}
	snprintf(ans->finish, sizeof(ans->finish), "stop");
	ans->done = 1;
out:
	free(text);
	cJSON_Delete(req);
	return ret;
}

/* mcp_call.c - one call to an MCP server's tool: tools/call, its limits, and its result as text for the model. */
#include "mcp.h"
#include "mcp_int.h"

#include "buf.h"
#include "config.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The result's content as text: text parts joined by newlines, other
 * parts summarised. */
static void content_text(const cJSON *res, struct buf *b)
{
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(res, "content"), *c;
	const cJSON *sc = cJSON_GetObjectItemCaseSensitive(res, "structuredContent");
	int first = 1;

	cJSON_ArrayForEach(c, content)
	{
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
		const char *ty = cJSON_IsString(type) ? type->valuestring : "?";
		if (!first)
			buf_putc(b, '\n');
		first = 0;
		if (!strcmp(ty, "text")) {
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "text");
			buf_puts(b, cJSON_IsString(t) ? t->valuestring : "");
		} else if (!strcmp(ty, "resource") || !strcmp(ty, "resource_link")) {
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "resource");
			const cJSON *u = cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(r) ? r : c, "uri");
			buf_printf(b, "[resource %s]", cJSON_IsString(u) ? u->valuestring : "?");
		} else {
			buf_printf(b, "[%.40s]", ty);
		}
	}
	if (first && sc) {
		char *t = cJSON_PrintUnformatted(sc);
		if (t)
			buf_puts(b, t);
		free(t);
	}
}

char *mcp_call(const char *name, const char *args, const volatile int *cancel,
	       enum mcp_outcome *outcome, int *truncated)
{
	struct mcp_server *s = mcp_owner(name);
	struct buf b, text;
	char why[600];
	cJSON *params, *argobj, *res = NULL;
	const cJSON *ise;
	int rc, to = 0, cancelled = 0;
	long max = mcp_cfg->tool_output_max;
	char *ret;

	*truncated = 0;
	*outcome = MCP_FAILED;
	buf_init(&b, (size_t)max + 4096);
	buf_init(&text, MCP_LINE_MAX); /* then cut at max */
	atomic_fetch_add(&mcp_n_calls, 1);
	if (!s) {
		buf_printf(&b, "error: there is no MCP server for '%.80s'", name);
		goto out;
	}
	pthread_mutex_lock(&s->lock);
	rc = mcp_srv_ensure(s, cancel, why, sizeof(why));
	pthread_mutex_unlock(&s->lock);
	if (rc != 0 && cancel && *cancel) {
		*outcome = MCP_CANCELLED;
		buf_printf(&b, "error: %s was stopped: the answer was cancelled", name);
		goto out;
	}
	if (rc != 0) {
		buf_printf(&b, "error: %s: %s", name, why);
		goto out;
	}
	argobj = cJSON_Parse(*args ? args : "{}");
	if (!cJSON_IsObject(argobj)) {
		cJSON_Delete(argobj);
		argobj = cJSON_CreateObject();
	}
	params = cJSON_CreateObject();
	cJSON_AddStringToObject(params, "name", name + strlen(s->conf.name) + 2);
	cJSON_AddItemToObject(params, "arguments", argobj);
	rc = mcp_srv_rpc(s, "tools/call", params, mcp_cfg->tool_timeout_ms, cancel, 1, &res, why,
			 sizeof(why), &to, &cancelled);
	if (to) {
		/* Cancelled; a server that does not even answer a ping now is
		 * restarted on its next use. */
		cJSON *pong = NULL;
		char pwhy[400];
		*outcome = MCP_TIMEOUT;
		buf_printf(&b, "error: %s did not finish within %ld ms and was cancelled", name,
			   mcp_cfg->tool_timeout_ms);
		if (mcp_srv_rpc(s, "ping", NULL, MCP_PING_MS, NULL, 0, &pong, pwhy, sizeof(pwhy), NULL,
				NULL) < 0) {
			pthread_mutex_lock(&s->lock);
			mcp_srv_kill(s, "it did not answer after a call timed out (restarted on next use)");
			pthread_mutex_unlock(&s->lock);
		}
		cJSON_Delete(pong);
		goto out;
	}
	if (cancelled) {
		*outcome = MCP_CANCELLED;
		buf_printf(&b, "error: %s was stopped: the answer was cancelled", name);
		goto out;
	}
	if (rc != 0) {
		buf_printf(&b, "error: %s failed: %s", name, why);
		goto out;
	}
	content_text(res, &text);
	if (text.len > (size_t)max) {
		text.len = (size_t)max;
		*truncated = 1;
	}
	ise = cJSON_GetObjectItemCaseSensitive(res, "isError");
	if (cJSON_IsTrue(ise)) {
		*outcome = MCP_TOOL_ERROR;
		buf_puts(&b, "error: ");
	} else {
		*outcome = MCP_OK;
	}
	buf_append(&b, text.data ? text.data : "", text.len);
	if (*truncated)
		buf_printf(&b, "\n[output truncated at %ld bytes]", max);
out:
	if (*outcome != MCP_OK)
		atomic_fetch_add(&mcp_n_failures, 1);
	cJSON_Delete(res);
	if (s)
		mcp_srv_put(s);
	buf_free(&text);
	if (b.len && utf8_valid_prefix(b.data, b.len, 0) != b.len) {
		ret = utf8_repair(b.data, b.len);
		buf_free(&b);
		return ret;
	}
	ret = buf_take(&b);
	return ret ? ret : strdup("");
}


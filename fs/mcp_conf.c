/* mcp_conf.c - parses and checks tools/mcp.json (the mcpServers format). */
#include "mcp_conf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int name_ok(const char *n)
{
	size_t l = strlen(n);
	if (l == 0 || l > MCP_NAME_MAX)
		return 0;
	for (const char *p = n; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
			return 0;
	return 1;
}

static char **strv_new(size_t n)
{
	return calloc(n + 1, sizeof(char *));
}

static void strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

static size_t strv_len(char *const *v)
{
	size_t n = 0;
	while (v && v[n])
		n++;
	return n;
}

static char **strv_copy(char *const *v)
{
	size_t n = strv_len(v);
	char **c = strv_new(n);
	for (size_t i = 0; c && i < n; i++)
		if (!(c[i] = strdup(v[i]))) {
			strv_free(c);
			return NULL;
		}
	return c;
}

void mcp_conf_server_free(struct mcp_conf_server *s)
{
	free(s->name);
	free(s->skip);
	free(s->command);
	free(s->sig);
	strv_free(s->argv);
	strv_free(s->env);
	memset(s, 0, sizeof(*s));
}

void mcp_conf_free(struct mcp_conf *c)
{
	for (size_t i = 0; i < c->n; i++)
		mcp_conf_server_free(&c->v[i]);
	free(c->v);
	c->v = NULL;
	c->n = 0;
}

int mcp_conf_server_copy(struct mcp_conf_server *d, const struct mcp_conf_server *s)
{
	memset(d, 0, sizeof(*d));
	d->name = strdup(s->name);
	d->skip = s->skip ? strdup(s->skip) : NULL;
	d->command = s->command ? strdup(s->command) : NULL;
	d->sig = strdup(s->sig ? s->sig : "");
	d->argv = s->argv ? strv_copy(s->argv) : NULL;
	d->env = s->env ? strv_copy(s->env) : NULL;
	if (!d->name || !d->sig || (s->skip && !d->skip) || (s->command && !d->command) ||
	    (s->argv && !d->argv) || (s->env && !d->env)) {
		mcp_conf_server_free(d);
		return -ENOMEM;
	}
	return 0;
}

/* One entry of mcpServers; 0, or -EINVAL with why. */
static int parse_entry(const cJSON *e, struct mcp_conf_server *s, char *why, size_t n)
{
	const char *name = e->string;
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(e, "command");
	const cJSON *args = cJSON_GetObjectItemCaseSensitive(e, "args");
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(e, "env");
	const cJSON *url = cJSON_GetObjectItemCaseSensitive(e, "url");
	const cJSON *a;
	size_t i = 0;

	memset(s, 0, sizeof(*s));
	if (!cJSON_IsObject(e)) {
		snprintf(why, n, "mcpServers.%.80s must be an object", name);
		return -EINVAL;
	}
	if (cmd && (!cJSON_IsString(cmd) || !cmd->valuestring[0])) {
		snprintf(why, n, "mcpServers.%.80s.command must be a non-empty string", name);
		return -EINVAL;
	}
	if (url && !cJSON_IsString(url)) {
		snprintf(why, n, "mcpServers.%.80s.url must be a string", name);
		return -EINVAL;
	}
	if (!cmd && !url) {
		snprintf(why, n, "mcpServers.%.80s has neither \"command\" nor \"url\"", name);
		return -EINVAL;
	}
	if (args && !cJSON_IsArray(args)) {
		snprintf(why, n, "mcpServers.%.80s.args must be an array of strings", name);
		return -EINVAL;
	}
	cJSON_ArrayForEach(a, args) if (!cJSON_IsString(a))
	{
		snprintf(why, n, "mcpServers.%.80s.args must be an array of strings", name);
		return -EINVAL;
	}
	if (env && !cJSON_IsObject(env)) {
		snprintf(why, n, "mcpServers.%.80s.env must be an object of strings", name);
		return -EINVAL;
	}
	cJSON_ArrayForEach(a, env) if (!cJSON_IsString(a) || !a->string[0] || strchr(a->string, '='))
	{
		snprintf(why, n,
			 "mcpServers.%.80s.env: \"%.80s\" must be a string (and a name without '=')",
			 name, a->string);
		return -EINVAL;
	}
	s->name = strdup(name);
	s->sig = cJSON_PrintUnformatted(e);
	if (!s->name || !s->sig)
		goto nomem;
	if (!name_ok(name)) {
		char t[200];
		snprintf(t, sizeof(t), "the name must be 1-%d of A-Z a-z 0-9 _ - (it prefixes the "
			 "function names)", MCP_NAME_MAX);
		s->skip = strdup(t);
	} else if (!cmd) {
		s->skip = strdup("\"url\" (remote, Streamable HTTP) servers are not supported: "
				 "run it through a stdio command");
	}
	if (!name_ok(name) || !cmd) {
		if (s->skip)
			return 0;
		goto nomem;
	}
	s->command = strdup(cmd->valuestring);
	s->argv = strv_new((size_t)cJSON_GetArraySize(args) + 1);
	s->env = strv_new((size_t)cJSON_GetArraySize(env));
	if (!s->command || !s->argv || !s->env || !(s->argv[0] = strdup(cmd->valuestring)))
		goto nomem;
	i = 1;
	cJSON_ArrayForEach(a, args) if (!(s->argv[i++] = strdup(a->valuestring))) goto nomem;
	i = 0;
	cJSON_ArrayForEach(a, env)
	{
		size_t l = strlen(a->string) + strlen(a->valuestring) + 2;
		if (!(s->env[i] = malloc(l)))
			goto nomem;
		snprintf(s->env[i++], l, "%s=%s", a->string, a->valuestring);
	}
	return 0;
nomem:
	mcp_conf_server_free(s);
	snprintf(why, n, "out of memory");
	return -ENOMEM;
}

int mcp_conf_parse(const char *text, size_t len, struct mcp_conf *out, char *why, size_t whylen)
{
	const char *end = NULL;
	cJSON *root, *servers, *e;
	size_t i = 0, blank = 1;
	int rc = 0;

	out->n = 0;
	out->v = NULL;
	for (size_t k = 0; k < len; k++)
		if (!strchr(" \t\r\n", text[k]))
			blank = 0;
	if (blank)
		return 0;
	if (memchr(text, '\0', len)) {
		snprintf(why, whylen, "mcp.json holds a NUL byte");
		return -EINVAL;
	}
	root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!root) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= text && at <= text + len ? (size_t)(at - text) : 0;
		snprintf(why, whylen, "mcp.json is not valid JSON (near byte %zu)", off);
		return -EINVAL;
	}
	for (; end && end < text + len; end++)
		if (!strchr(" \t\r\n", *end)) {
			snprintf(why, whylen, "mcp.json has text after its JSON value");
			cJSON_Delete(root);
			return -EINVAL;
		}
	servers = cJSON_GetObjectItemCaseSensitive(root, "mcpServers");
	if (!cJSON_IsObject(root) || !cJSON_IsObject(servers)) {
		snprintf(why, whylen, "mcp.json must be {\"mcpServers\": {\"NAME\": {\"command\": "
			 "..., \"args\": [...], \"env\": {...}}}}");
		cJSON_Delete(root);
		return -EINVAL;
	}
	out->v = calloc((size_t)cJSON_GetArraySize(servers) + 1, sizeof(*out->v));
	if (!out->v) {
		cJSON_Delete(root);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	cJSON_ArrayForEach(e, servers)
	{
		for (size_t k = 0; k < i; k++)
			if (strcmp(out->v[k].name, e->string) == 0) {
				snprintf(why, whylen, "mcpServers.%.80s appears twice", e->string);
				rc = -EINVAL;
				break;
			}
		if (rc || (rc = parse_entry(e, &out->v[i], why, whylen)) != 0)
			break;
		out->n = ++i;
	}
	cJSON_Delete(root);
	if (rc)
		mcp_conf_free(out);
	return rc;
}

/* models_fetch.c - lists the server's models: LM Studio's /api/v1/models
 * (0.4), else /api/v0/models, else the OpenAI /v1/models; parses each
 * shape into loaded instances, downloaded models and capabilities. */
#include "models_int.h"

#include "config.h"
#include "http.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct model_list *models_list_new(void)
{
	struct model_list *l = calloc(1, sizeof(*l));
	if (l)
		l->refs = 1;
	return l;
}

static void free_models(struct model *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].id);
		free(v[i].key);
		free(v[i].json);
	}
	free(v);
}

void models_list_free(struct model_list *l)
{
	if (!l)
		return;
	free_models(l->v, l->n);
	free_models(l->avail, l->n_avail);
	free(l);
}

/* Appends a model (id, key, the object as its file's content, caps) to
 * *v; a duplicate id keeps the first. */
static int add(struct model **v, size_t *n, const char *id, const char *key,
	       const cJSON *obj, const int caps[MODEL_CAP__COUNT])
{
	struct model *nv, *m;
	char *txt;
	size_t len;

	for (size_t i = 0; i < *n; i++)
		if (strcmp((*v)[i].id, id) == 0)
			return 0;
	nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	*v = nv;
	m = &nv[*n];
	memset(m, 0, sizeof(*m));
	txt = cJSON_Print(obj);
	if (!txt)
		return -ENOMEM;
	len = strlen(txt);
	m->json = malloc(len + 2);
	m->id = strdup(id);
	m->key = strdup(key);
	if (m->json) {
		memcpy(m->json, txt, len);
		memcpy(m->json + len, "\n", 2);
	}
	free(txt);
	if (!m->json || !m->id || !m->key) {
		free(m->json);
		free(m->id);
		free(m->key);
		return -ENOMEM;
	}
	memcpy(m->caps, caps, sizeof(m->caps));
	(*n)++;
	return 0;
}

static const char *str_of(const cJSON *o, const char *name)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsString(s) && s->valuestring[0] ? s->valuestring : NULL;
}

/* A boolean capability: 1, 0, or -1 when the server does not say. */
static int flag_of(const cJSON *o, const char *name)
{
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, name);
	if (cJSON_IsBool(b))
		return cJSON_IsTrue(b);
	return -1;
}

/* /api/v1/models: {"models": [{"key", "loaded_instances": [{"id"}],
 * "capabilities": {"vision", "trained_for_tool_use", "reasoning"}}]}. */
static int parse_v1(const cJSON *root, struct model_list *l, char *msg,
		    size_t msglen)
{
	const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
	const cJSON *m, *inst;

	if (!cJSON_IsArray(models)) {
		snprintf(msg, msglen,
			 "/api/v1/models is not {\"models\": [...]}");
		return -EPROTO;
	}
	cJSON_ArrayForEach(m, models)
	{
		const char *key = str_of(m, "key");
		const cJSON *caps =
		    cJSON_GetObjectItemCaseSensitive(m, "capabilities");
		const cJSON *r =
		    cJSON_GetObjectItemCaseSensitive(caps, "reasoning");
		int c[MODEL_CAP__COUNT] = {-1, -1, -1};

		if (!key)
			continue;
		if (cJSON_IsObject(caps)) {
			c[MODEL_CAP_VISION] = flag_of(caps, "vision");
			c[MODEL_CAP_TOOLS] =
			    flag_of(caps, "trained_for_tool_use");
			/* An object of options, or a plain boolean. */
			c[MODEL_CAP_REASONING] = cJSON_IsBool(r)
						     ? cJSON_IsTrue(r)
						 : (r && !cJSON_IsNull(r)) ? 1
									   : 0;
		}
		if (add(&l->avail, &l->n_avail, key, key, m, c) != 0)
			return -ENOMEM;
		cJSON_ArrayForEach(inst, cJSON_GetObjectItemCaseSensitive(
					     m, "loaded_instances"))
		{
			const char *id = str_of(inst, "id");
			if (id && add(&l->v, &l->n, id, key, m, c) != 0)
				return -ENOMEM;
		}
	}
	return 0;
}

/* /api/v0/models and /v1/models: {"data": [{"id", ...}]}. v0 has a
 * "state" (only "loaded" counts) and a "type" (vlm: can see). */
static int parse_data(const cJSON *root, int v0, struct model_list *l,
		      char *msg, size_t msglen)
{
	const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
	const cJSON *m;

	if (!cJSON_IsArray(data)) {
		snprintf(msg, msglen, "model list is not {\"data\": [...]}");
		return -EPROTO;
	}
	cJSON_ArrayForEach(m, data)
	{
		const char *id = str_of(m, "id"), *st = str_of(m, "state");
		const char *type = str_of(m, "type");
		const cJSON *caps =
		    cJSON_GetObjectItemCaseSensitive(m, "capabilities");
		int c[MODEL_CAP__COUNT] = {-1, -1, -1};

		if (!id)
			continue;
		if (v0 && type)
			c[MODEL_CAP_VISION] = strcmp(type, "vlm") == 0;
		if (v0 && cJSON_IsArray(caps)) {
			const cJSON *e;
			c[MODEL_CAP_TOOLS] = 0;
			cJSON_ArrayForEach(e, caps) if (cJSON_IsString(e) &&
							strcmp(e->valuestring,
							       "tool_use") == 0)
			    c[MODEL_CAP_TOOLS] = 1;
		}
		if (add(&l->avail, &l->n_avail, id, id, m, c) != 0)
			return -ENOMEM;
		/* /v1/models has no state: everything it lists counts. */
		if ((!v0 || (st && strcmp(st, "loaded") == 0)) &&
		    add(&l->v, &l->n, id, id, m, c) != 0)
			return -ENOMEM;
	}
	return 0;
}

static void mock_list(struct model_list *l)
{
	static const char *const ids[] = {"mock-1b-instruct",
					  "lmsfs/mock-echo"};
	static const int caps[MODEL_CAP__COUNT] = {0, 1, 0};
	for (size_t i = 0; i < 2; i++) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "id", ids[i]);
		cJSON_AddStringToObject(o, "object", "model");
		cJSON_AddStringToObject(o, "type", "llm");
		cJSON_AddStringToObject(o, "publisher", "lmsfs");
		cJSON_AddStringToObject(o, "arch", "mock");
		cJSON_AddStringToObject(o, "compatibility_type", "builtin");
		cJSON_AddStringToObject(o, "quantization", "none");
		cJSON_AddStringToObject(o, "state", "loaded");
		cJSON_AddNumberToObject(o, "max_context_length", 8192);
		cJSON *c = cJSON_AddArrayToObject(o, "capabilities");
		cJSON_AddItemToArray(c, cJSON_CreateString("tool_use"));
		add(&l->v, &l->n, ids[i], ids[i], o, caps);
		add(&l->avail, &l->n_avail, ids[i], ids[i], o, caps);
		cJSON_Delete(o);
	}
	l->api = MODELS_API_MOCK;
}

/* A listing never takes longer than a connection may. */
long models_listing_timeout_ms(const struct config *cfg)
{
	return cfg->connect_timeout_ms < cfg->timeout_ms ? cfg->connect_timeout_ms
							 : cfg->timeout_ms;
}

/* One listing at path into l. EC_NONE, or the failure's class with a
 * reason; *status gets the HTTP status of a reply (0 when none came). */
static enum err_class list_from(const struct config *cfg, const char *path,
				enum models_api api, struct model_list *l,
				const volatile int *cancel, long *status,
				char *msg, size_t msglen)
{
	struct http_reply r;
	enum err_class cls = EC_NONE;
	cJSON *root;
	int ret;

	http_reply_init(&r, 16u << 20);
	r.timeout_ms = models_listing_timeout_ms(cfg);
	http_request("GET", path, NULL, NULL, NULL, cancel, &r);
	*status = r.transport == EC_NONE ? r.status : 0;
	if (r.transport != EC_NONE) {
		cls = r.transport;
		snprintf(msg, msglen, "%s", r.err);
	} else if (r.status != 200) {
		cls = errclass_from_http(r.status, r.body.data, r.body.len, msg,
					 msglen);
	} else {
		root = cJSON_ParseWithLength(r.body.data, r.body.len);
		ret = api == MODELS_API_V1
			  ? parse_v1(root, l, msg, msglen)
			  : parse_data(root, api == MODELS_API_V0, l, msg,
				       msglen);
		cJSON_Delete(root);
		if (ret == -ENOMEM)
			snprintf(msg, msglen, "out of memory");
		if (ret)
			cls = EC_PROTOCOL;
		else
			l->api = api;
	}
	http_reply_free(&r);
	return cls;
}

/* An endpoint the server does not have answers 404 or 405. */
static int missing(enum err_class cls, long status)
{
	return cls != EC_NONE && (status == 404 || status == 405);
}

enum err_class models_fetch(const struct config *cfg, struct model_list *l,
			    const volatile int *cancel, char *msg,
			    size_t msglen)
{
	enum err_class cls;
	long status = 0;

	if (cfg->provider == PROVIDER_MOCK) {
		mock_list(l);
		return EC_NONE;
	}
	if (cfg->provider == PROVIDER_LMSTUDIO) {
		cls = list_from(cfg, "/api/v1/models", MODELS_API_V1, l, cancel,
				&status, msg, msglen);
		if (missing(cls, status))
			cls = list_from(cfg, "/api/v0/models", MODELS_API_V0, l,
					cancel, &status, msg, msglen);
		if (!missing(cls, status))
			return cls;
	}
	return list_from(cfg, "/v1/models", MODELS_API_OPENAI, l, cancel,
			 &status, msg, msglen);
}

/* health.c - renders the health file. */
#include "health.h"

#include "config.h"
#include "mcp.h"
#include "metrics.h"
#include "models.h"
#include "retry.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *provider_name(int p)
{
	return p == PROVIDER_MOCK ? "mock" : p == PROVIDER_OPENAI ? "openai" : "lmstudio";
}

char *health_json(const struct config *cfg)
{
	struct model_list *l = models_get(1);
	cJSON *o = cJSON_CreateObject(), *h, *b, *e, *ids;
	enum breaker_state st;
	enum err_class cls;
	int reach, cons;
	long opened, left;
	char msg[512];
	char *s;

	models_status(&reach, &cls, msg, sizeof(msg));
	cJSON_AddStringToObject(o, "version", LMSFS_VERSION);
	cJSON_AddStringToObject(o, "provider", provider_name(cfg->provider));
	cJSON_AddStringToObject(o, "base_url", cfg->base_url);
	cJSON_AddBoolToObject(o, "reachable", reach);
	if (cls != EC_NONE) {
		e = cJSON_AddObjectToObject(o, "error");
		cJSON_AddStringToObject(e, "class", errclass_name(cls));
		cJSON_AddStringToObject(e, "message", msg);
	} else {
		cJSON_AddNullToObject(o, "error");
	}
	{
		/* A listing under way (a server that does not answer): how
		 * long it has waited, and when it is given up. */
		long long since;
		if (models_listing(&since)) {
			cJSON *li = cJSON_AddObjectToObject(o, "listing");
			cJSON_AddNumberToObject(li, "since_ms", (double)since);
			cJSON_AddNumberToObject(li, "timeout_ms",
						(double)models_listing_timeout_ms(cfg));
		} else {
			cJSON_AddNullToObject(o, "listing");
		}
	}
	cJSON_AddNumberToObject(o, "models_loaded", (double)l->n);
	/* Where the list came from: "v1" can load and unload (models/). */
	cJSON_AddStringToObject(o, "models_api", models_api_name(l->api));
	cJSON_AddNumberToObject(o, "models_downloaded", (double)l->n_avail);
	ids = cJSON_AddArrayToObject(o, "models");
	for (size_t i = 0; i < l->n; i++)
		cJSON_AddItemToArray(ids, cJSON_CreateString(l->v[i].id));
	models_put(l);
	{
		char why[512];
		long n = metrics_storage_last(why, sizeof(why));
		cJSON *sto = cJSON_AddObjectToObject(o, "storage");
		cJSON_AddNumberToObject(sto, "failures", (double)n);
		if (n > 0)
			cJSON_AddStringToObject(sto, "last_error", why);
		else
			cJSON_AddNullToObject(sto, "last_error");
	}
	{
		struct metrics_last lf;
		if (metrics_last_failure(&lf)) {
			char at[40];
			struct tm tm;
			cJSON *f = cJSON_AddObjectToObject(o, "last_failure");
			gmtime_r(&lf.at, &tm);
			strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
			cJSON_AddStringToObject(f, "class", errclass_name(lf.cls));
			cJSON_AddStringToObject(f, "message", lf.why);
			if (lf.conv[0])
				cJSON_AddStringToObject(f, "conversation", lf.conv);
			cJSON_AddStringToObject(f, "at", at);
		} else {
			cJSON_AddNullToObject(o, "last_failure");
		}
	}
	h = cJSON_AddObjectToObject(o, "http");
	cJSON_AddNumberToObject(h, "timeout_ms", cfg->timeout_ms);
	cJSON_AddNumberToObject(h, "connect_timeout_ms", cfg->connect_timeout_ms);
	cJSON_AddNumberToObject(h, "keep_alive_ms", cfg->keep_alive_ms);
	cJSON_AddNumberToObject(h, "max_idle_connections", cfg->max_idle_connections);
	cJSON_AddBoolToObject(h, "api_key_set", cfg->api_key && cfg->api_key[0]);
	breaker_snapshot(&st, &cons, &opened, &left);
	b = cJSON_AddObjectToObject(o, "breaker");
	cJSON_AddStringToObject(b, "state", breaker_state_name(st));
	cJSON_AddNumberToObject(b, "consecutive_failures", cons);
	cJSON_AddNumberToObject(b, "threshold", cfg->breaker_threshold);
	cJSON_AddNumberToObject(b, "times_opened", opened);
	cJSON_AddNumberToObject(b, "next_probe_ms", left);
	if (cfg->default_model)
		cJSON_AddStringToObject(o, "default_model", cfg->default_model);
	cJSON_AddBoolToObject(o, "stream", cfg->stream);
	{
		long calls, failures;
		cJSON *mo = cJSON_AddObjectToObject(o, "mcp");
		mcp_counts(&calls, &failures);
		cJSON_AddNumberToObject(mo, "calls", (double)calls);
		cJSON_AddNumberToObject(mo, "failures", (double)failures);
	}
	s = json_text_file(o);
	cJSON_Delete(o);
	return s;
}

/* models.c - the model list, cached and refreshed in the background by one
 * thread (stale-while-revalidate): readers get what is cached and never
 * wait on a listing they did not start, beyond a short grace. */
#include "models.h"

#include "buf.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* How long a reader may wait for a refresh that is under way: a local
 * server answers well within it, a hanging one costs no more. */
#define MODELS_GRACE_MS 40
/* The first listing after mount: nothing is cached yet, so readers wait
 * for it a little longer (a listing that falls back takes two round
 * trips); one that hangs is given up on after this. */
#define MODELS_FIRST_GRACE_MS 500

static const struct config *cfg;
/* lock is a leaf: nothing else is taken while it is held, and no HTTP
 * request is made under it. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER; /* with lock */
static struct model_list *current;  /* protected by lock */
static long long fetched_at;        /* protected by lock; 0 = never */
static int reachable;               /* protected by lock */
static enum err_class last_cls;     /* protected by lock */
static char last_msg[512];          /* protected by lock */
static int wanted;                  /* protected by lock: refresh asked */
static int refreshing;              /* protected by lock */
static long long refresh_started;   /* protected by lock */
static unsigned long generation;    /* protected by lock: refreshes done */
static int thread_running;          /* protected by lock */
static volatile int stopping;       /* set under lock; read by http */
static pthread_t refresher;

static struct model_list *list_new(void)
{
	struct model_list *l = calloc(1, sizeof(*l));
	if (l)
		l->refs = 1;
	return l;
}

static void list_free(struct model_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].id);
		free(l->v[i].json);
	}
	free(l->v);
	free(l);
}

void models_put(struct model_list *l)
{
	int last;
	if (!l)
		return;
	pthread_mutex_lock(&lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&lock);
	if (last)
		list_free(l);
}

static int list_add(struct model_list *l, const char *id, const cJSON *obj)
{
	struct model *v = realloc(l->v, (l->n + 1) * sizeof(*v));
	char *txt;
	size_t len;

	if (!v)
		return -ENOMEM;
	l->v = v;
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].id, id) == 0)
			return 0; /* duplicate ids: keep the first */
	txt = cJSON_Print(obj);
	if (!txt)
		return -ENOMEM;
	len = strlen(txt);
	v[l->n].json = malloc(len + 2);
	if (!v[l->n].json) {
		free(txt);
		return -ENOMEM;
	}
	memcpy(v[l->n].json, txt, len);
	memcpy(v[l->n].json + len, "\n", 2);
	free(txt);
	v[l->n].id = strdup(id);
	if (!v[l->n].id) {
		free(v[l->n].json);
		return -ENOMEM;
	}
	l->n++;
	return 0;
}

/* Parses {"data": [...]}; when need_loaded, keeps state == "loaded". */
static int parse_list(const char *body, size_t len, int need_loaded,
		      struct model_list *l, char *msg, size_t msglen)
{
	cJSON *root = cJSON_ParseWithLength(body, len);
	const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
	const cJSON *m;

	if (!cJSON_IsArray(data)) {
		snprintf(msg, msglen, "model list is not {\"data\": [...]}");
		cJSON_Delete(root);
		return -EPROTO;
	}
	cJSON_ArrayForEach(m, data)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(m, "state");
		if (!cJSON_IsString(id) || !id->valuestring[0])
			continue;
		if (need_loaded && cJSON_IsString(st) &&
		    strcmp(st->valuestring, "loaded") != 0)
			continue;
		if (need_loaded && !cJSON_IsString(st))
			continue;
		if (list_add(l, id->valuestring, m) != 0)
			break;
	}
	cJSON_Delete(root);
	return 0;
}

static void mock_list(struct model_list *l)
{
	static const char *const ids[] = {"mock-1b-instruct", "lmsfs/mock-echo"};
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
		cJSON *caps = cJSON_AddArrayToObject(o, "capabilities");
		cJSON_AddItemToArray(caps, cJSON_CreateString("tool_use"));
		list_add(l, ids[i], o);
		cJSON_Delete(o);
	}
}

/* One GET with a bounded wait: a listing never blocks a reader for long. */
static void fetch(const char *path, struct http_reply *r)
{
	http_reply_init(r, 16u << 20);
	r->timeout_ms = cfg->connect_timeout_ms < cfg->timeout_ms
				? cfg->connect_timeout_ms
				: cfg->timeout_ms;
	http_request("GET", path, NULL, NULL, NULL, &stopping, r);
}

/* Lists the models at path into l. Returns EC_NONE, or the class of the
 * failure with a reason in msg; *status gets the status of a reply that
 * arrived (0 when the transfer failed). */
static enum err_class list_from(const char *path, int need_loaded,
				struct model_list *l, long *status, char *msg,
				size_t msglen)
{
	struct http_reply r;
	enum err_class cls = EC_NONE;

	fetch(path, &r);
	*status = r.transport == EC_NONE ? r.status : 0;
	if (r.transport != EC_NONE) {
		cls = r.transport;
		snprintf(msg, msglen, "%s", r.err);
	} else if (r.status != 200) {
		cls = errclass_from_http(r.status, r.body.data, r.body.len, msg,
					 msglen);
	} else if (parse_list(r.body.data, r.body.len, need_loaded, l, msg,
			      msglen) != 0) {
		cls = EC_PROTOCOL;
	}
	http_reply_free(&r);
	return cls;
}

static void refresh(void)
{
	struct model_list *l = list_new(), *old;
	enum err_class cls = EC_NONE;
	char msg[512] = "";
	long status = 0;
	int ok = 0, fallback = 1;

	if (!l)
		return;
	if (cfg->provider == PROVIDER_MOCK) {
		mock_list(l);
		ok = 1;
		goto publish;
	}
	if (cfg->provider == PROVIDER_LMSTUDIO) {
		cls = list_from("/api/v0/models", 1, l, &status, msg,
				sizeof(msg));
		/* A server without /api/v0 answers 404 or 405: fall back. */
		fallback = cls != EC_NONE && (status == 404 || status == 405);
	}
	if (fallback)
		cls = list_from("/v1/models", 0, l, &status, msg, sizeof(msg));
	ok = cls == EC_NONE;

publish:
	pthread_mutex_lock(&lock);
	old = current;
	current = l;
	fetched_at = now_ms();
	reachable = ok || errclass_server_answered(cls);
	last_cls = ok ? EC_NONE : cls;
	snprintf(last_msg, sizeof(last_msg), "%s", ok ? "" : msg);
	pthread_mutex_unlock(&lock);
	if (!ok)
		log_debug("model list: %s: %s", errclass_name(cls), msg);
	models_put(old);
}

void models_init(const struct config *c)
{
	cfg = c;
	current = list_new();
}

/* The one thread that lists models: it sleeps until a reader finds the
 * list stale (or a refresh is forced), lists, publishes, wakes waiters. */
static void *refresh_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	while (!stopping) {
		if (!wanted) {
			pthread_cond_wait(&cv, &lock);
			continue;
		}
		wanted = 0;
		refreshing = 1;
		refresh_started = now_ms();
		pthread_mutex_unlock(&lock);
		refresh();
		pthread_mutex_lock(&lock);
		refreshing = 0;
		generation++;
		pthread_cond_broadcast(&cv);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

void models_start(void)
{
	pthread_mutex_lock(&lock);
	if (!thread_running && !stopping &&
	    pthread_create(&refresher, NULL, refresh_main, NULL) == 0)
		thread_running = 1;
	wanted = 1; /* the first listing starts now, before anyone asks */
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&lock);
}

void models_cleanup(void)
{
	int joined;

	pthread_mutex_lock(&lock);
	stopping = 1;
	joined = thread_running;
	thread_running = 0;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&lock);
	if (joined)
		pthread_join(refresher, NULL);
	models_put(current);
	current = NULL;
}

/* Asks for a refresh and waits a short grace for one under way; lock
 * held. */
static void ask_refresh(void)
{
	unsigned long gen = generation;
	struct timespec until;
	long long deadline;

	if (!thread_running) {
		/* Not started yet (or stopping): nothing may list in the
		 * caller's thread. */
		return;
	}
	if (!refreshing) {
		wanted = 1;
		refresh_started = now_ms();
		pthread_cond_broadcast(&cv);
	}
	/* A refresh that has run longer than the grace is hanging: use what
	 * is cached at once. */
	deadline = refresh_started +
		   (generation == 0 ? MODELS_FIRST_GRACE_MS : MODELS_GRACE_MS);
	while (generation == gen && !stopping && now_ms() < deadline) {
		long long left = deadline - now_ms();
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += (time_t)(left / 1000);
		until.tv_nsec += (long)(left % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&cv, &lock, &until);
	}
}

struct model_list *models_get(int force)
{
	struct model_list *l;

	pthread_mutex_lock(&lock);
	if (force || fetched_at == 0 || now_ms() - fetched_at >= cfg->models_ttl_ms)
		ask_refresh();
	l = current;
	l->refs++;
	pthread_mutex_unlock(&lock);
	return l;
}

void models_status(int *reach, enum err_class *cls, char *msg, size_t n)
{
	pthread_mutex_lock(&lock);
	*reach = reachable;
	*cls = last_cls;
	snprintf(msg, n, "%s", last_msg);
	pthread_mutex_unlock(&lock);
}

int models_allowed(const char *id)
{
	if (!cfg->allowed_models || cfg->n_allowed == 0)
		return 1;
	for (size_t i = 0; i < cfg->n_allowed; i++)
		if (strcmp(cfg->allowed_models[i], id) == 0)
			return 1;
	return 0;
}

/* want itself when allowed_models permits it (or is not set), else the
 * one allowed id it is a unique substring of; NULL otherwise. */
static const char *allowed_match(const char *want)
{
	const char *hit = NULL;
	size_t hits = 0;

	if (models_allowed(want))
		return want;
	for (size_t i = 0; i < cfg->n_allowed; i++)
		if (strcasestr(cfg->allowed_models[i], want)) {
			hit = cfg->allowed_models[i];
			hits++;
		}
	return hits == 1 ? hit : NULL;
}

static void list_ids(struct model_list *l, char *msg, size_t msglen)
{
	struct buf b;
	buf_init(&b, msglen > 1 ? msglen - 1 : 1);
	for (size_t i = 0; i < l->n; i++) {
		if (!models_allowed(l->v[i].id))
			continue;
		if (b.len)
			buf_puts(&b, ", ");
		buf_puts(&b, l->v[i].id);
	}
	snprintf(msg, msglen, "%s", b.len ? b.data : "(none)");
	buf_free(&b);
}

char *models_resolve(const char *want, enum err_class *cls, char *msg,
		     size_t msglen)
{
	struct model_list *l;
	char loaded[1024], why[512];
	const char *found = NULL;
	char *ret = NULL;
	size_t hits = 0;
	int reach, known;
	enum err_class lc;

	if (!want || !*want)
		want = cfg->default_model;
	l = models_get(0);
	models_status(&reach, &lc, why, sizeof(why));
	pthread_mutex_lock(&lock);
	known = fetched_at != 0 && last_cls == EC_NONE;
	pthread_mutex_unlock(&lock);
	if (l->n == 0 && !known) {
		/* No list to check against (the server is down, hanging, or
		 * has not answered yet): a named model goes as it is, and the
		 * request itself is the check. */
		if (want && *want) {
			const char *a = allowed_match(want);
			if (a) {
				ret = strdup(a);
				goto out;
			}
			*cls = EC_MODEL_NOT_ALLOWED;
			snprintf(msg, msglen, "model '%s' is not in allowed_models", want);
			goto out;
		}
		*cls = lc != EC_NONE ? errclass_of_model_listing(lc) : EC_UNREACHABLE;
		if (lc != EC_NONE)
			snprintf(msg, msglen, "cannot list models: %s: %s",
				 errclass_name(lc), why);
		else
			snprintf(msg, msglen, "the server has not listed its models yet; "
					      "name one in the conversation's model file");
		goto out;
	}
	list_ids(l, loaded, sizeof(loaded));
	if (!want || !*want) {
		for (size_t i = 0; i < l->n; i++)
			if (models_allowed(l->v[i].id)) {
				hits++;
				found = l->v[i].id;
			}
		if (hits == 1)
			goto found;
		*cls = EC_NO_MODEL;
		if (hits == 0)
			snprintf(msg, msglen, "no model is loaded%s; load one in LM Studio (lms load)",
				 l->n ? " that allowed_models permits" : "");
		else
			snprintf(msg, msglen,
				 "several models are loaded and none is chosen: write one to the "
				 "conversation's model file or set default_model (loaded: %s)",
				 loaded);
		goto out;
	}
	/* An exact id, else a unique substring, among the models that may be
	 * used; only then among all, to say that the one meant is not
	 * allowed. */
	for (int only_allowed = 1; only_allowed >= 0 && hits == 0; only_allowed--) {
		for (size_t i = 0; i < l->n; i++)
			if ((!only_allowed || models_allowed(l->v[i].id)) &&
			    strcmp(l->v[i].id, want) == 0) {
				found = l->v[i].id;
				hits = 1;
				break;
			}
		if (!found) {
			for (size_t i = 0; i < l->n; i++)
				if ((!only_allowed || models_allowed(l->v[i].id)) &&
				    strcasestr(l->v[i].id, want)) {
					hits++;
					found = l->v[i].id;
				}
		}
	}
	if (hits == 1)
		goto found;
	*cls = hits ? EC_BAD_REQUEST : EC_MODEL_NOT_FOUND;
	snprintf(msg, msglen, "model '%s' %s (loaded: %s)", want,
		 hits ? "is ambiguous" : "is not loaded", loaded);
	goto out;
found:
	if (!models_allowed(found)) {
		*cls = EC_MODEL_NOT_ALLOWED;
		snprintf(msg, msglen, "model '%s' is not in allowed_models (allowed and loaded: %s)",
			 found, loaded);
		goto out;
	}
	ret = strdup(found);
out:
	models_put(l);
	return ret;
}

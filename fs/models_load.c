/* models_load.c - loads and unloads models through LM Studio's /api/v1,
 * each operation in a thread of its own that reports when it ended. */
#include "models.h"

#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A load can take minutes (a big model from a slow disk); an unload
 * does not. */
#define LOAD_TIMEOUT_MS (15L * 60 * 1000)
#define UNLOAD_TIMEOUT_MS (60L * 1000)

/* Who waits for an operation: a load without settings asked for while
 * the same one is under way joins it instead of loading another
 * instance. */
struct waiter {
	struct waiter *next; /* ops_lock */
	uint64_t id;
	models_done_fn done;
	void *ctx;
	int cancelled; /* ops_lock: done gets -EINTR */
};

struct op {
	struct op *next; /* ops_lock */
	int unload;
	int plain;		/* a load without settings (others may join) */
	char *name;		/* the key loaded, or the instance unloaded */
	char *body;		/* the request's JSON */
	volatile int cancel;	/* set when every waiter cancelled */
	struct waiter *waiters; /* ops_lock */
};

/* ops_lock is a leaf: nothing else is taken under it. */
static pthread_mutex_t ops_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ops_cv = PTHREAD_COND_INITIALIZER;
static struct op *ops;	     /* ops_lock: operations under way */
static uint64_t next_id = 1; /* ops_lock */
static int stopping;	     /* ops_lock */
static int running;	     /* ops_lock: threads not yet past done */

static void op_free(struct op *o)
{
	if (!o)
		return;
	while (o->waiters) {
		struct waiter *w = o->waiters;
		o->waiters = w->next;
		free(w);
	}
	free(o->name);
	free(o->body);
	free(o);
}

/* The errno a failed load or unload gets, from the server's message. */
static int load_errno(long status, enum err_class cls, const char *msg)
{
	if (cls == EC_MODEL_NOT_FOUND)
		return -ENOENT;
	if (status == 404 || status == 405)
		return -ENOTSUP; /* no /api/v1 */
	if (strcasestr(msg, "memory") || strcasestr(msg, "insufficient") ||
	    strcasestr(msg, "resources"))
		return -ENOMEM;
	return -EIO;
}

static void *op_main(void *arg)
{
	struct op *o = arg, **pp;
	struct http_reply r;
	char msg[512] = "";
	int err = 0;

	http_reply_init(&r, 1u << 20);
	r.timeout_ms = o->unload ? UNLOAD_TIMEOUT_MS : LOAD_TIMEOUT_MS;
	http_request(
	    "POST", o->unload ? "/api/v1/models/unload" : "/api/v1/models/load",
	    o->body, NULL, NULL, &o->cancel, &r);
	if (flag_get(&o->cancel)) {
		err = -EINTR;
		snprintf(msg, sizeof(msg), "cancelled");
	} else if (r.transport != EC_NONE) {
		err = -EIO;
		snprintf(msg, sizeof(msg), "%s: %s", errclass_name(r.transport),
			 r.err);
	} else if (r.status < 200 || r.status > 299) {
		enum err_class cls = errclass_from_http(
		    r.status, r.body.data, r.body.len, msg, sizeof(msg));
		err = load_errno(r.status, cls, msg);
		if (err == -ENOTSUP && cls != EC_MODEL_NOT_FOUND)
			snprintf(
			    msg, sizeof(msg),
			    "the server has no /api/v1 (LM Studio 0.4): "
			    "models cannot be loaded or unloaded from here");
	}
	http_reply_free(&r);
	if (err && err != -EINTR) {
		char what[700];
		snprintf(what, sizeof(what), "%s %s: %s",
			 o->unload ? "unload" : "load", o->name, msg);
		log_warnx("%s", what);
		metrics_note_failure(err == -ENOENT ? EC_MODEL_NOT_FOUND
						    : EC_SERVER,
				     NULL, what);
	} else if (!err) {
		log_info("%s %s", o->unload ? "unloaded" : "loaded", o->name);
		/* Whoever waits sees the change in models/ when told. */
		models_refresh_wait(&o->cancel);
	}
	pthread_mutex_lock(&ops_lock);
	for (pp = &ops; *pp; pp = &(*pp)->next)
		if (*pp == o) {
			*pp = o->next;
			break;
		}
	pthread_mutex_unlock(&ops_lock);
	/* Out of the list: nobody joins or cancels any more. */
	for (struct waiter *w = o->waiters; w; w = w->next)
		w->done(w->ctx, w->cancelled ? -EINTR : err,
			w->cancelled ? "cancelled" : msg);
	pthread_mutex_lock(&ops_lock);
	running--;
	pthread_cond_broadcast(&ops_cv);
	pthread_mutex_unlock(&ops_lock);
	op_free(o);
	return NULL;
}

static int op_start(struct op *o, models_done_fn done, void *ctx, uint64_t *id,
		    char *why, size_t whylen)
{
	pthread_attr_t at;
	pthread_t t;
	int ret;
	struct waiter *w = calloc(1, sizeof(*w));

	if (!w) {
		op_free(o);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	w->done = done;
	w->ctx = ctx;
	pthread_mutex_lock(&ops_lock);
	if (stopping) {
		pthread_mutex_unlock(&ops_lock);
		snprintf(why, whylen, "the file system is being unmounted");
		free(w);
		op_free(o);
		return -ESHUTDOWN;
	}
	w->id = next_id++;
	*id = w->id;
	if (o->plain) {
		/* The same load under way: wait for it with the others. */
		for (struct op *p = ops; p; p = p->next)
			if (p->plain && !flag_get(&p->cancel) &&
			    strcmp(p->name, o->name) == 0) {
				w->next = p->waiters;
				p->waiters = w;
				pthread_mutex_unlock(&ops_lock);
				op_free(o);
				return 0;
			}
	}
	o->waiters = w;
	o->next = ops;
	ops = o;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	ret = pthread_create(&t, &at, op_main, o);
	pthread_attr_destroy(&at);
	if (ret != 0)
		ops = o->next;
	else
		running++;
	pthread_mutex_unlock(&ops_lock);
	if (ret != 0) {
		op_free(o);
		snprintf(why, whylen, "cannot start a thread: %s",
			 strerror(ret));
		return -EAGAIN;
	}
	return 0;
}

/* Checks what the cached list can tell: a server without /api/v1, a name
 * it does not know. */
static int precheck(const char *name, int unload, char *why, size_t whylen)
{
	int loaded, downloaded;
	enum models_api api = models_known(name, &loaded, &downloaded);
	char names[1024];

	if (api != MODELS_API_NONE && api != MODELS_API_V1) {
		snprintf(
		    why, whylen,
		    "the server has no /api/v1 (LM Studio 0.4): models cannot "
		    "be loaded or unloaded from here");
		return -ENOTSUP;
	}
	if (!models_allowed(name)) {
		snprintf(why, whylen, "model '%s' is not in allowed_models",
			 name);
		return -EACCES;
	}
	if (api == MODELS_API_V1 && unload && !loaded) {
		snprintf(why, whylen, "no loaded instance is called '%s'",
			 name);
		return -ENOENT;
	}
	if (api == MODELS_API_V1 && !unload && !downloaded) {
		models_downloaded_names(names, sizeof(names));
		snprintf(why, whylen,
			 "model '%s' is not downloaded (downloaded: %s)", name,
			 names);
		return -ENOENT;
	}
	return 0;
}

/* The load request for key with the user's settings (checked). */
static char *load_body(const char *key, const char *settings, size_t len,
		       char *why, size_t whylen)
{
	static const struct {
		const char *name;
		int is_bool;
	} known[] = {{"context_length", 0},
		     {"eval_batch_size", 0},
		     {"num_experts", 0},
		     {"flash_attention", 1},
		     {"offload_kv_cache_to_gpu", 1}};
	cJSON *req = cJSON_CreateObject(), *in = NULL, *it;
	char *out = NULL;
	size_t i = 0;

	cJSON_AddStringToObject(req, "model", key);
	while (i < len && strchr(" \t\r\n", settings[i]))
		i++;
	if (i < len) {
		in = cJSON_ParseWithLength(settings, len);
		if (!cJSON_IsObject(in)) {
			snprintf(why, whylen,
				 "load settings must be a JSON object");
			goto out;
		}
		cJSON_ArrayForEach(it, in)
		{
			size_t k;
			for (k = 0; k < sizeof(known) / sizeof(known[0]); k++)
				if (strcmp(known[k].name, it->string) == 0)
					break;
			if (k == sizeof(known) / sizeof(known[0])) {
				snprintf(
				    why, whylen,
				    "unknown load setting '%s' (known: "
				    "context_length, eval_batch_size, "
				    "flash_attention, "
				    "num_experts, offload_kv_cache_to_gpu)",
				    it->string);
				goto out;
			}
			if (known[k].is_bool
				? !cJSON_IsBool(it)
				: !(cJSON_IsNumber(it) &&
				    it->valuedouble >= 1 &&
				    it->valuedouble <= 1e9 &&
				    it->valuedouble ==
					(double)(long)it->valuedouble)) {
				snprintf(
				    why, whylen, "load setting '%s' must be %s",
				    it->string,
				    known[k].is_bool ? "true or false"
						     : "a positive integer");
				goto out;
			}
			cJSON_AddItemToObject(req, it->string,
					      cJSON_Duplicate(it, 1));
		}
	}
	out = cJSON_PrintUnformatted(req);
	if (!out)
		snprintf(why, whylen, "out of memory");
out:
	cJSON_Delete(in);
	cJSON_Delete(req);
	return out;
}

int models_load_check(const char *key, char *why, size_t whylen)
{
	return precheck(key, 0, why, whylen);
}

static struct op *op_new(const char *name, int unload)
{
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->unload = unload;
	o->name = strdup(name);
	if (!o->name) {
		free(o);
		return NULL;
	}
	return o;
}

int models_load_start(const char *key, const char *settings,
		      size_t settings_len, models_done_fn done, void *ctx,
		      uint64_t *id, char *why, size_t whylen)
{
	struct op *o;
	int ret = precheck(key, 0, why, whylen);

	if (ret)
		return ret;
	o = op_new(key, 0);
	if (!o) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	o->body = load_body(key, settings ? settings : "",
			    settings ? settings_len : 0, why, whylen);
	if (!o->body) {
		op_free(o);
		return -EINVAL;
	}
	/* Only the key: no settings of its own. */
	o->plain = !strchr(o->body, ',');
	return op_start(o, done, ctx, id, why, whylen);
}

int models_unload_start(const char *instance_id, models_done_fn done, void *ctx,
			uint64_t *id, char *why, size_t whylen)
{
	struct op *o;
	cJSON *req;
	int ret = precheck(instance_id, 1, why, whylen);

	if (ret)
		return ret;
	o = op_new(instance_id, 1);
	req = cJSON_CreateObject();
	if (o && req) {
		cJSON_AddStringToObject(req, "instance_id", instance_id);
		o->body = cJSON_PrintUnformatted(req);
	}
	cJSON_Delete(req);
	if (!o || !o->body) {
		op_free(o);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	return op_start(o, done, ctx, id, why, whylen);
}

void models_op_cancel(uint64_t id)
{
	pthread_mutex_lock(&ops_lock);
	for (struct op *o = ops; o; o = o->next) {
		int left = 0;
		for (struct waiter *w = o->waiters; w; w = w->next) {
			if (w->id == id)
				w->cancelled = 1;
			left += !w->cancelled;
		}
		/* The request goes on while someone still waits for it. */
		if (!left)
			flag_set(&o->cancel, 1);
	}
	pthread_mutex_unlock(&ops_lock);
}

void models_ops_stop(void)
{
	pthread_mutex_lock(&ops_lock);
	stopping = 1;
	for (struct op *o = ops; o; o = o->next) {
		for (struct waiter *w = o->waiters; w; w = w->next)
			w->cancelled = 1;
		flag_set(&o->cancel, 1);
	}
	/* An operation leaves the list before its done: wait until every
	 * done has returned. */
	while (running)
		pthread_cond_wait(&ops_cv, &ops_lock);
	pthread_mutex_unlock(&ops_lock);
}

/* models.c - the model list, cached and refreshed in the background by one
 * thread (stale-while-revalidate): readers get what is cached and never
 * wait on a listing they did not start, beyond a short grace. */
#include "models_int.h"

#include "buf.h"
#include "config.h"
#include "log.h"
#include "names.h"
#include "util.h"

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
/* A listing that failed within this (a refused connection, an error
 * answered at once) did not hang: the next one gets the longer grace. */
#define MODELS_QUICK_FAIL_MS 250

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
static long long last_took;         /* protected by lock: ms the last
				       listing took */
static unsigned long generation;    /* protected by lock: refreshes done */
static int thread_running;          /* protected by lock */
static volatile int stopping;       /* set under lock; read by http */
static pthread_t refresher;

void models_put(struct model_list *l)
{
	int last;
	if (!l)
		return;
	pthread_mutex_lock(&lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&lock);
	if (last)
		models_list_free(l);
}

static void refresh(void)
{
	struct model_list *l = models_list_new(), *old;
	enum err_class cls;
	char msg[512] = "";
	int ok;

	if (!l)
		return;
	cls = models_fetch(cfg, l, &stopping, msg, sizeof(msg));
	ok = cls == EC_NONE;
	if (!ok) {
		/* A server that is down lists nothing (not half a list). */
		models_list_free(l);
		l = models_list_new();
		if (!l)
			return;
	}
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
	current = models_list_new();
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
		last_took = now_ms() - refresh_started;
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
	 * is cached at once. Nothing cached, or a listing that could not
	 * reach the server and failed at once (a refused connection: the
	 * next one is as quick, or the server is back): the longer grace. */
	deadline = refresh_started +
		   (generation == 0 ||
			    (last_cls != EC_NONE && !reachable && last_took < MODELS_QUICK_FAIL_MS)
			? MODELS_FIRST_GRACE_MS
			: MODELS_GRACE_MS);
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
	/* A listing that did not reach the server is stale at once: a server
	 * that is back is seen by the next reader, not models_ttl later (one
	 * that answered with an error is not asked again before models_ttl). */
	if (force || fetched_at == 0 || (last_cls != EC_NONE && !reachable) ||
	    now_ms() - fetched_at >= cfg->models_ttl_ms)
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

int models_listing(long long *since_ms)
{
	int on;

	pthread_mutex_lock(&lock);
	on = refreshing;
	*since_ms = on ? now_ms() - refresh_started : 0;
	pthread_mutex_unlock(&lock);
	return on;
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

/* The id in v[0..n) that want names: an exact id, else a unique
 * substring, among those allowed_models permits (only_allowed) or all.
 * *hits counts the matches (more than one: ambiguous). */
static const char *match(const struct model *v, size_t n, const char *want, int only_allowed,
			 size_t *hits)
{
	const char *found = NULL;

	*hits = 0;
	for (size_t i = 0; i < n; i++)
		if ((!only_allowed || models_allowed(v[i].id)) && strcmp(v[i].id, want) == 0) {
			*hits = 1;
			return v[i].id;
		}
	for (size_t i = 0; i < n; i++)
		if ((!only_allowed || models_allowed(v[i].id)) && strcasestr(v[i].id, want)) {
			(*hits)++;
			found = v[i].id;
		}
	return found;
}

static void avail_ids(struct model_list *l, char *msg, size_t msglen)
{
	struct buf b;
	buf_init(&b, msglen > 1 ? msglen - 1 : 1);
	for (size_t i = 0; i < l->n_avail; i++) {
		if (!models_allowed(l->avail[i].key))
			continue;
		if (b.len)
			buf_puts(&b, ", ");
		buf_puts(&b, l->avail[i].key);
	}
	snprintf(msg, msglen, "%s", b.len ? b.data : "(none)");
	buf_free(&b);
}

char *models_resolve(const char *want, enum err_class *cls, char *msg, size_t msglen)
{
	return models_resolve_jit(want, NULL, cls, msg, msglen);
}

char *models_resolve_jit(const char *want, int *jit, enum err_class *cls, char *msg,
			 size_t msglen)
{
	struct model_list *l;
	char loaded[1024], why[512], avail[1024];
	const char *found = NULL;
	char *ret = NULL;
	size_t hits = 0;
	int reach, known;
	enum err_class lc;

	if (jit)
		*jit = 0;
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
			snprintf(msg, msglen,
				 "no model is loaded%s; load one (touch models/KEY with a key "
				 "from models/.available, or lms load)",
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
	for (int only_allowed = 1; only_allowed >= 0 && hits == 0; only_allowed--)
		found = match(l->v, l->n, want, only_allowed, &hits);
	if (hits == 1)
		goto found;
	if (hits == 0 && (l->api == MODELS_API_V1 || l->api == MODELS_API_V0)) {
		/* Downloaded, not loaded: LM Studio loads it just in time. */
		found = match(l->avail, l->n_avail, want, 1, &hits);
		if (hits == 1) {
			if (jit)
				*jit = 1;
			goto found;
		}
		avail_ids(l, avail, sizeof(avail));
		*cls = hits ? EC_BAD_REQUEST : EC_MODEL_NOT_FOUND;
		snprintf(msg, msglen, "model '%s' %s (loaded: %s; downloaded: %s)", want,
			 hits ? "is ambiguous" : "is not downloaded", loaded, avail);
		goto out;
	}
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

const char *models_api_name(enum models_api api)
{
	switch (api) {
	case MODELS_API_V1:
		return "v1";
	case MODELS_API_V0:
		return "v0";
	case MODELS_API_OPENAI:
		return "openai";
	case MODELS_API_MOCK:
		return "mock";
	case MODELS_API_NONE:
		break;
	}
	return "unknown";
}

int models_capability(const char *id, const char *cap)
{
	struct model_list *l;
	int which, ret = -1;

	if (!id || !cap)
		return -1;
	if (strcmp(cap, "vision") == 0)
		which = MODEL_CAP_VISION;
	else if (strcmp(cap, "tool_use") == 0 || strcmp(cap, "trained_for_tool_use") == 0)
		which = MODEL_CAP_TOOLS;
	else if (strcmp(cap, "reasoning") == 0)
		which = MODEL_CAP_REASONING;
	else
		return -1;
	l = models_get(0);
	for (size_t i = 0; i < l->n && ret < 0; i++)
		if (strcmp(l->v[i].id, id) == 0)
			ret = l->v[i].caps[which];
	for (size_t i = 0; i < l->n_avail && ret < 0; i++)
		if (strcmp(l->avail[i].key, id) == 0)
			ret = l->avail[i].caps[which];
	models_put(l);
	return ret;
}

int models_available_text(struct buf *b)
{
	struct model_list *l = models_get(0);
	int ret = 0;

	for (size_t i = 0; i < l->n_avail && ret == 0; i++) {
		char *e;
		if (!models_allowed(l->avail[i].key))
			continue;
		e = names_model_encode(l->avail[i].key);
		if (!e)
			ret = -ENOMEM;
		else if (names_file_ok(e) != 0)
			; /* no file can be named so (nor a line hold it) */
		else if (buf_puts(b, e) != 0 || buf_putc(b, '\n') != 0)
			ret = -ENOMEM;
		free(e);
	}
	models_put(l);
	return ret;
}

void models_refresh_wait(const volatile int *cancel)
{
	unsigned long target;
	struct timespec until;

	pthread_mutex_lock(&lock);
	if (thread_running && !stopping) {
		/* A listing under way may have started before the change: the
		 * one after it counts. */
		target = generation + (refreshing ? 2 : 1);
		wanted = 1;
		pthread_cond_broadcast(&cv);
		while (generation < target && !stopping && !flag_get(cancel)) {
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += 50 * 1000000L;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&cv, &lock, &until);
		}
	}
	pthread_mutex_unlock(&lock);
}

int models_list_failed(void)
{
	int failed;

	pthread_mutex_lock(&lock);
	failed = fetched_at != 0 && last_cls != EC_NONE;
	pthread_mutex_unlock(&lock);
	return failed;
}

enum models_api models_known(const char *id, int *loaded, int *downloaded)
{
	struct model_list *l = models_get(0);
	enum models_api api = l->api;

	*loaded = *downloaded = 0;
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].id, id) == 0)
			*loaded = 1;
	for (size_t i = 0; i < l->n_avail; i++)
		if (strcmp(l->avail[i].key, id) == 0)
			*downloaded = 1;
	models_put(l);
	return api;
}

void models_downloaded_names(char *msg, size_t msglen)
{
	struct model_list *l = models_get(0);
	avail_ids(l, msg, msglen);
	models_put(l);
}

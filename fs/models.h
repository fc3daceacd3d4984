/* models.h - the server's models (loaded instances, downloaded models,
 * capabilities), cached and refreshed in the background.
 *
 * LM Studio 0.4's /api/v1/models lists every downloaded model with its
 * loaded instances and capabilities; older servers have /api/v0/models
 * (a state per model: only "loaded" counts; type "vlm" can see); others
 * only /v1/models, where every listed model counts as loaded and as
 * downloaded. The mock provider has a fixed list. A snapshot is immutable
 * and reference counted.
 *
 * One thread (models_start) does every listing. A reader that finds the
 * list older than models_ttl asks for a refresh and waits at most a short
 * grace (40 ms; 500 ms from mount for the very first listing, when
 * nothing is cached, and after a listing that could not reach the server
 * and failed at once) for it; a listing that takes longer is not waited
 * for: readers get what is cached. A listing that did not reach the
 * server is stale at once. No FUSE request waits on a listing beyond
 * that.
 */
#ifndef LMSFS_MODELS_H
#define LMSFS_MODELS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "errclass.h"

struct config;

enum model_cap { MODEL_CAP_VISION, MODEL_CAP_TOOLS, MODEL_CAP_REASONING, MODEL_CAP__COUNT };

/* Where the list came from. */
enum models_api { MODELS_API_NONE, MODELS_API_V1, MODELS_API_V0, MODELS_API_OPENAI,
		  MODELS_API_MOCK };

struct model {
	char *id;   /* what a request's "model" field takes: a loaded
		       instance's id (v1), else the model's id */
	char *key;  /* the downloaded model's key (= id outside v1) */
	char *json; /* the model's object as the server gave it, pretty
		       printed + "\n" (the content of its file in models/) */
	int caps[MODEL_CAP__COUNT]; /* 1, 0, or -1 when the server does not say */
};

struct model_list {
	int refs;    /* protected by the module lock */
	size_t n;    /* loaded instances */
	struct model *v;
	size_t n_avail; /* downloaded models (id == key) */
	struct model *avail;
	enum models_api api;
};

void models_init(const struct config *cfg);
/* Starts the refresher thread (after daemonizing) and the first listing. */
void models_start(void);
/* Stops the refresher (an HTTP request under way is cancelled). */
void models_cleanup(void);
/* Current snapshot. When it is older than models_ttl (or when force) a
 * refresh is asked for, and waited for at most the grace. Never NULL.
 * Release with models_put. */
struct model_list *models_get(int force);
void models_put(struct model_list *l);
/* What the last refresh found. msg gets "" when reachable. */
void models_status(int *reachable, enum err_class *cls, char *msg, size_t n);
/* Whether a listing is under way: 1 with how long it has run (ms) and
 * how long it may take before it is given up (models_listing_timeout_ms),
 * else 0. Never waits on the listing. */
int models_listing(long long *since_ms);
long models_listing_timeout_ms(const struct config *cfg);

/* Chooses the model for a request: `want` (a `model` file, may be NULL),
 * else default_model, else the single loaded model. An exact id or a unique
 * substring of a loaded id resolves; allowed_models restricts. When no list
 * is known (the server is down or has not answered), a named model is
 * taken as it is: the request is the check. Returns a
 * malloc'd id, or NULL with *cls and a readable msg that lists the loaded
 * models. */
char *models_resolve(const char *want, enum err_class *cls, char *msg,
		     size_t msglen);
/* The same; a name that matches no loaded model but a downloaded one (on
 * servers that list downloaded models: /api/v1, /api/v0) resolves to its
 * key, with *jit set (LM Studio loads it just in time); a name matching
 * nothing downloaded is EC_MODEL_NOT_FOUND and msg lists what is. */
char *models_resolve_jit(const char *want, int *jit, enum err_class *cls, char *msg,
			 size_t msglen);

/* Whether allowed_models lets the model with this id be used (and shown
 * in models/). */
int models_allowed(const char *id);

/* "v1" (/api/v1), "v0", "openai" (/v1 only), "mock", "unknown" (no list). */
const char *models_api_name(enum models_api api);

/* What the cached list says a model can do. id is a loaded instance's id
 * or a downloaded model's key; cap is "vision" (can see images: v1
 * capabilities.vision, v0 type "vlm"), "tool_use" (also
 * "trained_for_tool_use") or "reasoning". Returns 1, 0, or -1 when unknown
 * (no such model, no list, or the server does not say). Never waits on
 * the network. */
int models_capability(const char *id, const char *cap);

/* The name of the list of downloaded models in models/ (never a model's
 * file name: those never start with a dot). */
#define MODELS_AVAILABLE ".available"

/* models/.available: every downloaded model that allowed_models permits,
 * one per line, named as its file in models/ would be (a key that cannot
 * be a file name is left out). Appends to b. */
int models_available_text(struct buf *b);

/* Asks for a listing and waits until one that started after the call is
 * done (or the daemon stops, or *cancel is set). Not for FUSE threads: it
 * waits on HTTP. */
void models_refresh_wait(const volatile int *cancel);
/* Whether the last listing failed (the cached list is empty for it). */
int models_list_failed(void);
/* What the cached list knows of id: whether it is a loaded instance's id,
 * a downloaded model's key; returns where the list came from
 * (MODELS_API_NONE: no list yet). */
enum models_api models_known(const char *id, int *loaded, int *downloaded);
/* The downloaded models allowed_models permits, "a, b" (for messages). */
void models_downloaded_names(char *msg, size_t msglen);

/* --- models_load.c: loading and unloading (LM Studio's /api/v1) ---------
 *
 * Each operation runs in a thread of its own, so that whoever asked (a
 * FUSE request) holds no thread while it waits. What can be known at once
 * is checked before: 0 or -errno with a reason in why (ENOTSUP: the server
 * has no /api/v1; ENOENT: no such downloaded model or loaded instance;
 * EINVAL: bad settings; EACCES: not in allowed_models). Then done(ctx,
 * err, msg) is called from the operation's thread once it ended and the
 * model list shows the change: err 0, or -ENOMEM (the server is out of
 * memory), -ENOENT, -ENOTSUP, -EINTR (cancelled), -EIO (any other
 * failure; the server's message in msg, in the log and in health). */
typedef void (*models_done_fn)(void *ctx, int err, const char *msg);

/* Loads the downloaded model key; settings (may be NULL or empty) is a
 * JSON object of load settings: context_length, eval_batch_size,
 * num_experts (positive integers), flash_attention,
 * offload_kv_cache_to_gpu (booleans). A load without settings of a key
 * whose load without settings is under way joins it (one request; each
 * caller's done is called). *id identifies the caller's wait. */
int models_load_start(const char *key, const char *settings, size_t settings_len,
		      models_done_fn done, void *ctx, uint64_t *id, char *why, size_t whylen);
/* The checks models_load_start makes before it starts (no network). */
int models_load_check(const char *key, char *why, size_t whylen);
/* Unloads the loaded instance instance_id. */
int models_unload_start(const char *instance_id, models_done_fn done, void *ctx, uint64_t *id,
			char *why, size_t whylen);
/* Cancels wait id (a no-op once it ended): its done gets -EINTR; the
 * request itself is abandoned when nobody else waits for it. */
void models_op_cancel(uint64_t id);
/* Cancels every operation and waits until each has called its done. */
void models_ops_stop(void);

#endif

/* models.h - the loaded models, cached and refreshed in the background.
 *
 * LM Studio's /api/v0/models lists downloaded models with a state; only
 * state == "loaded" counts. Servers without /api/v0 fall back to /v1/models,
 * where every listed model counts as loaded. The mock provider has a fixed
 * list. A snapshot is immutable and reference counted.
 *
 * One thread (models_start) does every listing. A reader that finds the
 * list older than models_ttl asks for a refresh and waits at most a short
 * grace (40 ms; 500 ms from mount for the very first listing, when
 * nothing is cached) for it; a listing that takes longer is not waited
 * for: readers get what is cached. No FUSE request waits on a listing
 * beyond that.
 */
#ifndef LMSFS_MODELS_H
#define LMSFS_MODELS_H

#include <stddef.h>

#include "errclass.h"

struct config;

struct model {
	char *id;
	char *json; /* the object as the server gave it, pretty printed + "\n" */
};

struct model_list {
	int refs;    /* protected by the module lock */
	size_t n;
	struct model *v;
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

/* Chooses the model for a request: `want` (a `model` file, may be NULL),
 * else default_model, else the single loaded model. An exact id or a unique
 * substring of a loaded id resolves; allowed_models restricts. When no list
 * is known (the server is down or has not answered), a named model is
 * taken as it is: the request is the check. Returns a
 * malloc'd id, or NULL with *cls and a readable msg that lists the loaded
 * models. */
char *models_resolve(const char *want, enum err_class *cls, char *msg,
		     size_t msglen);

/* Whether allowed_models lets the model with this id be used (and shown
 * in models/). */
int models_allowed(const char *id);

#endif

/* models_int.h - what models.c (the cache, its refresher and the queries)
 * and models_fetch.c (listing the server's models, three API shapes)
 * share. Only models*.c include it. */
#ifndef LMSFS_MODELS_INT_H
#define LMSFS_MODELS_INT_H

#include "models.h"

struct config;

struct model_list *models_list_new(void);
void models_list_free(struct model_list *l);

/* Lists the server's models into l (loaded instances and downloaded
 * models, l->api says from which endpoint). Returns EC_NONE, or the class
 * of the failure with a reason in msg. *cancel (may be NULL) stops an
 * HTTP request under way. */
enum err_class models_fetch(const struct config *cfg, struct model_list *l,
			    const volatile int *cancel, char *msg,
			    size_t msglen);

#endif

/* mock.h - the built-in provider: no server, deterministic answers.
 *
 * It decodes the request body it is given exactly like a server would and
 * produces the same answer structure as a streamed reply, word by word with
 * mock_delay between words, so everything above the transport is shared.
 */
#ifndef LMSFS_MOCK_H
#define LMSFS_MOCK_H

#include "api.h"

struct config;

enum err_class mock_complete(const struct config *cfg, const char *body,
			     struct api_answer *ans, api_text_fn fn, void *ctx,
			     const volatile int *cancel, char *msg, size_t msglen);

#endif

/* mock.c - placeholder until the mock provider lands. */
#include "mock.h"

#include <stdio.h>

enum err_class mock_complete(const struct config *cfg, const char *body,
			     struct api_answer *ans, api_text_fn fn, void *ctx,
			     const volatile int *cancel, char *msg, size_t msglen)
{
	snprintf(msg, msglen, "mock provider not built");
	return EC_PROTOCOL;
}

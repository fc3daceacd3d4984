/* gen_int.h - what gen.c and gen_request.c share. */
#ifndef LMSFS_GEN_INT_H
#define LMSFS_GEN_INT_H

#include "gen.h"

struct api_answer;

/* One request with retries: fills ans, appends its text to stream_fd
 * (may be -1) as it arrives; returns the class of failure. */
enum err_class gen_request(const struct config *cfg, const struct gen_job *job,
			   const char *body, int stream, struct api_answer *ans,
			   struct gen_result *res, int stream_fd);

#endif

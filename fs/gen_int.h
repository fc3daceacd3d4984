/* gen_int.h - what gen.c and gen_request.c share. */
#ifndef LMSFS_GEN_INT_H
#define LMSFS_GEN_INT_H

#include "gen.h"

struct api_answer;
typedef struct cJSON cJSON;

/* Tells the kernel, through the FUSE layer's hook, that file of the
 * answer's conversation (NULL: its directory) was changed (conv_changed,
 * conv.h). */
static inline void gen_changed(const struct gen_job *job, const char *file)
{
	if (job->changed)
		job->changed(job->ctx, file);
}

/* Where one answer's requests write, and what they measured. */
struct gen_out {
	int stream_fd;    /* stream, appended to (-1: none) */
	int reason_fd;    /* reasoning: -1 until the first reasoning opens
			     (creates) it, -2 when that failed; closed by
			     the caller */
	char reason_last; /* the last byte written there */
	int reasoned;     /* the request under way showed reasoning */
	double started, first, ended; /* now_s(): the last attempt's start,
					 its first token (0: none), its end */
};

/* One request with retries: fills ans, appends its text to stream and its
 * reasoning to the reasoning file as they arrive (a "[lmsfs] reasoning"
 * line in stream when it starts); returns the class of failure. */
enum err_class gen_request(const struct config *cfg, const struct gen_job *job,
			   const char *body, int stream, struct api_answer *ans,
			   struct gen_result *res, struct gen_out *out);

/* The lmsfs_stats member of the assistant line of one request: model
 * (the reply's, else `model`), prompt_tokens, completion_tokens,
 * reasoning_tokens, ttft_ms, tokens_per_second, duration_ms,
 * finish_reason and the server's own "stats", each when known. */
cJSON *gen_turn_stats(const struct api_answer *a, const struct gen_out *o,
		      const char *model);

#endif

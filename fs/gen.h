/* gen.h - one answer: request, streaming into `stream`, history, tools.
 *
 * Runs in a conversation's worker thread. Everything it needs from the
 * conversation comes through struct gen_job; it never touches conv.c's
 * locks except through the callbacks. Files are read and written through
 * store.h only. An answer that cannot be stored fails with EC_STORAGE and
 * the errno of the failed write; it is never reported as finished.
 */
#ifndef LMSFS_GEN_H
#define LMSFS_GEN_H

#include <stddef.h>

#include "buf.h"
#include "errclass.h"

struct config;

struct gen_progress {
	long tokens;        /* content chunks so far */
	double started;     /* now_s() at start */
	double first_token; /* now_s() of the first token, 0 before */
	int loading;        /* the model is loaded just in time: no byte of
			       the answer yet (atomic) */
};

/* The value of *gen_job.cancel when the daemon stops (1: the user's
 * cancel): the answer ends as interrupted, not cancelled. */
#define GEN_STOPPING 2

struct gen_job {
	int dirfd;                 /* the conversation directory (survives mv) */
	const char *conv_name;     /* for logs and tools */
	const volatile int *cancel;
	struct gen_progress *progress; /* updated as tokens arrive (racy read ok) */
	void (*hist_lock)(void *ctx);
	void (*hist_unlock)(void *ctx);
	void (*hist_replaced)(void *ctx); /* history lock held: lines were cut */
	/* file (NULL: the directory) was changed: conv_changed (conv.h) */
	void (*changed)(void *ctx, const char *file);
	void *ctx;
};

struct gen_result {
	enum err_class err;  /* EC_NONE on success */
	int sys_errno;       /* EC_STORAGE: the errno of the failed write */
	int unmarked;        /* failed, and its marked line could not be stored */
	char errmsg[512];
	struct buf text;     /* final answer text */
	char model[256];
	double ttft;         /* seconds, -1 unknown */
	double tps;          /* tokens per second, -1 unknown */
	long prompt_tokens, completion_tokens;
	char finish[32];
	int attempts;        /* requests sent */
	int retries;
};

void gen_init(const struct config *cfg);
void gen_result_init(struct gen_result *r);
void gen_result_free(struct gen_result *r);
/* Generates the answer to the history in job->dirfd/messages.jsonl. */
void gen_run(const struct gen_job *job, struct gen_result *r);

#endif

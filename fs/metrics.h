/* metrics.h - process-wide counters, rendered as Prometheus text.
 *
 * Counters are updated with relaxed atomics from any thread; rendering
 * reads them without a lock (each value is individually consistent).
 */
#ifndef LMSFS_METRICS_H
#define LMSFS_METRICS_H

#include <stddef.h>
#include <time.h>

#include "buf.h"
#include "errclass.h"

enum tool_outcome { TOOL_OK, TOOL_FAILED, TOOL_TIMEOUT, TOOL_UNKNOWN, TOOL__COUNT };

void metrics_request(void);
void metrics_failure(enum err_class c);
/* A write to disk failed (an answer or a user's history write): counted as
 * class "storage", the reason kept for health. */
void metrics_storage_failure(const char *why);
/* The last failure of any kind (an answer, a refused write to disk). */
struct metrics_last {
	enum err_class cls;
	char conv[256]; /* "" when not about one conversation */
	char why[512];
	time_t at;      /* 0: none yet */
};
void metrics_note_failure(enum err_class c, const char *conv, const char *why);
/* 1 and *out when there was one. */
int metrics_last_failure(struct metrics_last *out);
/* Storage failures so far; the last reason into why. */
long metrics_storage_last(char *why, size_t len);
void metrics_retry(void);
void metrics_tokens(long in, long out);
void metrics_ttft(double seconds);
void metrics_gen_time(double seconds);
void metrics_tool(enum tool_outcome o);
void metrics_active(int delta);  /* generations running */
void metrics_queued(int delta);  /* prompts waiting */
void metrics_answer(int ok);
/* Tokens one request used, by the model that answered (negative: not
 * known). The first METRICS_MAX_MODELS models get their own series, the
 * rest are counted under model="other". */
#define METRICS_MAX_MODELS 64
void metrics_model_tokens(const char *model, long in, long out, long reasoning);
/* Appends the Prometheus text exposition to b. */
int metrics_render(struct buf *b);

#endif

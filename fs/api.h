/* api.h - the OpenAI / LM Studio chat-completions JSON.
 *
 * Builds request bodies and decodes answers, streamed (one SSE event at a
 * time) or whole, into one `struct api_answer`. Liberal in what it accepts:
 * missing role or finish_reason, error members as text or object, usage
 * chunks with empty choices, reasoning deltas, tool-call deltas assembled by
 * index, the legacy function_call form. No I/O.
 *
 * Some servers cut JSON strings between UTF-16 units, so that one event's
 * text ends in "\ud83d" and the next one's starts with "\ude00". Halves
 * split that way (content and tool-call arguments) are joined into the
 * real character; a half without its partner becomes U+FFFD, never a
 * failure. A high half at the end of a piece is held back until the next
 * piece, a finish_reason, [DONE] or an error decides what it was.
 */
#ifndef LMSFS_API_H
#define LMSFS_API_H

#include <stddef.h>

#include "buf.h"
#include "errclass.h"
#include "think.h"

struct config;
typedef struct cJSON cJSON;

/* Calls one reply may hold (a higher index is a protocol failure); only
 * the first TOOLRUN_MAX_CALLS run, the rest are answered with an error. */
#define API_MAX_TOOL_CALLS 128

struct api_tool_call {
	char *id;
	char *name;
	struct buf args; /* JSON text of the arguments, assembled */
	unsigned hi;     /* a UTF-16 high surrogate that ended the last
			  * fragment, held for the next one (0: none) */
};

struct api_answer {
	struct buf content;   /* the answer text so far */
	struct api_tool_call calls[API_MAX_TOOL_CALLS];
	int n_calls;          /* highest index seen + 1 */
	int legacy_call;      /* calls[0] came as function_call */
	char finish[32];      /* finish_reason, "" if none */
	long prompt_tokens, completion_tokens; /* -1 when not sent */
	double tps, ttft;     /* server's stats, -1 when not sent */
	int done;             /* [DONE] seen */
	int chunks;           /* content-bearing chunks seen */
	enum err_class err;   /* an error member arrived */
	char errmsg[512];
	unsigned hi;          /* a UTF-16 high surrogate that ended the last
			       * content piece, not yet shown (0: none) */
	/* Reasoning (delta or message "reasoning_content" / "reasoning",
	 * and with split_think a leading <think> block of the content). */
	struct buf reasoning; /* kept up to its cap; what is over is only shown */
	unsigned rhi;         /* like hi, for reasoning */
	int (*reason_fn)(void *ctx, const char *text, size_t len);
			      /* set by the caller after init: called with the
			       * text callback's ctx for each reasoning piece */
	int split_think;      /* set by the caller: split_think_tags */
	struct think think;
	long reasoning_tokens; /* usage.completion_tokens_details, -1 unknown */
	cJSON *stats;         /* the server's "stats" object (a copy), NULL */
	char model[256];      /* the reply's "model", "" when not sent */
};

/* Called with each new piece of visible text (content, not reasoning). */
typedef int (*api_text_fn)(void *ctx, const char *text, size_t len);

void api_answer_init(struct api_answer *a);
void api_answer_free(struct api_answer *a);

/* Decodes one SSE data payload. Returns 0, or -EPROTO for a payload that is
 * not JSON (a.err/errmsg set), or the text callback's non-zero value. */
int api_feed_event(struct api_answer *a, const char *data, size_t len,
		   api_text_fn fn, void *ctx);
/* Decodes a whole non-streamed completion. Same returns. */
int api_decode_completion(struct api_answer *a, const char *body, size_t len,
			  api_text_fn fn, void *ctx);

/* The request body. `messages` is the text of the messages array's
 * elements ("{...},{...}", copied verbatim). `params` (the conversation's
 * params.json object, may be NULL) is merged last, verbatim. `tools` (may be
 * NULL) is an array of OpenAI tool objects, taken over. Returns a malloc'd
 * JSON string or NULL. *stream_out says whether the final body streams. */
char *api_build_request(const struct config *cfg, const char *model,
			const char *messages, const cJSON *params, cJSON *tools,
			int *stream_out);

/* The same, built in the storage of msgs (the messages' text, taken
 * over and left empty), so that a large request (images) is never copied:
 * the body is malloc'd, NULL when out of memory. */
char *api_build_request_buf(const struct config *cfg, const char *model, struct buf *msgs,
			    const cJSON *params, cJSON *tools, int *stream_out);

/* The assistant message for the history: content (or null) plus
 * tool_calls / function_call as the API expects them back, and the
 * reasoning as "reasoning_content" when there was any. `status`, when not
 * NULL, marks an unfinished answer ("cancelled", "failed: ...") in an
 * "lmsfs_status" member; `stats` (may be NULL) is copied into an
 * "lmsfs_stats" member; lmsfs_* members are stripped before anything is
 * sent. Returns a malloc'd one-line JSON string. */
char *api_assistant_line(const struct api_answer *a, const char *status,
			 const cJSON *stats);

#endif

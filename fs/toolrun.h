/* toolrun.h - running one tool call with limits.
 *
 * A tool runs without a shell and never through the mount: tools/NAME is
 * spawned directly, in its own process group, with tools/ as its working
 * directory, only descriptors 0-2 open (the daemon's sockets and files
 * stay home), a clean environment (PATH, HOME, LANG, LC_ALL, TZ,
 * LMSFS_TOOLS_*, LMSFS_TOOL_CALL_ID, LMSFS_CONVERSATION, LMSFS_TOOL_NAME and
 * one LMSFS_ARG_<name> per short scalar argument) and the JSON arguments on
 * stdin. Its output is capped at tool_output_max; after tool_timeout_ms its
 * process group gets SIGTERM, a second later its whole tree SIGKILL. When
 * it exits, or the answer is cancelled, or the daemon stops, everything it
 * started is killed at once - its group and any escapee that called
 * setsid() (a subreaper shepherd finds them: proctree.h).
 *
 * Only a call to a tool offered in the request that made it runs, and only
 * the first TOOLRUN_MAX_CALLS calls of one reply: the caller says which
 * (enum toolrun_gate); a refused call is answered with an error text.
 *
 * Ownership: toolrun_call() returns a malloc'd line the caller frees with
 * free().
 */
#ifndef LMSFS_TOOLRUN_H
#define LMSFS_TOOLRUN_H

struct config;

/* At most this many tool calls of one reply run; the rest are answered
 * with an error text for the model (README, "tools/"). */
#define TOOLRUN_MAX_CALLS 32
/* A scalar argument reaches the environment (LMSFS_ARG_<name>) only when
 * its value is at most TOOLRUN_ENV_ARG_MAX bytes and all of them together
 * stay within TOOLRUN_ENV_ARGS_MAX; the others are left out (no error):
 * the whole arguments JSON is always on stdin. */
#define TOOLRUN_ENV_ARG_MAX 4096
#define TOOLRUN_ENV_ARGS_MAX (64 * 1024)

/* Whether a call may run, as the caller decided. */
enum toolrun_gate {
	TOOLRUN_OFFERED,     /* the request offered the tool: it may run */
	TOOLRUN_NOT_OFFERED, /* not offered in the request that made the call */
	TOOLRUN_OVER_LIMIT,  /* beyond TOOLRUN_MAX_CALLS in its reply */
};

/* Keeps cfg (which must outlive the module) for the limits. Call after
 * tooldef_init(). */
void toolrun_init(const struct config *cfg);
/* Runs one call (unless `gate` refuses it: then it is answered with an
 * error and nothing runs) and returns the history line for its result (a
 * "tool" or, for legacy calls, a "function" message), malloc'd. Marked
 * lines go to the conversation's stream through conv_dirfd. Errors become
 * text for the model: NULL only when out of memory. When *cancel (may be
 * NULL) becomes nonzero the tool's tree is killed at once. */
char *toolrun_call(const char *name, const char *args, const char *call_id,
		   const char *conv, int conv_dirfd, int legacy, enum toolrun_gate gate,
		   const volatile int *cancel);

#endif

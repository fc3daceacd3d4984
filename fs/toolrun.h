/* toolrun.h - running one tool call with limits.
 *
 * A tool runs without a shell and never through the mount: tools/NAME is
 * spawned directly, in its own process group, with tools/ as its working
 * directory, a clean environment (PATH, HOME, LANG, LC_ALL, TZ,
 * LMSFS_TOOLS_*, LMSFS_TOOL_CALL_ID, LMSFS_CONVERSATION, LMSFS_TOOL_NAME and
 * one LMSFS_ARG_<name> per argument) and the JSON arguments on stdin. Its
 * output is capped at tool_output_max; after tool_timeout_ms it gets
 * SIGTERM, a second later SIGKILL, and whatever it left in its process
 * group is killed when it exits.
 *
 * Ownership: toolrun_call() returns a malloc'd line the caller frees with
 * free().
 */
#ifndef LMSFS_TOOLRUN_H
#define LMSFS_TOOLRUN_H

struct config;

/* Keeps cfg (which must outlive the module) for the limits. Call after
 * tooldef_init(). */
void toolrun_init(const struct config *cfg);
/* Runs one call and returns the history line for its result (a "tool" or,
 * for legacy calls, a "function" message), malloc'd. Marked lines go to the
 * conversation's stream through conv_dirfd. Errors become text for the
 * model: NULL only when out of memory. */
char *toolrun_call(const char *name, const char *args, const char *call_id,
		   const char *conv, int conv_dirfd, int legacy);

#endif

/* mcp.h - MCP servers from tools/mcp.json: their tools offered to the model
 * next to the executables of tools/, and calls to them.
 *
 * Each stdio server of mcp.json (mcp_conf.h) is started on first need - a
 * request that offers tools - not at mount: initialize (protocol version
 * negotiated), notifications/initialized, tools/list. One process per
 * server serves every conversation; requests are multiplexed by id and a
 * reader thread per server takes the answers, notifications and stderr
 * (to the log). Each tool is offered as the function SERVER__TOOL; its
 * inputSchema is the function's parameters. A server that exits is
 * restarted on its next use (with a growing delay after repeated exits);
 * a call in flight then fails with a readable error. tools/list_changed
 * and changes to mcp.json refresh the list. Servers start in tools/ with
 * mcp.json's "env" plus PATH, HOME and LANG, only fds 0-2, under a
 * shepherd (proctree.h); mcp_shutdown() closes their stdin, waits a
 * little, then kills their trees.
 *
 * Locks: mcp_lock (the server list and the configuration) -> a server's
 * wlock (its stdin and the lines queued for it) -> a server's lock (its state). All are
 * leaves with respect to every other lock of the daemon: nothing else is
 * called with them held but the log.
 *
 * Ownership: mcp_definitions() returns an array the caller frees with
 * cJSON_Delete(); mcp_call() and mcp_status() return malloc'd strings the
 * caller frees with free().
 */
#ifndef LMSFS_MCP_H
#define LMSFS_MCP_H

#include <stddef.h>

struct config;
struct buf;
typedef struct cJSON cJSON;

/* Keeps cfg (limits) and the tools/ directory. Call after tooldef_init. */
void mcp_init(const struct config *cfg);
/* The daemon is stopping: every wait for a server (a start, a call) gives
 * up at once. Call before stopping the conversations. */
void mcp_interrupt(void);
/* Stops every server (stdin closed, a short wait, then the tree killed). */
void mcp_shutdown(void);
/* Checks mcp.json text as a write would leave it: 0, or -EINVAL and why. */
int mcp_check(const char *text, size_t len, char *why, size_t whylen);
/* A write of mcp.json was refused (for tools/.status), or accepted
 * (why NULL: forget the refusal and read the file again). */
void mcp_note_write(const char *why);
/* The function definitions of the MCP tools for a request, narrowed by
 * params' "lmsfs_tools" (a server's name allows all its tools); starts
 * servers as needed (waits at most tool_timeout for each). Function
 * names in `taken` (may be NULL: executables of tools/) are skipped; a
 * start is given up when *cancel (may be NULL) becomes nonzero. An
 * array, maybe empty; NULL only when out of memory. */
cJSON *mcp_definitions(const cJSON *params, const cJSON *taken, const volatile int *cancel);
/* 1 when name is SERVER__TOOL of a configured server (the tool may be
 * unknown: mcp_call says so). */
int mcp_owns(const char *name);
/* Outcome of mcp_call. */
enum mcp_outcome { MCP_OK, MCP_TOOL_ERROR, MCP_FAILED, MCP_TIMEOUT, MCP_CANCELLED };
/* Calls SERVER__TOOL with args (a JSON object text); returns the text for
 * the model (an "error: ..." text unless MCP_OK), capped at
 * tool_output_max (*truncated set). When *cancel becomes nonzero the call
 * is abandoned (notifications/cancelled). */
char *mcp_call(const char *name, const char *args, const volatile int *cancel,
	       enum mcp_outcome *outcome, int *truncated);
/* Appends tools/.status's lines about mcp.json, its servers and tools. */
void mcp_status(struct buf *b);
/* For health: MCP calls and failed calls so far. */
void mcp_counts(long *calls, long *failures);

#endif

/* tooldef.h - which executables in tools/ the model may call, and how each
 * is described to it.
 *
 * Discovery reads state_dir/tools on every request (a directory listing is
 * cheap and means a copied script counts at once). A file counts when its
 * name is a valid tool name (names_tool_ok), it is a regular file (not a
 * symlink) and it is executable; NAME.json, or else a comment header in
 * the script, describes it.
 *
 * Ownership: tooldef_definitions() returns a tree the caller frees with
 * cJSON_Delete(); tooldef_status() returns a malloc'd string the caller
 * frees with free(); tooldef_offered_names() returns an array the caller
 * frees with cJSON_Delete(). The directory descriptor and path belong to this
 * module and stay open for the life of the process: callers never close
 * or free them. tooldef_why_not() returns a static string.
 */
#ifndef LMSFS_TOOLDEF_H
#define LMSFS_TOOLDEF_H

struct config;
typedef struct cJSON cJSON;

/* Creates state_dir/tools when missing and opens it. 0 or -errno. cfg must
 * outlive the module. */
int tooldef_init(const struct config *cfg, int state_dirfd);
/* The open tools/ directory (-1 before tooldef_init). */
int tooldef_dir_fd(void);
/* The absolute path of tools/ ("" before tooldef_init). */
const char *tooldef_dir_path(void);
/* NULL when tools/NAME is a tool that may run; otherwise why not, as text
 * for tools/.status ("not executable (chmod +x)", ...). */
const char *tooldef_why_not(const char *name);
/* The tool definitions for a request (array of {"type":"function",
 * "function":{...}}), narrowed by the conversation's params (may be NULL):
 * "lmsfs_tools": [names] allow-list, or false for none. NULL: no tools.
 * Starting MCP servers for it is given up when *cancel (may be NULL)
 * becomes nonzero. */
cJSON *tooldef_definitions(const cJSON *params, const volatile int *cancel);
/* The names a request offers, to hold the model's calls against: the
 * functions of `defs` (what tooldef_definitions gave, may be NULL), and,
 * when params.json brings its own "tools" or "functions" (merged over
 * lmsfs's), only those also named there. An array of strings, never NULL
 * unless out of memory (an empty one: nothing may run). */
cJSON *tooldef_offered_names(const cJSON *defs, const cJSON *params);
/* 1 when `name` is in `offered` (from tooldef_offered_names). */
int tooldef_is_offered(const cJSON *offered, const char *name);
/* Text for tools/.status: which files count, which are skipped and why. */
char *tooldef_status(void);

#endif

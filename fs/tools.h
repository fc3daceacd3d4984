/* tools.h - executables in tools/ that the model may call.
 *
 * Discovery reads state_dir/tools on every request (a directory listing is
 * cheap and means a copied script counts at once). Running a tool never
 * goes through a shell or through the mount.
 */
#ifndef LMSFS_TOOLS_H
#define LMSFS_TOOLS_H

#include "buf.h"

struct config;
typedef struct cJSON cJSON;

int tools_init(const struct config *cfg, int state_dirfd);
int tools_root_fd(void);
/* The tool definitions for a request (array of {"type":"function",
 * "function":{...}}), narrowed by the conversation's params (may be NULL):
 * "lmsfs_tools": [names] allow-list, or false for none. NULL: no tools. */
cJSON *tools_definitions(const cJSON *params);
/* Runs one call and returns the history line for its result (a "tool" or,
 * for legacy calls, a "function" message), malloc'd. Marked lines go to the
 * conversation's stream through dirfd. Never fails: errors become text for
 * the model. */
char *tools_call(const char *name, const char *args, const char *call_id,
		 const char *conv, int conv_dirfd, int legacy);
/* Text for tools/.status: which files count, which are skipped and why. */
char *tools_status(void);

#endif

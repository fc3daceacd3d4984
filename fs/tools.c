/* tools.c - placeholder until the tools module lands. */
#include "tools.h"

#include <stdlib.h>
#include <string.h>

int tools_init(const struct config *cfg, int state_dirfd) { return 0; }
int tools_root_fd(void) { return -1; }
int tools_enabled(void) { return 0; }
cJSON *tools_definitions(const cJSON *params) { return NULL; }
char *tools_call(const char *name, const char *args, const char *call_id,
		 const char *conv, int conv_dirfd, int legacy) { return NULL; }
char *tools_status(void) { return strdup(""); }

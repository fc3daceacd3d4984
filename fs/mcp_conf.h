/* mcp_conf.h - tools/mcp.json: the MCP servers to run, as LM Studio,
 * Claude Desktop and Cursor write the file:
 *
 *   {"mcpServers": {"NAME": {"command": "npx", "args": ["-y", "pkg"],
 *                            "env": {"K": "V"}},
 *                   "remote": {"url": "https://...", "headers": {...}}}}
 *
 * A file that is not of this shape is refused as a whole (mcp_conf_parse
 * says why). An entry that is well formed but cannot be used - a "url"
 * (remote) server, or a name that cannot prefix a function name - is kept
 * with skip set to the reason, for tools/.status.
 *
 * Ownership: mcp_conf_parse() fills a struct the caller frees with
 * mcp_conf_free(); every string in it is owned by it.
 */
#ifndef LMSFS_MCP_CONF_H
#define LMSFS_MCP_CONF_H

#include <stddef.h>

/* Server names (the mcp.json keys) that can prefix a function name: 1 to
 * MCP_NAME_MAX of A-Z a-z 0-9 _ - . */
#define MCP_NAME_MAX 60

struct mcp_conf_server {
	char *name;
	char *skip;     /* non-NULL: not run, and why */
	char *command;
	char **argv;    /* NULL-terminated; argv[0] is command */
	char **env;     /* NULL-terminated "K=V" from "env" */
	char *sig;      /* the entry as JSON text: equal sig, same server */
};

struct mcp_conf {
	size_t n;
	struct mcp_conf_server *v;
};

/* Parses mcp.json text (len bytes). 0, or -EINVAL with the reason in why.
 * Empty (or blank) text is a file with no servers. */
int mcp_conf_parse(const char *text, size_t len, struct mcp_conf *out, char *why, size_t whylen);
void mcp_conf_free(struct mcp_conf *c);
/* Copies one entry into dst (0, or -ENOMEM). */
int mcp_conf_server_copy(struct mcp_conf_server *dst, const struct mcp_conf_server *src);
void mcp_conf_server_free(struct mcp_conf_server *s);

#endif

/* tooldef.c - finds the tools in tools/ and describes them to the model. */

/* Script header syntax (any comment lines among the first 64 lines):
 *   # @description Current date and time in a time zone
 *   # @param tz string required IANA time zone, e.g. Europe/Paris
 *   # @param unit enum:celsius|fahrenheit optional Temperature unit
 * Types: string, number, integer, boolean, enum:A|B|C (a string enum).
 * NAME.json, when present, wins over the header: a function object
 * ({"name","description","parameters"}) or {"function":{...}}.
 */
#include "tooldef.h"

#include "buf.h"
#include "config.h"
#include "fsio.h"
#include "log.h"
#include "mcp.h"
#include "names.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set once by tooldef_init before any thread starts; read-only after. */
static int dir_fd = -1;
static char dir_path[4096];

int tooldef_init(const struct config *c, int state_dirfd)
{
	if (mkdirat(state_dirfd, "tools", 0700) < 0 && errno != EEXIST)
		return -errno;
	dir_fd = openat(state_dirfd, "tools", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (dir_fd < 0)
		return -errno;
	snprintf(dir_path, sizeof(dir_path), "%s/tools", c->state_dir);
	return 0;
}

int tooldef_dir_fd(void)
{
	return dir_fd;
}

const char *tooldef_dir_path(void)
{
	return dir_path;
}

const char *tooldef_why_not(const char *name)
{
	struct stat st;

	if (!names_tool_ok(name))
		return "name must be 1-64 of A-Z a-z 0-9 _ -";
	if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
		return "not a regular file";
	if (!(st.st_mode & 0111))
		return "not executable (chmod +x)";
	return NULL;
}

/* --- definitions ---------------------------------------------------------- */

static cJSON *schema_for_type(const char *type)
{
	cJSON *p = cJSON_CreateObject();
	if (strncmp(type, "enum:", 5) == 0) {
		cJSON *e = cJSON_AddArrayToObject(p, "enum");
		char *copy = strdup(type + 5), *save = NULL, *tok;
		cJSON_AddStringToObject(p, "type", "string");
		if (!copy) {
			cJSON_Delete(p);
			return NULL;
		}
		for (tok = strtok_r(copy, "|", &save); tok; tok = strtok_r(NULL, "|", &save))
			cJSON_AddItemToArray(e, cJSON_CreateString(tok));
		free(copy);
		/* "type" first, then "enum", as people write them. */
		cJSON_DetachItemViaPointer(p, e);
		cJSON_AddItemToObject(p, "enum", e);
		return p;
	}
	if (strcmp(type, "string") && strcmp(type, "number") && strcmp(type, "integer") &&
	    strcmp(type, "boolean")) {
		cJSON_Delete(p);
		return NULL;
	}
	cJSON_AddStringToObject(p, "type", type);
	return p;
}

/* Reads the header of a script; returns a function object, NULL when the
 * script has no header, or sets why when the header is malformed. */
static cJSON *from_header(const char *name, char *why, size_t whylen)
{
	char *data = NULL;
	size_t len;
	cJSON *fn = NULL, *props, *req, *params;
	int found = 0, lineno = 0;
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t got;

	if (fd < 0)
		return NULL;
	data = malloc(16384 + 1);
	got = data ? read(fd, data, 16384) : -1;
	close(fd);
	if (got <= 0) {
		free(data);
		return NULL;
	}
	len = (size_t)got;
	data[len] = '\0';
	fn = cJSON_CreateObject();
	cJSON_AddStringToObject(fn, "name", name);
	params = cJSON_CreateObject();
	cJSON_AddStringToObject(params, "type", "object");
	props = cJSON_AddObjectToObject(params, "properties");
	req = cJSON_CreateArray();
	for (char *line = data, *next; line && *line && lineno < 64; line = next, lineno++) {
		char *p;
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p != '#')
			continue;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "@description", 12) == 0) {
			found = 1;
			cJSON_DeleteItemFromObject(fn, "description");
			cJSON_AddStringToObject(fn, "description", trim(p + 12));
		} else if (strncmp(p, "@param", 6) == 0) {
			char pname[65], ptype[200], flag[16];
			int off = 0;
			cJSON *schema;
			found = 1;
			if (sscanf(p + 6, " %64s %199s %15s %n", pname, ptype, flag, &off) < 3) {
				snprintf(why, whylen, "line %d: expected '# @param NAME TYPE required|optional DESCRIPTION'",
					 lineno + 1);
				goto bad;
			}
			if (strcmp(flag, "required") && strcmp(flag, "optional")) {
				snprintf(why, whylen, "line %d: '%s' is neither required nor optional",
					 lineno + 1, flag);
				goto bad;
			}
			schema = schema_for_type(ptype);
			if (!schema) {
				snprintf(why, whylen,
					 "line %d: unknown type '%s' (string, number, integer, boolean, enum:A|B)",
					 lineno + 1, ptype);
				goto bad;
			}
			if (off > 0 && *trim(p + 6 + off))
				cJSON_AddStringToObject(schema, "description", trim(p + 6 + off));
			cJSON_AddItemToObject(props, pname, schema);
			if (!strcmp(flag, "required"))
				cJSON_AddItemToArray(req, cJSON_CreateString(pname));
		}
	}
	free(data);
	if (!found) {
		cJSON_Delete(fn);
		cJSON_Delete(params);
		cJSON_Delete(req);
		return NULL;
	}
	if (!cJSON_GetObjectItemCaseSensitive(fn, "description"))
		cJSON_AddStringToObject(fn, "description", name);
	if (cJSON_GetArraySize(req) > 0)
		cJSON_AddItemToObject(params, "required", req);
	else
		cJSON_Delete(req);
	cJSON_AddItemToObject(fn, "parameters", params);
	return fn;
bad:
	free(data);
	cJSON_Delete(fn);
	cJSON_Delete(params);
	cJSON_Delete(req);
	return NULL;
}

static cJSON *from_json_file(const char *name, char *why, size_t whylen, int *present)
{
	char file[128], *data = NULL;
	size_t len;
	cJSON *root, *fn, *n, *p, *d;

	*present = 0;
	snprintf(file, sizeof(file), "%s.json", name);
	if (fsio_read(dir_fd, file, 1u << 20, &data, &len) != 0)
		return NULL;
	*present = 1;
	root = cJSON_Parse(data);
	free(data);
	if (!cJSON_IsObject(root)) {
		snprintf(why, whylen, "%s is not a JSON object", file);
		cJSON_Delete(root);
		return NULL;
	}
	fn = cJSON_GetObjectItemCaseSensitive(root, "function");
	if (cJSON_IsObject(fn))
		fn = cJSON_DetachItemFromObjectCaseSensitive(root, "function");
	else {
		fn = root;
		root = NULL;
	}
	cJSON_Delete(root);
	n = cJSON_GetObjectItemCaseSensitive(fn, "name");
	p = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
	d = cJSON_GetObjectItemCaseSensitive(fn, "description");
	if (n && (!cJSON_IsString(n) || strcmp(n->valuestring, name) != 0)) {
		snprintf(why, whylen, "%s: \"name\" must be \"%s\"", file, name);
		goto bad;
	}
	if (p && !cJSON_IsObject(p)) {
		snprintf(why, whylen, "%s: \"parameters\" must be a JSON Schema object", file);
		goto bad;
	}
	if (d && !cJSON_IsString(d)) {
		snprintf(why, whylen, "%s: \"description\" must be a string", file);
		goto bad;
	}
	if (!n)
		cJSON_AddStringToObject(fn, "name", name);
	if (!p) {
		p = cJSON_AddObjectToObject(fn, "parameters");
		cJSON_AddStringToObject(p, "type", "object");
		cJSON_AddObjectToObject(p, "properties");
	}
	return fn;
bad:
	cJSON_Delete(fn);
	return NULL;
}

/* Builds every definition; report (may be NULL) collects which files count
 * and which are skipped, and why. */
static cJSON *scan(struct buf *report)
{
	/* Its own open file: a dup would share the read position with
	 * concurrent scans (several conversations asking at once). */
	int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	cJSON *arr = cJSON_CreateArray();

	if (!d) {
		if (fd >= 0)
			close(fd);
		return arr;
	}
	while ((de = readdir(d))) {
		const char *why_not;
		char why[300] = "";
		cJSON *fn = NULL;
		int present;
		size_t nl = strlen(de->d_name);

		if (de->d_name[0] == '.')
			continue;
		if (nl > 5 && strcmp(de->d_name + nl - 5, ".json") == 0)
			continue; /* described with its tool */
		why_not = tooldef_why_not(de->d_name);
		if (why_not) {
			if (report)
				buf_printf(report, "skipped %s: %s\n", de->d_name, why_not);
			continue;
		}
		fn = from_json_file(de->d_name, why, sizeof(why), &present);
		if (!fn && !present)
			fn = from_header(de->d_name, why, sizeof(why));
		if (!fn && why[0]) {
			log_warnx("tool %s skipped: %s", de->d_name, why);
			if (report)
				buf_printf(report, "skipped %s: %s\n", de->d_name, why);
			continue;
		}
		if (!fn) {
			cJSON *p;
			fn = cJSON_CreateObject();
			cJSON_AddStringToObject(fn, "name", de->d_name);
			cJSON_AddStringToObject(fn, "description", de->d_name);
			p = cJSON_AddObjectToObject(fn, "parameters");
			cJSON_AddStringToObject(p, "type", "object");
			cJSON_AddObjectToObject(p, "properties");
		}
		if (report)
			buf_printf(report, "ok %s: %s\n", de->d_name,
				   present ? "described by its .json" : "described by its header or generic");
		cJSON *t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "type", "function");
		cJSON_AddItemToObject(t, "function", fn);
		cJSON_AddItemToArray(arr, t);
	}
	closedir(d);
	return arr;
}

cJSON *tooldef_definitions(const cJSON *params, const volatile int *cancel)
{
	const cJSON *allow = cJSON_GetObjectItemCaseSensitive(params, "lmsfs_tools");
	cJSON *arr, *t, *next;

	if (cJSON_IsFalse(allow))
		return NULL;
	arr = scan(NULL);
	if (cJSON_IsArray(allow)) {
		for (t = arr->child; t; t = next) {
			const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
			const char *n = cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring;
			const cJSON *a;
			int keep = 0;
			next = t->next;
			cJSON_ArrayForEach(a, allow)
			if (cJSON_IsString(a) && strcmp(a->valuestring, n) == 0)
				keep = 1;
			if (!keep)
				cJSON_Delete(cJSON_DetachItemViaPointer(arr, t));
		}
	}
	/* Then the tools of the MCP servers (an executable's name wins). */
	{
		cJSON *m = mcp_definitions(params, arr, cancel), *t2;
		while (m && (t2 = cJSON_DetachItemFromArray(m, 0)))
			cJSON_AddItemToArray(arr, t2);
		cJSON_Delete(m);
	}
	if (cJSON_GetArraySize(arr) == 0) {
		cJSON_Delete(arr);
		return NULL;
	}
	return arr;
}

/* The function name of a tool object ({"type":"function","function":{...}})
 * or of a bare function object ({"name":...}, the legacy form). */
static const char *function_name(const cJSON *t)
{
	const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(fn) ? fn : t, "name");
	return cJSON_IsString(n) ? n->valuestring : NULL;
}

/* 1 when some element of arr names `name`. */
static int names_function(const cJSON *arr, const char *name)
{
	const cJSON *t;
	cJSON_ArrayForEach(t, arr)
	{
		const char *n = function_name(t);
		if (n && strcmp(n, name) == 0)
			return 1;
	}
	return 0;
}

cJSON *tooldef_offered_names(const cJSON *defs, const cJSON *params)
{
	const cJSON *own_tools = cJSON_GetObjectItemCaseSensitive(params, "tools");
	const cJSON *own_fns = cJSON_GetObjectItemCaseSensitive(params, "functions");
	cJSON *out = cJSON_CreateArray();
	const cJSON *t;

	if (!out)
		return NULL;
	cJSON_ArrayForEach(t, defs)
	{
		const char *n = function_name(t);
		if (!n)
			continue;
		/* params.json's own list replaces lmsfs's in the request: a
		 * tool is offered only if it is in both (anything else in
		 * params.json's list has no executable behind it). */
		if (own_tools && !names_function(own_tools, n))
			continue;
		if (own_fns && !names_function(own_fns, n))
			continue;
		cJSON_AddItemToArray(out, cJSON_CreateString(n));
	}
	return out;
}

int tooldef_is_offered(const cJSON *offered, const char *name)
{
	const cJSON *n;
	cJSON_ArrayForEach(n, offered)
	if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
		return 1;
	return 0;
}

char *tooldef_status(void)
{
	struct buf b;
	cJSON *arr;
	buf_init(&b, 1u << 20);
	arr = scan(&b);
	cJSON_Delete(arr);
	mcp_status(&b);
	if (b.len == 0)
		buf_puts(&b, "no tools: copy an executable (or an mcp.json) into tools/\n");
	return buf_take(&b);
}

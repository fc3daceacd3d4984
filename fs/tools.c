/* tools.c - tool discovery (tools/NAME, NAME.json, script headers) and
 * running one tool call with limits: no shell, own process group, clean
 * environment, timeout (TERM then KILL to the group), capped output.
 *
 * Script header syntax (any comment lines among the first 64 lines):
 *   # @description Current date and time in a time zone
 *   # @param tz string required IANA time zone, e.g. Europe/Paris
 *   # @param unit enum:celsius|fahrenheit optional Temperature unit
 * Types: string, number, integer, boolean, enum:A|B|C (a string enum).
 */
#include "tools.h"

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "fsio.h"
#include "names.h"
#include "store.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const struct config *cfg;
static int tools_fd = -1;
static char tools_path[4096];

int tools_init(const struct config *c, int state_dirfd)
{
	cfg = c;
	if (mkdirat(state_dirfd, "tools", 0700) < 0 && errno != EEXIST)
		return -errno;
	tools_fd = openat(state_dirfd, "tools", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (tools_fd < 0)
		return -errno;
	snprintf(tools_path, sizeof(tools_path), "%s/tools", c->state_dir);
	return 0;
}

int tools_root_fd(void)
{
	return tools_fd;
}

/* Makes text valid UTF-8 in place (invalid bytes become '?'). */
static void utf8_sanitize(char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
		int ok = len > 0 && i + len <= n;
		for (size_t k = 1; ok && k < len; k++)
			ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
		if (ok && c == 0)
			ok = 0;
		if (!ok) {
			s[i++] = '?';
			continue;
		}
		i += len;
	}
}

/* --- definitions ------------------------------------------------------------ */

struct tool_issue {
	char name[80];
	char why[200];
};

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
	int fd = openat(tools_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
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
	if (fsio_read(tools_fd, file, 1u << 20, &data, &len) != 0)
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

/* Builds every definition; issues (may be NULL) collects skipped files. */
static cJSON *scan(struct buf *report)
{
	/* Its own open file: a dup would share the read position with
	 * concurrent scans (several conversations asking at once). */
	int fd = openat(tools_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	cJSON *arr = cJSON_CreateArray();

	if (!d) {
		if (fd >= 0)
			close(fd);
		return arr;
	}
	while ((de = readdir(d))) {
		struct stat st;
		char why[300] = "";
		cJSON *fn = NULL;
		int present;
		size_t nl = strlen(de->d_name);

		if (de->d_name[0] == '.')
			continue;
		if (nl > 5 && strcmp(de->d_name + nl - 5, ".json") == 0)
			continue; /* described with its tool */
		if (!names_tool_ok(de->d_name)) {
			if (report)
				buf_printf(report, "skipped %s: name must be 1-64 of A-Z a-z 0-9 _ -\n",
					   de->d_name);
			continue;
		}
		if (fstatat(tools_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode)) {
			if (report)
				buf_printf(report, "skipped %s: not a regular file\n", de->d_name);
			continue;
		}
		if (!(st.st_mode & 0111)) {
			if (report)
				buf_printf(report, "skipped %s: not executable (chmod +x)\n", de->d_name);
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

cJSON *tools_definitions(const cJSON *params)
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
	if (cJSON_GetArraySize(arr) == 0) {
		cJSON_Delete(arr);
		return NULL;
	}
	return arr;
}

char *tools_status(void)
{
	struct buf b;
	cJSON *arr;
	buf_init(&b, 1u << 20);
	arr = scan(&b);
	cJSON_Delete(arr);
	if (b.len == 0)
		buf_puts(&b, "no tools: copy an executable into tools/\n");
	return buf_take(&b);
}

/* --- running ------------------------------------------------------------------ */

struct run {
	struct buf out;
	int truncated;
	int status;   /* wait status */
	int timed_out;
	int spawn_err;
	long ms;
};

static void add_env(char ***env, size_t *n, const char *k, const char *v)
{
	char **e = realloc(*env, (*n + 2) * sizeof(char *));
	size_t l = strlen(k) + strlen(v) + 2;
	if (!e)
		return;
	*env = e;
	e[*n] = malloc(l);
	if (!e[*n])
		return;
	snprintf(e[*n], l, "%s=%s", k, v);
	(*n)++;
	e[*n] = NULL;
}

static void run_tool(const char *name, const char *args, const cJSON *argobj,
		     const char *call_id, const char *conv, struct run *r)
{
	char path[4400], **env = NULL;
	size_t nenv = 0;
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t sa;
	pid_t pid = -1;
	char *argv[] = {(char *)name, NULL};
	const char *keep[] = {"PATH", "HOME", "LANG", "LC_ALL", "TZ"};
	const cJSON *a;
	long long start = now_ms(), deadline;
	size_t in_off = 0, in_len = strlen(args);
	struct buf errbuf;
	int reaped = 0, killed = 0, pidfd = -1;
	sigset_t none;

	buf_init(&r->out, (size_t)cfg->tool_output_max);
	buf_init(&errbuf, 4096);
	snprintf(path, sizeof(path), "%s/%s", tools_path, name);
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		const char *v = getenv(keep[i]);
		if (v)
			add_env(&env, &nenv, keep[i], v);
		else if (!strcmp(keep[i], "PATH"))
			add_env(&env, &nenv, "PATH", "/usr/local/bin:/usr/bin:/bin");
	}
	/* Settings meant for tools: LMSFS_TOOLS_* pass through unchanged. */
	for (char **e = environ; e && *e; e++)
		if (strncmp(*e, "LMSFS_TOOLS_", 12) == 0) {
			char k[128];
			const char *eq = strchr(*e, '=');
			size_t kl = eq ? (size_t)(eq - *e) : 0;
			if (!eq || kl >= sizeof(k))
				continue;
			memcpy(k, *e, kl);
			k[kl] = '\0';
			add_env(&env, &nenv, k, eq + 1);
		}
	add_env(&env, &nenv, "LMSFS_TOOL_CALL_ID", call_id ? call_id : "");
	add_env(&env, &nenv, "LMSFS_CONVERSATION", conv ? conv : "");
	add_env(&env, &nenv, "LMSFS_TOOL_NAME", name);
	cJSON_ArrayForEach(a, argobj)
	{
		char key[128], num[64];
		size_t i;
		if (!a->string || strlen(a->string) > 64)
			continue;
		snprintf(key, sizeof(key), "LMSFS_ARG_%s", a->string);
		for (i = 10; key[i]; i++)
			if (!((key[i] >= 'A' && key[i] <= 'Z') || (key[i] >= 'a' && key[i] <= 'z') ||
			      (key[i] >= '0' && key[i] <= '9') || key[i] == '_'))
				key[i] = '_';
		if (cJSON_IsString(a))
			add_env(&env, &nenv, key, a->valuestring);
		else if (cJSON_IsBool(a))
			add_env(&env, &nenv, key, cJSON_IsTrue(a) ? "true" : "false");
		else if (cJSON_IsNumber(a)) {
			snprintf(num, sizeof(num), "%.17g", a->valuedouble);
			add_env(&env, &nenv, key, num);
		}
	}

	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		r->spawn_err = errno;
		goto out;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, err[1], 2);
	posix_spawn_file_actions_addchdir_np(&fa, tools_path);
	posix_spawnattr_init(&sa);
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&sa, &none);
	posix_spawnattr_setpgroup(&sa, 0);
	posix_spawnattr_setflags(&sa, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
					      POSIX_SPAWN_SETSIGDEF);
	{
		sigset_t all;
		sigfillset(&all);
		posix_spawnattr_setsigdefault(&sa, &all);
	}
	r->spawn_err = posix_spawn(&pid, path, &fa, &sa, argv, env ? env : (char *[]){NULL});
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&sa);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	in[0] = out[1] = err[1] = -1;
	if (r->spawn_err) {
		pid = -1;
		goto out;
	}
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	if (in_len == 0) {
		close(in[1]);
		in[1] = -1;
	}
	deadline = start + cfg->tool_timeout_ms;
	/* A pidfd becomes readable when the tool exits: no polling delay. */
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	while (out[0] >= 0 || err[0] >= 0 || !reaped) {
		struct pollfd p[4];
		int np = 0, wait_ms;
		long long now = now_ms();
		if (!reaped && waitpid(pid, &r->status, WNOHANG) == pid) {
			reaped = 1;
			/* Whatever it left behind in its group goes too. */
			kill(-pid, SIGKILL);
		}
		if (!killed && now >= deadline) {
			r->timed_out = 1;
			kill(-pid, SIGTERM);
			killed = 1;
			deadline = now + 1000;
		} else if (killed == 1 && now >= deadline) {
			kill(-pid, SIGKILL);
			killed = 2;
		}
		if (reaped && (killed || now >= deadline || (out[0] < 0 && err[0] < 0)))
			break;
		if (in[1] >= 0) {
			p[np].fd = in[1];
			p[np++].events = POLLOUT;
		}
		if (out[0] >= 0) {
			p[np].fd = out[0];
			p[np++].events = POLLIN;
		}
		if (err[0] >= 0) {
			p[np].fd = err[0];
			p[np++].events = POLLIN;
		}
		if (!reaped && pidfd >= 0) {
			p[np].fd = pidfd;
			p[np++].events = POLLIN;
		}
		if (reaped)
			wait_ms = 50; /* drain what is left in the pipes */
		else if (pidfd < 0)
			wait_ms = 1;
		else
			wait_ms = deadline - now > 1000 ? 1000 : (int)(deadline - now) + 1;
		if (poll(p, (nfds_t)np, wait_ms) <= 0) {
			if (reaped)
				break; /* exited and quiet: done */
			continue;
		}
		for (int i = 0; i < np; i++) {
			char tmp[8192];
			ssize_t n;
			if (!p[i].revents || p[i].fd == pidfd)
				continue; /* exit: reaped at the top of the loop */
			if (p[i].fd == in[1]) {
				n = write(in[1], args + in_off, in_len - in_off);
				if (n > 0)
					in_off += (size_t)n;
				if (n < 0 || in_off >= in_len) {
					close(in[1]);
					in[1] = -1;
				}
				continue;
			}
			n = read(p[i].fd, tmp, sizeof(tmp));
			if (n <= 0) {
				close(p[i].fd);
				if (p[i].fd == out[0])
					out[0] = -1;
				else
					err[0] = -1;
				continue;
			}
			if (p[i].fd == out[0]) {
				size_t room = r->out.max - r->out.len;
				if ((size_t)n > room) {
					r->truncated = 1;
					n = (ssize_t)room;
				}
				buf_append(&r->out, tmp, (size_t)n);
			} else {
				buf_append(&errbuf, tmp, (size_t)n);
			}
		}
	}
	if (!reaped) {
		kill(-pid, SIGKILL);
		waitpid(pid, &r->status, 0);
	}
	if (pidfd >= 0)
		close(pidfd);
out:
	if (in[0] >= 0) close(in[0]);
	if (in[1] >= 0) close(in[1]);
	if (out[0] >= 0) close(out[0]);
	if (out[1] >= 0) close(out[1]);
	if (err[0] >= 0) close(err[0]);
	if (err[1] >= 0) close(err[1]);
	if (errbuf.len)
		log_info("tool %s stderr: %.*s", name, (int)(errbuf.len > 1000 ? 1000 : errbuf.len),
			 errbuf.data);
	buf_free(&errbuf);
	for (size_t i = 0; i < nenv; i++)
		free(env[i]);
	free(env);
	r->ms = (long)(now_ms() - start);
}

char *tools_call(const char *name, const char *args, const char *call_id,
		 const char *conv, int conv_dirfd, int legacy)
{
	struct stat st;
	struct run r;
	cJSON *argobj = NULL;
	char msg[600], *ret;
	const char *text = NULL;
	enum tool_outcome outcome = TOOL_OK;
	struct buf content;

	memset(&r, 0, sizeof(r));
	buf_init(&content, (size_t)cfg->tool_output_max + 1024);
	store_mark(conv_dirfd, "[lmsfs] tool %s %.300s", name, *args ? args : "{}");

	if (!names_tool_ok(name) || fstatat(tools_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
		snprintf(msg, sizeof(msg), "error: there is no tool named '%.80s'", name);
		text = msg;
		outcome = TOOL_UNKNOWN;
		goto done;
	}
	argobj = *args ? cJSON_Parse(args) : cJSON_CreateObject();
	if (!cJSON_IsObject(argobj)) {
		snprintf(msg, sizeof(msg),
			 "error: the arguments for %s are not a JSON object: %.200s", name, args);
		text = msg;
		outcome = TOOL_FAILED;
		goto done;
	}
	run_tool(name, *args ? args : "{}", argobj, call_id, conv, &r);
	if (r.spawn_err) {
		snprintf(msg, sizeof(msg), "error: cannot run %s: %s", name, strerror(r.spawn_err));
		text = msg;
		outcome = TOOL_FAILED;
	} else if (r.timed_out) {
		snprintf(msg, sizeof(msg), "error: %s did not finish within %ld ms and was killed",
			 name, cfg->tool_timeout_ms);
		text = msg;
		outcome = TOOL_TIMEOUT;
	} else if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
		if (WIFEXITED(r.status))
			buf_printf(&content, "error: %s exited with status %d\n", name,
				   WEXITSTATUS(r.status));
		else
			buf_printf(&content, "error: %s was killed by signal %d\n", name,
				   WTERMSIG(r.status));
		outcome = TOOL_FAILED;
	}
	if (!text) {
		if (r.out.len)
			buf_append(&content, r.out.data, r.out.len);
		if (r.truncated)
			buf_printf(&content, "\n[output truncated at %ld bytes]", cfg->tool_output_max);
		utf8_sanitize(content.data ? content.data : (char *)"", content.len);
		text = content.data ? content.data : "";
	}
done:
	metrics_tool(outcome);
	if (outcome == TOOL_OK)
		store_mark(conv_dirfd, "[lmsfs] tool %s done: exit 0, %zu bytes%s, %ld ms", name,
		     r.out.len, r.truncated ? " (truncated)" : "", r.ms);
	else
		store_mark(conv_dirfd, "[lmsfs] tool %s failed: %.300s", name, text);
	log_info("conversation=%s tool=%s outcome=%s ms=%ld", conv, name,
		 outcome == TOOL_OK ? "ok" : outcome == TOOL_TIMEOUT ? "timeout"
					 : outcome == TOOL_UNKNOWN ? "unknown" : "failed",
		 r.ms);
	ret = store_tool_result_line(name, call_id, text, legacy);
	buf_free(&r.out);
	buf_free(&content);
	cJSON_Delete(argobj);
	return ret;
}

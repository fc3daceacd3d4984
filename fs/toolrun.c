/* toolrun.c - runs one tool call with limits and turns its outcome into a history line. */
#include "toolrun.h"

#include "buf.h"
#include "config.h"
#include "log.h"
#include "mcp.h"
#include "metrics.h"
#include "proctree.h"
#include "store.h"
#include "tooldef.h"
#include "utf8.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Set once by toolrun_init before any thread starts; read-only after. */
static const struct config *cfg;

void toolrun_init(const struct config *c)
{
	cfg = c;
}

/* What one run gave. */
struct run {
	struct buf out;
	int truncated;
	int status;   /* wait status */
	int timed_out;
	int cancelled;
	int spawn_err;
	long ms;
};

/* A running tool as the parent sees it. */
struct child {
	struct proctree tree;
	const volatile int *cancel; /* nonzero: stop now (may be NULL) */
	int in, out, err;  /* our ends of its stdin, stdout, stderr; -1 once closed */
	const char *args;  /* what goes to its stdin */
	size_t in_off, in_len;
	long long deadline;
	int reaped;
	int killed;        /* 1 after SIGTERM, 2 after SIGKILL */
};

/* --- environment ---------------------------------------------------------- */

/* A NULL-terminated environment being built; entries are malloc'd. */
struct env {
	char **v;
	size_t n;
};

static void add_env(struct env *env, const char *k, const char *v)
{
	char **e = realloc(env->v, (env->n + 2) * sizeof(char *));
	size_t l = strlen(k) + strlen(v) + 2;
	if (!e)
		return;
	env->v = e;
	e[env->n] = malloc(l);
	if (!e[env->n])
		return;
	snprintf(e[env->n], l, "%s=%s", k, v);
	env->n++;
	e[env->n] = NULL;
}

static void free_env(struct env *env)
{
	for (size_t i = 0; i < env->n; i++)
		free(env->v[i]);
	free(env->v);
	env->v = NULL;
	env->n = 0;
}

/* The tool's whole environment: a few variables kept from ours, the
 * LMSFS_TOOLS_* settings, who is calling, and one LMSFS_ARG_<name> per
 * scalar argument (other characters of the name become '_'). A value over
 * TOOLRUN_ENV_ARG_MAX bytes, or one that would take the arguments past
 * TOOLRUN_ENV_ARGS_MAX in all, is left out: the kernel refuses a string
 * over 128 KiB or an environment over its limit (E2BIG), and the tool has
 * every argument on stdin anyway. */
static void build_env(struct env *env, const char *name, const cJSON *argobj,
		      const char *call_id, const char *conv)
{
	const char *keep[] = {"PATH", "HOME", "LANG", "LC_ALL", "TZ"};
	const cJSON *a;
	size_t budget = TOOLRUN_ENV_ARGS_MAX;

	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		const char *v = getenv(keep[i]);
		if (v)
			add_env(env, keep[i], v);
		else if (!strcmp(keep[i], "PATH"))
			add_env(env, "PATH", "/usr/local/bin:/usr/bin:/bin");
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
			add_env(env, k, eq + 1);
		}
	add_env(env, "LMSFS_TOOL_CALL_ID", call_id ? call_id : "");
	add_env(env, "LMSFS_CONVERSATION", conv ? conv : "");
	add_env(env, "LMSFS_TOOL_NAME", name);
	cJSON_ArrayForEach(a, argobj)
	{
		char key[128], num[64];
		const char *val;
		size_t i, need;
		if (!a->string || strlen(a->string) > 64)
			continue;
		snprintf(key, sizeof(key), "LMSFS_ARG_%s", a->string);
		for (i = 10; key[i]; i++)
			if (!((key[i] >= 'A' && key[i] <= 'Z') || (key[i] >= 'a' && key[i] <= 'z') ||
			      (key[i] >= '0' && key[i] <= '9') || key[i] == '_'))
				key[i] = '_';
		if (cJSON_IsString(a))
			val = a->valuestring;
		else if (cJSON_IsBool(a))
			val = cJSON_IsTrue(a) ? "true" : "false";
		else if (cJSON_IsNumber(a)) {
			snprintf(num, sizeof(num), "%.17g", a->valuedouble);
			val = num;
		} else
			continue;
		need = strlen(key) + strlen(val) + 2;
		if (strlen(val) > TOOLRUN_ENV_ARG_MAX || need > budget)
			continue; /* on stdin only */
		budget -= need;
		add_env(env, key, val);
	}
}

/* --- spawning ------------------------------------------------------------- */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Starts tools/NAME without a shell, in tools/, under a shepherd that
 * can kill its whole tree (proctree.h): its own process group, every
 * signal at its default and none blocked, its stdio on three pipes and no
 * other descriptor (libcurl's socket pair and the like stay home). Returns
 * 0 with ch->tree, ch->in, ch->out, ch->err set, or an errno value with
 * every descriptor closed. */
static int spawn_tool(const char *name, char **envp, struct child *ch)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
	char path[4400];
	char *argv[] = {(char *)name, NULL};
	int rc;

	ch->in = ch->out = ch->err = -1;
	snprintf(path, sizeof(path), "%s/%s", tooldef_dir_path(), name);
	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		rc = errno;
		goto fail;
	}
	rc = proctree_spawn(&ch->tree, path, argv, envp ? envp : (char *[]){NULL},
			    tooldef_dir_path(), in[0], out[1], err[1], PROCTREE_PDEATH);
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&err[1]);
	if (rc)
		goto fail;
	ch->in = in[1];
	ch->out = out[0];
	ch->err = err[0];
	return 0;
fail:
	close_fd(&err[0]);
	close_fd(&out[0]);
	close_fd(&in[1]);
	return rc;
}

/* --- waiting and reading -------------------------------------------------- */

/* Reaps the tool if it exited (its shepherd has then killed whatever it
 * left behind), stops the whole tree at once on cancel (or the daemon's
 * shutdown), and applies the timeout (SIGTERM to the group, a second
 * later SIGKILL to the tree). Returns 1 when the wait is over. */
static int enforce_limits(struct child *ch, struct run *r, long long now)
{
	if (!ch->reaped && proctree_reap(&ch->tree, 0)) {
		ch->reaped = 1;
		r->status = ch->tree.status;
	}
	if (!ch->reaped && ch->killed < 2 && ch->cancel && *ch->cancel) {
		r->cancelled = 1;
		proctree_kill(&ch->tree);
		ch->killed = 2;
	}
	if (!ch->killed && now >= ch->deadline) {
		r->timed_out = 1;
		proctree_term(&ch->tree);
		ch->killed = 1;
		ch->deadline = now + 1000;
	} else if (ch->killed == 1 && now >= ch->deadline) {
		proctree_kill(&ch->tree);
		ch->killed = 2;
	}
	return ch->reaped && (ch->killed || now >= ch->deadline || (ch->out < 0 && ch->err < 0));
}

/* Fills p with what to wait for; returns how many. */
static int poll_set(const struct child *ch, struct pollfd p[4])
{
	int np = 0;
	if (ch->in >= 0) {
		p[np].fd = ch->in;
		p[np++].events = POLLOUT;
	}
	if (ch->out >= 0) {
		p[np].fd = ch->out;
		p[np++].events = POLLIN;
	}
	if (ch->err >= 0) {
		p[np].fd = ch->err;
		p[np++].events = POLLIN;
	}
	if (!ch->reaped && ch->tree.pidfd >= 0) {
		p[np].fd = ch->tree.pidfd;
		p[np++].events = POLLIN;
	}
	return np;
}

static int poll_timeout(const struct child *ch, long long now)
{
	if (ch->reaped)
		return 50; /* drain what is left in the pipes */
	if (ch->tree.pidfd < 0)
		return 1;
	/* A cancel is a flag: looked at ten times a second. */
	return ch->deadline - now > 100 ? 100 : (int)(ch->deadline - now) + 1;
}

/* Feeds stdin and reads stdout (up to the cap) and stderr for the
 * descriptors poll found ready; closes each at its end. */
static void service(struct child *ch, const struct pollfd *p, int np, struct run *r,
		    struct buf *errbuf)
{
	for (int i = 0; i < np; i++) {
		char tmp[8192];
		ssize_t n;
		if (!p[i].revents || p[i].fd == ch->tree.pidfd)
			continue; /* exit: reaped by enforce_limits */
		if (p[i].fd == ch->in) {
			n = write(ch->in, ch->args + ch->in_off, ch->in_len - ch->in_off);
			if (n > 0)
				ch->in_off += (size_t)n;
			if (n < 0 || ch->in_off >= ch->in_len)
				close_fd(&ch->in);
			continue;
		}
		n = read(p[i].fd, tmp, sizeof(tmp));
		if (n <= 0) {
			close(p[i].fd);
			if (p[i].fd == ch->out)
				ch->out = -1;
			else
				ch->err = -1;
			continue;
		}
		if (p[i].fd == ch->out) {
			size_t room = r->out.max - r->out.len;
			if ((size_t)n > room) {
				r->truncated = 1;
				n = (ssize_t)room;
			}
			buf_append(&r->out, tmp, (size_t)n);
		} else {
			buf_append(errbuf, tmp, (size_t)n);
		}
	}
}

/* Writes the arguments to the tool's stdin and collects its output until
 * it has exited and gone quiet, or the timeout has killed it; the tool is
 * always reaped on return. */
static void wait_tool(struct child *ch, struct run *r, struct buf *errbuf)
{
	fcntl(ch->in, F_SETFL, O_NONBLOCK);
	if (ch->in_len == 0)
		close_fd(&ch->in);
	/* The shepherd's pidfd becomes readable when the tool's tree is
	 * gone: no polling delay. */
	while (ch->out >= 0 || ch->err >= 0 || !ch->reaped) {
		struct pollfd p[4];
		int np;
		long long now = now_ms();
		if (enforce_limits(ch, r, now))
			break;
		np = poll_set(ch, p);
		if (poll(p, (nfds_t)np, poll_timeout(ch, now)) <= 0) {
			if (ch->reaped)
				break; /* exited and quiet: done */
			continue;
		}
		service(ch, p, np, r, errbuf);
	}
	if (!ch->reaped) {
		proctree_kill(&ch->tree);
		proctree_reap(&ch->tree, 1);
		r->status = ch->tree.status;
	}
	proctree_close(&ch->tree);
}

/* Runs tools/NAME with args on stdin; r->out gets its capped stdout. */
static void run_tool(const char *name, const char *args, const cJSON *argobj,
		     const char *call_id, const char *conv, const volatile int *cancel,
		     struct run *r)
{
	struct env env = {NULL, 0};
	struct child ch = {.tree = {.pid = -1, .pidfd = -1, .report = -1},
			   .cancel = cancel, .in = -1, .out = -1, .err = -1};
	long long start = now_ms();
	struct buf errbuf;

	buf_init(&r->out, (size_t)cfg->tool_output_max);
	buf_init(&errbuf, 4096);
	build_env(&env, name, argobj, call_id, conv);
	r->spawn_err = spawn_tool(name, env.v, &ch);
	if (r->spawn_err == 0) {
		ch.args = args;
		ch.in_len = strlen(args);
		ch.deadline = start + cfg->tool_timeout_ms;
		wait_tool(&ch, r, &errbuf);
	}
	close_fd(&ch.err);
	close_fd(&ch.out);
	close_fd(&ch.in);
	if (errbuf.len)
		log_info("tool %s stderr: %.*s", name, (int)(errbuf.len > 1000 ? 1000 : errbuf.len),
			 errbuf.data);
	buf_free(&errbuf);
	free_env(&env);
	r->ms = (long)(now_ms() - start);
}

/* --- one call ------------------------------------------------------------- */

static const char *outcome_name(enum tool_outcome o)
{
	switch (o) {
	case TOOL_OK:
		return "ok";
	case TOOL_TIMEOUT:
		return "timeout";
	case TOOL_UNKNOWN:
		return "unknown";
	default:
		return "failed";
	}
}

char *toolrun_call(const char *name, const char *args, const char *call_id,
		   const char *conv, int conv_dirfd, int legacy, enum toolrun_gate gate,
		   const volatile int *cancel)
{
	struct run r;
	cJSON *argobj = NULL;
	char msg[600], *ret, *repaired = NULL;
	const char *text = NULL;
	enum tool_outcome outcome = TOOL_OK;
	struct buf content;
	int is_mcp = 0;
	char *mcp_text = NULL;

	memset(&r, 0, sizeof(r));
	buf_init(&content, (size_t)cfg->tool_output_max + 1024);
	store_mark(conv_dirfd, "[lmsfs] tool %s %.300s", name, *args ? args : "{}");

	if (gate == TOOLRUN_OVER_LIMIT) {
		snprintf(msg, sizeof(msg),
			 "error: not run: at most %d tool calls of one reply run, and this "
			 "one came later; call it again in your next reply if you still "
			 "need it",
			 TOOLRUN_MAX_CALLS);
		text = msg;
		outcome = TOOL_FAILED;
		goto done;
	}
	/* An executable of tools/ wins over an MCP tool of the same name. */
	is_mcp = tooldef_why_not(name) && mcp_owns(name);
	if (!is_mcp && tooldef_why_not(name)) {
		snprintf(msg, sizeof(msg), "error: there is no tool named '%.80s'", name);
		text = msg;
		outcome = TOOL_UNKNOWN;
		goto done;
	}
	if (gate != TOOLRUN_OFFERED) {
		/* In tools/ but not offered (params.json's lmsfs_tools, or
		 * skipped in tools/.status): never run. */
		snprintf(msg, sizeof(msg),
			 "error: the tool '%.80s' is not available in this conversation "
			 "(it was not offered in this request)",
			 name);
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
	if (is_mcp) {
		enum mcp_outcome mo;
		long long t0 = now_ms();
		text = mcp_text = mcp_call(name, args, cancel, &mo, &r.truncated);
		r.ms = (long)(now_ms() - t0);
		outcome = mo == MCP_OK ? TOOL_OK : mo == MCP_TIMEOUT ? TOOL_TIMEOUT : TOOL_FAILED;
		if (!text) {
			text = "error: out of memory";
			outcome = TOOL_FAILED;
		}
		goto done;
	}
	run_tool(name, *args ? args : "{}", argobj, call_id, conv, cancel, &r);
	if (r.spawn_err) {
		snprintf(msg, sizeof(msg), "error: cannot run %s: %s", name, strerror(r.spawn_err));
		text = msg;
		outcome = TOOL_FAILED;
	} else if (r.cancelled) {
		snprintf(msg, sizeof(msg), "error: %s was stopped: the answer was cancelled", name);
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
		const char *data;
		if (r.out.len)
			buf_append(&content, r.out.data, r.out.len);
		if (r.truncated)
			buf_printf(&content, "\n[output truncated at %ld bytes]", cfg->tool_output_max);
		/* The history holds valid UTF-8 only: a tool's bytes are
		 * repaired (U+FFFD for each invalid byte or NUL). */
		data = content.data ? content.data : "";
		if (utf8_valid_prefix(data, content.len, 0) == content.len) {
			text = data;
		} else {
			repaired = utf8_repair(data, content.len);
			text = repaired ? repaired : "";
		}
	}
done:
	metrics_tool(outcome);
	if (outcome == TOOL_OK && is_mcp)
		store_mark(conv_dirfd, "[lmsfs] tool %s done: MCP, %zu bytes%s, %ld ms", name,
			   strlen(text), r.truncated ? " (truncated)" : "", r.ms);
	else if (outcome == TOOL_OK)
		store_mark(conv_dirfd, "[lmsfs] tool %s done: exit 0, %zu bytes%s, %ld ms", name,
			   r.out.len, r.truncated ? " (truncated)" : "", r.ms);
	else
		store_mark(conv_dirfd, "[lmsfs] tool %s failed: %.300s", name, text);
	log_info("conversation=%s tool=%s outcome=%s ms=%ld", conv, name, outcome_name(outcome),
		 r.ms);
	ret = store_tool_result_line(name, call_id, text, legacy);
	free(mcp_text);
	free(repaired);
	buf_free(&r.out);
	buf_free(&content);
	cJSON_Delete(argobj);
	return ret;
}

/* mcp.c - an MCP server's process: start, initialize, JSON-RPC requests multiplexed by id, stop. */
#include "mcp_int.h"

#include "config.h"
#include "log.h"
#include "tooldef.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void mcp_srv_init(struct mcp_server *s)
{
	pthread_mutex_init(&s->wlock, NULL);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	buf_init(&s->outq, MCP_OUTQ_MAX);
	s->state = MS_IDLE;
	s->in_fd = -1;
	s->tree.pid = -1;
	s->tree.pidfd = s->tree.report = -1;
}

void mcp_srv_destroy(struct mcp_server *s)
{
	if (s->in_fd >= 0)
		close(s->in_fd);
	proctree_close(&s->tree);
	cJSON_Delete(s->tools);
	buf_free(&s->outq);
	mcp_conf_server_free(&s->conf);
	pthread_mutex_destroy(&s->wlock);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cv);
}

/* --- starting ------------------------------------------------------------- */

/* The program to run: as given when it has a '/' (relative to tools/),
 * else the first executable of that name in PATH. */
static int find_command(const char *cmd, const char *path_env, char *out, size_t n)
{
	struct stat st;
	if (strchr(cmd, '/')) {
		if (cmd[0] == '/')
			snprintf(out, n, "%s", cmd);
		else
			snprintf(out, n, "%s/%s", tooldef_dir_path(), cmd);
		return 0;
	}
	for (const char *p = path_env; p && *p;) {
		const char *c = strchr(p, ':');
		size_t l = c ? (size_t)(c - p) : strlen(p);
		snprintf(out, n, "%.*s/%s", (int)(l ? l : 1), l ? p : ".", cmd);
		if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
			return 0;
		p = c ? c + 1 : NULL;
	}
	return -1;
}

/* mcp.json's env, then PATH, HOME and LANG from ours unless it set them. */
static char **server_env(const struct mcp_conf_server *c)
{
	const char *keep[] = {"PATH", "HOME", "LANG"};
	size_t n = 0;
	char **v;
	while (c->env && c->env[n])
		n++;
	v = calloc(n + 4, sizeof(char *));
	if (!v)
		return NULL;
	size_t out = 0;
	for (size_t i = 0; i < n; i++)
		if ((v[out] = strdup(c->env[i])))
			out++;
	for (size_t k = 0; k < 3; k++) {
		size_t kl = strlen(keep[k]);
		const char *val = getenv(keep[k]);
		int given = 0;
		for (size_t i = 0; i < n; i++)
			if (strncmp(c->env[i], keep[k], kl) == 0 && c->env[i][kl] == '=')
				given = 1;
		if (given || (!val && k))
			continue;
		if (!val)
			val = "/usr/local/bin:/usr/bin:/bin";
		v[out] = malloc(kl + strlen(val) + 2);
		if (v[out])
			sprintf(v[out++], "%s=%s", keep[k], val);
	}
	return v;
}

static const char *env_get(char **env, const char *k)
{
	size_t kl = strlen(k);
	for (size_t i = 0; env && env[i]; i++)
		if (strncmp(env[i], k, kl) == 0 && env[i][kl] == '=')
			return env[i] + kl + 1;
	return NULL;
}

/* Starts the reader, which spawns the process (no lock held; s->state is
 * MS_STARTING, so nobody else touches the fields set here, which are set
 * under the locks). */
static int spawn(struct mcp_server *s, char *why, size_t n)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, rc;
	char path[4400];
	char **env = server_env(&s->conf);
	struct mcp_reader_arg ra;
	pthread_t th;

	if (!env) {
		snprintf(why, n, "out of memory");
		goto fail;
	}
	if (find_command(s->conf.command, env_get(env, "PATH"), path, sizeof(path)) < 0) {
		snprintf(why, n, "command not found: %.200s (searched PATH)", s->conf.command);
		goto fail;
	}
	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		snprintf(why, n, "cannot make pipes: %s", strerror(errno));
		goto fail;
	}
	memset(&ra, 0, sizeof(ra));
	ra.s = s;
	ra.out = out[0];
	ra.err = err[0];
	ra.path = path;
	ra.argv = s->conf.argv;
	ra.env = env;
	ra.cwd = tooldef_dir_path();
	ra.child[0] = in[0];
	ra.child[1] = out[1];
	ra.child[2] = err[1];
	pthread_mutex_lock(&s->lock);
	s->gen++;
	s->reader_running = 1;
	pthread_mutex_unlock(&s->lock);
	/* The reader starts the process itself: the shepherd kills the tree
	 * when the thread that forked it dies (PR_SET_PDEATHSIG), and the
	 * reader lives exactly as long as the server - or the daemon. */
	mcp_srv_hold(s);
	if (pthread_create(&th, NULL, mcp_reader_main, &ra) != 0) {
		pthread_mutex_lock(&s->lock);
		s->reader_running = 0;
		pthread_mutex_unlock(&s->lock);
		mcp_srv_put(s);
		snprintf(why, n, "cannot start a thread");
		goto fail;
	}
	pthread_detach(th);
	pthread_mutex_lock(&s->lock);
	while (!ra.done)
		pthread_cond_wait(&s->cv, &s->lock);
	rc = ra.rc;
	pthread_mutex_unlock(&s->lock);
	/* The reader owns out[0] and err[0] from here (closed on failure). */
	out[0] = err[0] = -1;
	if (rc) {
		snprintf(why, n, "cannot run %.200s: %s", path, strerror(rc));
		goto fail;
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	pthread_mutex_lock(&s->wlock);
	pthread_mutex_lock(&s->lock);
	mcp_outq_reset(s);
	s->in_fd = in[1];
	s->garbage[0] = '\0';
	s->started_at = now_ms();
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&s->wlock);
	for (size_t i = 0; env[i]; i++)
		free(env[i]);
	free(env);
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (err[i] >= 0)
			close(err[i]);
	}
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
	return -1;
}

/* A protocol version lmsfs can speak: 2025-06-18 or later (a date), or
 * one of the two earlier ones with the same tools messages. */
static int version_ok(const char *v)
{
	if (!strcmp(v, "2024-11-05") || !strcmp(v, "2025-03-26"))
		return 1;
	if (strlen(v) != 10 || v[4] != '-' || v[7] != '-')
		return 0;
	return strcmp(v, MCP_PROTOCOL) >= 0;
}

/* initialize, notifications/initialized, tools/list; s->lock not held. */
static int handshake(struct mcp_server *s, const volatile int *cancel, char *why, size_t n)
{
	cJSON *params = cJSON_CreateObject(), *info, *res = NULL;
	const cJSON *v;
	int to = 0;

	cJSON_AddStringToObject(params, "protocolVersion", MCP_PROTOCOL);
	cJSON_AddObjectToObject(params, "capabilities");
	info = cJSON_AddObjectToObject(params, "clientInfo");
	cJSON_AddStringToObject(info, "name", "lmsfs");
	cJSON_AddStringToObject(info, "version", LMSFS_VERSION);
	if (mcp_srv_rpc(s, "initialize", params, mcp_cfg->tool_timeout_ms, cancel, 0, &res, why, n,
			&to, NULL) < 0) {
		if (to)
			snprintf(why, n, "did not answer initialize within %ld ms%s%.120s%s",
				 mcp_cfg->tool_timeout_ms, s->garbage[0] ? " (it printed: " : "",
				 s->garbage, s->garbage[0] ? ")" : "");
		return -1;
	}
	v = cJSON_GetObjectItemCaseSensitive(res, "protocolVersion");
	if (!cJSON_IsString(v) || !version_ok(v->valuestring)) {
		snprintf(why, n, "speaks MCP protocol %.40s; lmsfs needs %s or later",
			 cJSON_IsString(v) ? v->valuestring : "(none given)", MCP_PROTOCOL);
		cJSON_Delete(res);
		return -1;
	}
	pthread_mutex_lock(&s->lock);
	snprintf(s->version, sizeof(s->version), "%s", v->valuestring);
	pthread_mutex_unlock(&s->lock);
	cJSON_Delete(res);
	mcp_write_line(s, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
	return mcp_tools_fetch(s, cancel, why, n);
}

static void wait_cv(struct mcp_server *s, long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000L;
	while (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&s->cv, &s->lock, &ts);
}

/* Closes the server's stdin and drops what was queued for it (takes its
 * write lock). */
static void close_input(struct mcp_server *s)
{
	pthread_mutex_lock(&s->wlock);
	if (s->in_fd >= 0)
		close(s->in_fd);
	s->in_fd = -1;
	mcp_outq_reset(s);
	pthread_mutex_unlock(&s->wlock);
}

int mcp_srv_ensure(struct mcp_server *s, const volatile int *cancel, char *why, size_t n)
{
	long long deadline = now_ms() + mcp_cfg->tool_timeout_ms + 2000;
	int rc;

	for (;;) {
		if (s->state == MS_READY)
			return 0;
		if (atomic_load(&mcp_quitting)) {
			snprintf(why, n, "lmsfs is stopping");
			return -1;
		}
		if (cancel && *cancel) {
			snprintf(why, n, "cancelled");
			return -1;
		}
		if (s->retired) {
			snprintf(why, n, "MCP server %s is no longer in mcp.json", s->conf.name);
			return -1;
		}
		if ((s->state == MS_IDLE || s->state == MS_FAILED) && now_ms() < s->next_start) {
			snprintf(why, n, "MCP server %s is down (%s); next start in %lld ms",
				 s->conf.name, s->why, s->next_start - now_ms());
			return -1;
		}
		if ((s->state == MS_IDLE || s->state == MS_FAILED) && !s->reader_running)
			break;
		/* Starting elsewhere, or the last run's reader finishing. */
		if (now_ms() >= deadline) {
			snprintf(why, n, "MCP server %s is still starting", s->conf.name);
			return -1;
		}
		wait_cv(s, 100);
	}
	s->state = MS_STARTING;
	s->why[0] = '\0';
	pthread_mutex_unlock(&s->lock);
	close_input(s);
	pthread_mutex_lock(&s->lock);
	proctree_close(&s->tree);
	pthread_mutex_unlock(&s->lock);
	rc = spawn(s, why, n);
	if (rc == 0)
		rc = handshake(s, cancel, why, n);
	pthread_mutex_lock(&s->lock);
	if (rc == 0 && s->state == MS_STARTING) {
		s->state = MS_READY;
		log_info("mcp %s: ready (protocol %s)", s->conf.name, s->version);
	} else if ((cancel && *cancel) || atomic_load(&mcp_quitting)) {
		/* Given up by the caller: not the server's fault. The next
		 * need starts it again at once. */
		s->state = MS_IDLE;
		snprintf(s->why, sizeof(s->why), "its start was given up (cancelled)");
		if (s->reader_running)
			proctree_kill(&s->tree);
		log_info("mcp %s: start given up: cancelled", s->conf.name);
		rc = -1;
	} else {
		if (rc == 0)
			snprintf(why, n, "the server stopped while starting: %s", s->why);
		s->state = MS_FAILED;
		snprintf(s->why, sizeof(s->why), "%s", why);
		if (s->reader_running)
			proctree_kill(&s->tree);
		s->exits++;
		s->next_start = now_ms() + mcp_backoff_ms(s->exits);
		log_warnx("mcp %s: cannot start: %s", s->conf.name, why);
		rc = -1;
	}
	pthread_cond_broadcast(&s->cv);
	return rc;
}

/* --- requests ------------------------------------------------------------- */

int mcp_srv_rpc(struct mcp_server *s, const char *method, cJSON *params, long timeout_ms,
		const volatile int *cancel, int cancel_notify, cJSON **result, char *why,
		size_t n, int *timed_out, int *cancelled)
{
	struct mcp_pending p, **pp;
	cJSON *req = cJSON_CreateObject();
	char *text;
	long long deadline = now_ms() + timeout_ms;
	int rc = -1, gave_up = 0, sent = -1;
	long gen;

	*result = NULL;
	if (timed_out)
		*timed_out = 0;
	if (cancelled)
		*cancelled = 0;
	memset(&p, 0, sizeof(p));
	pthread_mutex_lock(&s->lock);
	gen = s->gen;
	p.id = ++s->next_id;
	p.next = s->pending;
	s->pending = &p;
	pthread_mutex_unlock(&s->lock);
	cJSON_AddStringToObject(req, "jsonrpc", "2.0");
	cJSON_AddNumberToObject(req, "id", (double)p.id);
	cJSON_AddStringToObject(req, "method", method);
	if (params)
		cJSON_AddItemToObject(req, "params", params);
	text = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (text) {
		size_t l = strlen(text);
		char *line = realloc(text, l + 2);
		if (line) {
			memcpy(line + l, "\n", 2);
			sent = mcp_write_line(s, line);
			text = line;
		}
	}
	free(text);

	pthread_mutex_lock(&s->lock);
	if (sent != 0 && !p.done) {
		p.done = 1;
		snprintf(p.err, sizeof(p.err),
			 "cannot send %.40s to the MCP server %.60s: it is not running, or does not "
			 "read its input",
			 method, s->conf.name);
	}
	while (!p.done) {
		struct timespec ts;
		long long now = now_ms();
		if (!s->reader_running || s->gen != gen) {
			p.done = 1;
			snprintf(p.err, sizeof(p.err), "MCP server %.60s is not running: %.400s", s->conf.name,
				 s->why[0] ? s->why : "stopped");
			break;
		}
		if ((cancel && *cancel) || atomic_load(&mcp_quitting)) {
			gave_up = 2;
			break;
		}
		if (now >= deadline) {
			gave_up = 1;
			break;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (deadline - now > 100 ? 100 : deadline - now) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->cv, &s->lock, &ts);
	}
	for (pp = &s->pending; *pp; pp = &(*pp)->next)
		if (*pp == &p) {
			*pp = p.next;
			break;
		}
	pthread_mutex_unlock(&s->lock);

	if (gave_up) {
		if (gave_up == 1) {
			snprintf(why, n, "the MCP server %s did not answer %s within %ld ms",
				 s->conf.name, method, timeout_ms);
			if (timed_out)
				*timed_out = 1;
		} else {
			snprintf(why, n, "cancelled");
			if (cancelled)
				*cancelled = 1;
		}
		if (cancel_notify) {
			char note[200];
			snprintf(note, sizeof(note),
				 "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\","
				 "\"params\":{\"requestId\":%ld,\"reason\":\"%s\"}}\n",
				 p.id, gave_up == 1 ? "timeout" : "cancelled");
			mcp_write_line(s, note);
		}
	} else if (!p.msg) {
		snprintf(why, n, "%s", p.err);
	} else {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(p.msg, "error");
		cJSON *r = cJSON_DetachItemFromObjectCaseSensitive(p.msg, "result");
		if (e) {
			const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
			const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
			snprintf(why, n, "the MCP server %s refused %s: %.300s (code %d)", s->conf.name,
				 method, cJSON_IsString(m) ? m->valuestring : "no message",
				 cJSON_IsNumber(c) ? c->valueint : 0);
			cJSON_Delete(r);
		} else if (!r) {
			snprintf(why, n, "the MCP server %s answered %s without a result", s->conf.name,
				 method);
		} else {
			*result = r;
			rc = 0;
		}
	}
	cJSON_Delete(p.msg);
	return rc;
}

/* --- stopping ------------------------------------------------------------- */

void mcp_srv_kill(struct mcp_server *s, const char *why)
{
	if (!s->reader_running)
		return;
	snprintf(s->why, sizeof(s->why), "%s", why);
	s->state = MS_STOPPING;
	proctree_kill(&s->tree);
}

void mcp_srv_stop_begin(struct mcp_server *s)
{
	pthread_mutex_lock(&s->lock);
	s->retired = 1;
	pthread_mutex_unlock(&s->lock);
	close_input(s);
}

void mcp_srv_stop_end(struct mcp_server *s, long long deadline)
{
	pthread_mutex_lock(&s->lock);
	while (s->reader_running && now_ms() < deadline)
		wait_cv(s, 50);
	if (s->reader_running)
		mcp_srv_kill(s, "stopped by lmsfs");
	/* The reader ends once the killed tree's stdout is closed. */
	deadline = now_ms() + 5000;
	while (s->reader_running && now_ms() < deadline)
		wait_cv(s, 50);
	if (!s->reader_running)
		proctree_close(&s->tree);
	s->state = MS_IDLE;
	snprintf(s->why, sizeof(s->why), "stopped");
	pthread_mutex_unlock(&s->lock);
}

void mcp_srv_stop(struct mcp_server *s)
{
	mcp_srv_stop_begin(s);
	mcp_srv_stop_end(s, now_ms() + MCP_STOP_WAIT_MS);
}

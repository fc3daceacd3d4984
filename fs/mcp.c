/* mcp.c - an MCP server's process: start, initialize, JSON-RPC requests multiplexed by id, reader thread, stop. */
#include "mcp_int.h"

#include "buf.h"
#include "config.h"
#include "log.h"
#include "tooldef.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

void mcp_srv_init(struct mcp_server *s)
{
	pthread_mutex_init(&s->wlock, NULL);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->state = MS_IDLE;
	s->in_fd = -1;
	s->tree.pid = -1;
	s->tree.pidfd = s->tree.report = -1;
}

void mcp_srv_destroy(struct mcp_server *s)
{
	cJSON_Delete(s->tools);
	mcp_conf_server_free(&s->conf);
	pthread_mutex_destroy(&s->wlock);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cv);
}

/* --- the reader ----------------------------------------------------------- */

/* How long after `exits` exits (or failed starts) in a row the next start
 * waits: at once after the first, then 1, 2, 4, ... 32 s. */
static long long backoff_ms(int exits)
{
	return exits <= 1 ? 0 : 1000LL << (exits > 6 ? 5 : exits - 2);
}

struct reader_arg {
	struct mcp_server *s;
	long gen;
	int out, err;
};

static void write_line(struct mcp_server *s, const char *text)
{
	size_t len = strlen(text);
	pthread_mutex_lock(&s->wlock);
	if (s->in_fd >= 0) {
		long long deadline = now_ms() + 1000;
		size_t off = 0;
		while (off < len) {
			ssize_t n = write(s->in_fd, text + off, len - off);
			struct pollfd p = {.fd = s->in_fd, .events = POLLOUT};
			if (n > 0) {
				off += (size_t)n;
				continue;
			}
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				break;
			if (now_ms() >= deadline || poll(&p, 1, 100) < 0)
				break;
		}
	}
	pthread_mutex_unlock(&s->wlock);
}

/* Answers a request the server sent us: ping is answered, anything else
 * is "method not found". */
static void answer_request(struct mcp_server *s, const cJSON *msg)
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(msg, "method");
	cJSON *r = cJSON_CreateObject();
	char *t;
	cJSON_AddStringToObject(r, "jsonrpc", "2.0");
	cJSON_AddItemToObject(r, "id", cJSON_Duplicate(id, 1));
	if (cJSON_IsString(m) && strcmp(m->valuestring, "ping") == 0) {
		cJSON_AddObjectToObject(r, "result");
	} else {
		cJSON *e = cJSON_AddObjectToObject(r, "error");
		cJSON_AddNumberToObject(e, "code", -32601);
		cJSON_AddStringToObject(e, "message", "method not supported by lmsfs");
	}
	t = cJSON_PrintUnformatted(r);
	cJSON_Delete(r);
	if (t) {
		size_t l = strlen(t);
		char *line = malloc(l + 2);
		if (line) {
			memcpy(line, t, l);
			memcpy(line + l, "\n", 2);
			write_line(s, line);
			free(line);
		}
		free(t);
	}
}

/* One line of the server's stdout. */
static void take_line(struct mcp_server *s, const char *line, size_t len)
{
	cJSON *msg;
	const cJSON *id, *method;

	while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
		len--;
	if (len == 0)
		return;
	msg = cJSON_ParseWithLength(line, len);
	if (!cJSON_IsObject(msg)) {
		cJSON_Delete(msg);
		pthread_mutex_lock(&s->lock);
		snprintf(s->garbage, sizeof(s->garbage), "%.*s", (int)(len > 120 ? 120 : len), line);
		pthread_mutex_unlock(&s->lock);
		log_warnx("mcp %s: not JSON-RPC on stdout: %.200s", s->conf.name, s->garbage);
		return;
	}
	id = cJSON_GetObjectItemCaseSensitive(msg, "id");
	method = cJSON_GetObjectItemCaseSensitive(msg, "method");
	if (cJSON_IsString(method)) {
		if (id && !cJSON_IsNull(id)) {
			answer_request(s, msg);
		} else if (strcmp(method->valuestring, "notifications/tools/list_changed") == 0) {
			pthread_mutex_lock(&s->lock);
			s->list_stale = 1;
			pthread_mutex_unlock(&s->lock);
		}
		cJSON_Delete(msg);
		return;
	}
	if (!cJSON_IsNumber(id)) {
		cJSON_Delete(msg);
		return;
	}
	pthread_mutex_lock(&s->lock);
	for (struct mcp_pending *p = s->pending; p; p = p->next)
		if (p->id == (long)id->valuedouble && !p->done) {
			p->done = 1;
			p->msg = msg;
			msg = NULL;
			pthread_cond_broadcast(&s->cv);
			break;
		}
	pthread_mutex_unlock(&s->lock);
	cJSON_Delete(msg);
}

/* Splits what arrived into lines for fn; drops a line over the cap. */
static void split_lines(struct buf *b, int *skipping, void (*fn)(void *, const char *, size_t),
			void *ctx)
{
	char *nl;
	while ((nl = memchr(b->data, '\n', b->len))) {
		size_t l = (size_t)(nl - b->data);
		if (!*skipping)
			fn(ctx, b->data, l);
		*skipping = 0;
		buf_consume(b, l + 1);
	}
	if (b->len >= b->max - 65536) {
		*skipping = 1;
		buf_reset(b);
	}
}

static void out_line(void *ctx, const char *l, size_t n)
{
	take_line(ctx, l, n);
}

static void err_line(void *ctx, const char *l, size_t n)
{
	struct mcp_server *s = ctx;
	if (n)
		log_info("mcp %s stderr: %.*s", s->conf.name, (int)(n > 1000 ? 1000 : n), l);
}

static void *reader_main(void *arg)
{
	struct reader_arg a = *(struct reader_arg *)arg;
	struct mcp_server *s = a.s;
	struct buf ob, eb;
	int oskip = 0, eskip = 0, status;
	char tmp[65536];

	free(arg);
	buf_init(&ob, MCP_LINE_MAX);
	buf_init(&eb, 256 * 1024);
	while (a.out >= 0) {
		struct pollfd p[2] = {{.fd = a.out, .events = POLLIN}, {.fd = a.err, .events = POLLIN}};
		int np = a.err >= 0 ? 2 : 1;
		if (poll(p, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < np; i++) {
			ssize_t n;
			int *fd = i == 0 ? &a.out : &a.err;
			if (!p[i].revents)
				continue;
			n = read(*fd, tmp, sizeof(tmp));
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0) {
				close(*fd);
				*fd = -1;
				continue;
			}
			buf_append(i == 0 ? &ob : &eb, tmp, (size_t)n);
			if (i == 0)
				split_lines(&ob, &oskip, out_line, s);
			else
				split_lines(&eb, &eskip, err_line, s);
		}
	}
	if (a.err >= 0) {
		/* Whatever stderr still holds, without waiting for more. */
		ssize_t n;
		fcntl(a.err, F_SETFL, O_NONBLOCK);
		while ((n = read(a.err, tmp, sizeof(tmp))) > 0) {
			buf_append(&eb, tmp, (size_t)n);
			split_lines(&eb, &eskip, err_line, s);
		}
		close(a.err);
	}
	if (eb.len)
		err_line(s, eb.data, eb.len);
	buf_free(&ob);
	buf_free(&eb);

	/* stdout closed: the server is done (or useless); its tree goes. */
	pthread_mutex_lock(&s->lock);
	proctree_kill(&s->tree);
	proctree_reap(&s->tree, 1);
	status = s->tree.status;
	if (s->state == MS_READY || s->state == MS_STARTING || !s->why[0]) {
		if (WIFEXITED(status))
			snprintf(s->why, sizeof(s->why), "the server exited with status %d",
				 WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			snprintf(s->why, sizeof(s->why), "the server was killed by signal %d",
				 WTERMSIG(status));
		else
			snprintf(s->why, sizeof(s->why), "the server closed its output");
	}
	for (struct mcp_pending *p = s->pending; p; p = p->next)
		if (!p->done) {
			p->done = 1;
			snprintf(p->err, sizeof(p->err), "MCP server %.60s stopped during the call: %.400s",
				 s->conf.name, s->why);
		}
	if (s->state == MS_READY || s->state == MS_STOPPING) {
		/* A start that failed is counted by mcp_srv_ensure. */
		s->state = MS_IDLE;
		/* An exit soon after the start counts as one more in a row. */
		s->exits = now_ms() - s->started_at > MCP_STABLE_MS ? 1 : s->exits + 1;
		s->next_start = now_ms() + backoff_ms(s->exits);
	}
	s->reader_running = 0;
	log_info("mcp %s: %s", s->conf.name, s->why);
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->lock);
	mcp_srv_put(s);
	return NULL;
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

/* Spawns the process and its reader (no lock held; s->state is
 * MS_STARTING, so nobody else touches the fields set here, which are set
 * under both locks). */
static int spawn(struct mcp_server *s, char *why, size_t n)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, rc;
	char path[4400];
	char **env = server_env(&s->conf);
	struct reader_arg *ra = malloc(sizeof(*ra));
	struct proctree t;
	pthread_t th;

	if (!env || !ra) {
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
	rc = proctree_spawn(&t, path, s->conf.argv, env, tooldef_dir_path(), in[0], out[1], err[1],
			    0);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	in[0] = out[1] = err[1] = -1;
	if (rc) {
		snprintf(why, n, "cannot run %.200s: %s", path, strerror(rc));
		goto fail;
	}
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	pthread_mutex_lock(&s->wlock);
	pthread_mutex_lock(&s->lock);
	s->tree = t;
	s->in_fd = in[1];
	s->gen++;
	s->garbage[0] = '\0';
	s->reader_running = 1;
	s->started_at = now_ms();
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_unlock(&s->wlock);
	ra->s = s;
	ra->gen = s->gen;
	ra->out = out[0];
	ra->err = err[0];
	mcp_srv_hold(s); /* the reader's reference */
	if (pthread_create(&th, NULL, reader_main, ra) != 0) {
		/* Without a reader nobody reads: kill it, as the reader would. */
		snprintf(why, n, "cannot start a thread");
		close(out[0]);
		close(err[0]);
		pthread_mutex_lock(&s->lock);
		proctree_close(&s->tree);
		s->reader_running = 0;
		pthread_mutex_unlock(&s->lock);
		mcp_srv_put(s);
		ra = NULL;
		goto fail_env;
	}
	pthread_detach(th);
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
fail_env:
	free(ra);
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
static int handshake(struct mcp_server *s, char *why, size_t n)
{
	cJSON *params = cJSON_CreateObject(), *info, *res = NULL;
	const cJSON *v;
	int to = 0;

	cJSON_AddStringToObject(params, "protocolVersion", MCP_PROTOCOL);
	cJSON_AddObjectToObject(params, "capabilities");
	info = cJSON_AddObjectToObject(params, "clientInfo");
	cJSON_AddStringToObject(info, "name", "lmsfs");
	cJSON_AddStringToObject(info, "version", LMSFS_VERSION);
	if (mcp_srv_rpc(s, "initialize", params, mcp_cfg->tool_timeout_ms, NULL, 0, &res, why, n, &to,
			NULL) < 0) {
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
	write_line(s, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
	return mcp_tools_fetch(s, why, n);
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

int mcp_srv_ensure(struct mcp_server *s, char *why, size_t n)
{
	long long deadline = now_ms() + mcp_cfg->tool_timeout_ms + 2000;
	int rc;

	for (;;) {
		if (s->state == MS_READY)
			return 0;
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
	pthread_mutex_lock(&s->wlock);
	if (s->in_fd >= 0)
		close(s->in_fd);
	s->in_fd = -1;
	pthread_mutex_unlock(&s->wlock);
	pthread_mutex_lock(&s->lock);
	proctree_close(&s->tree);
	pthread_mutex_unlock(&s->lock);
	rc = spawn(s, why, n);
	if (rc == 0)
		rc = handshake(s, why, n);
	pthread_mutex_lock(&s->lock);
	if (rc == 0 && s->state == MS_STARTING) {
		s->state = MS_READY;
		log_info("mcp %s: ready (protocol %s)", s->conf.name, s->version);
	} else {
		if (rc == 0)
			snprintf(why, n, "the server stopped while starting: %s", s->why);
		s->state = MS_FAILED;
		snprintf(s->why, sizeof(s->why), "%s", why);
		if (s->reader_running)
			proctree_kill(&s->tree);
		s->exits++;
		s->next_start = now_ms() + backoff_ms(s->exits);
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
	int rc = -1, gave_up = 0;
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
			write_line(s, line);
			text = line;
		}
	}
	free(text);

	pthread_mutex_lock(&s->lock);
	while (!p.done) {
		struct timespec ts;
		long long now = now_ms();
		if (!s->reader_running || s->gen != gen) {
			p.done = 1;
			snprintf(p.err, sizeof(p.err), "MCP server %.60s is not running: %.400s", s->conf.name,
				 s->why[0] ? s->why : "stopped");
			break;
		}
		if (cancel && *cancel) {
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
			write_line(s, note);
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

void mcp_srv_stop(struct mcp_server *s)
{
	long long deadline = now_ms() + MCP_STOP_WAIT_MS;

	pthread_mutex_lock(&s->wlock);
	if (s->in_fd >= 0)
		close(s->in_fd);
	s->in_fd = -1;
	pthread_mutex_unlock(&s->wlock);
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

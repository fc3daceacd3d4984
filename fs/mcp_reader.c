/* mcp_reader.c - an MCP server's reader thread: answers by id, notifications, requests from the server, stderr to the log, cleanup at exit. */
#include "mcp_int.h"

#include "buf.h"
#include "log.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long after `exits` exits (or failed starts) in a row the next start
 * waits: at once after the first, then 1, 2, 4, ... 32 s. */
long long mcp_backoff_ms(int exits)
{
	return exits <= 1 ? 0 : 1000LL << (exits > 6 ? 5 : exits - 2);
}


/* wlock held. What was written is dropped from the front of the queue
 * only once it is over half of it: linear time for any backlog. */
static size_t flush_locked(struct mcp_server *s)
{
	while (s->in_fd >= 0 && s->outq_off < s->outq.len) {
		ssize_t n = write(s->in_fd, s->outq.data + s->outq_off, s->outq.len - s->outq_off);
		if (n > 0) {
			s->outq_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN)
			s->outq_off = s->outq.len; /* EPIPE: the reader sees the end */
		break;
	}
	if (s->outq_off == s->outq.len) {
		mcp_outq_reset(s);
	} else if (s->outq_off > s->outq.len / 2) {
		buf_consume(&s->outq, s->outq_off);
		s->outq_off = 0;
	}
	return s->outq.len - s->outq_off;
}

void mcp_outq_reset(struct mcp_server *s)
{
	buf_reset(&s->outq);
	s->outq_off = 0;
}

size_t mcp_flush(struct mcp_server *s)
{
	size_t left;
	pthread_mutex_lock(&s->wlock);
	left = flush_locked(s);
	pthread_mutex_unlock(&s->wlock);
	return left;
}

int mcp_write_line(struct mcp_server *s, const char *text)
{
	int rc = -1;
	pthread_mutex_lock(&s->wlock);
	if (s->in_fd >= 0 && buf_append(&s->outq, text, strlen(text)) == 0) {
		flush_locked(s);
		rc = 0;
	}
	pthread_mutex_unlock(&s->wlock);
	return rc;
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
			mcp_write_line(s, line);
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

void *mcp_reader_main(void *arg)
{
	struct mcp_reader_arg *ra = arg, a = *ra;
	struct mcp_server *s = a.s;
	struct buf ob, eb;
	struct proctree t;
	int oskip = 0, eskip = 0, status, rc;
	char tmp[65536];

	rc = proctree_spawn(&t, a.path, a.argv, a.env, a.cwd, a.child[0], a.child[1], a.child[2],
			    PROCTREE_PDEATH);
	pthread_mutex_lock(&s->lock);
	if (rc == 0)
		s->tree = t;
	else
		s->reader_running = 0;
	ra->rc = rc;
	ra->done = 1; /* ra is not ours from here */
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->lock);
	if (rc) {
		close(a.out);
		close(a.err);
		mcp_srv_put(s);
		return NULL;
	}
	buf_init(&ob, MCP_LINE_MAX);
	buf_init(&eb, 256 * 1024);
	while (a.out >= 0) {
		struct pollfd p[2] = {{.fd = a.out, .events = POLLIN}, {.fd = a.err, .events = POLLIN}};
		int np = a.err >= 0 ? 2 : 1;
		/* What the server's stdin did not take yet goes as it reads:
		 * looked at often while some is left, now and then else (a
		 * writer may have left some meanwhile). */
		int wait = mcp_flush(s) ? 20 : 250;
		if (poll(p, (nfds_t)np, wait) < 0) {
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
		s->next_start = now_ms() + mcp_backoff_ms(s->exits);
	}
	s->reader_running = 0;
	log_info("mcp %s: %s", s->conf.name, s->why);
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->lock);
	mcp_srv_put(s);
	return NULL;
}


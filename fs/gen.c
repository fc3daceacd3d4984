/* gen.c - one answer: build the request from the conversation's files,
 * send it with retries and the breaker, stream the text into `stream`,
 * run tool rounds, and append the result to messages.jsonl. */
#include "gen.h"

#include "api.h"
#include "config.h"
#include "fsio.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "mock.h"
#include "models.h"
#include "retry.h"
#include "recover.h"
#include "sse.h"
#include "store.h"
#include "tooldef.h"
#include "toolrun.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define ERROR_BODY_MAX (64u << 10)

static const struct config *cfg;

void gen_init(const struct config *c)
{
	cfg = c;
}

void gen_result_init(struct gen_result *r)
{
	memset(r, 0, sizeof(*r));
	buf_init(&r->text, 64u << 20);
	r->ttft = r->tps = -1;
	r->prompt_tokens = r->completion_tokens = -1;
}

void gen_result_free(struct gen_result *r)
{
	if (r)
		buf_free(&r->text);
}

/* Appends history lines under the history lock; 0 or -errno (the file is
 * as before on failure). */
static int append_history(const struct gen_job *job, const char *line, int how, off_t *at)
{
	int ret;
	job->hist_lock(job->ctx);
	ret = store_hist_append(job->dirfd, line, strlen(line), how, at);
	job->hist_unlock(job->ctx);
	return ret;
}

/* Takes back lines appended at `at` (a tool round that cannot be
 * completed), if the history still holds `line` there. */
static void undo_history(const struct gen_job *job, off_t at, const char *line)
{
	size_t n = strlen(line);
	char *got = NULL;
	size_t len = 0;

	job->hist_lock(job->ctx);
	if (store_hist_read_from(job->dirfd, at, &got, &len) == 0 && len >= n &&
	    memcmp(got, line, n) == 0 && store_hist_truncate(job->dirfd, at) == 0)
		job->hist_replaced(job->ctx); /* writers holding it open must know */
	job->hist_unlock(job->ctx);
	free(got);
}

/* An answer (or part of one) could not be stored: the class, the errno and
 * a reason. */
static enum err_class storage_failed(struct gen_result *res, int err, const char *what)
{
	res->sys_errno = -err;
	snprintf(res->errmsg, sizeof(res->errmsg), "cannot store %s in messages.jsonl: %s",
		 what, strerror(-err));
	return EC_STORAGE;
}

struct stream_ctx {
	const struct gen_job *job;
	struct api_answer *ans;
	struct sse_parser *sse;
	int stream_fd;
	int write_err;
	int batching;       /* inside on_bytes: text is written once per read */
	struct buf pending; /* text not yet in stream */
};

static void flush_text(struct stream_ctx *s)
{
	if (s->pending.len && s->stream_fd >= 0 &&
	    fsio_write_all(s->stream_fd, s->pending.data, s->pending.len) != 0)
		s->write_err = 1;
	buf_reset(&s->pending);
}

static int on_text(void *u, const char *text, size_t len)
{
	struct stream_ctx *s = u;
	struct gen_progress *pg = s->job->progress;
	if (dbl_get(&pg->first_token) == 0)
		dbl_set(&pg->first_token, now_s());
	__atomic_add_fetch(&pg->tokens, 1, __ATOMIC_RELAXED);
	if (s->batching && buf_append(&s->pending, text, len) == 0)
		return 0;
	flush_text(s);
	if (s->stream_fd >= 0 && fsio_write_all(s->stream_fd, text, len) != 0)
		s->write_err = 1;
	return 0;
}

static int on_event(void *u, const char *event, const char *data, size_t len)
{
	(void)event;
	struct stream_ctx *s = u;
	int rc = api_feed_event(s->ans, data, len, on_text, s);
	if (rc)
		return rc;
	/* An error event ends the answer; [DONE] too. */
	return (s->ans->err || s->ans->done) ? 1 : 0;
}

static int on_bytes(void *u, const char *p, size_t n)
{
	struct stream_ctx *s = u;
	int rc;

	/* The first byte: a model loaded just in time is loaded. */
	__atomic_store_n(&s->job->progress->loading, 0, __ATOMIC_RELAXED);
	/* Everything that arrived in one read reaches stream in one write:
	 * readers see it at the same moment, with one syscall instead of one
	 * per token. */
	s->batching = 1;
	rc = sse_feed(s->sse, p, n);
	s->batching = 0;
	flush_text(s);
	if (rc == -EMSGSIZE) {
		s->ans->err = EC_PROTOCOL;
		snprintf(s->ans->errmsg, sizeof(s->ans->errmsg),
			 "an event from the server is larger than 16 MiB");
	}
	return rc;
}

static void sleep_ms_cancellable(long ms, const volatile int *cancel)
{
	while (ms > 0 && !flag_get(cancel)) {
		long step = ms > 50 ? 50 : ms;
		struct timespec ts = {0, step * 1000000L};
		nanosleep(&ts, NULL);
		ms -= step;
	}
}

/* One request with retries. Fills ans; returns the class of failure. The
 * breaker sees the request once, before its first attempt and after its
 * last (retry.h): it counts failed requests, not attempts. */
static enum err_class request(const struct gen_job *job, const char *body,
			      int stream, struct api_answer *ans,
			      struct gen_result *res, int stream_fd)
{
	int max_retries = stream ? cfg->max_retries_stream : cfg->max_retries;
	enum err_class cls = EC_NONE;
	struct breaker_ticket ticket = {0, 0};
	int admitted = 0, held_back = 0;

	for (int attempt = 0;; attempt++) {
		struct http_reply r;
		struct stream_ctx s = {job, ans, NULL, stream_fd, 0, 0, {0}};
		long retry_after = -1;
		int rc;

		api_answer_free(ans);
		api_answer_init(ans);
		if (flag_get(job->cancel)) {
			cls = EC_CANCELLED;
			snprintf(res->errmsg, sizeof(res->errmsg), "cancelled");
			break;
		}
		if (cfg->provider == PROVIDER_MOCK) {
			res->attempts++;
			metrics_request();
			cls = mock_complete(cfg, body, ans, on_text, &s, job->cancel,
					    res->errmsg, sizeof(res->errmsg));
			break;
		}
		if (!admitted) {
			if (breaker_enter(&ticket, res->errmsg, sizeof(res->errmsg)) != 0) {
				cls = EC_BREAKER;
				break;
			}
			admitted = 1;
		}
		res->attempts++;
		metrics_request();
		buf_init(&s.pending, 1u << 20);
		http_reply_init(&r, ERROR_BODY_MAX);
		if (stream) {
			s.sse = sse_new(16u << 20, on_event, &s);
			rc = http_request("POST", "/v1/chat/completions", body, on_bytes, &s,
					  job->cancel, &r);
			if (rc == 0 && !ans->err && !ans->done)
				sse_finish(s.sse);
			sse_free(s.sse);
		} else {
			r.body.max = 64u << 20;
			rc = http_request("POST", "/v1/chat/completions", body, NULL, NULL,
					  job->cancel, &r);
			if (rc == 0 && r.status >= 200 && r.status < 300)
				api_decode_completion(ans, r.body.data, r.body.len, on_text, &s);
		}
		flush_text(&s);
		buf_free(&s.pending);
		retry_after = r.retry_after_ms;
		struct errclass_attempt at = {
			.transport = r.transport,
			.transport_msg = r.err,
			.status = r.status,
			.body = r.body.data,
			.body_len = r.body.len,
			.answer_err = ans->err,
			.answer_msg = ans->errmsg,
			.streamed = stream,
			.chunks = ans->chunks,
			.done = ans->done,
			.finished = ans->finish[0] != '\0',
			.has_content = ans->content.len > 0,
			.n_calls = ans->n_calls,
		};
		cls = errclass_of_attempt(&at, res->errmsg, sizeof(res->errmsg));
		http_reply_free(&r);
		if (cls == EC_NONE || cls == EC_CANCELLED)
			break;
		if (!errclass_retryable(cls) || ans->chunks > 0 ||
		    attempt >= max_retries || flag_get(job->cancel))
			break;
		/* Other requests opened the breaker (before or during the
		 * backoff): this one ends with its own failure, not
		 * circuit_open. */
		if (!breaker_may_retry(&ticket)) {
			held_back = 1;
			break;
		}
		long d = retry_backoff_ms(attempt + 1, retry_after);
		log_info("%s: %s (%s); retry %d in %ld ms", job->conv_name,
			 errclass_name(cls), res->errmsg, attempt + 1, d);
		sleep_ms_cancellable(d, job->cancel);
		if (!flag_get(job->cancel) && !breaker_may_retry(&ticket)) {
			held_back = 1;
			break;
		}
		res->retries++;
		metrics_retry();
	}
	/* However the request ended (a cancelled probe too), the breaker
	 * hears of it once. */
	if (admitted)
		breaker_done(&ticket, cls, res->errmsg);
	if (held_back) {
		size_t n = strlen(res->errmsg);
		snprintf(res->errmsg + n, sizeof(res->errmsg) - n,
			 "; not retried: the circuit breaker opened meanwhile");
	}
	return cls;
}

/* Ends the answer's text in stream with a newline and appends the
 * assistant message (status marks an unfinished one) to the history. */
static int save_assistant(const struct gen_job *job, const struct api_answer *ans,
			  const char *status, int how, char **saved, off_t *at)
{
	char *line = api_assistant_line(ans, status);
	int ret;
	if (ans->content.len)
		store_stream_write(job->dirfd, "\n", 1);
	ret = line ? append_history(job, line, how, at) : -ENOMEM;
	if (saved && ret == 0)
		*saved = line;
	else
		free(line);
	return ret;
}

/* A reply that names no function for one of its calls, or that ends with
 * finish_reason "tool_calls" (or "function_call") and holds no call, is
 * broken: never stored as an empty answer, never run. 1 with msg set. */
static int calls_malformed(const struct api_answer *a, char *msg, size_t len)
{
	for (int i = 0; i < a->n_calls; i++)
		if (!a->calls[i].name || !a->calls[i].name[0]) {
			snprintf(msg, len, "tool call %d of %d in the server's reply has no "
					   "function name",
				 i + 1, a->n_calls);
			return 1;
		}
	if (a->n_calls == 0 &&
	    (!strcmp(a->finish, "tool_calls") || !strcmp(a->finish, "function_call"))) {
		snprintf(msg, len, "the server's reply ended with finish_reason \"%s\" "
				   "but holds no tool call",
			 a->finish);
		return 1;
	}
	return 0;
}

void gen_run(const struct gen_job *job, struct gen_result *res)
{
	char *want = NULL, *model = NULL, *system = NULL, *params_txt = NULL;
	cJSON *params = NULL;
	cJSON *offered = NULL; /* the tools the last request offered, by name */
	struct api_answer ans;
	enum err_class cls = EC_NONE;
	int stream_fd = -1;
	int rounds = 0, jit = 0;
	int keep_text = 1; /* the marked line of a failure holds the text */

	api_answer_init(&ans);
	/* The one place that creates stream: later writes (marks, newlines)
	 * only append, so that a conversation being removed (rm -r) is not
	 * filled again behind the user's back. */
	stream_fd = store_stream_open(job->dirfd);

	params_txt = store_setting(job->dirfd, "params.json");
	if (params_txt) {
		params = cJSON_Parse(params_txt);
		if (!cJSON_IsObject(params)) {
			cls = EC_BAD_REQUEST;
			snprintf(res->errmsg, sizeof(res->errmsg),
				 "params.json is not a JSON object");
			goto fail;
		}
	}
	want = store_setting(job->dirfd, "model");
	model = models_resolve_jit(want, &jit, &cls, res->errmsg, sizeof(res->errmsg));
	if (!model)
		goto fail;
	/* .status says "loading" until the first byte of the answer. */
	__atomic_store_n(&job->progress->loading, jit, __ATOMIC_RELAXED);
	snprintf(res->model, sizeof(res->model), "%s", model);
	system = store_setting(job->dirfd, "system");

	for (;;) {
		char why[256] = "", first_role[32];
		struct buf msgs;
		cJSON *tools;
		char *body;
		int stream;

		store_partial_set(job->dirfd);
		/* Room for the history and its attachments in base64. */
		buf_init(&msgs, STORE_HISTORY_MAX + (1u << 20) +
					(size_t)cfg->max_attach_request_bytes / 3 * 4 + 4096);
		/* The system prompt leads, unless the history starts with one. */
		if (store_hist_for_request_files(job->dirfd, &msgs, first_role,
						 sizeof(first_role), why, sizeof(why),
						 cfg->max_attach_bytes,
						 cfg->max_attach_request_bytes) != 0) {
			buf_free(&msgs);
			cls = EC_BAD_REQUEST;
			snprintf(res->errmsg, sizeof(res->errmsg), "%s", why);
			goto fail;
		}
		if (strcmp(first_role, "system") != 0) {
			const char *sp = system ? system : cfg->system_prompt;
			if (sp && sp[0]) {
				cJSON *sm = cJSON_CreateObject();
				char *t;
				cJSON_AddStringToObject(sm, "role", "system");
				cJSON_AddStringToObject(sm, "content", sp);
				t = cJSON_PrintUnformatted(sm);
				cJSON_Delete(sm);
				if (t) {
					/* In place: the messages may hold images. */
					if (msgs.len)
						buf_prepend(&msgs, ",", 1);
					buf_prepend(&msgs, t, strlen(t));
				}
				free(t);
			}
		}
		tools = tooldef_definitions(params, job->cancel);
		/* Only what this request offers may run when it answers. */
		cJSON_Delete(offered);
		offered = tooldef_offered_names(tools, params);
		body = api_build_request_buf(cfg, model, &msgs, params, tools, &stream);
		buf_free(&msgs);
		if (!body) {
			cls = EC_PROTOCOL;
			snprintf(res->errmsg, sizeof(res->errmsg), "out of memory");
			goto fail;
		}
		cls = request(job, body, stream, &ans, res, stream_fd);
		__atomic_store_n(&job->progress->loading, 0, __ATOMIC_RELAXED);
		free(body);
		if (ans.prompt_tokens >= 0)
			res->prompt_tokens = ans.prompt_tokens;
		if (ans.completion_tokens >= 0)
			res->completion_tokens = ans.completion_tokens;
		if (ans.tps >= 0)
			res->tps = ans.tps;
		if (ans.ttft >= 0)
			res->ttft = ans.ttft;
		snprintf(res->finish, sizeof(res->finish), "%s", ans.finish);
		if (cls != EC_NONE)
			goto fail;
		if (calls_malformed(&ans, res->errmsg, sizeof(res->errmsg))) {
			cls = EC_PROTOCOL;
			goto fail;
		}

		if (ans.n_calls == 0) {
			int rc = save_assistant(job, &ans, NULL, STORE_SYNC, NULL, NULL);
			if (rc != 0) {
				/* Never "ok" for an answer that is not on disk; its
				 * text stays in stream. */
				cls = storage_failed(res, rc, "the answer");
				goto fail;
			}
			buf_append(&res->text, ans.content.data ? ans.content.data : "",
				   ans.content.len);
			break;
		}
		if (++rounds > cfg->max_tool_rounds) {
			cls = EC_BAD_REQUEST;
			snprintf(res->errmsg, sizeof(res->errmsg),
				 "the model kept calling tools: stopped after %d rounds "
				 "(max_tool_rounds)",
				 cfg->max_tool_rounds);
			goto fail;
		}
		/* A tool round: the calls go to the history, then the results. */
		for (int i = 0; i < ans.n_calls; i++)
			if (!ans.calls[i].id) {
				char id[32];
				snprintf(id, sizeof(id), "call_%d_%d", rounds, i);
				ans.calls[i].id = strdup(id);
			}
		/* The round's lines need no fsync of their own: the answer's
		 * synced append at the end covers the whole file. */
		{
			char *round_line = NULL;
			off_t round_at = -1;
			int rc = save_assistant(job, &ans, NULL, 0, &round_line, &round_at);
			if (rc != 0) {
				cls = storage_failed(res, rc, "a tool call");
				goto fail;
			}
			store_partial_set(job->dirfd);
			/* Every call gets its result, in order. A call past the
			 * first TOOLRUN_MAX_CALLS, or to a tool this request did
			 * not offer, is answered with an error and never runs. */
			for (int i = 0; i < ans.n_calls && rc == 0; i++) {
				struct api_tool_call *c = &ans.calls[i];
				enum toolrun_gate gate = TOOLRUN_OFFERED;
				char *result;
				if (i >= TOOLRUN_MAX_CALLS)
					gate = TOOLRUN_OVER_LIMIT;
				else if (!tooldef_is_offered(offered, c->name))
					gate = TOOLRUN_NOT_OFFERED;
				result = toolrun_call(c->name, c->args.data ? c->args.data : "",
						      c->id, job->conv_name, job->dirfd,
						      ans.legacy_call, gate, job->cancel);
				rc = result ? append_history(job, result, 0, NULL) : -ENOMEM;
				free(result);
			}
			if (rc != 0) {
				/* A round without all its results is a history the
				 * server refuses: take the round back. */
				undo_history(job, round_at, round_line);
				free(round_line);
				cls = storage_failed(res, rc, "a tool result");
				goto fail;
			}
			free(round_line);
		}
		if (flag_get(job->cancel)) {
			cls = EC_CANCELLED;
			snprintf(res->errmsg, sizeof(res->errmsg), "cancelled");
			keep_text = 0; /* the round's line holds it */
			goto fail;
		}
	}
	goto done;

fail:
	/* Stopped by the daemon's shutdown, not by the user: interrupted. */
	if (cls == EC_CANCELLED && flag_get(job->cancel) == GEN_STOPPING) {
		cls = EC_INTERRUPTED;
		snprintf(res->errmsg, sizeof(res->errmsg),
			 "the daemon stopped while answering; write retry to .ctl");
	}
	/* A failed answer always leaves a marked assistant line with the text
	 * shown so far (maybe none): the prompt is never silently skipped, and
	 * a retry knows what to drop. If even that cannot be stored, the
	 * conversation owes the mark (res->unmarked, see conv.c). */
	{
		char status[600];
		size_t tl = keep_text ? ans.content.len : 0;
		char *line;
		int rc;

		if (cls == EC_CANCELLED)
			snprintf(status, sizeof(status), "cancelled");
		else if (cls == EC_INTERRUPTED)
			snprintf(status, sizeof(status), "%s", RECOVER_INTERRUPTED);
		else
			snprintf(status, sizeof(status), "%s: %s", errclass_name(cls),
				 res->errmsg);
		if (tl)
			store_stream_write(job->dirfd, "\n", 1);
		line = store_marked_answer_line(ans.content.data, tl, status);
		rc = line ? append_history(job, line, STORE_SYNC, NULL) : -ENOMEM;
		free(line);
		if (rc != 0) {
			res->unmarked = 1;
			log_warnx("%s: cannot store the unfinished answer: %s", job->conv_name,
				  strerror(-rc));
		}
		if (tl)
			buf_append(&res->text, ans.content.data, tl);
	}
	if (cls == EC_CANCELLED)
		store_mark(job->dirfd, "[lmsfs] cancelled");
	else
		store_mark(job->dirfd, "[lmsfs] error %s: %s", errclass_name(cls), res->errmsg);
done:
	res->err = cls;
	double first = dbl_get(&job->progress->first_token);
	if (first > 0 && res->ttft < 0)
		res->ttft = first - dbl_get(&job->progress->started);
	if (res->tps < 0 && first > 0) {
		double dt = now_s() - first;
		long toks = res->completion_tokens > 0 ? res->completion_tokens
						       : __atomic_load_n(&job->progress->tokens, __ATOMIC_RELAXED);
		if (dt > 0)
			res->tps = toks / dt;
	}
	if (stream_fd >= 0)
		close(stream_fd);
	api_answer_free(&ans);
	cJSON_Delete(offered);
	cJSON_Delete(params);
	free(params_txt);
	free(want);
	free(model);
	free(system);
}

/* gen_request.c - one request of an answer, with retries and the
 * breaker: its events decoded as they arrive and its text appended to
 * `stream`. */
#include "gen_int.h"

#include "api.h"
#include "config.h"
#include "fsio.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "mock.h"
#include "retry.h"
#include "sse.h"
#include "store.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define ERROR_BODY_MAX (64u << 10)

struct stream_ctx {
	const struct gen_job *job;
	struct api_answer *ans;
	struct sse_parser *sse;
	struct gen_out *out;
	int stream_fd;
	int write_err;
	int batching;        /* inside on_bytes: text is written once per read */
	struct buf pending;  /* text not yet in stream */
	struct buf rpending; /* reasoning not yet in the reasoning file */
	int reasoned;        /* this attempt showed reasoning */
	int announced;       /* stream's growth was announced (gen_changed) */
	int rannounced;      /* the reasoning file's, too */
};

/* Announced once per request: the conversation is busy from its prompt
 * on, and the attributes of a busy conversation's stream and reasoning are
 * not cached (fs_special.c), so one announcement drops what was cached
 * before and the tokens after it are seen without one each. The answer's
 * end is announced again. */
static void stream_grew(struct stream_ctx *s)
{
	if (!s->announced) {
		s->announced = 1;
		gen_changed(s->job, STORE_STREAM);
	}
}

static void reasoning_grew(struct stream_ctx *s)
{
	if (!s->rannounced) {
		s->rannounced = 1;
		gen_changed(s->job, STORE_REASONING);
	}
}

static void flush_text(struct stream_ctx *s)
{
	if (!s->pending.len)
		return;
	if (s->stream_fd >= 0 &&
	    fsio_write_all(s->stream_fd, s->pending.data, s->pending.len) != 0)
		s->write_err = 1;
	buf_reset(&s->pending);
	stream_grew(s);
}

static void write_reasoning(struct stream_ctx *s, const char *text, size_t len)
{
	if (!len || s->out->reason_fd < 0)
		return;
	if (fsio_write_all(s->out->reason_fd, text, len) != 0)
		s->write_err = 1;
	else
		s->out->reason_last = text[len - 1];
	reasoning_grew(s);
}

static void flush_reasoning(struct stream_ctx *s)
{
	write_reasoning(s, s->rpending.data, s->rpending.len);
	buf_reset(&s->rpending);
}

/* A token (of the answer or of its reasoning) arrived. */
static void count_token(struct stream_ctx *s)
{
	struct gen_progress *pg = s->job->progress;
	if (dbl_get(&pg->first_token) == 0)
		dbl_set(&pg->first_token, now_s());
	if (s->out->first == 0)
		s->out->first = now_s();
	__atomic_add_fetch(&pg->tokens, 1, __ATOMIC_RELAXED);
}

static int on_text(void *u, const char *text, size_t len)
{
	struct stream_ctx *s = u;
	count_token(s);
	if (s->batching && buf_append(&s->pending, text, len) == 0)
		return 0;
	flush_text(s);
	if (s->stream_fd >= 0 && fsio_write_all(s->stream_fd, text, len) != 0)
		s->write_err = 1;
	stream_grew(s);
	return 0;
}

/* The first reasoning of a turn: the reasoning file is opened (created)
 * and a blank line parts it from the turn before; stream gets one marked
 * line, unless the answer's text has begun. */
static void reasoning_starts(struct stream_ctx *s)
{
	static const char mark[] = "[lmsfs] reasoning\n";
	struct stat st;

	s->reasoned = 1;
	if (s->out->reason_fd == -1) {
		s->out->reason_fd = store_reasoning_open(s->job->dirfd);
		if (s->out->reason_fd < 0) {
			log_warnx("%s: cannot open the reasoning file: %s", s->job->conv_name,
				  strerror(-s->out->reason_fd));
			s->out->reason_fd = -2; /* not tried again */
		} else {
			gen_changed(s->job, NULL); /* the listing may show it now */
		}
	}
	if (s->out->reason_fd >= 0 && fstat(s->out->reason_fd, &st) == 0 && st.st_size > 0) {
		/* A turn cut by a killed daemon left its last line open: end
		 * it too, so that a blank line still parts the turns. */
		if (store_reasoning_line_open(s->out->reason_fd))
			write_reasoning(s, "\n", 1);
		write_reasoning(s, "\n", 1);
	}
	if (s->ans->content.len == 0 && s->stream_fd >= 0) {
		flush_text(s);
		if (fsio_write_all(s->stream_fd, mark, sizeof(mark) - 1) != 0)
			s->write_err = 1;
		stream_grew(s);
	}
}

static int on_reason(void *u, const char *text, size_t len)
{
	struct stream_ctx *s = u;
	count_token(s);
	if (!s->reasoned)
		reasoning_starts(s);
	if (s->batching && buf_append(&s->rpending, text, len) == 0)
		return 0;
	flush_reasoning(s);
	write_reasoning(s, text, len);
	return 0;
}

static int on_event(void *u, const char *event, const char *data, size_t len)
{
	(void)event;
	struct stream_ctx *s = u;
	int rc = api_feed_event(s->ans, data, len, on_text, s);
	/* A tool call's first delta is a first token too. */
	if (s->out->first == 0 && s->ans->n_calls > 0)
		s->out->first = now_s();
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
	flush_reasoning(s);
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
enum err_class gen_request(const struct config *cfg, const struct gen_job *job,
			   const char *body, int stream, struct api_answer *ans,
			   struct gen_result *res, struct gen_out *out)
{
	int max_retries = stream ? cfg->max_retries_stream : cfg->max_retries;
	enum err_class cls = EC_NONE;
	struct breaker_ticket ticket = {0, 0};
	int admitted = 0, held_back = 0;

	for (int attempt = 0;; attempt++) {
		struct http_reply r;
		struct stream_ctx s = {.job = job, .ans = ans, .out = out,
				       .stream_fd = out->stream_fd};
		long retry_after = -1;
		int rc;

		api_answer_free(ans);
		api_answer_init(ans);
		ans->reason_fn = on_reason;
		ans->split_think = cfg->split_think_tags;
		out->started = now_s();
		out->first = 0;
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
		buf_init(&s.rpending, 1u << 20);
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
			if (out->first == 0 && ans->n_calls > 0)
				out->first = now_s();
		}
		flush_text(&s);
		flush_reasoning(&s);
		buf_free(&s.pending);
		buf_free(&s.rpending);
		if (s.reasoned)
			out->reasoned = 1;
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
	out->ended = now_s();
	/* The turn's reasoning ends its line (the next turn's starts after a
	 * blank line). */
	if (out->reasoned && out->reason_fd >= 0 && out->reason_last != '\n') {
		if (fsio_write_all(out->reason_fd, "\n", 1) == 0)
			out->reason_last = '\n';
	}
	if (out->reasoned)
		gen_changed(job, STORE_REASONING); /* its final size */
	out->reasoned = 0;
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

cJSON *gen_turn_stats(const struct api_answer *a, const struct gen_out *o,
		      const char *model)
{
	cJSON *st = cJSON_CreateObject();
	const char *m = a->model[0] ? a->model : model;
	double gen = o->first > 0 && o->ended > o->first ? o->ended - o->first : 0;

	if (!st)
		return NULL;
	if (m && *m)
		cJSON_AddStringToObject(st, "model", m);
	if (a->prompt_tokens >= 0)
		cJSON_AddNumberToObject(st, "prompt_tokens", (double)a->prompt_tokens);
	if (a->completion_tokens >= 0)
		cJSON_AddNumberToObject(st, "completion_tokens", (double)a->completion_tokens);
	if (a->reasoning_tokens >= 0)
		cJSON_AddNumberToObject(st, "reasoning_tokens", (double)a->reasoning_tokens);
	/* The server's figures when it sends them, else measured here. */
	if (a->ttft >= 0)
		cJSON_AddNumberToObject(st, "ttft_ms", round_to(a->ttft * 1000, 1));
	else if (o->first > 0)
		cJSON_AddNumberToObject(st, "ttft_ms",
					round_to((o->first - o->started) * 1000, 1));
	if (a->tps >= 0)
		cJSON_AddNumberToObject(st, "tokens_per_second", round_to(a->tps, 2));
	else if (gen > 0)
		cJSON_AddNumberToObject(
			st, "tokens_per_second",
			round_to((a->completion_tokens > 0 ? a->completion_tokens : a->chunks) / gen,
				 2));
	if (o->started > 0 && o->ended >= o->started)
		cJSON_AddNumberToObject(st, "duration_ms",
					round_to((o->ended - o->started) * 1000, 1));
	if (a->finish[0])
		cJSON_AddStringToObject(st, "finish_reason", a->finish);
	if (a->stats)
		cJSON_AddItemToObject(st, "stats", cJSON_Duplicate(a->stats, 1));
	return st;
}

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
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ERROR_BODY_MAX (64u << 10)

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
enum err_class gen_request(const struct config *cfg, const struct gen_job *job,
			   const char *body, int stream, struct api_answer *ans,
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


/* metrics.c - counters and summaries for the metrics file. */
#include "metrics.h"

#include "mcp.h"
#include "retry.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_long requests, retries, tokens_in, tokens_out, answers_ok,
	answers_failed;
static atomic_long failures[EC__COUNT];
static atomic_long tools[TOOL__COUNT];
static atomic_int active, queued;

/* Histograms with fixed buckets (seconds). */
static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
				0.5,   1,    2.5,   5,    10,  30, 60};
#define NB (sizeof(bounds) / sizeof(bounds[0]))
struct hist {
	atomic_long bucket[NB];
	atomic_long count;
	atomic_llong sum_us;
};
static struct hist ttft, gentime;

static void observe(struct hist *h, double s)
{
	for (size_t i = 0; i < NB; i++)
		if (s <= bounds[i])
			atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (long long)(s * 1e6),
				  memory_order_relaxed);
}

void metrics_request(void) { atomic_fetch_add(&requests, 1); }
void metrics_retry(void) { atomic_fetch_add(&retries, 1); }
void metrics_failure(enum err_class c)
{
	if (c > 0 && c < EC__COUNT)
		atomic_fetch_add(&failures[c], 1);
}
static pthread_mutex_t storage_lock = PTHREAD_MUTEX_INITIALIZER;
static char storage_last[512]; /* storage_lock */
static struct metrics_last last_failure; /* storage_lock */

void metrics_storage_failure(const char *why)
{
	atomic_fetch_add(&failures[EC_STORAGE], 1);
	pthread_mutex_lock(&storage_lock);
	snprintf(storage_last, sizeof(storage_last), "%s", why);
	pthread_mutex_unlock(&storage_lock);
	metrics_note_failure(EC_STORAGE, NULL, why);
}

void metrics_note_failure(enum err_class c, const char *conv, const char *why)
{
	pthread_mutex_lock(&storage_lock);
	last_failure.cls = c;
	snprintf(last_failure.conv, sizeof(last_failure.conv), "%s", conv ? conv : "");
	snprintf(last_failure.why, sizeof(last_failure.why), "%s", why ? why : "");
	last_failure.at = time(NULL);
	pthread_mutex_unlock(&storage_lock);
}

int metrics_last_failure(struct metrics_last *out)
{
	pthread_mutex_lock(&storage_lock);
	*out = last_failure;
	pthread_mutex_unlock(&storage_lock);
	return out->at != 0;
}

long metrics_storage_last(char *why, size_t len)
{
	pthread_mutex_lock(&storage_lock);
	snprintf(why, len, "%s", storage_last);
	pthread_mutex_unlock(&storage_lock);
	return atomic_load(&failures[EC_STORAGE]);
}

void metrics_tokens(long in, long out)
{
	atomic_fetch_add(&tokens_in, in);
	atomic_fetch_add(&tokens_out, out);
}
void metrics_ttft(double s) { observe(&ttft, s); }
void metrics_gen_time(double s) { observe(&gentime, s); }
void metrics_tool(enum tool_outcome o)
{
	if (o < TOOL__COUNT)
		atomic_fetch_add(&tools[o], 1);
}
void metrics_active(int d) { atomic_fetch_add(&active, d); }
void metrics_queued(int d) { atomic_fetch_add(&queued, d); }
void metrics_answer(int ok) { atomic_fetch_add(ok ? &answers_ok : &answers_failed, 1); }

static int render_hist(struct buf *b, const char *name, const char *help,
		       struct hist *h)
{
	int r = buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < NB && r == 0; i++)
		r = buf_printf(b, "%s_bucket{le=\"%g\"} %ld\n", name, bounds[i],
			       atomic_load(&h->bucket[i]));
	if (r == 0)
		r = buf_printf(b, "%s_bucket{le=\"+Inf\"} %ld\n%s_sum %.6f\n%s_count %ld\n",
			       name, atomic_load(&h->count), name,
			       atomic_load(&h->sum_us) / 1e6, name, atomic_load(&h->count));
	return r;
}

/* --- tokens by model ------------------------------------------------------ */

struct model_tokens {
	char name[256];
	long in, out, reasoning;
};
static pthread_mutex_t models_lock = PTHREAD_MUTEX_INITIALIZER;
static struct model_tokens by_model[METRICS_MAX_MODELS + 1]; /* models_lock; the
								last is "other" */
static size_t n_models;                                       /* models_lock */

void metrics_model_tokens(const char *model, long in, long out, long reasoning)
{
	size_t i;

	if (!model || !*model)
		model = "unknown";
	pthread_mutex_lock(&models_lock);
	for (i = 0; i < n_models && strcmp(by_model[i].name, model) != 0; i++)
		;
	if (i == n_models) {
		if (n_models < METRICS_MAX_MODELS) {
			snprintf(by_model[i].name, sizeof(by_model[i].name), "%s", model);
			n_models++;
		} else {
			i = METRICS_MAX_MODELS;
			snprintf(by_model[i].name, sizeof(by_model[i].name), "other");
		}
	}
	by_model[i].in += in > 0 ? in : 0;
	by_model[i].out += out > 0 ? out : 0;
	by_model[i].reasoning += reasoning > 0 ? reasoning : 0;
	pthread_mutex_unlock(&models_lock);
}

/* A label value: backslash, quote and newline escaped. */
static int put_label(struct buf *b, const char *v)
{
	int r = 0;
	for (; *v && r == 0; v++)
		r = *v == '\\'  ? buf_puts(b, "\\\\")
		    : *v == '"'  ? buf_puts(b, "\\\"")
		    : *v == '\n' ? buf_puts(b, "\\n")
				 : buf_putc(b, *v);
	return r;
}

static int render_model_tokens(struct buf *b)
{
	static const char *dir[] = {"in", "out", "reasoning"};
	int r = buf_printf(b, "# HELP lmsfs_model_tokens_total Tokens by the model that "
			      "answered and direction (reasoning: part of out).\n"
			      "# TYPE lmsfs_model_tokens_total counter\n");
	pthread_mutex_lock(&models_lock);
	for (size_t i = 0; i <= METRICS_MAX_MODELS && r == 0; i++) {
		const struct model_tokens *m = &by_model[i];
		long v[3] = {m->in, m->out, m->reasoning};
		if (!m->name[0]) /* unused (past n_models), or no "other" yet */
			continue;
		for (int d = 0; d < 3 && r == 0; d++) {
			r |= buf_puts(b, "lmsfs_model_tokens_total{model=\"");
			r |= put_label(b, m->name);
			r |= buf_printf(b, "\",direction=\"%s\"} %ld\n", dir[d], v[d]);
		}
	}
	pthread_mutex_unlock(&models_lock);
	return r;
}

int metrics_render(struct buf *b)
{
	static const char *tool_names[TOOL__COUNT] = {"ok", "failed", "timeout", "unknown"};
	enum breaker_state st;
	int cons;
	long opened, left;
	int r = 0;

	breaker_snapshot(&st, &cons, &opened, &left);
	r |= buf_printf(b, "# HELP lmsfs_requests_total Requests sent to the server.\n"
			   "# TYPE lmsfs_requests_total counter\nlmsfs_requests_total %ld\n",
			atomic_load(&requests));
	r |= buf_printf(b, "# HELP lmsfs_failures_total Failed requests and answers by class.\n"
			   "# TYPE lmsfs_failures_total counter\n");
	for (int c = 1; c < EC__COUNT; c++)
		r |= buf_printf(b, "lmsfs_failures_total{class=\"%s\"} %ld\n",
				errclass_name(c), atomic_load(&failures[c]));
	r |= buf_printf(b, "# HELP lmsfs_retries_total Requests tried again.\n"
			   "# TYPE lmsfs_retries_total counter\nlmsfs_retries_total %ld\n",
			atomic_load(&retries));
	r |= buf_printf(b, "# HELP lmsfs_answers_total Answers finished, by outcome.\n"
			   "# TYPE lmsfs_answers_total counter\n"
			   "lmsfs_answers_total{outcome=\"ok\"} %ld\n"
			   "lmsfs_answers_total{outcome=\"failed\"} %ld\n",
			atomic_load(&answers_ok), atomic_load(&answers_failed));
	r |= buf_printf(b, "# HELP lmsfs_breaker_state Circuit breaker: 0 closed, 1 open, 2 half-open.\n"
			   "# TYPE lmsfs_breaker_state gauge\nlmsfs_breaker_state %d\n"
			   "# HELP lmsfs_breaker_opened_total Times the breaker opened.\n"
			   "# TYPE lmsfs_breaker_opened_total counter\nlmsfs_breaker_opened_total %ld\n",
			(int)st, opened);
	r |= buf_printf(b, "# HELP lmsfs_tokens_total Tokens by direction.\n"
			   "# TYPE lmsfs_tokens_total counter\n"
			   "lmsfs_tokens_total{direction=\"in\"} %ld\n"
			   "lmsfs_tokens_total{direction=\"out\"} %ld\n",
			atomic_load(&tokens_in), atomic_load(&tokens_out));
	r |= render_model_tokens(b);
	r |= render_hist(b, "lmsfs_ttft_seconds", "Time to first token.", &ttft);
	r |= render_hist(b, "lmsfs_generation_seconds", "Duration of an answer.", &gentime);
	r |= buf_printf(b, "# HELP lmsfs_queue_length Prompts waiting for an answer.\n"
			   "# TYPE lmsfs_queue_length gauge\nlmsfs_queue_length %d\n"
			   "# HELP lmsfs_active_generations Answers being generated.\n"
			   "# TYPE lmsfs_active_generations gauge\nlmsfs_active_generations %d\n",
			atomic_load(&queued), atomic_load(&active));
	r |= buf_printf(b, "# HELP lmsfs_tool_runs_total Tool runs by outcome.\n"
			   "# TYPE lmsfs_tool_runs_total counter\n");
	for (int t = 0; t < TOOL__COUNT; t++)
		r |= buf_printf(b, "lmsfs_tool_runs_total{outcome=\"%s\"} %ld\n",
				tool_names[t], atomic_load(&tools[t]));
	{
		long calls, failed;
		mcp_counts(&calls, &failed);
		r |= buf_printf(b, "# HELP lmsfs_mcp_calls_total Calls to MCP server tools.\n"
				   "# TYPE lmsfs_mcp_calls_total counter\nlmsfs_mcp_calls_total %ld\n"
				   "# HELP lmsfs_mcp_failures_total MCP calls that did not succeed "
				   "(errors, timeouts, cancels).\n"
				   "# TYPE lmsfs_mcp_failures_total counter\n"
				   "lmsfs_mcp_failures_total %ld\n",
				calls, failed);
	}
	return r ? -EFBIG : 0;
}

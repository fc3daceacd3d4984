/* retry.c - exponential backoff with full jitter; a three-state breaker
 * that counts failed requests (see retry.h). */
#include "retry.h"

#include "config.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static const struct config *cfg;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* All protected by lock. */
static enum breaker_state state = BREAKER_CLOSED;
static int consecutive;      /* failed requests in a row */
static long times_opened;
static long long opened_at_ms;
static int probe_out;        /* half-open: the probe is running */
static unsigned long probe_epoch; /* the running probe's number */
static enum err_class last_cls; /* the last failed request */
static char last_msg[240];
static unsigned int seed;

void retry_init(const struct config *c)
{
	cfg = c;
	seed = (unsigned int)now_ms() ^ (unsigned int)getpid();
}

long retry_backoff_ms(int attempt, long retry_after_ms)
{
	long base = cfg->initial_backoff_ms, cap = cfg->max_backoff_ms, d;

	for (int i = 1; i < attempt && base < cap; i++)
		base *= 2;
	if (base > cap)
		base = cap;
	pthread_mutex_lock(&lock);
	/* Full jitter, but never less than half the step so that delays still
	 * grow visibly from one attempt to the next. */
	d = base / 2 + (base > 1 ? rand_r(&seed) % (base / 2 + 1) : 0);
	pthread_mutex_unlock(&lock);
	if (retry_after_ms >= 0 && d < retry_after_ms)
		d = retry_after_ms;
	return d;
}

/* "after 5 failed requests in a row (last: server_error: HTTP 500: ...)";
 * lock held. */
static void describe_failures(char *out, size_t len)
{
	snprintf(out, len, "after %d failed request%s in a row (last: %s: %s)",
		 consecutive, consecutive == 1 ? "" : "s", errclass_name(last_cls),
		 last_msg);
}

/* Milliseconds until the open breaker lets a probe through; lock held. */
static long long probe_wait_ms(void)
{
	long long left = cfg->breaker_reset_ms - (now_ms() - opened_at_ms);
	return left > 0 ? left : 0;
}

/* The reason a request is refused now, or 0 if it would go out; lock
 * held. */
static int refusal(char *why, size_t len)
{
	char fails[400];
	long long left = state == BREAKER_OPEN ? probe_wait_ms() : 0;

	if (left > 0) {
		describe_failures(fails, sizeof(fails));
		if (left >= 1000)
			snprintf(why, len, "circuit open %s; next probe in %lld s", fails,
				 (left + 999) / 1000);
		else
			snprintf(why, len, "circuit open %s; next probe in %lld ms", fails,
				 left);
		return 1;
	}
	if (state == BREAKER_HALF_OPEN && probe_out) {
		describe_failures(fails, sizeof(fails));
		snprintf(why, len,
			 "circuit half-open %s: one probe request is testing the "
			 "server, others fail at once until it ends",
			 fails);
		return 1;
	}
	return 0;
}

int breaker_enter(struct breaker_ticket *t, char *why, size_t whylen)
{
	int ret = 0;

	t->probe = 0;
	t->epoch = 0;
	pthread_mutex_lock(&lock);
	if (state == BREAKER_OPEN && probe_wait_ms() == 0) {
		state = BREAKER_HALF_OPEN;
		probe_out = 0;
	}
	if (refusal(why, whylen)) {
		ret = -EBUSY;
	} else if (state == BREAKER_HALF_OPEN) {
		probe_out = 1;
		t->probe = 1;
		t->epoch = ++probe_epoch;
	}
	pthread_mutex_unlock(&lock);
	return ret;
}

/* Whether t is the probe now running; lock held. */
static int is_probe(const struct breaker_ticket *t)
{
	return t->probe && state == BREAKER_HALF_OPEN && probe_out &&
	       t->epoch == probe_epoch;
}

int breaker_may_retry(const struct breaker_ticket *t)
{
	int ok;

	pthread_mutex_lock(&lock);
	ok = state == BREAKER_CLOSED || is_probe(t);
	pthread_mutex_unlock(&lock);
	return ok;
}

void breaker_done(const struct breaker_ticket *t, enum err_class cls,
		  const char *msg)
{
	char fails[400];

	pthread_mutex_lock(&lock);
	switch (errclass_verdict(cls)) {
	case EV_ALIVE:
		if (state != BREAKER_CLOSED)
			log_info("circuit breaker closed: the server answers again");
		state = BREAKER_CLOSED;
		consecutive = 0;
		probe_out = 0;
		break;
	case EV_FAILED:
		consecutive++;
		last_cls = cls;
		snprintf(last_msg, sizeof(last_msg), "%s", msg ? msg : "");
		/* The probe's failure opens the breaker again; otherwise it
		 * opens at the threshold. A request admitted earlier that
		 * fails while the breaker is not closed only counts. */
		if (is_probe(t) ||
		    (state == BREAKER_CLOSED && consecutive >= cfg->breaker_threshold)) {
			state = BREAKER_OPEN;
			opened_at_ms = now_ms();
			times_opened++;
			probe_out = 0;
			describe_failures(fails, sizeof(fails));
			log_warnx("circuit breaker open %s; requests fail at once for "
				  "%lld ms",
				  fails, (long long)cfg->breaker_reset_ms);
		}
		break;
	case EV_NONE:
		/* No verdict: a probe that ended this way lets the next request
		 * probe. */
		if (is_probe(t)) {
			probe_out = 0;
			log_info("circuit breaker probe ended without a verdict (%s); "
				 "the next request probes",
				 errclass_name(cls));
		}
		break;
	}
	pthread_mutex_unlock(&lock);
}

int breaker_refusal(char *why, size_t whylen)
{
	int refused;

	pthread_mutex_lock(&lock);
	refused = refusal(why, whylen);
	pthread_mutex_unlock(&lock);
	return refused;
}

void breaker_snapshot(enum breaker_state *st, int *cons, long *opened,
		      long *ms_until_probe)
{
	pthread_mutex_lock(&lock);
	*st = state;
	*cons = consecutive;
	*opened = times_opened;
	*ms_until_probe = 0;
	if (state == BREAKER_OPEN)
		*ms_until_probe = (long)probe_wait_ms();
	pthread_mutex_unlock(&lock);
}

const char *breaker_state_name(enum breaker_state st)
{
	switch (st) {
	case BREAKER_OPEN:
		return "open";
	case BREAKER_HALF_OPEN:
		return "half_open";
	default:
		return "closed";
	}
}

/* retry.c - exponential backoff with full jitter; a three-state breaker. */
#include "retry.h"

#include "config.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

static const struct config *cfg;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* All protected by lock. */
static enum breaker_state state = BREAKER_CLOSED;
static int consecutive;
static long times_opened;
static long long opened_at_ms;
static int probe_out;
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

int breaker_allow(void)
{
	int ret = 0;

	pthread_mutex_lock(&lock);
	if (state == BREAKER_OPEN &&
	    now_ms() - opened_at_ms >= cfg->breaker_reset_ms) {
		state = BREAKER_HALF_OPEN;
		probe_out = 0;
	}
	if (state == BREAKER_OPEN) {
		ret = -EBUSY;
	} else if (state == BREAKER_HALF_OPEN) {
		if (probe_out)
			ret = -EBUSY;
		else
			probe_out = 1;
	}
	pthread_mutex_unlock(&lock);
	return ret;
}

int breaker_is_open(void)
{
	int open;

	pthread_mutex_lock(&lock);
	open = state == BREAKER_OPEN &&
	       now_ms() - opened_at_ms < cfg->breaker_reset_ms;
	open = open || (state == BREAKER_HALF_OPEN && probe_out);
	pthread_mutex_unlock(&lock);
	return open;
}

void breaker_success(void)
{
	pthread_mutex_lock(&lock);
	if (state != BREAKER_CLOSED)
		log_info("circuit breaker closed: server answers again");
	state = BREAKER_CLOSED;
	consecutive = 0;
	probe_out = 0;
	pthread_mutex_unlock(&lock);
}

void breaker_failure(void)
{
	pthread_mutex_lock(&lock);
	consecutive++;
	if (state == BREAKER_HALF_OPEN ||
	    (state == BREAKER_CLOSED && consecutive >= cfg->breaker_threshold)) {
		if (state == BREAKER_CLOSED)
			log_warnx("circuit breaker open after %d failures in a row",
				  consecutive);
		state = BREAKER_OPEN;
		opened_at_ms = now_ms();
		times_opened++;
		probe_out = 0;
	}
	pthread_mutex_unlock(&lock);
}

void breaker_snapshot(enum breaker_state *st, int *cons, long *opened,
		      long *ms_until_probe)
{
	pthread_mutex_lock(&lock);
	*st = state;
	*cons = consecutive;
	*opened = times_opened;
	*ms_until_probe = 0;
	if (state == BREAKER_OPEN) {
		long long left = cfg->breaker_reset_ms - (now_ms() - opened_at_ms);
		*ms_until_probe = left > 0 ? (long)left : 0;
	}
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

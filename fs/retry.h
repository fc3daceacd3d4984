/* retry.h - backoff with jitter, and the circuit breaker for the server.
 *
 * The breaker is closed while requests succeed; breaker_threshold failures
 * in a row open it (requests then fail at once, without the network); after
 * breaker_reset it lets exactly one probe through (half-open); the probe's
 * success closes it, its failure opens it again.
 */
#ifndef LMSFS_RETRY_H
#define LMSFS_RETRY_H

struct config;

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

void retry_init(const struct config *cfg);
/* Delay before attempt number `attempt` (1 = first retry): full jitter over
 * initial_backoff * 2^(attempt-1), capped at max_backoff; retry_after_ms
 * (>= 0) is a floor the server asked for. */
long retry_backoff_ms(int attempt, long retry_after_ms);

/* 0 when a request may go out, -EBUSY when open. In the half-open state
 * only the first caller gets 0: its request is the probe, and the caller
 * must report every allowed request's result with breaker_success() or
 * breaker_failure(). */
int breaker_allow(void);
/* Whether a request would be refused right now (no side effects). */
int breaker_is_open(void);
void breaker_success(void);
void breaker_failure(void);
/* Snapshot for health and metrics. */
void breaker_snapshot(enum breaker_state *st, int *consecutive, long *opened,
		      long *ms_until_probe);
const char *breaker_state_name(enum breaker_state st);

#endif

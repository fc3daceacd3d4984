/* retry.h - backoff with jitter, and the circuit breaker for the server.
 *
 * The breaker judges requests, not attempts: a request (one per prompt, or
 * per tool round) reports how it ended once its retries are over, with the
 * verdict of its class (errclass_verdict):
 *
 * - EV_FAILED (unreachable, timeout, 5xx, protocol) adds one to the count
 *   of failed requests in a row; breaker_threshold of them open the
 *   breaker. The last one is kept, and every refusal names it.
 * - EV_ALIVE (a complete answer, or a 4xx other than 429) resets the count
 *   and closes the breaker whatever its state.
 * - EV_NONE (429, cancelled, interrupted) changes nothing: a 429 shows the
 *   server alive but busy, so it neither opens the breaker nor hides the
 *   failures counted before it.
 *
 * Open, requests are refused at once (without the network) for
 * breaker_reset; then it is half-open: the next request is the probe, the
 * others are refused while it runs (it may retry). The probe's failure
 * opens the breaker again for breaker_reset; its success closes it; a
 * probe that ends with no verdict (cancelled, interrupted, rate limited)
 * leaves it half-open with no probe, so the next request probes.
 */
#ifndef LMSFS_RETRY_H
#define LMSFS_RETRY_H

#include "errclass.h"

#include <stddef.h>

struct config;

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

void retry_init(const struct config *cfg);
/* Delay before attempt number `attempt` (1 = first retry): full jitter over
 * initial_backoff * 2^(attempt-1), capped at max_backoff; retry_after_ms
 * (>= 0) is a floor the server asked for. */
long retry_backoff_ms(int attempt, long retry_after_ms);

/* One request's pass through the breaker. */
struct breaker_ticket {
	int probe;          /* admitted as the half-open probe */
	unsigned long epoch; /* which probe */
};

/* Before a request's first attempt: 0 when it may go out (t says whether
 * it is the probe), -EBUSY when refused, with the reason in why ("circuit
 * open after 5 failed requests in a row (last: server_error: HTTP 500:
 * ...); next probe in 12 s"). Every admitted request must be ended with
 * breaker_done(), however it ends. */
int breaker_enter(struct breaker_ticket *t, char *why, size_t whylen);
/* Before a retry of an admitted request: whether it may try again. The
 * probe may; another request only while the breaker is closed. */
int breaker_may_retry(const struct breaker_ticket *t);
/* An admitted request is over: its class (EC_NONE for success) and its
 * message, after all its retries. */
void breaker_done(const struct breaker_ticket *t, enum err_class cls,
		  const char *msg);
/* Whether a request would be refused right now, and why (no side
 * effects): for write() on prompt. */
int breaker_refusal(char *why, size_t whylen);
/* Snapshot for health and metrics. */
void breaker_snapshot(enum breaker_state *st, int *consecutive, long *opened,
		      long *ms_until_probe);
const char *breaker_state_name(enum breaker_state st);

#endif

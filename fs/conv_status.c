/* conv_status.c - what readers see of a conversation at work: the answer
 * a .reply reader waits for, and the .status JSON. */
#include "conv.h"
#include "conv_int.h"

#include "config.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t conv_wait_target(struct conv *c)
{
	uint64_t t;
	pthread_mutex_lock(&c->lock);
	/* A prompt stuck for room has its failure to tell now. */
	t = c->stalled ? c->finished : c->submitted;
	pthread_mutex_unlock(&c->lock);
	return t;
}

int conv_answer(struct conv *c, uint64_t seq, char **text, size_t *len, int *err)
{
	int done;
	pthread_mutex_lock(&c->lock);
	done = c->finished >= seq;
	if (done) {
		*len = c->last_text ? c->last_len : 0;
		*text = malloc(*len + 1);
		*err = c->last_errno;
		if (*text) {
			if (*len)
				memcpy(*text, c->last_text, *len);
			(*text)[*len] = '\0';
		} else {
			*len = 0;
			*err = ENOMEM;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return done;
}

char *conv_status_json(struct conv *c)
{
	cJSON *o = cJSON_CreateObject(), *e, *l;
	char *s;
	const char *state;
	int place, active = 0;

	pthread_mutex_lock(&conv_table_lock);
	cJSON_AddStringToObject(o, "name", c->name);
	pthread_mutex_unlock(&conv_table_lock);
	pthread_mutex_lock(&c->lock);
	place = conv_slot_place(c, &active);
	if (c->generating && __atomic_load_n(&c->progress.loading, __ATOMIC_RELAXED))
		state = "loading"; /* the model is loaded just in time */
	else if (c->generating)
		state = "generating";
	else if (c->stalled)
		state = "failed";
	else if (c->qhead && place)
		state = "waiting";
	else if (c->qhead)
		state = "queued";
	else if (c->err != EC_NONE)
		state = "failed";
	else
		state = "idle";
	cJSON_AddStringToObject(o, "state", state);
	cJSON_AddNumberToObject(o, "queued", c->qlen);
	cJSON_AddNumberToObject(o, "submitted", (double)c->submitted);
	cJSON_AddNumberToObject(o, "answered", (double)c->finished);
	if (place && c->qhead) {
		char why[160];
		cJSON *w = cJSON_AddObjectToObject(o, "waiting");
		snprintf(why, sizeof(why),
			 "%d answers are being generated (max_active %d); this "
			 "conversation is number %d in line",
			 active, conv_cfg->max_active, place);
		cJSON_AddStringToObject(w, "reason", why);
		cJSON_AddNumberToObject(w, "position", place);
		cJSON_AddNumberToObject(w, "active", active);
		cJSON_AddNumberToObject(w, "max_active", conv_cfg->max_active);
	}
	if (c->generating) {
		cJSON *g = cJSON_AddObjectToObject(o, "generating");
		double now = now_s(), ft = dbl_get(&c->progress.first_token);
		long toks = __atomic_load_n(&c->progress.tokens, __ATOMIC_RELAXED);
		cJSON_AddNumberToObject(g, "tokens", toks);
		/* Rounded as lmsfs_stats is: 0.1 ms, 0.01 tokens/s. */
		cJSON_AddNumberToObject(g, "elapsed_ms",
					round_to((now - dbl_get(&c->progress.started)) * 1000, 1));
		if (ft > 0 && now > ft)
			cJSON_AddNumberToObject(g, "tokens_per_second",
						round_to(toks / (now - ft), 2));
	}
	if (c->err != EC_NONE) {
		e = cJSON_AddObjectToObject(o, "error");
		cJSON_AddStringToObject(e, "class", errclass_name(c->err));
		cJSON_AddStringToObject(e, "message", c->errmsg);
	} else {
		cJSON_AddNullToObject(o, "error");
	}
	if (c->finished_at > 0) {
		l = cJSON_AddObjectToObject(o, "last");
		cJSON_AddStringToObject(l, "model", c->model);
		if (c->ttft >= 0)
			cJSON_AddNumberToObject(l, "ttft_ms", round_to(c->ttft * 1000, 1));
		if (c->tps >= 0)
			cJSON_AddNumberToObject(l, "tokens_per_second", round_to(c->tps, 2));
		if (c->prompt_tokens >= 0 || c->completion_tokens >= 0) {
			cJSON *u = cJSON_AddObjectToObject(l, "usage");
			cJSON_AddNumberToObject(u, "prompt_tokens", (double)c->prompt_tokens);
			cJSON_AddNumberToObject(u, "completion_tokens",
						(double)c->completion_tokens);
		}
		cJSON_AddStringToObject(l, "finish_reason", c->finish);
		cJSON_AddNumberToObject(l, "attempts", c->attempts);
		cJSON_AddNumberToObject(l, "retries", c->retries);
	}
	if (c->rejected[0])
		cJSON_AddStringToObject(o, "rejected_write", c->rejected);
	pthread_mutex_unlock(&c->lock);
	s = json_text_file(o);
	cJSON_Delete(o);
	return s;
}

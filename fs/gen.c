/* gen.c - one answer: build the request from the conversation's files,
 * send it with retries and the breaker, stream the text into `stream`,
 * run tool rounds, and append the result to messages.jsonl. */
#include "gen_int.h"

#include "api.h"
#include "config.h"
#include "fsio.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "msgs.h"
#include "recover.h"
#include "store.h"
#include "tooldef.h"
#include "toolrun.h"
#include "utf8.h"
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
	gen_changed(job, STORE_HISTORY);
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
	gen_changed(job, STORE_HISTORY);
	free(got);
}

/* An answer (or part of one) could not be stored: the class, the errno and
 * a reason. */
static enum err_class storage_failed(struct gen_result *res, int err, const char *what)
{
	res->sys_errno = -err;
	snprintf(res->errmsg, sizeof(res->errmsg), "cannot store %s in messages.jsonl: %s",
		 what, strerror(-err));
	return errclass_of_local(err, EC_STORAGE);
}

/* Ends the answer's text in stream with a newline and appends the
 * assistant message (status marks an unfinished one) to the history. */
static int save_assistant(const struct gen_job *job, const struct api_answer *ans,
			  const cJSON *stats, int how, char **saved, off_t *at)
{
	char *line = api_assistant_line(ans, NULL, stats);
	int ret;
	if (ans->content.len) {
		store_stream_write(job->dirfd, "\n", 1);
		gen_changed(job, STORE_STREAM);
	}
	ret = line ? append_history(job, line, how, at) : -ENOMEM;
	if (saved && ret == 0)
		*saved = line;
	else
		free(line);
	return ret;
}

/* A marked line (taken over) with the turn's reasoning and lmsfs_stats
 * added, when there are any. */
static char *with_turn(char *line, const struct buf *reasoning, const cJSON *stats)
{
	cJSON *m;
	char *out;

	if (!line || ((!reasoning || !reasoning->len) && !stats))
		return line;
	m = cJSON_Parse(line);
	if (!m)
		return line;
	if (reasoning && reasoning->len) {
		char *fixed = utf8_repair(reasoning->data, reasoning->len);
		cJSON_AddStringToObject(m, "reasoning_content", fixed ? fixed : "");
		free(fixed);
	}
	if (stats)
		cJSON_AddItemToObject(m, "lmsfs_stats", cJSON_Duplicate(stats, 1));
	out = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	if (!out)
		return line;
	free(line);
	return out;
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
	cJSON *stats = NULL;   /* the last request's lmsfs_stats */
	struct api_answer ans;
	enum err_class cls = EC_NONE;
	struct gen_out out = {.stream_fd = -1, .reason_fd = -1};
	int rounds = 0, jit = 0;
	int keep_text = 1; /* the marked line of a failure holds the text */

	api_answer_init(&ans);
	/* The one place that creates stream: later writes (marks, newlines)
	 * only append, so that a conversation being removed (rm -r) is not
	 * filled again behind the user's back. */
	out.stream_fd = store_stream_open(job->dirfd);
	gen_changed(job, STORE_STREAM);

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
	if (!model && models_list_failed()) {
		/* Refused from a listing that failed (no model named): this
		 * worker may wait for a new one (a retry once the server is
		 * back). */
		models_refresh_wait(job->cancel);
		if (flag_get(job->cancel)) {
			cls = EC_CANCELLED;
			snprintf(res->errmsg, sizeof(res->errmsg), "cancelled");
		} else {
			model = models_resolve_jit(want, &jit, &cls, res->errmsg,
						   sizeof(res->errmsg));
		}
	}
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
		int stream, hrc;

		store_partial_set(job->dirfd);
		gen_changed(job, NULL);
		/* Room for the history and its attachments in base64. */
		buf_init(&msgs, STORE_HISTORY_MAX + (1u << 20) +
					(size_t)cfg->max_attach_request_bytes / 3 * 4 + 4096);
		/* The system prompt leads: the system file, else a system
		 * message that starts the history, else system_prompt. */
		if ((hrc = store_hist_for_request_files(
			     job->dirfd, &msgs, first_role, sizeof(first_role), why, sizeof(why),
			     cfg->max_attach_bytes, cfg->max_attach_request_bytes,
			     (cfg->send_reasoning ? MSGS_KEEP_REASONING : 0) |
				     (system ? MSGS_DROP_SYSTEM : 0))) != 0) {
			buf_free(&msgs);
			/* Out of descriptors or memory is no bad request. */
			cls = errclass_of_local(hrc, EC_BAD_REQUEST);
			snprintf(res->errmsg, sizeof(res->errmsg), "%s", why);
			goto fail;
		}
		if (system || strcmp(first_role, "system") != 0) {
			const char *sp = system ? system : cfg->system_prompt;
			if (sp && sp[0]) {
				cJSON *sm = cJSON_CreateObject();
				char *t;
				cJSON_AddStringToObject(sm, "role", "system");
				cJSON_AddStringToObject(sm, "content", sp);
				t = cJSON_PrintUnformatted(sm);
				cJSON_Delete(sm);
				/* In place: the messages may hold images. Room
				 * first, so that a "," never goes in alone. */
				if (t && buf_grow(&msgs, strlen(t) + 1) == 0) {
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
		cls = gen_request(cfg, job, body, stream, &ans, res, &out);
		__atomic_store_n(&job->progress->loading, 0, __ATOMIC_RELAXED);
		free(body);
		cJSON_Delete(stats);
		stats = gen_turn_stats(&ans, &out, model);
		if (ans.prompt_tokens >= 0 || ans.completion_tokens >= 0)
			metrics_model_tokens(ans.model[0] ? ans.model : model, ans.prompt_tokens,
					     ans.completion_tokens, ans.reasoning_tokens);
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
			int rc = save_assistant(job, &ans, stats, STORE_SYNC, NULL, NULL);
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
			int rc = save_assistant(job, &ans, stats, 0, &round_line, &round_at);
			if (rc != 0) {
				cls = storage_failed(res, rc, "a tool call");
				goto fail;
			}
			/* Counted once: a failure before the next request marks
			 * a line without them. */
			cJSON_Delete(stats);
			stats = NULL;
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
				gen_changed(job, STORE_STREAM); /* the tool's [lmsfs] lines */
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
		/* Cut between requests: the model, no figures (those of the
		 * last request are on its own line). */
		if (!stats && model && (stats = cJSON_CreateObject()))
			cJSON_AddStringToObject(stats, "model", model);
		line = with_turn(line, keep_text ? &ans.reasoning : NULL, stats);
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
	gen_changed(job, STORE_STREAM);
done:
	/* Whatever ended the run (a failure before any request too), the
	 * next one does not start as "loading". */
	__atomic_store_n(&job->progress->loading, 0, __ATOMIC_RELAXED);
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
	if (out.stream_fd >= 0)
		close(out.stream_fd);
	if (out.reason_fd >= 0)
		close(out.reason_fd);
	cJSON_Delete(stats);
	api_answer_free(&ans);
	cJSON_Delete(offered);
	cJSON_Delete(params);
	free(params_txt);
	free(want);
	free(model);
	free(system);
}

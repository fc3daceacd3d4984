/* api.c - chat-completion request building and answer decoding. */
#include "api.h"

#include "u16.h"

#include "config.h"
#include "utf8.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARGS_MAX (1u << 20)
/* Reasoning kept for the history (the reasoning file gets all of it). */
#define REASONING_MAX (1u << 20)

void api_answer_init(struct api_answer *a)
{
	memset(a, 0, sizeof(*a));
	/* An answer must fit in one history line (JSONL_MAX_LINE, 8 MiB)
	 * whatever JSON escaping does to it (up to 6 bytes per byte). */
	buf_init(&a->content, 1u << 20);
	for (int i = 0; i < API_MAX_TOOL_CALLS; i++)
		buf_init(&a->calls[i].args, ARGS_MAX);
	a->prompt_tokens = a->completion_tokens = -1;
	a->tps = a->ttft = -1;
	buf_init(&a->reasoning, REASONING_MAX);
	a->reasoning_tokens = -1;
	think_init(&a->think);
}

void api_answer_free(struct api_answer *a)
{
	if (!a)
		return;
	buf_free(&a->content);
	buf_free(&a->reasoning);
	cJSON_Delete(a->stats);
	a->stats = NULL;
	for (int i = 0; i < API_MAX_TOOL_CALLS; i++) {
		free(a->calls[i].id);
		free(a->calls[i].name);
		buf_free(&a->calls[i].args);
	}
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}


static void set_str(char **dst, const char *s)
{
	if (s && *s && !*dst)
		*dst = u16_dup_mended(s);
}

/* A name the model gave, even an empty one (which no tool has). */
static void set_name(char **dst, const char *s)
{
	if (s && (!*dst || !**dst)) {
		free(*dst);
		*dst = u16_dup_mended(s);
	}
}

static int bad_shape(struct api_answer *a, const char *what)
{
	a->err = EC_PROTOCOL;
	snprintf(a->errmsg, sizeof(a->errmsg), "malformed chunk from the server: %s", what);
	return -EPROTO;
}

/* Adds reasoning that is already mended: kept up to its cap, shown
 * whole. */
static int add_reasoning_mended(struct api_answer *a, const char *s, size_t n, void *ctx)
{
	if (n == 0)
		return 0;
	if (a->reasoning.len < a->reasoning.max) {
		size_t room = a->reasoning.max - a->reasoning.len;
		buf_append(&a->reasoning, s, n < room ? n : room);
	}
	a->chunks++;
	return a->reason_fn ? a->reason_fn(ctx, s, n) : 0;
}

static int add_content_mended(struct api_answer *a, const char *s, size_t n,
			      api_text_fn fn, void *ctx);

struct think_pass {
	struct api_answer *a;
	api_text_fn fn;
	void *ctx;
};

static int think_out(void *u, int reasoning, const char *s, size_t n)
{
	struct think_pass *p = u;
	return reasoning ? add_reasoning_mended(p->a, s, n, p->ctx)
			 : add_content_mended(p->a, s, n, p->fn, p->ctx);
}

/* Adds text that is already mended (a leading <think> block goes to the
 * reasoning when split_think is set). */
static int add_mended(struct api_answer *a, const char *s, size_t n,
		      api_text_fn fn, void *ctx)
{
	if (n && a->split_think && !think_done(&a->think)) {
		struct think_pass p = {a, fn, ctx};
		return think_feed(&a->think, s, n, think_out, &p);
	}
	return add_content_mended(a, s, n, fn, ctx);
}

static int add_content_mended(struct api_answer *a, const char *s, size_t n,
			      api_text_fn fn, void *ctx)
{
	if (n == 0)
		return 0;
	if (buf_append(&a->content, s, n) != 0) {
		a->err = EC_PROTOCOL;
		snprintf(a->errmsg, sizeof(a->errmsg), "answer longer than %zu bytes",
			 a->content.max);
		return -EFBIG;
	}
	a->chunks++;
	return fn ? fn(ctx, s, n) : 0;
}

/* Adds a piece of content (reasoning 0) or of reasoning (1). */
static int add_piece(struct api_answer *a, const char *s, int reasoning, api_text_fn fn,
		     void *ctx)
{
	size_t n;
	char small[256], *m;
	int ret;

	if (!s || !*s)
		return 0;
	n = strlen(s);
	m = n + 4 <= sizeof(small) ? small : malloc(n + 4);
	if (!m) {
		a->err = EC_PROTOCOL;
		snprintf(a->errmsg, sizeof(a->errmsg), "out of memory");
		return -ENOMEM;
	}
	n = u16_mend(s, n, reasoning ? &a->rhi : &a->hi, m);
	ret = reasoning ? add_reasoning_mended(a, m, n, ctx) : add_mended(a, m, n, fn, ctx);
	if (m != small)
		free(m);
	return ret;
}

/* The answer's text or arguments ended (finish_reason, [DONE], an error):
 * a high half still held had no partner. */
static int end_halves(struct api_answer *a, api_text_fn fn, void *ctx)
{
	int rc = 0;
	for (int i = 0; i < a->n_calls; i++)
		if (a->calls[i].hi) {
			a->calls[i].hi = 0;
			buf_append(&a->calls[i].args, U16_FFFD, 3);
		}
	if (a->rhi) {
		a->rhi = 0;
		rc = add_reasoning_mended(a, U16_FFFD, 3, ctx);
	}
	if (rc == 0 && a->hi) {
		a->hi = 0;
		rc = add_mended(a, U16_FFFD, 3, fn, ctx);
	}
	/* The text ended: a <think> start held back was text after all. */
	if (rc == 0 && a->split_think && !think_done(&a->think)) {
		struct think_pass p = {a, fn, ctx};
		rc = think_end(&a->think, think_out, &p);
	}
	return rc;
}

static int add_call_delta(struct api_answer *a, const cJSON *tc, int fallback)
{
	const cJSON *idx = cJSON_GetObjectItemCaseSensitive(tc, "index");
	const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
	int i = cJSON_IsNumber(idx) ? idx->valueint : fallback;
	const char *args;

	if (i < 0 || i >= API_MAX_TOOL_CALLS) {
		a->err = EC_PROTOCOL;
		snprintf(a->errmsg, sizeof(a->errmsg), "tool call index %d out of range", i);
		return -EPROTO;
	}
	if (i >= a->n_calls)
		a->n_calls = i + 1;
	set_str(&a->calls[i].id, str(tc, "id"));
	set_name(&a->calls[i].name, str(fn, "name"));
	args = str(fn, "arguments");
	if (!args) {
		/* Some servers send arguments as an object already. */
		const cJSON *o = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
		if (cJSON_IsObject(o)) {
			char *t = cJSON_PrintUnformatted(o);
			if (t)
				buf_puts(&a->calls[i].args, t);
			free(t);
		}
	} else {
		size_t n = strlen(args);
		char *m = malloc(n + 4);
		int rc = m ? 0 : -ENOMEM;
		if (m)
			rc = buf_append(&a->calls[i].args, m,
					u16_mend(args, n, &a->calls[i].hi, m));
		free(m);
		if (rc != 0) {
			a->err = EC_PROTOCOL;
			snprintf(a->errmsg, sizeof(a->errmsg),
				 rc == -ENOMEM ? "out of memory"
					       : "tool call arguments too large");
			return rc == -ENOMEM ? rc : -EFBIG;
		}
	}
	return 0;
}

static void take_usage(struct api_answer *a, const cJSON *root)
{
	const cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stats");
	const cJSON *v;

	if (cJSON_IsObject(u)) {
		v = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
		if (cJSON_IsNumber(v))
			a->prompt_tokens = (long)v->valuedouble;
		v = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
		if (cJSON_IsNumber(v))
			a->completion_tokens = (long)v->valuedouble;
		v = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(u, "completion_tokens_details"),
			"reasoning_tokens");
		if (cJSON_IsNumber(v))
			a->reasoning_tokens = (long)v->valuedouble;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (cJSON_IsString(v) && !a->model[0]) {
		snprintf(a->model, sizeof(a->model), "%s", v->valuestring);
		u16_mend_in_place(a->model);
	}
	if (cJSON_IsObject(s)) {
		cJSON_Delete(a->stats);
		a->stats = cJSON_Duplicate(s, 1);
		v = cJSON_GetObjectItemCaseSensitive(s, "tokens_per_second");
		if (cJSON_IsNumber(v))
			a->tps = v->valuedouble;
		v = cJSON_GetObjectItemCaseSensitive(s, "time_to_first_token");
		if (cJSON_IsNumber(v))
			a->ttft = v->valuedouble;
	}
}

static int take_error(struct api_answer *a, const cJSON *root)
{
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
	if (!e || cJSON_IsNull(e))
		return 0;
	a->err = errclass_from_error_json(e, 0, a->errmsg, sizeof(a->errmsg));
	u16_mend_in_place(a->errmsg);
	return 1;
}

static int take_finish(struct api_answer *a, const cJSON *choice,
		       api_text_fn fn, void *ctx)
{
	const char *f = str(choice, "finish_reason");
	if (!f)
		return 0;
	snprintf(a->finish, sizeof(a->finish), "%s", f);
	u16_mend_in_place(a->finish);
	return *f ? end_halves(a, fn, ctx) : 0;
}

int api_feed_event(struct api_answer *a, const char *data, size_t len,
		   api_text_fn fn, void *ctx)
{
	cJSON *root;
	const cJSON *choices, *ch;
	int ret = 0;

	if (!data) {
		data = ""; /* an empty body */
		len = 0;
	}
	while (len && (*data == ' ' || *data == '\t')) {
		data++;
		len--;
	}
	if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		a->done = 1;
		return end_halves(a, fn, ctx);
	}
	/* NUL and lone UTF-16 half escapes, made harmless first. */
	size_t clen = 0;
	char *copy = u16_prepare(data, len, &clen);
	if (copy) {
		data = copy;
		len = clen;
	}
	root = cJSON_ParseWithLength(data, len);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		a->err = EC_PROTOCOL;
		snprintf(a->errmsg, sizeof(a->errmsg),
			 "malformed chunk from the server: %.*s", (int)(len < 60 ? len : 60),
			 data);
		u16_mend_in_place(a->errmsg);
		free(copy);
		return -EPROTO;
	}
	free(copy);
	if (take_error(a, root)) {
		cJSON_Delete(root);
		return end_halves(a, fn, ctx);
	}
	take_usage(a, root);
	choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
	if (choices && !cJSON_IsArray(choices)) {
		cJSON_Delete(root);
		return bad_shape(a, "\"choices\" is not an array");
	}
	cJSON_ArrayForEach(ch, choices)
	{
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
		const cJSON *content;
		const cJSON *tcs, *tc, *fc;
		int k = 0;

		if (!cJSON_IsObject(ch)) {
			ret = bad_shape(a, "a choice is not an object");
			break;
		}
		if (!d)
			d = cJSON_GetObjectItemCaseSensitive(ch, "message");
		if (d && !cJSON_IsObject(d)) {
			ret = bad_shape(a, "\"delta\" is not an object");
			break;
		}
		content = cJSON_GetObjectItemCaseSensitive(d, "content");
		if (content && !cJSON_IsString(content) && !cJSON_IsNull(content)) {
			ret = bad_shape(a, "\"content\" is not a string");
			break;
		}
		/* Reasoning ("reasoning_content", else "reasoning") is not
		 * part of the answer: it goes its own way. */
		ret = add_piece(a, str(d, "reasoning_content") ? str(d, "reasoning_content")
							       : str(d, "reasoning"),
				1, fn, ctx);
		if (!ret)
			ret = add_piece(a, str(d, "content"), 0, fn, ctx);
		if (ret)
			break;
		tcs = cJSON_GetObjectItemCaseSensitive(d, "tool_calls");
		cJSON_ArrayForEach(tc, tcs)
		{
			ret = add_call_delta(a, tc, k++);
			if (ret)
				break;
		}
		fc = cJSON_GetObjectItemCaseSensitive(d, "function_call");
		if (cJSON_IsObject(fc)) {
			cJSON *wrap = cJSON_CreateObject();
			cJSON_AddItemReferenceToObject(wrap, "function", (cJSON *)fc);
			a->legacy_call = 1;
			ret = add_call_delta(a, wrap, 0);
			cJSON_Delete(wrap);
		}
		{
			int fr = take_finish(a, ch, fn, ctx);
			if (!ret)
				ret = fr;
		}
		if (ret)
			break;
	}
	cJSON_Delete(root);
	return ret;
}

int api_decode_completion(struct api_answer *a, const char *body, size_t len,
			  api_text_fn fn, void *ctx)
{
	int ret = api_feed_event(a, body, len, fn, ctx);
	if (ret == 0)
		ret = end_halves(a, fn, ctx);
	if (ret == 0 && !a->err)
		a->done = 1;
	return ret;
}

static void put_number_or_skip(cJSON *req, const char *k, int has, double v)
{
	if (has)
		cJSON_AddNumberToObject(req, k, v);
}

/* The request's members but messages, as a JSON object's text. */
static char *request_rest(const struct config *cfg, const char *model, const cJSON *params,
			  cJSON *tools, int *stream_out)
{
	cJSON *req = cJSON_CreateObject();
	const cJSON *p, *s;
	char *rest;
	int stream;

	cJSON_AddStringToObject(req, "model", model);
	cJSON_AddNumberToObject(req, "temperature", cfg->temperature);
	cJSON_AddNumberToObject(req, "max_tokens", (double)cfg->max_tokens);
	put_number_or_skip(req, "top_p", cfg->has_top_p, cfg->top_p);
	put_number_or_skip(req, "frequency_penalty", cfg->has_frequency_penalty,
			   cfg->frequency_penalty);
	put_number_or_skip(req, "presence_penalty", cfg->has_presence_penalty,
			   cfg->presence_penalty);
	put_number_or_skip(req, "seed", cfg->has_seed, (double)cfg->seed);
	if (cfg->stop)
		cJSON_AddStringToObject(req, "stop", cfg->stop);
	if (tools && cJSON_GetArraySize(tools) > 0) {
		if (cfg->tool_api == TOOL_API_FUNCTIONS) {
			/* Legacy form: the bare function objects. */
			cJSON *fns = cJSON_CreateArray();
			cJSON *t;
			cJSON_ArrayForEach(t, tools)
			{
				cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
				if (f)
					cJSON_AddItemToArray(fns, cJSON_Duplicate(f, 1));
			}
			cJSON_AddItemToObject(req, "functions", fns);
			cJSON_Delete(tools);
		} else {
			cJSON_AddItemToObject(req, "tools", tools);
		}
	} else {
		cJSON_Delete(tools);
	}
	/* The conversation's params.json wins over every default. */
	cJSON_ArrayForEach(p, params)
	{
		if (!p->string || strncmp(p->string, "lmsfs", 5) == 0)
			continue;
		if (strcmp(p->string, "messages") == 0 || strcmp(p->string, "model") == 0)
			continue; /* the conversation decides these */
		cJSON_DeleteItemFromObjectCaseSensitive(req, p->string);
		cJSON_AddItemToObject(req, p->string, cJSON_Duplicate(p, 1));
	}
	s = cJSON_GetObjectItemCaseSensitive(req, "stream");
	if (s)
		stream = cJSON_IsTrue(s);
	else {
		stream = cfg->stream;
		cJSON_AddBoolToObject(req, "stream", stream);
	}
	if (stream && !cJSON_GetObjectItemCaseSensitive(req, "stream_options")) {
		cJSON *so = cJSON_AddObjectToObject(req, "stream_options");
		cJSON_AddBoolToObject(so, "include_usage", 1);
	}
	*stream_out = stream;
	rest = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	return rest;
}

char *api_build_request(const struct config *cfg, const char *model,
			const char *messages, const cJSON *params, cJSON *tools,
			int *stream_out)
{
	char *out, *rest = request_rest(cfg, model, params, tools, stream_out);
	size_t ml = strlen(messages), rl;

	if (!rest)
		return NULL;
	/* {"messages":[...],<the rest>} */
	rl = strlen(rest);
	out = malloc(ml + rl + 32);
	if (out) {
		size_t n = 0;
		memcpy(out, "{\"messages\":[", 13);
		n = 13;
		memcpy(out + n, messages, ml);
		n += ml;
		memcpy(out + n, "],", 2);
		n += 2;
		memcpy(out + n, rest + 1, rl - 1); /* rest without its '{' */
		n += rl - 1;
		out[n] = '\0';
	}
	free(rest);
	return out;
}

char *api_build_request_buf(const struct config *cfg, const char *model, struct buf *msgs,
			    const cJSON *params, cJSON *tools, int *stream_out)
{
	static const char head[] = "{\"messages\":[";
	char *rest = request_rest(cfg, model, params, tools, stream_out);
	int ret;

	if (!rest)
		return NULL;
	/* {"messages":[...],<the rest>}, built around the messages where
	 * they lie. */
	msgs->max = 0;
	ret = buf_grow(msgs, strlen(rest) + sizeof(head) + 2);
	if (ret == 0)
		ret = buf_puts(msgs, "],");
	if (ret == 0)
		ret = buf_puts(msgs, rest + 1);
	if (ret == 0)
		ret = buf_prepend(msgs, head, sizeof(head) - 1);
	free(rest);
	if (ret) {
		buf_free(msgs);
		return NULL;
	}
	return buf_take(msgs);
}

char *api_assistant_line(const struct api_answer *a, const char *status,
			 const cJSON *stats)
{
	cJSON *m = cJSON_CreateObject();
	char *out;
	int real_calls = 0;

	cJSON_AddStringToObject(m, "role", "assistant");
	for (int i = 0; i < a->n_calls; i++)
		if (a->calls[i].name)
			real_calls++;
	if (a->content.len) {
		/* The history must stay valid UTF-8 whatever the server sent. */
		char *fixed = utf8_repair(a->content.data, a->content.len);
		cJSON_AddStringToObject(m, "content", fixed ? fixed : "");
		free(fixed);
	}
	else if (real_calls)
		cJSON_AddNullToObject(m, "content");
	else
		cJSON_AddStringToObject(m, "content", "");
	if (real_calls && a->legacy_call) {
		cJSON *fc = cJSON_AddObjectToObject(m, "function_call");
		cJSON_AddStringToObject(fc, "name", a->calls[0].name);
		cJSON_AddStringToObject(fc, "arguments",
					a->calls[0].args.data ? a->calls[0].args.data : "");
	} else if (real_calls) {
		cJSON *arr = cJSON_AddArrayToObject(m, "tool_calls");
		for (int i = 0; i < a->n_calls; i++) {
			const struct api_tool_call *c = &a->calls[i];
			cJSON *o, *f;
			if (!c->name)
				continue;
			o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "id", c->id ? c->id : "");
			cJSON_AddStringToObject(o, "type", "function");
			f = cJSON_AddObjectToObject(o, "function");
			cJSON_AddStringToObject(f, "name", c->name);
			cJSON_AddStringToObject(f, "arguments", c->args.data ? c->args.data : "");
			cJSON_AddItemToArray(arr, o);
		}
	}
	if (a->reasoning.len) {
		char *fixed = utf8_repair(a->reasoning.data, a->reasoning.len);
		cJSON_AddStringToObject(m, "reasoning_content", fixed ? fixed : "");
		free(fixed);
	}
	if (stats)
		cJSON_AddItemToObject(m, "lmsfs_stats", cJSON_Duplicate(stats, 1));
	if (status)
		cJSON_AddStringToObject(m, "lmsfs_status", status);
	out = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	return out;
}

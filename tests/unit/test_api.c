/* test_api.c - unit tests for decoding answers: UTF-16 halves cut across
 * events (joined, or U+FFFD, never a failure), in content and tool-call
 * arguments, streamed and whole; NUL escapes; error events classified like
 * HTTP error bodies. */
#include "api.h"
#include "buf.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define GRIN "\xF0\x9F\x98\x80" /* U+1F600, "\ud83d\ude00" */
#define REPL "\xEF\xBF\xBD"     /* U+FFFD */

/* What the text callback saw, joined. */
static struct buf shown;

static int on_text(void *ctx, const char *t, size_t n)
{
	(void)ctx;
	/* Every piece handed out is whole UTF-8 on its own. */
	CHECK(memmem(t, n, "\xED", 1) == NULL);
	buf_append(&shown, t, n);
	return 0;
}

/* A streamed answer: one delta per piece (raw JSON string bodies, escapes
 * as the server wrote them), then a finish chunk unless finish is NULL,
 * then [DONE] when done. Returns the first non-zero api_feed_event value. */
static int feed(struct api_answer *a, const char *const *pieces,
		const char *finish, int done)
{
	char ev[512];
	int rc;

	buf_reset(&shown);
	for (; *pieces; pieces++) {
		snprintf(ev, sizeof(ev),
			 "{\"choices\":[{\"index\":0,\"delta\":{\"content\":"
			 "\"%s\"},\"finish_reason\":null}]}",
			 *pieces);
		rc = api_feed_event(a, ev, strlen(ev), on_text, NULL);
		if (rc)
			return rc;
	}
	if (finish) {
		snprintf(ev, sizeof(ev),
			 "{\"choices\":[{\"index\":0,\"delta\":{},"
			 "\"finish_reason\":\"%s\"}]}",
			 finish);
		rc = api_feed_event(a, ev, strlen(ev), on_text, NULL);
		if (rc)
			return rc;
	}
	if (done)
		return api_feed_event(a, "[DONE]", 6, on_text, NULL);
	return 0;
}

static void check_stream(const char *const *pieces, const char *want)
{
	struct api_answer a;
	api_answer_init(&a);
	CHECK_INT(feed(&a, pieces, "stop", 1), 0);
	CHECK_INT(a.err, EC_NONE);
	buf_putc(&a.content, '\0');
	CHECK_STR(a.content.data, want);
	buf_putc(&shown, '\0');
	CHECK_STR(shown.data, want);
	CHECK_INT(a.hi, 0);
	api_answer_free(&a);
}

static void test_halves_in_content(void)
{
	/* The case: a pair cut between two events. */
	check_stream((const char *[]){"abcd\\ud83d", "\\ude00ef", NULL},
		     "abcd" GRIN "ef");
	/* Each half an event of its own; upper-case hex. */
	check_stream((const char *[]){"ab", "\\uD83D", "\\uDE00", "cd", NULL},
		     "ab" GRIN "cd");
	/* A whole pair in one string: cJSON's job, untouched. */
	check_stream((const char *[]){"a\\ud83d\\ude00b", NULL}, "a" GRIN "b");
	/* A high half followed by text, or by another high half. */
	check_stream((const char *[]){"ab\\ud83d", "cd", NULL}, "ab" REPL "cd");
	check_stream((const char *[]){"x\\ud83d", "\\ud83d\\ude00", NULL},
		     "x" REPL GRIN);
	check_stream((const char *[]){"\\ud83d\\ud83d", "\\ude00", NULL},
		     REPL GRIN);
	/* Lone halves inside a string, a low half first. */
	check_stream((const char *[]){"a\\ud83db", NULL}, "a" REPL "b");
	check_stream((const char *[]){"ab", "\\ude00cd", NULL}, "ab" REPL "cd");
	check_stream((const char *[]){"\\ude00\\ud83d", NULL}, REPL REPL);
	/* A high half that ends the answer. */
	check_stream((const char *[]){"ab\\ud83d", NULL}, "ab" REPL);
	/* Escaped backslashes are text, not escapes. */
	check_stream((const char *[]){"\\\\ud83d", NULL}, "\\ud83d");
	check_stream((const char *[]){"\\\\\\ud83d", "\\ude00", NULL},
		     "\\" GRIN);
	/* NUL stays U+FFFD, next to a half too. */
	check_stream((const char *[]){"a\\u0000\\ud83d", "\\ude00", NULL},
		     "a" REPL GRIN);
	/* Empty deltas between the halves hold nothing up. */
	check_stream((const char *[]){"a\\ud83d", "", "\\ude00", NULL},
		     "a" GRIN);
	/* Raw CESU-8 halves (ED A0 BD, ED B8 80) join too; a raw lone one
	 * becomes U+FFFD like an escaped one. */
	check_stream((const char *[]){"a\xED\xA0\xBD", "\xED\xB8\x80", NULL},
		     "a" GRIN);
	check_stream((const char *[]){"a\xED\xB8\x80z", NULL}, "a" REPL "z");
}

static void test_held_half_ends(void)
{
	struct api_answer a;

	/* Nothing is shown for a high half until its fate is known. */
	api_answer_init(&a);
	CHECK_INT(feed(&a, (const char *[]){"ab\\ud83d", NULL}, NULL, 0), 0);
	CHECK_INT(a.content.len, 2);
	CHECK_INT(shown.len, 2);
	CHECK_INT(a.hi, 0xD83D);
	CHECK_INT(a.chunks, 1);
	/* finish_reason ends it. */
	CHECK_INT(feed(&a, (const char *[]){NULL}, "length", 0), 0);
	CHECK_INT(a.hi, 0);
	buf_putc(&shown, '\0');
	CHECK_STR(shown.data, REPL);
	CHECK_INT(a.chunks, 2);
	api_answer_free(&a);

	/* [DONE] alone ends it. */
	api_answer_init(&a);
	CHECK_INT(feed(&a, (const char *[]){"\\ud83d", NULL}, NULL, 1), 0);
	CHECK_INT(a.chunks, 1);
	buf_putc(&a.content, '\0');
	CHECK_STR(a.content.data, REPL);
	api_answer_free(&a);

	/* A half alone is not text yet (no chunk counted: nothing shown). */
	api_answer_init(&a);
	CHECK_INT(feed(&a, (const char *[]){"\\ud83d", NULL}, NULL, 0), 0);
	CHECK_INT(a.chunks, 0);
	CHECK_INT(a.content.len, 0);
	api_answer_free(&a);

	/* An error event ends it as well, and keeps its class. */
	api_answer_init(&a);
	CHECK_INT(feed(&a, (const char *[]){"ok\\ud83d", NULL}, NULL, 0), 0);
	const char *err = "{\"error\":{\"message\":\"bad \\ud83d\","
			  "\"type\":\"invalid_request_error\"}}";
	CHECK_INT(api_feed_event(&a, err, strlen(err), on_text, NULL), 0);
	CHECK_INT(a.err, EC_BAD_REQUEST);
	CHECK_STR(a.errmsg, "bad " REPL);
	buf_putc(&a.content, '\0');
	CHECK_STR(a.content.data, "ok" REPL);
	api_answer_free(&a);
}

static void test_whole_completion(void)
{
	struct api_answer a;
	const char *body =
	    "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
	    "\"content\":\"a\\ud83db\\ude00\\ud83d\\ude00z\\ud83d\"},"
	    "\"finish_reason\":\"stop\"}]}";

	api_answer_init(&a);
	buf_reset(&shown);
	CHECK_INT(api_decode_completion(&a, body, strlen(body), on_text, NULL),
		  0);
	CHECK_INT(a.err, EC_NONE);
	CHECK_INT(a.done, 1);
	buf_putc(&a.content, '\0');
	CHECK_STR(a.content.data, "a" REPL "b" REPL GRIN "z" REPL);
	api_answer_free(&a);

	/* No finish_reason: the end of the body ends the text. */
	body = "{\"choices\":[{\"message\":{\"content\":\"q\\ud83d\"}}]}";
	api_answer_init(&a);
	CHECK_INT(api_decode_completion(&a, body, strlen(body), on_text, NULL),
		  0);
	buf_putc(&a.content, '\0');
	CHECK_STR(a.content.data, "q" REPL);
	api_answer_free(&a);
}

static int call_event(struct api_answer *a, int index, const char *extra,
		      const char *args)
{
	char ev[512];
	snprintf(ev, sizeof(ev),
		 "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":%d%s,"
		 "\"function\":{\"arguments\":\"%s\"}}]}}]}",
		 index, extra, args);
	return api_feed_event(a, ev, strlen(ev), on_text, NULL);
}

static void test_halves_in_tool_arguments(void)
{
	struct api_answer a;
	const char *fin = "{\"choices\":[{\"delta\":{},"
			  "\"finish_reason\":\"tool_calls\"}]}";

	api_answer_init(&a);
	/* Two calls, interleaved, each cut between its halves; the name
	 * carries a lone half (made U+FFFD, never joined). */
	const char *first =
	    "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,"
	    "\"id\":\"c\\ud83d\",\"type\":\"function\",\"function\":"
	    "{\"name\":\"n\\ud83d\",\"arguments\":\"\"}}]}}]}";
	CHECK_INT(api_feed_event(&a, first, strlen(first), on_text, NULL), 0);
	CHECK_INT(call_event(&a, 0, "", "{\\\"x\\\": \\\"\\ud83d"), 0);
	CHECK_INT(call_event(&a, 1, ",\"id\":\"c1\"", "{\\\"y\\\": \\\"\\ud83d"), 0);
	CHECK_INT(call_event(&a, 0, "", "\\ude00\\\"}"), 0);
	CHECK_INT(call_event(&a, 1, "", "!\\\"}"), 0);
	CHECK_INT(call_event(&a, 1, "", "\\ud83d"), 0);
	CHECK_INT(api_feed_event(&a, fin, strlen(fin), on_text, NULL), 0);
	CHECK_INT(a.err, EC_NONE);
	CHECK_INT(a.n_calls, 2);
	buf_putc(&a.calls[0].args, '\0');
	buf_putc(&a.calls[1].args, '\0');
	CHECK_STR(a.calls[0].args.data, "{\"x\": \"" GRIN "\"}");
	CHECK_STR(a.calls[1].args.data, "{\"y\": \"" REPL "!\"}" REPL);
	CHECK_INT(a.calls[0].hi, 0);
	CHECK_INT(a.calls[1].hi, 0);
	CHECK_STR(a.calls[0].name, "n" REPL);
	CHECK_STR(a.calls[0].id, "c" REPL);
	CHECK_STR(a.calls[1].id, "c1");
	api_answer_free(&a);
}

static void test_garbage_still_fails(void)
{
	struct api_answer a;
	/* Escapes that are not escapes stay cJSON's to refuse. */
	static const char *const bad[] = {
	    "{\"choices\":[{\"delta\":{\"content\":\"\\ud83\"}}]}",
	    "{\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\u\"}}]}",
	    "{\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\",
	    "{\"choices\":[{\"delta\":{\"content\":\"\\ud83d",
	    "\\ud83d",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		api_answer_init(&a);
		CHECK_INT(api_feed_event(&a, bad[i], strlen(bad[i]), on_text,
					 NULL),
			  -EPROTO);
		CHECK_INT(a.err, EC_PROTOCOL);
		/* The message quotes the chunk, still as valid UTF-8. */
		CHECK(strstr(a.errmsg, "\xED") == NULL);
		api_answer_free(&a);
	}
}

static void test_error_events(void)
{
	static const struct {
		const char *ev;
		enum err_class want;
	} cases[] = {
	    {"{\"error\":{\"message\":\"'temperature' must be at most 2\","
	     "\"type\":\"invalid_request_error\",\"param\":\"temperature\"}}",
	     EC_BAD_REQUEST},
	    {"{\"error\":{\"object\":\"error\",\"message\":\"bad top_k\","
	     "\"type\":\"BadRequestError\",\"code\":400}}",
	     EC_BAD_REQUEST},
	    {"{\"error\":{\"message\":\"context length of only 4096\","
	     "\"code\":\"context_length_exceeded\"}}",
	     EC_CONTEXT},
	    {"{\"error\":{\"message\":\"Model \\\"x\\\" not found\","
	     "\"type\":\"invalid_request_error\"}}",
	     EC_MODEL_NOT_FOUND},
	    {"{\"error\":{\"message\":\"crashed\",\"type\":\"server_error\"}}",
	     EC_SERVER},
	    {"{\"error\":\"oops\"}", EC_SERVER},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct api_answer a;
		api_answer_init(&a);
		CHECK_INT(api_feed_event(&a, cases[i].ev, strlen(cases[i].ev),
					 on_text, NULL),
			  0);
		CHECK_INT(a.err, cases[i].want);
		api_answer_free(&a);
		/* The same as a whole 200 body. */
		api_answer_init(&a);
		CHECK_INT(api_decode_completion(&a, cases[i].ev,
						strlen(cases[i].ev), on_text,
						NULL),
			  0);
		CHECK_INT(a.err, cases[i].want);
		CHECK_INT(a.done, 0);
		api_answer_free(&a);
	}
}

int main(void)
{
	buf_init(&shown, 1u << 20);
	test_halves_in_content();
	test_held_half_ends();
	test_whole_completion();
	test_halves_in_tool_arguments();
	test_garbage_still_fails();
	test_error_events();
	buf_free(&shown);
	return CHECK_DONE();
}

/* test_sse.c - unit tests for the incremental SSE parser.
 *
 * The main property: however the bytes of a stream are cut into sse_feed()
 * calls, the events that come out are the same.
 */
#include "buf.h"
#include "check.h"
#include "sse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Events are recorded as "event|data" joined by '\x1e' into one string, so
 * two runs compare with strcmp. */
struct rec {
	struct buf out;
	int n;
	int stop_after; /* return 7 from the callback after this many; 0: never
			 */
};

static int rec_fn(void *ctx, const char *event, const char *data, size_t len)
{
	struct rec *r = ctx;

	if (data[len] != '\0')
		buf_puts(&r->out, "<missing NUL>");
	buf_puts(&r->out, event);
	buf_putc(&r->out, '|');
	buf_append(&r->out, data, len);
	buf_putc(&r->out, '\x1e');
	r->n++;
	if (r->stop_after && r->n >= r->stop_after)
		return 7;
	return 0;
}

static void rec_init(struct rec *r)
{
	buf_init(&r->out, 0);
	r->n = 0;
	r->stop_after = 0;
}

/* Parses s (n bytes) in chunks whose sizes come from sizes[] (cycled), or
 * all at once when sizes is NULL. Returns the recorded events, malloc'd;
 * *rc gets the first non-zero return or that of sse_finish. */
static char *parse_chunks(const char *s, size_t n, const size_t *sizes,
			  size_t nsizes, size_t max_event, int *rc, int *count)
{
	struct rec r;
	struct sse_parser *p;
	size_t pos = 0, k = 0, len;

	rec_init(&r);
	p = sse_new(max_event, rec_fn, &r);
	*rc = 0;
	while (pos < n && *rc == 0) {
		len = sizes ? sizes[k++ % nsizes] : n;
		if (len > n - pos)
			len = n - pos;
		*rc = sse_feed(p, s + pos, len);
		pos += len;
	}
	if (*rc == 0)
		*rc = sse_finish(p);
	sse_free(p);
	if (count)
		*count = r.n;
	return buf_take(&r.out);
}

static char *parse_all(const char *s, size_t max_event, int *rc, int *count)
{
	return parse_chunks(s, strlen(s), NULL, 0, max_event, rc, count);
}

/* A stream like one from /v1/chat/completions, with a comment, an event
 * name, a multi-line event, UTF-8 and all three kinds of line ending. */
static const char openai_stream[] =
    ": OPENROUTER PROCESSING\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
    "\"created\":1700000000,\"model\":\"qwen2.5-7b-instruct\","
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"content\":\"Hel\"},\"finish_reason\":null}]}\r\n"
    "\r\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"content\":\"lo, w\xc3\xb6rld \xe4\xb8\x96\xe7\x95\x8c "
    "\xf0\x9f\x98\x80\"},\"finish_reason\":null}]}\r"
    "\r"
    "id: 42\n"
    "retry: 1000\n"
    "event: delta\n"
    "data: first line\n"
    ": a comment in the middle\n"
    "data:second line\n"
    "data:  two spaces\n"
    "data\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{"
    "\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\","
    "\"function\":{\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":"
    "\\\"UTC\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\n"
    "\n"
    "event: ping\n"
    "\n"
    "data: {\"part\":1}\r\n"
    "data: {\"part\":2}\r\n"
    "\r\n"
    "data: cr1\r"
    "data: cr2\r"
    "\r"
    "data: [DONE]\n"
    "\n";

static const char openai_expected[] =
    "|{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
    "\"created\":1700000000,\"model\":\"qwen2.5-7b-instruct\","
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}\x1e"
    "|{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"content\":\"Hel\"},\"finish_reason\":null}]}\x1e"
    "|{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"content\":\"lo, w\xc3\xb6rld \xe4\xb8\x96\xe7\x95\x8c "
    "\xf0\x9f\x98\x80\"},\"finish_reason\":null}]}\x1e"
    "delta|first line\nsecond line\n two spaces\n\x1e"
    "|{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{"
    "\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\","
    "\"function\":{\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":"
    "\\\"UTC\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\x1e"
    "|{\"part\":1}\n{\"part\":2}\x1e"
    "|cr1\ncr2\x1e"
    "|[DONE]\x1e";

static void test_openai_whole(void)
{
	int rc, n;
	char *got = parse_all(openai_stream, 0, &rc, &n);

	CHECK_INT(rc, 0);
	CHECK_INT(n, 8);
	CHECK_STR(got, openai_expected);
	free(got);
}

static void test_openai_splits(void)
{
	size_t n = strlen(openai_stream), i, j, one = 1;
	size_t sizes[2];
	int rc, bad = 0, badrc = 0;
	char *got;

	/* Byte by byte. */
	got = parse_chunks(openai_stream, n, &one, 1, 0, &rc, NULL);
	CHECK_INT(rc, 0);
	CHECK_STR(got, openai_expected);
	free(got);

	/* Cut in two at every position. */
	for (i = 0; i <= n; i++) {
		sizes[0] = i ? i : n + 1; /* i == 0: one piece */
		sizes[1] = n;
		got = parse_chunks(openai_stream, n, sizes, 2, 0, &rc, NULL);
		if (strcmp(got, openai_expected) != 0)
			bad++;
		if (rc)
			badrc++;
		free(got);
	}
	CHECK_INT(bad, 0);
	CHECK_INT(badrc, 0);

	/* Cut in three at many pairs of positions. */
	bad = 0;
	for (i = 1; i < n; i += 7) {
		for (j = 1; j + i < n; j += 11) {
			sizes[0] = i;
			sizes[1] = j;
			got = parse_chunks(openai_stream, n, sizes, 2, 0, &rc,
					   NULL);
			if (strcmp(got, openai_expected) != 0 || rc)
				bad++;
			free(got);
		}
	}
	CHECK_INT(bad, 0);

	/* Random chunk sizes, reproducible. */
	srand(12345);
	bad = 0;
	for (i = 0; i < 2000; i++) {
		size_t rs[16];
		for (j = 0; j < 16; j++)
			rs[j] = 1 + (size_t)rand() % (i % 3 == 0 ? 4 : 97);
		got = parse_chunks(openai_stream, n, rs, 16, 0, &rc, NULL);
		if (strcmp(got, openai_expected) != 0 || rc)
			bad++;
		free(got);
	}
	CHECK_INT(bad, 0);
}

static void expect(const char *in, const char *want, int want_n)
{
	int rc, n;
	char *got = parse_all(in, 0, &rc, &n);

	CHECK_INT(rc, 0);
	CHECK_INT(n, want_n);
	CHECK_STR(got, want);
	free(got);
}

static void test_fields(void)
{
	/* Line endings. */
	expect("data: a\n\n", "|a\x1e", 1);
	expect("data: a\r\n\r\n", "|a\x1e", 1);
	expect("data: a\r\r", "|a\x1e", 1);
	expect("data: a\rdata: b\r\r", "|a\nb\x1e", 1);
	expect("data: a\r\ndata: b\n\r\n", "|a\nb\x1e", 1);
	/* CR LF LF is a line end and then an empty line. */
	expect("data: a\r\n\ndata: b\n\n", "|a\x1e|b\x1e", 2);
	/* LF CR: the CR ends an empty line. */
	expect("data: a\n\rdata: b\n\n", "|a\x1e|b\x1e", 2);

	/* Comments. */
	expect(": hello\n\n", "", 0);
	expect(":\n\n", "", 0);
	expect("data: x\n: c\ndata: y\n\n", "|x\ny\x1e", 1);
	expect(": data: not data\ndata: z\n\n", "|z\x1e", 1);

	/* The space after the colon. */
	expect("data:x\n\n", "|x\x1e", 1);
	expect("data:  x\n\n", "| x\x1e", 1);
	expect("data: x \n\n", "|x \x1e", 1);
	expect("data::x\n\n", "|:x\x1e", 1);
	expect("data: a: b\n\n", "|a: b\x1e", 1);

	/* Empty data is still an event; no data is no event. */
	expect("data:\n\n", "|\x1e", 1);
	expect("data\n\n", "|\x1e", 1);
	expect("data\ndata\n\n", "|\n\x1e", 1);
	expect("event: foo\n\n", "", 0);
	expect("\n\n\n", "", 0);
	expect("id: 1\nretry: 5\n\n", "", 0);

	/* Event names; they do not carry over to the next event. */
	expect("event: foo\ndata: 1\n\ndata: 2\n\n", "foo|1\x1e|2\x1e", 2);
	expect("event: foo\n\ndata: 2\n\n", "|2\x1e", 1);
	expect("event: a\nevent: b\ndata: 1\n\n", "b|1\x1e", 1);
	expect("event:x\ndata:y\n\n", "x|y\x1e", 1);

	/* Unknown fields and look-alikes are ignored. */
	expect("foo: bar\ndata: 1\n\n", "|1\x1e", 1);
	expect("Data: no\ndata : no\ndatax: no\ndata: yes\n\n", "|yes\x1e", 1);
	expect(" data: no\n\n", "", 0);

	/* UTF-8 passes through untouched. */
	expect("data: \xe2\x82\xac \xf0\x9f\x98\x80\n\n",
	       "|\xe2\x82\xac \xf0\x9f\x98\x80\x1e", 1);
}

static void test_nul_in_data(void)
{
	static const char in[] = "data: a\0b\n\n";
	int rc, n;
	char *got = parse_chunks(in, sizeof(in) - 1, NULL, 0, 0, &rc, &n);

	CHECK_INT(rc, 0);
	CHECK_INT(n, 1);
	CHECK(memcmp(got, "|a\0b\x1e", 5) == 0);
	free(got);
}

static void test_finish(void)
{
	/* A server that closes without the final blank line. */
	expect("data: a", "|a\x1e", 1);
	expect("data: a\n", "|a\x1e", 1);
	expect("data: a\r", "|a\x1e", 1);
	expect("data: a\r\n", "|a\x1e", 1);
	expect("data: a\ndata: b", "|a\nb\x1e", 1);
	expect("data: a\n\ndata: b", "|a\x1e|b\x1e", 2);
	expect("event: e\ndata: a", "e|a\x1e", 1);
	/* Nothing pending: no event. */
	expect("data: a\n\n", "|a\x1e", 1);
	expect("event: e", "", 0);
	expect(": comment", "", 0);
	expect("", "", 0);

	/* Events come out as soon as the blank line arrives, not at finish. */
	{
		struct rec r;
		struct sse_parser *p;

		rec_init(&r);
		p = sse_new(0, rec_fn, &r);
		CHECK(p != NULL);
		CHECK_INT(sse_feed(p, "data: a\n", 8), 0);
		CHECK_INT(r.n, 0);
		CHECK_INT(sse_feed(p, "\n", 1), 0);
		CHECK_INT(r.n, 1);
		CHECK_INT(sse_feed(p, "data: b\r", 8), 0);
		CHECK_INT(r.n, 1);
		/* The CR alone already ends the line; the next CR is the
		 * blank line. */
		CHECK_INT(sse_feed(p, "\r", 1), 0);
		CHECK_INT(r.n, 2);
		CHECK_INT(sse_finish(p), 0);
		CHECK_INT(r.n, 2);
		/* The parser can go on after finish. */
		CHECK_INT(sse_feed(p, "data: c\n\n", 9), 0);
		CHECK_INT(r.n, 3);
		CHECK_INT(sse_feed(p, NULL, 0), 0);
		sse_free(p);
		CHECK_STR(r.out.data, "|a\x1e|b\x1e|c\x1e");
		buf_free(&r.out);
	}
}

static void test_cap(void)
{
	char big[200];
	int rc, n;
	char *got;

	/* Within the cap. */
	got = parse_all("data: 0123456789\n\n", 32, &rc, &n);
	CHECK_INT(rc, 0);
	CHECK_INT(n, 1);
	free(got);

	/* One long line. */
	memset(big, 'x', sizeof(big));
	memcpy(big, "data: ", 6);
	big[sizeof(big) - 1] = '\0';
	got = parse_all(big, 64, &rc, &n);
	CHECK_INT(rc, -EMSGSIZE);
	CHECK_INT(n, 0);
	free(got);

	/* Many short data lines that add up. */
	{
		struct rec r;
		struct sse_parser *p;
		int i;

		rec_init(&r);
		p = sse_new(100, rec_fn, &r);
		rc = 0;
		for (i = 0; i < 50 && rc == 0; i++)
			rc = sse_feed(p, "data: abcdefgh\n", 15);
		CHECK_INT(rc, -EMSGSIZE);
		CHECK(i < 20);
		/* The error sticks. */
		CHECK_INT(sse_feed(p, "\n", 1), -EMSGSIZE);
		CHECK_INT(sse_finish(p), -EMSGSIZE);
		CHECK_INT(r.n, 0);
		sse_free(p);
		buf_free(&r.out);
	}

	/* The cap is per event: many small events are fine. */
	{
		struct rec r;
		struct sse_parser *p;
		int i;

		rec_init(&r);
		p = sse_new(32, rec_fn, &r);
		rc = 0;
		for (i = 0; i < 1000 && rc == 0; i++)
			rc = sse_feed(p, "data: abcdefgh\n\n", 16);
		CHECK_INT(rc, 0);
		CHECK_INT(r.n, 1000);
		sse_free(p);
		buf_free(&r.out);
	}

	/* A long comment line counts too (it is a line). */
	got = parse_all(": ccccccccccccccccccccccccccccccccccccccccccccccc\n",
			16, &rc, &n);
	CHECK_INT(rc, -EMSGSIZE);
	free(got);
}

static void test_callback_stop(void)
{
	struct rec r;
	struct sse_parser *p;
	const char *in = "data: 1\n\ndata: 2\n\ndata: 3\n\n";

	rec_init(&r);
	r.stop_after = 2;
	p = sse_new(0, rec_fn, &r);
	CHECK_INT(sse_feed(p, in, strlen(in)), 7);
	CHECK_INT(r.n, 2);
	CHECK_INT(sse_feed(p, in, strlen(in)), 7);
	CHECK_INT(r.n, 2);
	CHECK_INT(sse_finish(p), 7);
	sse_free(p);
	CHECK_STR(r.out.data, "|1\x1e|2\x1e");
	buf_free(&r.out);

	/* A stop from the event dispatched by sse_finish. */
	rec_init(&r);
	r.stop_after = 1;
	p = sse_new(0, rec_fn, &r);
	CHECK_INT(sse_feed(p, "data: x", 7), 0);
	CHECK_INT(sse_finish(p), 7);
	CHECK_INT(r.n, 1);
	sse_free(p);
	buf_free(&r.out);

	sse_free(NULL);
}

int main(void)
{
	test_openai_whole();
	test_openai_splits();
	test_fields();
	test_nul_in_data();
	test_finish();
	test_cap();
	test_callback_stop();
	return CHECK_DONE();
}

/* sse.c - incremental text/event-stream parser: bytes in, events out.
 *
 * The parser keeps the unfinished line, the data and the event name of the
 * event being built. A CR at the end of one sse_feed() call may be the first
 * half of a CRLF split across calls, so it is remembered in saw_cr and a LF
 * at the start of the next call is then skipped.
 *
 * After sse_feed() or sse_finish() returned an error (-EMSGSIZE, -ENOMEM or
 * a callback's value) the rest of that input was not parsed; every later
 * call returns the same error, and the parser should only be freed.
 */
#include "sse.h"
#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct sse_parser {
	sse_event_fn fn;
	void *ctx;
	size_t max_event; /* cap on line + data + event name */
	struct buf line;  /* the line being read, without its terminator */
	struct buf data;  /* data: lines of this event joined by '\n' */
	struct buf event; /* last event: value of this event */
	int has_data;	  /* a data: line was seen (data may still be "") */
	int saw_cr;	  /* the last byte fed was CR */
	int err;	  /* sticky error, see above */
};

struct sse_parser *sse_new(size_t max_event, sse_event_fn fn, void *ctx)
{
	struct sse_parser *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->fn = fn;
	p->ctx = ctx;
	p->max_event = max_event ? max_event : SIZE_MAX;
	/* The sum is checked in sse_feed; these caps are only a backstop. */
	buf_init(&p->line, max_event);
	buf_init(&p->data, max_event);
	buf_init(&p->event, max_event);
	return p;
}

void sse_free(struct sse_parser *p)
{
	if (!p)
		return;
	buf_free(&p->line);
	buf_free(&p->data);
	buf_free(&p->event);
	free(p);
}

static void sse_clear_event(struct sse_parser *p)
{
	buf_reset(&p->data);
	buf_reset(&p->event);
	p->has_data = 0;
}

static int sse_dispatch(struct sse_parser *p)
{
	int rc = 0;

	if (p->has_data)
		rc = p->fn(p->ctx, p->event.data ? p->event.data : "",
			   p->data.data ? p->data.data : "", p->data.len);
	sse_clear_event(p);
	return rc;
}

/* Handles one complete line (held in p->line). */
static int sse_line(struct sse_parser *p)
{
	const char *s = p->line.data ? p->line.data : "";
	size_t len = p->line.len;
	const char *colon, *val;
	size_t flen, vlen;
	int rc = 0;

	if (len == 0)
		return sse_dispatch(p);
	if (s[0] == ':')
		goto out; /* comment */
	colon = memchr(s, ':', len);
	if (colon) {
		flen = (size_t)(colon - s);
		val = colon + 1;
		vlen = len - flen - 1;
		if (vlen && *val == ' ') {
			val++;
			vlen--;
		}
	} else {
		flen = len;
		val = "";
		vlen = 0;
	}
	if (flen == 4 && memcmp(s, "data", 4) == 0) {
		if (p->has_data)
			rc = buf_putc(&p->data, '\n');
		if (!rc)
			rc = buf_append(&p->data, val, vlen);
		p->has_data = 1;
	} else if (flen == 5 && memcmp(s, "event", 5) == 0) {
		buf_reset(&p->event);
		rc = buf_append(&p->event, val, vlen);
	}
	/* id:, retry: and unknown fields are of no use here. */
out:
	buf_reset(&p->line);
	if (rc == -EFBIG)
		rc = -EMSGSIZE;
	return rc;
}

/* Appends n bytes of line text, enforcing the per-event cap. */
static int sse_grow_line(struct sse_parser *p, const char *s, size_t n)
{
	size_t used = p->line.len + p->data.len + p->event.len;
	int rc;

	if (used > p->max_event || n > p->max_event - used)
		return -EMSGSIZE;
	rc = buf_append(&p->line, s, n);
	return rc == -EFBIG ? -EMSGSIZE : rc;
}

int sse_feed(struct sse_parser *p, const char *bytes, size_t n)
{
	size_t i = 0, j;
	int rc;

	if (p->err)
		return p->err;
	if (n && p->saw_cr && bytes[0] == '\n')
		i = 1;
	p->saw_cr = 0;
	while (i < n) {
		for (j = i; j < n && bytes[j] != '\n' && bytes[j] != '\r'; j++)
			;
		if (j > i) {
			rc = sse_grow_line(p, bytes + i, j - i);
			if (rc)
				goto fail;
		}
		if (j == n)
			break;
		rc = sse_line(p);
		if (rc)
			goto fail;
		if (bytes[j] == '\r') {
			if (j + 1 == n)
				p->saw_cr = 1;
			else if (bytes[j + 1] == '\n')
				j++;
		}
		i = j + 1;
	}
	return 0;
fail:
	p->err = rc;
	return rc;
}

int sse_finish(struct sse_parser *p)
{
	int rc;

	if (p->err)
		return p->err;
	p->saw_cr = 0;
	if (p->line.len) {
		rc = sse_line(p);
		if (rc)
			goto fail;
	}
	rc = sse_dispatch(p);
	if (rc)
		goto fail;
	return 0;
fail:
	p->err = rc;
	return rc;
}

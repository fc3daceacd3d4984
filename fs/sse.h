/* sse.h - incremental parser for text/event-stream (Server-Sent Events).
 *
 * Bytes go in as they arrive from the network, in pieces of any size (a line,
 * even a UTF-8 sequence, may be split across calls); complete events come out
 * through a callback. Pure: no I/O, no globals. Follows the WHATWG rules that
 * matter for OpenAI-style streams: lines end in LF, CRLF or CR; "data:" lines
 * of one event are joined with "\n"; one optional space after the colon is
 * dropped; lines starting with ":" are comments; "event:" sets the event
 * name; an empty line dispatches the event; an event with no data line is not
 * dispatched. A line without a colon is a field name with empty value.
 */
#ifndef LMSFS_SSE_H
#define LMSFS_SSE_H

#include <stddef.h>

/* Called once per event. `event` is "" when no event: field was given.
 * `data` is NUL-terminated, `len` excludes the NUL. Return 0 to go on;
 * any other value stops parsing and is returned by sse_feed(). */
typedef int (*sse_event_fn)(void *ctx, const char *event, const char *data,
			    size_t len);

struct sse_parser;

/* max_event caps the bytes of one event (line + data); passing it makes
 * sse_feed return -EMSGSIZE. 0 means no cap. Returns NULL when out of memory.
 * After any non-zero return the parser is spent: later calls return the
 * same value, and it should only be freed. */
struct sse_parser *sse_new(size_t max_event, sse_event_fn fn, void *ctx);
void sse_free(struct sse_parser *p); /* NULL is a no-op */
/* Returns 0, the callback's non-zero value, -EMSGSIZE or -ENOMEM. */
int sse_feed(struct sse_parser *p, const char *bytes, size_t n);
/* End of input: dispatches a pending event whose final blank line never
 * came (servers that close without one). Same returns as sse_feed. */
int sse_finish(struct sse_parser *p);

#endif

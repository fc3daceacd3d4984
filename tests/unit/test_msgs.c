/* test_msgs.c - the history made into a request's messages: lmsfs members
 * dropped, consecutive user messages joined, tool calls without a result
 * answered; the lines as written otherwise. */
#include "buf.h"
#include "check.h"
#include "msgs.h"

#include <string.h>

static char role[32];

static const char *sent(const char *history)
{
	static char out[4096];
	struct buf b;
	buf_init(&b, 1 << 20);
	CHECK_INT(msgs_from_history(history, strlen(history), &b, role, sizeof(role)), 0);
	snprintf(out, sizeof(out), "%.*s", (int)b.len, b.data ? b.data : "");
	buf_free(&b);
	return out;
}

#define U(t) "{\"role\":\"user\",\"content\":\"" t "\"}"
#define A(t) "{\"role\":\"assistant\",\"content\":\"" t "\"}"
#define CALLS                                                                   \
	"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["             \
	"{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"t\",\"arguments\":\"{}\"}}," \
	"{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"t\",\"arguments\":\"{}\"}}]}"
#define T(id, t) "{\"role\":\"tool\",\"tool_call_id\":\"" id "\",\"content\":\"" t "\"}"
#define NORES(id) "{\"role\":\"tool\",\"tool_call_id\":\"" id "\",\"content\":\"" MSGS_NO_RESULT "\"}"

int main(void)
{
	/* As written, ids cut, blank lines skipped. */
	CHECK_STR(sent(U("a") "\n\n" A("b") "\n"), U("a") "," A("b"));
	CHECK_STR(role, "user");
	CHECK_STR(sent("{\"role\":\"user\",\"content\":\"q\",\"lmsfs_id\":\"0123456789abcdef\"}\n"),
		  U("q"));
	/* Consecutive user messages become one. */
	CHECK_STR(sent(U("a") "\n" U("b") "\n" U("c") "\n" A("x") "\n"),
		  U("a\\n\\nb\\n\\nc") "," A("x"));
	/* ... also with a marked, stripped line between them: no, an assistant
	 * line (even empty) keeps them apart. */
	CHECK_STR(sent(U("a") "\n{\"role\":\"assistant\",\"content\":\"\",\"lmsfs_status\":\"x\"}\n" U("b") "\n"),
		  U("a") "," A("") "," U("b"));
	/* Parts arrays are concatenated. */
	CHECK_STR(sent("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"p\"}]}\n" U("s") "\n"),
		  "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"p\"},"
		  "{\"type\":\"text\",\"text\":\"s\"}]}");
	/* A tool round cut by a rewind: the missing result is supplied. */
	CHECK_STR(sent(U("q") "\n" CALLS "\n" T("c1", "r1") "\n" U("next") "\n"),
		  U("q") "," CALLS "," T("c1", "r1") "," NORES("c2") "," U("next"));
	/* ... also at the very end. */
	CHECK_STR(sent(U("q") "\n" CALLS "\n"), U("q") "," CALLS "," NORES("c1") "," NORES("c2"));
	/* A complete round is left alone. */
	CHECK_STR(sent(U("q") "\n" CALLS "\n" T("c2", "r2") "\n" T("c1", "r1") "\n" A("done") "\n"),
		  U("q") "," CALLS "," T("c2", "r2") "," T("c1", "r1") "," A("done"));
	/* A role written with blanks, and a system first. */
	CHECK_STR(sent("{\"role\" : \"system\",\"content\":\"s\"}\n" U("a") "\n"),
		  "{\"role\" : \"system\",\"content\":\"s\"}," U("a"));
	CHECK_STR(role, "system");
	/* Not objects: never sent. */
	CHECK_STR(sent("[1]\n" U("a") "\n"), U("a"));
	return CHECK_DONE();
}

/* test_msgs_flags.c - what msgs_from_history_ex leaves out: an assistant
 * line's reasoning_content (unless kept), a system message that starts the
 * history (when asked), a byte order mark that starts a line. */
#include "buf.h"
#include "check.h"
#include "msgs.h"

#include <string.h>

static char role[32];

static const char *sent(const char *history, unsigned flags)
{
	static char out[4096];
	struct buf b;
	buf_init(&b, 1 << 20);
	CHECK_INT(msgs_from_history_ex(history, strlen(history), &b, role, sizeof(role), flags),
		  0);
	snprintf(out, sizeof(out), "%.*s", (int)b.len, b.data ? b.data : "");
	buf_free(&b);
	return out;
}

#define U(t) "{\"role\":\"user\",\"content\":\"" t "\"}"
#define S(t) "{\"role\":\"system\",\"content\":\"" t "\"}"
#define AR "{\"role\":\"assistant\",\"content\":\"a\",\"reasoning_content\":\"r\"}"
#define ARS                                                                    \
	"{\"role\":\"assistant\",\"content\":\"a\",\"reasoning_content\":\"r\","   \
	"\"lmsfs_stats\":{\"model\":\"m\",\"stats\":{\"stop_reason\":\"eosFound\"}}}"

int main(void)
{
	/* Reasoning is left out unless kept; lmsfs_stats always. */
	CHECK_STR(sent(U("q") "\n" AR "\n", 0), U("q") ",{\"role\":\"assistant\",\"content\":\"a\"}");
	CHECK_STR(sent(U("q") "\n" ARS "\n", 0),
		  U("q") ",{\"role\":\"assistant\",\"content\":\"a\"}");
	CHECK_STR(sent(U("q") "\n" AR "\n", MSGS_KEEP_REASONING), U("q") "," AR);
	CHECK_STR(sent(U("q") "\n" ARS "\n", MSGS_KEEP_REASONING), U("q") "," AR);
	/* The text "reasoning_content" inside a string is not a member. */
	CHECK_STR(sent(U("say \\\"reasoning_content\\\"") "\n", 0),
		  U("say \\\"reasoning_content\\\""));
	/* A leading system message, dropped when asked (first_role still
	 * says it was there); a later one stays. */
	CHECK_STR(sent(S("s") "\n" U("q") "\n", MSGS_DROP_SYSTEM), U("q"));
	CHECK_STR(role, "system");
	CHECK_STR(sent(S("s") "\n" U("q") "\n", 0), S("s") "," U("q"));
	CHECK_STR(sent(U("q") "\n" S("s") "\n", MSGS_DROP_SYSTEM), U("q") "," S("s"));
	CHECK_STR(role, "user");
	/* A byte order mark that starts a line (and blanks after it). */
	CHECK_STR(sent("\xEF\xBB\xBF" U("q") "\n", 0), U("q"));
	CHECK_STR(sent("\xEF\xBB\xBF  " S("s") "\n\xEF\xBB\xBF" U("q") "\n", MSGS_DROP_SYSTEM),
		  U("q"));
	return CHECK_DONE();
}

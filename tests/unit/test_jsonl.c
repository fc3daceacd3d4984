/* test_jsonl.c - unit tests for conversation history validation. */
#include "check.h"
#include "jsonl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static char why[256];

/* Checks a line from an exact-size heap copy without a NUL, so the
 * sanitizer build catches any read past the given length. */
static int line_rc(const char *s)
{
	size_t n = strlen(s);
	char *copy = malloc(n ? n : 1);
	int rc;

	memcpy(copy, s, n);
	why[0] = '\0';
	rc = jsonl_check_line(copy, n, why, sizeof(why));
	free(copy);
	return rc;
}

#define OK(s)                                                                  \
	do {                                                                   \
		int ok_rc_ = line_rc(s);                                       \
		CHECK_INT(ok_rc_, 0);                                          \
		if (ok_rc_)                                                    \
			printf("  line: %s\n  why: %s\n", s, why);             \
	} while (0)

#define BAD(s, reason)                                                         \
	do {                                                                   \
		CHECK_INT(line_rc(s), -EINVAL);                                \
		CHECK_HAS(why, reason);                                        \
	} while (0)

static void test_roles(void)
{
	OK("{\"role\":\"system\",\"content\":\"You are terse.\"}");
	OK("{\"role\":\"user\",\"content\":\"hi\"}");
	OK("{\"role\":\"developer\",\"content\":\"rules\"}");
	OK("{\"role\":\"user\",\"content\":\"\"}");
	OK("{\"role\":\"user\",\"content\":\"hi\",\"name\":\"bob\"}");
	OK("  {\"role\":\"user\",\"content\":\"spaces around\"}  \t");
	OK("{\"role\":\"user\",\"content\":\"crlf file\"}\r");
	OK("{\"role\": \"user\", \"content\": \"caf\xc3\xa9 "
	   "\xf0\x9f\x98\x80\"}");
	OK("{\"role\":\"user\",\"content\":\"escapes \\n \\u00e9 "
	   "\\ud83d\\ude00\"}");
	OK("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
	   "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}}]}");
	OK("{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":"
	   "\"s\"}]}");
	OK("{\"role\":\"assistant\",\"content\":\"hello\"}");
	OK("{\"role\":\"assistant\",\"content\":\"\"}");
	OK("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
	   "\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"date\","
	   "\"arguments\":\"{}\"}}]}");
	OK("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	   "\"function\",\"function\":{\"name\":\"x\",\"arguments\":\"\"}},"
	   "{\"id\":\"b\",\"type\":\"function\",\"function\":{\"name\":\"y\","
	   "\"arguments\":\"{\\\"q\\\":1}\"}}]}");
	OK("{\"role\":\"assistant\",\"content\":\"let me "
	   "check\",\"tool_calls\":"
	   "[{\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"x\","
	   "\"arguments\":\"{}\"}}]}");
	OK("{\"role\":\"assistant\",\"content\":null,\"function_call\":{"
	   "\"name\":"
	   "\"date\",\"arguments\":\"{}\"}}");
	OK("{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"12:"
	   "00\"}");
	OK("{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"\"}");
	OK("{\"role\":\"function\",\"name\":\"date\",\"content\":\"12:00\"}");
	/* Extra fields are kept, not judged. */
	OK("{\"role\":\"user\",\"content\":\"x\",\"lmsfs\":{\"t\":1}}");
	OK("{\"content\":\"x\",\"role\":\"user\"}");
}

static void test_bad_messages(void)
{
	BAD("{\"role\":\"robot\",\"content\":\"x\"}", "unknown role \"robot\"");
	BAD("{\"role\":\"User\",\"content\":\"x\"}", "unknown role \"User\"");
	BAD("{\"role\":\"\",\"content\":\"x\"}", "unknown role \"\"");
	BAD("{\"role\":\"a\\u0001b\\\"c\",\"content\":\"x\"}",
	    "unknown role \"a?b?c\"");
	BAD("{\"role\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",\"content\":\"x\"}",
	    "...\"");
	BAD("{\"content\":\"x\"}", "without \"role\"");
	BAD("{\"role\":1,\"content\":\"x\"}", "\"role\" must be a string");
	BAD("{\"role\":null,\"content\":\"x\"}", "\"role\" must be a string");
	BAD("{\"role\":\"user\"}", "user message without content");
	BAD("{\"role\":\"system\"}", "system message without content");
	BAD("{\"role\":\"developer\"}", "developer message without content");
	BAD("{\"role\":\"user\",\"content\":null}",
	    "must be a string or an array");
	BAD("{\"role\":\"user\",\"content\":5}", "not a number");
	BAD("{\"role\":\"user\",\"content\":{}}", "not an object");
	BAD("{\"role\":\"user\",\"content\":[]}", "empty array");
	BAD("{\"role\":\"user\",\"content\":[\"text\"]}", "content part 1");
	BAD("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}"
	    ","
	    "{\"text\":\"b\"}]}",
	    "content part 2");
	BAD("{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}",
	    "text part 1 has no \"text\"");
	BAD("{\"role\":\"user\",\"content\":\"x\",\"name\":3}",
	    "\"name\" must be a string");

	BAD("{\"role\":\"assistant\"}",
	    "assistant message without content or tool_calls");
	BAD("{\"role\":\"assistant\",\"content\":null}",
	    "assistant message without content or tool_calls");
	BAD("{\"role\":\"assistant\",\"content\":7}", "string or null");
	BAD("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":{}}",
	    "\"tool_calls\" is not an array");
	BAD("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}",
	    "\"tool_calls\" is empty");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[1]}",
	    "tool call 1 is not an object");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\","
	    "\"function\":{\"name\":\"x\",\"arguments\":\"{}\"}}]}",
	    "tool call 1 has no \"id\"");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	    "\"code\",\"function\":{\"name\":\"x\",\"arguments\":\"{}\"}}]}",
	    "needs \"type\": \"function\"");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	    "\"function\"}]}",
	    "tool call 1 function is not an object");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	    "\"function\",\"function\":{\"arguments\":\"{}\"}}]}",
	    "has no \"name\"");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	    "\"function\",\"function\":{\"name\":\"x\",\"arguments\":{}}}]}",
	    "has no \"arguments\"");
	BAD("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":"
	    "\"function\",\"function\":{\"name\":\"x\",\"arguments\":\"{}\"}},"
	    "{\"id\":\"b\",\"type\":\"function\",\"function\":{\"name\":1,"
	    "\"arguments\":\"{}\"}}]}",
	    "tool call 2 function has no \"name\"");
	BAD("{\"role\":\"assistant\",\"function_call\":{\"name\":\"x\"}}",
	    "\"function_call\" has no \"arguments\"");
	BAD("{\"role\":\"assistant\",\"function_call\":\"x\"}",
	    "\"function_call\" is not an object");

	BAD("{\"role\":\"tool\",\"content\":\"x\"}",
	    "tool message without tool_call_id");
	BAD("{\"role\":\"tool\",\"tool_call_id\":5,\"content\":\"x\"}",
	    "tool message without tool_call_id");
	BAD("{\"role\":\"tool\",\"tool_call_id\":\"c\"}",
	    "tool message without content");
	BAD("{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":null}",
	    "tool message without content");
	BAD("{\"role\":\"function\",\"content\":\"x\"}",
	    "function message without name");
	BAD("{\"role\":\"function\",\"name\":\"f\"}",
	    "function message without content");
}

static void test_bad_json(void)
{
	static const unsigned char garbage[] = {
	    0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0xff};
	char tmp[64];
	int rc;

	BAD("[1,2]", "not a JSON object (got an array)");
	BAD("\"user\"", "not a JSON object (got a string)");
	BAD("42", "not a JSON object (got a number)");
	BAD("null", "not a JSON object (got null)");
	BAD("true", "not a JSON object (got a boolean)");
	BAD("hello", "not valid JSON");
	BAD("{", "not valid JSON");
	BAD("{\"role\":\"user\",\"content\":\"x\"", "not valid JSON");
	BAD("{\"role\":\"user\",\"content\":\"unterminated}", "not valid JSON");
	BAD("{'role':'user'}", "not valid JSON (at byte ");
	BAD("{\"role\":\"user\",\"content\":\"x\"}}", "unexpected text");
	BAD("{\"role\":\"user\",\"content\":\"x\"} x", "at byte 31");
	BAD("{\"role\":\"user\",\"content\":\"x\"}{\"role\":\"user\","
	    "\"content\":\"y\"}",
	    "unexpected text after the object");
	BAD("{\"role\":\"user\",\"content\":\"x\"},", "unexpected text");
	BAD("{\"role\":\"user\",\"content\":\"\xff\"}",
	    "not valid UTF-8 at byte 27");
	BAD("{\"role\":\"user\",\"content\":\"\xc0\xaf\"}", "not valid UTF-8");
	BAD("{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}",
	    "not valid UTF-8");
	BAD("{\"role\":\"user\",\"content\":\"\xe2\x82\"}", "not valid UTF-8");

	/* Binary garbage with a NUL inside. */
	rc = jsonl_check_line((const char *)garbage, sizeof(garbage), why,
			      sizeof(why));
	CHECK_INT(rc, -EINVAL);
	CHECK_HAS(why, "NUL byte at byte 9");
	/* Binary garbage without one. */
	rc = jsonl_check_line((const char *)garbage, 8, why, sizeof(why));
	CHECK_INT(rc, -EINVAL);
	CHECK_HAS(why, "not valid UTF-8");
	rc = jsonl_check_line("\x01\x02\x03", 3, why, sizeof(why));
	CHECK_INT(rc, -EINVAL);
	CHECK_HAS(why, "not valid JSON");

	/* Blank lines are fine. */
	OK("");
	OK("   ");
	OK(" \t \r");

	/* Reasons are cut to the space given, always NUL-terminated. */
	memset(tmp, 'z', sizeof(tmp));
	rc = jsonl_check_line("{\"role\":\"robot\"}", 16, tmp, 10);
	CHECK_INT(rc, -EINVAL);
	CHECK_INT(strlen(tmp), 9);
	CHECK_INT(jsonl_check_line("[]", 2, NULL, 0), -EINVAL);

	/* Deep nesting is refused, not a crash. */
	{
		size_t depth = 5000, i;
		char *deep = malloc(depth * 2 + 64);
		size_t n = 0;
		n += (size_t)sprintf(deep,
				     "{\"role\":\"user\",\"content\":\"x\","
				     "\"x\":");
		for (i = 0; i < depth; i++)
			deep[n++] = '[';
		for (i = 0; i < depth; i++)
			deep[n++] = ']';
		deep[n++] = '}';
		CHECK_INT(jsonl_check_line(deep, n, why, sizeof(why)), -EINVAL);
		free(deep);
	}
}

static void test_file(void)
{
	const char *ok = "{\"role\":\"system\",\"content\":\"s\"}\n"
			 "\n"
			 "{\"role\":\"user\",\"content\":\"hi\"}\r\n"
			 "   \n"
			 "{\"role\":\"assistant\",\"content\":\"hello\"}";
	const char *bad3 = "{\"role\":\"user\",\"content\":\"a\"}\n"
			   "\n"
			   "{\"role\":\"tool\",\"content\":\"x\"}\n"
			   "{\"role\":\"robot\",\"content\":\"x\"}\n";
	const char *bad_last = "{\"role\":\"user\",\"content\":\"a\"}\n"
			       "{\"role\":\"user\",\"content\":\"b\"}\n"
			       "{\"role\":\"user\"";
	size_t line = 99;

	CHECK_INT(jsonl_check(ok, strlen(ok), why, sizeof(why), &line), 0);
	CHECK_INT(line, 0);
	CHECK_INT(jsonl_check("", 0, why, sizeof(why), &line), 0);
	CHECK_INT(jsonl_check("\n\n\n", 3, why, sizeof(why), NULL), 0);

	CHECK_INT(jsonl_check(bad3, strlen(bad3), why, sizeof(why), &line),
		  -EINVAL);
	CHECK_INT(line, 3);
	CHECK_STR(why, "line 3: tool message without tool_call_id");

	CHECK_INT(
	    jsonl_check(bad_last, strlen(bad_last), why, sizeof(why), &line),
	    -EINVAL);
	CHECK_INT(line, 3);
	CHECK_HAS(why, "line 3: not valid JSON");

	/* Only the given length is read. */
	CHECK_INT(jsonl_check(bad3, 31, why, sizeof(why), &line), 0);
	CHECK_INT(jsonl_check(bad3, 40, why, sizeof(why), &line), -EINVAL);
	CHECK_INT(line, 3);

	/* Two objects on one line. */
	{
		const char *two = "{\"role\":\"user\",\"content\":\"a\"} "
				  "{\"role\":\"user\",\"content\":\"b\"}\n";
		CHECK_INT(
		    jsonl_check(two, strlen(two), why, sizeof(why), &line),
		    -EINVAL);
		CHECK_INT(line, 1);
		CHECK_HAS(why, "line 1: not valid JSON: unexpected text");
	}

	/* Line numbers count blank lines and go past 9. */
	{
		char data[2048];
		size_t n = 0;
		int i;
		for (i = 0; i < 11; i++)
			n += (size_t)sprintf(data + n, "%s\n",
					     i % 2 ? ""
						   : "{\"role\":\"user\","
						     "\"content\":\"a\"}");
		n += (size_t)sprintf(data + n, "{\"role\":\"user\"}\n");
		CHECK_INT(jsonl_check(data, n, why, sizeof(why), &line),
			  -EINVAL);
		CHECK_INT(line, 12);
		CHECK_STR(why, "line 12: user message without content");
	}
}

int main(void)
{
	test_roles();
	test_bad_messages();
	test_bad_json();
	test_file();
	return CHECK_DONE();
}

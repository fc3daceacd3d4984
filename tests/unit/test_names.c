/* test_names.c - unit tests for name rules and model id encoding. */
#include "check.h"
#include "names.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_file_ok(void)
{
	char name[300];

	CHECK_INT(names_file_ok("chat"), 0);
	CHECK_INT(names_file_ok("my chat (2).txt"), 0);
	CHECK_INT(names_file_ok(".hidden"), 0);
	CHECK_INT(names_file_ok("..."), 0);
	CHECK_INT(names_file_ok(".lmsfsx"), 0);
	CHECK_INT(names_file_ok(".lmsfs-"), 0);
	CHECK_INT(names_file_ok("x.lmsfs.y"), 0);
	CHECK_INT(names_file_ok("caf\xc3\xa9 \xf0\x9f\x98\x80"), 0);
	CHECK_INT(names_file_ok("\x80\xff"), 0); /* bytes, not UTF-8 rules */

	CHECK_INT(names_file_ok(""), -EINVAL);
	CHECK_INT(names_file_ok(NULL), -EINVAL);
	CHECK_INT(names_file_ok("."), -EINVAL);
	CHECK_INT(names_file_ok(".."), -EINVAL);
	CHECK_INT(names_file_ok("a/b"), -EINVAL);
	CHECK_INT(names_file_ok("/"), -EINVAL);
	CHECK_INT(names_file_ok("tab\there"), -EINVAL);
	CHECK_INT(names_file_ok("new\nline"), -EINVAL);
	CHECK_INT(names_file_ok("del\x7f"), -EINVAL);
	CHECK_INT(names_file_ok("\x1b[31m"), -EINVAL);
	CHECK_INT(names_file_ok(".lmsfs.state"), -EINVAL);
	CHECK_INT(names_file_ok(NAMES_PRIVATE_PREFIX), -EINVAL);
	CHECK_INT(names_file_ok(NAMES_PRIVATE_DIR), -EINVAL); /* the private directory */
	CHECK_INT(names_private(".lmsfs"), 1);
	CHECK_INT(names_private(".lmsfs.queue"), 1);
	CHECK_INT(names_private(".lmsfsx"), 0);

	memset(name, 'a', sizeof(name));
	name[255] = '\0';
	CHECK_INT(names_file_ok(name), 0);
	name[255] = 'a';
	name[256] = '\0';
	CHECK_INT(names_file_ok(name), -ENAMETOOLONG);
}

static void test_tool_ok(void)
{
	char name[70];

	CHECK(names_tool_ok("get_time"));
	CHECK(names_tool_ok("a"));
	CHECK(names_tool_ok("Web-Search_2"));
	CHECK(names_tool_ok("0"));
	CHECK(!names_tool_ok(""));
	CHECK(!names_tool_ok(NULL));
	CHECK(!names_tool_ok("has space"));
	CHECK(!names_tool_ok("dot.sh"));
	CHECK(!names_tool_ok("a/b"));
	CHECK(!names_tool_ok("caf\xc3\xa9"));
	CHECK(!names_tool_ok("semi;colon"));

	memset(name, 'x', sizeof(name));
	name[64] = '\0';
	CHECK(names_tool_ok(name));
	name[64] = 'x';
	name[65] = '\0';
	CHECK(!names_tool_ok(name));
}

static void round_trip(const char *id, const char *want)
{
	char *enc = names_model_encode(id);
	char *dec;

	CHECK_STR(enc, want);
	CHECK(enc && strchr(enc, '/') == NULL);
	CHECK(enc && enc[0] != '.');
	dec = enc ? names_model_decode(enc) : NULL;
	CHECK_STR(dec, id);
	free(enc);
	free(dec);
}

static void bad_decode(const char *name)
{
	char *dec = names_model_decode(name);

	CHECK(dec == NULL);
	if (dec)
		printf("  decode(\"%s\") gave \"%s\"\n", name, dec);
	free(dec);
}

static void test_model_codec(void)
{
	round_trip("qwen2.5-7b-instruct", "qwen2.5-7b-instruct");
	round_trip("lmstudio-community/Qwen2.5-7B-Instruct-GGUF",
		   "lmstudio-community%2FQwen2.5-7B-Instruct-GGUF");
	round_trip("a/b/c", "a%2Fb%2Fc");
	round_trip("/lead", "%2Flead");
	round_trip("trail/", "trail%2F");
	round_trip("100%", "100%25");
	round_trip("%2F", "%252F");
	round_trip("%", "%25");
	round_trip("%%", "%25%25");
	round_trip(".hidden", "%2Ehidden");
	round_trip(".", "%2E");
	round_trip("..", "%2E.");
	round_trip("../etc/passwd", "%2E.%2Fetc%2Fpasswd");
	round_trip("a.b.", "a.b.");
	round_trip("./x", "%2E%2Fx");
	round_trip("model:Q4_K_M", "model:Q4_K_M");
	round_trip("caf\xc3\xa9", "caf\xc3\xa9");
	round_trip("%2E", "%252E");

	/* Bad sequences. */
	bad_decode("");
	bad_decode("a/b");
	bad_decode("%");
	bad_decode("%2");
	bad_decode("abc%");
	bad_decode("%zz");
	bad_decode("%41");
	bad_decode("%2f");     /* lower case is not what the encoder writes */
	bad_decode("a%2Eb");   /* %2E only first */
	bad_decode(".hidden"); /* raw leading '.' */
	bad_decode("..");
	bad_decode("%00");
	bad_decode("%%25");

	/* Good ones that the encoder would also write. */
	{
		char *d = names_model_decode("x%25y%2Fz");
		CHECK_STR(d, "x%y/z");
		free(d);
		d = names_model_decode("%2E%2E");
		CHECK(d == NULL);
		free(d);
	}
}

int main(void)
{
	test_file_ok();
	test_tool_ok();
	test_model_codec();
	return CHECK_DONE();
}

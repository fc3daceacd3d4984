/* test_buf.c - unit tests for the capped byte buffer. */
#include "buf.h"
#include "check.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_basic(void)
{
	struct buf b;
	char *p;

	buf_init(&b, 0);
	CHECK(b.data == NULL);
	CHECK_INT(b.len, 0);
	CHECK_INT(buf_puts(&b, "hello"), 0);
	CHECK_INT(buf_putc(&b, ' '), 0);
	CHECK_INT(buf_append(&b, "world!!", 5), 0);
	CHECK_STR(b.data, "hello world");
	CHECK_INT(b.len, 11);
	CHECK(b.cap > b.len);
	CHECK_INT(buf_printf(&b, " %d-%s", 42, "x"), 0);
	CHECK_STR(b.data, "hello world 42-x");

	buf_consume(&b, 6);
	CHECK_STR(b.data, "world 42-x");
	CHECK_INT(b.len, 10);
	buf_consume(&b, 0);
	CHECK_STR(b.data, "world 42-x");
	buf_consume(&b, b.len);
	CHECK_STR(b.data, "");
	CHECK_INT(b.len, 0);

	CHECK_INT(buf_puts(&b, "abc"), 0);
	buf_reset(&b);
	CHECK_INT(b.len, 0);
	CHECK_STR(b.data, "");

	CHECK_INT(buf_puts(&b, "take me"), 0);
	p = buf_take(&b);
	CHECK_STR(p, "take me");
	CHECK(b.data == NULL);
	CHECK_INT(b.len, 0);
	CHECK_INT(b.cap, 0);
	free(p);

	/* An empty buffer still hands out a string. */
	p = buf_take(&b);
	CHECK(p != NULL);
	CHECK_STR(p, "");
	free(p);

	/* Appending nothing gives a valid, empty string. */
	CHECK_INT(buf_append(&b, "", 0), 0);
	CHECK(b.data != NULL);
	CHECK_STR(b.data, "");
	buf_free(&b);
	CHECK(b.data == NULL);
	buf_free(&b); /* twice is fine */
	buf_free(NULL);
}

static void test_binary(void)
{
	struct buf b;
	const char bin[] = {'a', '\0', 'b', '\0'};

	buf_init(&b, 0);
	CHECK_INT(buf_append(&b, bin, sizeof(bin)), 0);
	CHECK_INT(b.len, 4);
	CHECK(memcmp(b.data, bin, 4) == 0);
	CHECK_INT(b.data[4], 0);
	buf_consume(&b, 1);
	CHECK_INT(b.len, 3);
	CHECK_INT(b.data[0], 0);
	CHECK_INT(b.data[1], 'b');
	buf_free(&b);
}

static void test_cap(void)
{
	struct buf b;
	int i, rc = 0;

	buf_init(&b, 10);
	CHECK_INT(buf_puts(&b, "0123456789"), 0);
	CHECK_INT(b.len, 10);
	CHECK_INT(buf_putc(&b, 'x'), -EFBIG);
	CHECK_INT(buf_puts(&b, "y"), -EFBIG);
	CHECK_INT(buf_printf(&b, "%d", 1), -EFBIG);
	/* A failed append leaves the contents alone. */
	CHECK_STR(b.data, "0123456789");
	CHECK_INT(b.len, 10);
	CHECK(b.cap <= 11);
	CHECK_INT(buf_append(&b, "", 0), 0);
	buf_consume(&b, 5);
	CHECK_INT(buf_puts(&b, "abcde"), 0);
	CHECK_STR(b.data, "56789abcde");
	CHECK_INT(buf_puts(&b, "abcdef"), -EFBIG);
	buf_free(&b);

	/* Grow byte by byte up to the cap, exactly. */
	buf_init(&b, 1000);
	for (i = 0; i < 1000 && rc == 0; i++)
		rc = buf_putc(&b, (char)('a' + i % 26));
	CHECK_INT(rc, 0);
	CHECK_INT(b.len, 1000);
	CHECK_INT(buf_putc(&b, 'z'), -EFBIG);
	CHECK_INT(strlen(b.data), 1000);
	buf_free(&b);

	/* A single append larger than the cap. */
	buf_init(&b, 3);
	CHECK_INT(buf_puts(&b, "abcd"), -EFBIG);
	CHECK_INT(b.len, 0);
	CHECK_INT(buf_puts(&b, "abc"), 0);
	buf_free(&b);

	/* Sizes that would overflow size_t are refused, not wrapped. */
	buf_init(&b, 0);
	CHECK_INT(buf_puts(&b, "x"), 0);
	CHECK_INT(buf_append(&b, "", SIZE_MAX), -EFBIG);
	CHECK_INT(buf_append(&b, "", SIZE_MAX - 1), -EFBIG);
	buf_free(&b);

	buf_init(&b, SIZE_MAX);
	CHECK_INT(buf_puts(&b, "ok"), 0);
	CHECK_STR(b.data, "ok");
	buf_free(&b);
}

static void test_printf(void)
{
	struct buf b;
	char big[5000];
	int i;

	buf_init(&b, 0);
	memset(big, 'q', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK_INT(buf_printf(&b, "[%s]", big), 0);
	CHECK_INT(b.len, sizeof(big) + 1);
	CHECK_INT(b.data[0], '[');
	CHECK_INT(b.data[b.len - 1], ']');
	buf_reset(&b);
	for (i = 0; i < 100; i++)
		CHECK_INT(buf_printf(&b, "%d,", i), 0);
	CHECK(strncmp(b.data, "0,1,2,3,", 8) == 0);
	CHECK(strcmp(b.data + b.len - 3, "99,") == 0);
	CHECK_INT(buf_printf(&b, "%s", ""), 0);
	buf_free(&b);

	/* printf output that fits only partly is refused whole. */
	buf_init(&b, 8);
	CHECK_INT(buf_printf(&b, "%s", "12345"), 0);
	CHECK_INT(buf_printf(&b, "%s", "6789"), -EFBIG);
	CHECK_STR(b.data, "12345");
	CHECK_INT(buf_printf(&b, "%s", "678"), 0);
	CHECK_STR(b.data, "12345678");
	buf_free(&b);
}

int main(void)
{
	test_basic();
	test_binary();
	test_cap();
	test_printf();
	return CHECK_DONE();
}

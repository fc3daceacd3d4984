/* test_attach.c - attachments without a mount: base64, image detection,
 * file references expanded by msgs (through a callback), the request body
 * built in place, and attach/ scanned, moved and moved again after a
 * crash (recovery). */
#include "api.h"
#include "attach.h"
#include "buf.h"
#include "check.h"
#include "config.h"
#include "msgs.h"
#include "recover.h"
#include "spool.h"
#include "store.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *b64(const char *s)
{
	static char out[64];
	size_t n = strlen(s);
	attach_b64((const unsigned char *)s, n, out);
	out[(n + 2) / 3 * 4] = '\0';
	return out;
}

static void base64_vectors(void)
{
	/* RFC 4648, section 10. */
	CHECK_STR(b64(""), "");
	CHECK_STR(b64("f"), "Zg==");
	CHECK_STR(b64("fo"), "Zm8=");
	CHECK_STR(b64("foo"), "Zm9v");
	CHECK_STR(b64("foob"), "Zm9vYg==");
	CHECK_STR(b64("fooba"), "Zm9vYmE=");
	CHECK_STR(b64("foobar"), "Zm9vYmFy");
}

static void image_types(void)
{
	static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0};
	static const unsigned char jpg[] = {0xff, 0xd8, 0xff, 0xe0};
	CHECK_STR(attach_image_type(png, sizeof(png)), "image/png");
	CHECK_STR(attach_image_type(jpg, sizeof(jpg)), "image/jpeg");
	CHECK(attach_image_type((const unsigned char *)"RIFF....WEBP", 12) == NULL);
	CHECK(attach_image_type(png, 4) == NULL);
}

/* A callback that sends a reference as {"type":"text","text":"<path>"}
 * and fails for "files/gone". */
static int fake_expand(void *arg, const char *path, struct buf *out, char *why, size_t whylen)
{
	(*(int *)arg)++;
	if (strcmp(path, "files/gone") == 0) {
		snprintf(why, whylen, "%s is gone", path);
		return -ENOENT;
	}
	return buf_printf(out, "{\"type\":\"text\",\"text\":\"<%s>\"}", path);
}

static const char *expanded(const char *history, int *rc, char *why, size_t whylen)
{
	static char out[4096];
	char role[32];
	int calls = 0;
	struct buf b;
	buf_init(&b, 1 << 20);
	why[0] = '\0';
	*rc = msgs_from_history_files(history, strlen(history), &b, role, sizeof(role), 0,
				      fake_expand, &calls, why, whylen);
	snprintf(out, sizeof(out), "%.*s", (int)b.len, b.data ? b.data : "");
	buf_free(&b);
	return out;
}

#define REF(p) "{\"type\":\"file\",\"file\":{\"path\":\"" p "\"}}"
#define TXT(t) "{\"type\":\"text\",\"text\":\"" t "\"}"

static void references_expanded(void)
{
	char why[128];
	int rc;

	/* Each reference replaced where it stands; the id cut. */
	CHECK_STR(expanded("{\"role\":\"user\",\"content\":[" TXT("q") "," REF("files/a.png") "," REF("files/b.txt") "],\"lmsfs_id\":\"0123456789abcdef\"}\n",
			   &rc, why, sizeof(why)),
		  "{\"role\":\"user\",\"content\":[" TXT("q") "," TXT("<files/a.png>") "," TXT("<files/b.txt>") "]}");
	CHECK_INT(rc, 0);
	/* Hand-written, with blanks: still a reference. */
	CHECK_STR(expanded("{\"role\": \"user\", \"content\": [{\"type\": \"file\", \"file\": {\"path\": \"files/x\"}}]}\n",
			   &rc, why, sizeof(why)),
		  "{\"role\":\"user\",\"content\":[" TXT("<files/x>") "]}");
	/* Joined user messages keep their references. */
	CHECK_STR(expanded("{\"role\":\"user\",\"content\":\"a\"}\n{\"role\":\"user\",\"content\":[" REF("files/y") "]}\n",
			   &rc, why, sizeof(why)),
		  "{\"role\":\"user\",\"content\":[" TXT("a") "," TXT("<files/y>") "]}");
	/* Not user messages, and other file parts, are left as written. */
	CHECK_STR(expanded("{\"role\":\"assistant\",\"content\":\"see \\\"file\\\"\"}\n", &rc, why,
			   sizeof(why)),
		  "{\"role\":\"assistant\",\"content\":\"see \\\"file\\\"\"}");
	CHECK_STR(expanded("{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_id\":\"f1\"}}]}\n",
			   &rc, why, sizeof(why)),
		  "{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_id\":\"f1\"}}]}");
	/* A failure stops the request and says why. */
	expanded("{\"role\":\"user\",\"content\":[" REF("files/gone") "]}\n", &rc, why, sizeof(why));
	CHECK_INT(rc, -ENOENT);
	CHECK_STR(why, "files/gone is gone");
}

static void body_built_in_place(void)
{
	struct config cfg;
	struct buf m;
	char *a, *b;
	int s1, s2;

	config_init(&cfg);
	buf_init(&m, 64);
	buf_puts(&m, "{\"role\":\"user\",\"content\":\"hi\"}");
	a = api_build_request(&cfg, "mod", m.data, NULL, NULL, &s1);
	b = api_build_request_buf(&cfg, "mod", &m, NULL, NULL, &s2);
	CHECK(a && b && strcmp(a, b) == 0);
	CHECK_INT(s1, s2);
	CHECK_INT(m.len, 0);
	free(a);
	free(b);
	buf_free(&m);
	config_free(&cfg);

	buf_init(&m, 0);
	buf_puts(&m, "world");
	CHECK_INT(buf_prepend(&m, "hello ", 6), 0);
	CHECK_STR(m.data, "hello world");
	buf_free(&m);
}

static char root[] = "/tmp/lmsfs-attach-XXXXXX";

static void put(int dfd, const char *name, const void *data, size_t n)
{
	int fd;
	if (strchr(name, '/'))
		mkdirat(dfd, STORE_PRIVATE, 0700); /* lmsfs's own directory */
	fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, data, n) != (ssize_t)n)
		printf("FAIL: cannot write %s\n", name);
	if (fd >= 0)
		close(fd);
}

static int exists(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static int fresh(const char *name)
{
	char p[128];
	snprintf(p, sizeof(p), "%s/%s", root, name);
	mkdir(p, 0700);
	return open(p, O_RDONLY | O_DIRECTORY);
}

static void scan_and_move(void)
{
	static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 1, 2};
	struct attach_set s;
	char why[256], *json;
	int d = fresh("scan");

	/* No attach/: nothing. */
	CHECK_INT(attach_scan(d, 1000, 2000, &s, why, sizeof(why)), 0);
	CHECK_INT(s.n, 0);
	mkdirat(d, "attach", 0755);
	mkdirat(d, "files", 0755);
	put(d, "attach/r.png", png, sizeof(png));
	put(d, "attach/n.txt", "caf\xc3\xa9", 5);
	put(d, "attach/.n.txt.swp", "\x00", 1); /* hidden: left alone */
	put(d, "files/r.png", "old", 3);
	CHECK_INT(attach_scan(d, 1000, 2000, &s, why, sizeof(why)), 0);
	CHECK_INT(s.n, 2);
	CHECK_INT(s.images, 1);
	CHECK_STR(s.v[0].from, "n.txt");
	CHECK(s.v[0].mime == NULL);
	CHECK_STR(s.v[1].to, "r-1.png");
	json = attach_set_json(&s);
	{
		/* [from, to, "INODE.BSEC.BNSEC"] */
		cJSON *a = cJSON_Parse(json);
		CHECK_INT(cJSON_GetArraySize(a), 2);
		CHECK_STR(cJSON_GetArrayItem(cJSON_GetArrayItem(a, 0), 1)->valuestring, "n.txt");
		CHECK_STR(cJSON_GetArrayItem(cJSON_GetArrayItem(a, 1), 0)->valuestring, "r.png");
		CHECK_STR(cJSON_GetArrayItem(cJSON_GetArrayItem(a, 1), 1)->valuestring, "r-1.png");
		CHECK(strtoull(cJSON_GetArrayItem(cJSON_GetArrayItem(a, 1), 2)->valuestring, NULL,
			       10) == s.v[1].id.ino);
		cJSON_Delete(a);
	}
	attach_set_free(&s);
	CHECK_INT(attach_move(d, json), 0);
	CHECK(!exists(d, "attach/r.png") && exists(d, "files/r-1.png"));
	CHECK(exists(d, "files/n.txt") && exists(d, "attach/.n.txt.swp"));
	/* Again: nothing more moves, nothing fails. */
	put(d, "attach/r.png", "new", 3);
	CHECK_INT(attach_move(d, json), 0);
	CHECK(exists(d, "attach/r.png"));
	free(json);
	/* A name taken in files/ after it was chosen: the next free one, and
	 * the reference names the file where it went (found by inode). */
	CHECK_INT(attach_scan(d, 1000, 2000, &s, why, sizeof(why)), 0);
	CHECK_STR(s.v[0].to, "r-2.png");
	json = attach_set_json(&s);
	attach_set_free(&s);
	put(d, "files/r-2.png", "user's", 6);
	CHECK_INT(attach_move(d, json), 0);
	CHECK(!exists(d, "attach/r.png") && exists(d, "files/r-2-1.png"));
	{
		char *l = store_user_line_files(d, "q", json, NULL);
		CHECK_STR(l, "{\"role\":\"user\",\"content\":[" TXT("q") "," REF("files/r-2-1.png") "]}");
		free(l);
	}
	free(json);
	/* Refusals. */
	put(d, "attach/bin", "\x00\x01", 2);
	CHECK_INT(attach_scan(d, 1000, 2000, &s, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "attach/bin") != NULL);
	unlinkat(d, "attach/bin", 0);
	unlinkat(d, "attach/r.png", 0);
	put(d, "attach/big.txt", "0123456789", 10);
	CHECK_INT(attach_scan(d, 9, 2000, &s, why, sizeof(why)), -EFBIG);
	CHECK_INT(attach_scan(d, 10, 9, &s, why, sizeof(why)), -EFBIG);
	CHECK_INT(symlinkat("/etc/passwd", d, "attach/link"), 0);
	CHECK_INT(attach_scan(d, 1000, 2000, &s, why, sizeof(why)), -EINVAL);
	close(d);
}

/* What kill -9 leaves between the spool's fsync and the renames: the
 * entry lists the moves, the files are still in attach/. Recovery moves
 * them and keeps the prompt pending with its moves. */
static void recovery_rolls_forward(void)
{
	struct recover_result r;
	int d = fresh("crash");

	mkdirat(d, "attach", 0755);
	put(d, "attach/a.txt", "hello", 5);
	put(d, STORE_SPOOL_PATH,
	    "{\"id\":\"00000000000000aa\",\"content\":\"q\",\"files\":[[\"a.txt\",\"a.txt\"]]}\n",
	    strlen("{\"id\":\"00000000000000aa\",\"content\":\"q\",\"files\":[[\"a.txt\",\"a.txt\"]]}\n"));
	CHECK_INT(recover_conversation(d, "crash", &r), 0);
	CHECK_INT(r.npending, 1);
	CHECK(r.npending == 1 && r.pending[0].files &&
	      strcmp(r.pending[0].files, "[[\"a.txt\",\"a.txt\"]]") == 0);
	CHECK(exists(d, "files/a.txt") && !exists(d, "attach/a.txt"));
	recover_result_free(&r);
	/* The user line it becomes. */
	{
		char *l = store_user_line_files(d, "q", "[[\"a.txt\",\"a-1.txt\"]]", "00000000000000aa");
		CHECK_STR(l, "{\"role\":\"user\",\"content\":[" TXT("q") "," REF("files/a-1.txt") "],\"lmsfs_id\":\"00000000000000aa\"}");
		free(l);
	}
	close(d);
}

int main(void)
{
	if (!mkdtemp(root)) {
		printf("FAIL: mkdtemp\n");
		return 1;
	}
	base64_vectors();
	image_types();
	references_expanded();
	body_built_in_place();
	scan_and_move();
	recovery_rolls_forward();
	{
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
		if (system(cmd) != 0)
			printf("note: could not remove %s\n", root);
	}
	return CHECK_DONE();
}

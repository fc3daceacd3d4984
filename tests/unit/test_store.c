/* test_store.c - the history as it is sent to the server: lmsfs's own
 * members never leave, whether cut as text (the prompt id) or parsed. */
#include "buf.h"
#include "check.h"
#include "log.h"
#include "store.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/lmsfs-store-XXXXXX";

static const char *sent(const char *history)
{
	static char out[4096];
	char why[200] = "", role[32];
	struct buf b;
	int d = open(root, O_RDONLY | O_DIRECTORY);
	int fd = openat(d, STORE_HISTORY, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || write(fd, history, strlen(history)) != (ssize_t)strlen(history))
		printf("FAIL: cannot write the history\n");
	close(fd);
	buf_init(&b, 1 << 20);
	CHECK_INT(store_hist_for_request(d, &b, role, sizeof(role), why, sizeof(why)), 0);
	snprintf(out, sizeof(out), "%.*s", (int)b.len, b.data ? b.data : "");
	buf_free(&b);
	close(d);
	return out;
}

int main(void)
{
	char cmd[100];
	log_init("test_store", LOG_LVL_ERROR);
	if (!mkdtemp(root))
		return 2;
	/* The id lmsfs writes last is cut as text. */
	CHECK_STR(sent("{\"role\":\"user\",\"content\":\"hi\",\"lmsfs_id\":\"0123456789abcdef\"}\n"),
		  "{\"role\":\"user\",\"content\":\"hi\"}");
	/* A marked answer is parsed and stripped. */
	CHECK_STR(sent("{\"role\":\"assistant\",\"content\":\"x\",\"lmsfs_status\":\"cancelled\"}\n"),
		  "{\"role\":\"assistant\",\"content\":\"x\"}");
	/* Text that looks like the member, inside a string, stays text. */
	CHECK_STR(sent("{\"role\":\"user\",\"content\":\"a \\\"lmsfs_id\\\":\\\"0123456789abcdef\\\"}\"}\n"),
		  "{\"role\":\"user\",\"content\":\"a \\\"lmsfs_id\\\":\\\"0123456789abcdef\\\"}\"}");
	/* An id written by hand elsewhere in the line: parsed. */
	CHECK_STR(sent("{\"lmsfs_id\":\"x\",\"role\":\"user\",\"content\":\"b\"}\n"),
		  "{\"role\":\"user\",\"content\":\"b\"}");
	/* Two lines, blank lines skipped, order kept. */
	CHECK_STR(sent("{\"role\":\"user\",\"content\":\"q\",\"lmsfs_id\":\"00000000000000aa\"}\n\n"
		       "{\"role\":\"assistant\",\"content\":\"a\"}\n"),
		  "{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}");
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("could not remove %s\n", root);
	return CHECK_DONE();
}

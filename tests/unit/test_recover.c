/* test_recover.c - crash recovery of a conversation directory, without a
 * mount: each case builds a directory as a crash could leave it, runs
 * recover_conversation() and checks the history, the queue and stream. */
#include "check.h"
#include "log.h"
#include "recover.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/lmsfs-recover-XXXXXX";
static int ncase;

/* A fresh conversation directory; its fd. */
static int fresh(void)
{
	char p[128];
	snprintf(p, sizeof(p), "%s/c%d", root, ++ncase);
	mkdir(p, 0700);
	return open(p, O_RDONLY | O_DIRECTORY);
}

static void put(int dfd, const char *name, const char *text)
{
	int fd;
	if (strchr(name, '/'))
		mkdirat(dfd, STORE_PRIVATE, 0700); /* lmsfs's own directory */
	fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		printf("FAIL: cannot write %s\n", name);
	if (fd >= 0)
		close(fd);
}

/* The file's content (static buffer; "" when absent). */
static const char *get(int dfd, const char *name)
{
	static char buf[8192];
	int fd = openat(dfd, name, O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : 0;
	buf[n > 0 ? n : 0] = '\0';
	if (fd >= 0)
		close(fd);
	return buf;
}

#define U(id, text) "{\"role\":\"user\",\"content\":\"" text "\",\"lmsfs_id\":\"" id "\"}\n"
#define A(text) "{\"role\":\"assistant\",\"content\":\"" text "\"}\n"
#define Q(id, text) "{\"id\":\"" id "\",\"content\":\"" text "\"}\n"
#define MARKED(text)                                                           \
	"{\"role\":\"assistant\",\"content\":\"" text "\",\"lmsfs_status\":\"" \
	RECOVER_INTERRUPTED "\"}\n"

static void torn_line_dropped(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("0000000000000001", "hi") A("hello") "{\"role\":\"assis");
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_HISTORY), U("0000000000000001", "hi") A("hello"));
	CHECK_INT(r.npending, 0);
	CHECK_INT(r.interrupted, 0);
	CHECK_STR(r.last_answer, "hello");
	recover_result_free(&r);
	close(d);
}

/* Two identical prompts: the first was taken and answered, the second is
 * still to answer. Matching by text would drop it. */
static void identical_prompts_by_id(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("00000000000000a1", "continue") A("done 1"));
	put(d, STORE_SPOOL_PATH, Q("00000000000000a1", "continue") Q("00000000000000a2", "continue"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.npending, 1);
	if (r.npending == 1) {
		CHECK_STR(r.pending[0].id, "00000000000000a2");
		CHECK_STR(r.pending[0].text, "continue");
	}
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("00000000000000a2", "continue"));
	CHECK_INT(r.interrupted, 0);
	recover_result_free(&r);
	close(d);
}

/* Killed before the first token, prompts queued behind: the taken prompt
 * gets a marked (empty) answer, the others stay queued. No partial marker
 * (it is never synced). */
static void taken_prompt_marked(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("00000000000000b1", "p1"));
	put(d, STORE_STREAM, "");
	put(d, STORE_SPOOL_PATH, Q("00000000000000b1", "p1") Q("00000000000000b2", "p2")
				    Q("00000000000000b3", "p3"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_HISTORY), U("00000000000000b1", "p1") MARKED(""));
	CHECK_INT(r.npending, 2);
	if (r.npending == 2) {
		CHECK_STR(r.pending[0].text, "p2");
		CHECK_STR(r.pending[1].text, "p3");
	}
	CHECK_INT(r.interrupted, 1);
	CHECK_HAS(get(d, STORE_STREAM), "[lmsfs] error interrupted");
	recover_result_free(&r);
	close(d);
}

/* The partial marker keeps the text stream showed, without tool lines. */
static void partial_text_kept(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("00000000000000c1", "q"));
	put(d, STORE_STREAM, "old\nhalf [lmsfs] x\n[lmsfs] tool t\nans");
	put(d, STORE_PARTIAL_PATH, "{\"stream_offset\":4}\n");
	put(d, STORE_SPOOL_PATH, Q("00000000000000c1", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_HISTORY), U("00000000000000c1", "q") MARKED("half [lmsfs] x\\nans"));
	CHECK_INT(r.npending, 0);
	CHECK_INT(r.interrupted, 1);
	CHECK(r.last_marked);
	CHECK_STR(get(d, STORE_PARTIAL_PATH), "");
	CHECK_HAS(get(d, STORE_STREAM), "ans\n[lmsfs] error interrupted");
	recover_result_free(&r);
	close(d);
}

/* The answer was stored, the marker not yet removed: nothing to mark. */
static void finished_answer_not_marked(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("00000000000000d1", "q") A("full"));
	put(d, STORE_STREAM, "full\n");
	put(d, STORE_PARTIAL_PATH, "{\"stream_offset\":0}\n");
	put(d, STORE_SPOOL_PATH, Q("00000000000000d1", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_HISTORY), U("00000000000000d1", "q") A("full"));
	CHECK_INT(r.interrupted, 0);
	CHECK_INT(r.npending, 0);
	recover_result_free(&r);
	close(d);
}

/* Power loss kept the spool entry but not the unsynced user line: the
 * prompt is asked again, not lost. */
static void lost_line_requeued(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("00000000000000e0", "before") A("answer"));
	put(d, STORE_SPOOL_PATH, Q("00000000000000e1", "after"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.npending, 1);
	CHECK_INT(r.interrupted, 0);
	CHECK_STR(get(d, STORE_HISTORY), U("00000000000000e0", "before") A("answer"));
	recover_result_free(&r);
	close(d);
}

/* A tool round cut short: the missing result is answered, then the answer
 * is marked. */
static void tool_round_repaired(void)
{
	struct recover_result r;
	int d = fresh();
	const char *call = "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
			   "\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"t\","
			   "\"arguments\":\"{}\"}}]}\n";
	char hist[1024];
	snprintf(hist, sizeof(hist), "%s%s", U("00000000000000f1", "q"), call);
	put(d, STORE_HISTORY, hist);
	put(d, STORE_PARTIAL_PATH, "{\"stream_offset\":0}\n");
	put(d, STORE_SPOOL_PATH, Q("00000000000000f1", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_HAS(get(d, STORE_HISTORY), "\"tool_call_id\":\"call_1\"");
	CHECK_HAS(get(d, STORE_HISTORY), "did not finish");
	CHECK_HAS(get(d, STORE_HISTORY), RECOVER_INTERRUPTED);
	CHECK_INT(r.interrupted, 1);
	recover_result_free(&r);
	close(d);
}

/* A retry that was running is marked, not asked again. */
static void running_retry_dropped(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_HISTORY, U("0000000000000101", "q"));
	put(d, STORE_PARTIAL_PATH, "{\"stream_offset\":0}\n");
	put(d, STORE_SPOOL_PATH, "{\"id\":\"0000000000000102\",\"regen\":true}\n" Q("0000000000000103", "next"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.npending, 1);
	if (r.npending == 1)
		CHECK_STR(r.pending[0].text, "next");
	CHECK_INT(r.interrupted, 1);
	recover_result_free(&r);
	close(d);
}

/* A symlink planted as the history is neither read nor written. */
static void symlink_not_followed(void)
{
	struct recover_result r;
	char outside[128];
	int d = fresh();
	snprintf(outside, sizeof(outside), "%s/outside", root);
	put(AT_FDCWD, outside, "{\"role\":\"assis");
	if (symlinkat(outside, d, STORE_HISTORY) != 0)
		printf("FAIL: symlink\n");
	put(d, STORE_SPOOL_PATH, Q("0000000000000201", "q"));
	/* The history cannot be read, so which prompts were taken cannot be
	 * told: recovery fails (the conversation reports it) and changes
	 * nothing, outside or in. */
	CHECK_INT(recover_conversation(d, "t", &r), -ELOOP);
	CHECK_STR(get(AT_FDCWD, outside), "{\"role\":\"assis");
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("0000000000000201", "q"));
	recover_result_free(&r);
	close(d);
}

/* The earlier layout: lmsfs's files in the conversation directory itself
 * are moved into .lmsfs/ and read there; an interrupted answer and a
 * pending prompt survive the move. */
static void old_layout_moved(void)
{
	struct recover_result r;
	struct stat st;
	int d = fresh();
	put(d, STORE_HISTORY, U("0000000000000301", "q"));
	put(d, STORE_STREAM, "ans");
	put(d, STORE_OLD_PARTIAL, "{\"stream_offset\":0}\n");
	put(d, STORE_OLD_SPOOL, Q("0000000000000301", "q") Q("0000000000000302", "next"));
	put(d, ".lmsfs.tmp..lmsfs.queue", "junk");
	put(d, ".lmsfs.old.model", "m");
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_HISTORY), U("0000000000000301", "q") MARKED("ans"));
	CHECK_INT(r.interrupted, 1);
	CHECK_INT(r.npending, 1);
	CHECK_STR(r.pending[0].text, "next");
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("0000000000000302", "next"));
	CHECK_INT(fstatat(d, STORE_OLD_SPOOL, &st, AT_SYMLINK_NOFOLLOW), -1);
	CHECK_INT(fstatat(d, STORE_OLD_PARTIAL, &st, AT_SYMLINK_NOFOLLOW), -1);
	CHECK_INT(fstatat(d, ".lmsfs.tmp..lmsfs.queue", &st, AT_SYMLINK_NOFOLLOW), -1);
	CHECK_INT(fstatat(d, ".lmsfs.old.model", &st, AT_SYMLINK_NOFOLLOW), -1);
	CHECK_STR(get(d, STORE_PRIVATE "/old.model"), "m");
	CHECK_STR(get(d, STORE_PARTIAL_PATH), "");
	recover_result_free(&r);
	close(d);
}

/* Both layouts hold prompts (an earlier version ran after this one): the
 * queues are joined, nothing is lost. */
static void both_layouts_joined(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_SPOOL_PATH, Q("0000000000000401", "new"));
	put(d, STORE_OLD_SPOOL, Q("0000000000000402", "old"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.npending, 2);
	if (r.npending == 2) {
		CHECK_STR(r.pending[0].text, "new");
		CHECK_STR(r.pending[1].text, "old");
	}
	CHECK_STR(get(d, STORE_OLD_SPOOL), "");
	recover_result_free(&r);
	close(d);
}

/* A symlink planted as .lmsfs is refused: recovery fails, nothing is
 * written where it points, nothing is moved there. */
static void private_symlink_refused(void)
{
	struct recover_result r;
	struct stat st;
	char target[200];
	int d = fresh();
	snprintf(target, sizeof(target), "%s/elsewhere", root);
	mkdir(target, 0700);
	CHECK_INT(symlinkat(target, d, STORE_PRIVATE), 0);
	put(d, STORE_OLD_SPOOL, Q("0000000000000501", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), -ELOOP);
	CHECK_STR(get(d, STORE_OLD_SPOOL), Q("0000000000000501", "q"));
	snprintf(target, sizeof(target), "%s/elsewhere/" STORE_SPOOL, root);
	CHECK_INT(stat(target, &st), -1);
	close(d);
}

/* A symlink of the earlier layout is dropped, never followed. */
static void old_symlink_dropped(void)
{
	struct recover_result r;
	struct stat st;
	char target[200];
	int d = fresh();
	snprintf(target, sizeof(target), "%s/nowhere", root);
	CHECK_INT(symlinkat(target, d, STORE_OLD_PARTIAL), 0);
	put(d, STORE_OLD_SPOOL, Q("0000000000000601", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(fstatat(d, STORE_OLD_PARTIAL, &st, AT_SYMLINK_NOFOLLOW), -1);
	CHECK_INT(stat(target, &st), -1);
	CHECK_INT(r.npending, 1);
	CHECK_INT(r.interrupted, 0);
	recover_result_free(&r);
	close(d);
}

/* A file of the user's named .lmsfs (an earlier version allowed it) is
 * kept as .lmsfs~, and lmsfs's directory takes the name. */
static void users_file_kept(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_PRIVATE, "mine");
	put(d, STORE_OLD_SPOOL, Q("0000000000000701", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_PRIVATE "~"), "mine");
	CHECK_INT(r.npending, 1);
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("0000000000000701", "q"));
	recover_result_free(&r);
	close(d);
}

/* A crash between the merge of the earlier layout's queue (appended to
 * .lmsfs/queue, synced) and the removal of the old file: the next load
 * merges it again. Each prompt is answered once all the same. */
static void merge_repeated_after_crash(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_SPOOL_PATH, Q("0000000000000801", "new") Q("0000000000000802", "old"));
	put(d, STORE_OLD_SPOOL, Q("0000000000000802", "old"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.npending, 2);
	if (r.npending == 2) {
		CHECK_STR(r.pending[0].text, "new");
		CHECK_STR(r.pending[1].text, "old");
	}
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("0000000000000801", "new") Q("0000000000000802", "old"));
	recover_result_free(&r);
	close(d);
}

/* The user's file .lmsfs when .lmsfs~ is taken too: neither is lost or
 * hidden, and lmsfs's directory gets the name. */
static void users_file_kept_beside_tilde(void)
{
	struct recover_result r;
	int d = fresh();
	put(d, STORE_PRIVATE, "mine");
	put(d, STORE_PRIVATE "~", "backup");
	put(d, STORE_OLD_SPOOL, Q("0000000000000901", "q"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_STR(get(d, STORE_PRIVATE "~"), "backup");
	CHECK_STR(get(d, STORE_PRIVATE "~1"), "mine");
	CHECK_INT(r.npending, 1);
	CHECK_STR(get(d, STORE_SPOOL_PATH), Q("0000000000000901", "q"));
	recover_result_free(&r);
	close(d);
}

/* Both layouts hold a running answer's marker (an earlier version ran,
 * and was killed, after this one was): the newer marker tells where the
 * cut answer starts. */
static void newer_marker_kept(void)
{
	struct recover_result r;
	struct timespec old_times[2] = {{1000000, 0}, {1000000, 0}};
	int d = fresh();
	put(d, STORE_HISTORY, U("0000000000000a01", "q1") A("a1") U("0000000000000a02", "q2"));
	put(d, STORE_STREAM, "a1\nhalf");
	put(d, STORE_PARTIAL_PATH, "{\"stream_offset\":0}\n");
	CHECK_INT(utimensat(d, STORE_PARTIAL_PATH, old_times, 0), 0);
	put(d, STORE_OLD_PARTIAL, "{\"stream_offset\":3}\n");
	put(d, STORE_OLD_SPOOL, Q("0000000000000a02", "q2"));
	CHECK_INT(recover_conversation(d, "t", &r), 0);
	CHECK_INT(r.interrupted, 1);
	CHECK_STR(get(d, STORE_HISTORY), U("0000000000000a01", "q1") A("a1")
		  U("0000000000000a02", "q2") MARKED("half"));
	recover_result_free(&r);
	close(d);
}

int main(void)
{
	char cmd[200];
	log_init("test_recover", LOG_LVL_ERROR);
	if (!mkdtemp(root))
		return 2;
	torn_line_dropped();
	identical_prompts_by_id();
	taken_prompt_marked();
	partial_text_kept();
	finished_answer_not_marked();
	lost_line_requeued();
	tool_round_repaired();
	running_retry_dropped();
	symlink_not_followed();
	old_layout_moved();
	both_layouts_joined();
	private_symlink_refused();
	old_symlink_dropped();
	users_file_kept();
	merge_repeated_after_crash();
	users_file_kept_beside_tilde();
	newer_marker_kept();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("could not remove %s\n", root);
	return CHECK_DONE();
}

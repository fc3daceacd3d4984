/* recover.c - crash repair of a conversation directory (see recover.h). */
#include "recover.h"

#include "attach.h"

#include "fsio.h"
#include "jsonl.h"
#include "log.h"
#include "store.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define UNFINISHED_TOOL "error: the tool did not finish (lmsfs stopped while it ran)"
#define STREAM_TEXT_MAX (64u << 20)

static int has_calls(const cJSON *m)
{
	return cJSON_GetObjectItemCaseSensitive(m, "tool_calls") ||
	       cJSON_GetObjectItemCaseSensitive(m, "function_call");
}

/* Drops a torn final line that a crash left behind, or adds the newline a
 * complete last line lacks. */
static void repair_tail(int dirfd, const char *name)
{
	int fd = fsio_open(dirfd, STORE_HISTORY, O_RDWR, 0);
	struct stat st;
	char last;

	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_size > 0 &&
	    pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
		off_t off = 0;
		char *l = store_hist_last_line(dirfd, &off);
		cJSON *m = l ? cJSON_Parse(l) : NULL;
		if (!l) {
			/* The last line could not be looked at (too long, no
			 * memory): never guess, leave the file as it is. */
		} else if (cJSON_IsObject(m)) {
			if (pwrite(fd, "\n", 1, st.st_size) == 1)
				log_info("conversation %s: added a missing final newline", name);
		} else if (ftruncate(fd, off) == 0) {
			log_warnx("conversation %s: dropped a torn last history line (%lld bytes)",
				  name, (long long)(st.st_size - off));
		}
		cJSON_Delete(m);
		free(l);
	}
	close(fd);
}

/* A tool round cut by a crash leaves an assistant message whose tool calls
 * have no results; the server would refuse that history. Answer the missing
 * calls with an error text so the next request is valid. */
static void repair_tool_round(int dirfd, const char *name)
{
	cJSON *lm = store_hist_last_message(dirfd, NULL), *msgs = NULL, *m, *calls;
	const char *r = store_role(lm);
	int maybe = !strcmp(r, "tool") || !strcmp(r, "function") ||
		    (!strcmp(r, "assistant") && has_calls(lm));
	char *data = NULL;
	size_t len;
	off_t size;
	int n, i, last_main = -1;

	cJSON_Delete(lm);
	if (!maybe)
		return;
	/* The round is at the end: its last 4 MiB hold it. */
	size = store_hist_size(dirfd);
	if (size <= 0 ||
	    store_hist_read_from(dirfd, size > (4 << 20) ? size - (4 << 20) : 0, &data, &len))
		return;
	msgs = cJSON_CreateArray();
	for (char *p = data, *nl; p && *p; p = nl ? nl + 1 : NULL) {
		nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		m = cJSON_Parse(p);
		if (cJSON_IsObject(m))
			cJSON_AddItemToArray(msgs, m);
		else
			cJSON_Delete(m);
	}
	n = cJSON_GetArraySize(msgs);
	for (i = n - 1; i >= 0; i--) {
		r = store_role(cJSON_GetArrayItem(msgs, i));
		if (strcmp(r, "tool") != 0 && strcmp(r, "function") != 0) {
			last_main = i;
			break;
		}
	}
	if (last_main < 0 || strcmp(store_role(cJSON_GetArrayItem(msgs, last_main)), "assistant"))
		goto out;
	m = cJSON_GetArrayItem(msgs, last_main);
	calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
	if (cJSON_IsArray(calls)) {
		cJSON *call;
		cJSON_ArrayForEach(call, calls)
		{
			cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
			int answered = 0;
			if (!cJSON_IsString(id))
				continue;
			for (i = last_main + 1; i < n; i++) {
				cJSON *t = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(msgs, i),
									    "tool_call_id");
				if (cJSON_IsString(t) && !strcmp(t->valuestring, id->valuestring))
					answered = 1;
			}
			if (!answered) {
				char *line = store_tool_result_line(NULL, id->valuestring,
								    UNFINISHED_TOOL, 0);
				if (line)
					store_hist_append(dirfd, line, strlen(line), 0, NULL);
				free(line);
				log_warnx("conversation %s: answered an interrupted tool call", name);
			}
		}
	} else if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, "function_call")) &&
		   last_main == n - 1) {
		cJSON *fc = cJSON_GetObjectItemCaseSensitive(m, "function_call");
		cJSON *nm = cJSON_GetObjectItemCaseSensitive(fc, "name");
		char *line = store_tool_result_line(cJSON_IsString(nm) ? nm->valuestring : NULL,
						    NULL, UNFINISHED_TOOL, 1);
		if (line)
			store_hist_append(dirfd, line, strlen(line), 0, NULL);
		free(line);
	}
out:
	cJSON_Delete(msgs);
	free(data);
}

/* Marks in found[i] which of the entries' ids occur in the history. One
 * pass over the file in pieces that overlap by an id's length. 0, or
 * -errno when the history cannot be read (then nothing may be requeued:
 * it could be answered twice). */
static int find_ids(int dirfd, const struct spool_entry *v, size_t n, int *found)
{
	enum { PIECE = 1 << 20, OVERLAP = STORE_ID_LEN };
	int fd, left = 0, ret = 0;
	char *piece;
	off_t pos = 0;

	for (size_t i = 0; i < n; i++) {
		found[i] = 0;
		left += v[i].id[0] != '\0';
	}
	if (left == 0)
		return 0;
	fd = store_hist_open(dirfd);
	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return fd;
	piece = malloc(PIECE + OVERLAP);
	if (!piece) {
		close(fd);
		return -ENOMEM;
	}
	for (size_t keep = 0; left > 0;) {
		ssize_t got = pread(fd, piece + keep, PIECE, pos);
		size_t have;
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			ret = -errno;
			break;
		}
		if (got == 0)
			break;
		pos += got;
		have = keep + (size_t)got;
		for (size_t i = 0; i < n; i++)
			if (!found[i] && v[i].id[0] &&
			    memmem(piece, have, v[i].id, strlen(v[i].id))) {
				found[i] = 1;
				left--;
			}
		keep = have < OVERLAP ? have : OVERLAP;
		memmove(piece, piece + have - keep, keep);
	}
	free(piece);
	close(fd);
	return ret;
}

/* Appends the marked line for an answer the crash cut, with whatever text
 * stream shows of it. */
static void mark_interrupted(int dirfd, const char *name, int have_partial, off_t offset)
{
	size_t len = 0;
	char *text = have_partial && offset >= 0
			     ? store_stream_text_from(dirfd, offset, STREAM_TEXT_MAX, &len)
			     : NULL;
	char *line = store_marked_answer_line(text, len, RECOVER_INTERRUPTED);
	int ret = line ? store_hist_append(dirfd, line, strlen(line), STORE_SYNC, NULL)
		       : -ENOMEM;

	if (ret)
		log_warnx("conversation %s: cannot mark the interrupted answer: %s", name,
			  strerror(-ret));
	else
		log_warnx("conversation %s: marked an answer the daemon did not finish "
			  "(%zu bytes of text kept)",
			  name, len);
	if (len > 0 && text[len - 1] != '\n')
		store_stream_write(dirfd, "\n", 1);
	store_mark(dirfd, "[lmsfs] error interrupted: the daemon stopped while answering; "
			  "write retry to .ctl to ask again");
	free(line);
	free(text);
}

static int id_order(const void *a, const void *b, void *arg)
{
	const struct spool_entry *v = arg;
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	int c = strcmp(v[x].id, v[y].id);
	return c ? c : (x > y) - (x < y);
}

/* Drops every entry whose id an earlier one has (a queue of the earlier
 * layout merged twice: a crash came between the merge and the removal of
 * the old file), so that no prompt is answered twice. The number dropped,
 * or -ENOMEM. */
static long drop_repeated(struct spool_entry *v, size_t *n)
{
	size_t *ix, k = 0, m = *n;
	char *dup;

	if (m < 2)
		return 0;
	ix = malloc(m * sizeof(*ix));
	dup = calloc(m, 1);
	if (!ix || !dup) {
		free(ix);
		free(dup);
		return -ENOMEM;
	}
	for (size_t i = 0; i < m; i++)
		ix[i] = i;
	qsort_r(ix, m, sizeof(*ix), id_order, v);
	for (size_t i = 1; i < m; i++)
		if (v[ix[i]].id[0] && !strcmp(v[ix[i]].id, v[ix[i - 1]].id))
			dup[ix[i]] = 1;
	for (size_t i = 0; i < m; i++) {
		if (dup[i]) {
			free(v[i].text);
			free(v[i].files);
		} else {
			v[k++] = v[i];
		}
	}
	free(ix);
	free(dup);
	*n = k;
	return (long)(m - k);
}

int recover_conversation(int dirfd, const char *name, struct recover_result *r)
{
	struct spool_entry *v = NULL;
	size_t n = 0, np = 0;
	int *taken = NULL, any_taken = 0, have_partial, in_flight, ret;
	long repeated;
	off_t offset = -1;
	cJSON *lm;

	memset(r, 0, sizeof(*r));
	/* lmsfs's files of the earlier layout go to .lmsfs/ first; when they
	 * cannot, nothing else is touched (they are read there next time). */
	ret = store_private_migrate(dirfd, name);
	if (ret)
		return ret;
	repair_tail(dirfd, name);
	repair_tool_round(dirfd, name);

	ret = spool_load(dirfd, &v, &n);
	if (ret) {
		log_warnx("conversation %s: cannot read the prompt queue: %s", name,
			  strerror(-ret));
		return ret;
	}
	repeated = drop_repeated(v, &n);
	if (repeated < 0) {
		spool_free(v, n);
		return (int)repeated;
	}
	if (repeated)
		log_warnx("conversation %s: dropped %ld repeated prompt(s) from the queue",
			  name, repeated);
	taken = calloc(n ? n : 1, sizeof(*taken));
	if (!taken) {
		spool_free(v, n);
		return -ENOMEM;
	}
	ret = find_ids(dirfd, v, n, taken);
	if (ret) {
		log_warnx("conversation %s: cannot read the history to resume the queue: %s",
			  name, strerror(-ret));
		free(taken);
		spool_free(v, n);
		return ret;
	}
	for (size_t i = 0; i < n; i++)
		any_taken |= taken[i];

	/* An answer was running when the daemon died: the marker says so,
	 * or (the marker is never synced) a taken prompt whose history does
	 * not end in a finished answer. */
	have_partial = store_partial_get(dirfd, &offset);
	lm = store_hist_last_message(dirfd, NULL);
	in_flight = (have_partial || any_taken) &&
		    !(lm && !strcmp(store_role(lm), "assistant") && !has_calls(lm));
	if (in_flight) {
		mark_interrupted(dirfd, name, have_partial, offset);
		r->interrupted = 1;
	}
	store_partial_clear(dirfd);

	/* The rest of the queue, in order. A retry at its head was the answer
	 * just marked, or finished if the history ends in an answer. */
	for (size_t i = 0; i < n; i++) {
		if (taken[i]) {
			free(v[i].text);
			free(v[i].files);
			continue;
		}
		if (np == 0 && v[i].regen &&
		    (in_flight || (lm && !strcmp(store_role(lm), "assistant") && !has_calls(lm)))) {
			continue;
		}
		v[np++] = v[i];
	}
	free(taken);
	/* A crash may have cut the moves of a pending prompt's attachments:
	 * its spool entry was synced first, so they go now. */
	for (size_t i = 0; i < np; i++)
		if (v[i].files)
			attach_move(dirfd, v[i].files);
	if (n != np || n == 0 || repeated) {
		ret = spool_rewrite(dirfd, v, np);
		if (ret)
			log_warnx("conversation %s: cannot rewrite the prompt queue: %s", name,
				  strerror(-ret));
	}
	if (np)
		log_info("conversation %s: %zu prompt(s) queued before the restart resume",
			 name, np);
	r->pending = v;
	r->npending = np;

	cJSON_Delete(lm);
	lm = store_hist_last_message(dirfd, NULL);
	if (lm && !strcmp(store_role(lm), "user") && np == 0 && !r->interrupted)
		r->unanswered = 1;
	if (lm && !strcmp(store_role(lm), "assistant")) {
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(lm, "content");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(lm, "lmsfs_status");
		if (cJSON_IsString(c)) {
			r->last_answer = strdup(c->valuestring);
			r->last_len = r->last_answer ? strlen(r->last_answer) : 0;
		}
		r->last_marked = st != NULL;
		/* An answer the last stop cut (a clean unmount marks it itself). */
		if (cJSON_IsString(st) && !strncmp(st->valuestring, "interrupted", 11))
			r->interrupted = 1;
	}
	cJSON_Delete(lm);
	return 0;
}

void recover_result_free(struct recover_result *r)
{
	if (!r)
		return;
	spool_free(r->pending, r->npending);
	free(r->last_answer);
	memset(r, 0, sizeof(*r));
}

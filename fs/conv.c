/* conv.c - conversations: lookup table, durable prompt queue, state,
 * recovery after a crash, and one worker thread per busy conversation.
 *
 * Lock order: table_lock -> conv->lock -> conv->hist.
 * table_lock protects the hash table, every conv's name and dead flag;
 * refs is atomic (the table holds one reference while the conv is in it).
 * conv->lock protects the queue and the state fields below it.
 * conv->hist serialises changes to messages.jsonl.
 */
#include "conv.h"

#include "config.h"
#include "gen.h"
#include "jsonl.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "names.h"
#include "retry.h"
#include "tools.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_FILE NAMES_PRIVATE_PREFIX "queue"
#define PARTIAL_FILE GEN_PARTIAL_FILE
#define NBUCKETS 4096

struct job {
	struct job *next;
	uint64_t seq;
	int regen;  /* answer the history as it is (retry) */
	char *text; /* the prompt; NULL for regen */
};

enum conv_state { ST_IDLE, ST_GENERATING, ST_FAILED };

struct conv {
	struct conv *hnext; /* table_lock */
	char *name;         /* table_lock */
	int refs;           /* atomic */
	int dead;           /* table_lock */
	pthread_mutex_t lock;
	pthread_mutex_t hist;
	/* protected by lock: */
	struct job *qhead, *qtail;
	int qlen;
	int worker;
	int generating;
	uint64_t running_seq;
	uint64_t cancel_seq;
	volatile int cancel; /* read by the worker without the lock */
	uint64_t submitted, finished;
	struct gen_progress progress;
	enum err_class err;
	char errmsg[512];
	char *last_text;
	size_t last_len;
	int last_errno;
	char model[256];
	double ttft, tps;
	long prompt_tokens, completion_tokens;
	char finish[32];
	int attempts, retries;
	char rejected[512];
	double finished_at;
};

static const struct config *cfg;
static struct conv_hooks hooks;
static int root_fd = -1;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conv *table[NBUCKETS]; /* table_lock */
static pthread_cond_t workers_cv = PTHREAD_COND_INITIALIZER;
static int n_workers;  /* table_lock */
static int stopping;   /* table_lock */

static unsigned hash(const char *s)
{
	unsigned h = 2166136261u;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % NBUCKETS;
}

int conv_init(const struct config *c, int state_dirfd,
	      const struct conv_hooks *h)
{
	cfg = c;
	hooks = *h;
	if (mkdirat(state_dirfd, "conversations", 0700) < 0 && errno != EEXIST)
		return -errno;
	root_fd = openat(state_dirfd, "conversations", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	return root_fd < 0 ? -errno : 0;
}

int conv_root_fd(void)
{
	return root_fd;
}

void conv_name(struct conv *c, char *buf, size_t len)
{
	pthread_mutex_lock(&table_lock);
	snprintf(buf, len, "%s", c->name);
	pthread_mutex_unlock(&table_lock);
}

struct conv *conv_ref(struct conv *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
	return c;
}

static void conv_free(struct conv *c)
{
	struct job *j, *n;
	for (j = c->qhead; j; j = n) {
		n = j->next;
		free(j->text);
		free(j);
	}
	free(c->last_text);
	free(c->name);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->hist);
	free(c);
}

void conv_put(struct conv *c)
{
	int last;
	if (!c)
		return;
	last = __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0;
	if (last)
		conv_free(c);
}

/* Unlinks c from the table; table_lock held. */
static void unhash(struct conv *c)
{
	struct conv **pp = &table[hash(c->name)];
	for (; *pp; pp = &(*pp)->hnext)
		if (*pp == c) {
			*pp = c->hnext;
			c->hnext = NULL;
			c->dead = 1;
			return;
		}
}

/* Opens the conversation's directory by its current name. */
static int conv_dirfd(struct conv *c)
{
	int fd;
	pthread_mutex_lock(&table_lock);
	fd = c->dead ? -1 : openat(root_fd, c->name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (fd < 0 && !c->dead)
		fd = -errno;
	else if (c->dead)
		fd = -ENOENT;
	pthread_mutex_unlock(&table_lock);
	return fd;
}

static void hist_lock_cb(void *ctx)
{
	pthread_mutex_lock(&((struct conv *)ctx)->hist);
}

static void hist_unlock_cb(void *ctx)
{
	pthread_mutex_unlock(&((struct conv *)ctx)->hist);
}

void conv_hist_lock(struct conv *c)
{
	pthread_mutex_lock(&c->hist);
}

void conv_hist_unlock(struct conv *c)
{
	pthread_mutex_unlock(&c->hist);
}

void conv_note_rejected(struct conv *c, const char *why)
{
	pthread_mutex_lock(&c->lock);
	snprintf(c->rejected, sizeof(c->rejected), "%s", why);
	pthread_mutex_unlock(&c->lock);
}

/* --- the durable queue ------------------------------------------------ */

static char *job_line(const struct job *j)
{
	cJSON *o = cJSON_CreateObject();
	char *s;
	cJSON_AddNumberToObject(o, "seq", (double)j->seq);
	if (j->regen)
		cJSON_AddBoolToObject(o, "regen", 1);
	else
		cJSON_AddStringToObject(o, "content", j->text);
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

/* Rewrites the queue file from the list; c->lock held. */
static int save_queue(struct conv *c, int dirfd)
{
	struct buf b;
	int ret;

	if (!c->qhead) {
		if (unlinkat(dirfd, QUEUE_FILE, 0) < 0 && errno != ENOENT)
			return -errno;
		return 0;
	}
	buf_init(&b, 0);
	for (struct job *j = c->qhead; j; j = j->next) {
		char *l = job_line(j);
		if (l) {
			buf_puts(&b, l);
			buf_putc(&b, '\n');
		}
		free(l);
	}
	ret = replace_file_at(dirfd, QUEUE_FILE, b.data, b.len);
	buf_free(&b);
	return ret;
}

static int append_queue(int dirfd, const struct job *j)
{
	char *l = job_line(j);
	int fd, ret;
	size_t n;

	if (!l)
		return -ENOMEM;
	n = strlen(l);
	l[n] = '\n'; /* cJSON's buffer has room: it ends in NUL */
	fd = openat(dirfd, QUEUE_FILE, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
	} else {
		ret = write_all(fd, l, n + 1);
		if (ret == 0 && fsync(fd) < 0)
			ret = -errno;
		close(fd);
	}
	free(l);
	return ret;
}

/* Records that job seq left the queue (its prompt is in the history now).
 * The queue file is a log: prompts, then "done" records; it is dropped
 * when the queue empties. */
static void mark_done(int dirfd, uint64_t seq)
{
	char rec[64];
	int n = snprintf(rec, sizeof(rec), "{\"done\":%llu}\n", (unsigned long long)seq);
	int fd = openat(dirfd, QUEUE_FILE, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd >= 0) {
		write_all(fd, rec, (size_t)n);
		close(fd);
	}
}

static void enqueue(struct conv *c, struct job *j)
{
	if (c->qtail)
		c->qtail->next = j;
	else
		c->qhead = j;
	c->qtail = j;
	c->qlen++;
	metrics_queued(1);
}

static struct job *dequeue(struct conv *c)
{
	struct job *j = c->qhead;
	if (!j)
		return NULL;
	c->qhead = j->next;
	if (!c->qhead)
		c->qtail = NULL;
	c->qlen--;
	metrics_queued(-1);
	j->next = NULL;
	return j;
}

/* --- history helpers ------------------------------------------------- */

/* Reads the last line of messages.jsonl (without newline) and its offset. */
static char *last_history_line(int dirfd, off_t *offset)
{
	int fd = openat(dirfd, "messages.jsonl", O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *data = NULL, *line = NULL;
	size_t want = 64 << 10;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || st.st_size == 0)
		goto out;
	/* Read the tail, a bigger piece each time, until the last line's
	 * start is in it; never more than twice the longest valid line. */
	for (;;) {
		off_t start;
		size_t end, b;
		char *nd;

		if ((off_t)want > st.st_size)
			want = (size_t)st.st_size;
		start = st.st_size - (off_t)want;
		nd = realloc(data, want + 1);
		if (!nd || pread(fd, nd, want, start) != (ssize_t)want) {
			data = nd ? nd : data;
			goto out;
		}
		data = nd;
		data[want] = '\0';
		end = want;
		while (end > 0 && (data[end - 1] == '\n' || data[end - 1] == '\r' ||
				   data[end - 1] == ' '))
			end--;
		b = end;
		while (b > 0 && data[b - 1] != '\n')
			b--;
		if (b > 0 || start == 0) {
			line = strndup(data + b, end - b);
			if (offset)
				*offset = start + (off_t)b;
			goto out;
		}
		if (want >= 2 * (size_t)JSONL_MAX_LINE)
			goto out; /* a line too long to look at */
		want *= 2;
	}
out:
	free(data);
	close(fd);
	return line;
}

static const char *role_of(cJSON *m)
{
	cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
	return cJSON_IsString(r) ? r->valuestring : "";
}

/* Drops a torn final line that a crash left behind. */
static void repair_tail(int dirfd)
{
	int fd = openat(dirfd, "messages.jsonl", O_RDWR | O_CLOEXEC);
	struct stat st;
	char last;

	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_size > 0 &&
	    pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
		off_t off = 0;
		char *l = last_history_line(dirfd, &off);
		cJSON *m = l ? cJSON_Parse(l) : NULL;
		if (!l) {
			/* The last line could not be looked at (too long, no
			 * memory): never guess, leave the file as it is. */
		} else if (cJSON_IsObject(m)) {
			if (pwrite(fd, "\n", 1, st.st_size) == 1)
				log_info("messages.jsonl: added a missing final newline");
		} else {
			if (ftruncate(fd, off) == 0)
				log_warnx("messages.jsonl: dropped a torn last line (%lld bytes)",
					  (long long)(st.st_size - off));
		}
		cJSON_Delete(m);
		free(l);
	}
	close(fd);
}


#define UNFINISHED "error: the tool did not finish (lmsfs stopped while it ran)"

/* A tool round cut by a crash leaves an assistant message whose tool calls
 * have no results; the server would refuse that history. Answer the missing
 * calls with an error text so the next request is valid. */
static void repair_tool_round(struct conv *c, int dirfd)
{
	int fd = openat(dirfd, "messages.jsonl", O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *data = NULL;
	size_t want;
	cJSON *msgs = NULL, *calls, *m;
	int n, i, last_main = -1;
	struct gen_job gj = {.dirfd = dirfd, .hist_lock = hist_lock_cb,
			     .hist_unlock = hist_unlock_cb, .ctx = c};

	if (fd < 0)
		return;
	/* Only a history that ends inside a tool round (a call, or results)
	 * can need it: look at the last line before reading more. */
	{
		char *last = last_history_line(dirfd, NULL);
		cJSON *lm = last ? cJSON_Parse(last) : NULL;
		const char *r = role_of(lm);
		int maybe = !strcmp(r, "tool") || !strcmp(r, "function") ||
			    (!strcmp(r, "assistant") &&
			     (cJSON_GetObjectItemCaseSensitive(lm, "tool_calls") ||
			      cJSON_GetObjectItemCaseSensitive(lm, "function_call")));
		cJSON_Delete(lm);
		free(last);
		if (!maybe)
			goto out;
	}
	if (fstat(fd, &st) < 0 || st.st_size == 0)
		goto out;
	want = st.st_size > (4 << 20) ? (4 << 20) : (size_t)st.st_size;
	data = malloc(want + 1);
	if (!data || pread(fd, data, want, st.st_size - (off_t)want) != (ssize_t)want)
		goto out;
	data[want] = '\0';
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
		const char *r = role_of(cJSON_GetArrayItem(msgs, i));
		if (strcmp(r, "tool") != 0 && strcmp(r, "function") != 0) {
			last_main = i;
			break;
		}
	}
	if (last_main < 0 || strcmp(role_of(cJSON_GetArrayItem(msgs, last_main)), "assistant"))
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
				char *line = tools_result_line(NULL, id->valuestring, UNFINISHED, 0);
				if (line)
					gen_append_history(&gj, line);
				free(line);
				log_warnx("conversation %s: answered an interrupted tool call", c->name);
			}
		}
	} else if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, "function_call")) &&
		   last_main == n - 1) {
		cJSON *fc = cJSON_GetObjectItemCaseSensitive(m, "function_call");
		cJSON *nm = cJSON_GetObjectItemCaseSensitive(fc, "name");
		char *line = tools_result_line(cJSON_IsString(nm) ? nm->valuestring : "unknown",
					       NULL, UNFINISHED, 1);
		if (line)
			gen_append_history(&gj, line);
		free(line);
	}
out:
	cJSON_Delete(msgs);
	free(data);
	close(fd);
}

/* --- loading and recovery --------------------------------------------- */

static void start_worker(struct conv *c);

static void recover(struct conv *c, int dirfd)
{
	char *data = NULL;
	size_t len;

	repair_tail(dirfd);
	repair_tool_round(c, dirfd);

	/* Prompts that were acknowledged but not yet answered. */
	if (read_file_at(dirfd, QUEUE_FILE, 256u << 20, &data, &len) == 0) {
		char *last = last_history_line(dirfd, NULL);
		cJSON *lm = last ? cJSON_Parse(last) : NULL;
		char *p = data, *end = data + len;
		int first = 1;
		/* First the "done" records: those prompts are in the history. */
		size_t ndone = 0, cap = 0;
		double *done = NULL;
		for (char *q = data; q < end;) {
			char *nl = memchr(q, '\n', (size_t)(end - q));
			size_t l = nl ? (size_t)(nl - q) : (size_t)(end - q);
			cJSON *o = cJSON_ParseWithLength(q, l);
			cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "done");
			if (cJSON_IsNumber(d)) {
				if (ndone == cap) {
					size_t ncap = cap ? cap * 2 : 16;
					double *nd = realloc(done, ncap * sizeof(*nd));
					if (nd) {
						done = nd;
						cap = ncap;
					}
				}
				if (ndone < cap)
					done[ndone++] = d->valuedouble;
			}
			cJSON_Delete(o);
			q += l + 1;
		}
		pthread_mutex_lock(&c->lock);
		while (p < end) {
			char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
			cJSON *o = cJSON_ParseWithLength(p, l);
			cJSON *seq = cJSON_GetObjectItemCaseSensitive(o, "seq");
			cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "content");
			int regen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "regen"));
			p += l + 1;
			if (!cJSON_IsNumber(seq) || (!regen && !cJSON_IsString(txt))) {
				cJSON_Delete(o);
				continue;
			}
			int is_done = 0;
			for (size_t k = 0; k < ndone; k++)
				if (done[k] == seq->valuedouble)
					is_done = 1;
			if (is_done) {
				cJSON_Delete(o);
				continue;
			}
			/* The head may already be in the history: the daemon died
			 * between appending it and dropping it from the queue. */
			if (first && !regen && cJSON_IsObject(lm) &&
			    strcmp(role_of(lm), "user") == 0) {
				cJSON *lc = cJSON_GetObjectItemCaseSensitive(lm, "content");
				if (cJSON_IsString(lc) && strcmp(lc->valuestring, txt->valuestring) == 0) {
					cJSON_Delete(o);
					first = 0;
					c->err = EC_NONE;
					continue;
				}
			}
			first = 0;
			struct job *j = calloc(1, sizeof(*j));
			if (j) {
				j->seq = ++c->submitted;
				j->regen = regen;
				j->text = regen ? NULL : strdup(txt->valuestring);
				enqueue(c, j);
			}
			cJSON_Delete(o);
		}
		c->finished = c->submitted - (uint64_t)c->qlen;
		save_queue(c, dirfd);
		pthread_mutex_unlock(&c->lock);
		cJSON_Delete(lm);
		free(last);
		free(data);
		free(done);
	}

	/* An answer was streaming when the daemon died. */
	if (read_file_at(dirfd, PARTIAL_FILE, 4096, &data, &len) == 0) {
		cJSON *o = cJSON_Parse(data);
		cJSON *off = cJSON_GetObjectItemCaseSensitive(o, "stream_offset");
		free(data);
		data = NULL;
		if (cJSON_IsNumber(off)) {
			int fd = openat(dirfd, "stream", O_RDONLY | O_CLOEXEC);
			struct stat st;
			if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > off->valuedouble) {
				size_t n = (size_t)(st.st_size - (off_t)off->valuedouble);
				if (n > (64u << 20))
					n = 64u << 20;
				char *t = malloc(n + 1);
				if (t && pread(fd, t, n, (off_t)off->valuedouble) == (ssize_t)n) {
					t[n] = '\0';
					/* Drop marked lines (tool activity) from the text. */
					char *w = t;
					for (char *r = t; *r;) {
						char *nl = strchr(r, '\n');
						size_t l = nl ? (size_t)(nl - r) + 1 : strlen(r);
						if (strncmp(r, "[lmsfs] ", 8) != 0) {
							memmove(w, r, l);
							w += l;
						}
						r += l;
					}
					*w = '\0';
					n = (size_t)(w - t);
					cJSON *m = cJSON_CreateObject();
					char *fixed = utf8_repair(t, n);
					cJSON_AddStringToObject(m, "role", "assistant");
					cJSON_AddStringToObject(m, "content", fixed ? fixed : "");
					free(fixed);
					cJSON_AddStringToObject(m, "lmsfs_status",
								"interrupted: the daemon stopped while answering");
					char *line = cJSON_PrintUnformatted(m);
					struct gen_job gj = {.dirfd = dirfd, .hist_lock = hist_lock_cb,
							     .hist_unlock = hist_unlock_cb, .ctx = c};
					if (line && n > 0)
						gen_append_history(&gj, line);
					free(line);
					cJSON_Delete(m);
					if (n > 0 && t[n - 1] != '\n')
						gen_stream_write(dirfd, "\n", 1);
				}
				free(t);
			}
			if (fd >= 0)
				close(fd);
		}
		cJSON_Delete(o);
		gen_mark(dirfd, "[lmsfs] error interrupted: the daemon stopped while answering; "
				"write retry to .ctl to ask again");
		unlinkat(dirfd, PARTIAL_FILE, 0);
		pthread_mutex_lock(&c->lock);
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the daemon stopped while answering; write retry to .ctl");
		pthread_mutex_unlock(&c->lock);
	}

	/* The history's last message as it now stands tells the rest. */
	char *last = last_history_line(dirfd, NULL);
	cJSON *lm = last ? cJSON_Parse(last) : NULL;
	cJSON *content = cJSON_GetObjectItemCaseSensitive(lm, "content");
	pthread_mutex_lock(&c->lock);
	/* A prompt in the history that nothing will answer. */
	if (!c->qhead && c->err == EC_NONE && cJSON_IsObject(lm) &&
	    strcmp(role_of(lm), "user") == 0) {
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the last prompt has no answer (the daemon stopped before "
			 "answering it); write retry to .ctl");
	}
	/* After a remount, .reply with nothing pending still gives the last
	 * answer. */
	if (!c->last_text && cJSON_IsObject(lm) && strcmp(role_of(lm), "assistant") == 0 &&
	    cJSON_IsString(content)) {
		c->last_text = strdup(content->valuestring);
		c->last_len = c->last_text ? strlen(c->last_text) : 0;
		c->last_errno = c->err != EC_NONE ? errclass_errno(c->err) : 0;
	}
	cJSON_Delete(lm);
	free(last);
	if (c->qhead)
		start_worker(c);
	pthread_mutex_unlock(&c->lock);
}

struct conv *conv_get(const char *name)
{
	struct conv *c;
	struct stat st;
	unsigned h = hash(name);
	int dirfd;

	pthread_mutex_lock(&table_lock);
	for (c = table[h]; c; c = c->hnext)
		if (strcmp(c->name, name) == 0) {
			__atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
			pthread_mutex_unlock(&table_lock);
			return c;
		}
	if (names_file_ok(name) != 0 || fstatat(root_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISDIR(st.st_mode)) {
		pthread_mutex_unlock(&table_lock);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c || !(c->name = strdup(name))) {
		free(c);
		pthread_mutex_unlock(&table_lock);
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->hist, NULL);
	c->ttft = c->tps = -1;
	c->prompt_tokens = c->completion_tokens = -1;
	c->refs = 2; /* the table's and the caller's */
	c->hnext = table[h];
	table[h] = c;
	/* Recover while holding the table lock, so that nobody sees the
	 * conversation before its queue is loaded. It touches only c. */
	dirfd = openat(root_fd, name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (dirfd >= 0) {
		recover(c, dirfd);
		close(dirfd);
	}
	pthread_mutex_unlock(&table_lock);
	return c;
}

/* --- the worker -------------------------------------------------------- */

static void *worker(void *arg)
{
	struct conv *c = arg;

	for (;;) {
		struct job *j;
		struct gen_result res;
		struct gen_job gj;
		char name[NAME_MAX + 1];
		int dirfd, stop;

		pthread_mutex_lock(&table_lock);
		stop = stopping || c->dead;
		pthread_mutex_unlock(&table_lock);
		pthread_mutex_lock(&c->lock);
		if (!c->qhead || stop) {
			int drained = 0;
			/* A removed conversation answers nothing more: readers
			 * waiting for its queued prompts get ENOENT. */
			while (stop && c->qhead) {
				struct job *d = dequeue(c);
				free(d->text);
				free(d);
				drained = 1;
			}
			if (drained) {
				c->finished = c->submitted;
				free(c->last_text);
				c->last_text = NULL;
				c->last_len = 0;
				c->last_errno = ENOENT;
			}
			c->worker = 0;
			pthread_mutex_unlock(&c->lock);
			if (drained && hooks.answer_done)
				hooks.answer_done(c);
			break;
		}
		j = c->qhead;
		c->generating = 1;
		c->running_seq = j->seq;
		flag_set(&c->cancel, c->cancel_seq == j->seq);
		__atomic_store_n(&c->progress.tokens, 0, __ATOMIC_RELAXED);
		dbl_set(&c->progress.first_token, 0);
		dbl_set(&c->progress.started, now_s());
		pthread_mutex_unlock(&c->lock);

		gen_result_init(&res);
		/* The name may change (mv) while the answer runs: logs and
		 * tools use the name it started under. */
		conv_name(c, name, sizeof(name));
		dirfd = conv_dirfd(c);
		if (dirfd < 0) {
			res.err = EC_INTERRUPTED;
			snprintf(res.errmsg, sizeof(res.errmsg), "the conversation is gone");
		} else {
			gj = (struct gen_job){.dirfd = dirfd,
					      .conv_name = name,
					      .cancel = &c->cancel,
					      .progress = &c->progress,
					      .hist_lock = hist_lock_cb,
					      .hist_unlock = hist_unlock_cb,
					      .ctx = c};
			if (!j->regen) {
				cJSON *m = cJSON_CreateObject();
				char *line;
				cJSON_AddStringToObject(m, "role", "user");
				cJSON_AddStringToObject(m, "content", j->text);
				line = cJSON_PrintUnformatted(m);
				cJSON_Delete(m);
				/* No fsync here: the prompt is durable in the queue, and
				 * the answer's synced append covers this line too. */
				if (line)
					gen_append_history_nosync(&gj, line);
				free(line);
			}
			pthread_mutex_lock(&c->lock);
			dequeue(c);
			mark_done(dirfd, j->seq);
			pthread_mutex_unlock(&c->lock);
			metrics_active(1);
			gen_run(&gj, &res);
			metrics_active(-1);
			unlinkat(dirfd, PARTIAL_FILE, 0);
			pthread_mutex_lock(&c->lock);
			if (!c->qhead) {
				/* Emptied, not removed: the next prompt appends to
				 * an existing file (creating one costs a journal
				 * commit on its fsync). */
				int qfd = openat(dirfd, QUEUE_FILE,
						 O_WRONLY | O_TRUNC | O_CLOEXEC);
				if (qfd >= 0)
					close(qfd);
			}
			pthread_mutex_unlock(&c->lock);
			close(dirfd);
		}
		if (dirfd < 0) {
			pthread_mutex_lock(&c->lock);
			dequeue(c);
			pthread_mutex_unlock(&c->lock);
		}

		metrics_answer(res.err == EC_NONE);
		if (res.err != EC_NONE)
			metrics_failure(res.err);
		if (res.prompt_tokens > 0 || res.completion_tokens > 0)
			metrics_tokens(res.prompt_tokens > 0 ? res.prompt_tokens : 0,
				       res.completion_tokens > 0 ? res.completion_tokens : 0);
		if (res.ttft >= 0)
			metrics_ttft(res.ttft);
		metrics_gen_time(now_s() - c->progress.started);
		log_info("conversation=%s model=%s tokens_in=%ld tokens_out=%ld ttft_ms=%.0f "
			 "duration_ms=%.0f attempts=%d outcome=%s%s%s",
			 name, res.model[0] ? res.model : "-", res.prompt_tokens,
			 res.completion_tokens > 0 ? res.completion_tokens : c->progress.tokens,
			 res.ttft >= 0 ? res.ttft * 1000 : -1,
			 (now_s() - c->progress.started) * 1000, res.attempts,
			 res.err ? errclass_name(res.err) : "ok", res.err ? ": " : "",
			 res.err ? res.errmsg : "");

		pthread_mutex_lock(&c->lock);
		c->generating = 0;
		c->finished = j->seq;
		c->err = res.err;
		snprintf(c->errmsg, sizeof(c->errmsg), "%s", res.err ? res.errmsg : "");
		free(c->last_text);
		c->last_len = res.text.len;
		c->last_text = buf_take(&res.text);
		c->last_errno = res.err ? errclass_errno(res.err) : 0;
		snprintf(c->model, sizeof(c->model), "%s", res.model);
		c->ttft = res.ttft;
		c->tps = res.tps;
		c->prompt_tokens = res.prompt_tokens;
		c->completion_tokens = res.completion_tokens;
		snprintf(c->finish, sizeof(c->finish), "%s", res.finish);
		c->attempts = res.attempts;
		c->retries = res.retries;
		c->finished_at = now_s();
		pthread_mutex_unlock(&c->lock);
		gen_result_free(&res);
		free(j->text);
		free(j);

		if (hooks.answer_done)
			hooks.answer_done(c);
	}
	pthread_mutex_lock(&table_lock);
	__atomic_sub_fetch(&n_workers, 1, __ATOMIC_ACQ_REL);
	pthread_cond_broadcast(&workers_cv);
	pthread_mutex_unlock(&table_lock);
	conv_put(c);
	return NULL;
}

/* c->lock held; table_lock may be held (conv_get) or not. */
static void start_worker(struct conv *c)
{
	pthread_t t;
	pthread_attr_t a;

	if (c->worker)
		return;
	c->worker = 1;
	/* The worker's reference; refs is protected by table_lock, which our
	 * callers hold or take here. */
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&n_workers, 1, __ATOMIC_SEQ_CST);
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 256 * 1024);
	if (pthread_create(&t, &a, worker, c) != 0) {
		c->worker = 0;
		__atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
		__atomic_sub_fetch(&n_workers, 1, __ATOMIC_SEQ_CST);
		log_warn("cannot start a conversation worker");
	}
	pthread_attr_destroy(&a);
}

/* --- prompts and control ---------------------------------------------- */

int conv_precheck(struct conv *c, char *why, size_t whylen)
{
	char *want, *id;
	int dirfd, qlen;
	enum err_class cls;

	pthread_mutex_lock(&c->lock);
	qlen = c->qlen;
	pthread_mutex_unlock(&c->lock);
	if (qlen >= cfg->max_queue) {
		snprintf(why, whylen, "queue full: %d prompts are waiting (max_queue)", qlen);
		return -EBUSY;
	}
	if (cfg->provider != PROVIDER_MOCK && breaker_is_open()) {
		snprintf(why, whylen, "circuit open: the server keeps failing; try again later");
		return -EBUSY;
	}
	dirfd = conv_dirfd(c);
	if (dirfd < 0) {
		snprintf(why, whylen, "conversation is gone");
		return -ENOENT;
	}
	want = read_setting_at(dirfd, "model");
	close(dirfd);
	id = models_resolve(want, &cls, why, whylen);
	free(want);
	if (!id)
		return -errclass_errno(cls);
	free(id);
	return 0;
}

int conv_submit(struct conv *c, const char *text, size_t len, char *why,
		size_t whylen)
{
	struct job *j;
	int dirfd, ret;

	j = calloc(1, sizeof(*j));
	if (!j || !(j->text = strndup(text, len))) {
		free(j);
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	dirfd = conv_dirfd(c);
	if (dirfd < 0) {
		free(j->text);
		free(j);
		snprintf(why, whylen, "conversation is gone");
		return dirfd;
	}
	pthread_mutex_lock(&c->lock);
	if (c->qlen >= cfg->max_queue) {
		pthread_mutex_unlock(&c->lock);
		close(dirfd);
		free(j->text);
		free(j);
		snprintf(why, whylen, "queue full: %d prompts are waiting (max_queue)",
			 cfg->max_queue);
		return -EBUSY;
	}
	j->seq = c->submitted + 1;
	ret = append_queue(dirfd, j);
	if (ret != 0) {
		pthread_mutex_unlock(&c->lock);
		close(dirfd);
		free(j->text);
		free(j);
		snprintf(why, whylen, "cannot save the prompt: %s", strerror(-ret));
		return ret;
	}
	c->submitted = j->seq;
	enqueue(c, j);
	if (c->err != EC_NONE && !c->generating) {
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
	}
	start_worker(c);
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	return 0;
}

int conv_cancel(struct conv *c, char *why, size_t whylen)
{
	int ret = 0;
	pthread_mutex_lock(&c->lock);
	if (c->generating) {
		c->cancel_seq = c->running_seq;
		flag_set(&c->cancel, 1);
	} else if (c->qhead) {
		c->cancel_seq = c->qhead->seq;
	} else {
		snprintf(why, whylen, "nothing to cancel: no answer is running");
		ret = -EINVAL;
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int conv_retry(struct conv *c, char *why, size_t whylen)
{
	struct job *j;
	char *last;
	cJSON *lm;
	off_t off = 0;
	int dirfd, ret = 0;

	dirfd = conv_dirfd(c);
	if (dirfd < 0) {
		snprintf(why, whylen, "conversation is gone");
		return dirfd;
	}
	pthread_mutex_lock(&c->lock);
	if (c->generating || c->qhead) {
		snprintf(why, whylen, "an answer is running or queued; retry when it ends");
		ret = -EBUSY;
		goto out;
	}
	pthread_mutex_lock(&c->hist);
	last = last_history_line(dirfd, &off);
	lm = last ? cJSON_Parse(last) : NULL;
	if (cJSON_IsObject(lm) && strcmp(role_of(lm), "assistant") == 0 &&
	    cJSON_GetObjectItemCaseSensitive(lm, "lmsfs_status")) {
		/* Drop the unfinished answer; the new one replaces it. */
		int fd = openat(dirfd, "messages.jsonl", O_WRONLY | O_CLOEXEC);
		if (fd < 0 || ftruncate(fd, off) < 0 || fsync(fd) < 0)
			ret = -errno;
		if (fd >= 0)
			close(fd);
	} else if (!cJSON_IsObject(lm) ||
		   (strcmp(role_of(lm), "user") != 0 && strcmp(role_of(lm), "tool") != 0 &&
		    strcmp(role_of(lm), "function") != 0)) {
		/* A user prompt or tool results waiting for the model can be
		 * answered (again); a finished answer cannot. */
		snprintf(why, whylen, "nothing to retry: the last answer is complete");
		ret = -EINVAL;
	}
	pthread_mutex_unlock(&c->hist);
	cJSON_Delete(lm);
	free(last);
	if (ret != 0) {
		if (!why[0])
			snprintf(why, whylen, "cannot drop the unfinished answer: %s",
				 strerror(-ret));
		goto out;
	}
	j = calloc(1, sizeof(*j));
	if (!j) {
		ret = -ENOMEM;
		goto out;
	}
	j->regen = 1;
	j->seq = c->submitted + 1;
	ret = append_queue(dirfd, j);
	if (ret != 0) {
		free(j);
		snprintf(why, whylen, "cannot save the retry: %s", strerror(-ret));
		goto out;
	}
	c->submitted = j->seq;
	c->err = EC_NONE;
	c->errmsg[0] = '\0';
	enqueue(c, j);
	start_worker(c);
out:
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	return ret;
}

uint64_t conv_wait_target(struct conv *c)
{
	uint64_t t;
	pthread_mutex_lock(&c->lock);
	t = c->submitted;
	pthread_mutex_unlock(&c->lock);
	return t;
}

int conv_answer(struct conv *c, uint64_t seq, char **text, size_t *len, int *err)
{
	int done;
	pthread_mutex_lock(&c->lock);
	done = c->finished >= seq;
	if (done) {
		*len = c->last_text ? c->last_len : 0;
		*text = malloc(*len + 1);
		*err = c->last_errno;
		if (*text) {
			if (*len)
				memcpy(*text, c->last_text, *len);
			(*text)[*len] = '\0';
		} else {
			*len = 0;
			*err = ENOMEM;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return done;
}

char *conv_status_json(struct conv *c)
{
	cJSON *o = cJSON_CreateObject(), *e, *l;
	char *s;
	const char *state;

	pthread_mutex_lock(&table_lock);
	cJSON_AddStringToObject(o, "name", c->name);
	pthread_mutex_unlock(&table_lock);
	pthread_mutex_lock(&c->lock);
	if (c->generating)
		state = "generating";
	else if (c->qhead)
		state = "queued";
	else if (c->err != EC_NONE)
		state = "failed";
	else
		state = "idle";
	cJSON_AddStringToObject(o, "state", state);
	cJSON_AddNumberToObject(o, "queued", c->qlen);
	cJSON_AddNumberToObject(o, "submitted", (double)c->submitted);
	cJSON_AddNumberToObject(o, "answered", (double)c->finished);
	if (c->generating) {
		cJSON *g = cJSON_AddObjectToObject(o, "generating");
		double now = now_s(), ft = dbl_get(&c->progress.first_token);
		long toks = __atomic_load_n(&c->progress.tokens, __ATOMIC_RELAXED);
		cJSON_AddNumberToObject(g, "tokens", toks);
		cJSON_AddNumberToObject(g, "elapsed_ms",
					(now - dbl_get(&c->progress.started)) * 1000);
		if (ft > 0 && now > ft)
			cJSON_AddNumberToObject(g, "tokens_per_second",
						toks / (now - ft));
	}
	if (c->err != EC_NONE) {
		e = cJSON_AddObjectToObject(o, "error");
		cJSON_AddStringToObject(e, "class", errclass_name(c->err));
		cJSON_AddStringToObject(e, "message", c->errmsg);
	} else {
		cJSON_AddNullToObject(o, "error");
	}
	if (c->finished_at > 0) {
		l = cJSON_AddObjectToObject(o, "last");
		cJSON_AddStringToObject(l, "model", c->model);
		if (c->ttft >= 0)
			cJSON_AddNumberToObject(l, "ttft_ms", c->ttft * 1000);
		if (c->tps >= 0)
			cJSON_AddNumberToObject(l, "tokens_per_second", c->tps);
		if (c->prompt_tokens >= 0 || c->completion_tokens >= 0) {
			cJSON *u = cJSON_AddObjectToObject(l, "usage");
			cJSON_AddNumberToObject(u, "prompt_tokens", (double)c->prompt_tokens);
			cJSON_AddNumberToObject(u, "completion_tokens",
						(double)c->completion_tokens);
		}
		cJSON_AddStringToObject(l, "finish_reason", c->finish);
		cJSON_AddNumberToObject(l, "attempts", c->attempts);
		cJSON_AddNumberToObject(l, "retries", c->retries);
	}
	if (c->rejected[0])
		cJSON_AddStringToObject(o, "rejected_write", c->rejected);
	pthread_mutex_unlock(&c->lock);
	s = json_text_file(o);
	cJSON_Delete(o);
	return s;
}

/* --- directories -------------------------------------------------------- */

/* Removes lmsfs's private files; fails with -ENOTEMPTY when others exist. */
static int clear_private(int parentfd, const char *name, int dry)
{
	int fd = openat(parentfd, name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	int ret = 0;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (strncmp(de->d_name, NAMES_PRIVATE_PREFIX, strlen(NAMES_PRIVATE_PREFIX)) != 0) {
			ret = -ENOTEMPTY;
			break;
		}
	}
	if (ret == 0 && !dry) {
		rewinddir(d);
		while ((de = readdir(d)))
			if (!strncmp(de->d_name, NAMES_PRIVATE_PREFIX, strlen(NAMES_PRIVATE_PREFIX)))
				unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	return ret;
}

int conv_mkdir(const char *name, unsigned mode)
{
	int ret = names_file_ok(name);
	if (ret)
		return ret;
	if (mkdirat(root_fd, name, (mode & 0777) | 0700) < 0)
		return -errno;
	return 0;
}

static struct conv *find_locked(const char *name)
{
	for (struct conv *c = table[hash(name)]; c; c = c->hnext)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

int conv_rmdir(const char *name)
{
	struct conv *c;
	int ret;

	pthread_mutex_lock(&table_lock);
	ret = clear_private(root_fd, name, 1);
	if (ret == 0) {
		c = find_locked(name);
		if (c) {
			pthread_mutex_lock(&c->lock);
			flag_set(&c->cancel, 1);
			c->cancel_seq = c->running_seq;
			pthread_mutex_unlock(&c->lock);
			unhash(c);
		}
		/* A cancelled answer may still drop a private file or two
		 * while it stops: clear again when only those are in the way. */
		for (int tries = 0;; tries++) {
			clear_private(root_fd, name, 0);
			if (unlinkat(root_fd, name, AT_REMOVEDIR) == 0) {
				ret = 0;
				break;
			}
			ret = -errno;
			if (ret != -ENOTEMPTY || tries == 5 || clear_private(root_fd, name, 1) != 0)
				break;
			usleep(2000);
		}
		if (ret != 0) {
			if (c) {
				/* Still there: keep the one conversation object for
				 * it, so that no second writer appears. */
				c->dead = 0;
				c->hnext = table[hash(c->name)];
				table[hash(c->name)] = c;
				c = NULL;
			}
		}
		if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
			pthread_mutex_unlock(&table_lock);
			conv_free(c);
			return ret;
		}
	}
	pthread_mutex_unlock(&table_lock);
	return ret;
}

int conv_rename(const char *from, const char *to, unsigned flags)
{
	struct conv *c, *victim;
	struct stat st;
	int ret;

	ret = names_file_ok(to);
	if (ret)
		return ret;
	pthread_mutex_lock(&table_lock);
	if (fstatat(root_fd, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (flags & RENAME_NOREPLACE) {
			ret = -EEXIST;
			goto out;
		}
		if (!S_ISDIR(st.st_mode)) {
			ret = -ENOTDIR;
			goto out;
		}
		/* Like a disk: only an empty directory may be replaced. */
		ret = clear_private(root_fd, to, 1);
		if (ret)
			goto out;
		clear_private(root_fd, to, 0);
	}
	if (renameat2(root_fd, from, root_fd, to, flags) < 0) {
		ret = -errno;
		goto out;
	}
	victim = find_locked(to);
	if (victim) {
		unhash(victim);
		if (__atomic_sub_fetch(&victim->refs, 1, __ATOMIC_ACQ_REL) == 0)
			conv_free(victim);
	}
	c = find_locked(from);
	if (c) {
		char *n = strdup(to);
		if (n) {
			unhash(c);
			c->dead = 0;
			free(c->name);
			c->name = n;
			c->hnext = table[hash(n)];
			table[hash(n)] = c;
		} else {
			unhash(c);
			if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
				conv_free(c);
		}
	}
out:
	pthread_mutex_unlock(&table_lock);
	return ret;
}

void conv_recover_all(void)
{
	int fd = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		struct stat st;
		char p[600];
		if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
			continue;
		snprintf(p, sizeof(p), "%s/" QUEUE_FILE, de->d_name);
		int pending = fstatat(root_fd, p, &st, 0) == 0 && st.st_size > 0;
		snprintf(p, sizeof(p), "%s/" PARTIAL_FILE, de->d_name);
		pending = pending || fstatat(root_fd, p, &st, 0) == 0;
		if (pending)
			conv_put(conv_get(de->d_name));
	}
	closedir(d);
}

int conv_shutdown(void)
{
	struct timespec ts;
	int left;

	pthread_mutex_lock(&table_lock);
	stopping = 1;
	for (int i = 0; i < NBUCKETS; i++)
		for (struct conv *c = table[i]; c; c = c->hnext)
			flag_set(&c->cancel, 1);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 5;
	while (__atomic_load_n(&n_workers, __ATOMIC_ACQUIRE) > 0)
		if (pthread_cond_timedwait(&workers_cv, &table_lock, &ts) != 0)
			break;
	left = __atomic_load_n(&n_workers, __ATOMIC_ACQUIRE);
	if (left > 0) {
		pthread_mutex_unlock(&table_lock);
		log_warnx("%d answers did not stop in time; exiting without cleanup", left);
		return left;
	}
	for (int i = 0; i < NBUCKETS; i++) {
		struct conv *c = table[i], *n;
		for (; c; c = n) {
			n = c->hnext;
			c->hnext = NULL;
			if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
				conv_free(c);
		}
		table[i] = NULL;
	}
	pthread_mutex_unlock(&table_lock);
	if (root_fd >= 0)
		close(root_fd);
	return 0;
}

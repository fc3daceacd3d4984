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
#include "recover.h"
#include "retry.h"
#include "spool.h"
#include "store.h"
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

#define NBUCKETS 4096

struct job {
	struct job *next;
	uint64_t seq;
	char id[STORE_ID_LEN]; /* ties the spool entry to its history line */
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
	uint64_t hist_gen; /* hist: bumped when the history is replaced */
	/* protected by lock: */
	struct job *qhead, *qtail;
	int qlen;
	int worker;
	int generating;
	int stalled; /* the head prompt could not be stored: wait for a retry */
	int owed_mark; /* a failed answer's marked line could not be stored */
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
	fd = c->dead ? -1
		     : openat(root_fd, c->name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
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

uint64_t conv_hist_gen(struct conv *c)
{
	return c->hist_gen;
}

void conv_hist_replaced(struct conv *c)
{
	c->hist_gen++;
}

void conv_note_rejected(struct conv *c, const char *why)
{
	pthread_mutex_lock(&c->lock);
	snprintf(c->rejected, sizeof(c->rejected), "%s", why);
	pthread_mutex_unlock(&c->lock);
}

/* --- the in-memory queue (the spool on disk mirrors it) -------------- */

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

static const char *role_of(cJSON *m)
{
	cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
	return cJSON_IsString(r) ? r->valuestring : "";
}

/* --- loading and recovery --------------------------------------------- */

static void start_worker(struct conv *c);

/* Repairs what a crash left (recover.h) and loads the queue; table_lock
 * held, nobody else sees c yet. */
static void recover(struct conv *c, int dirfd)
{
	struct recover_result r;

	if (recover_conversation(dirfd, c->name, &r) != 0)
		return;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < r.npending; i++) {
		struct job *j = calloc(1, sizeof(*j));
		if (!j)
			break;
		j->seq = ++c->submitted;
		j->regen = r.pending[i].regen;
		memcpy(j->id, r.pending[i].id, sizeof(j->id));
		j->text = r.pending[i].text;
		r.pending[i].text = NULL;
		enqueue(c, j);
	}
	if (r.interrupted) {
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the daemon stopped while answering; write retry to .ctl");
	} else if (r.unanswered) {
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the last prompt has no answer (the daemon stopped before "
			 "answering it); write retry to .ctl");
	}
	/* After a remount, .reply with nothing pending still gives the last
	 * answer. */
	if (r.last_answer) {
		c->last_text = r.last_answer;
		c->last_len = r.last_len;
		r.last_answer = NULL;
		c->last_errno = r.last_marked ? errclass_errno(EC_INTERRUPTED) : 0;
	}
	if (c->qhead)
		start_worker(c);
	pthread_mutex_unlock(&c->lock);
	recover_result_free(&r);
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
	dirfd = openat(root_fd, name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (dirfd >= 0) {
		recover(c, dirfd);
		close(dirfd);
	}
	pthread_mutex_unlock(&table_lock);
	return c;
}

/* --- the worker -------------------------------------------------------- */

/* A failed answer whose marked line could not be stored (a full disk) gets
 * it before the next prompt goes in, so that no prompt is left without an
 * answer or a mark. Worker only. 0 or -errno. */
static int pay_owed_mark(struct conv *c, int dirfd)
{
	char *last, *line;
	cJSON *lm;
	int ret = 0, owed;

	pthread_mutex_lock(&c->hist);
	last = store_hist_last_line(dirfd, NULL);
	lm = last ? cJSON_Parse(last) : NULL;
	owed = cJSON_IsObject(lm) && (!strcmp(role_of(lm), "user") ||
				      !strcmp(role_of(lm), "tool") ||
				      !strcmp(role_of(lm), "function"));
	if (owed) {
		line = store_marked_answer_line(NULL, 0, "storage: the answer could not be "
							 "stored (no room on the disk)");
		ret = line ? store_hist_append(dirfd, line, strlen(line), STORE_SYNC, NULL)
			   : -ENOMEM;
		free(line);
	}
	pthread_mutex_unlock(&c->hist);
	cJSON_Delete(lm);
	free(last);
	if (ret == 0) {
		pthread_mutex_lock(&c->lock);
		c->owed_mark = 0;
		pthread_mutex_unlock(&c->lock);
	}
	return ret;
}

static void *worker(void *arg)
{
	struct conv *c = arg;

	for (;;) {
		struct job *j;
		struct gen_result res;
		struct gen_job gj;
		char name[NAME_MAX + 1];
		int dirfd, stop, stalled = 0;

		pthread_mutex_lock(&table_lock);
		stop = stopping || c->dead;
		pthread_mutex_unlock(&table_lock);
		pthread_mutex_lock(&c->lock);
		if (!c->qhead || stop || c->stalled) {
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
		if (dirfd == -ENOENT) {
			res.err = EC_INTERRUPTED;
			snprintf(res.errmsg, sizeof(res.errmsg), "the conversation is gone");
		} else if (dirfd < 0) {
			/* The directory is there but cannot be opened now: the
			 * prompt stays queued, like one that cannot be stored. */
			res.err = EC_STORAGE;
			res.sys_errno = -dirfd;
			snprintf(res.errmsg, sizeof(res.errmsg),
				 "cannot open the conversation directory: %s; the prompt "
				 "stays queued (write retry to .ctl)",
				 strerror(-dirfd));
			stalled = 1;
		} else {
			gj = (struct gen_job){.dirfd = dirfd,
					      .conv_name = name,
					      .cancel = &c->cancel,
					      .progress = &c->progress,
					      .hist_lock = hist_lock_cb,
					      .hist_unlock = hist_unlock_cb,
					      .ctx = c};
			int ret = 0;
			if (c->owed_mark)
				ret = pay_owed_mark(c, dirfd);
			if (ret == 0 && !j->regen) {
				/* The line carries the prompt's id: recovery tells by it
				 * whether the spooled prompt was taken. No fsync here: the
				 * prompt is durable in the spool, and the answer's synced
				 * append covers this line too. */
				char *line = store_user_line(j->text, j->id);
				pthread_mutex_lock(&c->hist);
				ret = line ? store_hist_append(dirfd, line, strlen(line), STORE_CREATE,
							       NULL)
					   : -ENOMEM;
				pthread_mutex_unlock(&c->hist);
				free(line);
			}
			if (ret != 0) {
				/* The prompt cannot go into the history (a full disk):
				 * it stays first in the queue, and in the spool, until
				 * the next prompt or a retry takes it again. */
				res.err = EC_STORAGE;
				res.sys_errno = -ret;
				snprintf(res.errmsg, sizeof(res.errmsg),
					 "cannot store the prompt in messages.jsonl: %s; it stays "
					 "queued (send a prompt or write retry to .ctl when there "
					 "is room)",
					 strerror(-ret));
				store_mark(dirfd, "[lmsfs] error storage: %s", res.errmsg);
				stalled = 1;
			} else {
				pthread_mutex_lock(&c->lock);
				dequeue(c);
				pthread_mutex_unlock(&c->lock);
				metrics_active(1);
				gen_run(&gj, &res);
				metrics_active(-1);
				store_partial_clear(dirfd);
				pthread_mutex_lock(&c->lock);
				if (!c->qhead)
					spool_clear(dirfd);
				pthread_mutex_unlock(&c->lock);
			}
			close(dirfd);
		}
		if (dirfd == -ENOENT) {
			pthread_mutex_lock(&c->lock);
			dequeue(c);
			pthread_mutex_unlock(&c->lock);
		}

		metrics_answer(res.err == EC_NONE);
		if (res.err == EC_STORAGE)
			metrics_storage_failure(res.errmsg);
		else if (res.err != EC_NONE)
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
		c->stalled = stalled;
		if (res.unmarked)
			c->owed_mark = 1;
		c->finished = j->seq;
		c->err = res.err;
		snprintf(c->errmsg, sizeof(c->errmsg), "%s", res.err ? res.errmsg : "");
		free(c->last_text);
		c->last_len = res.text.len;
		c->last_text = buf_take(&res.text);
		c->last_errno = res.sys_errno ? res.sys_errno
				: res.err ? errclass_errno(res.err) : 0;
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
		if (!stalled) {
			free(j->text);
			free(j);
		}

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
	want = store_setting(dirfd, "model");
	close(dirfd);
	id = models_resolve(want, &cls, why, whylen);
	free(want);
	if (!id)
		return -errclass_errno(cls);
	free(id);
	return 0;
}

/* Writes j to the spool (durably) and queues it; c->lock held. */
static int spool_job(struct conv *c, int dirfd, struct job *j)
{
	struct spool_entry e = {.regen = j->regen, .text = j->text};
	int ret;

	store_new_id(j->id);
	memcpy(e.id, j->id, sizeof(e.id));
	ret = spool_append(dirfd, &e);
	if (ret != 0)
		return ret;
	j->seq = ++c->submitted;
	enqueue(c, j);
	/* A prompt stuck for room goes first, now with this one behind it. */
	c->stalled = 0;
	if (!c->generating) {
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
	}
	start_worker(c);
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
	ret = spool_job(c, dirfd, j);
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	if (ret != 0) {
		free(j->text);
		free(j);
		snprintf(why, whylen, "cannot save the prompt: %s", strerror(-ret));
		return ret;
	}
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
	if (c->stalled && !c->generating) {
		/* A prompt waits for room on the disk: try it again. */
		c->stalled = 0;
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
		start_worker(c);
		goto out;
	}
	if (c->generating || c->qhead) {
		snprintf(why, whylen, "an answer is running or queued; retry when it ends");
		ret = -EBUSY;
		goto out;
	}
	pthread_mutex_lock(&c->hist);
	last = store_hist_last_line(dirfd, &off);
	lm = last ? cJSON_Parse(last) : NULL;
	if (cJSON_IsObject(lm) && strcmp(role_of(lm), "assistant") == 0 &&
	    cJSON_GetObjectItemCaseSensitive(lm, "lmsfs_status")) {
		/* Drop the unfinished answer; the new one replaces it. */
		ret = store_hist_truncate(dirfd, off);
		if (ret == 0)
			c->hist_gen++;
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
	ret = spool_job(c, dirfd, j);
	if (ret != 0) {
		free(j);
		snprintf(why, whylen, "cannot save the retry: %s", strerror(-ret));
	}
out:
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	return ret;
}

uint64_t conv_wait_target(struct conv *c)
{
	uint64_t t;
	pthread_mutex_lock(&c->lock);
	/* A prompt stuck for room has its failure to tell now. */
	t = c->stalled ? c->finished : c->submitted;
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
	else if (c->stalled)
		state = "failed";
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
	/* The new directory must outlive a power cut with the prompts the
	 * user is about to write into it; if that cannot be promised, it is
	 * not made. */
	if (fsync(root_fd) < 0) {
		int err = -errno;
		log_warn("mkdir %s: syncing conversations/", name);
		unlinkat(root_fd, name, AT_REMOVEDIR);
		return err;
	}
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
	if (fsync(root_fd) < 0)
		log_warn("mv %s %s: syncing conversations/", from, to);
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
		snprintf(p, sizeof(p), "%s/" STORE_SPOOL, de->d_name);
		int pending = fstatat(root_fd, p, &st, 0) == 0 && st.st_size > 0;
		snprintf(p, sizeof(p), "%s/" STORE_PARTIAL, de->d_name);
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

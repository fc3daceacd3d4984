/* conv_run.c - a conversation at work: the in-memory queue, the worker
 * thread that answers prompts in order, and loading what recovery found.
 * What users ask (prompt, cancel, retry) is in conv_ctl.c. */
#include "conv.h"
#include "conv_int.h"

#include "attach.h"

#include "config.h"
#include "log.h"
#include "recover.h"
#include "metrics.h"
#include "models.h"
#include "retry.h"
#include "spool.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void hist_replaced_cb(void *ctx)
{
	conv_hist_replaced(ctx);
}

static void hist_unlock_cb(void *ctx)
{
	pthread_mutex_unlock(&((struct conv *)ctx)->hist);
}

static void hist_lock_cb(void *ctx)
{
	pthread_mutex_lock(&((struct conv *)ctx)->hist);
}

static void changed_cb(void *ctx, const char *file)
{
	conv_changed(ctx, file);
}

/* --- the in-memory queue (the spool on disk mirrors it) -------------- */

void conv_enqueue(struct conv *c, struct job *j)
{
	if (c->qtail)
		c->qtail->next = j;
	else
		c->qhead = j;
	c->qtail = j;
	c->qlen++;
	metrics_queued(1);
}

static struct job *conv_dequeue(struct conv *c)
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

/* --- the worker -------------------------------------------------------- */

/* A failed answer whose marked line could not be stored (a full disk) gets
 * it before the next prompt goes in, so that no prompt is left without an
 * answer or a mark. Worker only. 0 or -errno. */
static int pay_owed_mark(struct conv *c, int dirfd)
{
	cJSON *lm;
	char *line;
	int ret = 0;

	pthread_mutex_lock(&c->hist);
	lm = store_hist_last_message(dirfd, NULL);
	if (lm && store_awaits_answer(lm)) {
		line = store_marked_answer_line(NULL, 0, "storage: the answer could not be "
							 "stored (no room on the disk)");
		ret = line ? store_hist_append(dirfd, line, strlen(line), STORE_SYNC, NULL)
			   : -ENOMEM;
		free(line);
		conv_changed(c, STORE_HISTORY);
	}
	pthread_mutex_unlock(&c->hist);
	cJSON_Delete(lm);
	if (ret == 0) {
		pthread_mutex_lock(&c->lock);
		c->owed_mark = 0;
		pthread_mutex_unlock(&c->lock);
	}
	return ret;
}

/* Takes job j's prompt into the history (after a mark still owed): its
 * user line carries the prompt's id, so that recovery tells by it whether
 * the spooled prompt was taken. No fsync: the prompt is durable in the
 * spool, and the answer's synced append covers this line too. When it
 * cannot be stored (a full disk) res says why and -errno is returned: the
 * prompt stays first in the queue, and in the spool, until the next prompt
 * or a retry takes it again. Worker only. */
static int take_prompt(struct conv *c, struct job *j, int dirfd, struct gen_result *res)
{
	int ret = 0;

	if (c->owed_mark)
		ret = pay_owed_mark(c, dirfd);
	if (ret == 0 && !j->regen && j->files && (ret = attach_move(dirfd, j->files)) != 0) {
		/* Moves a crash or a failure cut are finished first; a line
		 * naming files that are not in files/ is never written. */
		res->err = EC_STORAGE;
		res->sys_errno = -ret;
		snprintf(res->errmsg, sizeof(res->errmsg),
			 "cannot move the prompt's attachments from attach/ to files/: %s; it "
			 "stays queued (send a prompt or write retry to .ctl once that is fixed)",
			 strerror(-ret));
		store_mark(dirfd, "[lmsfs] error storage: %s", res->errmsg);
		conv_changed(c, STORE_STREAM);
		return ret;
	}
	if (ret == 0 && !j->regen && j->files) {
		/* A move the submit left unfinished may have been done now. */
		conv_changed(c, "attach");
		conv_changed(c, "files");
	}
	if (ret == 0 && !j->regen) {
		char *line = store_user_line_files(dirfd, j->text, j->files, j->id);
		pthread_mutex_lock(&c->hist);
		ret = line ? store_hist_append(dirfd, line, strlen(line), STORE_CREATE, NULL)
			   : -ENOMEM;
		pthread_mutex_unlock(&c->hist);
		free(line);
		conv_changed(c, STORE_HISTORY);
	}
	if (ret == 0)
		return 0;
	res->err = errclass_of_local(ret, EC_STORAGE);
	res->sys_errno = -ret;
	snprintf(res->errmsg, sizeof(res->errmsg),
		 "cannot store the prompt in messages.jsonl: %s; it stays queued (send a "
		 "prompt or write retry to .ctl %s)",
		 strerror(-ret),
		 ret == -ENOSPC || ret == -EDQUOT ? "when there is room" : "once that is fixed");
	store_mark(dirfd, "[lmsfs] error storage: %s", res->errmsg);
	conv_changed(c, STORE_STREAM);
	return ret;
}

/* Counts, logs and keeps the outcome of job j for .status and .reply. A
 * stalled job stays queued unless a prompt was submitted since it started
 * (sub_start): that one may have found room, so the worker tries again. */
static void record(struct conv *c, struct job *j, struct gen_result *res, const char *name,
		   int stalled, uint64_t sub_start)
{
	double took = now_s() - dbl_get(&c->progress.started);

	metrics_answer(res->err == EC_NONE);
	if (res->err == EC_STORAGE)
		metrics_storage_failure(res->errmsg);
	else if (res->err != EC_NONE)
		metrics_failure(res->err);
	if (res->err != EC_NONE)
		metrics_note_failure(res->err, name, res->errmsg);
	if (res->prompt_tokens > 0 || res->completion_tokens > 0)
		metrics_tokens(res->prompt_tokens > 0 ? res->prompt_tokens : 0,
			       res->completion_tokens > 0 ? res->completion_tokens : 0);
	if (res->ttft >= 0)
		metrics_ttft(res->ttft);
	metrics_gen_time(took);
	log_info("conversation=%s model=%s tokens_in=%ld tokens_out=%ld ttft_ms=%.0f "
		 "duration_ms=%.0f attempts=%d outcome=%s%s%s",
		 name, res->model[0] ? res->model : "-", res->prompt_tokens,
		 res->completion_tokens > 0
			 ? res->completion_tokens
			 : __atomic_load_n(&c->progress.tokens, __ATOMIC_RELAXED),
		 res->ttft >= 0 ? res->ttft * 1000 : -1, took * 1000, res->attempts,
		 res->err ? errclass_name(res->err) : "ok", res->err ? ": " : "",
		 res->err ? res->errmsg : "");

	pthread_mutex_lock(&c->lock);
	c->generating = 0;
	c->stalled = stalled && c->submitted == sub_start;
	if (res->unmarked)
		c->owed_mark = 1;
	c->finished = j->seq;
	c->err = res->err;
	snprintf(c->errmsg, sizeof(c->errmsg), "%s", res->err ? res->errmsg : "");
	free(c->last_text);
	c->last_len = res->text.len;
	c->last_text = buf_take(&res->text);
	c->last_errno = res->sys_errno ? res->sys_errno : res->err ? errclass_errno(res->err) : 0;
	snprintf(c->model, sizeof(c->model), "%s", res->model);
	c->ttft = res->ttft;
	c->tps = res->tps;
	c->prompt_tokens = res->prompt_tokens;
	c->completion_tokens = res->completion_tokens;
	snprintf(c->finish, sizeof(c->finish), "%s", res->finish);
	c->attempts = res->attempts;
	c->retries = res->retries;
	c->finished_at = now_s();
	pthread_mutex_unlock(&c->lock);
}

static void *worker(void *arg)
{
	struct conv *c = arg;
	int in_line = 0;

	for (;;) {
		struct job *j;
		struct gen_result res;
		struct gen_job gj;
		char name[NAME_MAX + 1];
		int dirfd, stop, stalled = 0;
		uint64_t sub_start;

		pthread_mutex_lock(&conv_table_lock);
		stop = conv_stopping || c->dead;
		pthread_mutex_unlock(&conv_table_lock);
		pthread_mutex_lock(&c->lock);
		if (!c->qhead || stop || c->stalled) {
			int drained = 0;
			/* A removed conversation answers nothing more: readers
			 * waiting for its queued prompts get ENOENT. */
			while (stop && c->qhead) {
				struct job *d = conv_dequeue(c);
				free(d->text);
				free(d->files);
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
			conv_slot_give(c); /* if a slot came with nothing to do */
			if (drained && conv_hook.answer_done)
				conv_hook.answer_done(c);
			break;
		}
		/* Over max_active, the conversation waits its turn without a
		 * thread. A cancelled prompt sends nothing: no slot needed. */
		if (c->cancel_seq != c->qhead->seq && !conv_slot_take(c)) {
			pthread_mutex_unlock(&c->lock);
			in_line = 1;
			break;
		}
		j = c->qhead;
		sub_start = c->submitted;
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
			res.err = errclass_of_local(dirfd, EC_STORAGE);
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
					      .hist_replaced = hist_replaced_cb,
					      .changed = changed_cb,
					      .ctx = c};
			if (take_prompt(c, j, dirfd, &res) != 0) {
				stalled = 1;
			} else {
				pthread_mutex_lock(&c->lock);
				conv_dequeue(c);
				pthread_mutex_unlock(&c->lock);
				metrics_active(1);
				gen_run(&gj, &res);
				metrics_active(-1);
				store_partial_clear(dirfd);
				pthread_mutex_lock(&c->lock);
				/* An answer neither stored nor marked keeps its prompt
				 * in the spool: recovery marks it after a crash. */
				if (!c->qhead && !res.unmarked && !c->owed_mark)
					spool_clear(dirfd);
				pthread_mutex_unlock(&c->lock);
				conv_changed(c, NULL); /* private files went */
			}
			close(dirfd);
		}
		if (dirfd == -ENOENT) {
			pthread_mutex_lock(&c->lock);
			conv_dequeue(c);
			pthread_mutex_unlock(&c->lock);
		}

		record(c, j, &res, name, stalled, sub_start);
		gen_result_free(&res);
		/* One answer per turn: others in line go first. */
		conv_slot_give(c);
		if (!stalled) {
			free(j->text);
			free(j->files);
			free(j);
		}

		if (conv_hook.answer_done)
			conv_hook.answer_done(c);
	}
	pthread_mutex_lock(&conv_table_lock);
	__atomic_sub_fetch(&conv_n_workers, 1, __ATOMIC_ACQ_REL);
	pthread_cond_broadcast(&conv_workers_cv);
	pthread_mutex_unlock(&conv_table_lock);
	if (!in_line)
		conv_put(c); /* else the line keeps the worker's reference */
	return NULL;
}

int conv_spawn_worker(struct conv *c)
{
	pthread_t t;
	pthread_attr_t a;
	int rc;

	__atomic_add_fetch(&conv_n_workers, 1, __ATOMIC_SEQ_CST);
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 256 * 1024);
	rc = pthread_create(&t, &a, worker, c);
	pthread_attr_destroy(&a);
	if (rc != 0) {
		__atomic_sub_fetch(&conv_n_workers, 1, __ATOMIC_SEQ_CST);
		log_warnx("cannot start a conversation worker: %s", strerror(rc));
		return -1;
	}
	return 0;
}

/* c->lock held; conv_table_lock may be held (conv_get) or not. */
void conv_start_worker(struct conv *c)
{
	if (c->worker)
		return;
	c->worker = 1;
	/* The worker's reference; refs is protected by conv_table_lock, which our
	 * callers hold or take here. */
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
	if (conv_spawn_worker(c) != 0) {
		c->worker = 0;
		__atomic_sub_fetch(&c->refs, 1, __ATOMIC_SEQ_CST);
	}
}

/* c will answer nothing more: if it waits in line, its worker starts now,
 * without a slot, and empties its queue (conv_table_lock held). */
static void on_stop(struct conv *c)
{
	conv_slot_skip_line(c);
}

/* --- loading ------------------------------------------------------------ */

/* Takes what recovery found into c; c->lock held. */
static void apply_recovery(struct conv *c, struct recover_result *r)
{
	for (size_t i = 0; i < r->npending; i++) {
		struct job *j = calloc(1, sizeof(*j));
		if (!j)
			break;
		j->seq = ++c->submitted;
		j->regen = r->pending[i].regen;
		memcpy(j->id, r->pending[i].id, sizeof(j->id));
		j->text = r->pending[i].text;
		r->pending[i].text = NULL;
		j->files = r->pending[i].files;
		r->pending[i].files = NULL;
		conv_enqueue(c, j);
	}
	if (r->interrupted) {
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the daemon stopped while answering; write retry to .ctl");
	} else if (r->unanswered) {
		c->err = EC_INTERRUPTED;
		snprintf(c->errmsg, sizeof(c->errmsg),
			 "the last prompt has no answer (the daemon stopped before "
			 "answering it); write retry to .ctl");
	}
	/* After a remount, .reply with nothing pending still gives the last
	 * answer. */
	if (r->last_answer && !c->last_text) {
		c->last_text = r->last_answer;
		c->last_len = r->last_len;
		r->last_answer = NULL;
		c->last_errno = r->last_marked ? errclass_errno(EC_INTERRUPTED) : 0;
	}
	if (c->qhead)
		conv_start_worker(c);
}

/* The spool cannot be read: say so, and write nothing that would
 * overwrite the prompts in it; c->lock held. */
static void spool_unreadable(struct conv *c, int err)
{
	c->spool_bad = 1;
	c->err = EC_STORAGE;
	snprintf(c->errmsg, sizeof(c->errmsg),
		 "cannot read the prompt queue (%s): new prompts are refused until it "
		 "can be read",
		 strerror(-err));
}

/* A conversation was loaded: its recovery's result (NULL and an error when
 * it could not read the spool or the history). */
static void on_loaded(struct conv *c, struct recover_result *r, int err)
{
	pthread_mutex_lock(&c->lock);
	if (err != 0)
		spool_unreadable(c, err);
	else
		apply_recovery(c, r);
	pthread_mutex_unlock(&c->lock);
	if (err != 0)
		metrics_storage_failure(c->errmsg);
}

int conv_init(const struct config *cfg, int state_dirfd, const struct conv_hooks *hooks)
{
	return conv_registry_init(cfg, state_dirfd, hooks, on_loaded, on_stop);
}

int conv_recover_again(struct conv *c)
{
	struct recover_result r;
	int dirfd = conv_dirfd(c), ret;
	char name[NAME_MAX + 1];

	if (dirfd < 0)
		return dirfd;
	conv_name(c, name, sizeof(name));
	/* No submit can succeed meanwhile (spool_bad), and the history lock
	 * keeps users' writes out while it is repaired. */
	pthread_mutex_lock(&c->hist);
	ret = recover_conversation(dirfd, name, &r);
	pthread_mutex_unlock(&c->hist);
	close(dirfd);
	conv_changed(c, STORE_HISTORY);
	conv_changed(c, STORE_STREAM);
	/* It may have finished moving attachments, and cleared private files. */
	conv_changed(c, "attach");
	conv_changed(c, "files");
	conv_changed(c, NULL);
	pthread_mutex_lock(&c->lock);
	if (ret == 0 && c->spool_bad) {
		c->spool_bad = 0;
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
		apply_recovery(c, &r);
	}
	pthread_mutex_unlock(&c->lock);
	if (ret == 0)
		recover_result_free(&r);
	return ret;
}


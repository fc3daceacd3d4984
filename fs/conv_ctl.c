/* conv_ctl.c - what users ask of a conversation: a prompt (checked at
 * write(), spooled durably at close), cancel and retry. The worker that
 * answers is in conv_run.c. */
#include "conv.h"
#include "conv_int.h"

#include "attach.h"

#include "config.h"
#include "log.h"
#include "models.h"
#include "retry.h"
#include "spool.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What attach/ holds, checked for model id (NULL: not known here): its
 * moves as JSON in *files (may be NULL: not wanted). 0 or -errno. */
static int check_attachments(int dirfd, const char *id, char **files, char *why,
			     size_t whylen)
{
	struct attach_set s;
	int ret = attach_scan(dirfd, conv_cfg->max_attach_bytes,
			      conv_cfg->max_attach_request_bytes, &s, why, whylen);
	if (ret)
		return ret;
	if (s.images && id && models_capability(id, "vision") == 0) {
		/* The server said this model cannot see; when it says
		 * nothing, the request goes and the server answers. */
		snprintf(why, whylen,
			 "model %s cannot see images (the server lists it as a text-only "
			 "model): remove the image from attach/ or choose a vision model",
			 id);
		ret = -EINVAL;
	}
	if (ret == 0 && files && s.n && !(*files = attach_set_json(&s)))
		ret = -ENOMEM;
	attach_set_free(&s);
	return ret;
}

/* Why the conversation's directory did not open (-errno): gone, or the
 * daemon is out of descriptors, say. */
static void dir_failed(int err, char *why, size_t whylen)
{
	if (err == -ENOENT)
		snprintf(why, whylen, "conversation is gone");
	else
		snprintf(why, whylen, "cannot open the conversation: %s", strerror(-err));
}

int conv_precheck(struct conv *c, char *why, size_t whylen)
{
	int bad, ret;
	char *want, *id;
	int dirfd, qlen;
	enum err_class cls;

	pthread_mutex_lock(&c->lock);
	bad = c->spool_bad;
	pthread_mutex_unlock(&c->lock);
	/* A spool unreadable at load may be readable now. */
	if (bad && (ret = conv_recover_again(c)) != 0) {
		snprintf(why, whylen, "cannot read the prompt queue: %s", strerror(-ret));
		return -EIO;
	}
	pthread_mutex_lock(&c->lock);
	qlen = c->qlen;
	pthread_mutex_unlock(&c->lock);
	if (qlen >= conv_cfg->max_queue) {
		snprintf(why, whylen, "queue full: %d prompts are waiting (max_queue)", qlen);
		return -EBUSY;
	}
	if (conv_cfg->provider != PROVIDER_MOCK && breaker_refusal(why, whylen))
		return -EBUSY;
	dirfd = conv_dirfd(c);
	if (dirfd < 0) {
		dir_failed(dirfd, why, whylen);
		return dirfd == -ENOENT ? -ENOENT : dirfd;
	}
	want = store_setting(dirfd, "model");
	id = models_resolve(want, &cls, why, whylen);
	free(want);
	if (!id) {
		close(dirfd);
		return -errclass_errno(cls);
	}
	ret = check_attachments(dirfd, id, NULL, why, whylen);
	close(dirfd);
	free(id);
	return ret;
}

/* Writes j to the spool (durably) and queues it; c->lock held. */
/* A stalled queue goes again: its prompts get new sequence numbers, so
 * that a reader who starts waiting now waits for the new attempt, not for
 * the failure already reported; c->lock held. */
static void unstall(struct conv *c)
{
	if (!c->stalled)
		return;
	c->stalled = 0;
	for (struct job *q = c->qhead; q; q = q->next)
		q->seq = ++c->submitted;
}

/* Writes j to the spool (durably) under a fresh id; c->lock held. */
static int spool_write(struct conv *c, int dirfd, struct job *j)
{
	struct spool_entry e = {.regen = j->regen, .text = j->text, .files = j->files};

	if (c->spool_bad)
		return -EIO; /* its unread prompts would be overwritten */
	store_new_id(j->id);
	memcpy(e.id, j->id, sizeof(e.id));
	return spool_append(dirfd, &e);
}

/* Queues a spooled job and starts the worker; c->lock held. */
static void queue_job(struct conv *c, struct job *j)
{
	c->rejected[0] = '\0'; /* an accepted prompt ends an old refusal */
	/* A prompt stuck for room goes first, now with this one behind it. */
	unstall(c);
	j->seq = ++c->submitted;
	conv_enqueue(c, j);
	if (!c->generating) {
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
	}
	conv_start_worker(c);
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
		dir_failed(dirfd, why, whylen);
		return dirfd;
	}
	pthread_mutex_lock(&c->lock);
	if (c->qlen >= conv_cfg->max_queue) {
		pthread_mutex_unlock(&c->lock);
		close(dirfd);
		free(j->text);
		free(j);
		snprintf(why, whylen, "queue full: %d prompts are waiting (max_queue)",
			 conv_cfg->max_queue);
		return -EBUSY;
	}
	/* attach/ as it is now goes with the prompt (checked again: it may
	 * have changed since write()); the model was checked at write(). */
	ret = check_attachments(dirfd, NULL, &j->files, why, whylen);
	if (ret == 0) {
		ret = spool_write(c, dirfd, j);
		if (ret != 0)
			snprintf(why, whylen, "cannot save the prompt: %s", strerror(-ret));
	}
	if (ret == 0) {
		/* Durable in the spool: now the files move (again by the
		 * worker or recovery if this is cut short). */
		if (j->files) {
			attach_move(dirfd, j->files);
			conv_changed(c, "attach");
			conv_changed(c, "files");
		}
		queue_job(c, j);
		conv_changed(c, NULL); /* the queue's private file */
	}
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	if (ret != 0) {
		free(j->text);
		free(j->files);
		free(j);
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
		/* Waiting for a slot (max_active): a cancel needs none. */
		conv_slot_skip_line(c);
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
	cJSON *lm;
	off_t off = 0;
	int dirfd, ret = 0, marked;

	dirfd = conv_dirfd(c);
	if (dirfd < 0) {
		dir_failed(dirfd, why, whylen);
		return dirfd;
	}
	pthread_mutex_lock(&c->lock);
	if (c->stalled && !c->generating) {
		/* A prompt waits for room on the disk: try it again. */
		unstall(c);
		c->err = EC_NONE;
		c->errmsg[0] = '\0';
		conv_start_worker(c);
		goto out;
	}
	if (c->generating || c->qhead) {
		snprintf(why, whylen, "an answer is running or queued; retry when it ends");
		ret = -EBUSY;
		goto out;
	}
	j = calloc(1, sizeof(*j));
	if (!j) {
		ret = -ENOMEM;
		goto out;
	}
	j->regen = 1;
	pthread_mutex_lock(&c->hist);
	lm = store_hist_last_message(dirfd, &off);
	marked = lm && strcmp(store_role(lm), "assistant") == 0 &&
		 cJSON_GetObjectItemCaseSensitive(lm, "lmsfs_status");
	if (!marked && !(lm && store_awaits_answer(lm))) {
		/* A user prompt or tool results waiting for the model can be
		 * answered (again); a finished answer cannot. */
		snprintf(why, whylen, "nothing to retry: the last answer is complete");
		ret = -EINVAL;
	}
	/* The retry is durable before anything changes: a failure leaves the
	 * history as it was. */
	if (ret == 0 && (ret = spool_write(c, dirfd, j)) != 0)
		snprintf(why, whylen, "cannot save the retry: %s", strerror(-ret));
	if (ret == 0 && marked) {
		/* Drop the unfinished answer; the new one replaces it. */
		ret = store_hist_truncate(dirfd, off);
		if (ret == 0) {
			c->hist_gen++;
		} else {
			spool_clear(dirfd); /* the queue was empty: only j is in it */
			snprintf(why, whylen, "cannot drop the unfinished answer: %s",
				 strerror(-ret));
		}
	}
	pthread_mutex_unlock(&c->hist);
	cJSON_Delete(lm);
	conv_changed(c, marked ? STORE_HISTORY : NULL);
	if (ret != 0) {
		free(j);
		goto out;
	}
	/* The retry answers the prompt a mark was owed for. */
	c->owed_mark = 0;
	queue_job(c, j);
out:
	pthread_mutex_unlock(&c->lock);
	close(dirfd);
	return ret;
}


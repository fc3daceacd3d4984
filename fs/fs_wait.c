/* fs_wait.c - .reply readers: a read that must wait for an answer is
 * kept (its request, not a thread) and answered when the conversation's
 * answer is done, interrupted, or the mount goes away. */
#include "fs_int.h"

#include "conv.h"
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- waiting readers ------------------------------------------------------ */

struct waiter {
	struct waiter *next;
	uint64_t id;
	fuse_req_t req;
	struct fh *f;
	struct conv *conv; /* f->conv: compared, not referenced */
	size_t size;
	off_t off;
	int ready;       /* may be answered (registration finished) */
	int busy;        /* a thread is checking it outside waiters_lock; it
			    stays listed, and that thread replies */
	int interrupted; /* set by on_interrupt when it could not reply */
	unsigned stamp;  /* last ops_answer_done pass that looked at it */
};

static pthread_mutex_t waiters_lock = PTHREAD_MUTEX_INITIALIZER;

static struct waiter *waiters;   /* waiters_lock */
static uint64_t next_waiter_id = 1; /* waiters_lock */
static int shutting_down;        /* waiters_lock */


/* f->lock held. */
static void prepare_answer(struct fh *f, size_t size, off_t off, struct prepared *p)
{
	if (f->answer_err && (off == 0 || f->answer_len == 0)) {
		p->err = f->answer_err;
		p->buf = NULL;
		p->len = 0;
		return;
	}
	prepare_slice(f->answer, f->answer_len, size, off, p);
}

/* Takes the answer into f when it is there. f->lock held. */
static int try_answer(struct fh *f)
{
	if (f->have_answer)
		return 1;
	if (conv_answer(f->conv, f->target, &f->answer, &f->answer_len, &f->answer_err))
		f->have_answer = 1;
	return f->have_answer;
}

static struct waiter *waiter_take(uint64_t id)
{
	struct waiter **pp, *w;
	for (pp = &waiters; (w = *pp); pp = &w->next)
		if (w->id == id) {
			*pp = w->next;
			return w;
		}
	return NULL;
}

static void on_interrupt(fuse_req_t req, void *data)
{
	(void)req;
	uint64_t id = (uint64_t)(uintptr_t)data;
	struct waiter *w;

	pthread_mutex_lock(&waiters_lock);
	for (w = waiters; w && w->id != id; w = w->next)
		;
	if (w && (!w->ready || w->busy)) {
		w->interrupted = 1; /* the thread holding it replies */
		w = NULL;
	} else if (w) {
		w = waiter_take(id);
	}
	pthread_mutex_unlock(&waiters_lock);
	if (w) {
		fuse_reply_err(w->req, EINTR);
		free(w);
	}
}

void ops_answer_done(struct conv *conv)
{
	static unsigned passes; /* waiters_lock */
	unsigned stamp;
	struct waiter *w;

	/* What the answer changed reaches the kernel before its readers
	 * wake: what they read next is current. */
	fs_notify_flush();
	pthread_mutex_lock(&waiters_lock);
	stamp = ++passes;
	pthread_mutex_unlock(&waiters_lock);
	/* One waiter at a time, each looked at once in this pass. A waiter
	 * being looked at stays listed and busy, so that an interrupt
	 * arriving meanwhile is not lost (on_interrupt marks it instead). */
	for (;;) {
		struct prepared p = {0, NULL, 0};
		int answered, interrupted;

		pthread_mutex_lock(&waiters_lock);
		for (w = waiters; w; w = w->next)
			if (w->ready && !w->busy && w->conv == conv && w->stamp != stamp)
				break;
		if (w) {
			w->busy = 1;
			w->stamp = stamp;
		}
		pthread_mutex_unlock(&waiters_lock);
		if (!w)
			break;

		pthread_mutex_lock(&w->f->lock);
		answered = try_answer(w->f);
		if (answered)
			prepare_answer(w->f, w->size, w->off, &p);
		pthread_mutex_unlock(&w->f->lock);

		pthread_mutex_lock(&waiters_lock);
		interrupted = w->interrupted;
		if (answered || interrupted)
			waiter_take(w->id);
		else
			w->busy = 0; /* not this reader's answer yet */
		pthread_mutex_unlock(&waiters_lock);
		if (answered) {
			send_prepared(w->req, &p);
			free(w);
		} else if (interrupted) {
			fuse_reply_err(w->req, EINTR);
			free(w);
		}
	}
}

static void read_reply(fuse_req_t req, struct fh *f, size_t size, off_t off)
{
	struct waiter *w;
	uint64_t id;

	struct prepared p;

	pthread_mutex_lock(&f->lock);
	if (try_answer(f)) {
		prepare_answer(f, size, off, &p);
		pthread_mutex_unlock(&f->lock);
		send_prepared(req, &p);
		return;
	}
	pthread_mutex_unlock(&f->lock);

	w = calloc(1, sizeof(*w));
	if (!w) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	w->req = req;
	w->f = f;
	w->size = size;
	w->off = off;
	w->conv = f->conv;
	pthread_mutex_lock(&waiters_lock);
	if (shutting_down) {
		pthread_mutex_unlock(&waiters_lock);
		free(w);
		fuse_reply_err(req, ESHUTDOWN);
		return;
	}
	id = w->id = next_waiter_id++;
	w->next = waiters;
	waiters = w;
	pthread_mutex_unlock(&waiters_lock);

	/* Without holding our locks: it may call on_interrupt at once. */
	fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)id);

	pthread_mutex_lock(&waiters_lock);
	w->ready = 1;
	if (w->interrupted) {
		waiter_take(id);
		pthread_mutex_unlock(&waiters_lock);
		fuse_reply_err(req, EINTR);
		free(w);
		return;
	}
	pthread_mutex_unlock(&waiters_lock);
	/* The answer may have finished while we registered. */
	pthread_mutex_lock(&f->lock);
	if (try_answer(f)) {
		struct waiter *x;
		pthread_mutex_unlock(&f->lock);
		pthread_mutex_lock(&waiters_lock);
		for (x = waiters; x && x->id != id; x = x->next)
			;
		/* A busy waiter is being answered by ops_answer_done. */
		w = (x && !x->busy) ? waiter_take(id) : NULL;
		pthread_mutex_unlock(&waiters_lock);
		if (w) {
			pthread_mutex_lock(&f->lock);
			prepare_answer(f, size, off, &p);
			pthread_mutex_unlock(&f->lock);
			send_prepared(req, &p);
			free(w);
		}
		return;
	}
	pthread_mutex_unlock(&f->lock);
}

void ops_shutdown(void)
{
	struct waiter *w, **pp, *gone = NULL;

	fs_notify_stop();
	pthread_mutex_lock(&waiters_lock);
	shutting_down = 1;
	for (pp = &waiters; (w = *pp);) {
		if (w->busy) {
			w->interrupted = 1; /* its holder replies */
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		w->next = gone;
		gone = w;
	}
	pthread_mutex_unlock(&waiters_lock);
	while ((w = gone)) {
		gone = w->next;
		fuse_reply_err(w->req, ESHUTDOWN);
		free(w);
	}
}

/* Takes the sequence number to wait for: the latest prompt as of now. */
static int reply_open(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		      int creating, struct fh **out, int *cache)
{
	struct conv *c;
	struct fh *f;
	(void)mode;
	(void)creating;

	if ((flags & O_ACCMODE) != O_RDONLY)
		return -EACCES;
	c = conv_get(ni->conv);
	if (!c)
		return -ENOENT;
	f = fh_new(&reply_ops, ino);
	if (!f) {
		conv_put(c);
		return -ENOMEM;
	}
	f->target = conv_wait_target(c);
	f->conv = c;
	*cache = CACHE_NONE;
	*out = f;
	return 0;
}

const struct file_ops reply_ops = {
	.kind = FH_REPLY,
	.open = reply_open,
	.read = read_reply,
};

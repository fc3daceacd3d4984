/* fs_notify.c - one thread that tells the kernel what lmsfs changed behind
 * its back, so that the kernel may cache entries, attributes, listings and
 * pages (fs_special.c: cache_policy) and still show every change at once.
 *
 * Changes are queued (ops_conv_changed, fs_notify_path) from anywhere,
 * any lock held: queueing takes only notify_lock, a leaf. The thread sends
 * fuse_lowlevel_notify_inval_inode / _inval_entry with no lock held and
 * never from inside a request handler, as libfuse requires (the kernel
 * may hold the inode's locks while a request is in flight). */
#include "fs_int.h"

#include "conv.h"
#include "log.h"
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct item {
	struct item *next;
	struct conv *c; /* referenced; NULL for a path from the root */
	char *path;     /* below the conversation (NULL: its directory), or
			   from the mount's root when c is NULL */
};

static pthread_mutex_t notify_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notify_cv = PTHREAD_COND_INITIALIZER;
static struct fuse_session *session;  /* notify_lock; NULL: not running */
static struct item *head, **tail = &head; /* notify_lock */
static uint64_t queued, sent;         /* notify_lock: changes queued, sent */
static int stopping;                  /* notify_lock; read unlocked by the thread */
static int stuck;                     /* the thread was given up at stop */
static pthread_t thread;

static int same(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void item_free(struct item *it)
{
	conv_put(it->c);
	free(it->path);
	free(it);
}

/* Queues a change; a change already waiting for the same thing covers it. */
static void enqueue(struct conv *c, const char *path)
{
	struct item *it;

	pthread_mutex_lock(&notify_lock);
	if (!session || stopping) {
		pthread_mutex_unlock(&notify_lock);
		conv_put(c);
		return;
	}
	queued++;
	for (it = head; it; it = it->next)
		if (it->c == c && same(it->path, path)) {
			pthread_mutex_unlock(&notify_lock);
			conv_put(c); /* the queued one holds its own reference */
			return;
		}
	it = calloc(1, sizeof(*it));
	if (!it || (path && !(it->path = strdup(path)))) {
		/* Nothing cached can be dropped: better a late view than none
		 * at all, and the timeouts bound it. */
		pthread_mutex_unlock(&notify_lock);
		free(it);
		conv_put(c);
		log_warnx("out of memory: a change is not announced to the kernel");
		return;
	}
	it->c = c;
	*tail = it;
	tail = &it->next;
	pthread_cond_broadcast(&notify_cv);
	pthread_mutex_unlock(&notify_lock);
}

void ops_conv_changed(struct conv *c, const char *file)
{
	enqueue(c, file);
}

void fs_notify_path(const char *path)
{
	enqueue(NULL, path);
}

/* Drops what the kernel holds of the node `name` under parent (its entry
 * when the name is gone, else its attributes and pages). Returns 1 when
 * the directory's listing may be stale too: the name went, or the kernel
 * does not know it (it may be new). */
static int forget_node(struct fuse_session *se, uint64_t parent, const char *name)
{
	struct nodeinfo ni;
	struct stat st;
	uint64_t ino = node_find(parent, name);

	if (!ino)
		return 1;
	if (node_info(ino, &ni) == 0 && attr_of(ino, &ni, &st) == -ENOENT) {
		fuse_lowlevel_notify_inval_entry(se, parent, name, strlen(name));
		return 1;
	}
	fuse_lowlevel_notify_inval_inode(se, ino, 0, 0);
	return 0;
}

/* Walks path (components separated by '/') from dir; the last
 * component's node is dropped, and its directory's listing and
 * attributes when the name came or went. */
static void forget_path(struct fuse_session *se, uint64_t dir, char *path)
{
	char *slash;

	while ((slash = strchr(path, '/'))) {
		*slash = '\0';
		dir = node_find(dir, path);
		if (!dir)
			return;
		path = slash + 1;
	}
	if ((!path[0] || forget_node(se, dir, path)) && dir != INO_ROOT)
		fuse_lowlevel_notify_inval_inode(se, dir, 0, 0);
}

static void send_item(struct fuse_session *se, struct item *it)
{
	char name[NAME_MAX + 1], full[PATH_MAX];
	uint64_t convs, cino;

	if (!it->c) {
		snprintf(full, sizeof(full), "%s", it->path);
		forget_path(se, INO_ROOT, full);
		return;
	}
	/* By its current name: a conversation renamed since keeps its node. */
	conv_name(it->c, name, sizeof(name));
	convs = node_find(INO_ROOT, "conversations");
	if (!convs)
		return;
	if (!it->path) {
		forget_node(se, convs, name);
		return;
	}
	cino = node_find(convs, name);
	if (!cino)
		return;
	snprintf(full, sizeof(full), "%s", it->path);
	forget_path(se, cino, full);
}

static void *notifier(void *arg)
{
	struct fuse_session *se = arg;

	pthread_mutex_lock(&notify_lock);
	for (;;) {
		struct item *batch, *it;
		uint64_t upto;

		while (!head && !stopping)
			pthread_cond_wait(&notify_cv, &notify_lock);
		if (!head && stopping)
			break;
		batch = head;
		head = NULL;
		tail = &head;
		upto = queued;
		pthread_mutex_unlock(&notify_lock);
		while ((it = batch)) {
			batch = it->next;
			/* Once stopping, the rest is not sent: the kernel may hold
			 * a notification up while requests wait unanswered. */
			if (!__atomic_load_n(&stopping, __ATOMIC_RELAXED))
				send_item(se, it);
			item_free(it);
		}
		pthread_mutex_lock(&notify_lock);
		sent = upto;
		pthread_cond_broadcast(&notify_cv);
	}
	pthread_mutex_unlock(&notify_lock);
	return NULL;
}

void fs_notify_flush(void)
{
	struct timespec until;
	uint64_t want;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	pthread_mutex_lock(&notify_lock);
	want = queued;
	/* Bounded: a notification the kernel holds up (it waits for a
	 * directory lock, say) delays readers, it never blocks them. */
	while (session && !stopping && sent < want)
		if (pthread_cond_timedwait(&notify_cv, &notify_lock, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&notify_lock);
}

int ops_notify_start(struct fuse_session *se)
{
	int ret;

	pthread_mutex_lock(&notify_lock);
	session = se;
	pthread_mutex_unlock(&notify_lock);
	ret = pthread_create(&thread, NULL, notifier, se);
	if (ret) {
		pthread_mutex_lock(&notify_lock);
		session = NULL;
		pthread_mutex_unlock(&notify_lock);
		return -ret;
	}
	return 0;
}

int fs_notify_stuck(void)
{
	return __atomic_load_n(&stuck, __ATOMIC_RELAXED);
}

void fs_notify_stop(void)
{
	struct timespec until;
	struct item *it;

	pthread_mutex_lock(&notify_lock);
	if (!session) {
		pthread_mutex_unlock(&notify_lock);
		return;
	}
	__atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&notify_cv);
	pthread_mutex_unlock(&notify_lock);
	/* A notification the kernel holds up (a directory lock taken by a
	 * request libfuse will never answer, after a signal) would hold the
	 * join forever: after 2 s the thread is left to the process's end. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	if (pthread_timedjoin_np(thread, NULL, &until) != 0) {
		log_warnx("the kernel notifier did not stop: leaving it");
		__atomic_store_n(&stuck, 1, __ATOMIC_RELAXED);
		return;
	}
	pthread_mutex_lock(&notify_lock);
	while ((it = head)) {
		head = it->next;
		item_free(it);
	}
	tail = &head;
	session = NULL;
	pthread_mutex_unlock(&notify_lock);
}

/* conv.c - the conversation registry: lookup by name (loading, and
 * recovering what a crash left, on first use), references, mkdir, rmdir,
 * rename, the recovery scan at mount and shutdown. The queue and the
 * worker are in conv_run.c, which sits above this file (it hands the
 * registry a callback for loaded conversations); the lock order is in
 * conv_int.h. */
#include "conv.h"
#include "conv_int.h"

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

const struct config *conv_cfg;
struct conv_hooks conv_hook;
pthread_mutex_t conv_table_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t conv_workers_cv = PTHREAD_COND_INITIALIZER;
int conv_n_workers;
int conv_stopping;
static int root_fd = -1;
static conv_loaded_fn loaded; /* set once at init */
static conv_stop_fn stopped;  /* set once at init */
static struct conv *table[NBUCKETS]; /* conv_table_lock */

static unsigned hash(const char *s)
{
	return util_strhash(0, s) % NBUCKETS;
}

int conv_registry_init(const struct config *c, int state_dirfd,
		       const struct conv_hooks *h, conv_loaded_fn on_loaded,
		       conv_stop_fn on_stop)
{
	conv_cfg = c;
	conv_hook = *h;
	loaded = on_loaded;
	stopped = on_stop;
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
	pthread_mutex_lock(&conv_table_lock);
	snprintf(buf, len, "%s", c->name);
	pthread_mutex_unlock(&conv_table_lock);
}

void conv_changed(struct conv *c, const char *file)
{
	if (!c || !conv_hook.changed)
		return;
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL); /* the hook's */
	conv_hook.changed(c, file);
}

static struct conv *find_locked(const char *name);

int conv_busy(const char *name)
{
	struct conv *c;
	int busy = 0;

	pthread_mutex_lock(&conv_table_lock);
	c = find_locked(name);
	if (c) {
		pthread_mutex_lock(&c->lock);
		busy = c->worker || c->qhead || c->generating;
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&conv_table_lock);
	return busy;
}

static void conv_free(struct conv *c)
{
	struct job *j, *n;
	for (j = c->qhead; j; j = n) {
		n = j->next;
		free(j->text);
		free(j->files);
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

/* Unlinks c from the table; conv_table_lock held. */
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
int conv_dirfd(struct conv *c)
{
	int fd;
	pthread_mutex_lock(&conv_table_lock);
	fd = c->dead ? -1
		     : openat(root_fd, c->name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && !c->dead)
		fd = -errno;
	else if (c->dead)
		fd = -ENOENT;
	pthread_mutex_unlock(&conv_table_lock);
	return fd;
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

/* Repairs what a crash left (recover.h) and loads the queue; conv_table_lock
 * held, nobody else sees c yet. */
/* Repairs what a crash left (recover.h) and hands the result to the run
 * side (conv_run.c); conv_table_lock held, nobody else sees c yet. */
static void recover(struct conv *c, int dirfd)
{
	struct recover_result r;
	int ret = recover_conversation(dirfd, c->name, &r);

	loaded(c, ret == 0 ? &r : NULL, ret);
	if (ret == 0)
		recover_result_free(&r);
	/* Recovery may have marked or completed the history and stream. */
	conv_changed(c, STORE_HISTORY);
	conv_changed(c, STORE_STREAM);
	conv_changed(c, NULL);
}

struct conv *conv_get(const char *name)
{
	struct conv *c;
	struct stat st;
	unsigned h = hash(name);
	int dirfd;

	pthread_mutex_lock(&conv_table_lock);
	for (c = table[h]; c; c = c->hnext)
		if (strcmp(c->name, name) == 0) {
			__atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
			pthread_mutex_unlock(&conv_table_lock);
			return c;
		}
	if (names_file_ok(name) != 0 || fstatat(root_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISDIR(st.st_mode)) {
		pthread_mutex_unlock(&conv_table_lock);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c || !(c->name = strdup(name))) {
		free(c);
		pthread_mutex_unlock(&conv_table_lock);
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
	pthread_mutex_unlock(&conv_table_lock);
	return c;
}

/* --- directories -------------------------------------------------------- */

/* Whether name in fd is a user's file named .lmsfs that could not be
 * renamed (store_private_keep_users_file). */
static int users_file(int fd, const char *name)
{
	struct stat st;

	return !strcmp(name, NAMES_PRIVATE_DIR) &&
	       fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* Removes lmsfs's private files (store_private_remove); fails with
 * -ENOTEMPTY when others exist. */
static int clear_private(int parentfd, const char *name, int dry)
{
	int fd = openat(parentfd, name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	int ret = 0;

	if (fd < 0)
		return -errno;
	/* A file of the user's named .lmsfs is theirs: it is kept, renamed,
	 * and keeps the directory from being empty. */
	store_private_keep_users_file(fd, name);
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!names_private(de->d_name) || users_file(fd, de->d_name)) {
			ret = -ENOTEMPTY;
			break;
		}
	}
	if (ret == 0 && !dry)
		store_private_remove(fd);
	closedir(d);
	return ret;
}

int conv_mkdir(const char *name, unsigned mode)
{
	int ret = names_file_ok(name), dfd;
	if (ret)
		return ret;
	if (mkdirat(root_fd, name, (mode & 0777) | 0700) < 0)
		return -errno;
	/* lmsfs's own directory is made now (synced), so that the first
	 * prompt does not change the conversation directory. */
	dfd = openat(root_fd, name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ret = dfd < 0 ? -errno : store_private_open(dfd, 1);
	if (ret >= 0)
		close(ret);
	if (dfd >= 0)
		close(dfd);
	/* The new directory must outlive a power cut with the prompts the
	 * user is about to write into it; if that cannot be promised, it is
	 * not made. */
	if (ret < 0 || fsync(root_fd) < 0) {
		int err = ret < 0 ? ret : -errno;
		log_warnx("mkdir %s: syncing the new directory: %s", name, strerror(-err));
		clear_private(root_fd, name, 0);
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

	pthread_mutex_lock(&conv_table_lock);
	ret = clear_private(root_fd, name, 1);
	if (ret == 0) {
		c = find_locked(name);
		if (c) {
			pthread_mutex_lock(&c->lock);
			flag_set(&c->cancel, 1);
			c->cancel_seq = c->running_seq;
			pthread_mutex_unlock(&c->lock);
			unhash(c);
			stopped(c);
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
			pthread_mutex_unlock(&conv_table_lock);
			conv_free(c);
			return ret;
		}
	}
	pthread_mutex_unlock(&conv_table_lock);
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
	pthread_mutex_lock(&conv_table_lock);
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
	pthread_mutex_unlock(&conv_table_lock);
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
		/* Two stat calls for most: a spool in .lmsfs/ (kept, empty,
		 * between answers) tells the layout. An answer runs only with
		 * a spool file present, in either layout. */
		snprintf(p, sizeof(p), "%s/" STORE_SPOOL_PATH, de->d_name);
		int pending, have = fstatat(root_fd, p, &st, AT_SYMLINK_NOFOLLOW) == 0;
		if (have) {
			pending = st.st_size > 0;
			snprintf(p, sizeof(p), "%s/" STORE_PARTIAL_PATH, de->d_name);
		} else {
			/* The earlier layout: loading it moves its files. */
			snprintf(p, sizeof(p), "%s/" STORE_OLD_SPOOL, de->d_name);
			have = fstatat(root_fd, p, &st, AT_SYMLINK_NOFOLLOW) == 0;
			pending = have && st.st_size > 0;
			snprintf(p, sizeof(p), "%s/" STORE_OLD_PARTIAL, de->d_name);
		}
		pending = pending || (have && fstatat(root_fd, p, &st, AT_SYMLINK_NOFOLLOW) == 0);
		if (pending)
			conv_put(conv_get(de->d_name));
	}
	closedir(d);
}

int conv_shutdown(void)
{
	struct timespec ts;
	int left;

	pthread_mutex_lock(&conv_table_lock);
	conv_stopping = 1;
	/* GEN_STOPPING, not a cancel: the answers were interrupted. */
	for (int i = 0; i < NBUCKETS; i++)
		for (struct conv *c = table[i]; c; c = c->hnext) {
			flag_set(&c->cancel, GEN_STOPPING);
			stopped(c);
		}
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 5;
	while (__atomic_load_n(&conv_n_workers, __ATOMIC_ACQUIRE) > 0)
		if (pthread_cond_timedwait(&conv_workers_cv, &conv_table_lock, &ts) != 0)
			break;
	left = __atomic_load_n(&conv_n_workers, __ATOMIC_ACQUIRE);
	if (left > 0) {
		pthread_mutex_unlock(&conv_table_lock);
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
	pthread_mutex_unlock(&conv_table_lock);
	if (root_fd >= 0)
		close(root_fd);
	return 0;
}

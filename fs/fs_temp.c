/* fs_temp.c - files created in a conversation remember the history's size
 * and generation at that moment, so that one renamed over messages.jsonl
 * right after it was written (sed -i's temporary) keeps the lines lmsfs
 * appended meanwhile (fs_hist.c does the merge). */
#include "fs_int.h"

#include "conv.h"
#include "store.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Files created in a conversation (sed's temporary) remember the history's
 * size and generation at that moment: renamed over messages.jsonl while
 * still open or at most TEMP_GRACE seconds after closing, they keep what
 * lmsfs appended meanwhile. A file closed longer ago (a snapshot restored
 * with mv) replaces the history as it is. A small table; the oldest entry
 * goes first. temps_lock is a leaf. */
#define NTEMPS 32
#define TEMP_GRACE 1.0

static struct tempbase {
	char conv[NAME_MAX + 1];
	char name[NAME_MAX + 1];
	off_t size;
	uint64_t gen;
	double closed_at;    /* now_s() at release; 0 while open */
	unsigned long stamp; /* 0: free */
} temps[NTEMPS];           /* temps_lock */
static unsigned long temps_clock; /* temps_lock */
static pthread_mutex_t temps_lock = PTHREAD_MUTEX_INITIALIZER;

void temp_remember(const char *conv, const char *name)
{
	struct conv *c;
	struct tempbase t = {.stamp = 1};
	int dfd, slot = 0;
	off_t size;

	if (is_special_file(name) || !(c = conv_get(conv)))
		return;
	dfd = conv_dir(conv);
	if (dfd >= 0) {
		conv_hist_lock(c);
		size = store_hist_size(dfd);
		t.size = size > 0 ? size : 0;
		t.gen = conv_hist_gen(c);
		conv_hist_unlock(c);
		close(dfd);
	}
	conv_put(c);
	if (dfd < 0)
		return;
	snprintf(t.conv, sizeof(t.conv), "%s", conv);
	snprintf(t.name, sizeof(t.name), "%s", name);
	pthread_mutex_lock(&temps_lock);
	for (int i = 1; i < NTEMPS; i++)
		if (temps[i].stamp < temps[slot].stamp)
			slot = i;
	t.stamp = ++temps_clock;
	temps[slot] = t;
	pthread_mutex_unlock(&temps_lock);
}

void temp_closed(const char *conv, const char *name)
{
	pthread_mutex_lock(&temps_lock);
	for (int i = 0; i < NTEMPS; i++)
		if (temps[i].stamp && !strcmp(temps[i].conv, conv) &&
		    !strcmp(temps[i].name, name))
			temps[i].closed_at = now_s();
	pthread_mutex_unlock(&temps_lock);
}

/* Takes the entry for conv/name; 0 when found. */
int temp_take(const char *conv, const char *name, off_t *size, uint64_t *gen)
{
	int ret = -ENOENT;
	pthread_mutex_lock(&temps_lock);
	for (int i = 0; i < NTEMPS; i++)
		if (temps[i].stamp && !strcmp(temps[i].conv, conv) &&
		    !strcmp(temps[i].name, name)) {
			*size = temps[i].size;
			*gen = temps[i].gen;
			temps[i].stamp = 0;
			if (temps[i].closed_at == 0 || now_s() - temps[i].closed_at <= TEMP_GRACE)
				ret = 0;
			break;
		}
	pthread_mutex_unlock(&temps_lock);
	return ret;
}


/* fs_handle.c - every open handle, file or directory, is listed, so that
 * the ones the kernel never released (the mount went away under them) are
 * freed when lmsfs exits. handles_lock is taken before a handle's own lock
 * (hlink_each), never after. */
#include "fs_int.h"

#include "ops.h"

static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hlink handles = {&handles, &handles, 0, NULL}; /* handles_lock */

void hlink_add(struct hlink *l, int is_dir, void (*free_fn)(struct hlink *l))
{
	l->is_dir = is_dir;
	l->free = free_fn;
	pthread_mutex_lock(&handles_lock);
	l->next = handles.next;
	l->prev = &handles;
	handles.next->prev = l;
	handles.next = l;
	pthread_mutex_unlock(&handles_lock);
}

void hlink_del(struct hlink *l)
{
	pthread_mutex_lock(&handles_lock);
	l->prev->next = l->next;
	l->next->prev = l->prev;
	pthread_mutex_unlock(&handles_lock);
}

void hlink_each(void (*fn)(struct hlink *l, void *arg), void *arg)
{
	pthread_mutex_lock(&handles_lock);
	for (struct hlink *l = handles.next; l != &handles; l = l->next)
		fn(l, arg);
	pthread_mutex_unlock(&handles_lock);
}

void ops_cleanup(void)
{
	for (;;) {
		struct hlink *l;
		pthread_mutex_lock(&handles_lock);
		l = handles.next == &handles ? NULL : handles.next;
		pthread_mutex_unlock(&handles_lock);
		if (!l)
			break;
		l->free(l); /* unlinks it */
	}
}

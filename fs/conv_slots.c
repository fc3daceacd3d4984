/* conv_slots.c - the cap on answers generated at once (max_active): who
 * may generate now, and the line of conversations waiting their turn.
 *
 * A worker holds a slot for one answer. Over the cap, its conversation
 * joins the line and the worker thread ends (the line keeps its
 * reference): a waiting conversation holds no thread, no connection and
 * no descriptor. When a slot is given back, the first in line gets it and
 * a worker starts for it. A conversation whose worker wants a slot while
 * others wait goes to the end of the line: one answer per turn, first come
 * first served. A cancelled prompt needs no slot (it sends nothing).
 *
 * Lock order: conv_table_lock -> conv->lock -> slots_lock (a leaf); the
 * line's fields (c->wnext, c->waiting, c->has_slot) and the counters are
 * protected by slots_lock.
 */
#include "conv.h"
#include "conv_int.h"

#include "config.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static int n_active;                  /* slots_lock */
static struct conv *line_head, *line_tail; /* slots_lock */

static void line_push(struct conv *c, int at_head)
{
	c->waiting = 1;
	c->wnext = NULL;
	if (!line_head) {
		line_head = line_tail = c;
	} else if (at_head) {
		c->wnext = line_head;
		line_head = c;
	} else {
		line_tail->wnext = c;
		line_tail = c;
	}
}

static int line_remove(struct conv *c)
{
	struct conv **pp = &line_head, *prev = NULL;

	if (!c->waiting)
		return 0;
	for (; *pp; prev = *pp, pp = &(*pp)->wnext)
		if (*pp == c) {
			*pp = c->wnext;
			if (line_tail == c)
				line_tail = prev;
			c->wnext = NULL;
			c->waiting = 0;
			return 1;
		}
	return 0;
}

int conv_slot_take(struct conv *c)
{
	int got;

	pthread_mutex_lock(&slots_lock);
	if (!c->has_slot && n_active < conv_cfg->max_active && !line_head) {
		n_active++;
		c->has_slot = 1;
	}
	got = c->has_slot;
	if (!got && !c->waiting)
		line_push(c, 0);
	pthread_mutex_unlock(&slots_lock);
	return got;
}

/* Starts workers for the first in line while slots are free. */
static void pump(void)
{
	for (;;) {
		struct conv *d;

		pthread_mutex_lock(&slots_lock);
		if (n_active >= conv_cfg->max_active || !line_head) {
			pthread_mutex_unlock(&slots_lock);
			return;
		}
		d = line_head;
		line_remove(d);
		d->has_slot = 1;
		n_active++;
		pthread_mutex_unlock(&slots_lock);
		if (conv_spawn_worker(d) != 0) {
			/* It keeps its place; the next slot given back tries
			 * again. */
			pthread_mutex_lock(&slots_lock);
			d->has_slot = 0;
			n_active--;
			line_push(d, 1);
			pthread_mutex_unlock(&slots_lock);
			return;
		}
	}
}

void conv_slot_give(struct conv *c)
{
	pthread_mutex_lock(&slots_lock);
	if (c->has_slot) {
		c->has_slot = 0;
		n_active--;
	}
	pthread_mutex_unlock(&slots_lock);
	pump();
}

void conv_slot_skip_line(struct conv *c)
{
	int was;

	pthread_mutex_lock(&slots_lock);
	was = line_remove(c);
	pthread_mutex_unlock(&slots_lock);
	if (was && conv_spawn_worker(c) != 0) {
		pthread_mutex_lock(&slots_lock);
		line_push(c, 1); /* it keeps its turn */
		pthread_mutex_unlock(&slots_lock);
	}
}

int conv_slot_place(struct conv *c, int *active)
{
	int pos = 0, i = 1;

	pthread_mutex_lock(&slots_lock);
	for (struct conv *d = line_head; d; d = d->wnext, i++)
		if (d == c) {
			pos = i;
			break;
		}
	*active = n_active;
	pthread_mutex_unlock(&slots_lock);
	return pos;
}

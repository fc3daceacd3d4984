/* conv_int.h - what conv.c (the registry) and conv_run.c (the queue and
 * the worker) share: the conversation object and its locks.
 *
 * Lock order: conv_table_lock -> conv->lock -> conv->hist (callers from
 * the FUSE layer may hold a file handle's lock first; see fs_int.h);
 * conv->lock -> slots_lock (conv_slots.c, a leaf).
 * conv_table_lock protects the table, every conv's name and dead flag,
 * conv_n_workers and conv_stopping; refs is atomic (the table holds one
 * reference while the conv is in it, each worker one). conv->lock
 * protects the queue and the state fields below it; conv->hist
 * serialises changes to messages.jsonl.
 */
#ifndef LMSFS_CONV_INT_H
#define LMSFS_CONV_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "conv.h"
#include "gen.h"
#include "store.h"

typedef struct cJSON cJSON;

struct job {
	struct job *next;
	uint64_t seq;
	char id[STORE_ID_LEN]; /* ties the spool entry to its history line */
	int regen;  /* answer the history as it is (retry) */
	char *text; /* the prompt; NULL for regen */
	char *files; /* its attachments' moves (attach.h), or NULL */
};

struct conv {
	struct conv *hnext; /* conv_table_lock */
	char *name;         /* conv_table_lock */
	int refs;           /* atomic */
	int dead;           /* conv_table_lock */
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
	int spool_bad; /* the spool could not be read at load: no writes */
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
	/* protected by slots_lock (conv_slots.c): */
	struct conv *wnext; /* the line of conversations waiting for a slot */
	int waiting;        /* in that line (no worker thread meanwhile) */
	int has_slot;       /* its worker may generate */
};

extern const struct config *conv_cfg;
extern struct conv_hooks conv_hook;
extern pthread_mutex_t conv_table_lock;
extern pthread_cond_t conv_workers_cv;
extern int conv_n_workers; /* conv_table_lock */
extern int conv_stopping;  /* conv_table_lock */

/* conv.c: the conversation's directory by its current name (fd or -errno;
 * -ENOENT once removed). */
int conv_dirfd(struct conv *c);

/* conv.c: the registry. on_loaded is called, conv_table_lock held, with
 * what recovery found when a conversation is first loaded. */
struct recover_result;
typedef void (*conv_loaded_fn)(struct conv *c, struct recover_result *r, int err);
/* on_stop is called, conv_table_lock held, when c will answer nothing more
 * (removed, or the daemon stops). */
typedef void (*conv_stop_fn)(struct conv *c);
int conv_registry_init(const struct config *cfg, int state_dirfd,
		       const struct conv_hooks *hooks, conv_loaded_fn on_loaded,
		       conv_stop_fn on_stop);

/* conv_run.c, with c->lock held: the in-memory queue (the spool on disk
 * mirrors it) and the worker thread that answers it. */
void conv_enqueue(struct conv *c, struct job *j);
void conv_start_worker(struct conv *c);
/* conv_run.c: a thread for c's worker, which already holds its reference
 * (from the line of conversations waiting for a slot). 0 or -1. */
int conv_spawn_worker(struct conv *c);

/* conv_slots.c: the cap on answers at once (max_active). take, with
 * c->lock held: 1 when c's worker holds a slot (now or already), else 0 and
 * c is in the line (its worker ends; the line keeps its reference). give:
 * after an answer, no lock held; the first in line gets the slot.
 * skip_line: c needs no slot (its prompt is cancelled, or it will answer
 * nothing more): if it waits in line, its worker starts now, without one
 * (conv_table_lock or c->lock may be held). place: c's place in the line
 * (1 = next; 0 = not in it) and how many answers run. */
int conv_slot_take(struct conv *c);
void conv_slot_give(struct conv *c);
void conv_slot_skip_line(struct conv *c);
int conv_slot_place(struct conv *c, int *active);
/* A spool unreadable at load is read (and the conversation recovered)
 * again; 0 or -errno. No lock held. */
int conv_recover_again(struct conv *c);

#endif

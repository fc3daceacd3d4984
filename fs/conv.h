/* conv.h - conversations: the directory on disk, the prompt queue, the
 * state, and the worker thread that answers prompts in order.
 *
 * On disk, state_dir/conversations/NAME/ holds the user's files
 * (messages.jsonl, stream, prompt, model, system, params.json, anything
 * else) plus lmsfs's own directory NAMES_PRIVATE_DIR (.lmsfs/) that never shows
 * through the mount; store.h owns that layout and its durability.
 *
 * Lock order: table lock (conv.c) -> conv->lock -> conv->hist_lock.
 * Hooks are called with no lock held.
 */
#ifndef LMSFS_CONV_H
#define LMSFS_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "errclass.h"

struct config;
struct conv;

struct conv_hooks {
	/* An answer finished (ok or not): wake readers waiting for it.
	 * Conversations are identified by pointer: a rename keeps waiters. */
	void (*answer_done)(struct conv *c);
	/* lmsfs changed something the kernel may have cached (see
	 * conv_changed); owns one reference to c. */
	void (*changed)(struct conv *c, const char *file);
};

int conv_init(const struct config *cfg, int state_dirfd,
	      const struct conv_hooks *hooks);
/* Stops workers (cancelling running answers) and frees everything. Returns
 * how many workers did not stop in time (a tool that ignores signals, say):
 * then nothing they might still use is torn down. */
int conv_shutdown(void);
/* Directory fd of state_dir/conversations (owned by conv.c). */
int conv_root_fd(void);

/* Looks a conversation up by name, loading it (and recovering what a crash
 * left) on first use. NULL when no such directory. Release with conv_put. */
struct conv *conv_get(const char *name);
void conv_put(struct conv *c);

/* Directory operations; return 0 or -errno. */
int conv_mkdir(const char *name, unsigned mode);
int conv_rmdir(const char *name);
int conv_rename(const char *from, const char *to, unsigned flags);

/* messages.jsonl must change under this lock (the worker appends under it). */
void conv_hist_lock(struct conv *c);
void conv_hist_unlock(struct conv *c);
/* How many times the history was replaced or cut (not appended to) since
 * the conversation was loaded; with the history lock held. A writer that
 * saw generation g and size s at open knows that, while the generation is
 * still g, everything past s was appended meanwhile. */
uint64_t conv_hist_gen(struct conv *c);
/* Records a replacement or cut; with the history lock held. */
void conv_hist_replaced(struct conv *c);
/* A user's history write was refused; remember why for .status. */
void conv_note_rejected(struct conv *c, const char *why);

/* What write() can know at once: model choice, breaker, queue room.
 * Returns 0 or -errno with a reason. */
int conv_precheck(struct conv *c, char *why, size_t whylen);
/* Queues a prompt durably (fsync) and starts the worker. Returns 0 or
 * -errno (-EBUSY: queue full) with a reason. */
int conv_submit(struct conv *c, const char *text, size_t len, char *why,
		size_t whylen);
/* Control commands; 0 or -errno with a reason. */
int conv_cancel(struct conv *c, char *why, size_t whylen);
int conv_retry(struct conv *c, char *why, size_t whylen);

/* The sequence number a reader that starts waiting now waits for. */
uint64_t conv_wait_target(struct conv *c);
/* 1 when answer `seq` is finished: *text (malloc'd) is its text, *err its
 * errno (0 when it succeeded). 0 when not yet. */
int conv_answer(struct conv *c, uint64_t seq, char **text, size_t *len,
		int *err);
/* .status content (malloc'd JSON text). */
char *conv_status_json(struct conv *c);
/* THE hook for every change lmsfs itself makes under a conversation's
 * directory: call it after creating, writing, cutting, replacing or
 * removing `file` (a name in the directory, or a path below it such as
 * "files/x.png"; NULL: the directory itself, e.g. a private file came or
 * went). The kernel caches entries, attributes and pages for a long time
 * and learns of such changes only through this call (fs_int.h: caching);
 * a change not announced is seen late. Cheap (queued), any lock held or
 * none, any thread. Changes users make through the mount need no call. */
void conv_changed(struct conv *c, const char *file);
/* 1 when the conversation is loaded and answering or has prompts queued
 * (its files are changing); never loads it. */
int conv_busy(const char *name);
/* Copies the conversation's current name into buf. */
void conv_name(struct conv *c, char *buf, size_t len);
/* Recovery of every conversation with a queue or a running answer, at
 * mount, before the first request is served: queued prompts resume,
 * interrupted answers get marked (recover.h). */
void conv_recover_all(void);

#endif

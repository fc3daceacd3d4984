/* spool.h - the durable prompt queue of a conversation (.lmsfs/queue).
 *
 * One JSON object per line: {"id": "<16 hex>", "content": "..."} for a
 * prompt (with "files": [["from", "to", "identity"], ...] when it
 * took attachments; see attach.h),
 * {"id": ..., "regen": true} for a retry. Entries are appended
 * (fsync'd) when a prompt is acknowledged and stay until the queue is
 * empty, when the file is emptied; which of them were taken into the
 * history is told by their id there (recover.h). The caller holds the
 * conversation's lock (conv.c).
 */
#ifndef LMSFS_SPOOL_H
#define LMSFS_SPOOL_H

#include <stddef.h>

#include "store.h"

struct spool_entry {
	char id[STORE_ID_LEN];
	int regen;  /* answer the history as it stands (retry) */
	char *text; /* the prompt (malloc'd); NULL for regen */
	char *files; /* its attachments' moves, JSON (attach.h); malloc'd or NULL */
};

/* Appends one entry durably. 0 or -errno; on failure the spool is as
 * before. */
int spool_append(int dirfd, const struct spool_entry *e);
/* Empties the spool (kept as an empty file: creating one costs a journal
 * commit on its next fsync). */
void spool_clear(int dirfd);
/* Replaces the spool with v[0..n) (removes it when n is 0). */
int spool_rewrite(int dirfd, const struct spool_entry *v, size_t n);
/* Reads every well-formed entry, in order. 0 (an absent spool is empty)
 * or -errno. Free with spool_free. */
int spool_load(int dirfd, struct spool_entry **v, size_t *n);
void spool_free(struct spool_entry *v, size_t n);

#endif

/* recover.h - crash repair of one conversation directory, by identity.
 *
 * Runs before anything else reads the conversation (conv.c, under its
 * table lock). It drops a torn last history line, answers tool calls a
 * crash left without results, marks an answer the crash cut (an assistant
 * line with "lmsfs_status": "interrupted: ...", holding the text stream
 * had), and tells which spooled prompts still need answers: a spool entry
 * whose id is in the history was taken; every other one is pending. So
 * after any crash each acknowledged prompt is answered, pending, or in
 * the history followed by a marked answer; never silently skipped. (A
 * spool entry of version 0.1 has no id: it is asked again.) When the spool
 * or the history cannot be read, nothing is changed and the error is
 * returned: the conversation then refuses new prompts (conv.c).
 * Pure store work: no threads, no network; unit-tested without a mount.
 */
#ifndef LMSFS_RECOVER_H
#define LMSFS_RECOVER_H

#include <stddef.h>

#include "spool.h"

struct recover_result {
	struct spool_entry *pending; /* prompts still to answer, in order */
	size_t npending;
	int interrupted; /* an answer cut by the crash was marked */
	int unanswered;  /* the history ends in a user message nothing answers */
	char *last_answer; /* content of the last assistant line, or NULL */
	size_t last_len;
	int last_marked; /* that line carries lmsfs_status */
};

/* Repairs dirfd (a conversation directory); name is for the log. 0 or
 * -errno (only when the spool cannot be read; the rest is best effort).
 * Free r with recover_result_free. */
int recover_conversation(int dirfd, const char *name, struct recover_result *r);
void recover_result_free(struct recover_result *r);

/* The status of an answer a crash cut. */
#define RECOVER_INTERRUPTED "interrupted: the daemon stopped while answering"

#endif

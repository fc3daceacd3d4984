/* ops.h - the FUSE low-level operations table. */
#ifndef LMSFS_OPS_H
#define LMSFS_OPS_H

#include <fuse_lowlevel.h>

struct config;

/* Prepares the node table; state_dirfd stays open for the mount's life. */
int ops_init(const struct config *cfg, int state_dirfd);
/* Answers every waiting reader (ESHUTDOWN): the mount is going away. */
void ops_shutdown(void);
/* Frees the handles the kernel never released. After the session loop
 * and conv_shutdown, when no thread uses them. */
void ops_cleanup(void);
extern const struct fuse_lowlevel_ops ops_table;
/* Hook for conv.c: an answer finished in conversation `name`. */
struct conv;
void ops_answer_done(struct conv *c);
/* Hook for conv.c (conv_changed): lmsfs changed file (NULL: the directory)
 * in conversation c; queues the kernel's invalidation. Owns one reference
 * to c. */
void ops_conv_changed(struct conv *c, const char *file);
/* Starts the thread that sends the kernel's invalidations (after
 * fuse_session_new; stopped by ops_shutdown). 0 or -errno. */
int ops_notify_start(struct fuse_session *se);
/* 1 when ops_shutdown had to leave the notifier thread running (the
 * kernel held a notification up): the session must not be destroyed. */
int fs_notify_stuck(void);

#endif

/* proctree.h - starting a program under a shepherd that can kill its whole
 * process tree.
 *
 * The daemon forks a small shepherd process per program. The shepherd
 * makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), starts the
 * program in a process group of its own and waits. Whatever the program
 * leaves behind - children in its group, or escapees that called setsid()
 * - ends up below the shepherd (orphans are reparented to it), so that it
 * can find and kill every one of them. A process group is signalled only
 * while its leader is known not to be reaped (its id cannot have been
 * reused), and the daemon signals only the shepherd, its own unreaped
 * child.
 *
 *   - when the program exits, the shepherd kills what it left (group and
 *     escapees), reaps everything, reports the program's wait status and
 *     exits;
 *   - proctree_term(): SIGTERM to the program's group (a gentle stop);
 *   - proctree_kill(): SIGKILL to the whole tree at once;
 *   - if the daemon thread that started it dies, the shepherd kills the
 *     tree (PR_SET_PDEATHSIG) when asked to (PROCTREE_PDEATH).
 *
 * The program starts without a shell, with every signal at its default and
 * none blocked, its stdio on the three given descriptors and no other
 * descriptor open.
 */
#ifndef LMSFS_PROCTREE_H
#define LMSFS_PROCTREE_H

#include <sys/types.h>

/* Flags for proctree_spawn. */
#define PROCTREE_PDEATH 1 /* kill the tree when the starting thread dies */

struct proctree {
	pid_t pid;   /* the shepherd; -1 when none */
	int pidfd;   /* readable when the shepherd exits; -1 if unsupported */
	int report;  /* read end of the shepherd's report pipe */
	int reaped;  /* the shepherd was reaped: the tree is gone */
	int status;  /* the program's wait status, once reaped */
};

/* Starts path with argv and envp in cwd; fd0-fd2 become its stdin, stdout
 * and stderr (the caller closes its own copies afterwards). Returns 0, or
 * an errno value (ENOENT, EACCES, ... when the program could not be
 * executed) with nothing left running. */
int proctree_spawn(struct proctree *t, const char *path, char *const argv[], char *const envp[],
		   const char *cwd, int fd0, int fd1, int fd2, int flags);
/* SIGTERM to the program's process group (no-op once reaped). */
void proctree_term(struct proctree *t);
/* SIGKILL to the whole tree (no-op once reaped). */
void proctree_kill(struct proctree *t);
/* Reaps the shepherd if it exited (blocking when `block`); 1 once reaped,
 * with t->status set. */
int proctree_reap(struct proctree *t, int block);
/* Kills the tree if still running, reaps, closes descriptors. */
void proctree_close(struct proctree *t);

#endif

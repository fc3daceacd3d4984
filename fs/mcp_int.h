/* mcp_int.h - what mcp.c (a server's process and JSON-RPC) and mcp_tools.c
 * (configuration, tools, calls, status) share. Lock order: see mcp.h. */
#ifndef LMSFS_MCP_INT_H
#define LMSFS_MCP_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "buf.h"
#include "mcp_conf.h"
#include "proctree.h"

typedef struct cJSON cJSON;
struct config;

/* What lmsfs asks for in initialize; answers of this version or later,
 * and of the earlier versions whose tools messages are the same, are
 * accepted. */
#define MCP_PROTOCOL "2025-06-18"
/* A server that does not answer a ping within this after a call timed out
 * is killed (and restarted on its next use). */
#define MCP_PING_MS 1000
/* A server that ran this long before it exited starts again at once. */
#define MCP_STABLE_MS 10000
/* After stdin is closed at unmount or when mcp.json drops a server. */
#define MCP_STOP_WAIT_MS 1000
/* Longest line taken from a server's stdout. */
#define MCP_LINE_MAX (16u << 20)
/* Most bytes waiting for a server to read its stdin; past this a request
 * fails at once (the server does not read). */
#define MCP_OUTQ_MAX (32u << 20)

enum mcp_state {
	MS_IDLE,     /* not running: never started, or exited (why says so) */
	MS_STARTING, /* a thread is starting it */
	MS_READY,
	MS_STOPPING, /* killed or exited; the reader is cleaning up */
	MS_FAILED,   /* could not start: why; retried after next_start */
};

struct mcp_pending {
	struct mcp_pending *next;
	long id;
	int done;
	cJSON *msg;      /* the answer (owned) */
	char err[600];   /* done without msg: why */
};

struct mcp_server {
	struct mcp_server *next;   /* mcp_lock */
	int refs;                  /* mcp_lock */
	int removed;               /* mcp_lock: gone from mcp.json */
	struct mcp_conf_server conf;

	pthread_mutex_t wlock;     /* in_fd and outq */
	struct buf outq;           /* whole lines not yet written to in_fd */
	size_t outq_off;           /* how much of outq was written already */
	pthread_mutex_t lock;      /* everything below */
	pthread_cond_t cv;         /* state, pending answers, reader exit */
	enum mcp_state state;
	int retired;               /* stopped for good: never started again */
	char why[400];             /* MS_IDLE / MS_FAILED: what happened */
	long gen;                  /* incarnation: bumped at each start */
	struct proctree tree;
	int in_fd;
	int reader_running;        /* its (detached) reader holds a reference */
	long next_id;
	struct mcp_pending *pending;
	cJSON *tools;              /* last tools/list (array), owned */
	int list_stale;            /* tools/list_changed since */
	int exits;                 /* exits or failed starts in a row */
	long long started_at;      /* now_ms() of the last start */
	long long next_start;      /* now_ms() before which no restart */
	char garbage[160];         /* the last line that was not JSON-RPC */
	char version[32];          /* negotiated protocol version */
};

extern const struct config *mcp_cfg;
/* Set by mcp_interrupt(): waits give up. */
extern atomic_int mcp_quitting;

/* mcp_reader.c */
struct mcp_reader_arg {
	struct mcp_server *s;
	int out, err;            /* the server's stdout and stderr: the reader's */
	/* What to start, and how it went; the starter's, until done. */
	const char *path, *cwd;
	char **argv, **env;
	int child[3];            /* the server's ends of its stdio pipes */
	int rc, done;            /* s->lock */
};
/* The reader thread (detached; holds a reference on s, dropped at exit).
 * It starts the server under a shepherd (PROCTREE_PDEATH: the tree dies
 * with the thread), reports through rc/done, then reads until the
 * server's stdout closes, kills and reaps the tree and fails the calls in
 * flight. */
void *mcp_reader_main(void *arg);
/* Queues one whole line for the server's stdin and writes what the pipe
 * takes now, never waiting (wlock taken inside): a line is never cut, the
 * rest goes as the server reads (mcp_flush). 0, or -1 when the server is
 * not running or the queue is over MCP_OUTQ_MAX. */
int mcp_write_line(struct mcp_server *s, const char *text);
/* Writes what the pipe takes of the queue now; returns how much is left. */
size_t mcp_flush(struct mcp_server *s);
/* Forgets the queue when in_fd is closed or replaced; wlock held. */
void mcp_outq_reset(struct mcp_server *s);
/* The delay before the next start after `exits` exits in a row. */
long long mcp_backoff_ms(int exits);

/* mcp.c */
/* Starts s unless it is running (waits while another thread starts it).
 * s->lock held on entry and on return. 0, or -1 with why. When *cancel
 * (may be NULL) becomes nonzero the wait or the start is given up: a
 * start given up is no fault of the server's (no delay before the next). */
int mcp_srv_ensure(struct mcp_server *s, const volatile int *cancel, char *why, size_t n);
/* One request; s->lock not held. 0 with *result (owned), or -1 with why;
 * *timed_out / *cancelled say which (may be NULL). With cancel_notify, a
 * request given up is followed by notifications/cancelled. */
int mcp_srv_rpc(struct mcp_server *s, const char *method, cJSON *params, long timeout_ms,
		const volatile int *cancel, int cancel_notify, cJSON **result, char *why,
		size_t n, int *timed_out, int *cancelled);
/* Kills s's tree now (why for the status); s->lock held. */
void mcp_srv_kill(struct mcp_server *s, const char *why);
/* Closes stdin, waits up to MCP_STOP_WAIT_MS, kills, joins the reader;
 * s->lock not held. */
void mcp_srv_stop(struct mcp_server *s);
/* mcp_srv_stop in two halves, so that several servers share one grace
 * period: stdin closed (and s never started again); then waits until
 * deadline (now_ms()), kills what is left and joins the reader. */
void mcp_srv_stop_begin(struct mcp_server *s);
void mcp_srv_stop_end(struct mcp_server *s, long long deadline);
void mcp_srv_init(struct mcp_server *s);
void mcp_srv_destroy(struct mcp_server *s);

/* mcp_tools.c */
/* Calls and failed calls (health, metrics). */
extern atomic_long mcp_n_calls, mcp_n_failures;
/* The server whose NAME__ starts fn (the longest such name), with a
 * reference; NULL when none. */
struct mcp_server *mcp_owner(const char *fn);
/* A reference on s (mcp_lock taken inside; s->lock must not be held). */
void mcp_srv_hold(struct mcp_server *s);
void mcp_srv_put(struct mcp_server *s);
/* Fetches tools/list (every page) into s->tools; s->lock not held. */
int mcp_tools_fetch(struct mcp_server *s, const volatile int *cancel, char *why, size_t n);

#endif

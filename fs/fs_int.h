/* fs_int.h - what the files of the FUSE layer share: node kinds, node
 * information, file handles, prepared replies, and the functions each
 * file offers the others. Only fs_*.c and ops.c include it.
 *
 * The FUSE layer, by file:
 *   fs_node.c     the inode table (numbers, names, lookup counts)
 *   fs_special.c  which names are special and their attributes
 *   fs_tree.c     lookup, getattr, setattr and the namespace operations
 *   fs_dir.c      directory listings
 *   fs_handle.c   the list of open handles, freed at exit
 *   fs_file.c     file handles and their dispatch; plain files, stream,
 *                 generated files
 *   fs_read.c     reads of backing files, spliced through a pipe
 *   fs_prompt.c   prompt and .ctl
 *   fs_hist.c     messages.jsonl written by users: checks, commits, merges
 *   fs_setting.c  model, system, params.json: checked, committed whole
 *   fs_temp.c     temporaries renamed over messages.jsonl (sed -i)
 *   fs_wait.c     .reply readers that wait without holding a thread
 *   fs_models.c   models/: touch or write to load, rm to unload (replies
 *                 later, from the load's thread)
 *   fs_notify.c   the thread that tells the kernel what lmsfs changed
 *   ops.c         the operations table, init and shutdown
 *
 * Lock order: a handle's lock -> conv.c's locks (table -> conversation ->
 * history) and the model list's; handles_lock -> a handle's lock
 * (fh_each); nodes_lock, waiters_lock, temps_lock, mops_lock and
 * notify_lock are leaves, and so is fs_setting.c's commit_lock (taken under
 * a handle's lock). No FUSE reply and no kernel notification is sent
 * while holding any of them: once a reply is out, the reader
 * may close the file and a release on another thread may free the handle
 * (hence the "prepared" replies).
 */
#ifndef LMSFS_FS_INT_H
#define LMSFS_FS_INT_H

#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "buf.h"

struct config;
struct conv;

enum kind {
	K_ROOT = 1, K_MODELS, K_CONVS, K_TOOLS, K_HEALTH, K_METRICS,
	K_MODEL, K_CONV, K_CFILE, K_REPLY, K_STATUS, K_CTL, K_TFILE, K_TSTATUS,
	K_SUBDIR, /* conversations/NAME/attach or files */
	K_SFILE   /* a plain file in one of them */
};

#define INO_ROOT 1

struct nodeinfo {
	enum kind kind;
	uint64_t parent;
	char name[NAME_MAX + 1];
	char conv[NAME_MAX + 1]; /* for files under a conversation */
	char sub[8];             /* K_SFILE: its directory (attach, files) */
};

/* Set once by ops_init, read-only afterwards. */
extern const struct config *fs_cfg;
extern int fs_state_fd, fs_tools_fd;
extern uid_t fs_uid;
extern gid_t fs_gid;
extern time_t fs_start_time;

/* --- fs_node.c ----------------------------------------------------------- */

/* The node for (parent, name), created when new; counts one lookup. NULL
 * when out of memory. */
struct node;
struct node *node_get(uint64_t parent, const char *name, enum kind kind, uint64_t *ino);
/* Copies what is known of ino (no lock held after). 0 or -ESTALE. */
int node_info(uint64_t ino, struct nodeinfo *ni);
void node_forget(uint64_t ino, uint64_t nlookup);
/* The name (parent, name) no longer exists. */
void node_drop_name(uint64_t parent, const char *name);
void node_move(uint64_t parent, const char *name, uint64_t newparent, const char *newname);
/* The number the kernel knows (parent, name) by, or 0. Counts nothing. */
uint64_t node_find(uint64_t parent, const char *name);

/* --- fs_special.c -------------------------------------------------------- */

/* The root's entries: fixed names and inode numbers. */
struct root_entry {
	const char *name;
	enum kind kind;
	uint64_t ino;
};
extern const struct root_entry fs_root_entries[];
extern const size_t fs_n_root_entries;

/* .reply, .status, .ctl: hidden control files of a conversation. */
int is_hidden_ctl(const char *name, enum kind *k);
/* Names lmsfs gives a meaning to in a conversation (prompt, stream, ...). */
int is_special_file(const char *name);
/* "conv/name" relative to the conversations directory. */
int cpath(char *out, size_t n, const char *conv, const char *name);
/* A conversation's directory, opened without following symlinks. */
int conv_dir(const char *conv);
/* attach and files: the only directories a conversation may hold. */
int is_conv_subdir(const char *name);
/* "conv/name", or "conv/sub/name" for a K_SFILE, relative to the
 * conversations directory. */
int node_path(char *out, size_t n, const struct nodeinfo *ni);
/* The JSON of the loaded model whose file name is fname (malloc'd). */
char *model_json(const char *fname);
/* The kind of file a node is (NULL: a directory). */
const struct file_ops *special_ops(const struct nodeinfo *ni);
/* Attributes of a node (ino 0: not yet numbered). */
int attr_of(uint64_t ino, const struct nodeinfo *ni, struct stat *st);

/* --- caching (fs_special.c decides, fs_notify.c keeps it true) -----------
 *
 * How long the kernel may keep a node's entry (name -> inode) and its
 * attributes without asking, and how it may cache an open file's data.
 * Each special file of a conversation carries its policy in its entry of
 * the table in fs_special.c. Long timeouts are safe only because every
 * change lmsfs makes itself is announced to the kernel: the domain calls
 * conv_changed(conv, file) (conv.h) after each one, which queues an
 * invalidation that fs_notify.c sends from its own thread. A daemon-written
 * file that is not announced is seen late (until the timeout). Changes
 * made through the mount the kernel sees by itself.
 *
 * Why directories and files need positive attribute timeouts: the mount
 * uses default_permissions, so the kernel checks permissions on every
 * path component of every access from its cached attributes; with a 0 s
 * timeout each check is a GETATTR round trip (ls -l cost 7 requests per
 * entry, find 7 per directory, grep -r 14 per conversation). A kind left
 * at 0 s costs that on every path walk through it. */
#define FS_CACHE_LONG 3600.0

struct cache_policy {
	double entry; /* seconds the kernel keeps the name */
	double attr;  /* seconds it keeps the attributes */
};
void cache_policy(const struct nodeinfo *ni, struct cache_policy *p);
/* fuse_entry_param for a node (its policy's timeouts). */
void fill_entry(struct fuse_entry_param *e, uint64_t ino, const struct nodeinfo *ni,
		const struct stat *st);

/* --- fs_notify.c ----------------------------------------------------------- */

/* Queues "the node at path (from the mount's root, e.g. "models/KEY")
 * changed, appeared or went": its directory's listing, its entry or its
 * attributes and pages are dropped from the kernel's caches. Any thread,
 * any lock held (notify_lock is a leaf). For a conversation's files use
 * conv_changed (conv.h), which follows renames. */
void fs_notify_path(const char *path);
/* Waits (2 s at most) until what was queued so far has reached the kernel.
 * No lock held; never from a request handler. */
void fs_notify_flush(void);
/* Stops the notifier thread (2 s at most; see fs_notify_stuck). */
void fs_notify_stop(void);

/* --- fs_handle.c --------------------------------------------------------- */

struct hlink {
	struct hlink *prev, *next; /* handles_lock */
	int is_dir;
	void (*free)(struct hlink *l); /* frees the handle (and unlinks it) */
};

void hlink_add(struct hlink *l, int is_dir, void (*free_fn)(struct hlink *l));
void hlink_del(struct hlink *l);
/* Calls fn on every listed handle, handles_lock held. */
void hlink_each(void (*fn)(struct hlink *l, void *arg), void *arg);

/* --- fs_file.c ----------------------------------------------------------- */

/* How the kernel may cache a file's data (set when opening). */
enum { CACHE_PAGES = 0, CACHE_NONE = 1, CACHE_KEEP = 2 };

enum fh_kind { FH_PASS, FH_BUF, FH_PROMPT, FH_HIST, FH_STREAM, FH_REPLY, FH_CTL };
enum hist_mode { HM_APPEND, HM_REPLACE };

struct fh {
	struct hlink link;   /* first: a handle is found from its link */
	const struct file_ops *ops;
	enum fh_kind kind;
	pthread_mutex_t lock;
	int fd;              /* FH_PASS, FH_STREAM, FH_HIST reads */
	uint64_t ino;
	struct buf data;     /* generated content, prompt text, written history */
	int writable;
	/* FH_HIST */
	enum hist_mode mode;
	int dirty;
	int trunc_pending;
	size_t checked;      /* bytes of data already validated (whole lines) */
	int refused;         /* a write was refused: commit nothing from here */
	int times_set;       /* futimens/fchmod on a pending history write: */
	struct timespec times[2]; /* applied again after the commit replaced */
	int mode_set;        /* the file */
	mode_t new_mode;
	off_t base_size;     /* HM_REPLACE: the history's size and generation */
	uint64_t base_gen;   /* when opened: what lies past base_size since was
				appended meanwhile and is kept (hist_commit) */
	/* FH_PROMPT */
	int prechecked;
	/* tools/mcp.json (fs_mcpconf.c) */
	int created;         /* this handle created the file */
	/* model_ops (models/KEY opened for writing) */
	int model_asked;     /* the load is done, or under way */
	int model_touch;     /* created by touch: its close loads */
	int model_created;   /* created by this open: exists until released */
	uint64_t model_op;   /* the load it asked for (fs_models.c's id) */
	int model_err;       /* how that load ended (-errno), told by close */
	/* FH_REPLY */
	struct conv *conv;   /* referenced: survives a rename of the directory */
	uint64_t target;
	int have_answer;
	char *answer;
	size_t answer_len;
	int answer_err;
};

/* What a kind of file does; fs_special.c picks the kind for a node. A
 * NULL member means: read the backing fd (read), nothing to do (flush,
 * release, fsync), refused (write: EBADF; truncate: EACCES). flush,
 * release and fsync are called with the handle's lock held; the others
 * take it if they need it.
 * write returns the bytes taken or -errno (the reason already noted). */
struct file_ops {
	enum fh_kind kind;
	int (*open)(fuse_ino_t ino, const struct nodeinfo *ni, int flags, mode_t mode,
		    int creating, struct fh **out, int *cache);
	void (*read)(fuse_req_t req, struct fh *f, size_t size, off_t off);
	ssize_t (*write)(struct fh *f, const struct nodeinfo *ni, const char *data,
			 size_t size, off_t off, int append);
	int (*flush)(struct fh *f, const struct nodeinfo *ni);
	void (*release)(struct fh *f, const struct nodeinfo *ni);
	int (*fsync)(struct fh *f, const struct nodeinfo *ni, int datasync);
	/* truncate(2), or ftruncate(2) with f. */
	int (*truncate)(const struct nodeinfo *ni, struct fh *f, off_t size);
	/* When set, replaces flush: called without the handle's lock, it
	 * replies to req itself, maybe later from another thread. */
	void (*flush_req)(fuse_req_t req, struct fh *f, const struct nodeinfo *ni);
	/* The same for write (append: the file was opened O_APPEND). */
	void (*write_req)(fuse_req_t req, struct fh *f, const struct nodeinfo *ni,
			  const char *data, size_t size, off_t off, int append);
};
extern const struct file_ops plain_ops, stream_ops, generated_ops; /* fs_file.c */
extern const struct file_ops prompt_ops, ctl_ops;                   /* fs_prompt.c */
extern const struct file_ops hist_ops;                              /* fs_hist.c */
extern const struct file_ops reply_ops;                             /* fs_wait.c */
extern const struct file_ops mcpconf_ops;                           /* fs_mcpconf.c */
/* tools/FROM may be renamed over tools/mcp.json: 0, or -EINVAL (noted
 * for tools/.status) when it is not a valid mcp.json. */
int mcpconf_check_rename(const char *from);
extern const struct file_ops model_ops;                             /* fs_models.c */
extern const struct file_ops setting_ops;                           /* fs_setting.c */

struct fh *fh_new(const struct file_ops *ops, uint64_t ino);
void fh_free(struct fh *f);
struct fh *FH(struct fuse_file_info *fi);
/* A new handle reading and writing fd (closed on failure). 0 or -ENOMEM. */
int fh_new_fd(const struct file_ops *ops, uint64_t ino, int fd, struct fh **out);
/* Replies with f->fd's data (spliced, no copy). */
/* fs_read.c: replies to a read of f->fd (a backing file). */
void read_fd(fuse_req_t req, struct fh *f, size_t size, off_t off);
/* read_fd, after making f->fd the file now in place when lmsfs replaced
 * the file whole since f was opened (f->ino's node; takes f's lock). A
 * reader in the middle of the old file may then read the rest from the new
 * one: for files read through the page cache (shared by all readers, so
 * it must hold the file now) on every read; for the others only at offset
 * 0, so that one read from start to end sees one whole text. */
void read_fd_current(fuse_req_t req, struct fh *f, size_t size, off_t off);
/* Keeps the mode and times of a setattr on f (takes f's lock), for a
 * commit that writes a new file to apply them again. */
void fh_record_times(struct fh *f, int to_set, const struct stat *attr);
/* Times or mode set (cp -a, tar: futimens before close, which FUSE sends
 * without the handle) on file ino while writers of ops hold it open: each
 * such handle keeps them, for its commit at close writes a new file. */
void fh_note_times(const struct file_ops *ops, uint64_t ino, int to_set,
		   const struct stat *attr);
/* Calls fn on every open file handle (handles_lock held). */
void fh_each(void (*fn)(struct fh *f, void *arg), void *arg);

/* A reply computed under the handle's lock and sent after unlocking it:
 * once a reply is out, the reader may close the file and a release on
 * another thread may free the handle, so nothing may touch it after. */
struct prepared {
	int err;
	char *buf;
	size_t len;
};

void prepare_slice(const char *data, size_t total, size_t size, off_t off,
		   struct prepared *p);
void send_prepared(fuse_req_t req, struct prepared *p);
/* A user's write was refused: logged and kept for .status. */
void note_reject(const char *conv, const char *what, const char *why);
/* Opens the backing file of a conversation or tools/ node (fd or -errno). */
int open_backing(const struct nodeinfo *ni, int flags, mode_t mode);
/* Replies with a slice of f->data. */
void read_data(fuse_req_t req, struct fh *f, size_t size, off_t off);
/* ftruncate of a plain backing file. */
int truncate_plain(const struct nodeinfo *ni, struct fh *f, off_t size);

void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);
void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	     struct fuse_file_info *fi);
void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
	      struct fuse_file_info *fi);
void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);

/* --- fs_hist.c ----------------------------------------------------------- */

/* Renames conversation file name over messages.jsonl (history lock held;
 * on -EINVAL/-EBUSY why says why, to report after unlocking). */
int rename_over_history(struct conv *c, const char *conv, const char *name,
			const char *from, const char *to, unsigned flags, char *why,
			size_t whylen);

/* --- fs_setting.c -------------------------------------------------------- */

/* A file (from, relative to the conversations directory) renamed over the
 * settings file `name`: 0, or -EINVAL / -EFBIG with why set, when it
 * cannot be used (0 for names that are not settings). */
int setting_rename_check(const char *name, const char *from, char *why, size_t whylen);

/* --- fs_temp.c ----------------------------------------------------------- */

/* A file created in a conversation (maybe a temporary to rename over). */
void temp_remember(const char *conv, const char *name);
/* ... and closed (a temporary's merge window starts). */
void temp_closed(const char *conv, const char *name);
/* Takes the entry for conv/name: 0 and the history's size and generation
 * when the file was created, if it is still open or was closed just now;
 * -ENOENT otherwise. */
int temp_take(const char *conv, const char *name, off_t *size, uint64_t *gen);

/* --- fs_models.c --------------------------------------------------------- */

/* create and unlink in models/: load (touch) and unload (rm). */
void models_op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi);
void models_op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
/* Attributes of a file created in models/ and still open (a model not
 * loaded yet): 0, or -ENOENT when there is none. */
int models_created_attr(uint64_t ino, const char *name, struct stat *st);

/* --- fs_dir.c ------------------------------------------------------------ */

/* Set by init when the kernel opens directories itself (no OPENDIR). */
extern int fs_no_opendir;
void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi);
void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi);

/* --- fs_tree.c ----------------------------------------------------------- */

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f);
void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi);
void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	       const char *newname, unsigned int flags);
void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void op_readlink(fuse_req_t req, fuse_ino_t ino);
void op_statfs(fuse_req_t req, fuse_ino_t ino);

#endif

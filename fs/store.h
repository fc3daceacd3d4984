/* store.h - how a conversation lies on disk; the only code that reads or
 * writes the files of state_dir/conversations/NAME/.
 *
 * Files of a conversation directory (dirfd below is that directory):
 *   messages.jsonl   the history, one JSON message per line
 *   stream           the append-only transcript, with "[lmsfs] ..." lines
 *   reasoning        the append-only transcript of the model's reasoning,
 *                    a blank line between turns (created at the first)
 *   prompt           always empty on disk (prompts go to the spool)
 *   model, system, params.json   settings, read when an answer starts
 *   .lmsfs/          lmsfs's own files (never shown through the mount):
 *     queue          the prompt spool (spool.h)
 *     partial        {"stream_offset": N} while an answer runs
 *     tmp.F, old.F   the scratch names of a replacement of file F
 *   attach/, files/  attachments: the outbox and what was sent (attach.h)
 *   anything else    the user's (editor swap files, sed temporaries)
 * No symlink below the state directory is ever followed (fsio_open): a
 * symlink named .lmsfs is refused, and the conversation then refuses
 * prompts. Keeping these in their own directory means that lmsfs's
 * bookkeeping never changes the conversation directory itself (its
 * mtime, its entries): only files the user sees do. Earlier versions kept
 * them as files ".lmsfs.queue", ".lmsfs.partial", ".lmsfs.tmp.F" and
 * ".lmsfs.old.F" of the conversation directory; loading a conversation
 * moves them (store_private_migrate).
 *
 * Durability contract (what survives kill -9 and power loss):
 *   - a prompt is in the spool, fsync'd (and its directory fsync'd when
 *     the spool was created), before the write that submitted it returns;
 *   - the user line that takes a prompt from the spool carries the
 *     prompt's id ("lmsfs_id"); it is appended without a sync of its own.
 *     The spool keeps its entries until the queue is empty after answers
 *     that were stored (or marked), so recovery finds each id in the
 *     history or queues the prompt again, whatever order the disk kept (no
 *     "done" record has to be ordered after the line);
 *   - an answer's last line is appended with fdatasync, which also covers
 *     the user and tool-round lines before it; .reply reports success only
 *     for an answer on disk;
 *   - a history the user writes is replaced atomically (temporary, fsync,
 *     rename, directory fsync; the old file put back if that sync fails)
 *     or appended with fdatasync;
 *   - a new messages.jsonl or spool made by lmsfs gets a directory fsync
 *     (the spool's is .lmsfs/; a new .lmsfs/ gets its parent's);
 *   - moving the files of the earlier layout into .lmsfs/ renames each,
 *     then fsyncs both directories before anything else reads or writes
 *     them: a crash leaves each file in one place or the other, and the
 *     next load moves the rest; an old queue merged into a new one may be
 *     merged again after a crash, and recovery keeps one entry per id;
 *   - a failed or short write to the history or the spool is rolled back
 *     to the old length and its errno returned: no line there is ever left
 *     half written;
 *   - a prompt's attachments move from attach/ to files/ only after its
 *     spool entry (which lists the moves) is synced, and are moved again
 *     by recovery or the worker if a crash cut the moves (attach.h);
 *     both directories are synced after the moves;
 *   - stream, reasoning and .lmsfs/partial are never synced: stream is a transcript
 *     (a failed write may leave part of a token there), and recovery does
 *     not trust the partial marker alone.
 *
 * Locks: the history is guarded by the conversation's history lock
 * (conv.h: conv_hist_lock), held by every caller of store_hist_* that
 * changes the file, except recovery, which runs before anyone else can see
 * the conversation; whoever cuts or replaces the history also bumps its
 * generation (conv_hist_replaced), so that a writer holding it open knows.
 * The spool is guarded by the conversation's lock (conv.c); stream and the
 * partial marker are written by the conversation's one worker only (users
 * may append to stream through the mount, O_APPEND).
 */
#ifndef LMSFS_STORE_H
#define LMSFS_STORE_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"
#include "names.h"

#define STORE_HISTORY "messages.jsonl"
#define STORE_STREAM "stream"
#define STORE_REASONING "reasoning"
#define STORE_PROMPT "prompt"
/* lmsfs's own directory in a conversation directory, and its files. */
#define STORE_PRIVATE NAMES_PRIVATE_DIR
#define STORE_SPOOL "queue"
#define STORE_PARTIAL "partial"
#define STORE_SPOOL_PATH STORE_PRIVATE "/" STORE_SPOOL
#define STORE_PARTIAL_PATH STORE_PRIVATE "/" STORE_PARTIAL
/* The same files in the earlier layout, in the conversation directory. */
#define STORE_OLD_SPOOL NAMES_PRIVATE_PREFIX STORE_SPOOL
#define STORE_OLD_PARTIAL NAMES_PRIVATE_PREFIX STORE_PARTIAL
/* Largest history lmsfs reads whole (bytes). */
#define STORE_HISTORY_MAX (1ul << 30)
/* A prompt's id: 16 hex digits and a NUL. */
#define STORE_ID_LEN 17

/* Flags for store_hist_append. */
enum { STORE_SYNC = 1, STORE_CREATE = 2 };

/* --- history ------------------------------------------------------------ */

/* Appends whole lines (data may hold several; a missing newline before or
 * after is added). STORE_CREATE creates the file; without it a history
 * removed meanwhile (rm -r) stays removed (-ENOENT). *at (may be NULL)
 * gets the offset of the first appended byte. 0 or -errno; on failure
 * the file is as before. */
int store_hist_append(int dirfd, const char *data, size_t n, int flags, off_t *at);
/* Replaces the history with data, atomically and durably. */
int store_hist_replace(int dirfd, const char *data, size_t n);
/* Cuts the history to size (fsync'd). */
int store_hist_truncate(int dirfd, off_t size);
/* The history's size, or -errno. */
off_t store_hist_size(int dirfd);
/* Reads the history whole (at most STORE_HISTORY_MAX). */
int store_hist_read(int dirfd, char **out, size_t *len);
/* Reads the history from offset `from` to its end. */
int store_hist_read_from(int dirfd, off_t from, char **out, size_t *len);
/* The last non-blank line (malloc'd, no newline) and its offset; NULL when
 * the history is empty, absent, or its last line is too long to look at. */
char *store_hist_last_line(int dirfd, off_t *offset);
/* The last line parsed (free with cJSON_Delete) and its offset; NULL when
 * there is none or it is not a JSON object. */
struct cJSON;
struct cJSON *store_hist_last_message(int dirfd, off_t *offset);
/* A message's role ("" when it has none). */
const char *store_role(const struct cJSON *m);
/* Whether the model is to speak after message m (a user message or tool
 * results): a history ending so has an unanswered prompt. */
int store_awaits_answer(const struct cJSON *m);
/* Opens the history for reading (fd or -errno). */
int store_hist_open(int dirfd);
/* The history as the text of a JSON array's elements ("{..},{..}"), ready
 * to be spliced into a request, made well formed (msgs.h). first_role gets
 * the first message's role. */
int store_hist_for_request(int dirfd, struct buf *out, char *first_role, size_t rolelen,
			   char *why, size_t whylen);

/* The same, with msgs.h flags (MSGS_KEEP_REASONING, MSGS_DROP_SYSTEM) and
 * every file reference of a user message expanded (attach.h): at most
 * max_file bytes a file, max_total in all (max_file 0: references sent as
 * written). */
int store_hist_for_request_files(int dirfd, struct buf *out, char *first_role,
				 size_t rolelen, char *why, size_t whylen, long max_file,
				 long max_total, unsigned flags);

/* History lines (malloc'd JSON text, no newline). */
char *store_user_line(const char *text, const char *id);
/* A user line with attachments: content [{"type":"text",...}, one file
 * reference per move of files (attach.h's JSON), naming the file where it
 * is in dirfd's files/; files NULL: as above. */
char *store_user_line_files(int dirfd, const char *text, const char *files, const char *id);
/* The answer to a tool call: {"role":"tool","tool_call_id","content"} or,
 * legacy, {"role":"function","name","content"}. */
char *store_tool_result_line(const char *name, const char *call_id, const char *content,
			     int legacy);
/* An assistant line for an answer that did not finish ("lmsfs_status"). */
char *store_marked_answer_line(const char *text, size_t len, const char *status);

/* --- stream ------------------------------------------------------------- */

/* Opens stream for the worker's appends, creating it (fd or -errno). */
int store_stream_open(int dirfd);
/* Appends text to an existing stream; never creates it. */
int store_stream_write(int dirfd, const char *text, size_t len);
/* Opens reasoning for the worker's appends, creating it (fd or -errno);
 * written like stream (never synced). */
int store_reasoning_open(int dirfd);
/* Whether the reasoning file open as fd ends in the middle of a line (a
 * turn cut by a killed daemon): 1 or 0. */
int store_reasoning_line_open(int fd);
/* Appends one marked line ("[lmsfs] ...", made a single line). */
void store_mark(int dirfd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* stream's current size (0 when absent). */
off_t store_stream_size(int dirfd);
/* The answer text stream holds from offset on, "[lmsfs] " lines dropped,
 * at most max bytes (malloc'd). */
char *store_stream_text_from(int dirfd, off_t offset, size_t max, size_t *len);

/* --- the running answer's marker ---------------------------------------- */

/* Records where the running answer's text starts in stream. */
int store_partial_set(int dirfd);
/* 1 and *offset when an answer was running, 0 when not. */
int store_partial_get(int dirfd, off_t *offset);
void store_partial_clear(int dirfd);

/* --- lmsfs's own directory (store_priv.c) --------------------------------- */

/* Opens the conversation's .lmsfs/ (fd or -errno; -ELOOP for a symlink,
 * -ENOTDIR for a file of that name). create: made when absent (mode 0700;
 * the conversation directory fsync'd). */
int store_private_open(int dirfd, int create);
/* A file of the user's named .lmsfs (earlier versions let users make
 * one) becomes ".lmsfs~" (".lmsfs~1", ... when that is taken), still
 * theirs and visible; nothing is replaced. name is for the log (may be
 * NULL). 1 when renamed, else 0. */
int store_private_keep_users_file(int dirfd, const char *name);
/* Moves the files of the earlier layout (NAMES_PRIVATE_PREFIX*) into
 * .lmsfs/, then syncs both directories; name is for the log. 0 (also when
 * there was nothing to move) or -errno, when some could not be moved
 * (they stay where they were; the next call moves them). */
int store_private_migrate(int dirfd, const char *name);
/* Removes .lmsfs/ and whatever is in it, and any file
 * of the earlier layout (best effort: rmdir then tells what is left). */
void store_private_remove(int dirfd);
/* Replaces the conversation file dirfd/path (path may be "conv/file")
 * atomically and durably, its temporaries in the conversation's .lmsfs/
 * (fsio_replace_via). */
int store_replace(int dirfd, const char *path, const void *data, size_t n);

/* --- settings and ids ----------------------------------------------------- */

/* A settings file (model, system, params.json), a leading UTF-8 BOM
 * dropped and trimmed; malloc'd, NULL when absent, empty, over 1 MiB or a
 * symlink. */
char *store_setting(int dirfd, const char *name);
/* A fresh random prompt id. */
void store_new_id(char id[STORE_ID_LEN]);

#endif

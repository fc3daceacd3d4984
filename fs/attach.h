/* attach.h - a conversation's attachments on disk: the attach/ outbox
 * checked and moved into files/ when a prompt takes it, and the files/
 * that history lines refer to, expanded into a request's content parts.
 *
 * Layout: conversations/NAME/attach/ (the outbox: plain files, names not
 * starting with '.') and conversations/NAME/files/ (what was sent). A
 * user line that took attachments has an array content: a text part,
 * then one reference part per file:
 *   {"type":"file","file":{"path":"files/receipt.jpg"}}
 * A name already taken in files/ gets "-1", "-2", ... before its
 * extension (receipt-1.jpg).
 *
 * Durability: the prompt's spool entry (spool.h) lists the moves
 * ("files": [["from","to","INODE.BSEC.BNSEC"], ...], the file's
 * identity: inode number and birth time) and is synced before
 * anything moves; attach_move then renames and syncs both directories.
 * attach_move is idempotent (a move whose file is already in files/, or
 * no longer in attach/, is skipped), so recovery and the worker run it
 * again for a prompt whose moves a crash cut: after kill -9 either the
 * spool entry is there and the files end up in files/, or nothing moved.
 */
#ifndef LMSFS_ATTACH_H
#define LMSFS_ATTACH_H

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"

#define ATTACH_OUTBOX "attach"
#define ATTACH_FILES "files"

/* Which file a move is about, found again after a crash: its inode number
 * and birth time (0: unknown). */
struct attach_fid {
	unsigned long long ino;
	long long bsec;
	long bnsec;
};

struct attach_item {
	char from[NAME_MAX + 1]; /* its name in attach/ */
	char to[NAME_MAX + 1];   /* its name in files/ */
	const char *mime;        /* an image's type; NULL for UTF-8 text */
	off_t size;
	struct attach_fid id;
};

struct attach_set {
	struct attach_item *v;
	size_t n;
	int images; /* how many of them are images */
};

/* What attach/ holds, checked: every file a PNG or JPEG image or UTF-8
 * text (-EINVAL), at most max_file bytes each and max_total in all
 * (-EFBIG); names in files/ chosen. An absent attach/ is an empty set.
 * 0 or -errno with a readable reason in why. Free with attach_set_free. */
int attach_scan(int dirfd, long max_file, long max_total, struct attach_set *s, char *why,
		size_t whylen);
void attach_set_free(struct attach_set *s);
/* The moves as JSON text, [["from","to","INODE.BSEC.BNSEC"],...]
 * (malloc'd; NULL when the set is empty or out of memory). */
char *attach_set_json(const struct attach_set *s);
/* Moves attach/from to files/to for each pair of json (creating files/),
 * skipping pairs already moved, then syncs both directories. Neither
 * directory may be a symlink (-ELOOP). A pair's inode and birth time tell
 * a file that moved from a later one of the same name in attach/ (which
 * stays for the next prompt); when to was taken
 * after it was chosen, the file gets the next free name (to-1.ext...).
 * 0 or the first -errno. */
int attach_move(int dirfd, const char *json);
/* Adds the reference part of each of json's moves to the array parts
 * ({"type":"file","file":{"path":"files/TO"}}), TO being the name in
 * files/ the file has (found by inode and birth time when not to). 0 or
 * -ENOMEM. */
struct cJSON;
int attach_add_refs(int dirfd, struct cJSON *parts, const char *json);

/* "image/png", "image/jpeg" or NULL, by the first bytes of a file. */
const char *attach_image_type(const unsigned char *head, size_t n);

/* --- expansion (attach_send.c) ----------------------------------------- */

/* What one request may still read. */
struct attach_budget {
	int dirfd;      /* the conversation's directory */
	long max_file;  /* max_attach_bytes */
	long max_total; /* max_attach_request_bytes */
	long used;      /* bytes of files expanded so far */
};

/* Appends the content part for the file reference path ("files/NAME") to
 * out: an image as {"type":"image_url","image_url":{"url":"data:...;
 * base64,..."}} encoded straight into out, UTF-8 text as {"type":"text",
 * "text":"[file NAME]\n..."}. arg is a struct attach_budget. 0 or -errno
 * with a reason naming the file (gone, too large, not text). Matches
 * msgs_file_fn. */
int attach_expand(void *arg, const char *path, struct buf *out, char *why, size_t whylen);
/* Base64 of in[0..n) into out (4 * ceil(n / 3) bytes, no NUL). */
void attach_b64(const unsigned char *in, size_t n, char *out);

#endif

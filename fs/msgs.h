/* msgs.h - the history as a request carries it: every line as written,
 * without lmsfs's own members (lmsfs_*), made well formed for servers and
 * chat templates that insist:
 *   - consecutive user messages are sent as one (contents joined by a
 *     blank line; arrays of parts concatenated);
 *   - an assistant message whose tool calls have no result gets a tool
 *     message "no result: the tool round was cut" for each one missing,
 *     right after the results that exist.
 * File reference parts of user messages may be expanded by a callback
 * (the caller reads the files). The history on disk is never changed.
 * Pure: no I/O. */
#ifndef LMSFS_MSGS_H
#define LMSFS_MSGS_H

#include <stddef.h>

#include "buf.h"

#define MSGS_NO_RESULT "no result: the tool round was cut"

/* Appends the messages of data (JSON Lines; blank lines and lines that are
 * not objects skipped) to out as the text of a JSON array's elements
 * ("{..},{..}"). first_role gets the first message's role ("" when none).
 * 0 or -errno (-ENOMEM, -EMSGSIZE when out's cap is reached). */
int msgs_from_history(const char *data, size_t len, struct buf *out, char *first_role,
		      size_t rolelen);

/* Flags for msgs_from_history_ex. Without MSGS_KEEP_REASONING an
 * assistant message's "reasoning_content" is left out (servers that get
 * it back may refuse it, and it costs context); MSGS_DROP_SYSTEM leaves out
 * a system message that starts the history (the caller sends its own). A
 * UTF-8 BOM that starts a line is dropped, whatever the flags. */
enum { MSGS_KEEP_REASONING = 1, MSGS_DROP_SYSTEM = 2 };
int msgs_from_history_ex(const char *data, size_t len, struct buf *out, char *first_role,
			 size_t rolelen, unsigned flags);

/* Expands a file reference part of a user message,
 * {"type":"file","file":{"path":PATH}}, by appending the part to send in
 * its place to out. 0 or -errno with a reason in why. */
typedef int (*msgs_file_fn)(void *arg, const char *path, struct buf *out, char *why,
			    size_t whylen);
/* msgs_from_history_ex, with every file reference of a user message
 * expanded by fn (NULL: sent as written). On failure why says why. */
int msgs_from_history_files(const char *data, size_t len, struct buf *out, char *first_role,
			    size_t rolelen, unsigned flags, msgs_file_fn fn, void *arg,
			    char *why, size_t whylen);

#endif

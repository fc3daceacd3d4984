/* names.h - which names are allowed where, and model id <-> file name.
 *
 * Pure string functions, no I/O.
 */
#ifndef LMSFS_NAMES_H
#define LMSFS_NAMES_H

#include <stddef.h>

/* The directory lmsfs keeps its own files in, inside a conversation
 * directory (store.h), and the prefix of the files it kept there before;
 * neither ever shows in readdir and users cannot create them. */
#define NAMES_PRIVATE_DIR ".lmsfs"
#define NAMES_PRIVATE_PREFIX ".lmsfs."

/* A conversation (directory) or file name inside conversations/: 1..255
 * bytes, not "." or "..", no '/', no control characters (bytes < 0x20 and
 * 0x7f), and not private (names_private). Returns 0 or -EINVAL
 * (-ENAMETOOLONG when over 255 bytes). */
int names_file_ok(const char *name);

/* Whether name is lmsfs's own: NAMES_PRIVATE_DIR or NAMES_PRIVATE_PREFIX*. */
int names_private(const char *name);

/* A tool name: 1..64 characters of [A-Za-z0-9_-]. Returns 1 if valid. */
int names_tool_ok(const char *name);

/* Model id -> file name: '%' becomes "%25", '/' becomes "%2F", and a leading
 * '.' becomes "%2E"; everything else is kept. Returns malloc'd string. */
char *names_model_encode(const char *id);
/* Inverse of names_model_encode. Returns malloc'd id, or NULL when name is
 * not a valid encoding (bad %xx sequence, or a raw '/'). Only the exact form
 * the encoder produces is accepted (upper-case hex, "%2E" only first, no raw
 * leading '.', not empty), so each id has exactly one name. */
char *names_model_decode(const char *name);

#endif

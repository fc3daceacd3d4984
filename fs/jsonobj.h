/* jsonobj.h - whether a text still being written can become one JSON
 * object (settings and configuration files refused from write()). Pure. */
#ifndef LMSFS_JSONOBJ_H
#define LMSFS_JSONOBJ_H

#include <stddef.h>

/* 0 while data[0..len) may still become one JSON object (a UTF-8 BOM and
 * white space around it allowed) once more bytes are written; -EINVAL with
 * a reason naming the file `name` in why when no later write can make it
 * one. Only a text that ends with a newline is judged: a newline cannot be
 * inside a JSON token, so a parse that fails before the last character
 * failed on what is there, not on what is missing. */
int jsonobj_prefix_check(const char *name, const char *data, size_t len, char *why,
			 size_t whylen);

#endif

/* jsonl.h - validation of a conversation history in JSON Lines form.
 *
 * Each non-empty line must be one JSON object that is an OpenAI chat message:
 *   role "system" | "user" | "developer": "content" string (or array of parts)
 *   role "assistant": "content" string/null/absent, optional "tool_calls"
 *        (array of {"id": string, "type": "function", "function":
 *        {"name": string, "arguments": string}}) or legacy "function_call"
 *        {"name", "arguments"}; needs content or tool_calls or function_call
 *   role "tool": "tool_call_id" string and "content" string
 *   role "function": "name" string and "content" string
 * Lines that hold only spaces/tabs/CR are allowed and ignored. Pure: no I/O.
 */
#ifndef LMSFS_JSONL_H
#define LMSFS_JSONL_H

#include <stddef.h>

/* Largest single line accepted (bytes). */
#define JSONL_MAX_LINE (8u << 20)

/* Checks one line (no trailing newline needed; a trailing "\r" is fine).
 * Returns 0 or -EINVAL with a one-line reason in why (e.g. "unknown role
 * \"robot\"", "not valid JSON", "tool message without tool_call_id"). */
int jsonl_check_line(const char *line, size_t len, char *why, size_t whylen);

/* Checks every line of data. On failure returns -EINVAL and writes
 * "line N: reason" to why; *bad_line (if not NULL) gets N (1-based). */
int jsonl_check(const char *data, size_t len, char *why, size_t whylen,
		size_t *bad_line);

#endif

/* msgs.c - the history made into a request's messages (see msgs.h). */
#include "msgs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_HEX 16

struct state {
	struct buf *out;
	char **held;    /* user messages in a row, not yet sent (joined) */
	size_t nheld, capheld;
	cJSON *pending; /* ids of tool calls still without a result */
	int rc;
	msgs_file_fn file_fn; /* expands file references (NULL: none) */
	void *file_arg;
	char *why;
	size_t whylen;
	unsigned flags; /* MSGS_* */
};

static void emit(struct state *st, const char *text);

/* --- file references in user messages --------------------------------------- */

/* The path of a file reference part, or NULL when p is not one. */
static const char *ref_path(const cJSON *p)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(p, "file");
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(f, "path");
	if (!cJSON_IsString(t) || strcmp(t->valuestring, "file") != 0 || !cJSON_IsString(path))
		return NULL;
	return path->valuestring;
}

/* Sends a user message whose content holds file references: its members
 * but content as they are, then content part by part, each reference
 * expanded straight into out (an image is never held twice). 1 when
 * sent so, 0 when it has no reference. */
static int emit_expanded(struct state *st, const char *text)
{
	cJSON *m, *content, *p;
	char *head = NULL;
	int any = 0, first = 1;
	size_t hl;

	if (!strstr(text, "\"file\""))
		return 0;
	m = cJSON_Parse(text);
	content = cJSON_GetObjectItemCaseSensitive(m, "content");
	if (cJSON_IsArray(content))
		cJSON_ArrayForEach(p, content)
			any |= ref_path(p) != NULL;
	if (!any) {
		cJSON_Delete(m);
		return 0;
	}
	content = cJSON_DetachItemFromObjectCaseSensitive(m, "content");
	head = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	if (!head) {
		st->rc = -ENOMEM;
		goto out;
	}
	hl = strlen(head) - 1; /* without its '}' */
	if ((st->out->len && buf_putc(st->out, ',') != 0) ||
	    buf_append(st->out, head, hl) != 0 ||
	    buf_puts(st->out, hl > 1 ? ",\"content\":[" : "\"content\":[") != 0) {
		st->rc = -EMSGSIZE;
		goto out;
	}
	cJSON_ArrayForEach(p, content)
	{
		const char *path = ref_path(p);
		int rc = 0;
		if (!first && buf_putc(st->out, ',') != 0)
			rc = -EMSGSIZE;
		first = 0;
		if (rc == 0 && path) {
			rc = st->file_fn(st->file_arg, path, st->out, st->why, st->whylen);
		} else if (rc == 0) {
			char *s = cJSON_PrintUnformatted(p);
			rc = !s ? -ENOMEM : buf_puts(st->out, s) ? -EMSGSIZE : 0;
			free(s);
		}
		if (rc) {
			st->rc = rc;
			goto out;
		}
	}
	if (buf_puts(st->out, "]}") != 0)
		st->rc = -EMSGSIZE;
out:
	free(head);
	cJSON_Delete(content);
	return 1;
}

/* A user message, its file references expanded when asked to. */
static void emit_user(struct state *st, const char *text)
{
	if (st->rc)
		return;
	if (st->file_fn && emit_expanded(st, text))
		return;
	emit(st, text);
}

/* The role of a message line without parsing it: the first "role" key
 * (quotes inside strings are escaped, so a bare "role" is a key; nested
 * objects of messages have none). 0 when not found. */
static int role_of(const char *b, size_t n, char *role, size_t rolelen)
{
	const char *k = memmem(b, n, "\"role\"", 6), *e = b + n, *v, *q;
	if (!k)
		return 0;
	for (v = k + 6; v < e && (*v == ' ' || *v == '\t'); v++)
		;
	if (v >= e || *v++ != ':')
		return 0;
	for (; v < e && (*v == ' ' || *v == '\t'); v++)
		;
	if (v >= e || *v++ != '"')
		return 0;
	q = memchr(v, '"', (size_t)(e - v));
	if (!q || (size_t)(q - v) >= rolelen || memchr(v, '\\', (size_t)(q - v)))
		return 0;
	memcpy(role, v, (size_t)(q - v));
	role[q - v] = '\0';
	return 1;
}

/* When the only lmsfs member of a line is the prompt id lmsfs writes last
 * (',"lmsfs_id":"<16 hex>"}'), how much of the line comes before it. */
static size_t id_suffix_stripped(const char *b, size_t n)
{
	static const char head[] = ",\"lmsfs_id\":\"";
	const size_t hl = sizeof(head) - 1, sl = hl + ID_HEX + 2;
	const char *s;

	if (n <= sl)
		return 0;
	s = b + n - sl;
	if (memcmp(s, head, hl) != 0 || s[sl - 2] != '"' || s[sl - 1] != '}')
		return 0;
	for (size_t i = 0; i < ID_HEX; i++) {
		char c = s[hl + i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return 0;
	}
	if (memmem(b, (size_t)(s - b), "\"lmsfs", 6))
		return 0;
	return (size_t)(s - b);
}

/* The line without lmsfs* members (nor reasoning_content, unless flags
 * keep it), as text (malloc'd); NULL when it is not a JSON object (or out
 * of memory: *rc says which). Lines without such members are copied, the
 * prompt id is cut as text, the rest parsed. */
static char *stripped(const char *b, size_t n, unsigned flags, int *rc)
{
	cJSON *m, *it, *next;
	char *s;
	size_t keep;
	int strip_r = !(flags & MSGS_KEEP_REASONING) &&
		      memmem(b, n, "\"reasoning_content\"", 19) != NULL;

	if (!strip_r &&
	    (!memmem(b, n, "\"lmsfs", 6) || (keep = id_suffix_stripped(b, n)))) {
		size_t l = memmem(b, n, "\"lmsfs", 6) ? keep : n;
		s = malloc(l + 2);
		if (!s) {
			*rc = -ENOMEM;
			return NULL;
		}
		memcpy(s, b, l);
		if (l < n)
			s[l++] = '}';
		s[l] = '\0';
		return s;
	}
	m = cJSON_ParseWithLength(b, n);
	if (!cJSON_IsObject(m)) {
		cJSON_Delete(m);
		return NULL;
	}
	for (it = m->child; it; it = next) {
		next = it->next;
		if (it->string && (strncmp(it->string, "lmsfs", 5) == 0 ||
				   (strip_r && strcmp(it->string, "reasoning_content") == 0)))
			cJSON_DeleteItemFromObjectCaseSensitive(m, it->string);
	}
	s = cJSON_PrintUnformatted(m);
	cJSON_Delete(m);
	if (!s)
		*rc = -ENOMEM;
	return s;
}

static void emit(struct state *st, const char *text)
{
	if (st->rc)
		return;
	if (st->out->len && buf_putc(st->out, ',') != 0)
		st->rc = -EMSGSIZE;
	else if (buf_puts(st->out, text) != 0)
		st->rc = -EMSGSIZE;
}

/* Results for the tool calls that have none, then nothing pending. */
static void answer_pending(struct state *st)
{
	cJSON *id;
	cJSON_ArrayForEach(id, st->pending)
	{
		cJSON *m = cJSON_CreateObject();
		char *s;
		cJSON_AddStringToObject(m, "role", "tool");
		cJSON_AddStringToObject(m, "tool_call_id", id->valuestring);
		cJSON_AddStringToObject(m, "content", MSGS_NO_RESULT);
		s = cJSON_PrintUnformatted(m);
		cJSON_Delete(m);
		if (!s) {
			st->rc = -ENOMEM;
			break;
		}
		emit(st, s);
		free(s);
	}
	cJSON_Delete(st->pending);
	st->pending = NULL;
}

/* A content value as an array of parts (a copy). */
static cJSON *as_parts(const cJSON *content)
{
	if (cJSON_IsArray(content))
		return cJSON_Duplicate(content, 1);
	cJSON *a = cJSON_CreateArray(), *p = cJSON_CreateObject();
	cJSON_AddStringToObject(p, "type", "text");
	cJSON_AddStringToObject(p, "text", cJSON_IsString(content) ? content->valuestring : "");
	cJSON_AddItemToArray(a, p);
	return a;
}

/* The held user messages as one (the first's members, the contents
 * joined: strings by a blank line, else as parts); malloc'd, NULL when out
 * of memory. Built once for the whole run. */
static char *joined(struct state *st)
{
	cJSON *first = cJSON_Parse(st->held[0]), *parts = NULL;
	struct buf text;
	int all_strings = 1;
	char *s = NULL;

	if (!first)
		return NULL;
	buf_init(&text, 0);
	for (size_t i = 0; i < st->nheld; i++) {
		cJSON *m = i ? cJSON_Parse(st->held[i]) : first;
		cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
		if (all_strings && cJSON_IsString(c)) {
			if (i)
				buf_puts(&text, "\n\n");
			buf_puts(&text, c->valuestring);
		} else {
			cJSON *more, *p;
			if (all_strings) {
				/* From here on, parts: what was text becomes one. */
				cJSON *t = cJSON_CreateString(text.data ? text.data : "");
				parts = i ? as_parts(t) : cJSON_CreateArray();
				cJSON_Delete(t);
				all_strings = 0;
			}
			more = as_parts(c);
			while ((p = cJSON_DetachItemFromArray(more, 0)))
				cJSON_AddItemToArray(parts, p);
			cJSON_Delete(more);
		}
		if (i)
			cJSON_Delete(m);
	}
	if (all_strings)
		cJSON_ReplaceItemInObjectCaseSensitive(
			first, "content", cJSON_CreateString(text.data ? text.data : ""));
	else
		cJSON_ReplaceItemInObjectCaseSensitive(first, "content", parts);
	s = cJSON_PrintUnformatted(first);
	cJSON_Delete(first);
	buf_free(&text);
	return s;
}

/* Sends the held user messages: one as it is, several joined. */
static void flush_held(struct state *st)
{
	char *s;

	if (st->nheld == 1) {
		emit_user(st, st->held[0]);
	} else if (st->nheld > 1) {
		s = joined(st);
		if (s) {
			emit_user(st, s);
			free(s);
		} else {
			st->rc = -ENOMEM;
		}
	}
	for (size_t i = 0; i < st->nheld; i++)
		free(st->held[i]);
	st->nheld = 0;
}

/* Holds a user message (taking text). */
static void hold(struct state *st, char *text)
{
	if (st->nheld == st->capheld) {
		size_t cap = st->capheld ? st->capheld * 2 : 4;
		char **v = realloc(st->held, cap * sizeof(*v));
		if (!v) {
			free(text);
			st->rc = -ENOMEM;
			return;
		}
		st->held = v;
		st->capheld = cap;
	}
	st->held[st->nheld++] = text;
}

static void add_calls(struct state *st, const char *text)
{
	cJSON *m = cJSON_Parse(text), *call;
	cJSON_ArrayForEach(call, cJSON_GetObjectItemCaseSensitive(m, "tool_calls"))
	{
		cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
		if (!cJSON_IsString(id))
			continue;
		if (!st->pending)
			st->pending = cJSON_CreateArray();
		cJSON_AddItemToArray(st->pending, cJSON_CreateString(id->valuestring));
	}
	cJSON_Delete(m);
}

static void take_result(struct state *st, const char *text)
{
	cJSON *m = cJSON_Parse(text);
	cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
	int i = 0;
	cJSON *p;
	if (cJSON_IsString(id))
		cJSON_ArrayForEach(p, st->pending)
		{
			if (strcmp(p->valuestring, id->valuestring) == 0) {
				cJSON_DeleteItemFromArray(st->pending, i);
				break;
			}
			i++;
		}
	cJSON_Delete(m);
}

int msgs_from_history(const char *data, size_t len, struct buf *out, char *first_role,
		      size_t rolelen)
{
	char why[8] = "";
	return msgs_from_history_files(data, len, out, first_role, rolelen, 0, NULL, NULL, why,
				       sizeof(why));
}

int msgs_from_history_ex(const char *data, size_t len, struct buf *out, char *first_role,
			 size_t rolelen, unsigned flags)
{
	char why[8] = "";
	return msgs_from_history_files(data, len, out, first_role, rolelen, flags, NULL, NULL,
				       why, sizeof(why));
}

int msgs_from_history_files(const char *data, size_t len, struct buf *out, char *first_role,
			    size_t rolelen, unsigned flags, msgs_file_fn fn, void *arg,
			    char *why, size_t whylen)
{
	struct state st = {out, NULL, 0, 0, NULL, 0, fn, arg, why, whylen, flags};
	const char *p = data, *end = data + len;

	first_role[0] = '\0';
	while (p < end && st.rc == 0) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		const char *b = p, *e = p + l;
		char role[32] = "", *text;
		p += l + 1;
		while (b < e && (*b == ' ' || *b == '\t' || *b == '\r'))
			b++;
		/* A byte order mark that starts the line is not part of it. */
		if (e - b >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0)
			for (b += 3; b < e && (*b == ' ' || *b == '\t' || *b == '\r');)
				b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
			e--;
		if (b == e || *b != '{' || e[-1] != '}')
			continue; /* blank, or not an object: never sent */
		text = stripped(b, (size_t)(e - b), flags, &st.rc);
		if (!text)
			continue;
		if (!role_of(text, strlen(text), role, sizeof(role))) {
			cJSON *m = cJSON_Parse(text);
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
			snprintf(role, sizeof(role), "%s", cJSON_IsString(r) ? r->valuestring : "?");
			cJSON_Delete(m);
		}
		if (!first_role[0]) {
			snprintf(first_role, rolelen, "%s", role);
			if ((flags & MSGS_DROP_SYSTEM) && strcmp(role, "system") == 0) {
				free(text);
				continue;
			}
		}
		if (strcmp(role, "tool") == 0) {
			flush_held(&st);
			take_result(&st, text);
			emit(&st, text);
		} else {
			if (st.pending)
				answer_pending(&st);
			if (strcmp(role, "user") == 0) {
				hold(&st, text);
				text = NULL;
			} else {
				flush_held(&st);
				if (strcmp(role, "assistant") == 0 && strstr(text, "\"tool_calls\""))
					add_calls(&st, text);
				emit(&st, text);
			}
		}
		free(text);
	}
	if (st.pending)
		answer_pending(&st);
	flush_held(&st);
	free(st.held);
	cJSON_Delete(st.pending);
	return st.rc;
}

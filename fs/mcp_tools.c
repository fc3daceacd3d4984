/* mcp_tools.c - the MCP servers of mcp.json as tools: configuration, tool lists, function definitions, status. */
#include "mcp.h"
#include "mcp_int.h"

#include "buf.h"
#include "config.h"
#include "fsio.h"
#include "log.h"
#include "tooldef.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Set once by mcp_init before any thread starts; read-only after. */
const struct config *mcp_cfg;

static pthread_mutex_t mcp_lock = PTHREAD_MUTEX_INITIALIZER;
/* mcp_lock: the servers of the last good mcp.json, the file's identity,
 * and what went wrong with it. */
static struct mcp_server *servers;
static struct stat conf_st;
static int conf_known;
static char conf_error[400];
static char refused[400];
static time_t refused_at;

atomic_long mcp_n_calls, mcp_n_failures;

atomic_int mcp_quitting;

void mcp_init(const struct config *c)
{
	mcp_cfg = c;
}

void mcp_interrupt(void)
{
	atomic_store(&mcp_quitting, 1);
}

void mcp_counts(long *calls, long *failures)
{
	*calls = atomic_load(&mcp_n_calls);
	*failures = atomic_load(&mcp_n_failures);
}

void mcp_srv_hold(struct mcp_server *s)
{
	pthread_mutex_lock(&mcp_lock);
	s->refs++;
	pthread_mutex_unlock(&mcp_lock);
}

static void put_locked(struct mcp_server *s)
{
	if (--s->refs == 0) {
		mcp_srv_destroy(s);
		free(s);
	}
}

void mcp_srv_put(struct mcp_server *s)
{
	pthread_mutex_lock(&mcp_lock);
	put_locked(s);
	pthread_mutex_unlock(&mcp_lock);
}

int mcp_check(const char *text, size_t len, char *why, size_t whylen)
{
	struct mcp_conf c;
	int rc = mcp_conf_parse(text, len, &c, why, whylen);
	if (rc == 0)
		mcp_conf_free(&c);
	return rc;
}

void mcp_note_write(const char *why)
{
	pthread_mutex_lock(&mcp_lock);
	if (why) {
		snprintf(refused, sizeof(refused), "%s", why);
		refused_at = time(NULL);
	} else {
		refused[0] = '\0';
		conf_known = 0; /* read it again */
	}
	pthread_mutex_unlock(&mcp_lock);
}

/* --- configuration -------------------------------------------------------- */

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static void *stop_gone(void *arg)
{
	struct mcp_server *s = arg, *next;
	for (; s; s = next) {
		next = s->next;
		log_info("mcp %s: no longer in mcp.json (or changed): stopped", s->conf.name);
		mcp_srv_stop(s);
		mcp_srv_put(s);
	}
	return NULL;
}

/* Reads mcp.json again when it changed; servers it no longer names (or
 * names differently) are stopped. */
static void sync_conf(void)
{
	struct stat st;
	struct mcp_conf c = {0, NULL};
	struct mcp_server *keep = NULL, **tail = &keep, *gone = NULL, *s;
	char why[400] = "";
	int exists;

	pthread_mutex_lock(&mcp_lock);
	exists = fstatat(tooldef_dir_fd(), "mcp.json", &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (!exists)
		memset(&st, 0, sizeof(st));
	if (conf_known && same_file(&st, &conf_st)) {
		pthread_mutex_unlock(&mcp_lock);
		return;
	}
	conf_st = st;
	conf_known = 1;
	if (exists) {
		char *data = NULL;
		size_t len = 0;
		int rc = S_ISREG(st.st_mode)
				 ? fsio_read(tooldef_dir_fd(), "mcp.json", 1u << 20, &data, &len)
				 : -EINVAL;
		if (rc != 0)
			snprintf(why, sizeof(why), "cannot read mcp.json: %s", strerror(-rc));
		else if (mcp_conf_parse(data, len, &c, why, sizeof(why)) != 0)
			rc = -EINVAL;
		free(data);
		if (rc != 0) {
			snprintf(conf_error, sizeof(conf_error), "%s", why);
			log_warnx("tools/mcp.json: %s (the servers of the last good file are kept)",
				  why);
			pthread_mutex_unlock(&mcp_lock);
			return;
		}
	}
	conf_error[0] = '\0';
	for (size_t i = 0; i < c.n; i++) {
		struct mcp_server **pp;
		for (pp = &servers; *pp; pp = &(*pp)->next)
			if (!strcmp((*pp)->conf.name, c.v[i].name) && !strcmp((*pp)->conf.sig, c.v[i].sig))
				break;
		if (*pp) {
			s = *pp;
			*pp = s->next;
		} else {
			s = calloc(1, sizeof(*s));
			if (!s || mcp_conf_server_copy(&s->conf, &c.v[i]) != 0) {
				free(s);
				continue;
			}
			mcp_srv_init(s);
			s->refs = 1;
		}
		s->next = NULL;
		*tail = s;
		tail = &s->next;
	}
	gone = servers;
	servers = keep;
	for (s = gone; s; s = s->next)
		s->removed = 1;
	pthread_mutex_unlock(&mcp_lock);
	mcp_conf_free(&c);
	if (gone) {
		/* Stopped by a thread of their own: stopping waits (up to
		 * MCP_STOP_WAIT_MS), and the caller may be serving a read of
		 * tools/.status. */
		pthread_t th;
		if (pthread_create(&th, NULL, stop_gone, gone) == 0)
			pthread_detach(th);
		else
			stop_gone(gone);
	}
}

/* The current servers, each with a reference (free the array, put each). */
static struct mcp_server **servers_held(size_t *n)
{
	struct mcp_server **v = NULL, *s;
	size_t k = 0;
	pthread_mutex_lock(&mcp_lock);
	for (s = servers; s; s = s->next)
		k++;
	v = calloc(k + 1, sizeof(*v));
	k = 0;
	for (s = servers; v && s; s = s->next) {
		s->refs++;
		v[k++] = s;
	}
	pthread_mutex_unlock(&mcp_lock);
	*n = k;
	return v;
}

static void servers_put(struct mcp_server **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		mcp_srv_put(v[i]);
	free(v);
}

void mcp_shutdown(void)
{
	struct mcp_server *s, *next;
	long long deadline;
	pthread_mutex_lock(&mcp_lock);
	s = servers;
	servers = NULL;
	pthread_mutex_unlock(&mcp_lock);
	/* Every stdin closed first: one grace period for all of them. */
	for (struct mcp_server *t = s; t; t = t->next)
		mcp_srv_stop_begin(t);
	deadline = now_ms() + MCP_STOP_WAIT_MS;
	for (; s; s = next) {
		next = s->next;
		mcp_srv_stop_end(s, deadline);
		mcp_srv_put(s);
	}
}

/* --- tools ---------------------------------------------------------------- */

int mcp_tools_fetch(struct mcp_server *s, const volatile int *cancel, char *why, size_t n)
{
	cJSON *all = cJSON_CreateArray(), *res = NULL;
	char *cursor = NULL;
	int pages = 0;

	do {
		cJSON *params = NULL, *tools, *t;
		const cJSON *next;
		if (cursor) {
			params = cJSON_CreateObject();
			cJSON_AddStringToObject(params, "cursor", cursor);
		}
		free(cursor);
		cursor = NULL;
		if (mcp_srv_rpc(s, "tools/list", params, mcp_cfg->tool_timeout_ms, cancel, 0, &res, why,
				n, NULL, NULL) < 0) {
			cJSON_Delete(all);
			return -1;
		}
		tools = cJSON_GetObjectItemCaseSensitive(res, "tools");
		if (!cJSON_IsArray(tools)) {
			snprintf(why, n, "tools/list answered without a \"tools\" array");
			cJSON_Delete(res);
			cJSON_Delete(all);
			return -1;
		}
		while ((t = cJSON_DetachItemFromArray(tools, 0)))
			cJSON_AddItemToArray(all, t);
		next = cJSON_GetObjectItemCaseSensitive(res, "nextCursor");
		if (cJSON_IsString(next) && next->valuestring[0])
			cursor = strdup(next->valuestring);
		cJSON_Delete(res);
	} while (cursor && ++pages < 100);
	free(cursor);
	pthread_mutex_lock(&s->lock);
	cJSON_Delete(s->tools);
	s->tools = all;
	pthread_mutex_unlock(&s->lock);
	log_info("mcp %s: %d tools", s->conf.name, cJSON_GetArraySize(all));
	return 0;
}

/* NULL when SERVER__TOOL can be a function name; else why not. fn gets
 * the name (at least 80 bytes). */
static const char *tool_name(const struct mcp_server *s, const cJSON *t, char *fn, size_t n)
{
	const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
	if (!cJSON_IsString(nm) || !nm->valuestring[0]) {
		snprintf(fn, n, "%s__?", s->conf.name);
		return "a tool without a name";
	}
	snprintf(fn, n, "%s__%.200s", s->conf.name, nm->valuestring);
	if (strlen(s->conf.name) + 2 + strlen(nm->valuestring) > 64)
		return "the name is over 64 characters";
	for (const char *p = nm->valuestring; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '-'))
			return "the name has characters other than A-Z a-z 0-9 _ -";
	return NULL;
}

static int allowed(const cJSON *allow, const char *server, const char *fn)
{
	const cJSON *a;
	if (!cJSON_IsArray(allow))
		return 1;
	cJSON_ArrayForEach(a, allow) if (cJSON_IsString(a) && (!strcmp(a->valuestring, server) ||
							       !strcmp(a->valuestring, fn))) return 1;
	return 0;
}

/* 1 when the allow-list names the server or one of its tools. */
static int server_wanted(const cJSON *allow, const char *server)
{
	const cJSON *a;
	size_t l = strlen(server);
	if (!cJSON_IsArray(allow))
		return 1;
	cJSON_ArrayForEach(a, allow) if (cJSON_IsString(a) && !strncmp(a->valuestring, server, l) &&
					 (!a->valuestring[l] || !strncmp(a->valuestring + l, "__", 2)))
		return 1;
	return 0;
}

static int taken_name(const cJSON *taken, const char *fn)
{
	const cJSON *t;
	cJSON_ArrayForEach(t, taken)
	{
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(f, "name");
		if (cJSON_IsString(n) && !strcmp(n->valuestring, fn))
			return 1;
	}
	return 0;
}

cJSON *mcp_definitions(const cJSON *params, const cJSON *taken, const volatile int *cancel)
{
	const cJSON *allow = cJSON_GetObjectItemCaseSensitive(params, "lmsfs_tools");
	cJSON *out = cJSON_CreateArray();
	struct mcp_server **v;
	size_t n;

	if (!out || cJSON_IsFalse(allow))
		return out;
	sync_conf();
	v = servers_held(&n);
	for (size_t i = 0; v && i < n; i++) {
		struct mcp_server *s = v[i];
		char why[400];
		const cJSON *t;
		int stale;
		if (s->conf.skip || !server_wanted(allow, s->conf.name))
			continue;
		pthread_mutex_lock(&s->lock);
		if (mcp_srv_ensure(s, cancel, why, sizeof(why)) != 0) {
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		stale = s->list_stale;
		s->list_stale = 0;
		pthread_mutex_unlock(&s->lock);
		if (stale && mcp_tools_fetch(s, cancel, why, sizeof(why)) != 0)
			log_warnx("mcp %s: cannot refresh its tools: %s", s->conf.name, why);
		pthread_mutex_lock(&s->lock);
		cJSON_ArrayForEach(t, s->tools)
		{
			char fn[300];
			const cJSON *d = cJSON_GetObjectItemCaseSensitive(t, "description");
			const cJSON *sch = cJSON_GetObjectItemCaseSensitive(t, "inputSchema");
			cJSON *def, *f, *p;
			if (tool_name(s, t, fn, sizeof(fn)) || !allowed(allow, s->conf.name, fn) ||
			    taken_name(taken, fn))
				continue;
			def = cJSON_CreateObject();
			cJSON_AddStringToObject(def, "type", "function");
			f = cJSON_AddObjectToObject(def, "function");
			cJSON_AddStringToObject(f, "name", fn);
			cJSON_AddStringToObject(f, "description",
						cJSON_IsString(d) ? d->valuestring : fn);
			if (cJSON_IsObject(sch)) {
				p = cJSON_Duplicate(sch, 1);
				cJSON_DeleteItemFromObjectCaseSensitive(p, "$schema");
				if (!cJSON_GetObjectItemCaseSensitive(p, "properties") &&
				    !cJSON_GetObjectItemCaseSensitive(p, "type"))
					cJSON_AddStringToObject(p, "type", "object");
			} else {
				p = cJSON_CreateObject();
				cJSON_AddStringToObject(p, "type", "object");
				cJSON_AddObjectToObject(p, "properties");
			}
			cJSON_AddItemToObject(f, "parameters", p);
			cJSON_AddItemToArray(out, def);
		}
		pthread_mutex_unlock(&s->lock);
	}
	servers_put(v, n);
	return out;
}

/* The server whose NAME__ starts fn (the longest such name), held. */
struct mcp_server *mcp_owner(const char *fn)
{
	struct mcp_server *s, *best = NULL;
	pthread_mutex_lock(&mcp_lock);
	for (s = servers; s; s = s->next) {
		size_t l = strlen(s->conf.name);
		if (!s->conf.skip && !strncmp(fn, s->conf.name, l) && !strncmp(fn + l, "__", 2) &&
		    fn[l + 2] && (!best || l > strlen(best->conf.name)))
			best = s;
	}
	if (best)
		best->refs++;
	pthread_mutex_unlock(&mcp_lock);
	return best;
}

int mcp_owns(const char *name)
{
	struct mcp_server *s;
	if (!strstr(name, "__"))
		return 0;
	sync_conf();
	s = mcp_owner(name);
	if (s)
		mcp_srv_put(s);
	return s != NULL;
}

/* --- tools/.status -------------------------------------------------------- */

void mcp_status(struct buf *b)
{
	struct mcp_server **v;
	size_t n;
	struct stat st;

	sync_conf();
	pthread_mutex_lock(&mcp_lock);
	if (conf_error[0])
		buf_printf(b, "mcp.json: error: %s (the servers of the last good file are kept)\n",
			   conf_error);
	if (refused[0]) {
		char at[32];
		struct tm tm;
		localtime_r(&refused_at, &tm);
		strftime(at, sizeof(at), "%Y-%m-%d %H:%M:%S", &tm);
		buf_printf(b, "mcp.json: write refused at %s: %s\n", at, refused);
	}
	pthread_mutex_unlock(&mcp_lock);
	if (fstatat(tooldef_dir_fd(), "mcp.json", &st, AT_SYMLINK_NOFOLLOW) != 0)
		return;
	v = servers_held(&n);
	for (size_t i = 0; v && i < n; i++) {
		struct mcp_server *s = v[i];
		const cJSON *t;
		int ntools = 0;
		if (s->conf.skip) {
			buf_printf(b, "mcp %s: skipped: %s\n", s->conf.name, s->conf.skip);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		cJSON_ArrayForEach(t, s->tools)
		{
			char fn[300];
			if (!tool_name(s, t, fn, sizeof(fn)))
				ntools++;
		}
		switch (s->state) {
		case MS_IDLE:
			if (s->why[0])
				buf_printf(b, "mcp %s: down: %s (restarted on next use)\n", s->conf.name,
					   s->why);
			else
				buf_printf(b, "mcp %s: not started (starts on first need)\n",
					   s->conf.name);
			break;
		case MS_STARTING:
			buf_printf(b, "mcp %s: starting\n", s->conf.name);
			break;
		case MS_READY:
			buf_printf(b, "mcp %s: ready: %d tools (protocol %s)\n", s->conf.name, ntools,
				   s->version);
			break;
		case MS_STOPPING:
			buf_printf(b, "mcp %s: stopping: %s\n", s->conf.name, s->why);
			break;
		case MS_FAILED:
			buf_printf(b, "mcp %s: failed: %s\n", s->conf.name, s->why);
			break;
		}
		cJSON_ArrayForEach(t, s->tools)
		{
			char fn[300];
			const char *no = tool_name(s, t, fn, sizeof(fn));
			if (no)
				buf_printf(b, "skipped %s: %s\n", fn, no);
			else
				buf_printf(b, "ok %s: tool of MCP server %s\n", fn, s->conf.name);
		}
		pthread_mutex_unlock(&s->lock);
	}
	servers_put(v, n);
}

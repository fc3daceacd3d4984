/* spool.c - the durable prompt queue file (see spool.h). */
#include "spool.h"

#include "buf.h"
#include "fsio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPOOL_MAX (256u << 20)

static char *entry_line(const struct spool_entry *e)
{
	cJSON *o = cJSON_CreateObject();
	char *s;
	cJSON_AddStringToObject(o, "id", e->id);
	if (e->regen)
		cJSON_AddBoolToObject(o, "regen", 1);
	else
		cJSON_AddStringToObject(o, "content", e->text ? e->text : "");
	if (!e->regen && e->files) {
		cJSON *f = cJSON_Parse(e->files);
		if (!f || !cJSON_AddItemToObject(o, "files", f)) {
			cJSON_Delete(f);
			cJSON_Delete(o);
			return NULL;
		}
	}
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

int spool_append(int dirfd, const struct spool_entry *e)
{
	char *l = entry_line(e);
	int ret;
	if (!l)
		return -ENOMEM;
	/* fsio_append syncs .lmsfs/ when it makes the spool there. */
	ret = fsio_append(dirfd, STORE_SPOOL_PATH, l, strlen(l),
			  FSIO_CREATE | FSIO_SYNC | FSIO_LINES | FSIO_PRIVATE, NULL);
	if (ret == -ENOENT) {
		int pfd = store_private_open(dirfd, 1);
		ret = pfd < 0 ? pfd
			      : fsio_append(pfd, STORE_SPOOL, l, strlen(l),
					    FSIO_CREATE | FSIO_SYNC | FSIO_LINES | FSIO_PRIVATE,
					    NULL);
		if (pfd >= 0)
			close(pfd);
	}
	free(l);
	return ret;
}

void spool_clear(int dirfd)
{
	int fd = fsio_open(dirfd, STORE_SPOOL_PATH, O_WRONLY | O_TRUNC, 0);
	if (fd >= 0)
		close(fd);
}

int spool_rewrite(int dirfd, const struct spool_entry *v, size_t n)
{
	struct buf b;
	int ret = 0;

	int pfd = store_private_open(dirfd, n > 0);

	if (pfd == -ENOENT && n == 0)
		return 0;
	if (pfd < 0)
		return pfd;
	if (n == 0) {
		if (unlinkat(pfd, STORE_SPOOL, 0) < 0 && errno != ENOENT)
			ret = -errno;
		close(pfd);
		return ret;
	}
	buf_init(&b, 0);
	for (size_t i = 0; i < n && ret == 0; i++) {
		char *l = entry_line(&v[i]);
		if (!l)
			ret = -ENOMEM;
		if (ret == 0)
			ret = buf_puts(&b, l);
		if (ret == 0)
			ret = buf_putc(&b, '\n');
		free(l);
	}
	if (ret == 0)
		ret = fsio_replace_via(pfd, STORE_SPOOL, pfd, b.data, b.len);
	buf_free(&b);
	close(pfd);
	return ret;
}

int spool_load(int dirfd, struct spool_entry **out, size_t *count)
{
	char *data = NULL, *p, *end;
	size_t len, n = 0, cap = 0;
	struct spool_entry *v = NULL;
	int ret = fsio_read(dirfd, STORE_SPOOL_PATH, SPOOL_MAX, &data, &len);

	*out = NULL;
	*count = 0;
	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	for (p = data, end = data + len; p < end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		cJSON *o = cJSON_ParseWithLength(p, l);
		cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
		cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "content");
		int regen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "regen"));
		p += l + 1;
		/* A line the crash cut short was never acknowledged. Records of
		 * version 0.1 ({"seq": N, ...}) have no id: kept, never found
		 * in the history. */
		if (!cJSON_IsObject(o) || (!regen && !cJSON_IsString(txt))) {
			cJSON_Delete(o);
			continue;
		}
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			struct spool_entry *nv = realloc(v, ncap * sizeof(*nv));
			if (!nv) {
				cJSON_Delete(o);
				ret = -ENOMEM;
				break;
			}
			v = nv;
			cap = ncap;
		}
		memset(&v[n], 0, sizeof(v[n]));
		if (cJSON_IsString(id))
			snprintf(v[n].id, sizeof(v[n].id), "%s", id->valuestring);
		v[n].regen = regen;
		v[n].text = regen ? NULL : strdup(txt->valuestring);
		if (!regen && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(o, "files")))
			v[n].files =
				cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "files"));
		cJSON_Delete(o);
		if (!regen && !v[n].text) {
			ret = -ENOMEM;
			break;
		}
		n++;
	}
	free(data);
	if (ret) {
		spool_free(v, n);
		return ret;
	}
	*out = v;
	*count = n;
	return 0;
}

void spool_free(struct spool_entry *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) {
		free(v[i].text);
		free(v[i].files);
	}
	free(v);
}

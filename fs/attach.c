/* attach.c - the attach/ outbox of a conversation: checked, named and
 * moved into files/ (see attach.h). */
#include "attach.h"

#include "fsio.h"
#include "log.h"
#include "names.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (64u << 10)

const char *attach_image_type(const unsigned char *h, size_t n)
{
	static const unsigned char png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
	if (n >= 8 && memcmp(h, png, 8) == 0)
		return "image/png";
	if (n >= 3 && h[0] == 0xff && h[1] == 0xd8 && h[2] == 0xff)
		return "image/jpeg";
	return NULL;
}

void attach_set_free(struct attach_set *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(((const struct attach_item *)a)->from, ((const struct attach_item *)b)->from);
}

/* Whether fd holds UTF-8 text (read to its end in chunks). */
static int is_utf8(int fd)
{
	char buf[CHUNK + 4];
	size_t carry = 0;
	for (;;) {
		ssize_t r = read(fd, buf + carry, CHUNK);
		size_t n, ok;
		if (r < 0)
			return -errno;
		n = carry + (size_t)r;
		ok = utf8_valid_prefix(buf, n, r > 0);
		if (r == 0)
			return ok == n;
		if (n - ok > 3)
			return 0;
		carry = n - ok; /* a character cut by the chunk's end */
		memmove(buf, buf + ok, carry);
	}
}

/* Classifies attach/name (opened as fd): its image type or text. */
static int classify(int fd, struct attach_item *it, char *why, size_t whylen)
{
	unsigned char head[16];
	ssize_t r = pread(fd, head, sizeof(head), 0);
	int t;

	if (r < 0)
		return -errno;
	it->mime = attach_image_type(head, (size_t)r);
	if (it->mime)
		return 0;
	t = is_utf8(fd);
	if (t < 0)
		return t;
	if (!t) {
		snprintf(why, whylen,
			 "attach/%s is neither a PNG or JPEG image nor UTF-8 text; it was not "
			 "sent",
			 it->from);
		return -EINVAL;
	}
	return 0;
}

static int exists_at(int dirfd, const char *path)
{
	struct stat st;
	return fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A free name in files/ for item i: its own, else stem-N.ext. */
static int choose_name(int dirfd, struct attach_set *s, size_t i)
{
	struct attach_item *it = &s->v[i];
	const char *dot = strrchr(it->from, '.');
	size_t stem = dot && dot != it->from ? (size_t)(dot - it->from) : strlen(it->from);
	const char *ext = it->from + stem;

	for (unsigned k = 0; k < 100000; k++) {
		char cand[NAME_MAX + 1], path[NAME_MAX + 8];
		int taken = 0, len;
		if (k == 0)
			len = snprintf(cand, sizeof(cand), "%s", it->from);
		else
			len = snprintf(cand, sizeof(cand), "%.*s-%u%s", (int)stem, it->from, k, ext);
		if (len < 0 || (size_t)len >= sizeof(cand))
			return -ENAMETOOLONG;
		snprintf(path, sizeof(path), ATTACH_FILES "/%s", cand);
		for (size_t j = 0; j < i && !taken; j++)
			taken = strcmp(s->v[j].to, cand) == 0;
		if (!taken && !exists_at(dirfd, path)) {
			memcpy(it->to, cand, (size_t)len + 1);
			return 0;
		}
	}
	return -EEXIST;
}

/* Reads the outbox's names (hidden ones left out). */
static int list_outbox(int dirfd, struct attach_set *s)
{
	int fd = fsio_open(dirfd, ATTACH_OUTBOX, O_RDONLY | O_DIRECTORY, 0);
	struct dirent *de;
	size_t cap = 0;
	DIR *dp;

	if (fd == -ENOENT || fd == -ENOTDIR)
		return 0;
	if (fd < 0)
		return fd;
	dp = fdopendir(fd);
	if (!dp) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(dp))) {
		if (de->d_name[0] == '.')
			continue; /* ., .., editor and copy temporaries */
		if (s->n == cap) {
			struct attach_item *nv;
			cap = cap ? cap * 2 : 8;
			nv = realloc(s->v, cap * sizeof(*nv));
			if (!nv) {
				closedir(dp);
				return -ENOMEM;
			}
			s->v = nv;
		}
		memset(&s->v[s->n], 0, sizeof(s->v[s->n]));
		snprintf(s->v[s->n].from, sizeof(s->v[s->n].from), "%s", de->d_name);
		s->n++;
	}
	closedir(dp);
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), cmp_names);
	return 0;
}

int attach_scan(int dirfd, long max_file, long max_total, struct attach_set *s, char *why,
		size_t whylen)
{
	long total = 0;
	struct stat st;
	int ret;

	memset(s, 0, sizeof(*s));
	ret = list_outbox(dirfd, s);
	if (ret) {
		snprintf(why, whylen, "cannot read attach/: %s", strerror(-ret));
		goto fail;
	}
	if (s->n && fstatat(dirfd, ATTACH_FILES, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    !S_ISDIR(st.st_mode)) {
		snprintf(why, whylen, "files is not a directory: attachments cannot be kept");
		ret = -EINVAL;
		goto fail;
	}
	for (size_t i = 0; i < s->n; i++) {
		struct attach_item *it = &s->v[i];
		char path[NAME_MAX + 8];
		int fd;
		snprintf(path, sizeof(path), ATTACH_OUTBOX "/%s", it->from);
		fd = fsio_open(dirfd, path, O_RDONLY | O_NONBLOCK, 0);
		if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			ret = fd < 0 ? fd : -EINVAL;
			snprintf(why, whylen, "attach/%s is not a plain file: %s", it->from,
				 fd == -ELOOP ? "a symlink" : fd < 0 ? strerror(-fd) : "a directory or device");
			if (fd >= 0)
				close(fd);
			ret = ret == -ENOENT ? -ENOENT : -EINVAL;
			goto fail;
		}
		it->size = st.st_size;
		if (st.st_size > max_file) {
			close(fd);
			snprintf(why, whylen, "attach/%s is %lld bytes, over max_attach_bytes (%ld)",
				 it->from, (long long)st.st_size, max_file);
			ret = -EFBIG;
			goto fail;
		}
		total += (long)st.st_size;
		if (total > max_total) {
			close(fd);
			snprintf(why, whylen,
				 "the files in attach/ add up to over max_attach_request_bytes (%ld)",
				 max_total);
			ret = -EFBIG;
			goto fail;
		}
		ret = classify(fd, it, why, whylen);
		close(fd);
		if (ret == 0 && it->mime)
			s->images++;
		if (ret == 0 && (ret = choose_name(dirfd, s, i)) != 0)
			snprintf(why, whylen, "no free name in files/ for %s", it->from);
		if (ret) {
			if (!why[0])
				snprintf(why, whylen, "cannot read attach/%s: %s", it->from,
					 strerror(-ret));
			goto fail;
		}
	}
	return 0;
fail:
	attach_set_free(s);
	return ret;
}

char *attach_set_json(const struct attach_set *s)
{
	cJSON *a;
	char *out;

	if (!s->n)
		return NULL;
	a = cJSON_CreateArray();
	for (size_t i = 0; i < s->n; i++) {
		cJSON *pair = cJSON_CreateArray();
		cJSON_AddItemToArray(pair, cJSON_CreateString(s->v[i].from));
		cJSON_AddItemToArray(pair, cJSON_CreateString(s->v[i].to));
		cJSON_AddItemToArray(a, pair);
	}
	out = cJSON_PrintUnformatted(a);
	cJSON_Delete(a);
	return out;
}

/* The pair's names, checked (no path may leave its directory). */
static int pair_names(const cJSON *pair, const char **from, const char **to)
{
	const cJSON *f = cJSON_GetArrayItem(pair, 0), *t = cJSON_GetArrayItem(pair, 1);
	if (!cJSON_IsString(f) || !cJSON_IsString(t) || names_file_ok(f->valuestring) ||
	    names_file_ok(t->valuestring))
		return -EINVAL;
	*from = f->valuestring;
	*to = t->valuestring;
	return 0;
}

int attach_move(int dirfd, const char *json)
{
	cJSON *a = json ? cJSON_Parse(json) : NULL, *pair;
	int ret = 0, moved = 0;

	if (!cJSON_IsArray(a)) {
		cJSON_Delete(a);
		return json ? -EINVAL : 0;
	}
	if (mkdirat(dirfd, ATTACH_FILES, 0755) == 0) {
		if (fsync(dirfd) < 0)
			ret = -errno;
	} else if (errno != EEXIST) {
		ret = -errno;
	}
	cJSON_ArrayForEach(pair, a)
	{
		const char *from, *to;
		char src[NAME_MAX + 8], dst[NAME_MAX + 8];
		if (ret || pair_names(pair, &from, &to) != 0)
			continue;
		snprintf(src, sizeof(src), ATTACH_OUTBOX "/%s", from);
		snprintf(dst, sizeof(dst), ATTACH_FILES "/%s", to);
		if (renameat2(dirfd, src, dirfd, dst, RENAME_NOREPLACE) == 0)
			moved = 1;
		else if (errno != ENOENT && errno != EEXIST)
			ret = -errno; /* ENOENT, EEXIST: moved before */
	}
	cJSON_Delete(a);
	if (moved) {
		int r1 = fsio_sync_parent(dirfd, ATTACH_FILES "/x");
		int r2 = fsio_sync_parent(dirfd, ATTACH_OUTBOX "/x");
		if (!ret)
			ret = r1 ? r1 : r2;
	}
	if (ret)
		log_warnx("moving attachments to files/: %s", strerror(-ret));
	return ret;
}

int attach_add_refs(cJSON *parts, const char *json)
{
	cJSON *a = cJSON_Parse(json), *pair;
	int ret = cJSON_IsArray(a) ? 0 : -EINVAL;

	cJSON_ArrayForEach(pair, a)
	{
		const char *from, *to;
		char path[NAME_MAX + 8];
		cJSON *p, *f;
		if (pair_names(pair, &from, &to) != 0)
			continue;
		snprintf(path, sizeof(path), ATTACH_FILES "/%s", to);
		p = cJSON_CreateObject();
		cJSON_AddStringToObject(p, "type", "file");
		f = cJSON_AddObjectToObject(p, "file");
		if (!f || !cJSON_AddStringToObject(f, "path", path) ||
		    !cJSON_AddItemToArray(parts, p)) {
			cJSON_Delete(p);
			ret = -ENOMEM;
		}
	}
	cJSON_Delete(a);
	return ret;
}

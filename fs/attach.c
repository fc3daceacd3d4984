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

/* A file's identity from statx: its inode number and, where the file
 * system keeps it, its birth time, which tells a moved file from a later
 * one that reuses its freed inode number. */
static void fid_of(const struct statx *sx, struct attach_fid *id)
{
	memset(id, 0, sizeof(*id));
	id->ino = sx->stx_ino;
	if (sx->stx_mask & STATX_BTIME) {
		id->bsec = sx->stx_btime.tv_sec;
		id->bnsec = sx->stx_btime.tv_nsec;
	}
}

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

/* The k-th name for from in files/: from itself, then stem-k.ext. 0 or
 * -ENAMETOOLONG. */
static int candidate(const char *from, unsigned k, char cand[NAME_MAX + 1])
{
	const char *dot = strrchr(from, '.');
	size_t stem = dot && dot != from ? (size_t)(dot - from) : strlen(from);
	int len;

	if (k == 0)
		len = snprintf(cand, NAME_MAX + 1, "%s", from);
	else
		len = snprintf(cand, NAME_MAX + 1, "%.*s-%u%s", (int)stem, from, k, from + stem);
	return len < 0 || len > NAME_MAX ? -ENAMETOOLONG : 0;
}

/* A free name in files/ (filesfd; -1: there is no files/ yet) for item i:
 * its own, else stem-N.ext. */
static int choose_name(int filesfd, struct attach_set *s, size_t i)
{
	struct attach_item *it = &s->v[i];

	for (unsigned k = 0; k < 100000; k++) {
		char cand[NAME_MAX + 1];
		struct stat st;
		int taken = 0, ret = candidate(it->from, k, cand);
		if (ret)
			return ret;
		for (size_t j = 0; j < i && !taken; j++)
			taken = strcmp(s->v[j].to, cand) == 0;
		if (!taken && (filesfd < 0 || fstatat(filesfd, cand, &st, AT_SYMLINK_NOFOLLOW) < 0)) {
			memcpy(it->to, cand, strlen(cand) + 1);
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
	int ret, filesfd = -1;

	memset(s, 0, sizeof(*s));
	why[0] = '\0';
	ret = list_outbox(dirfd, s);
	if (ret) {
		snprintf(why, whylen, "cannot read attach/: %s", strerror(-ret));
		goto fail;
	}
	if (s->n && (filesfd = fsio_open(dirfd, ATTACH_FILES, O_RDONLY | O_DIRECTORY, 0)) < 0 &&
	    filesfd != -ENOENT) {
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
		{
			struct statx sx;
			if (statx(fd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &sx) == 0)
				fid_of(&sx, &it->id);
		}
		if (st.st_size > max_file) {
			close(fd);
			snprintf(why, whylen, "attach/%s is %lld bytes, over max_attach_bytes (%ld)",
				 it->from, (long long)st.st_size, max_file);
			ret = -EFBIG;
			goto fail;
		}
		if (st.st_size > max_total - total) {
			close(fd);
			snprintf(why, whylen,
				 "the files in attach/ add up to over max_attach_request_bytes (%ld)",
				 max_total);
			ret = -EFBIG;
			goto fail;
		}
		total += (long)st.st_size;
		ret = classify(fd, it, why, whylen);
		close(fd);
		if (ret == 0 && it->mime)
			s->images++;
		if (ret == 0 && (ret = choose_name(filesfd, s, i)) != 0)
			snprintf(why, whylen, "no free name in files/ for %s", it->from);
		if (ret) {
			if (!why[0])
				snprintf(why, whylen, "cannot read attach/%s: %s", it->from,
					 strerror(-ret));
			goto fail;
		}
	}
	if (filesfd >= 0)
		close(filesfd);
	return 0;
fail:
	if (filesfd >= 0)
		close(filesfd);
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
		if (s->v[i].id.ino) {
			/* Text, not a JSON number: exact whatever its size. */
			char id[64];
			snprintf(id, sizeof(id), "%llu.%lld.%ld", s->v[i].id.ino, s->v[i].id.bsec,
				 s->v[i].id.bnsec);
			cJSON_AddItemToArray(pair, cJSON_CreateString(id));
		}
		cJSON_AddItemToArray(a, pair);
	}
	out = cJSON_PrintUnformatted(a);
	cJSON_Delete(a);
	return out;
}

/* The pair's names, checked (no path may leave its directory), and the
 * identity the file had in attach/ (all 0: not recorded). */
static int pair_names(const cJSON *pair, const char **from, const char **to,
		      struct attach_fid *id)
{
	const cJSON *f = cJSON_GetArrayItem(pair, 0), *t = cJSON_GetArrayItem(pair, 1);
	const cJSON *i = cJSON_GetArrayItem(pair, 2);
	if (!cJSON_IsString(f) || !cJSON_IsString(t) || names_file_ok(f->valuestring) ||
	    names_file_ok(t->valuestring))
		return -EINVAL;
	*from = f->valuestring;
	*to = t->valuestring;
	memset(id, 0, sizeof(*id));
	if (cJSON_IsString(i) &&
	    sscanf(i->valuestring, "%llu.%lld.%ld", &id->ino, &id->bsec, &id->bnsec) != 3)
		memset(id, 0, sizeof(*id));
	else if (cJSON_IsNumber(i) && i->valuedouble > 0)
		id->ino = (unsigned long long)i->valuedouble; /* an inode alone */
	return 0;
}

/* Whether name in fd is the file recorded as id (a birth time of 0 is
 * unknown: the inode alone decides). 1 yes, 0 no, -errno. */
static int same_file(int fd, const char *name, const struct attach_fid *id)
{
	struct statx sx;
	struct attach_fid now;
	int known;

	if (statx(fd, name, AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_BTIME, &sx) < 0)
		return -errno;
	fid_of(&sx, &now);
	known = (id->bsec || id->bnsec) && (now.bsec || now.bnsec);
	return now.ino == id->ino && (!known || (now.bsec == id->bsec && now.bnsec == id->bnsec));
}

static int has_file(int fd, const char *name, const struct attach_fid *id)
{
	return same_file(fd, name, id) == 1;
}

/* Moves one file from attach/ (outfd) to files/ (filesfd). 1 when it
 * moved, 0 when there was nothing to move, or -errno. */
static int move_one(int outfd, int filesfd, const char *from, const char *to,
		    const struct attach_fid *id)
{
	int r;

	if (id->ino && has_file(filesfd, to, id))
		return 0; /* moved before */
	r = same_file(outfd, from, id);
	if (r < 0)
		return r == -ENOENT ? 0 : r; /* moved before (or removed) */
	if (id->ino && r == 0)
		return 0; /* moved before; a new file took the name in attach/ */
	for (unsigned k = 0; k < 100000; k++) {
		char cand[NAME_MAX + 1];
		int ret = candidate(to, k, cand);
		if (ret)
			return ret;
		if (renameat2(outfd, from, filesfd, cand, RENAME_NOREPLACE) == 0)
			return 1;
		if (errno != EEXIST)
			return -errno;
		if (!id->ino)
			return 0; /* no identity recorded: a taken name means moved */
		/* The name was taken after it was chosen (the reference finds
		 * the file by its inode: attach_add_refs). */
	}
	return -EEXIST;
}

/* attach/ and files/ (made when missing), opened without following a
 * symlink: a planted one is never renamed through. */
static int open_dirs(int dirfd, int *outfd, int *filesfd)
{
	*outfd = fsio_open(dirfd, ATTACH_OUTBOX, O_RDONLY | O_DIRECTORY, 0);
	if (*outfd < 0)
		return *outfd == -ENOENT ? 0 : *outfd;
	if (mkdirat(dirfd, ATTACH_FILES, 0755) == 0 && fsync(dirfd) < 0) {
		int ret = -errno;
		close(*outfd);
		return ret;
	}
	*filesfd = fsio_open(dirfd, ATTACH_FILES, O_RDONLY | O_DIRECTORY, 0);
	if (*filesfd < 0) {
		close(*outfd);
		return *filesfd;
	}
	return 0;
}

int attach_move(int dirfd, const char *json)
{
	cJSON *a = json ? cJSON_Parse(json) : NULL, *pair;
	int ret = 0, moved = 0, outfd = -1, filesfd = -1;

	if (!cJSON_IsArray(a)) {
		cJSON_Delete(a);
		return json ? -EINVAL : 0;
	}
	ret = open_dirs(dirfd, &outfd, &filesfd);
	cJSON_ArrayForEach(pair, a)
	{
		const char *from, *to;
		struct attach_fid id;
		int r;
		if (ret || outfd < 0 || pair_names(pair, &from, &to, &id) != 0)
			continue;
		r = move_one(outfd, filesfd, from, to, &id);
		if (r > 0)
			moved = 1;
		else if (r < 0)
			ret = r;
	}
	cJSON_Delete(a);
	if (moved) {
		int r1 = fsync(filesfd) < 0 ? -errno : 0;
		int r2 = fsync(outfd) < 0 ? -errno : 0;
		if (!ret)
			ret = r1 ? r1 : r2;
	}
	if (outfd >= 0)
		close(outfd);
	if (filesfd >= 0)
		close(filesfd);
	if (ret)
		log_warnx("moving attachments to files/: %s", strerror(-ret));
	return ret;
}

/* The name in files/ (filesfd) of the file known as id: to when it is
 * there, else the entry that is it (its name was taken while it moved),
 * else to (gone: sending will say so). */
static const char *find_moved(int filesfd, const char *to, const struct attach_fid *id,
			      char name[NAME_MAX + 1])
{
	struct dirent *de;
	DIR *dp;
	int fd;

	if (!id->ino || filesfd < 0 || has_file(filesfd, to, id))
		return to;
	fd = dup(filesfd);
	dp = fd >= 0 ? fdopendir(fd) : NULL;
	if (!dp) {
		if (fd >= 0)
			close(fd);
		return to;
	}
	while ((de = readdir(dp)))
		if (de->d_name[0] != '.' && has_file(filesfd, de->d_name, id)) {
			snprintf(name, NAME_MAX + 1, "%s", de->d_name);
			closedir(dp);
			return name;
		}
	closedir(dp);
	return to;
}

int attach_add_refs(int dirfd, cJSON *parts, const char *json)
{
	cJSON *a = cJSON_Parse(json), *pair;
	int ret = cJSON_IsArray(a) ? 0 : -EINVAL;
	int filesfd = fsio_open(dirfd, ATTACH_FILES, O_RDONLY | O_DIRECTORY, 0);

	cJSON_ArrayForEach(pair, a)
	{
		const char *from, *to;
		char path[NAME_MAX + 8], found[NAME_MAX + 1];
		struct attach_fid id;
		cJSON *p, *f;
		if (pair_names(pair, &from, &to, &id) != 0)
			continue;
		snprintf(path, sizeof(path), ATTACH_FILES "/%s", find_moved(filesfd, to, &id, found));
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
	if (filesfd >= 0)
		close(filesfd);
	return ret;
}

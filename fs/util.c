/* util.c - clocks and careful file I/O. */
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

int read_file_at(int dirfd, const char *path, size_t max, char **out,
		 size_t *len)
{
	struct stat st;
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	int ret = 0;
	char *data = NULL;
	size_t got = 0;

	*out = NULL;
	if (len)
		*len = 0;
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out;
	}
	if ((size_t)st.st_size > max) {
		ret = -EFBIG;
		goto out;
	}
	data = malloc((size_t)st.st_size + 1);
	if (!data) {
		ret = -ENOMEM;
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, data + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	data[got] = '\0';
	*out = data;
	data = NULL;
	if (len)
		*len = got;
out:
	free(data);
	close(fd);
	return ret;
}

int replace_file_at(int dirfd, const char *path, const void *data, size_t n)
{
	char tmp[4200];
	const char *slash = strrchr(path, '/');
	int fd, ret;

	if (slash)
		snprintf(tmp, sizeof(tmp), "%.*s/.lmsfs.tmp.%s", (int)(slash - path),
			 path, slash + 1);
	else
		snprintf(tmp, sizeof(tmp), ".lmsfs.tmp.%s", path);
	struct stat st;
	mode_t mode = fstatat(dirfd, path, &st, 0) == 0 ? (st.st_mode & 07777) : 0644;

	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	/* The replacement keeps the permissions of what it replaces. */
	fchmod(fd, mode);
	ret = write_all(fd, data, n);
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	close(fd);
	if (ret == 0 && renameat(dirfd, tmp, dirfd, path) < 0)
		ret = -errno;
	if (ret != 0) {
		unlinkat(dirfd, tmp, 0);
		return ret;
	}
	/* The rename itself must survive a power cut too. */
	{
		char parent[4200];
		int pfd;
		if (slash)
			snprintf(parent, sizeof(parent), "%.*s", (int)(slash - path), path);
		else
			snprintf(parent, sizeof(parent), ".");
		pfd = openat(dirfd, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (pfd >= 0) {
			fsync(pfd);
			close(pfd);
		}
	}
	return 0;
}

/* Length of the UTF-8 sequence at s (n bytes available), 0 if invalid,
 * -1 if valid so far but cut short. */
static int utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	int len;
	unsigned min;
	if (c == 0)
		return 0;
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		min = 0x10000;
	} else {
		return 0;
	}
	unsigned cp = c & (0x7F >> len);
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return -1;
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

size_t utf8_valid_prefix(const char *s, size_t n, int partial_ok)
{
	size_t i = 0;
	while (i < n) {
		int l = utf8_seq((const unsigned char *)s + i, n - i);
		if (l == -1)
			return partial_ok ? n : i;
		if (l == 0)
			return i;
		i += (size_t)l;
	}
	return i;
}

char *utf8_repair(const char *s, size_t n)
{
	char *out = malloc(n * 3 + 1), *o = out;
	size_t i = 0;
	if (!out)
		return NULL;
	while (i < n) {
		int l = utf8_seq((const unsigned char *)s + i, n - i);
		if (l <= 0) {
			memcpy(o, "\xEF\xBF\xBD", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(o, s + i, (size_t)l);
		o += l;
		i += (size_t)l;
	}
	*o = '\0';
	return out;
}

char *json_text_file(const cJSON *v)
{
	char *s = cJSON_Print(v), *t;
	size_t n;
	if (!s)
		return NULL;
	n = strlen(s);
	t = realloc(s, n + 2);
	if (!t) {
		free(s);
		return NULL;
	}
	memcpy(t + n, "\n", 2);
	return t;
}

char *read_setting_at(int dirfd, const char *name)
{
	char *data = NULL, *t;
	size_t len;
	if (read_file_at(dirfd, name, 1u << 20, &data, &len) != 0)
		return NULL;
	t = trim(data);
	if (!*t) {
		free(data);
		return NULL;
	}
	memmove(data, t, strlen(t) + 1);
	return data;
}

int append_lines_at(int dirfd, const char *path, const char *data, size_t n,
		    int create, int sync)
{
	int fd = openat(dirfd, path, O_RDWR | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0),
			0644);
	struct stat st;
	char last;
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (n && data[0] != '\n' && fstat(fd, &st) == 0 && st.st_size > 0 &&
	    pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n')
		ret = write_all(fd, "\n", 1);
	if (ret == 0)
		ret = write_all(fd, data, n);
	if (ret == 0 && n && data[n - 1] != '\n')
		ret = write_all(fd, "\n", 1);
	if (ret == 0 && sync && fdatasync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

char *trim(char *s)
{
	char *e;
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
			 e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/* config_file.c - where settings come from besides -o options: the INI
 * file (lmsfs.conf, read with libinih, line numbers in every error), the
 * environment (LMSTUDIO_URL, LMSTUDIO_TIMEOUT, LMSFS_<KEY>), and the file
 * that holds the API key (api_key_file). */
#include "config.h"
#include "config_int.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest line accepted in a config file (a long system_prompt). */
#define CONFIG_LINE_MAX (64 * 1024)

/* ---- the INI file ------------------------------------------------------ */

/* inih is told the line number only through its return value, so the
 * reader counts lines itself; the handler then knows where it is. */
struct ini_ctx {
	struct config *c;
	FILE *f;
	int lineno;	 /* line being read, 1-based */
	int at_bol;	 /* the next read starts a new line */
	size_t line_len; /* bytes of the current line so far */
	int too_long;	 /* line number of a line over CONFIG_LINE_MAX */
	int bad_line;	 /* line number of the first bad key or value */
	int rc;		 /* config_set's result for bad_line */
	char msg[512];
};

static char *conf_reader(char *str, int num, void *stream)
{
	struct ini_ctx *x = stream;
	size_t n;

	if (x->too_long)
		return NULL;
	if (x->at_bol) {
		x->lineno++;
		x->line_len = 0;
	}
	if (!fgets(str, num, x->f))
		return NULL;
	n = strlen(str);
	x->at_bol = n && str[n - 1] == '\n';
	x->line_len += n;
	if (x->line_len - (size_t)x->at_bol > CONFIG_LINE_MAX - 4) {
		x->too_long = x->lineno;
		return NULL;
	}
	return str;
}

static int ini_handler_fn(void *user, const char *section, const char *name,
			  const char *value)
{
	struct ini_ctx *x = user;
	char *v;
	size_t n;
	int rc;

	(void)section; /* sections only group keys for the reader */
	if (x->too_long || x->bad_line)
		return 0;
	/* "key = "quoted value"" keeps blanks at either end. */
	n = strlen(value);
	if (n >= 2 && value[0] == '"' && value[n - 1] == '"')
		v = strndup(value + 1, n - 2);
	else
		v = strdup(value);
	if (!v) {
		rc = -ENOMEM;
		snprintf(x->msg, sizeof(x->msg), "out of memory");
	} else {
		rc = config_set(x->c, name, v, x->msg, sizeof(x->msg));
		free(v);
	}
	if (rc) {
		x->bad_line = x->lineno;
		x->rc = rc;
		return 0;
	}
	return 1;
}

int config_load_file(struct config *c, const char *path, char *err,
		     size_t errlen)
{
	struct ini_ctx x;
	struct stat st;
	int rc, r;

	memset(&x, 0, sizeof(x));
	x.c = c;
	x.at_bol = 1;
	x.f = fopen(path, "re");
	if (!x.f) {
		rc = -errno;
		return config_seterr(err, errlen, rc, "%s: %s", path, strerror(-rc));
	}
	if (fstat(fileno(x.f), &st) == 0 && S_ISDIR(st.st_mode)) {
		rc = config_seterr(err, errlen, -EISDIR, "%s: %s", path,
			    strerror(EISDIR));
		goto out;
	}

	/* A NUL byte would hide the rest of its line from the line reader:
	 * refuse the file instead of reading half a line. */
	{
		int ch, line = 1;
		while ((ch = getc(x.f)) != EOF) {
			if (ch == '\n')
				line++;
			else if (ch == '\0') {
				rc = config_seterr(err, errlen, -EINVAL,
					    "%s:%d: contains a NUL byte", path, line);
				goto out;
			}
		}
		if (ferror(x.f) || fseek(x.f, 0, SEEK_SET) != 0) {
			rc = config_seterr(err, errlen, -EIO, "%s: %s", path, strerror(EIO));
			goto out;
		}
	}

	/* Debian's libinih reads these at run time. Lines may be long (a
	 * system prompt), indented lines are plain lines (not continuations),
	 * and parsing stops at the first error so the line numbers agree.
	 * Config files are read at startup, before any thread runs. */
	ini_use_stack = false;
	ini_allow_realloc = true;
	ini_max_line = CONFIG_LINE_MAX;
	ini_allow_multiline = false;
	ini_stop_on_first_error = true;
	ini_allow_no_value = false;

	errno = 0;
	r = ini_parse_stream(conf_reader, &x, ini_handler_fn, &x);
	if (ferror(x.f)) {
		rc = errno ? -errno : -EIO;
		rc = config_seterr(err, errlen, rc, "%s: %s", path, strerror(-rc));
	} else if (x.too_long) {
		rc = config_seterr(err, errlen, -EINVAL,
			    "%s:%d: line too long (over %d bytes)", path,
			    x.too_long, CONFIG_LINE_MAX - 4);
	} else if (x.bad_line) {
		rc = config_seterr(err, errlen, x.rc == -ENOMEM ? -ENOMEM : -EINVAL,
			    "%s:%d: %s", path, x.bad_line, x.msg);
	} else if (r == -2) {
		rc = config_seterr(err, errlen, -ENOMEM, "%s: out of memory", path);
	} else if (r != 0) {
		rc = config_seterr(err, errlen, -EINVAL,
			    "%s:%d: syntax error (expected 'key = value', a "
			    "[section] or a # comment)",
			    path, r);
	} else {
		rc = 0;
	}
out:
	fclose(x.f);
	return rc;
}

/* ---- the environment --------------------------------------------------- */

int config_load_env(struct config *c, char *err, size_t errlen)
{
	const struct key *tk = config_key_find("timeout");
	char var[64], msg[512];
	const char *v;
	size_t i, j;
	long ms;
	int rc;

	v = getenv("LMSTUDIO_URL");
	if (v && *v) {
		rc = config_set(c, "base_url", v, msg, sizeof(msg));
		if (rc)
			return config_seterr(err, errlen, rc, "LMSTUDIO_URL: %s", msg);
	}
	v = getenv("LMSTUDIO_TIMEOUT");
	if (v && *v) {
		/* Milliseconds, as other LM Studio clients read it. */
		if (config_parse_duration(v, 1, &ms))
			return config_seterr(err, errlen, -EINVAL,
				      "LMSTUDIO_TIMEOUT: '%.64s' is not a "
				      "number of milliseconds",
				      v);
		snprintf(var, sizeof(var), "%ld ms", ms);
		rc = config_key_range(tk, (double)ms, var, msg, sizeof(msg));
		if (rc)
			return config_seterr(err, errlen, rc, "LMSTUDIO_TIMEOUT: %s",
				      msg);
		c->timeout_ms = ms;
	}
	for (i = 0; i < config_nkeys; i++) {
		snprintf(var, sizeof(var), "LMSFS_%s", config_keys[i].name);
		for (j = 6; var[j]; j++)
			var[j] = (char)toupper((unsigned char)var[j]);
		v = getenv(var);
		if (!v)
			continue;
		rc = config_set(c, config_keys[i].name, v, msg, sizeof(msg));
		if (rc)
			return config_seterr(err, errlen, rc, "%s: %s", var, msg);
	}
	return 0;
}

/* ---- the API key ------------------------------------------------------- */

#define KEY_FILE_MAX 4096

/* Reads the key file into a malloc'd, trimmed string. */
static int read_key_file(const char *path, char **out, char *err, size_t errlen)
{
	char buf[KEY_FILE_MAX + 1];
	struct stat st;
	size_t n = 0, a, b;
	ssize_t r;
	int fd, rc = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return config_seterr(err, errlen, -errno, "api_key_file %s: %s", path,
				     strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = config_seterr(err, errlen, -errno, "api_key_file %s: %s", path,
				   strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = config_seterr(err, errlen, -EINVAL, "api_key_file %s: not a regular file",
				   path);
		goto out;
	}
	if (st.st_mode & (S_IROTH | S_IWOTH)) {
		rc = config_seterr(err, errlen, -EPERM,
				   "api_key_file %s: other users may read or write it (mode "
				   "%04o); make it private: chmod o-rwx %s",
				   path, (unsigned)(st.st_mode & 07777), path);
		goto out;
	}
	while (n < sizeof(buf) && (r = read(fd, buf + n, sizeof(buf) - n)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = config_seterr(err, errlen, -errno, "api_key_file %s: %s", path,
					   strerror(errno));
			goto out;
		}
		n += (size_t)r;
	}
	if (n > KEY_FILE_MAX) {
		rc = config_seterr(err, errlen, -EFBIG,
				   "api_key_file %s: larger than %d bytes: not an API key",
				   path, KEY_FILE_MAX);
		goto out;
	}
	for (a = 0; a < n && isspace((unsigned char)buf[a]); a++)
		;
	for (b = n; b > a && isspace((unsigned char)buf[b - 1]); b--)
		;
	if (a == b) {
		rc = config_seterr(err, errlen, -EINVAL, "api_key_file %s: is empty", path);
		goto out;
	}
	if (!(*out = strndup(buf + a, b - a)))
		rc = -ENOMEM;
out:
	explicit_bzero(buf, sizeof(buf));
	close(fd);
	return rc;
}

int config_load_api_key(struct config *c, char *err, size_t errlen)
{
	char *key = NULL, *path;
	int rc;

	if (c->api_key_file) {
		if (!(path = config_expand_home(c->api_key_file)))
			return -ENOMEM;
		rc = read_key_file(path, &key, err, errlen);
		free(path);
		if (rc)
			return rc;
		free(c->api_key);
		c->api_key = key;
	}
	/* It goes into a header line: a line break would end it. */
	for (const char *p = c->api_key; p && *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return config_seterr(err, errlen, -EINVAL,
					     "%s: the API key holds a line break or another "
					     "control character",
					     c->api_key_file ? c->api_key_file : "api_key");
	return 0;
}

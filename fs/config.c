/* config.c - lmsfs.conf, the environment and -o options into one struct.
 *
 * One table lists every key: its name (the text form used in the file, in
 * LMSFS_<KEY> and in -o), how its value is parsed, where it lives in struct
 * config, and its allowed range. config_set() and config_check() both work
 * from that table, so a key cannot be settable but unchecked or the reverse.
 *
 * Durations: a plain number is seconds, except for initial_backoff,
 * max_backoff and mock_delay, where a plain number is milliseconds (these
 * are small by nature: "1000" reads better than "1"). Unit suffixes (ms, s,
 * m) work everywhere.
 *
 * Numbers are parsed by hand rather than with strtod() so that a locale set
 * elsewhere in the process cannot turn "0.7" into an error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU strerror_r, asprintf, strndup */
#endif
#include "config.h"
#include "config_int.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>


#define OFF(f) offsetof(struct config, f)
#define INF INFINITY

const struct key config_keys[] = {
    /* server */
    {"base_url", K_URL, OFF(base_url), 0, 0, 0, 0},
    {"api_key", K_OPTSTR, OFF(api_key), 0, 0, 0, 0},
    {"api_key_file", K_OPTSTR, OFF(api_key_file), 0, 0, 0, 0},
    {"provider", K_PROVIDER, OFF(provider), 0, 0, 0, 0},
    {"default_model", K_OPTSTR, OFF(default_model), 0, 0, 0, 0},
    {"allowed_models", K_LIST, OFF(allowed_models), 0, 0, 0, 0},
    /* http */
    {"timeout", K_DUR_S, OFF(timeout_ms), 0, 1, INF, 0},
    {"connect_timeout", K_DUR_S, OFF(connect_timeout_ms), 0, 1, INF, 0},
    {"keep_alive", K_DUR_S, OFF(keep_alive_ms), 0, 0, INF, 0},
    {"max_idle_connections", K_LONG, OFF(max_idle_connections), 0, 0, 1000, 0},
    /* request defaults */
    {"temperature", K_DOUBLE, OFF(temperature), 0, 0, 2, 0},
    {"max_tokens", K_LONG, OFF(max_tokens), 0, -1, INF, F_NOZERO},
    {"top_p", K_OPTDOUBLE, OFF(top_p), OFF(has_top_p), 0, 1, 0},
    {"frequency_penalty", K_OPTDOUBLE, OFF(frequency_penalty),
     OFF(has_frequency_penalty), -2, 2, 0},
    {"presence_penalty", K_OPTDOUBLE, OFF(presence_penalty),
     OFF(has_presence_penalty), -2, 2, 0},
    {"stop", K_OPTSTR, OFF(stop), 0, 0, 0, 0},
    {"seed", K_OPTLONG, OFF(seed), OFF(has_seed), -INF, INF, 0},
    {"system_prompt", K_OPTSTR, OFF(system_prompt), 0, 0, 0, 0},
    {"stream", K_BOOL, OFF(stream), 0, 0, 1, 0},
    /* reasoning */
    {"send_reasoning", K_BOOL, OFF(send_reasoning), 0, 0, 1, 0},
    {"split_think_tags", K_BOOL, OFF(split_think_tags), 0, 0, 1, 0},
    /* resilience */
    {"max_retries", K_INT, OFF(max_retries), 0, 0, 100, 0},
    {"max_retries_stream", K_INT, OFF(max_retries_stream), 0, 0, 100, 0},
    {"initial_backoff", K_DUR_MS, OFF(initial_backoff_ms), 0, 0, INF, 0},
    {"max_backoff", K_DUR_MS, OFF(max_backoff_ms), 0, 0, INF, 0},
    {"breaker_threshold", K_INT, OFF(breaker_threshold), 0, 1, 1000000, 0},
    {"breaker_reset", K_DUR_S, OFF(breaker_reset_ms), 0, 1, INF, 0},
    /* tools */
    {"tool_timeout", K_DUR_S, OFF(tool_timeout_ms), 0, 1, INF, 0},
    {"tool_output_max", K_SIZE, OFF(tool_output_max), 0, 1, INF, 0},
    {"max_tool_rounds", K_INT, OFF(max_tool_rounds), 0, 1, 1000, 0},
    {"tool_api", K_TOOLAPI, OFF(tool_api), 0, 0, 0, 0},
    /* conversations */
    {"max_prompt_bytes", K_SIZE, OFF(max_prompt_bytes), 0, 1, INF, 0},
    {"max_queue", K_INT, OFF(max_queue), 0, 1, 100000, 0},
    {"max_active", K_INT, OFF(max_active), 0, 1, 100000, 0},
    {"models_ttl", K_DUR_S, OFF(models_ttl_ms), 0, 0, INF, 0},
    {"max_attach_bytes", K_SIZE, OFF(max_attach_bytes), 0, 1, INF, 0},
    {"max_attach_request_bytes", K_SIZE, OFF(max_attach_request_bytes), 0, 1, INF, 0},
    /* mock provider */
    {"mock_delay", K_DUR_MS, OFF(mock_delay_ms), 0, 0, INF, 0},
    /* daemon */
    {"state_dir", K_PATH, OFF(state_dir), 0, 0, 0, 0},
    {"log_level", K_LOGLEVEL, OFF(log_level), 0, 0, 0, 0},
};

const size_t config_nkeys = sizeof(config_keys) / sizeof(config_keys[0]);

static const char *const provider_names[] = {"lmstudio", "openai", "mock"};
static const char *const tool_api_names[] = {"tools", "functions"};

int config_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

const struct key *config_key_find(const char *name)
{
	size_t i;

	if (!name)
		return NULL;
	for (i = 0; i < config_nkeys; i++)
		if (strcmp(config_keys[i].name, name) == 0)
			return &config_keys[i];
	return NULL;
}

#define FIELD(c, k, type) ((type *)((char *)(c) + (k)->off))
#define CFIELD(c, k, type) ((const type *)((const char *)(c) + (k)->off))

/* ---- ranges ------------------------------------------------------------ */

/* Checks v against the key's range; text is the value as the user wrote it
 * (quoted) or as stored (unquoted). */
int config_key_range(const struct key *k, double v, const char *text, char *err,
		     size_t errlen)
{
	int is_amount =
	    k->type == K_DUR_S || k->type == K_DUR_MS || k->type == K_SIZE;

	if (v >= k->min && v <= k->max && !((k->flags & F_NOZERO) && v == 0))
		return 0;
	if (k->flags & F_NOZERO)
		return config_seterr(err, errlen, -EINVAL,
			      "%s: %s must be -1 (no limit) or greater than 0",
			      k->name, text);
	if (isfinite(k->min) && isfinite(k->max))
		return config_seterr(err, errlen, -EINVAL,
			      "%s: %s must be between %g and %g", k->name, text,
			      k->min, k->max);
	if (is_amount && k->min == 1)
		return config_seterr(err, errlen, -EINVAL,
			      "%s: %s must be greater than 0", k->name, text);
	if (k->min == 0)
		return config_seterr(err, errlen, -EINVAL,
			      "%s: %s must not be negative", k->name, text);
	return config_seterr(err, errlen, -EINVAL, "%s: %s must be at least %g",
		      k->name, text, k->min);
}

/* Checks a base URL: http:// or https://, a host, no blanks. */
static int url_check(const char *url, char *err, size_t errlen)
{
	const char *host;
	size_t i;

	if (!url || !*url)
		return config_seterr(err, errlen, -EINVAL, "base_url: not set");
	for (i = 0; url[i]; i++)
		if ((unsigned char)url[i] <= ' ' || url[i] == 0x7f)
			return config_seterr(err, errlen, -EINVAL,
				      "base_url: '%.200s' contains a blank or "
				      "control character",
				      url);
	if (strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else if (strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else
		return config_seterr(err, errlen, -EINVAL,
			      "base_url: '%.200s' must start with http:// or "
			      "https://",
			      url);
	if (*host == '\0' || *host == '/' || *host == ':' || *host == '?' ||
	    *host == '#')
		return config_seterr(err, errlen, -EINVAL,
			      "base_url: '%.200s' has no host name", url);
	return 0;
}

/* ---- setting ----------------------------------------------------------- */

static void replace_str(char **field, char *val)
{
	free(*field);
	*field = val;
}

static int set_string(struct config *c, const struct key *k, const char *value,
		      char *err, size_t errlen)
{
	char *v = NULL;
	size_t n;
	int rc;

	switch (k->type) {
	case K_OPTSTR:
		if (*value && !(v = strdup(value)))
			return -ENOMEM;
		break;
	case K_PATH:
		if (!*value)
			return config_seterr(err, errlen, -EINVAL,
				      "%s: must not be empty", k->name);
		if (!(v = config_expand_home(value)))
			return -ENOMEM;
		break;
	case K_URL:
		/* Checked before the trailing '/' go, so that "http://"
		 * is not cut down to "http:". A valid URL has a host, so
		 * the cutting stops there. */
		rc = url_check(value, err, errlen);
		if (rc)
			return rc;
		if (!(v = strdup(value)))
			return -ENOMEM;
		n = strlen(v);
		while (n && v[n - 1] == '/')
			v[--n] = '\0';
		break;
	default:
		return -EINVAL;
	}
	replace_str(FIELD(c, k, char *), v);
	return 0;
}

static int set_number(struct config *c, const struct key *k, const char *value,
		      char *err, size_t errlen)
{
	char shown[CONFIG_NUM_TEXT_MAX + 8];
	const char *what = NULL, *hint = "";
	double d = 0;
	long l = 0;
	int b, rc;

	snprintf(shown, sizeof(shown), "'%.*s'", CONFIG_NUM_TEXT_MAX, value);
	switch (k->type) {
	case K_BOOL:
		if (config_parse_bool(value, &b))
			return config_seterr(
			    err, errlen, -EINVAL,
			    "%s: %s is not a boolean (use true/false, "
			    "yes/no, on/off, 1/0)",
			    k->name, shown);
		*FIELD(c, k, int) = b;
		return 0;
	case K_INT:
	case K_LONG:
	case K_OPTLONG:
		what = "an integer";
		rc = config_parse_long(value, &l);
		d = (double)l;
		break;
	case K_DOUBLE:
	case K_OPTDOUBLE:
		what = "a number";
		rc = config_parse_double(value, &d);
		break;
	case K_DUR_S:
	case K_DUR_MS:
		what = "a duration";
		hint = k->type == K_DUR_S ? " (use e.g. 30, 1.5s, 500ms)"
					  : " (use e.g. 1000, 1.5s, 500ms)";
		rc = config_parse_duration(value, k->type == K_DUR_S ? 1000 : 1, &l);
		d = (double)l;
		break;
	case K_SIZE:
		what = "a size";
		hint = " (use e.g. 65536, 64K, 1M)";
		rc = config_parse_size(value, &l);
		d = (double)l;
		break;
	default:
		return -EINVAL;
	}
	if (rc) {
		const char *t = value;
		while (isspace((unsigned char)*t))
			t++;
		if (*t == '-' && (k->type == K_DUR_S || k->type == K_DUR_MS ||
				  k->type == K_SIZE))
			return config_seterr(err, errlen, -EINVAL,
				      "%s: %s must not be negative", k->name,
				      shown);
		return config_seterr(err, errlen, -EINVAL, "%s: %s is not %s%s",
			      k->name, shown, what, hint);
	}
	rc = config_key_range(k, d, shown, err, errlen);
	if (rc)
		return rc;
	switch (k->type) {
	case K_INT:
		*FIELD(c, k, int) = (int)l;
		break;
	case K_OPTLONG:
		*(int *)((char *)c + k->has_off) = 1;
		/* fall through */
	case K_LONG:
	case K_DUR_S:
	case K_DUR_MS:
	case K_SIZE:
		*FIELD(c, k, long) = l;
		break;
	case K_OPTDOUBLE:
		*(int *)((char *)c + k->has_off) = 1;
		/* fall through */
	default:
		*FIELD(c, k, double) = d;
		break;
	}
	return 0;
}

static int key_set(struct config *c, const struct key *k, const char *value,
		   char *err, size_t errlen)
{
	char **list;
	size_t n;
	int i, rc;

	switch (k->type) {
	case K_URL:
	case K_OPTSTR:
	case K_PATH:
		return set_string(c, k, value, err, errlen);
	case K_LIST:
		rc = config_list_split(value, &list, &n);
		if (rc)
			return rc;
		config_list_free(c->allowed_models);
		c->allowed_models = list;
		c->n_allowed = n;
		return 0;
	case K_PROVIDER:
		i = config_parse_choice(value, provider_names, 3);
		if (i < 0)
			return config_seterr(err, errlen, -EINVAL,
				      "provider: '%.64s' is not one of "
				      "lmstudio, openai, mock",
				      value);
		c->provider = (enum provider)i;
		return 0;
	case K_TOOLAPI:
		i = config_parse_choice(value, tool_api_names, 2);
		if (i < 0)
			return config_seterr(err, errlen, -EINVAL,
				      "tool_api: '%.64s' is not one of tools, "
				      "functions",
				      value);
		c->tool_api = (enum tool_api)i;
		return 0;
	case K_LOGLEVEL:
		i = log_level_parse(value);
		if (i < 0)
			return config_seterr(err, errlen, -EINVAL,
				      "log_level: '%.64s' is not one of error, "
				      "warn, info, debug",
				      value);
		c->log_level = i;
		return 0;
	case K_OPTLONG:
	case K_OPTDOUBLE: {
		const char *t = value;
		while (isspace((unsigned char)*t))
			t++;
		if (*t == '\0') {
			*(int *)((char *)c + k->has_off) = 0;
			return 0;
		}
		return set_number(c, k, value, err, errlen);
	}
	default:
		return set_number(c, k, value, err, errlen);
	}
}

int config_set(struct config *c, const char *key, const char *value, char *err,
	       size_t errlen)
{
	const struct key *k = config_key_find(key);

	if (!k)
		return config_seterr(err, errlen, -ENOENT, "unknown key '%.64s'",
			      key ? key : "");
	int rc;

	/* "-o stream" without a value means stream=true. */
	if (!value)
		value = k->type == K_BOOL ? "true" : "";
	rc = key_set(c, k, value, err, errlen);
	/* A key and a file holding one replace each other. */
	if (rc == 0 && k->off == OFF(api_key))
		replace_str(&c->api_key_file, NULL);
	else if (rc == 0 && k->off == OFF(api_key_file))
		replace_str(&c->api_key, NULL);
	return rc;
}

int config_is_key(const char *key) { return config_key_find(key) != NULL; }

/* ---- defaults ---------------------------------------------------------- */

static char *default_state_dir(void)
{
	const char *xdg = getenv("XDG_DATA_HOME");
	const char *home = getenv("HOME");
	char *out;

	/* The XDG spec says relative paths in these variables are invalid. */
	if (xdg && xdg[0] == '/') {
		if (asprintf(&out, "%s/lmsfs", xdg) < 0)
			return NULL;
		return out;
	}
	if (home && *home) {
		if (asprintf(&out, "%s/.local/share/lmsfs", home) < 0)
			return NULL;
		return out;
	}
	return NULL; /* config_check reports it */
}

void config_init(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->base_url = strdup("http://localhost:1234");
	c->provider = PROVIDER_LMSTUDIO;
	c->timeout_ms = 60000;
	c->connect_timeout_ms = 10000;
	c->keep_alive_ms = 30000;
	c->max_idle_connections = 10;
	c->temperature = 0.7;
	c->max_tokens = 1024;
	c->system_prompt = strdup("You are a helpful assistant.");
	c->stream = 1;
	c->max_retries = 3;
	c->max_retries_stream = 2;
	c->initial_backoff_ms = 1000;
	c->max_backoff_ms = 30000;
	c->breaker_threshold = 5;
	c->breaker_reset_ms = 30000;
	c->tool_timeout_ms = 30000;
	c->tool_output_max = 64 * 1024;
	c->max_tool_rounds = 8;
	c->tool_api = TOOL_API_TOOLS;
	c->max_prompt_bytes = 1024 * 1024;
	c->max_queue = 16;
	c->max_active = 32;
	c->models_ttl_ms = 2000;
	c->max_attach_bytes = 32l << 20;
	c->max_attach_request_bytes = 64l << 20;
	c->mock_delay_ms = 20;
	c->state_dir = default_state_dir();
	c->log_level = LOG_LVL_INFO;
}

void config_free(struct config *c)
{
	if (!c)
		return;
	free(c->base_url);
	free(c->api_key);
	free(c->api_key_file);
	free(c->default_model);
	config_list_free(c->allowed_models);
	free(c->stop);
	free(c->system_prompt);
	free(c->state_dir);
	c->base_url = c->api_key = c->api_key_file = c->default_model = NULL;
	c->stop = c->system_prompt = c->state_dir = NULL;
	c->allowed_models = NULL;
	c->n_allowed = 0;
}

char *config_default_path(void)
{
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	char *p = NULL;

	if (xdg && xdg[0] == '/') {
		if (asprintf(&p, "%s/lmsfs/lmsfs.conf", xdg) < 0)
			p = NULL;
	} else if (home && *home) {
		if (asprintf(&p, "%s/.config/lmsfs/lmsfs.conf", home) < 0)
			p = NULL;
	}
	if (p && access(p, F_OK) == 0)
		return p;
	free(p);
	return strdup("/etc/lmsfs.conf");
}

/* ---- cross-field checks ------------------------------------------------ */

static int key_check(const struct config *c, const struct key *k, char *err,
		     size_t errlen)
{
	char text[64];
	double v;

	switch (k->type) {
	case K_INT:
		v = *CFIELD(c, k, int);
		snprintf(text, sizeof(text), "%d", *CFIELD(c, k, int));
		break;
	case K_LONG:
	case K_SIZE:
		v = (double)*CFIELD(c, k, long);
		snprintf(text, sizeof(text), "%ld", *CFIELD(c, k, long));
		break;
	case K_DUR_S:
	case K_DUR_MS:
		v = (double)*CFIELD(c, k, long);
		snprintf(text, sizeof(text), "%ld ms", *CFIELD(c, k, long));
		break;
	case K_OPTDOUBLE:
		if (!*(const int *)((const char *)c + k->has_off))
			return 0;
		/* fall through */
	case K_DOUBLE:
		v = *CFIELD(c, k, double);
		snprintf(text, sizeof(text), "%g", v);
		break;
	default:
		return 0;
	}
	return config_key_range(k, v, text, err, errlen);
}

int config_check(const struct config *c, char *err, size_t errlen)
{
	size_t i;
	int rc;

	rc = url_check(c->base_url, err, errlen);
	if (rc)
		return rc;
	for (i = 0; i < config_nkeys; i++) {
		rc = key_check(c, &config_keys[i], err, errlen);
		if (rc)
			return rc;
	}
	if ((unsigned)c->provider > PROVIDER_MOCK)
		return config_seterr(err, errlen, -EINVAL,
			      "provider: invalid value %d", (int)c->provider);
	if ((unsigned)c->tool_api > TOOL_API_FUNCTIONS)
		return config_seterr(err, errlen, -EINVAL,
			      "tool_api: invalid value %d", (int)c->tool_api);
	if (c->log_level < LOG_LVL_ERROR || c->log_level > LOG_LVL_DEBUG)
		return config_seterr(err, errlen, -EINVAL,
			      "log_level: invalid value %d", c->log_level);
	if (c->stream != 0 && c->stream != 1)
		return config_seterr(err, errlen, -EINVAL, "stream: invalid value %d",
			      c->stream);
	if (!c->state_dir || !*c->state_dir)
		return config_seterr(err, errlen, -EINVAL,
			      "state_dir: not set (and neither XDG_DATA_HOME "
			      "nor HOME is set)");
	if (c->max_backoff_ms < c->initial_backoff_ms)
		return config_seterr(
		    err, errlen, -EINVAL,
		    "max_backoff: %ld ms is less than initial_backoff "
		    "(%ld ms)",
		    c->max_backoff_ms, c->initial_backoff_ms);
	if (c->default_model && c->allowed_models) {
		/* An allowed id, or a unique substring of one (as in a
		 * conversation's model file). */
		size_t hits = 0, exact = 0;
		for (i = 0; c->allowed_models[i]; i++) {
			if (strcmp(c->allowed_models[i], c->default_model) == 0)
				exact = 1;
			if (strcasestr(c->allowed_models[i], c->default_model))
				hits++;
		}
		if (!exact && hits != 1)
			return config_seterr(err, errlen, -EINVAL,
				      "default_model: '%.200s' %s allowed_models",
				      c->default_model,
				      hits ? "matches more than one of" : "is not in");
	}
	return 0;
}

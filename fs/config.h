/* config.h - every setting of lmsfs in one struct.
 *
 * Sources, lowest to highest precedence: built-in defaults (config_init),
 * the INI file (config_load_file), the environment (config_load_env), and
 * -o key=value (config_set). No FUSE, no curl: a pure module with unit tests.
 *
 * Durations are stored in milliseconds. In text a duration is a number of
 * seconds ("30", "0.5") or carries a unit suffix: "ms", "s", "m".
 * Sizes are bytes, with an optional K/M/G suffix (powers of 1024).
 * Booleans: true/false, yes/no, on/off, 1/0.
 * Strings owned by the struct are malloc'd; config_free releases them.
 */
#ifndef LMSFS_CONFIG_H
#define LMSFS_CONFIG_H

#include <stddef.h>

enum provider { PROVIDER_LMSTUDIO = 0, PROVIDER_OPENAI, PROVIDER_MOCK };
enum tool_api { TOOL_API_TOOLS = 0, TOOL_API_FUNCTIONS };

struct config {
	/* server */
	char *base_url;       /* "http://localhost:1234", no trailing '/' */
	char *api_key;        /* NULL: none */
	char *api_key_file;   /* NULL: none; read by config_load_api_key */
	enum provider provider;
	char *default_model;  /* NULL: none */
	char **allowed_models; /* NULL-terminated list, NULL: no restriction;
				  text form: comma or whitespace separated */
	size_t n_allowed;
	/* http */
	long timeout_ms;         /* whole request, 60 s */
	long connect_timeout_ms; /* 10 s */
	long keep_alive_ms;      /* 30 s */
	long max_idle_connections; /* 10 */
	/* request defaults */
	double temperature;      /* 0.7 */
	long max_tokens;         /* 1024; -1 = no limit */
	int has_top_p; double top_p;
	int has_frequency_penalty; double frequency_penalty;
	int has_presence_penalty; double presence_penalty;
	char *stop;              /* NULL: unset; one stop string */
	int has_seed; long seed;
	char *system_prompt;     /* "You are a helpful assistant."; NULL when
				    set empty: send no system message */
	int stream;              /* 1 */
	/* reasoning */
	int send_reasoning;      /* 0: reasoning_content stays out of requests */
	int split_think_tags;    /* 0: <think> in an answer's text is text */
	/* resilience */
	int max_retries;         /* 3 */
	int max_retries_stream;  /* 2 */
	long initial_backoff_ms; /* 1000 */
	long max_backoff_ms;     /* 30000 */
	int breaker_threshold;   /* 5 */
	long breaker_reset_ms;   /* 30 s */
	/* tools */
	long tool_timeout_ms;    /* 30 s */
	long tool_output_max;    /* 64 KiB */
	int max_tool_rounds;     /* 8 */
	enum tool_api tool_api;  /* tools */
	/* conversations */
	long max_prompt_bytes;   /* 1 MiB */
	int max_queue;           /* 16 pending prompts per conversation */
	int max_active;          /* 32 answers at once; the rest wait */
	long models_ttl_ms;      /* 2 s */
	long max_attach_bytes;   /* 32 MiB: one attached file */
	long max_attach_request_bytes; /* 64 MiB: the files one request carries */
	/* mock provider */
	long mock_delay_ms;      /* 20 ms between words */
	/* daemon */
	char *state_dir;         /* $XDG_DATA_HOME/lmsfs or ~/.local/share/lmsfs */
	int log_level;           /* enum log_level; "info" */
};

void config_init(struct config *c);
void config_free(struct config *c);

/* Sets one key from its text form. Returns 0, -ENOENT for an unknown key
 * (err: "unknown key 'x'"), -EINVAL for a bad value (err names the key and
 * says what was expected, e.g. "timeout: 'abc' is not a duration"). */
int config_set(struct config *c, const char *key, const char *value,
	       char *err, size_t errlen);

/* True when key names a setting (used to split -o options from FUSE's). */
int config_is_key(const char *key);

/* Reads an INI file: "key = value" lines, '#' or ';' comments, [sections]
 * (accepted, names ignored). Returns 0; -ENOENT when the file does not
 * exist; -EACCES/-EIO etc. when it cannot be read (err: "FILE: reason");
 * -EINVAL on a bad line, unknown key or bad value (err: "FILE:LINE: reason"). */
int config_load_file(struct config *c, const char *path, char *err,
		     size_t errlen);

/* Applies LMSFS_<KEY> (key upper-cased) for every key, and the aliases
 * LMSTUDIO_URL (base_url) and LMSTUDIO_TIMEOUT (timeout in milliseconds).
 * Aliases apply first, so LMSFS_* wins over them. Same returns as
 * config_set, err prefixed with the variable name. */
int config_load_env(struct config *c, char *err, size_t errlen);

/* The API key once every source is in: api_key_file (when set) is read,
 * its content trimmed; the file must be a regular file of at most 4 KiB
 * that other users can neither read nor write (mode o-rwx). Setting either
 * of api_key and api_key_file drops the other, so the one from the
 * stronger source wins. The key must be one line without control
 * characters. Returns 0 or -errno with err ("api_key_file PATH: reason"). */
int config_load_api_key(struct config *c, char *err, size_t errlen);

/* Cross-field checks after all sources: base_url is http:// or https:// with
 * a host, timeouts positive, etc. Returns 0 or -EINVAL with err. */
int config_check(const struct config *c, char *err, size_t errlen);

/* Default config file path: $XDG_CONFIG_HOME/lmsfs/lmsfs.conf (or
 * ~/.config/lmsfs/lmsfs.conf) if it exists, else "/etc/lmsfs.conf".
 * Returns a malloc'd string. */
char *config_default_path(void);

/* Parsers shared with other modules. Return 0 or -EINVAL. */
int config_parse_duration_ms(const char *s, long *out);
int config_parse_size(const char *s, long *out);
int config_parse_bool(const char *s, int *out);
/* Longest value text the number parsers look at. */
#define CONFIG_NUM_TEXT_MAX 64
/* A duration in ms; a plain number is in units of unit_ms. */
int config_parse_duration(const char *s, long unit_ms, long *out);
/* A whole number or a decimal, surrounding blanks allowed: 0 or -EINVAL. */
int config_parse_long(const char *s, long *out);
int config_parse_double(const char *s, double *out);
/* The index of s among names (case-insensitive), or -1. */
int config_parse_choice(const char *s, const char *const *names, int n);
/* "a, b c" as a NULL-terminated malloc'd list (NULL when empty); free it
 * with config_list_free. */
int config_list_split(const char *s, char ***list, size_t *n);
void config_list_free(char **list);
/* s with a leading "~" made $HOME (malloc'd). */
char *config_expand_home(const char *s);

#endif

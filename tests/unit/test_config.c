/* test_config.c - unit tests for lmsfs.conf, environment and -o parsing.
 *
 * argv[1] (or $LMSFS_CONF_EXAMPLE, or ./lmsfs.conf) names the example
 * lmsfs.conf shipped with the sources; loading it must change nothing.
 */
#include "check.h"
#include "config.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static char tmpdir[] = "/tmp/lmsfs-test-config-XXXXXX";
static char err[1024];

/* Removes every LMSFS_* and LMSTUDIO_* variable, so the caller's
 * environment cannot change the results. */
static void clear_env(void)
{
	char name[256];
	int again = 1;
	size_t i;

	while (again) {
		again = 0;
		for (i = 0; environ[i]; i++) {
			const char *e = environ[i];
			size_t n = strcspn(e, "=");
			if ((strncmp(e, "LMSFS_", 6) == 0 ||
			     strncmp(e, "LMSTUDIO_", 9) == 0) &&
			    n < sizeof(name)) {
				memcpy(name, e, n);
				name[n] = '\0';
				unsetenv(name);
				again = 1;
				break;
			}
		}
	}
}

static char *write_file(const char *name, const char *text)
{
	char *path;
	FILE *f;

	if (asprintf(&path, "%s/%s", tmpdir, name) < 0)
		return NULL;
	f = fopen(path, "w");
	if (f) {
		fputs(text, f);
		fclose(f);
	}
	return path;
}

static int same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Prints every field that differs; returns the number of differences. */
static int config_diff(const struct config *a, const struct config *b)
{
	int d = 0;
	size_t i;

#define DS(f)                                                                  \
	if (!same_str(a->f, b->f)) {                                           \
		printf("  %s differs: %s / %s\n", #f, a->f ? a->f : "(null)",  \
		       b->f ? b->f : "(null)");                                \
		d++;                                                           \
	}
#define DN(f)                                                                  \
	if (a->f != b->f) {                                                    \
		printf("  %s differs: %g / %g\n", #f, (double)a->f,            \
		       (double)b->f);                                          \
		d++;                                                           \
	}
	DS(base_url)
	DS(api_key) DN(provider) DS(default_model) DN(n_allowed) DN(timeout_ms)
	    DN(connect_timeout_ms) DN(keep_alive_ms) DN(max_idle_connections)
		DN(temperature) DN(max_tokens) DN(has_top_p) DN(top_p)
		    DN(has_frequency_penalty) DN(frequency_penalty) DN(
			has_presence_penalty) DN(presence_penalty) DS(stop)
			DN(has_seed) DN(seed) DS(system_prompt) DN(stream)
			    DN(max_retries) DN(max_retries_stream) DN(
				initial_backoff_ms) DN(max_backoff_ms)
				DN(breaker_threshold) DN(breaker_reset_ms) DN(
				    tool_timeout_ms) DN(tool_output_max)
				    DN(max_tool_rounds) DN(tool_api) DN(
					max_prompt_bytes) DN(max_queue)
					DN(models_ttl_ms) DN(mock_delay_ms) DS(
					    state_dir) DN(log_level)
#undef DS
#undef DN
					    if ((a->allowed_models == NULL) !=
						(b->allowed_models == NULL))
	{
		printf("  allowed_models differs\n");
		d++;
	}
	else if (a->allowed_models)
	{
		for (i = 0; i < a->n_allowed && i < b->n_allowed; i++)
			if (strcmp(a->allowed_models[i], b->allowed_models[i]))
				d++;
	}
	return d;
}

static void test_defaults(void)
{
	struct config c;

	setenv("HOME", "/home/tester", 1);
	unsetenv("XDG_DATA_HOME");
	config_init(&c);
	CHECK_STR(c.base_url, "http://localhost:1234");
	CHECK(c.api_key == NULL);
	CHECK_INT(c.provider, PROVIDER_LMSTUDIO);
	CHECK(c.default_model == NULL);
	CHECK(c.allowed_models == NULL);
	CHECK_INT(c.n_allowed, 0);
	CHECK_INT(c.timeout_ms, 60000);
	CHECK_INT(c.connect_timeout_ms, 10000);
	CHECK_INT(c.keep_alive_ms, 30000);
	CHECK_INT(c.max_idle_connections, 10);
	CHECK(c.temperature == 0.7);
	CHECK_INT(c.max_tokens, 1024);
	CHECK(!c.has_top_p && !c.has_frequency_penalty &&
	      !c.has_presence_penalty && !c.has_seed);
	CHECK(c.stop == NULL);
	CHECK_STR(c.system_prompt, "You are a helpful assistant.");
	CHECK_INT(c.stream, 1);
	CHECK_INT(c.max_retries, 3);
	CHECK_INT(c.max_retries_stream, 2);
	CHECK_INT(c.initial_backoff_ms, 1000);
	CHECK_INT(c.max_backoff_ms, 30000);
	CHECK_INT(c.breaker_threshold, 5);
	CHECK_INT(c.breaker_reset_ms, 30000);
	CHECK_INT(c.tool_timeout_ms, 30000);
	CHECK_INT(c.tool_output_max, 65536);
	CHECK_INT(c.max_tool_rounds, 8);
	CHECK_INT(c.tool_api, TOOL_API_TOOLS);
	CHECK_INT(c.max_prompt_bytes, 1048576);
	CHECK_INT(c.max_queue, 16);
	CHECK_INT(c.models_ttl_ms, 2000);
	CHECK_INT(c.mock_delay_ms, 20);
	CHECK_STR(c.state_dir, "/home/tester/.local/share/lmsfs");
	CHECK_INT(c.log_level, LOG_LVL_INFO);
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);
	config_free(&c);
	CHECK(c.base_url == NULL);
	config_free(&c); /* twice is fine */

	setenv("XDG_DATA_HOME", "/data", 1);
	config_init(&c);
	CHECK_STR(c.state_dir, "/data/lmsfs");
	config_free(&c);
	setenv("XDG_DATA_HOME", "relative", 1); /* invalid per XDG: ignored */
	config_init(&c);
	CHECK_STR(c.state_dir, "/home/tester/.local/share/lmsfs");
	config_free(&c);
	unsetenv("XDG_DATA_HOME");
}

static void test_parsers(void)
{
	long v = -7;
	int b = -1;

	CHECK_INT(config_parse_duration_ms("30", &v), 0);
	CHECK_INT(v, 30000);
	CHECK_INT(config_parse_duration_ms("1.5s", &v), 0);
	CHECK_INT(v, 1500);
	CHECK_INT(config_parse_duration_ms("500ms", &v), 0);
	CHECK_INT(v, 500);
	CHECK_INT(config_parse_duration_ms("2m", &v), 0);
	CHECK_INT(v, 120000);
	CHECK_INT(config_parse_duration_ms("0.5", &v), 0);
	CHECK_INT(v, 500);
	CHECK_INT(config_parse_duration_ms(".25", &v), 0);
	CHECK_INT(v, 250);
	CHECK_INT(config_parse_duration_ms("5.", &v), 0);
	CHECK_INT(v, 5000);
	CHECK_INT(config_parse_duration_ms(" 10 s ", &v), 0);
	CHECK_INT(v, 10000);
	CHECK_INT(config_parse_duration_ms("0", &v), 0);
	CHECK_INT(v, 0);
	CHECK_INT(config_parse_duration_ms("1.0005s", &v), 0);
	CHECK_INT(v, 1001);
	CHECK_INT(config_parse_duration_ms("100MS", &v), 0);
	CHECK_INT(v, 100);
	v = 99;
	CHECK_INT(config_parse_duration_ms("abc", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("-5", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("+5", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("5h", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("5 sec", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("1.2.3", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("1e3", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("0x10", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms(".", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("nan", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("inf", &v), -EINVAL);
	CHECK_INT(config_parse_duration_ms("99999999999999999999", &v),
		  -EINVAL);
	CHECK_INT(config_parse_duration_ms(NULL, &v), -EINVAL);
	CHECK_INT(v, 99);

	CHECK_INT(config_parse_size("100", &v), 0);
	CHECK_INT(v, 100);
	CHECK_INT(config_parse_size("64K", &v), 0);
	CHECK_INT(v, 65536);
	CHECK_INT(config_parse_size("64k", &v), 0);
	CHECK_INT(v, 65536);
	CHECK_INT(config_parse_size("1M", &v), 0);
	CHECK_INT(v, 1048576);
	CHECK_INT(config_parse_size("2G", &v), 0);
	CHECK_INT(v, 2147483648L);
	CHECK_INT(config_parse_size("1.5K", &v), 0);
	CHECK_INT(v, 1536);
	CHECK_INT(config_parse_size("10KB", &v), 0);
	CHECK_INT(v, 10240);
	CHECK_INT(config_parse_size("10KiB", &v), 0);
	CHECK_INT(v, 10240);
	CHECK_INT(config_parse_size("5B", &v), 0);
	CHECK_INT(v, 5);
	CHECK_INT(config_parse_size(" 3 M ", &v), 0);
	CHECK_INT(v, 3145728);
	CHECK_INT(config_parse_size("x", &v), -EINVAL);
	CHECK_INT(config_parse_size("-1", &v), -EINVAL);
	CHECK_INT(config_parse_size("1T", &v), -EINVAL);
	CHECK_INT(config_parse_size("1KK", &v), -EINVAL);
	CHECK_INT(config_parse_size("1BB", &v), -EINVAL);
	CHECK_INT(config_parse_size("", &v), -EINVAL);

	CHECK_INT(config_parse_bool("true", &b), 0);
	CHECK_INT(b, 1);
	CHECK_INT(config_parse_bool("no", &b), 0);
	CHECK_INT(b, 0);
	CHECK_INT(config_parse_bool("ON", &b), 0);
	CHECK_INT(b, 1);
	CHECK_INT(config_parse_bool("off", &b), 0);
	CHECK_INT(b, 0);
	CHECK_INT(config_parse_bool("1", &b), 0);
	CHECK_INT(b, 1);
	CHECK_INT(config_parse_bool(" 0 ", &b), 0);
	CHECK_INT(b, 0);
	CHECK_INT(config_parse_bool("Yes", &b), 0);
	CHECK_INT(b, 1);
	CHECK_INT(config_parse_bool("FALSE", &b), 0);
	CHECK_INT(b, 0);
	CHECK_INT(config_parse_bool("2", &b), -EINVAL);
	CHECK_INT(config_parse_bool("", &b), -EINVAL);
	CHECK_INT(config_parse_bool("yess", &b), -EINVAL);

	CHECK_INT(log_level_parse("error"), LOG_LVL_ERROR);
	CHECK_INT(log_level_parse("warn"), LOG_LVL_WARN);
	CHECK_INT(log_level_parse("info"), LOG_LVL_INFO);
	CHECK_INT(log_level_parse("debug"), LOG_LVL_DEBUG);
	CHECK_INT(log_level_parse("DEBUG"), LOG_LVL_DEBUG);
	CHECK_INT(log_level_parse("loud"), -1);
	CHECK_INT(log_level_parse(""), -1);
	CHECK_INT(log_level_parse(NULL), -1);
}

/* Sets key=value and expects rc; on failure, err must contain want. */
static void set_bad(struct config *c, const char *key, const char *value,
		    const char *want)
{
	err[0] = '\0';
	CHECK_INT(config_set(c, key, value, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, want);
}

#define SET_OK(c, k, v)                                                        \
	do {                                                                   \
		int set_rc_ = config_set(c, k, v, err, sizeof(err));           \
		CHECK_INT(set_rc_, 0);                                         \
		if (set_rc_)                                                   \
			printf("  %s=%s: %s\n", k, v, err);                    \
	} while (0)

static void test_set(void)
{
	static const char *const all_keys[] = {"base_url",
					       "api_key",
					       "provider",
					       "default_model",
					       "allowed_models",
					       "timeout",
					       "connect_timeout",
					       "keep_alive",
					       "max_idle_connections",
					       "temperature",
					       "max_tokens",
					       "top_p",
					       "frequency_penalty",
					       "presence_penalty",
					       "stop",
					       "seed",
					       "system_prompt",
					       "stream",
					       "max_retries",
					       "max_retries_stream",
					       "initial_backoff",
					       "max_backoff",
					       "breaker_threshold",
					       "breaker_reset",
					       "tool_timeout",
					       "tool_output_max",
					       "max_tool_rounds",
					       "tool_api",
					       "max_prompt_bytes",
					       "max_queue",
					       "models_ttl",
					       "mock_delay",
					       "state_dir",
					       "log_level"};
	struct config c;
	size_t i;

	config_init(&c);
	for (i = 0; i < sizeof(all_keys) / sizeof(all_keys[0]); i++)
		CHECK(config_is_key(all_keys[i]));
	CHECK(!config_is_key("timeout_ms"));
	CHECK(!config_is_key("allow_other"));
	CHECK(!config_is_key(""));
	CHECK(!config_is_key("TIMEOUT"));
	CHECK(!config_is_key(NULL));

	CHECK_INT(config_set(&c, "nope", "1", err, sizeof(err)), -ENOENT);
	CHECK_STR(err, "unknown key 'nope'");

	/* server */
	SET_OK(&c, "base_url", "https://api.example.com/v1/");
	CHECK_STR(c.base_url, "https://api.example.com/v1");
	SET_OK(&c, "base_url", "http://127.0.0.1:1234///");
	CHECK_STR(c.base_url, "http://127.0.0.1:1234");
	SET_OK(&c, "base_url", "HTTP://Host");
	set_bad(&c, "base_url", "ftp://x",
		"must start with http:// or https://");
	set_bad(&c, "base_url", "localhost:1234", "must start with http://");
	set_bad(&c, "base_url", "http://", "has no host");
	set_bad(&c, "base_url", "http:///path", "has no host");
	set_bad(&c, "base_url", "https://:1234", "has no host");
	set_bad(&c, "base_url", "", "base_url: not set");
	set_bad(&c, "base_url", "http://a b", "blank");
	CHECK_STR(c.base_url, "HTTP://Host"); /* unchanged by the failures */

	SET_OK(&c, "api_key", "sk-123");
	CHECK_STR(c.api_key, "sk-123");
	SET_OK(&c, "api_key", "");
	CHECK(c.api_key == NULL);

	SET_OK(&c, "provider", "mock");
	CHECK_INT(c.provider, PROVIDER_MOCK);
	SET_OK(&c, "provider", "openai");
	CHECK_INT(c.provider, PROVIDER_OPENAI);
	SET_OK(&c, "provider", "lmstudio");
	CHECK_INT(c.provider, PROVIDER_LMSTUDIO);
	set_bad(&c, "provider", "ollama",
		"provider: 'ollama' is not one of lmstudio, openai, mock");

	SET_OK(&c, "default_model", "qwen2.5-7b");
	CHECK_STR(c.default_model, "qwen2.5-7b");
	SET_OK(&c, "default_model", "");
	CHECK(c.default_model == NULL);

	SET_OK(&c, "allowed_models", "a, b  c,,d\te");
	CHECK_INT(c.n_allowed, 5);
	CHECK_STR(c.allowed_models[0], "a");
	CHECK_STR(c.allowed_models[2], "c");
	CHECK_STR(c.allowed_models[4], "e");
	CHECK(c.allowed_models[5] == NULL);
	SET_OK(&c, "allowed_models", "org/model-1");
	CHECK_INT(c.n_allowed, 1);
	CHECK_STR(c.allowed_models[0], "org/model-1");
	SET_OK(&c, "allowed_models", "");
	CHECK(c.allowed_models == NULL);
	CHECK_INT(c.n_allowed, 0);
	SET_OK(&c, "allowed_models", " , ");
	CHECK(c.allowed_models == NULL);

	/* http */
	SET_OK(&c, "timeout", "90");
	CHECK_INT(c.timeout_ms, 90000);
	SET_OK(&c, "timeout", "1.5s");
	CHECK_INT(c.timeout_ms, 1500);
	SET_OK(&c, "timeout", "250ms");
	CHECK_INT(c.timeout_ms, 250);
	set_bad(&c, "timeout", "abc",
		"timeout: 'abc' is not a duration (use e.g. 30, 1.5s, 500ms)");
	set_bad(&c, "timeout", "-5", "timeout: '-5' must not be negative");
	set_bad(&c, "timeout", "0", "timeout: '0' must be greater than 0");
	set_bad(&c, "timeout", "", "timeout: '' is not a duration");
	CHECK_INT(c.timeout_ms, 250);
	SET_OK(&c, "connect_timeout", "3");
	CHECK_INT(c.connect_timeout_ms, 3000);
	set_bad(&c, "connect_timeout", "0s", "must be greater than 0");
	SET_OK(&c, "keep_alive", "0");
	CHECK_INT(c.keep_alive_ms, 0);
	SET_OK(&c, "keep_alive", "1m");
	CHECK_INT(c.keep_alive_ms, 60000);
	SET_OK(&c, "max_idle_connections", "0");
	CHECK_INT(c.max_idle_connections, 0);
	set_bad(&c, "max_idle_connections", "-1", "must be between 0 and 1000");
	set_bad(&c, "max_idle_connections", "ten",
		"max_idle_connections: 'ten' is not an integer");

	/* request */
	SET_OK(&c, "temperature", "0");
	CHECK(c.temperature == 0);
	SET_OK(&c, "temperature", "1.25");
	CHECK(c.temperature == 1.25);
	SET_OK(&c, "temperature", "0.7");
	CHECK(c.temperature == 0.7);
	SET_OK(&c, "temperature", "2");
	set_bad(&c, "temperature", "2.5",
		"temperature: '2.5' must be between 0 and 2");
	set_bad(&c, "temperature", "-0.1", "must be between 0 and 2");
	set_bad(&c, "temperature", "warm",
		"temperature: 'warm' is not a number");
	set_bad(&c, "temperature", "1,5", "is not a number");
	SET_OK(&c, "max_tokens", "-1");
	CHECK_INT(c.max_tokens, -1);
	SET_OK(&c, "max_tokens", "4096");
	CHECK_INT(c.max_tokens, 4096);
	set_bad(&c, "max_tokens", "0",
		"must be -1 (no limit) or greater than 0");
	set_bad(&c, "max_tokens", "-2",
		"must be -1 (no limit) or greater than 0");
	set_bad(&c, "max_tokens", "1.5", "is not an integer");
	set_bad(&c, "max_tokens", "99999999999999999999999",
		"is not an integer");
	SET_OK(&c, "top_p", "0.9");
	CHECK(c.has_top_p && c.top_p == 0.9);
	set_bad(&c, "top_p", "1.1", "must be between 0 and 1");
	CHECK(c.has_top_p && c.top_p == 0.9);
	SET_OK(&c, "top_p", "");
	CHECK(!c.has_top_p);
	SET_OK(&c, "frequency_penalty", "-1.5");
	CHECK(c.has_frequency_penalty && c.frequency_penalty == -1.5);
	set_bad(&c, "frequency_penalty", "3", "must be between -2 and 2");
	SET_OK(&c, "presence_penalty", "+0.5");
	CHECK(c.has_presence_penalty && c.presence_penalty == 0.5);
	SET_OK(&c, "presence_penalty", " ");
	CHECK(!c.has_presence_penalty);
	SET_OK(&c, "stop", "###");
	CHECK_STR(c.stop, "###");
	SET_OK(&c, "stop", "");
	CHECK(c.stop == NULL);
	SET_OK(&c, "seed", "-1");
	CHECK(c.has_seed && c.seed == -1);
	SET_OK(&c, "seed", "42");
	CHECK(c.has_seed && c.seed == 42);
	set_bad(&c, "seed", "forty", "seed: 'forty' is not an integer");
	SET_OK(&c, "seed", "");
	CHECK(!c.has_seed);
	SET_OK(&c, "system_prompt", "Answer in French.");
	CHECK_STR(c.system_prompt, "Answer in French.");
	SET_OK(&c, "system_prompt", "");
	CHECK(c.system_prompt == NULL);
	SET_OK(&c, "stream", "off");
	CHECK_INT(c.stream, 0);
	CHECK_INT(config_set(&c, "stream", NULL, err, sizeof(err)), 0);
	CHECK_INT(c.stream, 1);
	set_bad(&c, "stream", "maybe",
		"stream: 'maybe' is not a boolean (use true/false, yes/no, "
		"on/off, 1/0)");

	/* resilience */
	SET_OK(&c, "max_retries", "0");
	CHECK_INT(c.max_retries, 0);
	set_bad(&c, "max_retries", "-1", "must be between 0 and 100");
	set_bad(&c, "max_retries", "1000", "must be between 0 and 100");
	SET_OK(&c, "max_retries_stream", "5");
	CHECK_INT(c.max_retries_stream, 5);
	SET_OK(&c, "initial_backoff", "250");
	CHECK_INT(c.initial_backoff_ms, 250);
	SET_OK(&c, "initial_backoff", "2s");
	CHECK_INT(c.initial_backoff_ms, 2000);
	set_bad(&c, "initial_backoff", "soon",
		"initial_backoff: 'soon' is not a duration (use e.g. 1000, "
		"1.5s, 500ms)");
	SET_OK(&c, "max_backoff", "60000");
	CHECK_INT(c.max_backoff_ms, 60000);
	SET_OK(&c, "max_backoff", "1m");
	CHECK_INT(c.max_backoff_ms, 60000);
	SET_OK(&c, "breaker_threshold", "1");
	set_bad(&c, "breaker_threshold", "0", "must be between 1 and");
	SET_OK(&c, "breaker_reset", "10");
	CHECK_INT(c.breaker_reset_ms, 10000);

	/* tools */
	SET_OK(&c, "tool_timeout", "5");
	CHECK_INT(c.tool_timeout_ms, 5000);
	SET_OK(&c, "tool_output_max", "128K");
	CHECK_INT(c.tool_output_max, 131072);
	set_bad(&c, "tool_output_max", "0", "must be greater than 0");
	set_bad(&c, "tool_output_max", "lots",
		"tool_output_max: 'lots' is not a size (use e.g. 65536, 64K, "
		"1M)");
	set_bad(&c, "tool_output_max", "-1K", "must not be negative");
	SET_OK(&c, "max_tool_rounds", "3");
	CHECK_INT(c.max_tool_rounds, 3);
	SET_OK(&c, "tool_api", "functions");
	CHECK_INT(c.tool_api, TOOL_API_FUNCTIONS);
	SET_OK(&c, "tool_api", "tools");
	CHECK_INT(c.tool_api, TOOL_API_TOOLS);
	set_bad(&c, "tool_api", "mcp", "is not one of tools, functions");

	/* conversations */
	SET_OK(&c, "max_prompt_bytes", "2M");
	CHECK_INT(c.max_prompt_bytes, 2097152);
	SET_OK(&c, "max_queue", "4");
	CHECK_INT(c.max_queue, 4);
	set_bad(&c, "max_queue", "0", "max_queue: '0' must be between 1 and");
	SET_OK(&c, "models_ttl", "0");
	CHECK_INT(c.models_ttl_ms, 0);
	SET_OK(&c, "mock_delay", "0");
	CHECK_INT(c.mock_delay_ms, 0);
	SET_OK(&c, "mock_delay", "5");
	CHECK_INT(c.mock_delay_ms, 5);
	SET_OK(&c, "mock_delay", "0.1s");
	CHECK_INT(c.mock_delay_ms, 100);

	/* daemon */
	setenv("HOME", "/home/tester", 1);
	SET_OK(&c, "state_dir", "~/lmsfs-state");
	CHECK_STR(c.state_dir, "/home/tester/lmsfs-state");
	SET_OK(&c, "state_dir", "/var/lib/lmsfs");
	CHECK_STR(c.state_dir, "/var/lib/lmsfs");
	set_bad(&c, "state_dir", "", "state_dir: must not be empty");
	SET_OK(&c, "log_level", "debug");
	CHECK_INT(c.log_level, LOG_LVL_DEBUG);
	SET_OK(&c, "log_level", "error");
	CHECK_INT(c.log_level, LOG_LVL_ERROR);
	set_bad(&c, "log_level", "loud",
		"log_level: 'loud' is not one of error, warn, info, debug");

	config_free(&c);
}

static void test_check(void)
{
	struct config c;

	config_init(&c);
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);

	c.temperature = 3;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "temperature: 3 must be between 0 and 2");
	c.temperature = 0.7;

	c.timeout_ms = 0;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "timeout: 0 ms must be greater than 0");
	c.timeout_ms = 1000;

	c.max_tokens = 0;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "max_tokens");
	c.max_tokens = -1;
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);

	c.has_top_p = 1;
	c.top_p = 2;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "top_p");
	c.has_top_p = 0; /* unset values are not judged */
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);

	c.initial_backoff_ms = 5000;
	c.max_backoff_ms = 1000;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "max_backoff: 1000 ms is less than initial_backoff");
	c.max_backoff_ms = 5000;
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);

	CHECK_INT(config_set(&c, "allowed_models", "a,b", err, sizeof(err)), 0);
	CHECK_INT(config_set(&c, "default_model", "c", err, sizeof(err)), 0);
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "default_model: 'c' is not in allowed_models");
	CHECK_INT(config_set(&c, "default_model", "b", err, sizeof(err)), 0);
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);

	free(c.base_url);
	c.base_url = strdup("file:///etc");
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "base_url: 'file:///etc' must start with http://");
	free(c.base_url);
	c.base_url = NULL;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "base_url: not set");
	c.base_url = strdup("https://h");

	free(c.state_dir);
	c.state_dir = NULL;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "state_dir");
	c.state_dir = strdup("/s");

	c.log_level = 9;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "log_level");
	c.log_level = 2;
	c.max_queue = 0;
	CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "max_queue: 0 must be between 1 and");
	c.max_queue = 1;
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);
	config_free(&c);

	/* HOME and XDG_DATA_HOME both unset: state_dir has no default. */
	{
		char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
		unsetenv("HOME");
		unsetenv("XDG_DATA_HOME");
		config_init(&c);
		CHECK(c.state_dir == NULL);
		CHECK_INT(config_check(&c, err, sizeof(err)), -EINVAL);
		CHECK_HAS(err, "state_dir: not set");
		config_free(&c);
		if (home)
			setenv("HOME", home, 1);
		free(home);
	}
}

static void test_file(void)
{
	struct config c;
	char *p, *dir;
	char line[2200];
	char expect[512];

	config_init(&c);
	p = write_file("good.conf",
		       "# lmsfs test configuration\n"
		       "; another comment style\n"
		       "\n"
		       "[server]\n"
		       "base_url = http://gpu-box:1234/\n"
		       "provider=openai\n"
		       "api_key = sk-test ; inline comment\n"
		       "allowed_models = a, b\n"
		       "default_model = b\n"
		       "\n"
		       "[http]\n"
		       "  timeout = 45\n"
		       "\tconnect_timeout: 2s\n"
		       "[request]\n"
		       "temperature = 0.2\n"
		       "stop = \"  END  \"\n"
		       "system_prompt = \"You are a pirate; speak like one.\"\n"
		       "stream = no\n"
		       "[resilience]\n"
		       "initial_backoff = 100\n"
		       "[daemon]\n"
		       "log_level = debug\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
	CHECK_STR(c.base_url, "http://gpu-box:1234");
	CHECK_INT(c.provider, PROVIDER_OPENAI);
	CHECK_STR(c.api_key, "sk-test");
	CHECK_INT(c.n_allowed, 2);
	CHECK_STR(c.default_model, "b");
	CHECK_INT(c.timeout_ms, 45000);
	CHECK_INT(c.connect_timeout_ms, 2000);
	CHECK(c.temperature == 0.2);
	CHECK_STR(c.stop, "  END  ");
	CHECK_STR(c.system_prompt, "You are a pirate; speak like one.");
	CHECK_INT(c.stream, 0);
	CHECK_INT(c.initial_backoff_ms, 100);
	CHECK_INT(c.log_level, LOG_LVL_DEBUG);
	CHECK_INT(config_check(&c, err, sizeof(err)), 0);
	free(p);

	/* Unknown key: -EINVAL with FILE:LINE. */
	p = write_file("unknown.conf", "[server]\n# c\n\nbase_url = http://x\n"
				       "colour = blue\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
	snprintf(expect, sizeof(expect), "%s:5: unknown key 'colour'", p);
	CHECK_STR(err, expect);
	free(p);

	/* Bad value. */
	p = write_file("badval.conf", "timeout = 30\n[http]\ntimeout = soon\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
	snprintf(expect, sizeof(expect), "%s:3: timeout: 'soon'", p);
	CHECK_HAS(err, expect);
	CHECK_HAS(err, "is not a duration (use e.g. 30, 1.5s, 500ms)");
	free(p);

	/* Syntax errors. */
	p = write_file("syntax.conf", "timeout = 30\n\njust words\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
	snprintf(expect, sizeof(expect), "%s:3: syntax error", p);
	CHECK_HAS(err, expect);
	free(p);
	p = write_file("section.conf", "[server\nbase_url = http://x\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
	snprintf(expect, sizeof(expect), "%s:1: ", p);
	CHECK_HAS(err, expect);
	free(p);

	/* Indented lines are plain lines, not continuations. */
	p = write_file("indent.conf",
		       "[a]\n    max_queue = 7\n    max_retries = 1\n");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
	CHECK_INT(c.max_queue, 7);
	CHECK_INT(c.max_retries, 1);
	free(p);

	/* A UTF-8 BOM, CRLF line ends, no final newline. */
	p = write_file("bom.conf",
		       "\xef\xbb\xbfmax_queue = 9\r\nmax_retries = 2");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
	CHECK_INT(c.max_queue, 9);
	CHECK_INT(c.max_retries, 2);
	free(p);

	/* A long line (inih's own limit is 200 bytes) counts as one line. */
	memcpy(line, "system_prompt = ", 16);
	memset(line + 16, 'p', 2000);
	strcpy(line + 2016, "\nbogus = 1\n");
	p = write_file("long.conf", line);
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
	snprintf(expect, sizeof(expect), "%s:2: unknown key 'bogus'", p);
	CHECK_STR(err, expect);
	CHECK(c.system_prompt && strlen(c.system_prompt) == 2000);
	free(p);

	/* A line over the limit is refused, not cut. */
	{
		size_t n = 100 * 1024;
		char *huge = malloc(n + 32);
		memcpy(huge, "max_queue = 3\nstop = ", 21);
		memset(huge + 21, 's', n);
		strcpy(huge + 21 + n, "\n");
		p = write_file("huge.conf", huge);
		free(huge);
		CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EINVAL);
		snprintf(expect, sizeof(expect), "%s:2: line too long", p);
		CHECK_HAS(err, expect);
		free(p);
	}

	/* Missing and unreadable files. */
	if (asprintf(&p, "%s/missing.conf", tmpdir) > 0) {
		CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -ENOENT);
		CHECK_HAS(err, p);
		free(p);
	}
	if (asprintf(&dir, "%s/adir", tmpdir) > 0) {
		mkdir(dir, 0755);
		CHECK_INT(config_load_file(&c, dir, err, sizeof(err)), -EISDIR);
		CHECK_HAS(err, "Is a directory");
		rmdir(dir);
		free(dir);
	}
	p = write_file("secret.conf", "max_queue = 3\n");
	chmod(p, 0);
	if (geteuid() != 0) { /* root reads it anyway */
		CHECK_INT(config_load_file(&c, p, err, sizeof(err)), -EACCES);
		CHECK_HAS(err, ": Permission denied");
	}
	unlink(p);
	free(p);

	/* An empty file and one with only comments change nothing. */
	p = write_file("empty.conf", "");
	CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
	free(p);
	config_free(&c);
}

static void test_env(void)
{
	struct config c;

	clear_env();
	config_init(&c);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_INT(c.timeout_ms, 60000);

	setenv("LMSTUDIO_TIMEOUT", "1500", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_INT(c.timeout_ms, 1500);
	setenv("LMSFS_TIMEOUT", "5", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_INT(c.timeout_ms, 5000);
	unsetenv("LMSFS_TIMEOUT");
	setenv("LMSTUDIO_TIMEOUT", "2s", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_INT(c.timeout_ms, 2000);
	setenv("LMSTUDIO_TIMEOUT", "soon", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "LMSTUDIO_TIMEOUT: 'soon'");
	setenv("LMSTUDIO_TIMEOUT", "0", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err,
		  "LMSTUDIO_TIMEOUT: timeout: 0 ms must be greater than 0");
	unsetenv("LMSTUDIO_TIMEOUT");

	setenv("LMSTUDIO_URL", "http://studio:1234/", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_STR(c.base_url, "http://studio:1234");
	setenv("LMSFS_BASE_URL", "http://lmsfs:1234", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_STR(c.base_url, "http://lmsfs:1234");
	unsetenv("LMSFS_BASE_URL");
	setenv("LMSTUDIO_URL", "", 1); /* empty: ignored */
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_STR(c.base_url, "http://lmsfs:1234");
	setenv("LMSTUDIO_URL", "studio:1234", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "LMSTUDIO_URL: base_url: 'studio:1234' must start");
	unsetenv("LMSTUDIO_URL");

	setenv("LMSFS_MAX_QUEUE", "3", 1);
	setenv("LMSFS_TEMPERATURE", "0.1", 1);
	setenv("LMSFS_PROVIDER", "mock", 1);
	setenv("LMSFS_INITIAL_BACKOFF", "50", 1);
	setenv("LMSFS_API_KEY", "k", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK_INT(c.max_queue, 3);
	CHECK(c.temperature == 0.1);
	CHECK_INT(c.provider, PROVIDER_MOCK);
	CHECK_INT(c.initial_backoff_ms, 50);
	CHECK_STR(c.api_key, "k");
	setenv("LMSFS_API_KEY", "", 1); /* empty unsets optional values */
	CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
	CHECK(c.api_key == NULL);

	setenv("LMSFS_TIMEOUT", "abc", 1);
	CHECK_INT(config_load_env(&c, err, sizeof(err)), -EINVAL);
	CHECK_STR(err, "LMSFS_TIMEOUT: timeout: 'abc' is not a duration (use "
		       "e.g. 30, 1.5s, 500ms)");
	clear_env();
	config_free(&c);

	/* File, then environment: the environment wins. */
	{
		char *p =
		    write_file("prec.conf", "timeout = 10\nmax_queue = 2\n");
		config_init(&c);
		setenv("LMSFS_TIMEOUT", "20", 1);
		CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
		CHECK_INT(config_load_env(&c, err, sizeof(err)), 0);
		CHECK_INT(c.timeout_ms, 20000);
		CHECK_INT(c.max_queue, 2);
		/* and -o (config_set) wins over both */
		CHECK_INT(config_set(&c, "timeout", "30", err, sizeof(err)), 0);
		CHECK_INT(c.timeout_ms, 30000);
		clear_env();
		config_free(&c);
		free(p);
	}
}

static void test_default_path(void)
{
	char *p, *want, *dir;

	setenv("XDG_CONFIG_HOME", tmpdir, 1);
	p = config_default_path();
	CHECK_STR(p, "/etc/lmsfs.conf");
	free(p);
	if (asprintf(&dir, "%s/lmsfs", tmpdir) < 0)
		return;
	mkdir(dir, 0755);
	want = write_file("lmsfs/lmsfs.conf", "# nothing\n");
	p = config_default_path();
	CHECK_STR(p, want);
	free(p);
	unsetenv("XDG_CONFIG_HOME");
	setenv("HOME", tmpdir, 1);
	p = config_default_path();
	CHECK_STR(p, "/etc/lmsfs.conf");
	free(p);
	unlink(want);
	rmdir(dir);
	free(want);
	free(dir);
}

/* The shipped example has every line commented out: pure defaults. */
static void test_example(const char *path)
{
	struct config c, d;
	FILE *f;
	char l[512];
	int keys = 0, sections = 0;

	if (access(path, R_OK) != 0) {
		CHECK(
		    !"example lmsfs.conf not found (pass its path as argv[1])");
		printf("  looked for: %s\n", path);
		return;
	}
	config_init(&c);
	config_init(&d);
	CHECK_INT(config_load_file(&c, path, err, sizeof(err)), 0);
	CHECK_INT(config_diff(&c, &d), 0);
	config_free(&c);

	/* Every key is documented as "# key = default". */
	f = fopen(path, "r");
	while (f && fgets(l, sizeof(l), f)) {
		char key[64];
		int n = 0;
		if (sscanf(l, "# %63[a-z_] =%n", key, &n) == 1 && n > 0 &&
		    config_is_key(key))
			keys++;
		if (l[0] == '#' && l[1] == ' ' && l[2] == '[')
			sections++;
	}
	if (f)
		fclose(f);
	CHECK(keys >= 34);
	CHECK_INT(sections, 7);

	/* Uncommenting every "# key = value" line gives the defaults too. */
	f = fopen(path, "r");
	if (f) {
		char *p;
		FILE *out;
		if (asprintf(&p, "%s/uncommented.conf", tmpdir) > 0) {
			out = fopen(p, "w");
			while (out && fgets(l, sizeof(l), f)) {
				char key[64];
				int n = 0;
				if ((sscanf(l, "# %63[a-z_] =%n", key, &n) ==
					 1 &&
				     n > 0 && config_is_key(key)) ||
				    strncmp(l, "# [", 3) == 0)
					fputs(l + 2, out);
			}
			if (out)
				fclose(out);
			config_init(&c);
			err[0] = '\0';
			CHECK_INT(config_load_file(&c, p, err, sizeof(err)), 0);
			if (err[0])
				printf("  %s\n", err);
			CHECK_INT(config_diff(&c, &d), 0);
			config_free(&c);
			unlink(p);
			free(p);
		}
		fclose(f);
	}
	config_free(&d);
}

static void cleanup(void)
{
	char *cmd;

	if (asprintf(&cmd, "rm -rf '%s'", tmpdir) > 0) {
		if (system(cmd) != 0)
			printf("could not remove %s\n", tmpdir);
		free(cmd);
	}
}

int main(int argc, char **argv)
{
	const char *example = argc > 1 ? argv[1] : getenv("LMSFS_CONF_EXAMPLE");
	char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;

	if (!example)
		example = "lmsfs.conf";
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	clear_env();
	test_defaults();
	test_parsers();
	test_set();
	test_check();
	test_file();
	test_env();
	test_default_path();
	if (home)
		setenv("HOME", home, 1);
	free(home);
	test_example(example);
	cleanup();
	return CHECK_DONE();
}

/* main.c - command line, configuration, mount, loop, ordered shutdown. */
#include "buf.h"
#include "config.h"
#include "conv.h"
#include "gen.h"
#include "http.h"
#include "log.h"
#include "mcp.h"
#include "models.h"
#include "ops.h"
#include "retry.h"
#include "tooldef.h"
#include "toolrun.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static const char usage_text[] =
	"usage: lmsfs [SOURCE] MOUNTPOINT [-o opt[,opt...]] [-f] [-d] [-c FILE]\n"
	"\n"
	"Mounts an LM Studio (or any OpenAI-compatible) server as a directory tree.\n"
	"\n"
	"  SOURCE            state directory (conversations and tools live here);\n"
	"                    default: state_dir from the configuration\n"
	"  MOUNTPOINT        an existing, empty directory\n"
	"  -o key=value      any configuration key (see lmsfs.conf and lmsfs(1)),\n"
	"                    or a FUSE mount option (allow_other, ro, ...)\n"
	"  -c FILE           configuration file (default $XDG_CONFIG_HOME/lmsfs/lmsfs.conf,\n"
	"                    else /etc/lmsfs.conf)\n"
	"  -f                stay in the foreground (log to stderr)\n"
	"  -d                debug: foreground, log_level=debug\n"
	"  -h, --help        this text\n"
	"  -V, --version     print the version\n"
	"\n"
	"Precedence: defaults < config file < LMSFS_<KEY> environment < -o.\n"
	"Retries: max_retries governs requests that do not stream, max_retries_stream\n"
	"streamed ones (retried only before their first token).\n"
	"Unmount with: fusermount3 -u MOUNTPOINT\n";

struct cli {
	const char *source, *mountpoint, *conf;
	int foreground, debug;
	char **kv;     /* -o key=value items that are config keys */
	size_t nkv;
	char **fuseo;  /* other -o items, for FUSE */
	size_t nfuseo;
};

static void push(char ***v, size_t *n, const char *s)
{
	char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
	if (!nv || !(nv[*n] = strdup(s)))
		fatalx("out of memory");
	*v = nv;
	(*n)++;
}

/* Splits "a=1,b=x\,y" into items; a backslash escapes the next character
 * (as in libfuse's option syntax), so values may hold commas. */
static void split_opts(struct cli *c, const char *list)
{
	size_t n = strlen(list);
	char *item = malloc(n + 1);
	size_t k = 0;

	if (!item)
		fatalx("out of memory");
	for (size_t i = 0;; i++) {
		if (list[i] == '\\' && list[i + 1]) {
			item[k++] = list[++i];
			continue;
		}
		if (list[i] && list[i] != ',') {
			item[k++] = list[i];
			continue;
		}
		item[k] = '\0';
		if (k > 0) {
			char key[128];
			const char *eq = strchr(item, '=');
			size_t kl = eq ? (size_t)(eq - item) : strlen(item);
			if (kl >= sizeof(key))
				kl = sizeof(key) - 1;
			memcpy(key, item, kl);
			key[kl] = '\0';
			if (config_is_key(key))
				push(&c->kv, &c->nkv, item);
			else if (strcmp(key, "defaults") != 0 && strcmp(key, "_netdev") != 0 &&
				 strcmp(key, "auto") != 0 && strcmp(key, "noauto") != 0 &&
				 strcmp(key, "nofail") != 0 && strncmp(key, "x-", 2) != 0)
				push(&c->fuseo, &c->nfuseo, item);
		}
		k = 0;
		if (!list[i])
			break;
	}
	free(item);
}

static void parse_cli(int argc, char **argv, struct cli *c)
{
	const char *pos[2];
	int npos = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_text, stdout);
			exit(0);
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("lmsfs %s\n", LMSFS_VERSION);
			exit(0);
		} else if (!strcmp(a, "-f")) {
			c->foreground = 1;
		} else if (!strcmp(a, "-d")) {
			c->debug = 1;
			c->foreground = 1;
		} else if (!strcmp(a, "-s")) {
			/* single-threaded: accepted and ignored */
		} else if (!strcmp(a, "-c") || !strcmp(a, "-o")) {
			if (i + 1 >= argc)
				fatalx("option %s needs an argument (see lmsfs --help)", a);
			if (a[1] == 'c')
				c->conf = argv[++i];
			else
				split_opts(c, argv[++i]);
		} else if (!strncmp(a, "-o", 2)) {
			split_opts(c, a + 2);
		} else if (a[0] == '-' && a[1]) {
			fatalx("unknown option '%s' (see lmsfs --help)", a);
		} else {
			if (npos == 2)
				fatalx("too many arguments: '%s' (see lmsfs --help)", a);
			pos[npos++] = a;
		}
	}
	if (npos == 0)
		fatalx("missing MOUNTPOINT (see lmsfs --help)");
	if (npos == 2) {
		c->source = pos[0];
		c->mountpoint = pos[1];
	} else {
		c->mountpoint = pos[0];
	}
}

/* Where the value of the -o item [p, end) starts when split_opts reads
 * its key as api_key (a backslash escapes any character, '=' included),
 * else NULL. */
static char *api_key_value(char *p, const char *end)
{
	static const char key[] = "api_key";
	size_t k = 0;

	while (p < end) {
		char c = *p;
		if (c == '\\' && p + 1 < end)
			c = *++p;
		p++;
		if (c == '=')
			return k == sizeof(key) - 1 ? p : NULL;
		if (k == sizeof(key) - 1 || c != key[k])
			return NULL;
		k++;
	}
	return NULL;
}

/* Appends to out the -o list `list` with the value of every api_key item
 * replaced by "****"; how many there were, or -EFBIG when out is full. */
static int scrub_list(const char *list, struct buf *out)
{
	int n = 0, err = 0;

	/* Items start at the beginning or after an unescaped ','. */
	for (const char *p = list; *p;) {
		const char *end = p, *v;
		while (*end && *end != ',')
			end += (*end == '\\' && end[1]) ? 2 : 1;
		v = api_key_value((char *)p, end);
		if (v) {
			err |= buf_append(out, p, (size_t)(v - p));
			err |= buf_puts(out, "****");
			n++;
		} else {
			err |= buf_append(out, p, (size_t)(end - p));
		}
		if (*end)
			err |= buf_putc(out, ',');
		p = *end ? end + 1 : end;
	}
	return err ? -EFBIG : n;
}

/* Each character of every api_key value of the -o list becomes '*'. */
static void mask_in_place(char *list)
{
	for (char *p = list; *p;) {
		char *end = p, *v;
		while (*end && *end != ',')
			end += (*end == '\\' && end[1]) ? 2 : 1;
		if ((v = api_key_value(p, end)) != NULL)
			memset(v, '*', (size_t)(end - v));
		p = *end ? end + 1 : end;
	}
}

/* Fills lists[i] with the -o list argument i holds, or NULL, reading the
 * arguments as parse_cli does. */
static void opt_lists(int argc, char **argv, char **lists)
{
	for (int i = 1; i < argc; i++) {
		lists[i] = NULL;
		if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "-c")) && i + 1 < argc) {
			lists[i + 1] = argv[i][1] == 'o' ? argv[i + 1] : NULL;
			i++;
		} else if (!strncmp(argv[i], "-o", 2) && argv[i][2]) {
			lists[i] = argv[i] + 2;
		}
	}
}

/* Rewrites the arguments so that ps and /proc/PID/cmdline (readable by
 * every local user) show every api_key=... item of the -o arguments as
 * api_key=****, whatever the key's length: the arguments after it move up
 * and the bytes freed at the end of the area become NULs (which ps drops);
 * the area keeps the size the kernel gave it at exec. parse_cli has copied
 * the options (libfuse never sees our argv); its pointers to the other
 * arguments (c) move with them. When the arguments are not one block, or
 * the masked text would not fit (a key under 4 characters), each character
 * of the value becomes '*' instead. */
static void scrub_argv(int argc, char **argv, struct cli *c)
{
	const char **ptrs[] = {&c->source, &c->mountpoint, &c->conf};
	char *from, *to, **lists;
	size_t *at;
	struct buf out;
	int n = 0, whole = 1;

	if (argc < 2)
		return;
	lists = calloc((size_t)argc, sizeof(*lists));
	at = calloc((size_t)argc, sizeof(*at));
	if (!lists || !at)
		fatalx("out of memory");
	opt_lists(argc, argv, lists);
	from = argv[1];
	to = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
	for (int i = 1; i + 1 < argc; i++)
		if (argv[i] + strlen(argv[i]) + 1 != argv[i + 1])
			whole = 0;
	buf_init(&out, (size_t)(to - from));
	for (int i = 1; i < argc && whole; i++) {
		int k;
		at[i] = out.len;
		if (lists[i]) {
			k = buf_append(&out, argv[i], (size_t)(lists[i] - argv[i]));
			k = k ? k : scrub_list(lists[i], &out);
			n += k > 0 ? k : 0;
		} else {
			k = buf_puts(&out, argv[i]);
		}
		if (k < 0 || buf_putc(&out, '\0') != 0)
			whole = 0;
	}
	if (whole && n > 0) {
		/* Pointers into the arguments follow them to their new place. */
		for (size_t p = 0; p < sizeof(ptrs) / sizeof(ptrs[0]); p++)
			for (int i = argc - 1; i >= 1 && *ptrs[p]; i--)
				if (*ptrs[p] >= argv[i] && *ptrs[p] < to) {
					*ptrs[p] = from + at[i] + (*ptrs[p] - argv[i]);
					break;
				}
		memcpy(from, out.data, out.len);
		memset(from + out.len, '\0', (size_t)(to - from) - out.len);
		for (int i = 1; i < argc; i++)
			argv[i] = from + at[i];
	} else if (!whole) {
		for (int i = 1; i < argc; i++)
			if (lists[i])
				mask_in_place(lists[i]);
	}
	free(lists);
	free(at);
	buf_free(&out);
}

/* LMSFS_API_KEY is of no use once read: it goes from the environment (and
 * from the bytes /proc/PID/environ shows) before any thread starts. */
static void scrub_env(void)
{
	static const char var[] = "LMSFS_API_KEY=";

	for (char **e = environ; e && *e; e++)
		if (!strncmp(*e, var, sizeof(var) - 1))
			memset(*e + sizeof(var) - 1, '*', strlen(*e + sizeof(var) - 1));
	unsetenv("LMSFS_API_KEY");
}

/* One descriptor per open connection, conversation directory and stream:
 * the soft limit (1024 under systemd) goes up to the hard one. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rlim_t was = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		/* An unlimited hard limit is refused above fs.nr_open. */
		rl.rlim_cur = 1 << 20;
		if (rl.rlim_cur > rl.rlim_max || setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			log_warn("cannot raise the open files limit from %llu",
				 (unsigned long long)was);
			return;
		}
	}
	log_info("open files limit raised from %llu to %llu", (unsigned long long)was,
		 (unsigned long long)rl.rlim_cur);
}

/* Whether path is already the mountpoint of an lmsfs instance. */
static int already_mounted(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[4096];
	int found = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char mp[PATH_MAX], *sep, fstype[64];
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1)
			continue;
		sep = strstr(line, " - ");
		if (!sep || sscanf(sep + 3, "%63s", fstype) != 1)
			continue;
		if (strcmp(mp, path) == 0 && strncmp(fstype, "fuse", 4) == 0 &&
		    strstr(fstype, "lmsfs"))
			found = 1;
	}
	fclose(f);
	return found;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* One daemon per state directory: a second one would take the first one's
 * running answers for crashed ones. The lock lives as long as the daemon
 * (fuse_daemonize's child inherits it); a daemon just unmounted may still
 * be finishing, so it is given 5 s. 0 or -errno. */
static int lock_state(int fd)
{
	for (int i = 0;; i++) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK || i == 100)
			return -errno;
		usleep(50000);
	}
}

int main(int argc, char **argv)
{
	struct cli cli = {0};
	struct config cfg;
	struct conv_hooks hooks = {.answer_done = ops_answer_done, .changed = ops_conv_changed};
	struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se;
	struct fuse_loop_config *lc;
	char err[1024], mnt[PATH_MAX], optbuf[PATH_MAX + 64];
	struct stat st;
	char *conf;
	int rc, state_fd, ret;

	/* Not dumpable: tools and other processes of the same user cannot
	 * read our environment or memory (/proc/PID/environ, mem), where the
	 * API key lives; no core dump holds it either. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	log_init("lmsfs", LOG_LVL_INFO);
	parse_cli(argc, argv, &cli);
	scrub_argv(argc, argv, &cli);

	config_init(&cfg);
	conf = cli.conf ? strdup(cli.conf) : config_default_path();
	rc = config_load_file(&cfg, conf, err, sizeof(err));
	if (rc == -ENOENT && cli.conf)
		fatalx("%s: no such configuration file", conf);
	if (rc != 0 && rc != -ENOENT)
		fatalx("%s", err);
	free(conf);
	if (config_load_env(&cfg, err, sizeof(err)) != 0)
		fatalx("%s", err);
	for (size_t i = 0; i < cli.nkv; i++) {
		char *eq = strchr(cli.kv[i], '=');
		if (!eq)
			fatalx("-o %s: needs a value (%s=VALUE)", cli.kv[i], cli.kv[i]);
		*eq = '\0';
		if (config_set(&cfg, cli.kv[i], eq + 1, err, sizeof(err)) != 0)
			fatalx("-o %s", err);
	}
	if (cli.source) {
		if (config_set(&cfg, "state_dir", cli.source, err, sizeof(err)) != 0)
			fatalx("%s", err);
	}
	if (cli.debug)
		cfg.log_level = LOG_LVL_DEBUG;
	if (config_check(&cfg, err, sizeof(err)) != 0)
		fatalx("%s", err);
	if (config_load_api_key(&cfg, err, sizeof(err)) != 0)
		fatalx("%s", err);
	scrub_env();
	log_set_level(cfg.log_level);
	raise_fd_limit();

	if (stat(cli.mountpoint, &st) < 0)
		fatalx("%s: %s", cli.mountpoint, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		fatalx("%s: not a directory", cli.mountpoint);
	if (!realpath(cli.mountpoint, mnt))
		fatalx("%s: %s", cli.mountpoint, strerror(errno));
	if (already_mounted(mnt))
		fatalx("%s: an lmsfs is already mounted there", mnt);

	ret = mkdir_p(cfg.state_dir, 0700);
	if (ret)
		fatalx("state_dir %s: %s", cfg.state_dir, strerror(-ret));
	{
		/* Tools are run by absolute path after we chdir("/"). */
		char abs[PATH_MAX];
		if (!realpath(cfg.state_dir, abs))
			fatalx("state_dir %s: %s", cfg.state_dir, strerror(errno));
		if (config_set(&cfg, "state_dir", abs, err, sizeof(err)) != 0)
			fatalx("%s", err);
	}
	state_fd = open(cfg.state_dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (state_fd < 0)
		fatalx("state_dir %s: %s", cfg.state_dir, strerror(errno));
	ret = lock_state(state_fd);
	if (ret == -EWOULDBLOCK)
		fatalx("state_dir %s: in use by another lmsfs (unmount it first)", cfg.state_dir);
	if (ret)
		log_warnx("state_dir %s: cannot lock it (%s); make sure no other lmsfs uses it",
			  cfg.state_dir, strerror(-ret));

	if (http_init(&cfg) != 0)
		fatalx("cannot initialise libcurl");
	retry_init(&cfg);
	models_init(&cfg);
	gen_init(&cfg);
	if (tooldef_init(&cfg, state_fd) != 0)
		fatal("state_dir %s/tools", cfg.state_dir);
	toolrun_init(&cfg);
	mcp_init(&cfg);
	if (conv_init(&cfg, state_fd, &hooks) != 0)
		fatal("state_dir %s/conversations", cfg.state_dir);
	if (ops_init(&cfg, state_fd) != 0)
		fatal("state_dir %s", cfg.state_dir);

	fuse_opt_add_arg(&fargs, "lmsfs");
	if (cli.debug)
		fuse_opt_add_arg(&fargs, "-d");
	snprintf(optbuf, sizeof(optbuf), "-osubtype=lmsfs,fsname=lmsfs:%s,default_permissions",
		 cfg.state_dir);
	fuse_opt_add_arg(&fargs, optbuf);
	for (size_t i = 0; i < cli.nfuseo; i++) {
		snprintf(optbuf, sizeof(optbuf), "-o%s", cli.fuseo[i]);
		fuse_opt_add_arg(&fargs, optbuf);
	}

	se = fuse_session_new(&fargs, &ops_table, sizeof(ops_table), NULL);
	if (!se)
		fatalx("cannot start FUSE (bad mount option?)");
	if (fuse_set_signal_handlers(se) != 0)
		fatalx("cannot install signal handlers");
	if (fuse_session_mount(se, mnt) != 0)
		fatalx("%s: cannot mount (is /dev/fuse there and fusermount3 installed?)", mnt);
	log_info("mounted %s on %s (state in %s, provider %s)", cfg.base_url, mnt,
		 cfg.state_dir,
		 cfg.provider == PROVIDER_MOCK ? "mock" : cfg.provider == PROVIDER_OPENAI ? "openai" : "lmstudio");

	if (!cli.foreground) {
		if (fuse_daemonize(0) != 0)
			fatalx("cannot daemonize");
		log_to_syslog();
	}
	/* After fuse_daemonize: threads do not survive its fork. */
	if (ops_notify_start(se) != 0)
		fatalx("cannot start the kernel notifier thread");
	/* Threads start after daemonizing (fork keeps only the caller). */
	models_start();
	/* Before serving anything: what a crash left behind is repaired and
	 * queued prompts resume, so that no reader sees a history before its
	 * recovery. Only conversations with private files pending are
	 * loaded; the scan is two stat calls per conversation. */
	conv_recover_all();

	lc = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(lc, 32);
	fuse_loop_cfg_set_idle_threads(lc, 8);
	ret = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);

	log_info("unmounting %s", mnt);
	ops_shutdown();
	models_ops_stop(); /* loads under way answer their requests now */
	mcp_interrupt();
	if (conv_shutdown() > 0) {
		/* A worker is stuck (say, in a tool that ignores signals): leave
		 * it everything it uses and let the process end. */
		mcp_shutdown();
		fuse_session_unmount(se);
		_exit(0);
	}
	mcp_shutdown();
	if (fs_notify_stuck()) {
		/* The notifier may still use the session: unmounting ends its
		 * wait, and the process ends before anything is freed. */
		fuse_session_unmount(se);
		_exit(0);
	}
	ops_cleanup();
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	fuse_opt_free_args(&fargs);
	models_cleanup();
	http_cleanup();
	close(state_fd);
	for (size_t i = 0; i < cli.nkv; i++)
		free(cli.kv[i]);
	free(cli.kv);
	for (size_t i = 0; i < cli.nfuseo; i++)
		free(cli.fuseo[i]);
	free(cli.fuseo);
	config_free(&cfg);
	return ret < 0 ? 1 : 0;
}

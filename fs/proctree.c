/* proctree.c - runs a program under a subreaper shepherd that can kill its whole process tree. */
#include "proctree.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* fork() for a child of a threaded process: _Fork() runs none of the
 * fork handlers libraries registered (they may take locks that some
 * thread of the daemon held at the first fork), and is async-signal-safe.
 * glibc has it since 2.34; elsewhere the raw system call does the same. */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define safe_fork() _Fork()
#else
#define safe_fork() ((pid_t)syscall(SYS_fork))
#endif

/* The shepherd's report: a tag and a number, one write each (atomic). */
#define MSG_LEN (1 + (int)sizeof(int))

/* --- the shepherd (after fork: async-signal-safe calls only) -------------- */

static void put_msg(int fd, char tag, int v)
{
	char m[MSG_LEN];
	m[0] = tag;
	memcpy(m + 1, &v, sizeof(v));
	while (write(fd, m, sizeof(m)) < 0 && errno == EINTR)
		;
}

/* Signals every child of this process (and the group it leads, if any):
 * each is an unreaped child, so neither its pid nor a group of that id
 * can belong to anyone else. Returns how many there were. */
static int kill_children(void)
{
	char b[4096];
	int fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC), n = 0;
	ssize_t got;

	if (fd < 0)
		return 0;
	got = read(fd, b, sizeof(b) - 1);
	close(fd);
	if (got <= 0)
		return 0;
	b[got] = '\0';
	for (char *p = b; *p;) {
		long v = 0;
		while (*p == ' ' || *p == '\n')
			p++;
		if (!*p)
			break;
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (*p++ - '0');
		if (*p && *p != ' ' && *p != '\n')
			break;
		if (v > 0) {
			kill(-(pid_t)v, SIGKILL);
			kill((pid_t)v, SIGKILL);
			n++;
		}
	}
	return n;
}

/* Kills the program's group while its leader is unreaped, then every
 * process reparented here, until nothing is left; returns the program's
 * wait status. */
static int kill_all(pid_t prog)
{
	int status = 0, prog_reaped = 0;

	for (;;) {
		int st;
		pid_t w;
		if (!prog_reaped) {
			kill(-prog, SIGKILL);
			kill(prog, SIGKILL);
		}
		kill_children();
		w = waitpid(-1, &st, 0);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			break; /* ECHILD: nothing left */
		}
		if (w == prog) {
			status = st;
			prog_reaped = 1;
		}
	}
	return status;
}

/* Closes descriptors lo to hi; one by one, up to the descriptor limit,
 * on a kernel without close_range (before 5.9). */
static void close_fds(unsigned lo, unsigned hi)
{
	struct rlimit rl;

	if (lo > hi || syscall(SYS_close_range, lo, hi, 0u) == 0)
		return;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > (1u << 20))
		rl.rlim_cur = 1u << 20;
	for (unsigned fd = lo; fd <= hi && fd < rl.rlim_cur; fd++)
		close((int)fd);
}

/* Closes every descriptor from 3 up but keep1 and keep2. */
static void close_all_but(int keep1, int keep2)
{
	int k[2] = {keep1 < keep2 ? keep1 : keep2, keep1 < keep2 ? keep2 : keep1};
	unsigned lo = 3;

	for (int i = 0; i < 2; i++) {
		if (k[i] < (int)lo)
			continue;
		if ((unsigned)k[i] > lo)
			close_fds(lo, (unsigned)k[i] - 1);
		lo = (unsigned)k[i] + 1;
	}
	close_fds(lo, ~0u);
}

/* In the program's process, between fork and exec. */
static void __attribute__((noreturn))
start_program(const char *path, char *const argv[], char *const envp[], const char *cwd,
	      const int fds[3], int err_w)
{
	int moved[3], ew;
	sigset_t none;

	setpgid(0, 0);
	/* Above anything 0-2 might be, then into place; the rest closed. */
	for (int i = 0; i < 3; i++)
		moved[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
	ew = fcntl(err_w, F_DUPFD_CLOEXEC, 10);
	for (int i = 0; i < 3; i++)
		if (moved[i] < 0 || dup2(moved[i], i) < 0)
			goto fail;
	if (ew < 0)
		goto fail;
	close_fds(3u, (unsigned)ew - 1);
	close_fds((unsigned)ew + 1, ~0u);
	if (cwd && chdir(cwd) < 0)
		goto fail;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(path, argv, envp);
fail:
	{
		int e = errno;
		while (write(ew >= 0 ? ew : err_w, &e, sizeof(e)) < 0 && errno == EINTR)
			;
	}
	_exit(127);
}

static void __attribute__((noreturn))
shepherd(const char *path, char *const argv[], char *const envp[], const char *cwd,
	 const int fds[3], int report, int flags, pid_t parent)
{
	struct sigaction dfl;
	sigset_t waitset;
	int xp[2], e, status = 0;
	pid_t prog;
	ssize_t n;

	/* Every signal at its default (all stay blocked: sigwaitinfo). */
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			sigaction(s, &dfl, NULL);
	/* A copy of the daemon's memory, environment included: nothing of
	 * it may be read through /proc by the program it starts. */
	prctl(PR_SET_DUMPABLE, 0);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (flags & PROCTREE_PDEATH) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(0);
	}
	if (pipe2(xp, O_CLOEXEC) < 0) {
		put_msg(report, 'E', errno);
		_exit(0);
	}
	prog = safe_fork();
	if (prog == 0) {
		close(xp[0]);
		start_program(path, argv, envp, cwd, fds, xp[1]);
	}
	e = errno;
	close(xp[1]);
	if (prog < 0) {
		put_msg(report, 'E', e);
		_exit(0);
	}
	setpgid(prog, prog);
	/* Nothing of the daemon's stays open here but the report pipe (and
	 * the pipe that says whether the exec worked). */
	close_all_but(report, xp[0]);
	while ((n = read(xp[0], &e, sizeof(e))) < 0 && errno == EINTR)
		;
	close(xp[0]);
	if (n == (ssize_t)sizeof(e)) {
		/* exec failed: the program is gone already. */
		kill_all(prog);
		put_msg(report, 'E', e);
		_exit(0);
	}
	put_msg(report, 'R', 0);

	sigemptyset(&waitset);
	sigaddset(&waitset, SIGCHLD);
	sigaddset(&waitset, SIGTERM);
	sigaddset(&waitset, SIGUSR1);
	sigaddset(&waitset, SIGHUP);
	sigaddset(&waitset, SIGINT);
	for (;;) {
		siginfo_t si;
		int sig = sigwaitinfo(&waitset, &si), prog_done = 0;
		if (sig < 0)
			continue;
		if (sig == SIGUSR1) {
			kill(-prog, SIGTERM); /* unreaped: the group is its own */
			continue;
		}
		if (sig != SIGCHLD)
			break; /* kill everything now */
		/* Reap exited orphans; stop when the program itself exited
		 * (left unreaped, so that its group can still be killed). */
		for (;;) {
			siginfo_t ci;
			memset(&ci, 0, sizeof(ci));
			if (waitid(P_ALL, 0, &ci, WEXITED | WNOHANG | WNOWAIT) < 0 || ci.si_pid == 0)
				break;
			if (ci.si_pid == prog) {
				prog_done = 1;
				break;
			}
			waitpid(ci.si_pid, NULL, 0);
		}
		if (prog_done)
			break;
	}
	status = kill_all(prog);
	put_msg(report, 'S', status);
	_exit(0);
}

/* --- the daemon's side ---------------------------------------------------- */

static int read_msg(int fd, char *tag, int *v)
{
	char m[MSG_LEN];
	size_t got = 0;
	while (got < sizeof(m)) {
		ssize_t n = read(fd, m + got, sizeof(m) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	*tag = m[0];
	memcpy(v, m + 1, sizeof(*v));
	return 0;
}

int proctree_spawn(struct proctree *t, const char *path, char *const argv[], char *const envp[],
		   const char *cwd, int fd0, int fd1, int fd2, int flags)
{
	int rp[2], fds[3] = {fd0, fd1, fd2}, v = 0, st;
	sigset_t all, old;
	pid_t parent = getpid(), pid;
	char tag = 0;

	t->pid = -1;
	t->pidfd = -1;
	t->report = -1;
	t->reaped = 0;
	t->status = 0;
	if (pipe2(rp, O_CLOEXEC) < 0)
		return errno;
	/* The shepherd starts with every signal blocked: no handler of the
	 * daemon's ever runs in it. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid == 0) {
		close(rp[0]);
		shepherd(path, argv, envp, cwd, fds, rp[1], flags, parent);
	}
	v = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	close(rp[1]);
	if (pid < 0) {
		close(rp[0]);
		return v;
	}
	if (read_msg(rp[0], &tag, &v) < 0 || tag != 'R') {
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		close(rp[0]);
		return tag == 'E' && v ? v : EIO;
	}
	t->pid = pid;
	t->report = rp[0];
	t->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (t->pidfd >= 0)
		fcntl(t->pidfd, F_SETFD, FD_CLOEXEC);
	return 0;
}

void proctree_term(struct proctree *t)
{
	if (t->pid > 0 && !t->reaped)
		kill(t->pid, SIGUSR1);
}

void proctree_kill(struct proctree *t)
{
	if (t->pid > 0 && !t->reaped)
		kill(t->pid, SIGTERM);
}

int proctree_reap(struct proctree *t, int block)
{
	int st;
	pid_t w;
	char tag;
	int v;

	if (t->pid <= 0 || t->reaped)
		return 1;
	do
		w = waitpid(t->pid, &st, block ? 0 : WNOHANG);
	while (w < 0 && errno == EINTR);
	if (w != t->pid)
		return 0;
	t->reaped = 1;
	/* The program's status, or the shepherd's own if it never said. */
	t->status = st;
	if (read_msg(t->report, &tag, &v) == 0 && tag == 'S')
		t->status = v;
	return 1;
}

void proctree_close(struct proctree *t)
{
	if (t->pid > 0 && !t->reaped) {
		proctree_kill(t);
		proctree_reap(t, 1);
	}
	if (t->pidfd >= 0)
		close(t->pidfd);
	if (t->report >= 0)
		close(t->report);
	t->pidfd = t->report = -1;
}

/* test_proctree.c - unit tests for the shepherd that runs a program and kills its tree. */
#include "check.h"
#include "proctree.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t main_pid;

/* Runs in whichever process calls fork(): outside the daemon's own
 * process it stands for a library's handler that cannot run after fork
 * in a child of a threaded process (a lock some other thread held). */
static void prepare(void)
{
	if (getpid() != main_pid)
		_exit(99);
}

static int run(const char *cmd, int *status)
{
	struct proctree t;
	char *argv[] = {"sh", "-c", (char *)cmd, NULL};
	char *envp[] = {"PATH=/usr/bin:/bin", NULL};
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC), rc;

	rc = proctree_spawn(&t, "/bin/sh", argv, envp, "/", fd, fd, fd, 0);
	close(fd);
	if (rc)
		return rc;
	proctree_reap(&t, 1);
	*status = t.status;
	proctree_close(&t);
	/* Reaped: signalling it again is a no-op. */
	proctree_kill(&t);
	proctree_term(&t);
	return 0;
}

/* The shepherd (a child of a threaded daemon) starts the program without
 * running the daemon's fork handlers: only async-signal-safe calls after
 * fork. */
static void test_no_fork_handlers_in_the_shepherd(void)
{
	int status = -1;
	main_pid = getpid();
	pthread_atfork(prepare, NULL, NULL);
	CHECK_INT(run("exit 7", &status), 0);
	CHECK(WIFEXITED(status));
	CHECK_INT(WEXITSTATUS(status), 7);
}

static void test_exec_failure(void)
{
	struct proctree t;
	char *argv[] = {"nope", NULL};
	char *envp[] = {NULL};
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	CHECK_INT(proctree_spawn(&t, "/nonexistent/nope", argv, envp, "/", fd, fd, fd, 0), 2);
	close(fd);
	/* Nothing left to reap. */
	CHECK_INT(waitpid(-1, NULL, WNOHANG), -1);
}

/* As an unprivileged user (root reads any /proc file): the program
 * cannot read its parent's - the shepherd's, a copy of the daemon's -
 * environment. */
static void test_shepherd_not_readable(void)
{
	pid_t p = fork();
	int st = -1;
	if (p == 0) {
		int status = -1;
		if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
			_exit(2);
		/* As a daemon started by that user is (setuid cleared it). */
		prctl(PR_SET_DUMPABLE, 1);
		if (run("cat /proc/$PPID/environ >/dev/null 2>&1", &status) != 0)
			_exit(3);
		_exit(WIFEXITED(status) && WEXITSTATUS(status) != 0 ? 0 : 1);
	}
	waitpid(p, &st, 0);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
}

/* On a kernel without close_range (before 5.9; here a seccomp filter
 * makes it fail with ENOSYS) no descriptor of the daemon's reaches the
 * program either. */
static void test_without_close_range(void)
{
	pid_t p = fork();
	int st = -1;
	if (p == 0) {
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_close_range, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
		int status = -1, fd = open("/dev/null", O_RDONLY);
		/* Not O_CLOEXEC, as a library's descriptor might be. */
		if (fd < 0 || dup2(fd, 40) != 40)
			_exit(2);
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
			_exit(3);
		if (syscall(SYS_close_range, 100u, 101u, 0u) == 0 || errno != ENOSYS)
			_exit(4);
		if (run("[ -e /proc/self/fd/40 ] && exit 1; exit 0", &status) != 0)
			_exit(5);
		_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 6);
	}
	waitpid(p, &st, 0);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 3) {
		printf("skipped: no seccomp filters here\n");
		return;
	}
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
}

int main(void)
{
	test_without_close_range();
	test_shepherd_not_readable();
	test_no_fork_handlers_in_the_shepherd();
	test_exec_failure();
	return CHECK_DONE();
}

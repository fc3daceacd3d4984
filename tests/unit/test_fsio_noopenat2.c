/* test_fsio_noopenat2.c - the no-follow opens of fsio.h on a kernel
 * without openat2 (made to answer ENOSYS here with a seccomp filter): no
 * symlink on the way is followed, a planted .lmsfs included. */
#include "check.h"
#include "fsio.h"
#include "spool.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char root[] = "/tmp/lmsfs-noopenat2-XXXXXX";

/* From here on openat2 fails with ENOSYS, as on kernels before 5.6. */
static int no_openat2(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		printf("FAIL: cannot write %s\n", path);
	if (fd >= 0)
		close(fd);
}

static off_t size_of(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

int main(void)
{
	char conv[128], elsewhere[128], planted[160], cmd[200];
	struct spool_entry *v = NULL, e;
	size_t n = 99;
	int d, fd;
	off_t planted_size;

	if (!mkdtemp(root))
		return 1;
	snprintf(conv, sizeof(conv), "%s/c", root);
	snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", root);
	snprintf(planted, sizeof(planted), "%s/queue", elsewhere);
	mkdir(conv, 0700);
	mkdir(elsewhere, 0700);
	put(planted, "{\"id\":\"00000000000000aa\",\"content\":\"planted\"}\n");
	planted_size = size_of(planted);
	d = open(conv, O_RDONLY | O_DIRECTORY);
	CHECK_INT(symlinkat(elsewhere, d, STORE_PRIVATE), 0);
	CHECK_INT(no_openat2(), 0);
	CHECK_INT(syscall(SYS_openat2, d, ".", NULL, 0), -1);

	/* Neither read nor written through the link. */
	CHECK_INT(spool_load(d, &v, &n), -ELOOP);
	spool_free(v, n);
	memset(&e, 0, sizeof(e));
	snprintf(e.id, sizeof(e.id), "00000000000000bb");
	e.text = "mine";
	CHECK(spool_append(d, &e) < 0);
	CHECK_INT(size_of(planted), planted_size);
	off_t at = 0;
	CHECK_INT(store_partial_get(d, &at), 0);
	fd = fsio_open(d, STORE_SPOOL_PATH, O_RDONLY, 0);
	CHECK_INT(fd, -ELOOP);
	if (fd >= 0)
		close(fd);
	/* A path leaving the directory is refused too. */
	fd = fsio_open(d, "../c/x", O_WRONLY | O_CREAT, 0600);
	CHECK(fd < 0);
	if (fd >= 0)
		close(fd);
	/* Real directories on the way still work. */
	CHECK_INT(mkdirat(d, "files", 0700), 0);
	fd = fsio_open(d, "files/a", O_WRONLY | O_CREAT, 0600);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK_INT(fsio_append(d, "files/a", "x", 1, FSIO_SYNC, NULL), 0);
	close(d);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		printf("could not remove %s\n", root);
	return CHECK_DONE();
}

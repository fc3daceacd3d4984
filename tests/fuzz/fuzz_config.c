/* libFuzzer target: the configuration file parser and checker. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct config c;
	char err[512], path[64];
	int fd = memfd_create("fuzz-config", 0);

	if (fd < 0)
		return 0;
	if (write(fd, d, n) != (ssize_t)n) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	config_init(&c);
	if (config_load_file(&c, path, err, sizeof(err)) == 0)
		config_check(&c, err, sizeof(err));
	config_free(&c);
	close(fd);
	return 0;
}

/* util.c - clocks, a string hash, small text helpers. */
#include "util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

unsigned util_strhash(unsigned seed, const char *s)
{
	unsigned h = 2166136261u ^ seed;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
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

double round_to(double v, int decimals)
{
	static const double scale[] = {1, 10, 100, 1000, 1e4, 1e5, 1e6};
	double k = scale[decimals < 0 ? 0 : decimals > 6 ? 6 : decimals];
	return round(v * k) / k;
}

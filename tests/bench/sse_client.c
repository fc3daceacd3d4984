/* sse_client.c - the benchmark's yardstick for streaming: a minimal C
 * client that POSTs one chat completion, parses each SSE event with cJSON
 * and appends its text to a file (one write per network read), which is
 * what lmsfs does for `stream` without the filesystem around it.
 *
 *   sse_client URL BODY OUTFILE      prints the number of text pieces
 */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct client {
	char *line;  /* the current, incomplete line */
	size_t len, cap;
	char *text;  /* text of this read, written at its end */
	size_t tlen, tcap;
	long pieces;
	int fd;
};

static void put(char **b, size_t *len, size_t *cap, const char *p, size_t n)
{
	if (*len + n + 1 > *cap) {
		*cap = (*len + n + 1) * 2;
		*b = realloc(*b, *cap);
		if (!*b)
			abort();
	}
	memcpy(*b + *len, p, n);
	*len += n;
	(*b)[*len] = '\0';
}

static void event(struct client *c, const char *data)
{
	cJSON *j, *ch, *d, *t;

	if (strcmp(data, "[DONE]") == 0)
		return;
	j = cJSON_Parse(data);
	ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
	d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
	t = cJSON_GetObjectItemCaseSensitive(d, "content");
	if (cJSON_IsString(t) && t->valuestring[0]) {
		put(&c->text, &c->tlen, &c->tcap, t->valuestring, strlen(t->valuestring));
		c->pieces++;
	}
	cJSON_Delete(j);
}

static size_t on_data(char *p, size_t sz, size_t nm, void *u)
{
	struct client *c = u;
	size_t n = sz * nm, i = 0;

	while (i < n) {
		char *nl = memchr(p + i, '\n', n - i);
		size_t k = nl ? (size_t)(nl - (p + i)) : n - i;
		put(&c->line, &c->len, &c->cap, p + i, k);
		i += k;
		if (!nl)
			break;
		i++;
		if (c->len && c->line[c->len - 1] == '\r')
			c->line[--c->len] = '\0';
		if (c->len > 5 && strncmp(c->line, "data:", 5) == 0)
			event(c, c->line + (c->line[5] == ' ' ? 6 : 5));
		c->len = 0;
	}
	if (c->tlen && write(c->fd, c->text, c->tlen) != (ssize_t)c->tlen)
		return 0;
	c->tlen = 0;
	return n;
}

int main(int argc, char **argv)
{
	struct client c = {0};
	struct curl_slist *h = NULL;
	CURL *curl;
	CURLcode rc;

	if (argc != 4) {
		fprintf(stderr, "usage: sse_client URL BODY OUTFILE\n");
		return 2;
	}
	c.fd = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (c.fd < 0) {
		perror(argv[3]);
		return 1;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	curl = curl_easy_init();
	h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(curl, CURLOPT_URL, argv[1]);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, argv[2]);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &c);
	rc = curl_easy_perform(curl);
	curl_slist_free_all(h);
	curl_easy_cleanup(curl);
	curl_global_cleanup();
	close(c.fd);
	if (rc != CURLE_OK) {
		fprintf(stderr, "%s\n", curl_easy_strerror(rc));
		return 1;
	}
	printf("%ld\n", c.pieces);
	free(c.line);
	free(c.text);
	return 0;
}

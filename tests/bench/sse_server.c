/* sse_server.c - a benchmark LM Studio stand-in that is never the
 * bottleneck: it streams chat-completion chunks as fast as the socket takes
 * them (or paced), and says how fast it went.
 *
 *   sse_server [-p PORT] [-q]       prints "PORT" on stdout when listening
 *
 * Per request, the JSON body may carry (lmsfs passes params.json through):
 *   "bench_tokens": N        chunks to send (default 16)
 *   "bench_interval_us": U   pause between chunks (default 0)
 *   "bench_tool": 1          first answer with a call of the tool "noop"
 * GET /api/v0/models lists one loaded model "bench-model".
 * Each finished stream logs "events=N seconds=S rate=R/s" on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int quiet;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static long json_long(const char *body, const char *key, long dflt)
{
	char pat[64];
	const char *p;
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(body, pat);
	return p ? strtol(p + strlen(pat), NULL, 10) : dflt;
}

static const char models[] =
	"{\"object\":\"list\",\"data\":[{\"id\":\"bench-model\",\"object\":\"model\","
	"\"type\":\"llm\",\"publisher\":\"bench\",\"arch\":\"none\",\"compatibility_type\":"
	"\"gguf\",\"quantization\":\"Q4\",\"state\":\"loaded\",\"max_context_length\":8192}]}";

static long count(const char *hay, const char *needle)
{
	long n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static int tool_reply(int fd)
{
	static const char msg[] =
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":"
		"[{\"index\":0,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":"
		"\"noop\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n"
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
		"\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n"
		"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"
		"data: [DONE]\n\n";
	return send_all(fd, msg, sizeof(msg) - 1) ? -1 : 1;
}

static int stream_reply(int fd, const char *body)
{
	/* "bench_tool": 1 asks for one call of the tool "noop" per turn: when
	 * fewer tool results than user prompts are in the history. */
	if (json_long(body, "bench_tool", 0) == 1 &&
	    count(body, "\"role\":\"tool\"") < count(body, "\"role\":\"user\""))
		return tool_reply(fd);
	long n = json_long(body, "bench_tokens", 16);
	long us = json_long(body, "bench_interval_us", 0);
	static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
				   "Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
	static const char first[] = "data: {\"id\":\"b\",\"object\":\"chat.completion.chunk\","
				    "\"created\":1,\"model\":\"bench-model\",\"choices\":[{\"index\":0,"
				    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
				    "\"finish_reason\":null}]}\n\n";
	static const char tok[] = "data: {\"id\":\"b\",\"object\":\"chat.completion.chunk\","
				  "\"created\":1,\"model\":\"bench-model\",\"choices\":[{\"index\":0,"
				  "\"delta\":{\"content\":\"tok \"},\"finish_reason\":null}]}\n\n";
	static const char tail[] = "data: {\"id\":\"b\",\"object\":\"chat.completion.chunk\","
				   "\"created\":1,\"model\":\"bench-model\",\"choices\":[{\"index\":0,"
				   "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
	char *batch;
	size_t per = sizeof(tok) - 1, nb = 512;
	double t0 = now();
	long sent = 0;

	if (send_all(fd, head, sizeof(head) - 1) || send_all(fd, first, sizeof(first) - 1))
		return -1;
	batch = malloc(per * nb);
	if (!batch)
		return -1;
	for (size_t i = 0; i < nb; i++)
		memcpy(batch + i * per, tok, per);
	while (sent < n) {
		long k = us > 0 ? 1 : (n - sent < (long)nb ? n - sent : (long)nb);
		if (send_all(fd, batch, per * (size_t)k)) {
			free(batch);
			return -1;
		}
		sent += k;
		if (us > 0)
			usleep((useconds_t)us);
	}
	free(batch);
	if (send_all(fd, tail, sizeof(tail) - 1))
		return -1;
	if (!quiet) {
		double dt = now() - t0;
		fprintf(stderr, "events=%ld seconds=%.3f rate=%.0f/s\n", sent, dt,
			dt > 0 ? sent / dt : 0);
	}
	return 1; /* close */
}

static void *conn(void *arg)
{
	int fd = (int)(long)arg;
	size_t cap = 1 << 20, len = 0, need = 0, body_off = 0;
	char *buf = malloc(cap);

	while (buf) {
		char *hdr_end;
		ssize_t r;
		if (cap - len < 65536) {
			/* Long histories make big requests. */
			char *nb = cap < (512u << 20) ? realloc(buf, cap * 2) : NULL;
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		r = recv(fd, buf + len, cap - 1 - len, 0);
		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		/* Parse the headers once; then only count body bytes (a long
		 * history makes a request of many megabytes). */
		if (!need) {
			hdr_end = strstr(buf, "\r\n\r\n");
			if (!hdr_end)
				continue;
			long clen = 0;
			char save = hdr_end[0];
			hdr_end[0] = '\0';
			char *cl = strcasestr(buf, "content-length:");
			hdr_end[0] = save;
			if (cl)
				clen = strtol(cl + 15, NULL, 10);
			need = (size_t)(hdr_end + 4 - buf) + (size_t)clen;
			body_off = (size_t)(hdr_end + 4 - buf);
		}
		if (len < need)
			continue;
		hdr_end = buf + body_off - 4;
		if (!strncmp(buf, "GET /api/v0/models", 18) || !strncmp(buf, "GET /v1/models", 14)) {
			char h[160];
			int n = snprintf(h, sizeof(h),
					 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
					 "Content-Length: %zu\r\n\r\n", sizeof(models) - 1);
			if (send_all(fd, h, (size_t)n) || send_all(fd, models, sizeof(models) - 1))
				break;
		} else if (!strncmp(buf, "POST", 4)) {
			if (stream_reply(fd, hdr_end + 4) != 0)
				break;
		} else {
			static const char nf[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
			if (send_all(fd, nf, sizeof(nf) - 1))
				break;
		}
		memmove(buf, buf + need, len - need);
		len -= need;
		need = 0;
	}
	free(buf);
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = {0};
	socklen_t al = sizeof(a);
	int one = 1, port = 0, s;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-p") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-q"))
			quiet = 1;
	}
	signal(SIGPIPE, SIG_IGN);
	s = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((unsigned short)port);
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 512)) {
		perror("sse_server");
		return 1;
	}
	getsockname(s, (struct sockaddr *)&a, &al);
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		pthread_t t;
		int c = accept(s, NULL, NULL);
		if (c < 0)
			continue;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (pthread_create(&t, NULL, conn, (void *)(long)c) == 0)
			pthread_detach(t);
		else
			close(c);
	}
}

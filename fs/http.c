/* http.c - libcurl wrapper with a pool of easy handles.
 *
 * Each pooled handle is an easy handle and the multi handle that runs it,
 * whose cache keeps its one connection; handles go back to a pool of
 * max_idle_connections after a request, so the next request (from any
 * thread, any conversation) reuses a warm connection. libcurl warns that
 * sharing the connection cache itself between concurrent threads is
 * unsafe, so only DNS and TLS sessions are shared. The multi handle is
 * there so that a transfer is looked at every POLL_MS (curl_easy_perform
 * waits up to a second between two looks).
 *
 * Silence on a stream is measured against the last byte that reached the
 * socket, whatever it belongs to: body, a header line still being sent, a
 * TLS record. Curl reports only whole header lines and body bytes, so each
 * pooled handle keeps the sockets of its connections (opened and closed
 * through our callbacks: a reused connection's socket is known too) and,
 * before declaring silence, asks the kernel when data last arrived on them
 * (TCP_INFO's tcpi_last_data_recv).
 *
 * A streamed answer is complete at its [DONE] (or error event), but the
 * reply is not: the terminating chunk follows. Stopping the transfer there
 * would make curl close the connection, so every streamed turn would open
 * a new one (a TLS handshake per turn behind an HTTPS gateway). Instead the
 * rest of the body is read and dropped, bounded by DRAIN_MAX bytes and
 * DRAIN_MS milliseconds; a server that keeps sending, or keeps the reply
 * open, loses its connection and delays nothing much: the answer is
 * already whole. A transfer that fails (cancelled, cut, refused) is
 * dropped with its handle, so no half-read connection is ever reused.
 *
 * Lock order: pool_lock and the share locks are leaves.
 */
#include "http.h"

#include "config.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HANDLE_SOCKS 4 /* a connection, plus attempts racing to replace it */
#define DRAIN_MAX (64 * 1024) /* body bytes read after the sink is done */
#define DRAIN_MS 250          /* and how long they may take */
#define POLL_MS 100           /* longest wait between two looks at a
				 transfer (cancel, silence, drain) */

/* An easy handle and the sockets its connections hold. Used by one thread
 * at a time (it is in the pool or in one request); curl calls the socket
 * callbacks from that thread, or from curl_easy_cleanup(). */
struct handle {
	CURL *h;
	CURLM *m; /* runs h, and keeps its connection between requests */
	curl_socket_t socks[HANDLE_SOCKS]; /* CURL_SOCKET_BAD: free slot */
	int open_errno; /* why the last socket could not be opened, or 0 */
};

static CURLSH *share;
static pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
static const struct config *cfg;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle **pool; /* pool_lock */
static size_t npool;         /* pool_lock */

static struct handle *handle_get(void)
{
	struct handle *hd = NULL;
	pthread_mutex_lock(&pool_lock);
	if (npool > 0)
		hd = pool[--npool];
	pthread_mutex_unlock(&pool_lock);
	if (hd) {
		curl_easy_reset(hd->h); /* options go, connections stay */
		return hd;
	}
	hd = calloc(1, sizeof(*hd));
	if (!hd)
		return NULL;
	for (int i = 0; i < HANDLE_SOCKS; i++)
		hd->socks[i] = CURL_SOCKET_BAD;
	hd->h = curl_easy_init();
	hd->m = curl_multi_init();
	if (!hd->h || !hd->m) {
		curl_easy_cleanup(hd->h);
		curl_multi_cleanup(hd->m);
		free(hd);
		return NULL;
	}
	curl_multi_setopt(hd->m, CURLMOPT_MAXCONNECTS, 1L); /* the pool bounds the total */
	return hd;
}

static void handle_free(struct handle *hd)
{
	/* The multi handle holds the connection: it closes its socket
	 * through on_close. */
	curl_multi_cleanup(hd->m);
	curl_easy_cleanup(hd->h);
	free(hd);
}

/* curl_easy_perform, but curl looks at the transfer (and calls
 * on_progress) at least every POLL_MS, not once a second: a cancel, the
 * end of a drain or a silence is seen within that. */
static CURLcode perform(struct handle *hd)
{
	CURLcode rc = CURLE_OK;
	CURLMcode mc;
	CURLMsg *msg;
	int running = 1, left;

	if (curl_multi_add_handle(hd->m, hd->h) != CURLM_OK)
		return CURLE_OUT_OF_MEMORY;
	while (running) {
		mc = curl_multi_perform(hd->m, &running);
		if (mc == CURLM_OK && running)
			mc = curl_multi_poll(hd->m, NULL, 0, POLL_MS, NULL);
		if (mc != CURLM_OK) {
			rc = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_RECV_ERROR;
			break;
		}
	}
	while ((msg = curl_multi_info_read(hd->m, &left)))
		if (msg->msg == CURLMSG_DONE && msg->easy_handle == hd->h)
			rc = msg->data.result;
	curl_multi_remove_handle(hd->m, hd->h);
	return rc;
}

static void handle_put(struct handle *hd)
{
	pthread_mutex_lock(&pool_lock);
	if (npool < (size_t)cfg->max_idle_connections) {
		pool[npool++] = hd;
		hd = NULL;
	}
	pthread_mutex_unlock(&pool_lock);
	if (hd)
		handle_free(hd);
}

static curl_socket_t on_open(void *u, curlsocktype purpose,
			     struct curl_sockaddr *a)
{
	struct handle *hd = u;
	curl_socket_t s;

	(void)purpose;
#ifdef SOCK_CLOEXEC
	s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
	s = socket(a->family, a->socktype, a->protocol);
#endif
	if (s == CURL_SOCKET_BAD) {
		hd->open_errno = errno; /* out of descriptors is not the server's fault */
		return s;
	}
	for (int i = 0; i < HANDLE_SOCKS; i++)
		if (hd->socks[i] == CURL_SOCKET_BAD) {
			hd->socks[i] = s;
			break;
		}
	return s;
}

static int on_close(void *u, curl_socket_t s)
{
	struct handle *hd = u;
	for (int i = 0; i < HANDLE_SOCKS; i++)
		if (hd->socks[i] == s)
			hd->socks[i] = CURL_SOCKET_BAD;
	return close(s);
}

/* now_ms() of the last data the handle's sockets received (the connect,
 * if none yet), or 0 when the kernel cannot say. */
static long long last_heard_ms(const struct handle *hd)
{
	long long best = 0;
#ifdef TCP_INFO
	long long now = now_ms();
	for (int i = 0; i < HANDLE_SOCKS; i++) {
		struct tcp_info ti;
		socklen_t len = sizeof(ti);
		if (hd->socks[i] == CURL_SOCKET_BAD ||
		    getsockopt(hd->socks[i], IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
		    len < sizeof(ti))
			continue;
		if (now - (long long)ti.tcpi_last_data_recv > best)
			best = now - (long long)ti.tcpi_last_data_recv;
	}
#else
	(void)hd;
#endif
	return best;
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access a,
		       void *u)
{
	(void)h; (void)a; (void)u;
	pthread_mutex_lock(&share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *u)
{
	(void)h; (void)u;
	pthread_mutex_unlock(&share_locks[data]);
}

int http_init(const struct config *c)
{
	cfg = c;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
		return -ENOMEM;
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&share_locks[i], NULL);
	share = curl_share_init();
	pool = calloc((size_t)(c->max_idle_connections > 0 ? c->max_idle_connections : 1),
		      sizeof(*pool));
	if (!share || !pool)
		return -ENOMEM;
	curl_share_setopt(share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	return 0;
}

void http_cleanup(void)
{
	pthread_mutex_lock(&pool_lock);
	while (npool > 0)
		handle_free(pool[--npool]);
	free(pool);
	pool = NULL;
	pthread_mutex_unlock(&pool_lock);
	if (share)
		curl_share_cleanup(share);
	share = NULL;
	curl_global_cleanup();
}

void http_reply_init(struct http_reply *r, size_t body_cap)
{
	memset(r, 0, sizeof(*r));
	buf_init(&r->body, body_cap);
	r->retry_after_ms = -1;
}

void http_reply_free(struct http_reply *r)
{
	if (r)
		buf_free(&r->body);
}

struct xfer {
	struct handle *hd;
	CURL *h;
	struct http_reply *r;
	http_sink_fn sink;
	void *ctx;
	const volatile int *cancel;
	int overflow;
	int err_truncated;    /* an error body was cut at the cap */
	long long last_byte;  /* now_ms() of the last byte heard (streams) */
	long silence_ms;      /* > 0: abort after this long without a byte */
	int silent;           /* aborted for silence */
	int draining;         /* the sink is done: the rest is read, dropped */
	size_t drained;       /* bytes dropped so far */
	long long drain_from; /* now_ms() when draining began */
	size_t body_bytes;    /* body bytes received */
	long code;            /* status of this reply (0: none yet); a pooled
				 handle still reports its previous one */
};

static size_t on_data(char *p, size_t sz, size_t n, void *u)
{
	struct xfer *x = u;
	size_t len = sz * n;
	long status = 0;

	status = x->code;
	x->last_byte = now_ms();
	x->body_bytes += len;
	if (x->draining) {
		x->drained += len;
		return x->drained > DRAIN_MAX ? 0 : len;
	}
	if (flag_get(x->cancel))
		return 0;
	if (x->sink && status >= 200 && status < 300) {
		int rc = x->sink(x->ctx, p, len);
		if (rc == 0)
			return len;
		x->r->sink_stopped = 1;
		if (rc < 0)
			return 0;
		/* Done: read the reply to its end, so that the connection
		 * can serve the next request. */
		x->draining = 1;
		x->drain_from = now_ms();
		return len;
	}
	if (buf_append(&x->r->body, p, len) != 0) {
		if (status >= 300 || status < 200) {
			/* An error page: its start is enough to classify it. */
			size_t room = x->r->body.max - x->r->body.len;
			buf_append(&x->r->body, p, room < len ? room : len);
			x->err_truncated = 1;
			return 0;
		}
		x->overflow = 1;
		return 0;
	}
	return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *u)
{
	struct xfer *x = u;
	size_t len = sz * n;
	static const char name[] = "retry-after:";

	x->last_byte = now_ms(); /* a header is life too */

	if (len > 9 && strncmp(p, "HTTP/", 5) == 0) {
		const char *sp = memchr(p, ' ', len);
		if (sp)
			x->code = strtol(sp + 1, NULL, 10);
		x->r->retry_after_ms = -1; /* headers of a new reply */
	}

	if (len > sizeof(name) && strncasecmp(p, name, sizeof(name) - 1) == 0) {
		char tmp[32];
		size_t vl = len - (sizeof(name) - 1);
		if (vl >= sizeof(tmp))
			vl = sizeof(tmp) - 1;
		memcpy(tmp, p + sizeof(name) - 1, vl);
		tmp[vl] = '\0';
		char *end;
		double secs = strtod(tmp, &end);
		if (end != tmp && secs >= 0 && secs < 3600)
			x->r->retry_after_ms = (long)(secs * 1000);
	}
	return len;
}

static int on_progress(void *u, curl_off_t a, curl_off_t b, curl_off_t c,
		       curl_off_t d)
{
	(void)a; (void)b; (void)c; (void)d;
	struct xfer *x = u;
	if (x->draining)
		return now_ms() - x->drain_from > DRAIN_MS;
	if (flag_get(x->cancel))
		return 1;
	if (x->silence_ms > 0 && now_ms() - x->last_byte > x->silence_ms) {
		/* Curl saw nothing whole; the socket may have seen bytes
		 * (half a header line, one byte a second). */
		long long heard = last_heard_ms(x->hd);
		if (heard > x->last_byte)
			x->last_byte = heard;
		if (now_ms() - x->last_byte > x->silence_ms) {
			x->silent = 1;
			return 1;
		}
	}
	return 0;
}

int http_request(const char *method, const char *path, const char *json,
		 http_sink_fn sink, void *ctx, const volatile int *cancel,
		 struct http_reply *r)
{
	struct xfer x = {0};
	struct errclass_transfer t = {0};
	struct curl_slist *hdrs = NULL;
	char url[2048], auth[1024], errbuf[CURL_ERROR_SIZE] = "";
	CURLcode rc;
	int ret = 0;

	x.hd = handle_get();
	x.h = x.hd ? x.hd->h : NULL;
	if (!x.h) {
		t.curl_msg = "out of memory";
		r->transport = errclass_from_curl(CURLE_OUT_OF_MEMORY, &t, r->err,
						  sizeof(r->err));
		return -ENOMEM;
	}
	x.hd->open_errno = 0;
	x.r = r;
	x.sink = sink;
	x.ctx = ctx;
	x.cancel = cancel;

	snprintf(url, sizeof(url), "%s%s", cfg->base_url, path);
	curl_easy_setopt(x.h, CURLOPT_URL, url);
	curl_easy_setopt(x.h, CURLOPT_SHARE, share);
	curl_easy_setopt(x.h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x.h, CURLOPT_OPENSOCKETFUNCTION, on_open);
	curl_easy_setopt(x.h, CURLOPT_OPENSOCKETDATA, x.hd);
	curl_easy_setopt(x.h, CURLOPT_CLOSESOCKETFUNCTION, on_close);
	curl_easy_setopt(x.h, CURLOPT_CLOSESOCKETDATA, x.hd);
	curl_easy_setopt(x.h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(x.h, CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms);
	if (sink) {
		/* A long answer may legitimately stream for minutes: bound the
		 * silence between bytes (checked in on_progress, which curl
		 * calls several times a second) instead of the whole transfer. */
		x.silence_ms = cfg->timeout_ms;
		x.last_byte = now_ms();
	} else {
		curl_easy_setopt(x.h, CURLOPT_TIMEOUT_MS,
				 r->timeout_ms > 0 ? r->timeout_ms : cfg->timeout_ms);
	}
	curl_easy_setopt(x.h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(x.h, CURLOPT_TCP_KEEPIDLE,
			 cfg->keep_alive_ms / 1000 > 0 ? cfg->keep_alive_ms / 1000 : 1L);
	curl_easy_setopt(x.h, CURLOPT_MAXAGE_CONN,
			 cfg->keep_alive_ms / 1000 > 0 ? cfg->keep_alive_ms / 1000 : 1L);
	curl_easy_setopt(x.h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(x.h, CURLOPT_USERAGENT, "lmsfs/" LMSFS_VERSION);
	curl_easy_setopt(x.h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(x.h, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(x.h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(x.h, CURLOPT_HEADERDATA, &x);
	curl_easy_setopt(x.h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(x.h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(x.h, CURLOPT_XFERINFODATA, &x);
	/* Only the API's own paths are ever requested: no redirects. */
	curl_easy_setopt(x.h, CURLOPT_FOLLOWLOCATION, 0L);

	if (cfg->api_key && cfg->api_key[0]) {
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg->api_key);
		hdrs = curl_slist_append(hdrs, auth);
	}
	if (json) {
		hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
		/* No "Expect: 100-continue" for large bodies (long histories):
		 * servers that never answer it would cost a second per turn. */
		hdrs = curl_slist_append(hdrs, "Expect:");
		if (sink)
			hdrs = curl_slist_append(hdrs, "Accept: text/event-stream");
		curl_easy_setopt(x.h, CURLOPT_POSTFIELDS, json);
		curl_easy_setopt(x.h, CURLOPT_POSTFIELDSIZE, (long)strlen(json));
	}
	if (strcmp(method, "GET") != 0 && !json)
		curl_easy_setopt(x.h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(x.h, CURLOPT_HTTPHEADER, hdrs);

	rc = perform(x.hd);
	r->status = x.code;

	t.status = r->status;
	t.streamed = sink != NULL;
	t.body_bytes = x.body_bytes;
	t.sink_stopped = r->sink_stopped;
	t.error_body_cut = x.err_truncated;
	t.silent = x.silent;
	t.overflow = x.overflow;
	t.cancelled = flag_get(cancel);
	t.silence_ms = x.silence_ms;
	t.body_cap = r->body.max;
	t.curl_msg = errbuf[0] ? errbuf : curl_easy_strerror(rc);
	t.sys_errno = x.hd->open_errno;
	r->transport = errclass_from_curl((int)rc, &t, r->err, sizeof(r->err));
	if (r->transport != EC_NONE) {
		log_debug("%s %s: curl %d, HTTP %ld: %s", method, path, (int)rc, r->status,
			  errclass_name(r->transport));
		ret = -errclass_errno(r->transport);
	}
	curl_slist_free_all(hdrs);
	if (rc == CURLE_OK || r->sink_stopped)
		handle_put(x.hd);
	else
		handle_free(x.hd); /* a failed connection is not worth keeping */
	return ret;
}

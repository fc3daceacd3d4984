/* test_errclass.c - unit tests for failure classification: the class table,
 * curl results, HTTP statuses and error bodies, in-stream errors, and the
 * verdict on a finished attempt. */
#include "check.h"
#include "errclass.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <string.h>

static void test_table(void)
{
	static const struct {
		enum err_class c;
		const char *name;
		int err, retry;
		enum err_verdict verdict;
		int answered;
	} want[] = {
	    {EC_NONE, "none", EIO, 0, EV_ALIVE, 1},
	    {EC_UNREACHABLE, "unreachable", EHOSTDOWN, 1, EV_FAILED, 0},
	    {EC_TIMEOUT, "timeout", ETIMEDOUT, 1, EV_FAILED, 0},
	    /* 429: the server is alive but busy; neither counts nor resets. */
	    {EC_RATE_LIMITED, "rate_limited", EBUSY, 1, EV_NONE, 1},
	    {EC_AUTH, "auth", EACCES, 0, EV_ALIVE, 1},
	    {EC_MODEL_NOT_FOUND, "model_not_found", ENOENT, 0, EV_ALIVE, 1},
	    {EC_NO_MODEL, "no_model", ENOENT, 0, EV_ALIVE, 1},
	    {EC_MODEL_NOT_ALLOWED, "model_not_allowed", EACCES, 0, EV_ALIVE, 1},
	    {EC_CONTEXT, "context_too_long", E2BIG, 0, EV_ALIVE, 1},
	    {EC_BAD_REQUEST, "bad_request", EINVAL, 0, EV_ALIVE, 1},
	    {EC_SERVER, "server_error", EIO, 1, EV_FAILED, 1},
	    {EC_PROTOCOL, "protocol", EPROTO, 0, EV_FAILED, 0},
	    {EC_BREAKER, "circuit_open", EBUSY, 0, EV_NONE, 1},
	    {EC_CANCELLED, "cancelled", ECANCELED, 0, EV_NONE, 1},
	    {EC_INTERRUPTED, "interrupted", EIO, 0, EV_NONE, 1},
	    {EC_STORAGE, "storage", EIO, 0, EV_NONE, 1},
	    /* Out of descriptors or memory: a local failure worth another
	     * try, never the server's (nor the request's) fault. */
	    {EC_RESOURCES, "resources", EMFILE, 1, EV_NONE, 1},
	};

	CHECK_INT(sizeof(want) / sizeof(want[0]), EC__COUNT);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		CHECK_INT(want[i].c, i);
		CHECK_STR(errclass_name(want[i].c), want[i].name);
		CHECK_INT(errclass_errno(want[i].c), want[i].err);
		CHECK_INT(errclass_retryable(want[i].c), want[i].retry);
		CHECK_INT(errclass_verdict(want[i].c), want[i].verdict);
		CHECK_INT(errclass_server_answered(want[i].c),
			  want[i].answered);
		/* Every retryable failure is the server's, or a 429, or
		 * the daemon's own lack of resources. */
		CHECK(!errclass_retryable(want[i].c) ||
		      errclass_verdict(want[i].c) == EV_FAILED ||
		      want[i].c == EC_RATE_LIMITED || want[i].c == EC_RESOURCES);
	}
	/* Out-of-range values are safe. */
	CHECK_STR(errclass_name(EC__COUNT), "unknown");
	CHECK_STR(errclass_name((enum err_class) - 1), "unknown");
	CHECK_INT(errclass_errno(EC__COUNT), EIO);
	CHECK_INT(errclass_retryable(EC__COUNT), 0);
	CHECK_INT(errclass_verdict(EC__COUNT), EV_NONE);
	CHECK_INT(errclass_server_answered(EC__COUNT), 1);

	CHECK_INT(errclass_of_model_listing(EC_AUTH), EC_AUTH);
	for (int c = 0; c < EC__COUNT; c++)
		if (c != EC_AUTH)
			CHECK_INT(errclass_of_model_listing((enum err_class)c),
				  EC_UNREACHABLE);
}

/* The codes come from <curl/curl.h>: this also checks the numbers that
 * errclass.c keeps without including it. */
static enum err_class curl_class(CURLcode rc, const struct errclass_transfer *t,
				 char *msg, size_t n)
{
	return errclass_from_curl((int)rc, t, msg, n);
}

static void test_curl_codes(void)
{
	struct errclass_transfer t = {.curl_msg = "curl says no"};
	char msg[256];

	CHECK_INT(curl_class(CURLE_OK, &t, msg, sizeof(msg)), EC_NONE);
	CHECK_STR(msg, "");

	static const struct {
		CURLcode rc;
		enum err_class c;
	} map[] = {
	    {CURLE_COULDNT_CONNECT, EC_UNREACHABLE},
	    {CURLE_COULDNT_RESOLVE_HOST, EC_UNREACHABLE},
	    {CURLE_COULDNT_RESOLVE_PROXY, EC_UNREACHABLE},
	    {CURLE_SEND_ERROR, EC_UNREACHABLE},
	    {CURLE_GOT_NOTHING, EC_UNREACHABLE},
	    {CURLE_OPERATION_TIMEDOUT, EC_TIMEOUT},
	    {CURLE_ABORTED_BY_CALLBACK, EC_CANCELLED},
	    /* Dropped before any body byte: worth another try. */
	    {CURLE_RECV_ERROR, EC_UNREACHABLE},
	    {CURLE_PARTIAL_FILE, EC_UNREACHABLE},
	    /* Anything else is a protocol failure. */
	    {CURLE_WRITE_ERROR, EC_PROTOCOL},
	    {CURLE_SSL_CONNECT_ERROR, EC_PROTOCOL},
	    {CURLE_PEER_FAILED_VERIFICATION, EC_PROTOCOL},
	    {CURLE_HTTP2, EC_PROTOCOL},
	    {CURLE_OUT_OF_MEMORY, EC_RESOURCES},
	    {CURLE_UNSUPPORTED_PROTOCOL, EC_PROTOCOL},
	    {CURLE_URL_MALFORMAT, EC_PROTOCOL},
	    {CURLE_BAD_CONTENT_ENCODING, EC_PROTOCOL},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		CHECK_INT(curl_class(map[i].rc, &t, msg, sizeof(msg)),
			  map[i].c);
		if (map[i].c != EC_RESOURCES)
			CHECK_STR(msg, "curl says no");
	}

	/* No descriptor left for the socket: never "unreachable" (which
	 * counts against the server), nor a bad request. */
	t.sys_errno = EMFILE;
	CHECK_INT(curl_class(CURLE_COULDNT_CONNECT, &t, msg, sizeof(msg)), EC_RESOURCES);
	CHECK(strstr(msg, "Too many open files") != NULL);
	CHECK(strstr(msg, "file descriptors") != NULL);
	t.sys_errno = ENFILE;
	CHECK_INT(curl_class(CURLE_COULDNT_CONNECT, &t, msg, sizeof(msg)), EC_RESOURCES);
	t.sys_errno = EACCES; /* not a lack of resources */
	CHECK_INT(curl_class(CURLE_COULDNT_CONNECT, &t, msg, sizeof(msg)), EC_UNREACHABLE);
	t.sys_errno = 0;
	CHECK_INT(errclass_of_local(-EMFILE, EC_BAD_REQUEST), EC_RESOURCES);
	CHECK_INT(errclass_of_local(ENFILE, EC_STORAGE), EC_RESOURCES);
	CHECK_INT(errclass_of_local(-ENOMEM, EC_STORAGE), EC_RESOURCES);
	CHECK_INT(errclass_of_local(-ENOBUFS, EC_STORAGE), EC_RESOURCES);
	CHECK_INT(errclass_of_local(-EACCES, EC_BAD_REQUEST), EC_BAD_REQUEST);
	CHECK_INT(errclass_of_local(-ENOSPC, EC_STORAGE), EC_STORAGE);

	/* After body bytes, a dropped connection is a truncated reply. */
	t.body_bytes = 1;
	CHECK_INT(curl_class(CURLE_RECV_ERROR, &t, msg, sizeof(msg)),
		  EC_PROTOCOL);
	CHECK_INT(curl_class(CURLE_PARTIAL_FILE, &t, msg, sizeof(msg)),
		  EC_PROTOCOL);
	CHECK_INT(curl_class(CURLE_GOT_NOTHING, &t, msg, sizeof(msg)),
		  EC_UNREACHABLE);

	/* No text from curl: a generic reason, never garbage. */
	t.curl_msg = NULL;
	CHECK_INT(curl_class(CURLE_COULDNT_CONNECT, &t, msg, sizeof(msg)),
		  EC_UNREACHABLE);
	CHECK(msg[0] != '\0');
}

static void test_curl_facts(void)
{
	struct errclass_transfer t = {
	    .curl_msg = "Failed writing", .silence_ms = 1500, .body_cap = 4096};
	char msg[256];

	/* A sink that stopped the transfer, or an error body cut at its cap
	 * on purpose: a reply arrived. */
	t.sink_stopped = 1;
	CHECK_INT(curl_class(CURLE_WRITE_ERROR, &t, msg, sizeof(msg)), EC_NONE);
	CHECK_STR(msg, "");
	/* After the sink was done, the rest of the reply is read and dropped
	 * within a bound: cut at the bound, cut by the server or by a cancel,
	 * the answer is whole all the same. */
	t.cancelled = 1;
	CHECK_INT(curl_class(CURLE_ABORTED_BY_CALLBACK, &t, msg, sizeof(msg)), EC_NONE);
	t.cancelled = 0;
	t.body_bytes = 100;
	CHECK_INT(curl_class(CURLE_PARTIAL_FILE, &t, msg, sizeof(msg)), EC_NONE);
	CHECK_INT(curl_class(CURLE_RECV_ERROR, &t, msg, sizeof(msg)), EC_NONE);
	t.body_bytes = 0;
	t.sink_stopped = 0;
	t.error_body_cut = 1;
	CHECK_INT(curl_class(CURLE_WRITE_ERROR, &t, msg, sizeof(msg)), EC_NONE);
	t.error_body_cut = 0;

	/* Silence on a stream is a timeout, with the bound in the reason. */
	t.silent = 1;
	CHECK_INT(curl_class(CURLE_ABORTED_BY_CALLBACK, &t, msg, sizeof(msg)),
		  EC_TIMEOUT);
	CHECK_STR(msg, "no data from the server for 1500 ms");
	/* ... and wins over a cancel that came at the same time. */
	t.cancelled = 1;
	CHECK_INT(curl_class(CURLE_ABORTED_BY_CALLBACK, &t, msg, sizeof(msg)),
		  EC_TIMEOUT);
	t.silent = 0;
	CHECK_INT(curl_class(CURLE_ABORTED_BY_CALLBACK, &t, msg, sizeof(msg)),
		  EC_CANCELLED);
	CHECK_STR(msg, "cancelled");
	CHECK_INT(curl_class(CURLE_WRITE_ERROR, &t, msg, sizeof(msg)),
		  EC_CANCELLED);
	/* A cancel flag does not turn a network failure into a cancel. */
	CHECK_INT(curl_class(CURLE_COULDNT_CONNECT, &t, msg, sizeof(msg)),
		  EC_UNREACHABLE);
	t.cancelled = 0;

	/* An oversize 2xx body. */
	t.overflow = 1;
	CHECK_INT(curl_class(CURLE_WRITE_ERROR, &t, msg, sizeof(msg)),
		  EC_PROTOCOL);
	CHECK_STR(msg, "response larger than 4096 bytes");
	t.cancelled = 1; /* the cap is the reason, not the cancel */
	CHECK_INT(curl_class(CURLE_WRITE_ERROR, &t, msg, sizeof(msg)),
		  EC_PROTOCOL);
	t.cancelled = 0;
	t.overflow = 0;

	/* A stream that timed out after its headers: the silence reason. */
	t.streamed = 1;
	t.status = 200;
	CHECK_INT(curl_class(CURLE_OPERATION_TIMEDOUT, &t, msg, sizeof(msg)),
		  EC_TIMEOUT);
	CHECK_STR(msg, "no data from the server for 1500 ms");
	t.status = 0; /* before any reply: curl's own reason */
	CHECK_INT(curl_class(CURLE_OPERATION_TIMEDOUT, &t, msg, sizeof(msg)),
		  EC_TIMEOUT);
	CHECK_STR(msg, "Failed writing");
	t.streamed = 0;
	t.status = 200;
	CHECK_INT(curl_class(CURLE_OPERATION_TIMEDOUT, &t, msg, sizeof(msg)),
		  EC_TIMEOUT);
	CHECK_STR(msg, "Failed writing");

	/* Messages are cut to the buffer, never overrun. */
	char tiny[8];
	memset(tiny, 'x', sizeof(tiny));
	t.curl_msg = "a long message from curl";
	curl_class(CURLE_COULDNT_CONNECT, &t, tiny, sizeof(tiny));
	CHECK_STR(tiny, "a long ");
}

static enum err_class http(long status, const char *body, char *msg, size_t n)
{
	return errclass_from_http(status, body, body ? strlen(body) : 0, msg,
				  n);
}

static void test_http(void)
{
	char msg[256];

	/* Plain statuses, no body. */
	CHECK_INT(http(401, NULL, msg, sizeof(msg)), EC_AUTH);
	CHECK_STR(msg, "HTTP 401");
	CHECK_INT(http(403, NULL, msg, sizeof(msg)), EC_AUTH);
	CHECK_INT(http(429, NULL, msg, sizeof(msg)), EC_RATE_LIMITED);
	CHECK_INT(http(404, NULL, msg, sizeof(msg)), EC_BAD_REQUEST);
	CHECK_INT(http(400, NULL, msg, sizeof(msg)), EC_BAD_REQUEST);
	CHECK_INT(http(413, NULL, msg, sizeof(msg)), EC_BAD_REQUEST);
	CHECK_INT(http(500, NULL, msg, sizeof(msg)), EC_SERVER);
	CHECK_INT(http(503, NULL, msg, sizeof(msg)), EC_SERVER);
	CHECK_INT(http(302, NULL, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_INT(http(0, NULL, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_STR(msg, "HTTP 0");

	/* A text body: its first line is the reason. */
	CHECK_INT(http(404, "Model xyz not here\nmore", msg, sizeof(msg)),
		  EC_MODEL_NOT_FOUND);
	CHECK_STR(msg, "HTTP 404: Model xyz not here");
	CHECK_INT(http(404, "Cannot POST /v1/x", msg, sizeof(msg)),
		  EC_BAD_REQUEST);
	CHECK_INT(http(502, "<html>Bad Gateway</html>\r\n", msg, sizeof(msg)),
		  EC_SERVER);
	CHECK_STR(msg, "HTTP 502: <html>Bad Gateway</html>");
	char longline[600];
	memset(longline, 'a', sizeof(longline) - 1);
	longline[sizeof(longline) - 1] = '\0';
	CHECK_INT(http(500, longline, msg, sizeof(msg)), EC_SERVER);
	CHECK_INT(strlen(msg), strlen("HTTP 500: ") + 199);

	/* LM Studio's error member, as text or as an object. */
	CHECK_INT(http(400,
		       "{\"error\":\"No models loaded. Please load a model\"}",
		       msg, sizeof(msg)),
		  EC_NO_MODEL);
	CHECK_STR(msg, "HTTP 400: No models loaded. Please load a model");
	CHECK_INT(http(400,
		       "{\"error\":\"Invalid model identifier \\\"x\\\"\"}",
		       msg, sizeof(msg)),
		  EC_MODEL_NOT_FOUND);
	CHECK_INT(http(404,
		       "{\"error\":{\"message\":\"nope\",\"code\":\"model_not_"
		       "found\"}}",
		       msg, sizeof(msg)),
		  EC_MODEL_NOT_FOUND);
	CHECK_STR(msg, "HTTP 404: nope");
	CHECK_INT(
	    http(400,
		 "{\"error\":{\"message\":\"The model 'q' was not found\"}}",
		 msg, sizeof(msg)),
	    EC_MODEL_NOT_FOUND);
	CHECK_INT(http(400,
		       "{\"error\":{\"message\":\"x\",\"code\":\"context_"
		       "length_exceeded\"}}",
		       msg, sizeof(msg)),
		  EC_CONTEXT);
	CHECK_INT(http(400,
		       "{\"error\":\"Trying to keep the first 9000 tokens when "
		       "context "
		       "length is 4096\"}",
		       msg, sizeof(msg)),
		  EC_CONTEXT);
	CHECK_INT(
	    http(500, "{\"error\":\"context overflow\"}", msg, sizeof(msg)),
	    EC_CONTEXT);
	CHECK_INT(
	    http(400, "{\"error\":\"too many tokens\"}", msg, sizeof(msg)),
	    EC_CONTEXT);
	CHECK_INT(http(400, "{\"error\":\"exceeds the context window\"}", msg,
		       sizeof(msg)),
		  EC_CONTEXT);
	CHECK_INT(http(400,
		       "{\"error\":{\"message\":\"bad "
		       "key\",\"type\":\"authentication_error\"}}",
		       msg, sizeof(msg)),
		  EC_AUTH);
	CHECK_INT(http(401, "{\"error\":\"who are you\"}", msg, sizeof(msg)),
		  EC_AUTH);
	CHECK_INT(http(400,
		       "{\"error\":{\"message\":\"slow\",\"code\":\"rate_limit_"
		       "exceeded\"}}",
		       msg, sizeof(msg)),
		  EC_RATE_LIMITED);
	CHECK_INT(http(429, "{\"error\":\"slow down\"}", msg, sizeof(msg)),
		  EC_RATE_LIMITED);
	CHECK_INT(http(503, "{\"error\":\"busy\"}", msg, sizeof(msg)),
		  EC_SERVER);
	CHECK_INT(http(422, "{\"error\":\"bad field\"}", msg, sizeof(msg)),
		  EC_BAD_REQUEST);
	CHECK_INT(http(400, "{\"error\":{}}", msg, sizeof(msg)),
		  EC_BAD_REQUEST);
	CHECK_STR(msg, "HTTP 400: (no message)");
	/* An error member in a 2xx body: the server gave up. */
	CHECK_INT(http(200, "{\"error\":\"oops\"}", msg, sizeof(msg)),
		  EC_SERVER);
	/* JSON without an error member is a body like any other. */
	CHECK_INT(http(500, "{\"detail\":\"x\"}", msg, sizeof(msg)), EC_SERVER);
	CHECK_STR(msg, "HTTP 500: {\"detail\":\"x\"}");
	CHECK_INT(http(200, "{\"detail\":\"x\"}", msg, sizeof(msg)),
		  EC_PROTOCOL);
}

static void test_error_json(void)
{
	char msg[256];
	cJSON *e;

	/* An error event inside a 200 stream (status 0): the server's text,
	 * no "HTTP" prefix. */
	e = cJSON_CreateString("model crashed");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)), EC_SERVER);
	CHECK_STR(msg, "model crashed");
	cJSON_Delete(e);

	e = cJSON_Parse("{\"message\":\"Context length exceeded\"}");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)), EC_CONTEXT);
	CHECK_STR(msg, "Context length exceeded");
	cJSON_Delete(e);

	e = cJSON_Parse("{\"code\":\"model_not_found\"}");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)),
		  EC_MODEL_NOT_FOUND);
	CHECK_STR(msg, "(no message)");
	cJSON_Delete(e);

	e = cJSON_Parse("42");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)), EC_SERVER);
	CHECK_INT(errclass_from_error_json(e, 404, msg, sizeof(msg)),
		  EC_BAD_REQUEST);
	CHECK_STR(msg, "HTTP 404: (no message)");
	cJSON_Delete(e);
	CHECK_INT(errclass_from_error_json(NULL, 0, msg, sizeof(msg)),
		  EC_SERVER);
}

/* An error object inside a 200 reply (status 0: an SSE event; 200: an
 * error member in a whole body) gets the class that the same object gets in
 * an HTTP error body with the status a server sends it with. */
static void test_error_json_like_http(void)
{
	static const struct {
		const char *json;
		long status; /* what servers send it with */
		enum err_class want;
	} cases[] = {
	    /* OpenAI / LM Studio: the type says it. */
	    {"{\"message\":\"'temperature' must be at most 2\","
	     "\"type\":\"invalid_request_error\",\"param\":\"temperature\","
	     "\"code\":null}",
	     400, EC_BAD_REQUEST},
	    /* vLLM: an exception name and the status as a number. */
	    {"{\"object\":\"error\",\"message\":\"top_k must be -1\","
	     "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}",
	     400, EC_BAD_REQUEST},
	    /* LiteLLM: the status as a string. */
	    {"{\"message\":\"unsupported param\",\"type\":null,"
	     "\"code\":\"400\"}",
	     400, EC_BAD_REQUEST},
	    {"{\"message\":\"x\",\"type\":\"UnprocessableEntityError\"}",
	     422, EC_BAD_REQUEST},
	    {"{\"message\":\"no such route\",\"type\":\"not_found_error\"}",
	     404, EC_BAD_REQUEST},
	    {"{\"message\":\"Model \\\"q\\\" not found\","
	     "\"type\":\"invalid_request_error\",\"code\":\"model_not_found\"}",
	     400, EC_MODEL_NOT_FOUND},
	    {"{\"message\":\"context length of only 4096 tokens\","
	     "\"type\":\"invalid_request_error\","
	     "\"code\":\"context_length_exceeded\"}",
	     400, EC_CONTEXT},
	    {"{\"message\":\"bad key\",\"type\":\"authentication_error\"}",
	     401, EC_AUTH},
	    {"{\"message\":\"no\",\"type\":\"PermissionDeniedError\","
	     "\"code\":403}",
	     403, EC_AUTH},
	    {"{\"message\":\"slow down\",\"type\":\"rate_limit_error\"}",
	     429, EC_RATE_LIMITED},
	    {"{\"message\":\"slow\",\"type\":\"RateLimitError\",\"code\":429}",
	     429, EC_RATE_LIMITED},
	    /* The server's own failures. */
	    {"{\"message\":\"The model crashed\",\"type\":\"server_error\","
	     "\"code\":\"model_crashed\"}",
	     500, EC_SERVER},
	    {"{\"message\":\"Internal server error\",\"type\":\"server_error\","
	     "\"code\":500}",
	     500, EC_SERVER},
	    {"{\"message\":\"overloaded\",\"type\":\"InternalServerError\","
	     "\"code\":503}",
	     503, EC_SERVER},
	    {"\"model crashed\"", 500, EC_SERVER},
	};
	char msg[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *e = cJSON_Parse(cases[i].json);
		CHECK(e != NULL);
		CHECK_INT(errclass_from_error_json(e, cases[i].status, msg,
						   sizeof(msg)),
			  cases[i].want);
		CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)),
			  cases[i].want);
		CHECK(strncmp(msg, "HTTP", 4) != 0);
		CHECK_INT(errclass_from_error_json(e, 200, msg, sizeof(msg)),
			  cases[i].want);
		cJSON_Delete(e);
	}

	/* The reply's error status decides over what the object says. */
	cJSON *e = cJSON_Parse("{\"message\":\"x\",\"type\":"
			       "\"invalid_request_error\",\"code\":400}");
	CHECK_INT(errclass_from_error_json(e, 503, msg, sizeof(msg)), EC_SERVER);
	CHECK_STR(msg, "HTTP 503: x");
	cJSON_Delete(e);
	/* Codes that are not statuses say nothing. */
	e = cJSON_Parse("{\"message\":\"x\",\"code\":42}");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)), EC_SERVER);
	cJSON_Delete(e);
	e = cJSON_Parse("{\"message\":\"x\",\"code\":\"4000\"}");
	CHECK_INT(errclass_from_error_json(e, 0, msg, sizeof(msg)), EC_SERVER);
	cJSON_Delete(e);
	/* A whole 200 body with such a member, through errclass_from_http. */
	CHECK_INT(http(200,
		       "{\"error\":{\"message\":\"bad\",\"type\":"
		       "\"invalid_request_error\"}}",
		       msg, sizeof(msg)),
		  EC_BAD_REQUEST);
}

/* A complete streamed answer; each case changes what it needs. */
static struct errclass_attempt good(void)
{
	return (struct errclass_attempt){
	    .transport = EC_NONE,
	    .transport_msg = "",
	    .status = 200,
	    .answer_err = EC_NONE,
	    .answer_msg = "",
	    .streamed = 1,
	    .chunks = 3,
	    .done = 1,
	    .finished = 1,
	    .has_content = 1,
	};
}

static void test_attempt(void)
{
	struct errclass_attempt a;
	char msg[256];

	a = good();
	strcpy(msg, "untouched");
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);
	CHECK_STR(msg, "untouched");

	/* Transport failures keep the transport's class and reason. */
	a = good();
	a.chunks = 0;
	a.transport = EC_UNREACHABLE;
	a.transport_msg = "Connection refused";
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_UNREACHABLE);
	CHECK_STR(msg, "Connection refused");
	/* ... except a connection lost after text arrived: truncated. */
	a.chunks = 1;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_STR(msg, "Connection refused");
	a.transport = EC_TIMEOUT;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_TIMEOUT);
	a.transport = EC_CANCELLED;
	a.transport_msg = "cancelled";
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_CANCELLED);
	CHECK_STR(msg, "cancelled");
	/* A protocol failure of the transfer defers to the decoder's reason. */
	a.transport = EC_PROTOCOL;
	a.transport_msg = "Failed writing received data";
	a.answer_err = EC_SERVER;
	a.answer_msg = "model crashed";
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_SERVER);
	CHECK_STR(msg, "model crashed");
	a.answer_err = EC_NONE;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_STR(msg, "Failed writing received data");
	/* Other transport classes do not. */
	a.transport = EC_TIMEOUT;
	a.transport_msg = "no data";
	a.answer_err = EC_SERVER;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_TIMEOUT);
	CHECK_STR(msg, "no data");

	/* A reply that is not 2xx: status and body decide. */
	a = good();
	a.status = 429;
	a.body = "{\"error\":\"slow down\"}";
	a.body_len = strlen(a.body);
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_RATE_LIMITED);
	CHECK_STR(msg, "HTTP 429: slow down");
	a.status = 199;
	a.body = NULL;
	a.body_len = 0;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	a.status = 204; /* 2xx: the answer decides */
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);

	/* An error in the payload. */
	a = good();
	a.answer_err = EC_CONTEXT;
	a.answer_msg = "context length exceeded";
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_CONTEXT);
	CHECK_STR(msg, "context length exceeded");

	/* A stream that ends without [DONE] or finish_reason. */
	a = good();
	a.done = 0;
	a.finished = 0;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_HAS(msg, "closed the stream before the answer ended");
	a.done = 1;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);
	a.done = 0;
	a.finished = 1;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);
	/* A whole (not streamed) reply needs no [DONE]. */
	a = good();
	a.streamed = 0;
	a.done = 0;
	a.finished = 0;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);

	/* A reply that holds no answer at all. */
	a.has_content = 0;
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_HAS(msg, "held no answer");
	a.n_calls = 1; /* tool calls alone are an answer */
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);
	a.n_calls = 0;
	a.finished = 1; /* so is a finish_reason with empty text */
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_NONE);
	a = good();
	a.has_content = 0;
	a.finished = 0; /* streamed, [DONE], nothing in it */
	CHECK_INT(errclass_of_attempt(&a, msg, sizeof(msg)), EC_PROTOCOL);
	CHECK_HAS(msg, "held no answer");
}

int main(void)
{
	test_table();
	test_curl_codes();
	test_curl_facts();
	test_http();
	test_error_json();
	test_error_json_like_http();
	test_attempt();
	return CHECK_DONE();
}

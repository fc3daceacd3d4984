#!/usr/bin/env python3
"""fake_lms - a scriptable fake LM Studio server for the lmsfs tests.

Python 3 standard library only. It speaks what LM Studio really sends
(see shared/WIRE.md): /api/v1/models with load and unload (mode "v1"),
/api/v0/models, /api/v0/models/{id}, /v1/models,
POST /v1/chat/completions and /api/v0/chat/completions, streamed (SSE) or
not, with tool calls, legacy function calls, reasoning deltas, usage and
stats, and both shapes of error body.

In-process use
--------------
    srv = FakeLMS()              # FakeLMS(port=N) binds a pre-chosen port
    srv.start()                  # binds 127.0.0.1, serves in daemon threads
    srv.url                      # "http://127.0.0.1:PORT"
    srv.stop()                   # never hangs; start() again reuses the port

Knobs (plain attributes, change them at any time):
    srv.models           list of full /api/v0 model dicts (default_models():
                         two loaded llms, one with '/' in its id, plus a
                         not-loaded embeddings model)
    srv.no_api_v0        True: every /api/v0/* path answers 404
    srv.mode             which LM Studio the fake is (per test):
                         "v0" (default): 0.3.x, /api/v0 and /v1 only;
                         "v1": 0.4, also the native REST API /api/v1
                         (GET /api/v1/models, POST /api/v1/models/load and
                         /api/v1/models/unload, see v1_model());
                         "openai": only /v1 (every /api/* path is 404)
    srv.load_delay       seconds POST /api/v1/models/load takes (0.0)
    srv.unload_delay     seconds POST /api/v1/models/unload takes (0.0)
    srv.load_fail        None; "oom": the load fails with HTTP 500 and an
                         out-of-memory message (oom_error()); a str: HTTP
                         500 with that message; an HttpError: sent as is
    srv.jit_delay        seconds a chat request naming a downloaded model
                         that is not loaded waits before it is answered (the
                         model is then loaded: just-in-time loading, modes
                         v0 and v1, when srv.jit); srv.jit_loads records
                         (model, ttl) of each such load
    srv.jit              True (default): /v1/models lists every model, as
                         LM Studio does with just-in-time loading; False:
                         only the loaded ones
    srv.require_token    "s3cret": every endpoint answers 401 with an
                         {"error": {...}} object unless the request carries
                         "Authorization: Bearer s3cret"
    srv.chunk_delay      default seconds between SSE chunks (0.0)
    srv.chunked          False (default): streams are sent without a length
                         and with "Connection: close"; True: streams use
                         Transfer-Encoding: chunked and keep the connection
    srv.linger           0.0 (default); chunked streams only: seconds the
                         reply stays open after its last event ([DONE])
                         before the terminating chunk, as a slow or odd
                         server may; srv.linger_data (bytes, default b"")
                         is sent as one chunk at the start of the linger,
                         e.g. b": keep-alive\n\n" comments, or more;
                         srv.linger_every (seconds, default 0.0): when > 0,
                         linger_data is sent again every linger_every
                         seconds for the whole linger (a server trickling
                         bytes after [DONE])
    srv.strict_messages  False (default); True: like chat templates that
                         insist (Mistral, Gemma) and servers that want a
                         result for every tool call, a request with two
                         user messages in a row, or an assistant tool call
                         not answered by a tool message before the next
                         non-tool message, gets HTTP 400 (before the queue
                         is consulted)
    srv.validate_model   True (default): a chat request naming a model that
                         is not in srv.models (any state: JIT loading) gets
                         model_not_found(); a request without "model" gets
                         no_models_loaded() when nothing is loaded. Checked
                         before the queue is consulted (the queue is left
                         untouched).
    srv.refuse_images    True (default): like LM Studio, a chat request with an
                         image for a model whose /api/v0 type is "llm" gets
                         HTTP 400; any image_url that is not a base64 data
                         URL always does. srv.set_model_type(id, "vlm" |
                         "llm" | None) makes a model see, not see, or say
                         nothing; content_parts(body) and image_bytes(part)
                         read what a request carried
    srv.routes           {(METHOD, PATH): response or callable(req)} that
                         overrides any endpoint (PATH without query string),
                         e.g. srv.routes[("GET", "/api/v0/models")] =
                         HttpError(500, "boom"). A list value is consumed
                         FIFO, the last element then sticks.

Scripting chat answers:
    srv.enqueue(resp, ...)  FIFO of responses for chat completion requests
                            (either path). A callable is called with the
                            request dict and must return a response. When
                            the queue is empty: the default reply, the text
                            "Echo: <content of the last user message>",
                            streamed word by word.
Recording:
    srv.requests            every request, in arrival order, as dicts:
                            method, path (with query), headers (dict,
                            lower-case keys), body (parsed JSON or None),
                            raw (bytes), t (time.monotonic() at arrival),
                            conn (the TCP connection's number: 1 for the
                            first accepted, 2 for the next, ...), peer
                            (the client's port)
    srv.connections         how many TCP connections were accepted
    srv.conns_of(reqs)      the set of connection numbers of those requests
    srv.chat_requests()     only the chat completion requests
    srv.wait_requests(n, timeout=10)  waits until >= n chat requests have
                            arrived and returns chat_requests(); raises
                            AssertionError on timeout
    srv.wait_for_request(pred, timeout=10)  first request with pred(req)
    srv.clear()             forgets requests and the queue

Response kinds
--------------
Reply(text=None, chunks=None, delay=None, usage=True, finish_reason=DEFAULT,
      tool_calls=None, reasoning=None, role_chunk=True, stats=True,
      done=True, content_type=True, chunk_id_per_chunk=False,
      interleave=False, model=None, finish_chunk=True,
      reasoning_key="reasoning", head_delay=0.0, write_size=None,
      eol="\\n", status=200, headers=None, first_delay=0.0,
      ascii_json=False, think=None, stream_stats=False,
      reasoning_tokens=None)
    A successful answer. For a request with "stream": true it sends SSE as
    LM Studio does: a role chunk {role: assistant, content: ""} (unless
    role_chunk=False), `reasoning` chunks as delta[reasoning_key] (reasoning
    is a str split into words, or a list of pieces), one chunk per element
    of `chunks` (default: text split into words, spaces kept), tool call
    deltas, a finish chunk {delta: {}, finish_reason} (finish_chunk=False:
    finish_reason rides on the last content chunk instead, like some other
    servers; finish_reason=None: no finish_reason anywhere), a usage chunk
    with empty choices only if the request asked stream_options.
    include_usage (usage may be True: computed, a dict: sent as is,
    "always": sent even when not asked, False: never), then "data: [DONE]"
    (unless done=False).
    tool_calls: list of {"id", "name", "arguments"} (arguments a str or a
    dict, which is JSON-encoded; id defaults to a numeric string). Streamed:
    the first delta of each call has index, id, type, function.name and
    arguments "", then the arguments in 3-7 character fragments {index,
    function: {arguments}}; interleave=True round-robins the calls' deltas.
    finish_reason defaults to "tool_calls". Text given along with tool
    calls is streamed first (content preceding the call).
    When the request used legacy "functions" (and no "tools"), the first
    call is sent as function_call deltas ({"name", "arguments": ""} then
    {"arguments": fragment}), finish_reason "function_call".
    Non-streamed request: one chat.completion JSON (Content-Length,
    keep-alive) with usage, "stats" (when stats is truthy; a dict replaces
    the computed one) and, on the /api/v0 path, model_info and runtime.
    Tool calls come as message.tool_calls (arguments a JSON string, content
    null or the text); legacy as message.function_call; reasoning as
    message[reasoning_key]. The answer is delayed by delay * number of
    chunks (generation time).
    content_type: True = text/event-stream (stream) or application/json,
    False = no Content-Type header, a str = that value.
    chunk_id_per_chunk: a new "id" in every chunk. model: the "model" field
    (default: the request's model, else the first loaded one). head_delay:
    seconds before the status line. write_size: each SSE event is written
    in pieces of that many bytes, 2 ms apart (splits UTF-8 sequences and
    lines across reads). eol: "\\r\\n" for CRLF framing. first_delay:
    streamed, seconds between the role chunk and the first delta (the
    headers are out, no token yet); not streamed, added to the delay
    before the body.
    ascii_json: JSON is sent with every non-ASCII character escaped
    (\\uXXXX), as many servers do; a str holding a lone UTF-16 half (a
    chunk "abcd\\ud83d", the next "\\ude00ef") is then sent as its escape,
    the way servers that cut strings between UTF-16 units send it.
    Reasoning: reasoning_key is "reasoning" (gpt-oss) or
    "reasoning_content" (DeepSeek-R1, Qwen3), on the deltas and on the
    non-streamed message. think: a str sent inside the content as
    "<think>" + think + "</think>" + "\\n\\n" before the text, as servers
    that do not separate reasoning do; streamed, the tags are cut across
    chunks ("<thi", "nk>", ..., "</th", "ink>"). stream_stats: True (the
    computed stats) or a dict: the finish chunk (else the last chunk)
    carries "stats" like a non-streamed reply. reasoning_tokens: an int (or
    True: the number of reasoning pieces) sent as
    usage.completion_tokens_details.reasoning_tokens.

HttpError(status, body, headers=None, delay=0.0)
    body str -> {"error": "..."}; dict -> sent as is; bytes -> sent raw.
    Shortcuts: model_not_found(model) (400, object form, code
    model_not_found), no_models_loaded() (400, string form),
    context_too_long() (400), server_error() (500), rate_limited() (429
    with Retry-After), unauthorized() (401, object form).

Json(obj, status=200, headers=None)   any JSON answer (for srv.routes).

Disconnect(after_chunks=0, text=None, before_headers=False)
    Stream: role chunk, `after_chunks` content chunks of `text` (default
    the echo reply), then the socket is closed abruptly (no finish chunk,
    no [DONE], no terminating zero chunk). before_headers=True closes
    without sending anything. Non-streamed request: headers announcing the
    full Content-Length, half of the body, close.

ErrorEvent(after_chunks=0, error=..., text=None)
    Stream: 200, role chunk, N content chunks, then
    'data: {"error": ...}' and close without [DONE]. error may be a str or
    a dict (default an object with type "server_error"). Non-streamed
    request: 200 with {"error": ...} as the body.

Garbage(data, status=200, content_type="text/event-stream", delay=0.0,
        raw=False)
    Headers (Connection: close, no length), then data (bytes, or a list of
    bytes written separately `delay` seconds apart), then close.
    raw=True: no status line or headers at all, just the bytes.

Hang(seconds, then=None)
    Reads the request and sends nothing for `seconds` (ends early when the
    server stops), then sends `then` (a response) or closes.

SlowLoris(byte_delay, then=None, headers_only=False)
    Sends `then` (default: the default reply) one byte at a time, byte_delay
    seconds apart, status line and headers included. headers_only=True:
    only the status line and headers go byte by byte, the body at once.

A callable f(req) -> response may stand in for any response.

Standalone:  python3 tests/fake_lms.py --port 0 [--delay S] [--token T]
             [--no-api-v0]   prints its URL on stdout and serves the
             default behaviour until SIGINT/SIGTERM.
"""

import argparse
import base64
import copy
import http
import json
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = [
    "FakeLMS", "Reply", "HttpError", "Json", "Disconnect", "ErrorEvent",
    "Garbage", "Hang", "SlowLoris", "model_not_found", "no_models_loaded",
    "context_too_long", "server_error", "rate_limited", "unauthorized",
    "default_models", "split_words", "parse_sse", "sse_json", "free_port",
    "DEFAULT", "CHAT_PATHS", "content_parts", "image_bytes",
    "v1_model", "instances_of", "oom_error",
]

CHAT_PATHS = ("/v1/chat/completions", "/api/v0/chat/completions")

_DEFAULT_MODELS = [
    {
        "id": "lmstudio-community/qwen2.5-7b-instruct",
        "object": "model",
        "type": "llm",
        "publisher": "lmstudio-community",
        "arch": "qwen2",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "loaded",
        "max_context_length": 32768,
        "loaded_context_length": 4096,
        "capabilities": ["tool_use"],
    },
    {
        "id": "meta-llama-3.1-8b-instruct",
        "object": "model",
        "type": "llm",
        "publisher": "lmstudio-community",
        "arch": "llama",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "loaded",
        "max_context_length": 131072,
        "loaded_context_length": 8192,
        "capabilities": ["tool_use"],
    },
    {
        "id": "text-embedding-nomic-embed-text-v1.5",
        "object": "model",
        "type": "embeddings",
        "publisher": "nomic-ai",
        "arch": "nomic-bert",
        "compatibility_type": "gguf",
        "quantization": "Q4_0",
        "state": "not-loaded",
        "max_context_length": 2048,
    },
]


def default_models():
    """A fresh copy of the default model list."""
    return copy.deepcopy(_DEFAULT_MODELS)


def instances_of(m):
    """The loaded instances' ids of a model dict: none unless its state is
    "loaded"; then "_instances" when the fake loaded it, else its id."""
    if m.get("state") != "loaded":
        return []
    return list(m["_instances"]) if m.get("_instances") else [m["id"]]


def public(m):
    """A model dict without the fake's own "_" keys."""
    return {k: v for k, v in m.items() if not k.startswith("_")}


def v1_model(m):
    """The /api/v1/models object (LM Studio 0.4) for a model dict of
    srv.models; a "_v1" dict in it is merged over the result."""
    caps = m.get("capabilities") or []
    q = m.get("quantization")
    out = {
        "type": "embedding" if m.get("type") == "embeddings" else "llm",
        "key": m["id"],
        "display_name": m.get("display_name") or m["id"].split("/")[-1],
        "publisher": m.get("publisher"),
        "architecture": m.get("arch"),
        "quantization": {"name": q, "bits_per_weight": 4.8} if q else None,
        "size_bytes": m.get("size_bytes", 4683073952),
        "params_string": m.get("params_string", "7B"),
        "format": m.get("compatibility_type", "gguf"),
        "max_context_length": m.get("max_context_length"),
        "loaded_instances": [
            {"id": i, "config": dict({"context_length": m.get(
                "loaded_context_length", 4096), "eval_batch_size": 512,
                "parallel": 4, "flash_attention": True},
                **(m.get("_configs") or {}).get(i, {}))}
            for i in instances_of(m)],
        "capabilities": {
            "vision": m.get("type") == "vlm",
            "trained_for_tool_use": "tool_use" in caps},
    }
    if m.get("type") != "embeddings" and "reasoning" in caps:
        out["capabilities"]["reasoning"] = {"allowed_options": ["on", "off"],
                                            "default": "on"}
    out.update(m.get("_v1") or {})
    return out


class _Default:
    def __repr__(self):
        return "DEFAULT"


DEFAULT = _Default()


def split_words(text):
    """Splits text into word pieces that keep their trailing spaces;
    "".join(split_words(t)) == t."""
    if not text:
        return []
    parts = re.findall(r"\s*\S+\s*", text)
    return parts if parts else [text]


def _fragments(s, sizes=(3, 5, 7, 4, 6)):
    """Deterministic 3-7 character pieces of s (at least one, maybe "")."""
    out, i, k = [], 0, 0
    while i < len(s):
        n = sizes[k % len(sizes)]
        out.append(s[i:i + n])
        i += n
        k += 1
    return out or [""]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_sse(raw):
    """Splits an SSE byte stream into the data payloads (str) of its events,
    in order. Accepts LF or CRLF; joins multi-line data; skips comments."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    events = []
    for block in text.split("\n\n"):
        data = [line[5:].lstrip(" ") if line.startswith("data:") else None
                for line in block.split("\n")]
        data = [d for d in data if d is not None]
        if data:
            events.append("\n".join(data))
    return events


def sse_json(raw):
    """parse_sse() with every payload but "[DONE]" decoded as JSON."""
    return [e if e == "[DONE]" else json.loads(e) for e in parse_sse(raw)]


# --------------------------------------------------------------- responses

class Reply:
    def __init__(self, text=None, chunks=None, delay=None, usage=True,
                 finish_reason=DEFAULT, tool_calls=None, reasoning=None,
                 role_chunk=True, stats=True, done=True, content_type=True,
                 chunk_id_per_chunk=False, interleave=False, model=None,
                 finish_chunk=True, reasoning_key="reasoning",
                 head_delay=0.0, write_size=None, eol="\n", status=200,
                 headers=None, first_delay=0.0, ascii_json=False,
                 think=None, stream_stats=False, reasoning_tokens=None):
        self.text = text
        self.chunks = chunks
        self.delay = delay
        self.usage = usage
        self.finish_reason = finish_reason
        self.tool_calls = tool_calls
        self.reasoning = reasoning
        self.role_chunk = role_chunk
        self.stats = stats
        self.done = done
        self.content_type = content_type
        self.chunk_id_per_chunk = chunk_id_per_chunk
        self.interleave = interleave
        self.model = model
        self.finish_chunk = finish_chunk
        self.reasoning_key = reasoning_key
        self.head_delay = head_delay
        self.write_size = write_size
        self.eol = eol
        self.status = status
        self.headers = headers or {}
        self.first_delay = first_delay
        self.ascii_json = ascii_json
        self.think = think
        self.stream_stats = stream_stats
        self.reasoning_tokens = reasoning_tokens

    def __repr__(self):
        return "Reply(text=%r, tool_calls=%r)" % (self.text, self.tool_calls)


class HttpError:
    def __init__(self, status, body, headers=None, delay=0.0):
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.delay = delay

    def __repr__(self):
        return "HttpError(%r, %r)" % (self.status, self.body)


class Json:
    def __init__(self, obj, status=200, headers=None):
        self.obj = obj
        self.status = status
        self.headers = headers or {}


class Disconnect:
    def __init__(self, after_chunks=0, text=None, before_headers=False):
        self.after_chunks = after_chunks
        self.text = text
        self.before_headers = before_headers


class ErrorEvent:
    def __init__(self, after_chunks=0, error=None, text=None):
        self.after_chunks = after_chunks
        self.error = error if error is not None else {
            "message": "The model crashed while generating.",
            "type": "server_error", "code": "model_crashed"}
        self.text = text


class Garbage:
    def __init__(self, data, status=200, content_type="text/event-stream",
                 delay=0.0, raw=False):
        self.data = data
        self.status = status
        self.content_type = content_type
        self.delay = delay
        self.raw = raw


class Hang:
    def __init__(self, seconds, then=None):
        self.seconds = seconds
        self.then = then


class SlowLoris:
    def __init__(self, byte_delay, then=None, headers_only=False):
        self.byte_delay = byte_delay
        self.then = then
        self.headers_only = headers_only


def model_not_found(model):
    return HttpError(400, {"error": {
        "message": ("Invalid model identifier \"%s\". Please specify a valid "
                    "downloaded model (e.g., meta-llama-3.1-8b-instruct, "
                    "lmstudio-community/qwen2.5-7b-instruct)." % model),
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found"}})


def oom_error(model):
    """What a load that does not fit in memory answers."""
    return HttpError(500, {"error": {
        "message": ("Failed to load model \"%s\". Error: insufficient "
                    "system resources: the model requires 9.1 GB of memory "
                    "and 4.2 GB are available (out of memory)." % model),
        "type": "server_error", "code": "model_load_failed"}})


def no_models_loaded():
    return HttpError(400, "No models loaded. Please load a model in the "
                     "developer page or use the 'lms load' command.")


def context_too_long():
    return HttpError(400, {"error": {
        "message": ("Trying to keep the first 5012 tokens when context the "
                    "overflows. However, the model is loaded with context "
                    "length of only 4096 tokens, which is not enough. Try "
                    "to load the model with a larger context length, or "
                    "provide a shorter input"),
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded"}})


def server_error(message="Internal server error"):
    return HttpError(500, {"error": {"message": message,
                                     "type": "server_error",
                                     "code": "internal_error"}})


def rate_limited(retry_after=1):
    return HttpError(429, {"error": {"message": "Rate limit reached",
                                     "type": "rate_limit_error",
                                     "code": "rate_limit_exceeded"}},
                     headers={"Retry-After": str(retry_after)})


def unauthorized():
    return HttpError(401, {"error": {
        "message": "Invalid or missing API token. Provide it as "
                   "'Authorization: Bearer <token>'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key"}})


# ------------------------------------------------------------------ server

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        pass  # silent: broken pipes and resets are part of the game


class _Closed(Exception):
    """The connection is gone (or must be dropped now)."""


def strict_messages_error(messages):
    """The 400 a strict server sends for a malformed message list, or
    None when it is well formed (see FakeLMS.strict_messages)."""
    if not isinstance(messages, list):
        return None
    prev = None
    pending = set()
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role != "tool" and pending:
            return HttpError(400, {"error": {
                "message": "tool calls without results: %s" % sorted(pending),
                "type": "invalid_request_error"}})
        if role == "user" and prev == "user":
            return HttpError(400, {"error": {
                "message": "Conversation roles must alternate "
                           "user/assistant/user/assistant/...",
                "type": "invalid_request_error"}})
        if role == "assistant":
            for c in m.get("tool_calls") or []:
                pending.add(c.get("id"))
        if role == "tool":
            pending.discard(m.get("tool_call_id"))
        prev = role
    if pending:
        return HttpError(400, {"error": {
            "message": "tool calls without results: %s" % sorted(pending),
            "type": "invalid_request_error"}})
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeLMS/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections do not live forever

    # -- plumbing

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.fake = self.server.fake
        self.byte_delay = 0.0
        self.slow_head_only = False
        self.chunked_out = False
        with self.fake._lock:
            self.fake._conns.add(self.connection)
            self.fake.connections += 1
            self.conn_no = self.fake.connections

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.fake._lock:
            self.fake._conns.discard(self.connection)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (_Closed, OSError):
            self.close_connection = True
        except Exception:  # a bad script: say so, drop the connection
            traceback.print_exc()
            self.close_connection = True

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _sleep(self, seconds):
        """Sleeps; raises _Closed when the server stops meanwhile."""
        if seconds and seconds > 0:
            if self.fake._stopping.wait(seconds):
                raise _Closed()
        elif self.fake._stopping.is_set():
            raise _Closed()

    def _out(self, data):
        if self.fake._stopping.is_set():
            raise _Closed()
        try:
            if self.byte_delay > 0:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self._sleep(self.byte_delay)
            else:
                self.wfile.write(data)
        except OSError as e:
            raise _Closed() from e

    def _head(self, status, headers):
        reason = ""
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines.append("Date: " + self.date_time_string())
        lines.append("X-Powered-By: Express")
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        self._out(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if self.slow_head_only:
            self.byte_delay = 0.0

    def _abort(self):
        """Ends the response here: FIN without any further byte (the client
        sees EOF, not a reset, so what was sent before stays readable)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raise _Closed()

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                data += self.rfile.read(n)
                self.rfile.readline(65537)
            return data
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # -- sending helpers

    def _send_json(self, status, obj, extra=(), content_type=True,
                   keep=True, ascii_json=False):
        if isinstance(obj, (bytes, bytearray)):
            body = bytes(obj)
        else:
            body = json.dumps(obj, indent=2,
                              ensure_ascii=ascii_json).encode("utf-8")
        headers = []
        if content_type is True:
            headers.append(("Content-Type",
                            "application/json; charset=utf-8"))
        elif content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(body))))
        headers.extend(extra)
        if not keep or self.close_connection:
            self.close_connection = True
            headers.append(("Connection", "close"))
        else:
            headers.append(("Connection", "keep-alive"))
            headers.append(("Keep-Alive", "timeout=5"))
        self._head(status, headers)
        if self.command != "HEAD":
            self._out(body)

    def _start_stream(self, status=200, content_type=True, extra=(),
                      allow_chunked=True):
        headers = []
        if content_type is True:
            headers.append(("Content-Type", "text/event-stream"))
        elif content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Cache-Control", "no-cache"))
        headers.extend(extra)
        if (allow_chunked and self.fake.chunked and
                not self.close_connection):
            self.chunked_out = True
            headers.append(("Transfer-Encoding", "chunked"))
            headers.append(("Connection", "keep-alive"))
        else:
            self.close_connection = True
            headers.append(("Connection", "close"))
        self._head(status, headers)

    def _stream_write(self, data, write_size=None):
        pieces = [data]
        if write_size:
            pieces = [data[i:i + write_size]
                      for i in range(0, len(data), write_size)]
        for i, p in enumerate(pieces):
            if i:
                self._sleep(0.002)
            if self.chunked_out:
                self._out(b"%x\r\n" % len(p) + p + b"\r\n")
            else:
                self._out(p)

    def _end_stream(self):
        if self.chunked_out:
            self._linger()
            self._out(b"0\r\n\r\n")
        else:
            self.close_connection = True

    def _linger(self):
        """srv.linger: the reply stays open a while after its last event
        (with srv.linger_data sent first)."""
        fake = self.fake
        if fake.linger_data:
            self._stream_write(fake.linger_data)
        if fake.linger_every > 0 and fake.linger_data:
            end = time.monotonic() + fake.linger
            while time.monotonic() < end:
                self._sleep(min(fake.linger_every, end - time.monotonic()))
                self._stream_write(fake.linger_data)
            return
        self._sleep(fake.linger)

    def _event(self, obj, eol="\n", write_size=None, ascii_json=False):
        payload = obj if isinstance(obj, str) else json.dumps(
            obj, separators=(",", ":"), ensure_ascii=ascii_json)
        self._stream_write(("data: " + payload + eol + eol).encode("utf-8"),
                           write_size)

    # -- dispatch

    def _dispatch(self):
        raw = self._read_body()
        body = None
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                body = None
        req = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "raw": raw,
            "t": time.monotonic(),
            "conn": self.conn_no,
            "peer": self.client_address[1],
        }
        fake = self.fake
        fake._record(req)
        path = urlsplit(self.path).path
        try:
            resp = self._route(req, path, raw, body)
            if resp is not None:
                self._respond(resp, req)
        except _Closed:
            self.close_connection = True

    def _route(self, req, path, raw, body):
        fake = self.fake
        token = fake.require_token
        if token is not None:
            auth = req["headers"].get("authorization", "")
            parts = auth.split(None, 1)
            if (len(parts) != 2 or parts[0].lower() != "bearer"
                    or parts[1].strip() != token):
                return unauthorized()
        key = (self.command, path)
        with fake._lock:
            r = fake.routes.get(key)
            if isinstance(r, list):
                r = r.pop(0) if len(r) > 1 else (r[0] if r else None)
        if r is not None:
            return r
        if ((path.startswith("/api/v0/") and
             (fake.no_api_v0 or fake.mode == "openai")) or
                (path.startswith("/api/v1/") and fake.mode != "v1")):
            return HttpError(404, "Unexpected endpoint or method. (%s %s)"
                             % (self.command, path))
        if path.startswith("/api/v1/"):
            return self._api_v1(path, body)
        if self.command == "GET":
            if path in ("/api/v0/models", "/api/v0/models/"):
                return Json({"object": "list",
                             "data": [public(m) for m in fake.models]})
            if path.startswith("/api/v0/models/"):
                mid = unquote(path[len("/api/v0/models/"):])
                for m in fake.models:
                    if m.get("id") == mid:
                        return Json(public(copy.deepcopy(m)))
                return HttpError(404, {"error": {
                    "message": "Model \"%s\" not found" % mid,
                    "type": "invalid_request_error", "param": "model",
                    "code": "model_not_found"}})
            if path in ("/v1/models", "/v1/models/"):
                data = [{"id": m.get("id"), "object": "model",
                         "owned_by": m.get("publisher") or
                         "organization_owner"}
                        for m in fake.models
                        if fake.jit or m.get("state") == "loaded"]
                return Json({"object": "list", "data": data})
            if path.startswith("/v1/models/"):
                mid = unquote(path[len("/v1/models/"):])
                for m in fake.models:
                    if m.get("id") == mid:
                        return Json({"id": mid, "object": "model",
                                     "owned_by": m.get("publisher") or
                                     "organization_owner"})
                return HttpError(404, "Model \"%s\" not found" % mid)
        if self.command == "POST" and path in CHAT_PATHS:
            if not isinstance(body, dict):
                return HttpError(400, {"error": {
                    "message": "'messages' field is required",
                    "type": "invalid_request_error", "param": "messages",
                    "code": None}})
            if fake.validate_model:
                err = fake._check_model(body)
                if err is not None:
                    return err
            if fake.strict_messages:
                err = strict_messages_error(body.get("messages"))
                if err is not None:
                    return err
            err = fake._check_images(body)
            if err is not None:
                return err
            self._jit_load(body)
            return fake._next_chat(req)
        return HttpError(404, "Unexpected endpoint or method. (%s %s)"
                         % (self.command, path))

    # -- LM Studio 0.4's native REST API (mode "v1")

    def _api_v1(self, path, body):
        fake = self.fake
        body = body if isinstance(body, dict) else {}
        if self.command == "GET" and path in ("/api/v1/models",
                                              "/api/v1/models/"):
            with fake._lock:
                return Json({"models": [v1_model(m) for m in fake.models]})
        if self.command == "POST" and path == "/api/v1/models/load":
            key = body.get("model")
            m = fake._find(key) if isinstance(key, str) else None
            if m is None:
                return HttpError(404, {"error": {
                    "message": "Model \"%s\" not found" % key,
                    "type": "invalid_request_error", "param": "model",
                    "code": "model_not_found"}})
            self._sleep(fake.load_delay)
            fail = fake.load_fail
            if fail == "oom":
                return oom_error(key)
            if isinstance(fail, str):
                return HttpError(500, {"error": {"message": fail,
                                                 "type": "server_error"}})
            if fail is not None:
                return fail
            config = {k: v for k, v in body.items()
                      if k in ("context_length", "eval_batch_size",
                               "flash_attention", "num_experts",
                               "offload_kv_cache_to_gpu")}
            with fake._lock:
                iid = fake._add_instance(m, config)
            return Json({"type": v1_model(m)["type"], "instance_id": iid,
                         "load_time_seconds": fake.load_delay,
                         "status": "loaded"})
        if self.command == "POST" and path == "/api/v1/models/unload":
            iid = body.get("instance_id")
            self._sleep(fake.unload_delay)
            with fake._lock:
                m = fake._find_instance(iid) if isinstance(iid, str) else None
                if m is not None:
                    ids = [i for i in instances_of(m) if i != iid]
                    m["_instances"] = ids
                    if not ids:
                        m["state"] = "not-loaded"
            if m is None:
                return HttpError(404, {"error": {
                    "message": "No loaded model instance \"%s\"" % iid,
                    "type": "invalid_request_error",
                    "code": "model_not_found"}})
            return Json({"instance_id": iid})
        return HttpError(404, "Unexpected endpoint or method. (%s %s)"
                         % (self.command, path))

    def _jit_load(self, body):
        """Just-in-time loading: a chat request for a downloaded model that
        is not loaded waits jit_delay, then the model is loaded."""
        fake = self.fake
        model = body.get("model")
        if not fake.jit or fake.mode == "openai" or not isinstance(model, str):
            return
        with fake._lock:
            m = fake._find(model)
            if m is None or instances_of(m):
                return
            fake.jit_loads.append((model, body.get("ttl")))
        self._sleep(fake.jit_delay)
        with fake._lock:
            if not instances_of(m):
                fake._add_instance(m)

    def _respond(self, resp, req):
        body = req["body"] if isinstance(req["body"], dict) else {}
        stream = bool(body.get("stream"))
        if callable(resp):
            resp = resp(req)
        if resp is None:
            resp = self.fake._default_reply(req)
        if isinstance(resp, Reply):
            self._reply(resp, req, body, stream)
        elif isinstance(resp, HttpError):
            self._sleep(resp.delay)
            b = resp.body
            if isinstance(b, str):
                b = {"error": b}
            self._send_json(resp.status, b, extra=list(resp.headers.items()))
        elif isinstance(resp, Json):
            self._send_json(resp.status, resp.obj,
                            extra=list(resp.headers.items()))
        elif isinstance(resp, Disconnect):
            self._disconnect(resp, req, body, stream)
        elif isinstance(resp, ErrorEvent):
            self._error_event(resp, req, body, stream)
        elif isinstance(resp, Garbage):
            self._garbage(resp)
        elif isinstance(resp, Hang):
            self._sleep(resp.seconds)
            if resp.then is None:
                self._abort()
            self._respond(resp.then, req)
        elif isinstance(resp, SlowLoris):
            self.byte_delay = resp.byte_delay
            self.slow_head_only = resp.headers_only
            then = resp.then
            if then is None:
                then = self.fake._default_reply(req)
            self._respond(then, req)
        else:
            raise TypeError("unknown fake response %r" % (resp,))

    # -- chat answers

    def _model_name(self, reply, body):
        if reply is not None and reply.model:
            return reply.model
        m = body.get("model")
        if isinstance(m, str) and m:
            return m
        for mm in self.fake.models:
            if mm.get("state") == "loaded":
                return mm.get("id")
        return "unknown-model"

    def _usage(self, reply, body, n_completion):
        if isinstance(reply.usage, dict):
            return reply.usage
        prompt = 0
        for msg in body.get("messages") or []:
            if isinstance(msg, dict):
                prompt += 4 + len(str(msg.get("content") or "").split())
        comp = max(n_completion, 1)
        return {"prompt_tokens": prompt, "completion_tokens": comp,
                "total_tokens": prompt + comp}

    def _reply(self, r, req, body, stream):
        fake = self.fake
        self._sleep(r.head_delay)
        legacy = bool(body.get("functions")) and not body.get("tools")
        calls = []
        for i, c in enumerate(r.tool_calls or []):
            args = c.get("arguments", "")
            if not isinstance(args, str):
                args = json.dumps(args)
            calls.append({"id": str(c.get("id") or (814890118 + 7919 * i)),
                          "name": c.get("name", ""), "arguments": args})
        if r.chunks is not None:
            pieces = list(r.chunks)
        elif r.text is not None:
            pieces = split_words(r.text)
        elif calls:
            pieces = []
        else:
            pieces = split_words(fake._echo_text(body))
        if r.think is not None:
            pieces = (["<thi", "nk>"] + split_words(r.think) +
                      ["</th", "ink>\n\n"] + pieces)
        text = "".join(pieces)
        if isinstance(r.reasoning, str):
            rpieces = split_words(r.reasoning)
        else:
            rpieces = list(r.reasoning or [])
        fr = r.finish_reason
        if fr is DEFAULT:
            fr = ("function_call" if calls and legacy else
                  "tool_calls" if calls else "stop")
        delay = fake.chunk_delay if r.delay is None else r.delay
        model = self._model_name(r, body)
        created = int(time.time())
        n_tokens = len(pieces) + len(rpieces) + sum(
            len(_fragments(c["arguments"])) for c in calls)
        usage = self._usage(r, body, n_tokens)
        if r.reasoning_tokens is not None and isinstance(usage, dict):
            usage = dict(usage)
            usage["completion_tokens_details"] = {"reasoning_tokens": (
                len(rpieces) if r.reasoning_tokens is True
                else r.reasoning_tokens)}
        api_v0 = urlsplit(req["path"]).path.startswith("/api/v0/")
        computed_stats = {
            "tokens_per_second": 51.4,
            "time_to_first_token": 0.111,
            "generation_time": round(0.02 * max(n_tokens, 1), 3),
            "stop_reason": ("maxPredictedTokensReached"
                            if fr == "length" else "eosFound")}

        if not stream:
            self._sleep(r.first_delay + delay * max(n_tokens, 1))
            msg = {"role": "assistant"}
            if calls and legacy:
                msg["content"] = text or None
                msg["function_call"] = {"name": calls[0]["name"],
                                        "arguments": calls[0]["arguments"]}
            elif calls:
                msg["content"] = text or None
                msg["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"],
                                  "arguments": c["arguments"]}}
                    for c in calls]
            else:
                msg["content"] = text
            if rpieces:
                msg[r.reasoning_key] = "".join(rpieces)
            out = {"id": fake._new_id(), "object": "chat.completion",
                   "created": created, "model": model,
                   "choices": [{"index": 0, "logprobs": None,
                                "finish_reason": fr, "message": msg}]}
            if r.usage:
                out["usage"] = usage
            if r.stats or api_v0:
                stats = (r.stats if isinstance(r.stats, dict)
                         else computed_stats)
                out["stats"] = stats
            if api_v0:
                out["model_info"] = {"arch": "llama", "quant": "Q4_K_M",
                                     "format": "gguf",
                                     "context_length": 8192}
                out["runtime"] = {"name": "llama.cpp-linux-x86_64",
                                  "version": "1.3.0",
                                  "supported_formats": ["gguf"]}
            ct = r.content_type
            self._send_json(r.status, out, extra=list(r.headers.items()),
                            content_type=ct, ascii_json=r.ascii_json)
            return

        ct = r.content_type
        self._start_stream(r.status, ct, extra=list(r.headers.items()))
        cid = [fake._new_id()]

        def chunk(delta, finish=None, choices=True):
            if r.chunk_id_per_chunk:
                cid[0] = fake._new_id()
            obj = {"id": cid[0], "object": "chat.completion.chunk",
                   "created": created, "model": model}
            if finish is not None and r.stream_stats:
                obj["stats"] = (r.stream_stats
                                if isinstance(r.stream_stats, dict)
                                else computed_stats)
            if choices:
                obj["choices"] = [{"index": 0, "delta": delta,
                                   "logprobs": None,
                                   "finish_reason": finish}]
            else:
                obj["choices"] = []
            return obj

        # Everything after the role chunk is a list of deltas; the finish
        # reason may ride on the last one (finish_chunk=False).
        deltas = []
        for p in rpieces:
            deltas.append({r.reasoning_key: p})
        for p in pieces:
            deltas.append({"content": p})
        if calls and legacy:
            c = calls[0]
            deltas.append({"function_call": {"name": c["name"],
                                             "arguments": ""}})
            for frag in _fragments(c["arguments"]):
                deltas.append({"function_call": {"arguments": frag}})
        elif calls:
            per_call = []
            for i, c in enumerate(calls):
                ds = [{"tool_calls": [{"index": i, "id": c["id"],
                                       "type": "function",
                                       "function": {"name": c["name"],
                                                    "arguments": ""}}]}]
                for frag in _fragments(c["arguments"]):
                    ds.append({"tool_calls": [{"index": i, "function": {
                        "arguments": frag}}]})
                per_call.append(ds)
            if r.interleave:
                k = 0
                while any(per_call):
                    ds = per_call[k % len(per_call)]
                    if ds:
                        deltas.append(ds.pop(0))
                    k += 1
            else:
                for ds in per_call:
                    deltas.extend(ds)

        first = True
        if r.role_chunk:
            self._event(chunk({"role": "assistant", "content": ""}), r.eol,
                        r.write_size, r.ascii_json)
            first = False
        for i, d in enumerate(deltas):
            if i == 0:
                self._sleep(r.first_delay)
            if not first:
                self._sleep(delay)
            first = False
            last = i == len(deltas) - 1
            fin = fr if (last and not r.finish_chunk) else None
            self._event(chunk(d, fin), r.eol, r.write_size, r.ascii_json)
        if r.finish_chunk and fr is not None:
            if not first:
                self._sleep(delay)
            self._event(chunk({}, fr), r.eol, r.write_size, r.ascii_json)
        opts = body.get("stream_options")
        asked = isinstance(opts, dict) and bool(opts.get("include_usage"))
        if r.usage and (asked or r.usage == "always"):
            u = chunk(None, choices=False)
            u["usage"] = usage
            self._event(u, r.eol, r.write_size, r.ascii_json)
        if r.done:
            self._event("[DONE]", r.eol, r.write_size, r.ascii_json)
        self._end_stream()

    def _partial_chunks(self, text, body, n):
        pieces = split_words(text if text is not None
                             else self.fake._echo_text(body))
        return pieces[:n]

    def _disconnect(self, d, req, body, stream):
        if d.before_headers:
            self._abort()
        fake = self.fake
        model = self._model_name(None, body)
        if not stream:
            text = "".join(self._partial_chunks(d.text, body, 10 ** 9))
            out = json.dumps({
                "id": fake._new_id(), "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "logprobs": None,
                             "finish_reason": "stop",
                             "message": {"role": "assistant",
                                         "content": text}}]}).encode()
            self._head(200, [("Content-Type", "application/json"),
                             ("Content-Length", str(len(out))),
                             ("Connection", "keep-alive")])
            self._out(out[:len(out) // 2])
            self._abort()
        self._start_stream()
        cid = fake._new_id()
        base = {"id": cid, "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        self._event(dict(base, choices=[{
            "index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": None, "finish_reason": None}]))
        pieces = self._partial_chunks(d.text, body, d.after_chunks)
        for p in pieces:
            self._sleep(fake.chunk_delay)
            self._event(dict(base, choices=[{
                "index": 0, "delta": {"content": p}, "logprobs": None,
                "finish_reason": None}]))
        self._sleep(0.01)
        self._abort()

    def _error_event(self, e, req, body, stream):
        fake = self.fake
        if not stream:
            self._send_json(200, {"error": e.error})
            return
        model = self._model_name(None, body)
        self._start_stream()
        base = {"id": fake._new_id(), "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        self._event(dict(base, choices=[{
            "index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": None, "finish_reason": None}]))
        for p in self._partial_chunks(e.text, body, e.after_chunks):
            self._sleep(fake.chunk_delay)
            self._event(dict(base, choices=[{
                "index": 0, "delta": {"content": p}, "logprobs": None,
                "finish_reason": None}]))
        self._event({"error": e.error})
        self.close_connection = True
        if self.chunked_out:
            self._out(b"0\r\n\r\n")

    def _garbage(self, g):
        parts = g.data if isinstance(g.data, list) else [g.data]
        if not g.raw:
            headers = []
            if g.content_type:
                headers.append(("Content-Type", g.content_type))
            headers.append(("Connection", "close"))
            self._head(g.status, headers)
        for i, p in enumerate(parts):
            if i:
                self._sleep(g.delay)
            if isinstance(p, str):
                p = p.encode("utf-8")
            self._out(p)
        self.close_connection = True


class FakeLMS:
    def __init__(self, port=0, host="127.0.0.1"):
        self.host = host
        self.port = port
        self.models = default_models()
        self.no_api_v0 = False
        self.mode = "v0"
        self.load_delay = 0.0
        self.unload_delay = 0.0
        self.load_fail = None
        self.jit_delay = 0.0
        self.jit_loads = []
        self.jit = True
        self.require_token = None
        self.chunk_delay = 0.0
        self.chunked = False
        self.validate_model = True
        self.strict_messages = False
        self.refuse_images = True
        self.linger = 0.0
        self.linger_data = b""
        self.linger_every = 0.0
        self.connections = 0
        self.routes = {}
        self.requests = []
        self._queue = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._conns = set()
        self._server = None
        self._thread = None
        self._ids = 0

    # -- lifecycle

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def start(self):
        if self._server is not None:
            return self
        self._stopping.clear()
        srv = _Server((self.host, self.port), _Handler)
        srv.fake = self
        self.port = srv.server_address[1]
        self._server = srv
        self._thread = threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.005},
            name="fake-lms-%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        srv = self._server
        if srv is None:
            return
        self._server = None
        self._stopping.set()
        srv.shutdown()
        srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self):
        return self._server is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- scripting and recording

    def enqueue(self, *responses):
        with self._lock:
            self._queue.extend(responses)
        return self

    def pending(self):
        """Number of scripted responses not yet used."""
        with self._lock:
            return len(self._queue)

    def clear(self):
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    def chat_requests(self):
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and
                    urlsplit(r["path"]).path in CHAT_PATHS]

    def requests_to(self, path, method=None):
        """Requests whose path (without query) is `path`."""
        with self._lock:
            return [r for r in self.requests
                    if urlsplit(r["path"]).path == path and
                    (method is None or r["method"] == method)]

    def wait_requests(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if r["method"] == "POST" and
                       urlsplit(r["path"]).path in CHAT_PATHS]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "fake LM Studio: waited %.1f s for %d chat "
                        "request(s), got %d" % (timeout, n, len(got)))
                self._cond.wait(min(left, 0.1))

    def wait_for_request(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.requests:
                    if pred(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "fake LM Studio: no matching request within %.1f s "
                        "(got: %s)" % (timeout, [
                            "%s %s" % (r["method"], r["path"])
                            for r in self.requests]))
                self._cond.wait(min(left, 0.1))

    def conns_of(self, reqs):
        return {r["conn"] for r in reqs}

    def loaded_ids(self):
        return [i for m in self.models for i in instances_of(m)]

    def _find(self, key):
        for m in self.models:
            if m.get("id") == key:
                return m
        return None

    def _find_instance(self, iid):
        for m in self.models:
            if iid in instances_of(m):
                return m
        return None

    def _add_instance(self, m, config=None):
        ids = instances_of(m)
        iid = m["id"]
        n = 2
        while iid in ids:
            iid = "%s:%d" % (m["id"], n)
            n += 1
        m["_instances"] = ids + [iid]
        m["state"] = "loaded"
        if config:
            m.setdefault("_configs", {})[iid] = config
        return iid

    # -- internals

    def _record(self, req):
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

    def _new_id(self):
        with self._lock:
            self._ids += 1
            n = self._ids
        return "chatcmpl-fake%06d" % n

    def _check_model(self, body):
        model = body.get("model")
        if model is None or model == "":
            if not self.loaded_ids():
                return no_models_loaded()
            return None
        if not isinstance(model, str) or (
                model not in [m.get("id") for m in self.models] and
                model not in self.loaded_ids()):
            return model_not_found(model)
        return None

    def _next_chat(self, req):
        with self._lock:
            r = self._queue.popleft() if self._queue else None
        if r is None:
            return self._default_reply(req)
        return r

    @staticmethod
    def _echo_text(body):
        content = ""
        for m in body.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(p.get("text", "") for p in c
                                if isinstance(p, dict))
                content = c if isinstance(c, str) else ""
        return "Echo: " + content

    def _default_reply(self, req):
        return Reply()

    # -- images (vision models; WIRE.md "Images")

    def set_model_type(self, model_id, mtype):
        """Makes model_id a vision model ("vlm"), a text one ("llm"), or
        (None) one whose /api/v0 entry says nothing about its type."""
        for m in self.models:
            if m.get("id") == model_id:
                if mtype is None:
                    m.pop("type", None)
                else:
                    m["type"] = mtype

    def _check_images(self, body):
        """As LM Studio: an image_url that is not a base64 data URL is
        refused; so is an image for a model listed as not a vlm when
        self.refuse_images is True."""
        model = body.get("model")
        mtype = None
        for m in self.models:
            if m.get("id") == model:
                mtype = m.get("type")
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            for p in c if isinstance(c, list) else []:
                if not isinstance(p, dict) or p.get("type") != "image_url":
                    continue
                url = (p.get("image_url") or {}).get("url") or ""
                if not url.startswith("data:image/") or ";base64," not in url:
                    return HttpError(400, {"error": {
                        "message": "Only base64 data URLs are supported "
                                   "for images",
                        "type": "invalid_request_error", "code": None}})
                if getattr(self, "refuse_images", True) and mtype == "llm":
                    return HttpError(400, {"error": {
                        "message": "Model does not support images. Please "
                                   "use a model that does.",
                        "type": "invalid_request_error", "code": None}})
        return None


def content_parts(body, role="user"):
    """Every content part of the messages of one role in a request body
    (a string content counts as one text part), in order."""
    out = []
    for m in (body or {}).get("messages") or []:
        if not isinstance(m, dict) or m.get("role") != role:
            continue
        c = m.get("content")
        if isinstance(c, str):
            out.append({"type": "text", "text": c})
        elif isinstance(c, list):
            out.extend(c)
    return out


def image_bytes(part):
    """(mime, bytes) of an image_url part's base64 data URL."""
    url = part["image_url"]["url"]
    head, data = url.split(",", 1)
    return head[len("data:"):].split(";")[0], base64.b64decode(data)


# ------------------------------------------------------------- standalone

def main(argv=None):
    ap = argparse.ArgumentParser(description="fake LM Studio server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds between streamed chunks")
    ap.add_argument("--token", default=None,
                    help="require Authorization: Bearer TOKEN")
    ap.add_argument("--no-api-v0", action="store_true")
    ap.add_argument("--chunked", action="store_true",
                    help="stream with Transfer-Encoding: chunked")
    a = ap.parse_args(argv)
    srv = FakeLMS(port=a.port, host=a.host)
    srv.chunk_delay = a.delay
    srv.require_token = a.token
    srv.no_api_v0 = a.no_api_v0
    srv.chunked = a.chunked
    srv.start()
    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(srv.url, flush=True)
    while not done.wait(0.5):
        pass
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

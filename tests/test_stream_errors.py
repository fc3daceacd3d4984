"""What a streamed answer can throw at lmsfs, through the mount (issue 12,
items 4-6):

- an error event inside a 200 stream is classified by its type, code and
  message exactly as the same error object in an HTTP error body: a bad
  request is `bad_request` (EINVAL) and is not retried, a context overflow
  `context_too_long` (E2BIG), an unknown model `model_not_found` (ENOENT);
  only what names the server's own failure stays a retried `server_error`;
- a character cut between its two UTF-16 halves across two events
  ("abcd\\ud83d", then "\\ude00ef") is joined; a half without its partner
  becomes U+FFFD; neither fails the answer;
- every byte counts as life for the silence timeout: headers that trickle in
  byte by byte, slower per line than `timeout`, do not time the answer out.

Every filesystem access has a timeout (conftest/conv_helpers helpers); the
waits are deadlines, not sleeps."""

import errno
import json
import os
import time

import pytest

from conftest import run, wait_for
from conv_helpers import LLAMA, history, mkconv, opts, prompt, sh
from fake_lms import ErrorEvent, HttpError, Reply, SlowLoris

RETRIES = 2  # max_retries_stream in these mounts


def smount(mount, **kw):
    """A mount with default_model set, fast retries, no breaker."""
    kw.setdefault("default_model", LLAMA)
    kw.setdefault("max_retries", RETRIES)
    kw.setdefault("max_retries_stream", RETRIES)
    kw.setdefault("initial_backoff", "10ms")
    kw.setdefault("max_backoff", "20ms")
    kw.setdefault("breaker_threshold", 1000)
    return mount(args=opts(**kw))


def cat(m, path):
    """`cat PATH` in MOUNT/conversations."""
    return sh(m, "cat %s" % path)


def cat_status(m, name):
    r = cat(m, "%s/.status" % name)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cat_reply_fails(m, name, err):
    """`cat NAME/.reply` fails, and with the errno `err`."""
    r = cat(m, "%s/.reply" % name)
    assert r.returncode != 0, r.stdout
    assert os.strerror(err) in r.stderr, (r.stderr, errno.errorcode[err])


def cat_reply_ok(m, name):
    r = cat(m, "%s/.reply" % name)
    assert r.returncode == 0, "%s\n.status: %s" % (
        r.stderr, cat(m, "%s/.status" % name).stdout)
    return r.stdout


def settled(m, name, timeout=15):
    """Waits until NAME's answer is over, failed or not; its .status."""
    def over():
        st = json.loads(cat(m, "%s/.status" % name).stdout)
        return st if (st["submitted"] >= 1 and
                      st["answered"] >= st["submitted"] and
                      st["state"] in ("idle", "failed")) else None
    return wait_for(over, timeout=timeout, message="%s settled" % name)


def chats(fake, conv_text):
    """Chat requests whose last user message is conv_text."""
    out = []
    for r in fake.chat_requests():
        msgs = (r["body"] or {}).get("messages") or []
        users = [x for x in msgs if x.get("role") == "user"]
        if users and users[-1].get("content") == conv_text:
            out.append(r)
    return out


# ------------------------------------------------- 4. in-stream errors

BAD_TEMP = {"message": "'temperature' must be between 0 and 2",
            "type": "invalid_request_error", "param": "temperature",
            "code": None}
# vLLM: the HTTP status as a number in "code", a Python exception name as
# "type"; LiteLLM sends the code as a string.
VLLM_BAD = {"object": "error", "message": "top_k must be -1 or at least 1",
            "type": "BadRequestError", "param": None, "code": 400}
LITELLM_BAD = {"message": "litellm.BadRequestError: unsupported param",
               "type": None, "param": None, "code": "400"}
CONTEXT = {"message": ("Trying to keep the first 5012 tokens when context "
                       "the overflows. However, the model is loaded with "
                       "context length of only 4096 tokens"),
           "type": "invalid_request_error", "param": "messages",
           "code": "context_length_exceeded"}
NO_MODEL = {"message": "Model \"qwen-9000\" not found",
            "type": "invalid_request_error", "param": "model",
            "code": "model_not_found"}
AUTH = {"message": "Invalid API key", "type": "authentication_error",
        "param": None, "code": "invalid_api_key"}
CRASH = {"message": "The model crashed while generating.",
         "type": "server_error", "code": "model_crashed"}

# id, error object, the status a server sends it with, class, errno,
# retried
ERRORS = [
    ("invalid-request", BAD_TEMP, 400, "bad_request", errno.EINVAL, False),
    ("vllm-code-400", VLLM_BAD, 400, "bad_request", errno.EINVAL, False),
    ("litellm-code-str", LITELLM_BAD, 400, "bad_request", errno.EINVAL,
     False),
    ("context", CONTEXT, 400, "context_too_long", errno.E2BIG, False),
    ("model-not-found", NO_MODEL, 400, "model_not_found", errno.ENOENT,
     False),
    ("auth", AUTH, 401, "auth", errno.EACCES, False),
    ("server-error", CRASH, 500, "server_error", errno.EIO, True),
]


def fail_with(m, fake, name, make, cls, err, retried, params=None):
    """A new conversation NAME (with params.json `params`) gets `make()`
    for every attempt; checks class, errno, stream, attempts and requests.
    Returns .status."""
    text = "tell me about %s" % name
    attempts = 1 + RETRIES if retried else 1
    fake.enqueue(*[make() for _ in range(attempts)])
    mkconv(m, name)
    if params:
        r = sh(m, "echo '%s' > %s/params.json" % (params, name))
        assert r.returncode == 0, r.stderr
    prompt(m, name, text)
    st = settled(m, name)
    # It settles after the last attempt: the count is final.
    assert st["state"] == "failed", st
    assert st["error"]["class"] == cls, st
    assert st["last"]["attempts"] == attempts, st
    assert len(chats(fake, text)) == attempts
    cat_reply_fails(m, name, err)
    assert cat_status(m, name)["error"]["class"] == cls
    s = cat(m, "%s/stream" % name).stdout
    assert "[lmsfs] error %s: " % cls in s, s
    return st


@pytest.mark.parametrize("error, status, cls, err, retried",
                         [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_in_stream_error_is_classified_like_an_http_error_body(
        fake, mount, error, status, cls, err, retried):
    m = smount(mount)
    # The same error object as an HTTP error body ...
    fail_with(m, fake, "http", lambda: HttpError(status, {"error": error}),
              cls, err, retried)
    # ... as an SSE error event inside a 200 stream ...
    st = fail_with(m, fake, "sse", lambda: ErrorEvent(error=error), cls,
                   err, retried)
    if error.get("message"):
        assert error["message"] in st["error"]["message"], st
    # ... and as the error member of a 200 reply that is not streamed.
    fail_with(m, fake, "plain", lambda: ErrorEvent(error=error), cls, err,
              retried, params='{"stream": false}')


def test_bad_request_event_after_text_keeps_the_text(fake, mount):
    """An error event after two chunks: the text shown stays (stream and
    history, marked), the class is the event's, no retry."""
    m = smount(mount)
    fake.enqueue(ErrorEvent(after_chunks=2, text="partial answer here",
                            error=BAD_TEMP))
    mkconv(m, "p")
    prompt(m, "p", "go")
    st = settled(m, "p")
    assert st["state"] == "failed", st
    assert st["error"]["class"] == "bad_request", st
    assert st["last"]["attempts"] == 1, st
    cat_reply_fails(m, "p", errno.EINVAL)
    s = cat(m, "p/stream").stdout
    assert s.startswith("partial answer "), s
    assert "[lmsfs] error bad_request: 'temperature' must be" in s, s
    h = history(m, "p")
    assert h[-1]["role"] == "assistant", h
    assert h[-1]["content"] == "partial answer ", h[-1]
    assert h[-1]["lmsfs_status"].startswith("bad_request: "), h[-1]
    # Not the server's fault: the conversation goes on.
    prompt(m, "p", "again")
    assert cat_reply_ok(m, "p").rstrip("\n") == "Echo: again"


# ------------------------------------------ 5. UTF-16 halves across events

GRIN = "\U0001F600"
HI, LO = "\ud83d", "\ude00"  # GRIN's two UTF-16 halves
REPL = "\ufffd"

HALVES = [
    ("pair-split", ["abcd" + HI, LO + "ef"], "abcd" + GRIN + "ef"),
    ("pair-split-own-events", ["ab", HI, LO, "cd"], "ab" + GRIN + "cd"),
    ("lone-high-then-text", ["ab" + HI, "cd"], "ab" + REPL + "cd"),
    ("lone-low", ["ab", LO + "cd"], "ab" + REPL + "cd"),
    ("lone-high-inside", ["a" + HI + "b"], "a" + REPL + "b"),
    ("high-high-low", ["x" + HI, HI + LO], "x" + REPL + GRIN),
    ("lone-high-at-the-end", ["ab" + HI], "ab" + REPL),
]


@pytest.mark.parametrize("chunks, want", [c[1:] for c in HALVES],
                         ids=[c[0] for c in HALVES])
def test_utf16_halves_across_events(fake, mount, chunks, want):
    m = smount(mount)
    mkconv(m, "u")
    fake.enqueue(Reply(chunks=chunks, ascii_json=True))
    prompt(m, "u", "smile")
    assert cat_reply_ok(m, "u") == want
    st = cat_status(m, "u")
    assert st["state"] == "idle" and st["error"] is None, st
    assert st["last"]["attempts"] == 1, st
    assert cat(m, "u/stream").stdout == want + "\n"
    assert history(m, "u")[-1] == {"role": "assistant", "content": want}


@pytest.mark.parametrize("finish_chunk", [True, False],
                         ids=["finish-chunk", "finish-on-last-chunk"])
def test_lone_high_half_at_the_end_without_done(fake, mount, finish_chunk):
    """No [DONE]: the finish_reason ends the text, the held half becomes
    U+FFFD, the answer succeeds."""
    m = smount(mount)
    mkconv(m, "u")
    fake.enqueue(Reply(chunks=["ok " + HI], ascii_json=True, done=False,
                       finish_chunk=finish_chunk))
    prompt(m, "u", "x")
    assert cat_reply_ok(m, "u") == "ok " + REPL


def test_utf16_halves_not_streamed(fake, mount):
    m = smount(mount)
    mkconv(m, "u")
    r = sh(m, "echo '{\"stream\": false}' > u/params.json")
    assert r.returncode == 0, r.stderr
    fake.enqueue(Reply(text="a" + HI + "b" + LO + GRIN, ascii_json=True))
    prompt(m, "u", "x")
    assert cat_reply_ok(m, "u") == "a" + REPL + "b" + REPL + GRIN


def test_utf16_halves_in_tool_arguments(fake, mount, tmp_path):
    """Arguments cut between the halves (fragments '": "\\ud83d' and
    '\\ude00"}'): the tool gets the real character."""
    m = smount(mount)
    src = tmp_path / "echo_args"
    src.write_text("#!/bin/sh\n# @description Echoes its arguments\n"
                   "# @param x string required Some text\ncat\n")
    os.chmod(src, 0o755)
    r = run(["cp", str(src), str(m.path / "tools" / "echo_args")])
    assert r.returncode == 0, r.stderr
    mkconv(m, "t")
    args = '{"x": "' + HI + LO + '"}'
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "echo_args",
                                    "arguments": args}], ascii_json=True))
    prompt(m, "t", "go")
    assert cat_reply_ok(m, "t").rstrip("\n") == "Echo: go"
    bodies = [x["body"] for x in fake.chat_requests()]
    assert len(bodies) == 2, bodies
    call = bodies[1]["messages"][-2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"x": GRIN}, call
    tool = bodies[1]["messages"][-1]
    assert tool["role"] == "tool", tool
    assert json.loads(tool["content"].split("\n")[0]) == {"x": GRIN}, tool


# ---------------------------------------------- 6. slow headers are life

# One header line of ~100 bytes: at 25 ms a byte it takes 2.5 s to arrive,
# more than twice the 1 s silence bound, and the whole head about 6 s.
PAD = {"X-Padding": "p" * 90}
BYTE_DELAY = 0.025


def test_headers_trickling_in_are_not_silence(fake, mount):
    m = smount(mount, timeout="1s", max_retries_stream=0)
    mkconv(m, "h")
    fake.enqueue(SlowLoris(BYTE_DELAY, headers_only=True,
                           then=Reply(text="worth the wait",
                                      headers=PAD)))
    t0 = time.monotonic()
    prompt(m, "h", "x")
    out = cat_reply_ok(m, "h")  # blocks until the answer is done
    took = time.monotonic() - t0
    st = cat_status(m, "h")
    assert out == "worth the wait", (out, st)
    assert st["last"]["attempts"] == 1, st
    # The head really was slower than the bound, line by line.
    assert took > 3.0, took


def test_headers_that_stop_still_time_out(fake, mount):
    """The other side: a head that stops for longer than `timeout` is
    silence."""
    m = smount(mount, timeout="1s", max_retries_stream=0)
    mkconv(m, "h")
    fake.enqueue(SlowLoris(3.0, headers_only=True,
                           then=Reply(text="too late")))
    t0 = time.monotonic()
    prompt(m, "h", "x")
    st = settled(m, "h", timeout=10)
    assert st["state"] == "failed", st
    took = time.monotonic() - t0
    assert st["error"]["class"] == "timeout", st
    assert "no data from the server for 1000 ms" in st["error"]["message"]
    assert took < 2.9, took
    cat_reply_fails(m, "h", errno.ETIMEDOUT)

"""A corpus of bad input, one parametrized case each, across every file of
the tree and from the server side.

Every case asserts
  - a clear errno from the call that did it (or, for what the server sends,
    a classified error in .status / stream and the class's errno from
    .reply),
  - a live daemon afterwards: `ls` works and a normal prompt is answered,
    in an untouched conversation and in the one the case abused,
  - unchanged data: the history bytes of the conversations are what they
    were (for server-side cases: the old history is still a prefix, every
    line is valid UTF-8 JSON),
and a few startup errors end lmsfs with a non-zero status and an "lmsfs:"
line.

Every filesystem access has a timeout, so a broken daemon fails a case
instead of hanging the suite."""

import errno
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import (DEAD_URL, clean_env, listdir,
                      read_bytes, read_text, run, wait_for)
from conv_helpers import (LLAMA, cdir, echo_of, errno_name, opts,
                          os_errno, reply_errno, sh, status)
from conv_helpers import raw_write as _raw_write
from fake_lms import (ErrorEvent, Garbage, Hang, HttpError,
                      SlowLoris)

CHAT = ("POST", "/v1/chat/completions")
BASE_OPTS = {"default_model": LLAMA, "max_retries": 0,
             "max_retries_stream": 0, "initial_backoff": "10ms",
             "breaker_threshold": 1000}
WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
APPEND = os.O_WRONLY | os.O_APPEND


def _is_sanitizer_build():
    b = os.environ.get("LMSFS_BIN", "")
    return "san" in b or bool(os.environ.get("LMSFS_WRAPPER"))


# --------------------------------------------------------------- context

class Ctx:
    def __init__(self, m, fake, tmp_path):
        self.m = m
        self.fake = fake
        self.tmp = tmp_path
        self.convs = m.path / "conversations"
        self.t = cdir(m, "t")          # the conversation a case abuses
        self.keep = cdir(m, "keep")    # one nobody touches

    def hist(self, name="t"):
        return read_bytes(cdir(self.m, name) / "messages.jsonl")

    def errno_of(self, fn, *a, timeout=10):
        return os_errno(fn, *a, timeout=timeout)

    def create(self, path, data=b"", flags=WRITE):
        return raw_write(path, data, flags)


def ask_ok(m, name, text, timeout=20):
    r = sh(m, "echo %s > %s/prompt && cat %s/.reply" % (
        _q(text), _q(name), _q(name)), timeout=timeout)
    assert r.returncode == 0, "%s: prompt/reply failed: %s (status %r)" % (
        name, r.stderr, status(m, name))
    assert r.stdout.rstrip("\n") == echo_of(text), r.stdout[:300]


def _q(s):
    import shlex
    return shlex.quote(str(s))


def raw_write(path, data, flags=APPEND, timeout=10):
    """conv_helpers.raw_write, but an open() error is returned too."""
    try:
        return _raw_write(path, data, flags, timeout=timeout)
    except OSError as e:
        return e.errno


def check_lines(data):
    """Every line of a history: valid UTF-8, one JSON object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AssertionError("messages.jsonl holds invalid UTF-8 (%s) "
                             "around %r" % (e, data[max(e.start - 60, 0):
                                                     e.end + 20]))
    assert text == "" or text.endswith("\n"), repr(text[-100:])
    for i, ln in enumerate(text.split("\n")[:-1]):
        obj = json.loads(ln)
        assert isinstance(obj, dict), (i, ln[:200])


# ------------------------------------------------------ client-side cases

def hist_append(line, err=errno.EINVAL):
    data = line if isinstance(line, bytes) else line.encode()

    def case(c):
        got = raw_write(c.t / "messages.jsonl", data, APPEND, timeout=30)
        assert got == err, errno_name(got)
    return case


def hist_overwrite(line, err=errno.EINVAL):
    data = line.encode()

    def case(c):
        got = raw_write(c.t / "messages.jsonl", data, WRITE)
        assert got == err, errno_name(got)
    return case


def hist_rename_over(c):
    tmp = c.t / "messages.jsonl.new"
    assert c.create(tmp, b'{"role":"user","content":"ok"}\n'
                         b'{"role":"robot","content":"no"}\n') == 0
    got = c.errno_of(os.rename, tmp, c.t / "messages.jsonl")
    assert got == errno.EINVAL, errno_name(got)
    assert c.errno_of(os.unlink, tmp) == 0


def hist_sed_i(c):
    r = sh(c.m, "sed -i 's/\"role\":\"user\"/\"role\":\"nobody\"/' "
                "t/messages.jsonl")
    assert r.returncode != 0, r
    assert "Invalid argument" in r.stderr, r.stderr


def mkdir_err(name, err):
    def case(c):
        got = c.errno_of(os.mkdir, c.convs / name)
        assert got == err, errno_name(got)
    return case


def rename_conv_err(name, err):
    def case(c):
        got = c.errno_of(os.rename, c.t, c.convs / name)
        assert got == err, errno_name(got)
    return case


def create_err(rel, err):
    def case(c):
        got = c.create(c.t / rel, b"x\n", os.O_WRONLY | os.O_CREAT |
                       os.O_EXCL)
        assert got == err, errno_name(got)
    return case


def rename_file_to_private(c):
    assert c.create(c.t / "scratch", b"x") == 0
    got = c.errno_of(os.rename, c.t / "scratch", c.t / ".lmsfs.queue")
    assert got == errno.EINVAL, errno_name(got)
    got = c.errno_of(os.link, c.t / "scratch", c.t / ".lmsfs.partial")
    assert got in (errno.EINVAL, errno.EPERM, errno.ENOSYS), errno_name(got)
    assert c.errno_of(os.unlink, c.t / "scratch") == 0


def open_private(c):
    for n in (".lmsfs.queue", ".lmsfs.partial", ".lmsfs.x", ".lmsfs",
              ".lmsfs/queue", ".lmsfs/partial"):
        got = c.errno_of(lambda: os.close(os.open(c.t / n, os.O_RDONLY)))
        assert got == errno.ENOENT, (n, errno_name(got))
    r = sh(c.m, "ls -a t")
    assert ".lmsfs" not in r.stdout, r.stdout


def prompt_err(data, err, name="t"):
    def case(c):
        got = raw_write(cdir(c.m, name) / "prompt", data,
                        os.O_WRONLY | os.O_CREAT | os.O_TRUNC, timeout=30)
        assert got == err, errno_name(got)
        assert c.fake.chat_requests() == c.n_chat
    return case


def prompt_nonexistent_conv(c):
    got = raw_write(c.convs / "nope" / "prompt", "hello\n", WRITE)
    assert got == errno.ENOENT, errno_name(got)
    assert "nope" not in listdir(c.convs)


def prompt_bytes_kept_or_refused(data):
    """A prompt the history cannot hold as is (invalid UTF-8, NUL): either
    refused with EINVAL from write(), or kept exactly (valid JSON escapes),
    never written raw and never silently cut."""
    def case(c):
        got = raw_write(c.t / "prompt", data, WRITE)
        if got != 0:
            assert got == errno.EINVAL, errno_name(got)
            return
        c.server_side = True  # accepted: the history grows
        wait_for(lambda: status(c.m, "t")["answered"] ==
                 status(c.m, "t")["submitted"], timeout=10)
        h = c.hist()
        check_lines(h)
        last_user = [json.loads(x) for x in h.decode().splitlines()
                     if json.loads(x)["role"] == "user"][-1]
        assert last_user["content"] == data.decode(
            "utf-8", "replace").strip(), last_user
    return case


def model_file(text, err):
    def case(c):
        assert c.create(c.t / "model", text.encode()) == 0
        got = raw_write(c.t / "prompt", "hello\n", WRITE)
        assert got == err, errno_name(got)
        assert c.fake.chat_requests() == c.n_chat
        assert status(c.m, "t")["rejected_write"]
        assert c.errno_of(os.unlink, c.t / "model") == 0
    return case


def ctl_err(word):
    def case(c):
        got = raw_write(c.t / ".ctl", word, os.O_WRONLY | os.O_TRUNC)
        assert got == errno.EINVAL, errno_name(got)
    return case


def stream_overwrite(c):
    got = raw_write(c.t / "stream", "x\n", os.O_WRONLY | os.O_TRUNC)
    assert got == errno.EPERM, errno_name(got)


def stream_truncate(c):
    got = c.errno_of(os.truncate, c.t / "stream", 0)
    assert got == errno.EPERM, errno_name(got)


def stream_pwrite_middle(c):
    def w():
        fd = os.open(c.t / "stream", os.O_WRONLY)
        try:
            os.pwrite(fd, b"zz", 0)
        finally:
            os.close(fd)
    got = c.errno_of(w)
    assert got == errno.EPERM, errno_name(got)


def history_is_not_a_dir(c):
    got = c.errno_of(os.mkdir, c.t / "sub")
    assert got == errno.EPERM, errno_name(got)
    got = c.errno_of(os.rmdir, c.t / "messages.jsonl")
    assert got == errno.ENOTDIR, errno_name(got)


def tool_case(name, text, mode, needle, json_text=None):
    """A broken tool: stored, but skipped (with a reason in tools/.status)
    and not offered to the model."""
    def case(c):
        tools = c.m.path / "tools"
        if text is not None:
            assert c.create(tools / name, text.encode()) == 0
            assert c.errno_of(os.chmod, tools / name, mode) == 0
        if json_text is not None:
            assert c.create(tools / (name + ".json"),
                            json_text.encode()) == 0
        st = read_text(tools / ".status")
        line = [ln for ln in st.splitlines() if " %s:" % name in ln or
                ln.startswith("skipped %s" % name)]
        assert line and line[0].startswith("skipped"), st
        assert needle in line[0].lower(), (needle, line[0])
        c.check_tools_not_offered = name
    return case


def params_case(text):
    """params.json that is not a JSON object: refused at write() or close
    with EINVAL and the reason in .status; the file stays as it was (here:
    created empty, which means not set), so nothing else changes."""
    def case(c):
        assert c.create(c.t / "params.json", text.encode()) == errno.EINVAL
        st = status(c.m, "t")
        assert "params.json" in st.get("rejected_write", ""), st
        assert read_bytes(c.t / "params.json") == b""
        assert c.fake.chat_requests() == c.n_chat
        assert c.errno_of(os.unlink, c.t / "params.json") == 0
    return case


def models_dir_write(c):
    names = listdir(c.m.path / "models")
    # A model's file takes load settings (a JSON object), and rm unloads
    # (only with /api/v1, which this fake does not have).
    got = raw_write(c.m.path / "models" / names[0], "x", os.O_WRONLY)
    assert got == errno.EINVAL, errno_name(got)
    got = c.errno_of(os.unlink, c.m.path / "models" / names[0])
    assert got == errno.ENOTSUP, errno_name(got)


def health_write(c):
    for f in ("health", "metrics"):
        got = raw_write(c.m.path / f, "x", os.O_WRONLY)
        assert got in (errno.EACCES, errno.EPERM, errno.EROFS), (
            f, errno_name(got))


BIG_LINE = (b'{"role":"user","content":"' + b"a" * (10 * 1024 * 1024) +
            b'"}\n')

CLIENT_CASES = [
    # messages.jsonl: every line judged when written; refused -> EINVAL
    ("hist-invalid-json", hist_append('{"role":"user","content":"x",\n')),
    ("hist-truncated-json", hist_append('{"role":"user","conte\n')),
    ("hist-unknown-role", hist_append('{"role":"wizard","content":"x"}\n')),
    ("hist-role-not-string", hist_append('{"role":5,"content":"x"}\n')),
    ("hist-missing-role", hist_append('{"content":"x"}\n')),
    ("hist-missing-content", hist_append('{"role":"user"}\n')),
    ("hist-content-number", hist_append('{"role":"user","content":5}\n')),
    ("hist-content-empty-parts",
     hist_append('{"role":"user","content":[]}\n')),
    ("hist-assistant-content-object",
     hist_append('{"role":"assistant","content":{"a":1}}\n')),
    ("hist-tool-without-id",
     hist_append('{"role":"tool","content":"42"}\n')),
    ("hist-tool-without-content",
     hist_append('{"role":"tool","tool_call_id":"c1"}\n')),
    ("hist-tool-calls-not-array",
     hist_append('{"role":"assistant","tool_calls":{"id":"c1"}}\n')),
    ("hist-tool-calls-empty",
     hist_append('{"role":"assistant","tool_calls":[]}\n')),
    ("hist-tool-call-without-id", hist_append(
        '{"role":"assistant","tool_calls":[{"type":"function",'
        '"function":{"name":"f","arguments":"{}"}}]}\n')),
    ("hist-tool-call-wrong-type", hist_append(
        '{"role":"assistant","tool_calls":[{"id":"c1","type":"magic",'
        '"function":{"name":"f","arguments":"{}"}}]}\n')),
    ("hist-tool-call-args-object", hist_append(
        '{"role":"assistant","tool_calls":[{"id":"c1","type":"function",'
        '"function":{"name":"f","arguments":{}}}]}\n')),
    ("hist-function-without-name",
     hist_append('{"role":"function","content":"42"}\n')),
    ("hist-array-line", hist_append('[{"role":"user","content":"x"}]\n')),
    ("hist-string-line", hist_append('"just a string"\n')),
    ("hist-number-line", hist_append('42\n')),
    ("hist-null-line", hist_append('null\n')),
    ("hist-trailing-garbage",
     hist_append('{"role":"user","content":"x"} extra\n')),
    ("hist-bad-escape", hist_append('{"role":"user","content":"\\x41"}\n')),
    ("hist-nul-byte", hist_append(b'{"role":"user","content":"a\x00b"}\n')),
    ("hist-invalid-utf8",
     hist_append(b'{"role":"user","content":"\xff\xfe"}\n')),
    ("hist-overlong-utf8",
     hist_append(b'{"role":"user","content":"\xc0\xaf"}\n')),
    ("hist-utf8-surrogate",
     hist_append(b'{"role":"user","content":"\xed\xa0\x80"}\n')),
    ("hist-good-then-bad", hist_append(
        '{"role":"user","content":"fine"}\n{"role":"user"}\n')),
    ("hist-unterminated-last-line", hist_append('{"role":"user"')),
    ("hist-10mb-line", hist_append(BIG_LINE, errno.EFBIG)),
    ("hist-overwrite-invalid", hist_overwrite('{"role":"alien"}\n')),
    ("hist-rename-over-invalid", hist_rename_over),
    ("hist-sed-i-invalid", hist_sed_i),
    # names
    ("name-newline", mkdir_err("new\nline", errno.EINVAL)),
    ("name-control-char", mkdir_err("bell\x07", errno.EINVAL)),
    ("name-del-char", mkdir_err("del\x7f", errno.EINVAL)),
    ("name-256-bytes", mkdir_err("n" * 256, errno.ENAMETOOLONG)),
    ("name-256-bytes-utf8", mkdir_err("é" * 128, errno.ENAMETOOLONG)),
    ("name-dotdot", mkdir_err("..", errno.EEXIST)),
    ("name-dot", mkdir_err(".", errno.EEXIST)),
    ("name-slash-impossible", mkdir_err("nope/inner", errno.ENOENT)),
    ("name-private-conv", mkdir_err(".lmsfs.queue", errno.EINVAL)),
    ("name-private-prefix-conv", mkdir_err(".lmsfs.", errno.EINVAL)),
    ("rename-conv-newline", rename_conv_err("a\nb", errno.EINVAL)),
    ("rename-conv-too-long", rename_conv_err("r" * 256,
                                             errno.ENAMETOOLONG)),
    ("rename-conv-private", rename_conv_err(".lmsfs.x", errno.EINVAL)),
    ("create-private-queue", create_err(".lmsfs.queue", errno.EINVAL)),
    ("create-private-other", create_err(".lmsfs.anything", errno.EINVAL)),
    ("name-private-dir-conv", mkdir_err(".lmsfs", errno.EINVAL)),
    ("rename-conv-private-dir", rename_conv_err(".lmsfs", errno.EINVAL)),
    ("create-private-dir", create_err(".lmsfs", errno.EINVAL)),
    ("create-in-private-dir", create_err(".lmsfs/queue", errno.ENOENT)),
    ("create-file-newline", create_err("a\nb", errno.EINVAL)),
    ("create-in-conv-256", create_err("f" * 256, errno.ENAMETOOLONG)),
    ("rename-file-to-private", rename_file_to_private),
    ("open-private-files", open_private),
    ("mkdir-in-conversation", history_is_not_a_dir),
    # prompts
    ("prompt-over-max-bytes", prompt_err(b"p" * 1500, errno.EFBIG)),
    ("prompt-nonexistent-conv", prompt_nonexistent_conv),
    ("prompt-invalid-utf8",
     prompt_bytes_kept_or_refused(b"caf\xe9 \xff\xfe bytes\n")),
    ("prompt-nul-byte", prompt_bytes_kept_or_refused(b"before\x00after\n")),
    # settings
    ("params-not-object", params_case("[1, 2, 3]\n")),
    ("params-invalid-json", params_case("{\"temperature\": \n")),
    ("params-string", params_case("\"hot\"\n")),
    ("model-unknown", model_file("no-such-model\n", errno.ENOENT)),
    ("model-ambiguous", model_file("instruct\n", errno.EINVAL)),
    # .ctl
    ("ctl-unknown-command", ctl_err("explode\n")),
    ("ctl-cancel-with-junk", ctl_err("cancel now\n")),
    ("ctl-binary", ctl_err(b"\xff\x00\x01")),
    # stream
    ("stream-overwrite", stream_overwrite),
    ("stream-truncate", stream_truncate),
    ("stream-pwrite-middle", stream_pwrite_middle),
    # tools
    ("tool-bad-json", tool_case("badjson", "#!/bin/sh\necho\n", 0o755,
                                "json", json_text="{not json")),
    ("tool-json-params-string", tool_case(
        "badparams", "#!/bin/sh\necho\n", 0o755, "param",
        json_text='{"name":"badparams","parameters":"nope"}')),
    ("tool-not-executable", tool_case("noexec", "#!/bin/sh\necho\n", 0o644,
                                      "execut")),
    ("tool-bad-name", tool_case("bad.name", "#!/bin/sh\necho\n", 0o755,
                                "name")),
    ("tool-name-too-long", tool_case("t" * 65, "#!/bin/sh\necho\n", 0o755,
                                     "name")),
    ("tool-bad-header-type", tool_case(
        "badtype", "#!/bin/sh\n# @description d\n# @param a strnig "
        "required A\necho\n", 0o755, "type")),
    # read-only files
    ("models-file-write", models_dir_write),
    ("health-metrics-write", health_write),
]


@pytest.mark.parametrize("case", [c[1] for c in CLIENT_CASES],
                         ids=[c[0] for c in CLIENT_CASES])
def test_client_bad_input(fake, mount, tmp_path, case):
    o = dict(BASE_OPTS, max_prompt_bytes=1000)
    m = mount(args=opts(**o))
    c = Ctx(m, fake, tmp_path)
    c.server_side = False
    c.check_tools_not_offered = None
    for n in ("keep", "t"):
        r = sh(m, "mkdir %s" % n)
        assert r.returncode == 0, r.stderr
        ask_ok(m, n, "seed of %s" % n)
    before = {n: c.hist(n) for n in ("keep", "t")}
    stream_before = read_bytes(c.t / "stream")
    c.n_chat = fake.chat_requests()

    case(c)

    # The daemon lives and the data is unchanged.
    assert m.pid is not None, "the daemon died:\n" + m.log()
    r = run(["ls", "-la", str(c.convs), str(c.t)])
    assert r.returncode == 0, r.stderr
    assert c.hist("keep") == before["keep"]
    if c.server_side:
        h = c.hist("t")
        assert h.startswith(before["t"]), h[:500]
        check_lines(h)
    else:
        assert c.hist("t") == before["t"], c.hist("t")[:500]
        assert read_bytes(c.t / "stream") == stream_before
    check_lines(c.hist("t"))
    # Normal prompts still work, here and in the abused conversation.
    n = len(fake.chat_requests())
    ask_ok(m, "keep", "still alive")
    ask_ok(m, "t", "and here too")
    if c.check_tools_not_offered:
        for body in [r["body"] for r in fake.chat_requests()[n:]]:
            names = [t["function"]["name"] for t in body.get("tools") or []]
            assert c.check_tools_not_offered not in names, names


def test_corpus_is_big_enough():
    assert len(CLIENT_CASES) + len(SERVER_CASES) + len(STARTUP_CASES) >= 50
    ids = [c[0] for c in CLIENT_CASES + SERVER_CASES] + \
        [c[0] for c in STARTUP_CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------ server-side cases

def sse(*events, done=True):
    out = b""
    for e in events:
        if not isinstance(e, (bytes, str)):
            e = json.dumps(e)
        if isinstance(e, str):
            e = e.encode()
        out += b"data: " + e + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return out


def chunk(content=None, finish=None, **delta):
    d = dict(delta)
    if content is not None:
        d["content"] = content
    return {"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": d, "finish_reason": finish}]}


class Endless(list):
    """Garbage data that never ends: SSE content events of 64 KiB (a list
    subclass, so the fake writes it piece by piece)."""

    def __init__(self, limit_bytes=256 << 20):
        super().__init__()
        self.limit = limit_bytes

    def __iter__(self):
        ev = ('data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}'
              '\n\n' % ("x" * 65536)).encode()
        sent = 0
        while sent < self.limit:
            sent += len(ev)
            yield ev


def giant_event():
    """One SSE event over 16 MiB."""
    return (b'data: {"choices":[{"index":0,"delta":{"content":"' +
            b"y" * (17 << 20) + b'"}}]}\n\n')


def big_body():
    """A non-streamed answer over 64 MiB."""
    return (b'{"choices":[{"index":0,"finish_reason":"stop","message":'
            b'{"role":"assistant","content":"' + b"z" * (65 << 20) +
            b'"}}]}')

# (id, response factory, class, extra mount options, params.json,
#  message needle, max seconds for the failure)
SERVER_CASES = [
    ("srv-malformed-sse", lambda: Garbage(b"data: {not json\n\n"),
     "protocol", {}, None, "malformed", None),
    ("srv-not-sse-at-all", lambda: Garbage(b"hello, I am not SSE\n"),
     "protocol", {}, None, None, None),
    ("srv-truncated-json-chunk", lambda: Garbage(
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"'),
        "protocol", {}, None, None, None),
    ("srv-choices-string", lambda: Garbage(sse({"choices": "abc"})),
     "protocol", {}, None, None, None),
    ("srv-choices-null", lambda: Garbage(sse({"choices": None})),
     "protocol", {}, None, None, None),
    ("srv-delta-string", lambda: Garbage(sse(
        {"choices": [{"index": 0, "delta": "text", "finish_reason": None}]},
        chunk(finish="stop"))), "protocol", {}, None, None, None),
    ("srv-content-number", lambda: Garbage(sse(
        chunk(content=42), chunk(finish="stop"))),
     "protocol", {}, None, None, None),
    ("srv-event-array", lambda: Garbage(sse([1, 2])),
     "protocol", {}, None, None, None),
    ("srv-giant-chunk", lambda: Garbage(giant_event()),
     "protocol", {}, None, "16 MiB", None),
    ("srv-invalid-utf8-content", lambda: Garbage(
        b'data: {"choices":[{"index":0,"delta":{"content":"a\xff\xfeb"}}]}'
        b'\n\n' + sse(chunk(finish="stop"))), "protocol-or-clean", {},
     None, None, None),
    ("srv-content-length-1e9-then-close-plain", lambda: Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{\"choi", raw=True),
     "protocol", {}, '{"stream": false}', None, None),
    ("srv-content-length-1e9-then-close-stream", lambda: Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Content-Length: 1000000000\r\n\r\ndata: {\"choi", raw=True),
     "protocol", {}, None, None, None),
    ("srv-error-body-string", lambda: HttpError(500, "the string form"),
     "server_error", {}, None, "the string form", None),
    ("srv-error-body-object", lambda: HttpError(400, {"error": {
        "message": "the object form", "type": "invalid_request_error"}}),
     "bad_request", {}, None, "the object form", None),
    ("srv-html-error-page", lambda: HttpError(
        502, b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>"
        b"</body></html>"), "server_error", {}, None, "502", None),
    ("srv-huge-error-body", lambda: HttpError(500, b"E" * (2 << 20)),
     "server_error", {}, None, None, None),
    ("srv-404-on-chat", lambda: HttpError(404, "Unexpected endpoint"),
     "bad_request", {}, None, "404", None),
    ("srv-empty-200-body", lambda: Garbage(b""), "protocol", {}, None,
     "closed the stream before the answer ended", None),
    ("srv-empty-200-body-plain", lambda: Garbage(
        b"", content_type="application/json"), "protocol", {},
     '{"stream": false}', None, None),
    ("srv-invalid-json-plain", lambda: Garbage(
        b'{"choices": [', content_type="application/json"), "protocol", {},
     '{"stream": false}', None, None),
    ("srv-choices-empty-plain", lambda: Garbage(
        b'{"choices": []}', content_type="application/json"), "protocol",
     {}, '{"stream": false}', None, None),
    ("srv-body-over-64mib-plain", lambda: Garbage(
        big_body(), content_type="application/json"), "protocol", {},
     '{"stream": false}', "67108864", None),
    ("srv-done-only", lambda: Garbage(b"data: [DONE]\n\n"), "protocol", {},
     None, None, None),
    ("srv-no-done-no-finish", lambda: Garbage(sse(
        chunk(content="abc"), done=False)), "protocol", {}, None,
     "closed the stream before the answer ended", None),
    ("srv-error-event", lambda: ErrorEvent(after_chunks=2), "server_error",
     {}, None, None, None),
    ("srv-hang-timeout", lambda: Hang(15), "timeout", {"timeout": "1s"},
     None, None, 4.0),
    ("srv-slowloris-timeout", lambda: SlowLoris(1.5), "timeout",
     {"timeout": "1s"}, None, None, 15.0),
    # An answer is capped at 1 MiB so that it fits one history line.
    ("srv-endless-stream", lambda: Garbage(Endless()), "protocol", {},
     None, "1048576", 30.0),
]


@pytest.mark.parametrize("make, cls, extra, params, needle, max_s",
                         [c[1:] for c in SERVER_CASES],
                         ids=[c[0] for c in SERVER_CASES])
def test_server_bad_behaviour(fake, mount, tmp_path, make, cls, extra,
                              params, needle, max_s):
    m = mount(args=opts(**dict(BASE_OPTS, **extra)))
    for n in ("keep", "t"):
        r = sh(m, "mkdir %s" % n)
        assert r.returncode == 0, r.stderr
        ask_ok(m, n, "seed of %s" % n)
    keep_before = read_bytes(cdir(m, "keep") / "messages.jsonl")
    t_before = read_bytes(cdir(m, "t") / "messages.jsonl")
    if params:
        assert raw_write(cdir(m, "t") / "params.json", params, WRITE) == 0
    n_chat = len(fake.chat_requests())

    peak = [0]
    stop = threading.Event()
    pid = m.pid

    def watch_rss():
        while not stop.is_set():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for ln in f:
                        if ln.startswith("VmRSS:"):
                            peak[0] = max(peak[0], int(ln.split()[1]))
            except OSError:
                pass
            stop.wait(0.01)
    watcher = threading.Thread(target=watch_rss, daemon=True)
    watcher.start()

    fake.enqueue(make())
    t0 = time.monotonic()
    assert raw_write(cdir(m, "t") / "prompt", "provoke\n", WRITE) == 0
    err = reply_errno(m, "t", timeout=60)
    took = time.monotonic() - t0
    stop.set()
    watcher.join(2)
    st = status(m, "t")
    print("%s after %.2f s, peak RSS %d MB: %r" % (
        cls, took, peak[0] // 1024, st.get("error")))

    if cls == "protocol-or-clean":
        # Either refused as a protocol error, or kept as valid text.
        if err:
            assert err == errno.EPROTO, errno_name(err)
            assert st["error"]["class"] == "protocol", st
    else:
        assert st["state"] == "failed", st
        assert st["error"]["class"] == cls, st
        want = {"protocol": errno.EPROTO, "server_error": errno.EIO,
                "bad_request": errno.EINVAL,
                "timeout": errno.ETIMEDOUT}[cls]
        assert err == want, "%s: .reply errno %s" % (cls, errno_name(err))
        if needle:
            assert needle in st["error"]["message"], st
        assert len(st["error"]["message"]) < 64 * 1024, \
            len(st["error"]["message"])
        s = read_bytes(cdir(m, "t") / "stream").decode("utf-8", "replace")
        assert "[lmsfs] error %s: " % cls in s, s[-500:]
    if max_s is not None:
        assert took < max_s, "the failure took %.1f s (limit %.1f s)" % (
            took, max_s)
    limit_mb = 1200 if _is_sanitizer_build() else 300
    assert peak[0] < limit_mb * 1024, "daemon RSS peaked at %d MB" % (
        peak[0] // 1024)
    assert len(fake.chat_requests()) == n_chat + 1  # not retried

    # Data: untouched elsewhere; here the old history is a prefix and
    # every line is valid.
    assert read_bytes(cdir(m, "keep") / "messages.jsonl") == keep_before
    h = read_bytes(cdir(m, "t") / "messages.jsonl", timeout=30)
    assert h.startswith(t_before)
    check_lines(h)
    # Alive: ls, then normal prompts (also in the abused conversation).
    r = run(["ls", "-la", str(m.path / "conversations"),
             str(cdir(m, "t"))])
    assert r.returncode == 0, r.stderr
    if params:
        assert os_errno(os.unlink, cdir(m, "t") / "params.json") == 0
    ask_ok(m, "keep", "still alive")
    ask_ok(m, "t", "and here too", timeout=60)


# ---------------------------------------------------------- startup errors

STARTUP_CASES = [
    ("cfg-unknown-o-key", ["-o", "no_such_option=1"], None, "no_such_option"),
    ("cfg-bad-duration", ["-o", "breaker_reset=soon"], None, "breaker_reset"),
    ("cfg-bad-backoff", ["-o", "initial_backoff=-5"], None,
     "initial_backoff"),
    ("cfg-bad-retries", ["-o", "max_retries=lots"], None, "max_retries"),
    ("cfg-bad-threshold", ["-o", "breaker_threshold=x"], None,
     "breaker_threshold"),
    ("cfg-bad-max-prompt", ["-o", "max_prompt_bytes=big"], None,
     "max_prompt_bytes"),
    ("cfg-bad-env", [], {"LMSFS_MAX_RETRIES_STREAM": "two"},
     "max_retries_stream"),
    ("cfg-file-bad-line", "FILE:max_backoff = \n[sec\n", None, ":"),
    ("cfg-file-unknown-key", "FILE:breaker = 3\n", None, "breaker"),
    ("cfg-file-nul-byte", "FILE:timeout = 5\x00garbage here\n", None,
     ":1"),
]


@pytest.mark.parametrize("args, env, needle",
                         [c[1:] for c in STARTUP_CASES],
                         ids=[c[0] for c in STARTUP_CASES])
def test_startup_bad_config(lmsfs_bin, tmp_path, args, env, needle):
    mnt = tmp_path / "mnt"
    st = tmp_path / "state"
    mnt.mkdir()
    st.mkdir()
    cmd = [str(lmsfs_bin), str(mnt), "-f", "-o",
           "state_dir=%s,base_url=%s" % (st, DEAD_URL)]
    if isinstance(args, str):
        cfg = tmp_path / "bad.conf"
        cfg.write_bytes(args[len("FILE:"):].encode("latin-1"))
        cmd += ["-c", str(cfg)]
    else:
        cmd += args
    try:
        r = run(cmd, timeout=5, env=clean_env(tmp_path, env),
                cwd=str(tmp_path))
    except subprocess.TimeoutExpired:
        subprocess.run(["fusermount3", "-uz", str(mnt)],
                       capture_output=True)
        pytest.fail("lmsfs did not exit on bad configuration")
    finally:
        with open("/proc/self/mountinfo") as f:
            if str(mnt) in f.read():
                subprocess.run(["fusermount3", "-uz", str(mnt)],
                               capture_output=True)
    assert r.returncode != 0, r
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lmsfs:")]
    assert lines, r.stderr
    assert needle in r.stderr, (needle, r.stderr)

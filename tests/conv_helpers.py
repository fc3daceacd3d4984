"""Helpers shared by test_conversations.py and test_conv_bad_input.py.

Every filesystem access has a timeout (conftest helpers or run()), so a
broken daemon fails a test instead of hanging the suite."""

import ctypes
import errno
import json
import os
import shlex
import subprocess
import time

from conftest import call_with_timeout, read_json, read_text, run, wait_for
from fake_lms import Reply

QWEN = "lmstudio-community/qwen2.5-7b-instruct"
LLAMA = "meta-llama-3.1-8b-instruct"
LOADED = (QWEN, LLAMA)
DEFAULT_SYSTEM = "You are a helpful assistant."

# Failures must not be retried with back-off nor trip the circuit breaker
# in tests that provoke them on purpose.
FAST_FAIL = {"max_retries": 0, "max_retries_stream": 0,
             "initial_backoff": "10ms", "breaker_threshold": 1000}


def opts(**kw):
    """-o arguments for the mount factory."""
    if not kw:
        return ()
    parts = []
    for k, v in kw.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        parts.append("%s=%s" % (k, str(v).replace(",", "\\,")))
    return ("-o", ",".join(parts))


def cmount(mount, model=LLAMA, **kw):
    """A mount with default_model set (the fake has two loaded models)."""
    if model is not None:
        kw.setdefault("default_model", model)
    return mount(args=opts(**kw))


def convs(m):
    return m.path / "conversations"


def cdir(m, name):
    return convs(m) / name


def sh(m, cmd, timeout=20, cwd=None):
    """bash -c cmd in MOUNT/conversations."""
    return run(["bash", "-c", cmd], timeout=timeout,
               cwd=str(cwd if cwd is not None else convs(m)))


def q(s):
    return shlex.quote(str(s))


def qn(name):
    """A conversation name as a safe relative shell word ("./-x" too)."""
    return shlex.quote("./" + str(name))


def holds_for(pred, seconds=0.5, interval=0.05, message=None):
    """Asserts pred() stays truthy for `seconds` (catches effects that
    land late, e.g. a FUSE release processed after close() returned)."""
    deadline = time.monotonic() + seconds
    while True:
        v = pred()
        if not v:
            if callable(message):
                message = message()
            raise AssertionError(message or
                                 "condition stopped holding: %r" % (v,))
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def mkconv(m, name):
    r = sh(m, "mkdir %s" % qn(name))
    assert r.returncode == 0, r.stderr
    return cdir(m, name)


def prompt(m, name, text, check=True):
    """echo TEXT > NAME/prompt; returns the CompletedProcess."""
    r = sh(m, "echo %s > %s/prompt" % (q(text), qn(name)))
    if check:
        assert r.returncode == 0, "prompt %r refused: %s" % (text, r.stderr)
    return r


def reply(m, name, timeout=15):
    """cat NAME/.reply (blocks until the pending answer is done)."""
    r = sh(m, "cat %s/.reply" % qn(name), timeout=timeout)
    assert r.returncode == 0, "cat .reply failed: %s" % r.stderr
    return r.stdout


def ask(m, name, text, timeout=15):
    prompt(m, name, text)
    return reply(m, name, timeout=timeout)


def echo_of(text):
    """The fake server's default answer to a user message."""
    return "Echo: " + text


def status(m, name):
    return read_json(cdir(m, name) / ".status")


def history_text(m, name):
    return read_text(cdir(m, name) / "messages.jsonl")


def without_id(msg):
    """A history message without the prompt id lmsfs adds to the user lines
    it writes ("lmsfs_id": bookkeeping that ties a spooled prompt to its
    line) and without the stats it adds to assistant lines
    ("lmsfs_stats", see test_reasoning.py)."""
    return {k: v for k, v in msg.items()
            if k not in ("lmsfs_id", "lmsfs_stats")}


def history(m, name):
    """The history's messages, prompt ids dropped (see without_id)."""
    text = history_text(m, name)
    return [without_id(json.loads(ln)) for ln in text.splitlines()
            if ln.strip()]


def stream_text(m, name):
    return read_text(cdir(m, name) / "stream")


def chat_bodies(fake):
    return [r["body"] for r in fake.chat_requests()]


def wait_answered(m, name, n, timeout=15):
    return wait_for(lambda: status(m, name)["answered"] >= n and
                    status(m, name)["state"] == "idle",
                    timeout=timeout,
                    message="%s: %d answers and idle" % (name, n))


def wait_state(m, name, state, timeout=15):
    return wait_for(lambda: (lambda s: s if s["state"] == state else None)(
        status(m, name)), timeout=timeout,
        message="%s in state %s" % (name, state))


def slow_reply(words=10, delay=0.2, prefix="w"):
    """A streamed Reply of `words` chunks `delay` s apart; returns
    (Reply, full text)."""
    text = " ".join("%s%d" % (prefix, i) for i in range(words))
    return Reply(text=text, delay=delay), text


def os_errno(fn, *args, timeout=10):
    """Runs fn(*args) with a timeout; returns 0 or the errno it raised."""
    def w():
        try:
            fn(*args)
        except OSError as e:
            return e.errno
        return 0
    return call_with_timeout(w, timeout=timeout)


def raw_write(path, data, flags=os.O_WRONLY | os.O_APPEND, timeout=10,
              fsync=False):
    """open/write/(fsync)/close with os calls; returns 0 or the first
    errno (of write, else fsync, else close)."""
    if isinstance(data, str):
        data = data.encode()

    def w():
        fd = os.open(str(path), flags, 0o644)
        err = 0
        try:
            try:
                # Like any real writer, a short write is followed by
                # another write() of the rest, which reports the error.
                view = memoryview(data)
                while len(view):
                    n = os.write(fd, view)
                    if n <= 0:
                        return -1
                    view = view[n:]
                if fsync:
                    os.fsync(fd)
            except OSError as e:
                err = e.errno
        finally:
            try:
                os.close(fd)
            except OSError as e:
                err = err or e.errno
        return err
    return call_with_timeout(w, timeout=timeout)


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def renameat2(old, new, flags):
    """Returns 0 or the errno."""
    def w():
        rc = _libc.renameat2(AT_FDCWD, os.fsencode(str(old)), AT_FDCWD,
                             os.fsencode(str(new)), flags)
        return 0 if rc == 0 else ctypes.get_errno()
    return call_with_timeout(w, timeout=10)


class Bg:
    """A background shell command whose stdout goes to a file."""

    def __init__(self, cmd, out_path, cwd):
        self.out_path = out_path
        self._out = open(out_path, "wb")
        self.proc = subprocess.Popen(["bash", "-c", "exec " + cmd],
                                     cwd=str(cwd), stdout=self._out,
                                     stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.out_path, "rb") as f:
            return f.read()

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._out.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._out.close()


def errno_name(e):
    return errno.errorcode.get(e, str(e))


def elapsed(fn, *a, **kw):
    t0 = time.monotonic()
    v = fn(*a, **kw)
    return time.monotonic() - t0, v


def reply_errno(m, name, timeout=15):
    """Reads NAME/.reply to the end; returns 0 or the errno of the failed
    read (os.read, not a file object: Python turns EAGAIN into no data)."""
    def r():
        try:
            fd = os.open(cdir(m, name) / ".reply", os.O_RDONLY)
        except OSError as e:
            return e.errno
        try:
            while os.read(fd, 1 << 20):
                pass
        except OSError as e:
            return e.errno
        finally:
            os.close(fd)
        return 0
    return call_with_timeout(r, timeout=timeout)

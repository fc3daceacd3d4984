"""Edge cases of waiting readers: a conversation renamed or removed while
someone blocks on .reply. The reader must get the answer (rename) or a
clear error (removal), never hang."""

import os
import subprocess
import time

import pytest

from conftest import wait_for
from conv_helpers import (cdir, cmount, echo_of, history, mkconv, prompt, sh,
                          slow_reply, status)


def _has_open(pid, tail):
    """Whether process pid has a file open whose path ends with tail
    (/proc/PID/fd links: nothing here touches the mount)."""
    fds = "/proc/%d/fd" % pid
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)).endswith(tail):
                return True
        except OSError:
            pass
    return False


def _start_reader(path):
    """cat PATH, returned once cat has PATH open: what the test does next
    happens to a reader already waiting, however slowly cat starts."""
    p = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    tail = os.sep + os.path.join(path.parent.name, path.name)
    wait_for(lambda: p.poll() is not None or _has_open(p.pid, tail),
             timeout=10, message="cat has %s open" % path)
    assert p.poll() is None, "cat %s ended at once: %r" % (
        path, p.communicate(timeout=5))
    return p


def test_reply_survives_rename_while_waiting(fake, mount):
    m = cmount(mount)
    mkconv(m, "old")
    rep, text = slow_reply(words=8, delay=0.1)
    fake.enqueue(rep)
    prompt(m, "old", "rename me")
    reader = _start_reader(cdir(m, "old") / ".reply")
    wait_for(lambda: status(m, "old")["state"] == "generating")
    r = sh(m, "mv old new")
    assert r.returncode == 0, r.stderr
    out, err = reader.communicate(timeout=15)
    assert reader.returncode == 0, err
    assert out == text
    # The answer landed in the renamed conversation.
    assert history(m, "new")[-1] == {"role": "assistant", "content": text}
    assert not (cdir(m, "old")).exists()


def test_reader_of_removed_conversation_does_not_hang(fake, mount):
    m = cmount(mount)
    mkconv(m, "gone")
    rep, _ = slow_reply(words=30, delay=0.1)
    fake.enqueue(rep)
    prompt(m, "gone", "first")
    prompt(m, "gone", "second, still queued")
    reader = _start_reader(cdir(m, "gone") / ".reply")
    wait_for(lambda: status(m, "gone")["state"] == "generating")
    t0 = time.monotonic()
    r = sh(m, "rm -r gone")
    assert r.returncode == 0, r.stderr
    out, err = reader.communicate(timeout=15)
    assert time.monotonic() - t0 < 10
    assert reader.returncode != 0, "cat succeeded on a removed conversation"
    assert "No such file" in err or "canceled" in err.lower(), err
    # The daemon still serves.
    mkconv(m, "after")
    prompt(m, "after", "hello")
    wait_for(lambda: history(m, "after")[-1]["content"] == echo_of("hello"))


def test_history_reads_never_stale(fake, mount):
    """Readers of messages.jsonl go through the kernel's page cache; what
    lmsfs appends behind its back must show up at once, for new opens and
    for a reader that keeps the file open (tail -f, less)."""
    m = cmount(mount)
    mkconv(m, "h")
    prompt(m, "h", "one")
    wait_for(lambda: len(history(m, "h")) == 2)
    path = cdir(m, "h") / "messages.jsonl"
    with open(path, "rb") as keep:
        first = keep.read()
        for word in ("two", "three"):
            prompt(m, "h", word)
            wait_for(lambda: len(history(m, "h")) == 2 + 2 * ("two", "three").index(word) + 2)
            fresh = path.read_bytes()
            assert fresh.startswith(first) and fresh.count(b"\n") > first.count(b"\n")
            keep.seek(0)
            assert keep.read() == fresh
            first = fresh
    assert [x["content"] for x in history(m, "h")][-1] == echo_of("three")


@pytest.mark.xdist_group("timing")
def test_long_history_turn_sends_no_expect_continue(fake, mount):
    """curl adds "Expect: 100-continue" to large bodies and then waits a
    second for servers that never answer it: a long history (here 1.5 MB)
    must go out at once."""
    m = cmount(mount)
    mkconv(m, "long")
    pair = ('{"role":"user","content":"%s"}\n'
            '{"role":"assistant","content":"%s"}\n' % ("x" * 150, "y" * 150))
    with open(cdir(m, "long") / "messages.jsonl", "w") as f:
        f.write(pair * 5000)
    t0 = time.monotonic()
    prompt(m, "long", "and now?")
    wait_for(lambda: history(m, "long")[-1]["role"] == "assistant")
    req = fake.chat_requests()[-1]
    assert "expect" not in req["headers"], req["headers"]
    assert len(req["body"]["messages"]) == 10002
    assert time.monotonic() - t0 < 0.9


def test_long_last_line_without_newline_survives_remount(fake, mount):
    """A valid history whose last line is long (5 MiB) and lacks its final
    newline must come back whole after a remount, not be taken for a line
    torn by a crash."""
    m = cmount(mount)
    mkconv(m, "big")
    first = '{"role":"user","content":"short"}\n'
    last = '{"role":"assistant","content":"%s"}' % ("y" * (5 << 20))
    with open(m.state / "conversations" / "big" / "messages.jsonl", "w") as f:
        f.write(first + last)
    m.remount()
    h = history(m, "big")  # loading the conversation runs the repair
    assert len(h) == 2 and h[1]["content"] == "y" * (5 << 20)
    prompt(m, "big", "still here?")
    wait_for(lambda: history(m, "big")[-1]["role"] == "assistant")
    assert [x["role"] for x in history(m, "big")] == [
        "user", "assistant", "user", "assistant"]


def test_rm_r_while_answering(fake, mount):
    """rm -r of a conversation in the middle of an answer removes it: the
    answer is cancelled and nothing is recreated behind rm's back."""
    m = cmount(mount)
    mkconv(m, "busy")
    rep, _ = slow_reply(words=40, delay=0.05)
    fake.enqueue(rep)
    prompt(m, "busy", "long answer please")
    wait_for(lambda: status(m, "busy").get("generating", {}).get("tokens", 0) >= 2)
    r = sh(m, "rm -r busy")
    assert r.returncode == 0, r.stderr
    time.sleep(0.3)  # a late write of the cancelled answer would land here
    assert not cdir(m, "busy").exists()
    assert not (m.state / "conversations" / "busy").exists()
    mkconv(m, "busy")
    prompt(m, "busy", "fresh")
    wait_for(lambda: history(m, "busy")[-1]["content"] == echo_of("fresh"))
    assert [x["content"] for x in history(m, "busy")] == ["fresh", echo_of("fresh")]

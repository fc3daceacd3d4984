"""Resources (issue 12, item 17): at most max_active answers are generated
at once (the other conversations wait their turn, and .status says so);
the soft limit of open files is raised to the hard one at start; running
out of descriptors is a local, retryable failure ("resources"), never a
bad request."""

import os
import re
import shutil
import threading

import pytest

from conftest import call_with_timeout, run, wait_for
from conv_helpers import (cdir, cmount, echo_of, holds_for, mkconv, prompt,
                          reply, sh, status, qn, wait_answered)
from fake_lms import Reply


def held_replies(fake, n):
    """n chat answers that the server holds (nothing sent) until the
    returned event is set."""
    go = threading.Event()

    def hold(req):
        go.wait(30)
        return Reply()
    fake.enqueue(*[hold] * n)
    return go


def test_max_active_caps_answers_at_once(fake, mount):
    m = cmount(mount, max_active=2)
    names = ["c%d" % i for i in range(5)]
    for n in names:
        mkconv(m, n)
    go = held_replies(fake, 5)
    try:
        for n in names[:4]:
            prompt(m, n, "hello " + n)
        wait_for(lambda: len(fake.chat_requests()) == 2, timeout=10)
        states = wait_for(lambda: (lambda s: s if sorted(s.values()) == [
            "generating", "generating", "waiting", "waiting"] else None)(
            {n: status(m, n)["state"] for n in names[:4]}), timeout=10)
        waiting = sorted((n for n in states if states[n] == "waiting"),
                         key=lambda n: status(m, n)["waiting"]["position"])
        for pos, n in enumerate(waiting, 1):
            w = status(m, n)["waiting"]
            assert w["position"] == pos and w["max_active"] == 2, w
            assert w["active"] == 2
            assert "max_active" in w["reason"], w
            assert status(m, n)["queued"] == 1
        # They stay waiting: no third request reaches the server.
        holds_for(lambda: len(fake.chat_requests()) == 2, seconds=0.5)
        # A cancelled prompt needs no turn: it ends at once.
        assert sh(m, "echo cancel > %s/.ctl" % qn(waiting[1])).returncode == 0
        wait_for(lambda: status(m, waiting[1])["state"] == "failed",
                 timeout=10)
        assert status(m, waiting[1])["error"]["class"] == "cancelled"
        assert len(fake.chat_requests()) == 2
        # A fifth conversation queues behind the first still waiting.
        prompt(m, names[4], "hello " + names[4])
        wait_for(lambda: status(m, names[4]).get("waiting", {}).get(
            "position") == 2, timeout=10)
    finally:
        go.set()
    for n in names:
        if n == waiting[1]:
            continue
        wait_answered(m, n, 1, timeout=20)
        assert reply(m, n).rstrip("\n") == echo_of("hello " + n)
    assert len(fake.chat_requests()) == 4
    # The cancelled one answers when asked again.
    prompt(m, waiting[1], "again")
    assert reply(m, waiting[1]).rstrip("\n") == echo_of("again")


def test_max_active_round_robin_between_busy_conversations(fake, mount):
    """A conversation with many queued prompts does not keep its turn:
    one answer, then the next in line."""
    m = cmount(mount, max_active=1)
    for n in ("a", "b"):
        mkconv(m, n)
    go = held_replies(fake, 1)
    try:
        prompt(m, "a", "a1")
        wait_for(lambda: len(fake.chat_requests()) == 1, timeout=10)
        prompt(m, "a", "a2")
        prompt(m, "b", "b1")
        wait_for(lambda: status(m, "b")["state"] == "waiting", timeout=10)
    finally:
        go.set()
    wait_answered(m, "a", 2, timeout=20)
    wait_answered(m, "b", 1, timeout=20)
    order = [r["body"]["messages"][-1]["content"]
             for r in fake.chat_requests()]
    assert order == ["a1", "b1", "a2"], order


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit")
def test_soft_fd_limit_raised_to_hard_at_start(fake, mount, monkeypatch):
    wrapper = os.environ.get("LMSFS_WRAPPER", "")
    monkeypatch.setenv("LMSFS_WRAPPER",
                       ("prlimit --nofile=256:4096 " + wrapper).strip())
    m = cmount(mount)
    with open("/proc/%d/limits" % m.pid) as f:
        line = [ln for ln in f if ln.startswith("Max open files")][0]
    assert line.split()[3:5] == ["4096", "4096"], line
    assert "open files limit raised from 256 to 4096" in m.log()


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit")
@pytest.mark.xdist_group("timing")
def test_out_of_descriptors_is_resources_not_bad_request(fake, mount):
    """With the daemon's descriptors nearly used up, answers that run at
    once fail for lack of descriptors here and there: each such failure is
    class "resources" (retried when it was the request), never
    "bad_request", and every conversation answers once they are free."""
    n = 8
    # One idle connection kept: pooled sockets hold descriptors too.
    m = cmount(mount, initial_backoff="50ms",
               max_idle_connections=1,
               breaker_threshold=1000)
    names = ["r%d" % i for i in range(n)]
    for x in names:
        mkconv(m, x)
    fake.chunk_delay = 0.1  # answers overlap
    base = open_fds(m.pid)
    with open("/proc/%d/limits" % m.pid) as f:
        soft, hard = [ln for ln in f if ln.startswith("Max open files")][
            0].split()[3:5]
    # Room for about one answer at a time (a directory, stream, history,
    # socket each), not for eight.
    r = run(["prlimit", "--pid", str(m.pid), "--nofile=%d:%s"
             % (base + 5, hard)])
    assert r.returncode == 0, r.stderr
    refused = 0
    threads = []
    errors = []

    def submit(x):
        # A prompt may be refused for want of a descriptor (EMFILE from
        # write or close): it is then sent again.
        def submitted():
            try:
                fd = os.open(str(cdir(m, x) / "prompt"),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                try:
                    os.write(fd, ("hello " + x).encode())
                finally:
                    os.close(fd)
                return True
            except OSError as e:
                errors.append(e)
                return False
        wait_for(lambda: call_with_timeout(submitted), timeout=30,
                 interval=0.05)
    for x in names:
        t = threading.Thread(target=submit, args=(x,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(40)
    refused = len(errors)
    try:
        for x in names:
            # Answered, or failed (a prompt that could not be stored
            # stays queued until retry).
            wait_for(lambda x=x: status(m, x)["state"] in ("idle", "failed")
                     and status(m, x)["answered"] >= 1, timeout=30)
    except AssertionError:
        raise AssertionError("%s\n%s\n%s" % (
            [status(m, y) for y in names], errors[:5], m.log()))
    # Descriptors to spare again.
    r = run(["prlimit", "--pid", str(m.pid), "--nofile=%s:%s" % (soft, hard)])
    assert r.returncode == 0, r.stderr
    log = m.log()
    assert "bad_request" not in log, log
    classes = {x: (status(m, x)["error"] or {}).get("class") for x in names}
    assert set(classes.values()) <= {None, "resources"}, classes
    # Something did run short (else this test shows nothing).
    assert "resources" in log or refused, log
    # Every conversation answers (a failed one when asked again).
    for x in names:
        if classes[x] is not None:
            assert sh(m, "echo retry > %s/.ctl" % qn(x)).returncode == 0
            wait_answered(m, x, 2, timeout=30)
        assert reply(m, x).rstrip("\n") == echo_of("hello " + x)
    assert re.search(r"lmsfs_failures_total\{class=\"bad_request\"\} [1-9]",
                     (m.path / "metrics").read_text()) is None


def test_waiting_conversations_and_rm_and_unmount(fake, mount):
    """A conversation waiting for its turn can be removed at once; at
    unmount, waiting prompts stay queued on disk and are answered after
    the next mount."""
    m = cmount(mount, max_active=1)
    for n in ("a", "b", "c"):
        mkconv(m, n)
    go = held_replies(fake, 3)
    try:
        prompt(m, "a", "first")
        wait_for(lambda: len(fake.chat_requests()) == 1, timeout=10)
        prompt(m, "b", "second")
        prompt(m, "c", "third")
        wait_for(lambda: status(m, "c")["state"] == "waiting", timeout=10)
        r = sh(m, "rm -r %s" % qn("c"), timeout=10)
        assert r.returncode == 0, r.stderr
        assert status(m, "b")["waiting"]["position"] == 1
        assert m.umount() == 0
    finally:
        go.set()
    assert len(fake.chat_requests()) == 1
    m.start()
    wait_answered(m, "b", 1, timeout=20)
    assert reply(m, "b").rstrip("\n") == echo_of("second")
    assert status(m, "a")["error"]["class"] == "interrupted"

"""Cancel and unmount stop a running tool's whole process tree at once: its
process group and escapees that called setsid (issue 12, item 12).

Every tool writes its PIDs to files in tmp_path; the test waits for the
files, cancels or unmounts, and asserts every PID is gone within a margin
suited to a loaded 2-core machine (the default tool_timeout is 30 s: a
tool only stopped by its timeout fails these tests)."""

import time

import pytest

from conftest import read_text, wait_for, write_text
from conv_helpers import cdir, mkconv, prompt, reply, sh
from fake_lms import Reply
from test_tools import add_tool, assert_still_serving, proc_gone, tmount

# Writes its own PID, starts a child in its group and, with ESCAPE, one
# that leaves the group and the session (setsid) - each writes its PID.
SLEEPER = """#!/bin/sh
# @description Sleeps for a long time
echo $$ > %(d)s/tool
sleep 1000 &
echo $! > %(d)s/child
%(escape)s
wait
"""
ESCAPE = ("setsid sh -c 'echo $$ > %(d)s/escapee.tmp; "
          "mv %(d)s/escapee.tmp %(d)s/escapee; exec sleep 1000' "
          "</dev/null >/dev/null 2>&1 &")

# What cancel and unmount must take at most (the tool would otherwise run
# for tool_timeout = 30 s, or forever).
MARGIN = 3.0


def start_sleeper(m, fake, tmp_path, escape):
    d = tmp_path / "pids"
    d.mkdir()
    add_tool(m, tmp_path, "sleeper", SLEEPER % {
        "d": d, "escape": ESCAPE % {"d": d} if escape else ""})
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "sleeper",
                                    "arguments": "{}"}]))
    mkconv(m, "c")
    prompt(m, "c", "go")
    names = ["tool", "child"] + (["escapee"] if escape else [])
    wait_for(lambda: all((d / n).exists() and (d / n).read_text().strip()
                         for n in names), timeout=15,
             message="the tool wrote its PIDs")
    pids = {n: int((d / n).read_text()) for n in names}
    for n, pid in pids.items():
        assert not proc_gone(pid), "%s (%d) is not running" % (n, pid)
    return pids


def wait_gone(pids, t0, what):
    wait_for(lambda: all(proc_gone(p) for p in pids.values()),
             timeout=MARGIN + 5,
             message="every process of the tool gone after %s: %r"
             % (what, {n: p for n, p in pids.items() if not proc_gone(p)}))
    took = time.monotonic() - t0
    assert took < MARGIN, "%s took %.2f s to stop the tool" % (what, took)


@pytest.mark.xdist_group("timing")
@pytest.mark.parametrize("escape", [False, True], ids=["group", "setsid"])
def test_cancel_kills_the_tool_tree_at_once(fake, mount, tmp_path, escape):
    m = tmount(mount)
    pids = start_sleeper(m, fake, tmp_path, escape)
    t0 = time.monotonic()
    write_text(cdir(m, "c") / ".ctl", "cancel\n")
    wait_gone(pids, t0, "cancel")
    # The answer ends as cancelled, the tool's result says why, and the
    # conversation goes on.
    r = sh(m, "cat c/.reply", timeout=15)
    assert r.returncode != 0, r.stdout
    hist = read_text(cdir(m, "c") / "messages.jsonl")
    assert "sleeper was stopped: the answer was cancelled" in hist, hist
    assert_still_serving(m, fake)


@pytest.mark.xdist_group("timing")
@pytest.mark.parametrize("escape", [False, True], ids=["group", "setsid"])
def test_unmount_kills_the_tool_tree_at_once(fake, mount, tmp_path, escape):
    m = tmount(mount)
    pids = start_sleeper(m, fake, tmp_path, escape)
    t0 = time.monotonic()
    m.umount()
    assert m.pid is None, "the daemon is still running"
    wait_gone(pids, t0, "unmount")
    assert "did not stop in time" not in m.log(), m.log()
    assert "interrupted" in (m.state / "conversations" / "c" /
                             "messages.jsonl").read_text()


def test_a_tool_that_exits_leaves_no_escapee(fake, mount, tmp_path):
    """A tool that starts a setsid child and exits: the child is killed
    when the tool is done (it would otherwise outlive the daemon)."""
    m = tmount(mount)
    d = tmp_path / "pids"
    d.mkdir()
    add_tool(m, tmp_path, "leaver", "#!/bin/sh\n# @description Leaves\n" +
             ESCAPE % {"d": d} + "\nwhile [ ! -s %s/escapee ]; do sleep 0.05; "
             "done\necho bye\n" % d)
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "leaver",
                                    "arguments": "{}"}]))
    mkconv(m, "c")
    prompt(m, "c", "go")
    assert reply(m, "c").strip() == "Echo: go"
    pid = int((d / "escapee").read_text())
    wait_for(lambda: proc_gone(pid), timeout=5,
             message="the escapee (%d) killed when its tool exited" % pid)


@pytest.mark.xdist_group("timing")
def test_the_timeout_kills_a_setsid_escapee(fake, mount, tmp_path):
    """tool_timeout kills the tool's group and the child that left it."""
    m = tmount(mount, tool_timeout="1s")
    pids = start_sleeper(m, fake, tmp_path, True)
    r = sh(m, "cat c/.reply", timeout=20)
    assert r.returncode == 0 and r.stdout.strip() == "Echo: go", r
    wait_for(lambda: all(proc_gone(p) for p in pids.values()), timeout=5,
             message="every process of the tool gone after its timeout")
    hist = read_text(cdir(m, "c") / "messages.jsonl")
    assert "sleeper did not finish within 1000 ms" in hist, hist


def test_a_killed_daemon_takes_the_tool_tree_with_it(fake, mount, tmp_path):
    m = tmount(mount)
    pids = start_sleeper(m, fake, tmp_path, True)
    m.kill9()
    wait_for(lambda: all(proc_gone(p) for p in pids.values()), timeout=5,
             message="every process of the tool gone with the daemon: %r"
             % pids)


def test_a_tool_that_cannot_be_executed_says_why(fake, mount, tmp_path):
    """execve fails (here: the #! interpreter does not exist): the model
    reads why, not an exit status of the shepherd's making."""
    m = tmount(mount)
    add_tool(m, tmp_path, "broken", "#!/no/such/interpreter\n")
    mkconv(m, "c")
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "broken",
                                    "arguments": "{}"}]))
    prompt(m, "c", "go")
    assert reply(m, "c", timeout=15).strip() == "Echo: go"
    hist = read_text(cdir(m, "c") / "messages.jsonl")
    assert "error: cannot run broken: No such file or directory" in hist, \
        hist
    assert_still_serving(m, fake)

"""MCP servers from tools/mcp.json (issue 15): the reference server
@modelcontextprotocol/server-everything (installed by `make deps` into
tests/mcp/node_modules) and a hostile stdio server (tests/mcp/hostile.py),
driven through the mount with the fake LM Studio server scripted to call
their tools.

Every filesystem access has a timeout (conftest/conv_helpers helpers)."""

import errno
import json
import os
import re
import sys
import time

import pytest

from conftest import REPO, read_json, read_text, run, wait_for, write_text
from conv_helpers import (chat_bodies, cdir, mkconv, prompt, reply, sh,
                          stream_text)
from fake_lms import Reply
from test_tools import (add_tool, ask_fake, assert_still_serving,
                        check_history_json, failed_mark, functions_of,
                        proc_gone, tmount, QUICK_TOOL)

MCP_DIR = REPO / "tests" / "mcp"
EVERYTHING = MCP_DIR / "node_modules" / "@modelcontextprotocol" / \
    "server-everything" / "dist" / "index.js"
HOSTILE = MCP_DIR / "hostile.py"


def everything_entry():
    assert EVERYTHING.exists(), (
        "the MCP reference server is missing: run `make deps` (it installs "
        "@modelcontextprotocol/server-everything into tests/mcp)")
    return {"command": "node", "args": [str(EVERYTHING), "stdio"]}


def hostile_entry(mode, pids=None):
    args = [str(HOSTILE), mode]
    if pids:
        args.append(str(pids))
    return {"command": sys.executable, "args": args}


def put_conf(m, tmp_path, servers, raw=None):
    """cp a scratch mcp.json to MOUNT/tools/mcp.json; returns the cp."""
    src = tmp_path / "mcp.json.src"
    src.write_text(raw if raw is not None else
                   json.dumps({"mcpServers": servers}))
    return run(["cp", str(src), str(m.path / "tools" / "mcp.json")])


def tstatus(m):
    return read_text(m.path / "tools" / ".status")


def call(m, fake, name, args, conv="c", call_id="call_1", timeout=30):
    """The model calls NAME(args) once; returns (tool message content,
    request bodies of the turn)."""
    fake.enqueue(Reply(tool_calls=[{"id": call_id, "name": name,
                                    "arguments": json.dumps(args)}]))
    out, bodies = ask_fake(m, fake, conv, "go", timeout=timeout)
    assert out.strip() == "Echo: go", out
    last = bodies[-1]["messages"][-1]
    assert last["role"] == "tool" and last["tool_call_id"] == call_id, last
    return last["content"], bodies


def mount_with(mount, tmp_path, servers, **kw):
    m = tmount(mount, **kw)
    r = put_conf(m, tmp_path, servers)
    assert r.returncode == 0, r.stderr
    return m


# ------------------------------------------------ the reference server

def test_everything_tools_are_offered_and_called(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"everything": everything_entry()})
    # Not started at mount: only on first need.
    assert "mcp everything: not started" in tstatus(m), tstatus(m)
    mkconv(m, "c")
    content, bodies = call(m, fake, "everything__echo", {"message": "hi"})
    assert content == "Echo: hi", content
    fns = functions_of(bodies[0])
    echo = fns["everything__echo"]
    assert echo["parameters"]["properties"]["message"]["type"] == "string"
    assert echo["parameters"]["required"] == ["message"]
    assert "everything__get-sum" in fns
    assert all(re.match(r"^[A-Za-z0-9_-]{1,64}$", n) for n in fns), fns
    lines = stream_text(m, "c").splitlines()
    assert any(ln.startswith('[lmsfs] tool everything__echo {"message"')
               for ln in lines), lines
    assert any(ln.startswith("[lmsfs] tool everything__echo done: MCP, 8 "
                             "bytes") for ln in lines), lines
    st = tstatus(m)
    assert re.search(r"^mcp everything: ready: \d+ tools", st, re.M), st
    assert "ok everything__get-sum: " in st, st

    # A second call (another conversation) goes to the same process.
    mkconv(m, "d")
    content, _ = call(m, fake, "everything__get-sum", {"a": 2, "b": 40},
                      conv="d")
    assert "42" in content, content
    health = read_json(m.path / "health")
    assert health["mcp"]["calls"] == 2 and health["mcp"]["failures"] == 0, \
        health
    metrics = read_text(m.path / "metrics")
    assert "lmsfs_mcp_calls_total 2" in metrics, metrics
    check_history_json(m, "d")


def test_everything_image_and_tool_error(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"everything": everything_entry()})
    mkconv(m, "c")
    content, _ = call(m, fake, "everything__get-tiny-image", {})
    assert "[image]" in content, content
    # A bad argument: the server answers with isError (or a JSON-RPC
    # error); either way an error text for the model.
    content, _ = call(m, fake, "everything__get-sum", {"a": "x"},
                      call_id="call_2")
    assert content.startswith("error: "), content
    assert_still_serving(m, fake)


@pytest.mark.xdist_group("timing")
def test_everything_timeout_cancels(fake, mount, tmp_path):
    # 5 s: the reference server (node) must also start within it on a
    # loaded machine.
    m = mount_with(mount, tmp_path, {"everything": everything_entry()},
                   tool_timeout="5s")
    mkconv(m, "c")
    t0 = time.monotonic()
    content, _ = call(m, fake, "everything__trigger-long-running-operation",
                      {"duration": 60, "steps": 3})
    took = time.monotonic() - t0
    assert content == ("error: everything__trigger-long-running-operation "
                       "did not finish within 5000 ms and was cancelled"), \
        content
    assert took < 30, took
    # The server answered its ping after notifications/cancelled: the same
    # process goes on serving.
    content, _ = call(m, fake, "everything__echo", {"message": "again"},
                      call_id="call_2")
    assert content == "Echo: again", content
    assert "did not answer after a call timed out" not in m.log()
    assert read_json(m.path / "health")["mcp"]["failures"] == 1


def test_lmsfs_tools_narrows_by_server(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"everything": everything_entry(),
                                     "other": hostile_entry("good")})
    add_tool(m, tmp_path, "quick", QUICK_TOOL)
    c = mkconv(m, "c")
    write_text(c / "params.json", json.dumps({"lmsfs_tools": ["other"]}))
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    names = set(functions_of(bodies[0]))
    assert names == {"other__shout"}, names
    # The narrowed-out server was never started.
    assert "mcp everything: not started" in tstatus(m), tstatus(m)
    write_text(c / "params.json", json.dumps(
        {"lmsfs_tools": ["quick", "everything__echo"]}))
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"quick", "everything__echo"}


# ------------------------------------------------ mcp.json itself

def test_malformed_mcp_json_is_refused_and_the_old_file_kept(
        fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"h": hostile_entry("good")})
    path = m.path / "tools" / "mcp.json"
    good = read_text(path)
    cases = [
        ("{not json", "not valid JSON"),
        ('{"servers": {}}', 'must be {"mcpServers"'),
        ('{"mcpServers": {"x": {"command": 3}}}',
         "mcpServers.x.command must be a non-empty string"),
        ('{"mcpServers": {"x": {"command": "a", "args": "b"}}}',
         "mcpServers.x.args must be an array of strings"),
        ('{"mcpServers": {"x": {"command": "a", "env": {"K": 1}}}}',
         "mcpServers.x.env"),
    ]
    for raw, why in cases:
        r = put_conf(m, tmp_path, None, raw=raw)
        assert r.returncode != 0, raw
        assert "Invalid argument" in r.stderr, r.stderr
        assert read_text(path) == good, raw
        st = tstatus(m)
        assert "mcp.json: write refused at " in st and why in st, (raw, st)
        assert why in m.log(), m.log()
    # Python's close() sees the EINVAL too.
    with pytest.raises(OSError) as ei:
        with open(path, "w") as f:
            f.write("[1, 2")
    assert ei.value.errno == errno.EINVAL
    assert read_text(path) == good
    # mv of a bad file over it is refused the same way; a good one works.
    bad = m.path / "tools" / "new.json"
    write_text(bad, "{oops")
    r = run(["mv", str(bad), str(path)])
    assert r.returncode != 0, r  # (mv words EINVAL its own way)
    assert "rename refused: mcp.json is not valid JSON" in m.log()
    assert read_text(path) == good
    # A valid file clears the refusal; the old server's tools still work.
    r = put_conf(m, tmp_path, {"h": hostile_entry("good")})
    assert r.returncode == 0, r.stderr
    assert "write refused" not in tstatus(m)
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"text": "hey"})
    assert content == "HEY", content


def test_url_servers_and_bad_names_are_listed_as_skipped(fake, mount,
                                                         tmp_path):
    m = mount_with(mount, tmp_path, {
        "remote": {"url": "https://example.invalid/mcp"},
        "bad name": {"command": "x"},
        "h": hostile_entry("badnames")})
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"h__shout"}
    st = tstatus(m)
    assert "mcp remote: skipped: \"url\" (remote, Streamable HTTP) servers " \
        "are not supported" in st, st
    assert "mcp bad name: skipped: the name must be" in st, st
    assert "skipped h__has.dot: the name has characters other than" in st, st
    assert "skipped h__" + "x" * 70 + ": the name is over 64 characters" \
        in st, st
    assert "ok h__shout: " in st, st


def test_mcp_json_changes_refresh_the_tools(fake, mount, tmp_path):
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"one": hostile_entry("good", pids)})
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"one__shout"}
    first = int(pids.read_text().split()[0])
    r = put_conf(m, tmp_path, {"two": hostile_entry("good")})
    assert r.returncode == 0, r.stderr
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"two__shout"}
    wait_for(lambda: proc_gone(first), timeout=5,
             message="the server dropped from mcp.json stopped")
    assert "mcp one" not in tstatus(m)


# ------------------------------------------------ hostile servers

@pytest.mark.parametrize("mode,why", [
    ("missing", "command not found: no-such-mcp-server-xyz"),
    ("garbage", "did not answer initialize within 2000 ms (it printed: "
                "Starting server... <html>not json)"),
    ("silent", "did not answer initialize within 2000 ms"),
    ("old", "speaks MCP protocol 2023-01-01; lmsfs needs 2025-06-18 or "
            "later"),
    ("noexec", "cannot run %s: Permission denied"),
])
def test_a_server_that_cannot_start(fake, mount, tmp_path, mode, why):
    entry = {"command": "no-such-mcp-server-xyz"} if mode == "missing" \
        else hostile_entry(mode)
    if mode == "noexec":
        # Named with a '/': run as given, and execve says why it cannot.
        prog = tmp_path / "server.sh"
        prog.write_text("#!/bin/sh\n")
        prog.chmod(0o644)
        entry = {"command": str(prog)}
        why = why % prog
    m = mount_with(mount, tmp_path, {"bad": entry,
                                     "h": hostile_entry("good")},
                   tool_timeout="2s")
    mkconv(m, "c")
    # The conversation goes on with the tools that work; the model's call
    # to a tool of the failed server gets a readable error.
    content, bodies = call(m, fake, "bad__shout", {"text": "x"},
                           timeout=30)
    assert set(functions_of(bodies[0])) == {"h__shout"}
    assert content.startswith("error: "), content
    st = tstatus(m)
    assert "mcp bad: failed: " + why in st, st
    assert why.split(" (")[0] in m.log()
    assert_still_serving(m, fake)


def test_a_server_that_dies_mid_call_is_restarted(fake, mount, tmp_path):
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("crash", pids)})
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"text": "x"})
    assert content == ("error: h__shout failed: MCP server h stopped during "
                       "the call: the server exited with status 3"), content
    assert failed_mark(m, "h__shout") == content
    wait_for(lambda: "hostile: crashing mid-call" in m.log(), timeout=5,
             message="the server's stderr in the log")
    # Needed again by the turn's next request: started again at once.
    assert len(pids.read_text().split()) == 2
    assert "mcp h: ready: 1 tools" in tstatus(m)
    # A second exit soon after its start: the next start waits (backoff);
    # meanwhile its tools are not offered and a call says why.
    content, bodies = call(m, fake, "h__shout", {"text": "x"},
                           call_id="call_2")
    assert "stopped during the call" in content, content
    assert "h__shout" not in functions_of(bodies[-1])
    assert len(pids.read_text().split()) == 2
    st = tstatus(m)
    assert "mcp h: down: the server exited with status 3" in st, st
    health = read_json(m.path / "health")
    assert health["mcp"] == {"calls": 2, "failures": 2}, health
    assert_still_serving(m, fake)


@pytest.mark.xdist_group("timing")
def test_a_server_that_hangs_is_cancelled_and_restarted(fake, mount,
                                                        tmp_path):
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("hang", pids)},
                   tool_timeout="2s")
    mkconv(m, "c")
    t0 = time.monotonic()
    content, _ = call(m, fake, "h__shout", {"text": "x"})
    assert content == ("error: h__shout did not finish within 2000 ms and "
                       "was cancelled"), content
    assert time.monotonic() - t0 < 15
    first = int(pids.read_text().split()[0])
    wait_for(lambda: proc_gone(first), timeout=5,
             message="the server that did not answer a ping killed")
    assert re.search(r"hostile: cancelled request \d+ \(timeout\)", m.log())
    assert "mcp h: it did not answer after a call timed out" in m.log()
    # The turn's next request started it again.
    assert len(pids.read_text().split()) == 2
    assert "mcp h: ready" in tstatus(m)
    assert_still_serving(m, fake)


def test_a_server_gets_a_clean_environment_and_only_stdio(fake, mount,
                                                          tmp_path):
    entry = hostile_entry("env")
    entry["env"] = {"GIVEN": "yes"}
    m = tmount(mount, env={"SECRET_TOKEN": "hunter2",
                           "LMSFS_TOOLS_X": "y", "LANG": "C.UTF-8"})
    assert put_conf(m, tmp_path, {"h": entry}).returncode == 0
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {})
    got = json.loads(content)
    env = got["env"]
    assert env.get("GIVEN") == "yes", env
    assert set(env) <= {"GIVEN", "PATH", "HOME", "LANG", "LC_CTYPE",
                        "PYTHONIOENCODING"}, env
    assert "SECRET_TOKEN" not in env and "LMSFS_TOOLS_X" not in env
    assert got["fds"][:3] == [0, 1, 2] and len(got["fds"]) <= 4, got
    assert "hunter2" not in content


def test_list_changed_refreshes_the_tools(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"h": hostile_entry("changing")})
    mkconv(m, "c")
    content, bodies = call(m, fake, "h__shout", {"text": "a"})
    assert set(functions_of(bodies[0])) == {"h__shout"}
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"h__shout", "h__whisper"}


@pytest.mark.xdist_group("timing")
def test_unmount_stops_the_servers(fake, mount, tmp_path):
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("stubborn", pids),
                                     "g": hostile_entry("good", pids)})
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    ask_fake(m, fake, "c", "hi")
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    t0 = time.monotonic()
    m.umount()
    assert m.pid is None
    wait_for(lambda: all(proc_gone(p) for p in started), timeout=10,
             message="the servers stopped at unmount")
    assert time.monotonic() - t0 < 6


@pytest.mark.xdist_group("timing")
def test_cancel_stops_an_mcp_call_at_once(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"h": hostile_entry("hang")})
    mkconv(m, "c")
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "h__shout",
                                    "arguments": "{}"}]))
    prompt(m, "c", "go")
    wait_for(lambda: "[lmsfs] tool h__shout" in stream_text(m, "c"),
             timeout=15, message="the call started")
    t0 = time.monotonic()
    write_text(cdir(m, "c") / ".ctl", "cancel\n")
    r = sh(m, "cat c/.reply", timeout=15)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 3, "cancel waited for the MCP call"
    wait_for(lambda: re.search(r"hostile: cancelled request \d+ "
                               r"\(cancelled\)", m.log()), timeout=5,
             message="notifications/cancelled sent")
    assert "h__shout was stopped: the answer was cancelled" in \
        read_text(cdir(m, "c") / "messages.jsonl")


def test_paged_tool_lists_and_requests_from_the_server(fake, mount,
                                                       tmp_path):
    m = mount_with(mount, tmp_path, {"p": hostile_entry("paged"),
                                     "a": hostile_entry("asking")})
    mkconv(m, "c")
    content, bodies = call(m, fake, "p__whisper", {})
    assert set(functions_of(bodies[0])) == {"p__shout", "p__whisper",
                                            "a__shout"}
    assert content == "", content
    # The server's own requests are answered: ping with a result, what
    # lmsfs does not do with an error.
    wait_for(lambda: 'hostile: answer to srv-1: {}' in m.log() and
             'hostile: answer to srv-2: {"code": -32601' in m.log(),
             timeout=5, message="the server's requests answered")


def test_the_example_mcp_json_is_accepted(fake, mount, tmp_path):
    m = tmount(mount)
    src = REPO / "examples" / "mcp.json"
    r = run(["cp", str(src), str(m.path / "tools" / "mcp.json")])
    assert r.returncode == 0, r.stderr
    assert read_text(m.path / "tools" / "mcp.json") == src.read_text()
    assert "mcp files: not started (starts on first need)" in tstatus(m)


def test_calls_from_two_conversations_share_one_server(fake, mount,
                                                       tmp_path):
    """Requests are multiplexed by id: a slow call in one conversation
    does not hold up a quick one in another, and the answers (out of
    order) each reach their caller."""
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("parallel", pids)})
    mkconv(m, "slow")
    mkconv(m, "quick")
    # Start the server first, so that both calls find it ready.
    fake.enqueue(Reply(text="fine"))
    ask_fake(m, fake, "quick", "hi")
    fake.enqueue(Reply(tool_calls=[{"id": "call_s", "name": "h__shout",
                                    "arguments": json.dumps(
                                        {"text": "slow", "delay": 3})}]))
    prompt(m, "slow", "go")
    wait_for(lambda: "[lmsfs] tool h__shout" in stream_text(m, "slow"),
             timeout=15, message="the slow call started")
    t0 = time.monotonic()
    content, _ = call(m, fake, "h__shout", {"text": "quick"}, conv="quick",
                      call_id="call_q")
    assert content == "QUICK", content
    assert time.monotonic() - t0 < 2.5, "the quick call waited for the slow"
    assert reply(m, "slow", timeout=20).strip() == "Echo: go"
    assert "SLOW" in read_text(cdir(m, "slow") / "messages.jsonl")
    assert len(pids.read_text().split()) == 1, "one process for both"


def test_mcp_output_is_capped(fake, mount, tmp_path):
    m = mount_with(mount, tmp_path, {"h": hostile_entry("parallel")},
                   tool_output_max="1K")
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"size": 5000})
    assert content == "x" * 1024 + "\n[output truncated at 1024 bytes]", \
        content[-80:]
    lines = stream_text(m, "c").splitlines()
    assert any(ln.startswith("[lmsfs] tool h__shout done: MCP, ")
               and "(truncated)" in ln for ln in lines), lines


@pytest.mark.xdist_group("timing")
def test_unmount_during_a_server_start(fake, mount, tmp_path):
    """A start waiting for initialize (tool_timeout 30 s) is given up at
    unmount: the daemon exits at once and cleanly, the server is gone."""
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"s": hostile_entry("silent", pids)})
    mkconv(m, "c")
    prompt(m, "c", "go")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout=15,
             message="the server started")
    pid = int(pids.read_text().split()[0])
    t0 = time.monotonic()
    m.umount()
    assert m.pid is None
    wait_for(lambda: proc_gone(pid), timeout=5, message="the server gone")
    assert time.monotonic() - t0 < 4
    assert "did not stop in time" not in m.log(), m.log()


def test_servers_die_with_a_killed_daemon(fake, mount, tmp_path):
    """kill -9 of the daemon: each server's shepherd sees its parent thread
    die (PR_SET_PDEATHSIG) and kills the server's tree, even one that
    ignores SIGTERM and the end of its input."""
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("stubborn", pids)})
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    ask_fake(m, fake, "c", "hi")
    pid = int(pids.read_text().split()[0])
    m.kill9()
    wait_for(lambda: proc_gone(pid), timeout=5,
             message="the server (%d) killed with the daemon" % pid)


def test_mcp_json_created_emptied_and_removed(fake, mount, tmp_path):
    m = tmount(mount)
    path = m.path / "tools" / "mcp.json"
    # A bad file where there was none: refused, and no mcp.json is left.
    r = put_conf(m, tmp_path, None, raw="{bad")
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r
    assert not path.exists()
    assert "mcp.json: write refused at " in tstatus(m)
    assert put_conf(m, tmp_path, {"h": hostile_entry("good")}).returncode == 0
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert set(functions_of(bodies[0])) == {"h__shout"}
    # Emptied (a valid file with no servers): no MCP tools.
    r = sh(m, ": > ../tools/mcp.json")
    assert r.returncode == 0, r.stderr
    # Emptying takes effect at the release, a moment after the close.
    wait_for(lambda: read_text(path) == "", message="mcp.json emptied")
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert "tools" not in bodies[0] or not functions_of(bodies[0])
    assert "mcp h" not in tstatus(m)
    # Removed: the same.
    assert put_conf(m, tmp_path, {"h": hostile_entry("good")}).returncode == 0
    assert run(["rm", str(path)]).returncode == 0
    fake.enqueue(Reply(text="fine"))
    _, bodies = ask_fake(m, fake, "c", "hi")
    assert "tools" not in bodies[0] or not functions_of(bodies[0])


def test_a_big_request_to_a_busy_server_is_not_cut(fake, mount, tmp_path):
    """A server at work does not read its input for a while: a request
    bigger than the pipe waits for it (no conversation blocks on the
    write meanwhile) and reaches it whole, so that its answer comes."""
    m = mount_with(mount, tmp_path, {"h": hostile_entry("good")},
                   tool_timeout="15s")
    mkconv(m, "busy")
    mkconv(m, "big")
    fake.enqueue(Reply(text="fine"))
    ask_fake(m, fake, "big", "hi")
    fake.enqueue(Reply(tool_calls=[{"id": "call_b", "name": "h__shout",
                                    "arguments": json.dumps(
                                        {"text": "a", "busy": 3})}]))
    prompt(m, "busy", "go")
    wait_for(lambda: "[lmsfs] tool h__shout" in stream_text(m, "busy"),
             timeout=15, message="the busy call started")
    content, _ = call(m, fake, "h__shout", {"text": "b" * 200000},
                      conv="big", call_id="call_g")
    assert content.startswith("BBBB") and "error" not in content, \
        content[:300]
    assert reply(m, "busy", timeout=20).strip() == "Echo: go"
    assert '"content":"A"' in read_text(cdir(m, "busy") / "messages.jsonl")
    assert "not JSON-RPC" not in m.log()


@pytest.mark.xdist_group("timing")
def test_unmount_stops_several_stuck_servers_together(fake, mount, tmp_path):
    """Servers that ignore the end of their input and SIGTERM get one
    grace period between them at unmount, not one each."""
    pids = tmp_path / "pids"
    names = ["s1", "s2", "s3", "s4"]
    m = mount_with(mount, tmp_path,
                   {n: hostile_entry("stubborn", pids) for n in names})
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    ask_fake(m, fake, "c", "hi")
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == len(names)
    t0 = time.monotonic()
    m.umount()
    assert m.pid is None
    took = time.monotonic() - t0
    wait_for(lambda: all(proc_gone(p) for p in started), timeout=10,
             message="the servers stopped at unmount")
    assert took < 3, "unmount took %.1f s" % took


def test_an_endless_line_from_a_server_is_dropped_not_kept(fake, mount,
                                                           tmp_path):
    """A server prints a line far over the cap before its answer: the line
    is dropped as it comes (the daemon's memory stays bounded) and the
    answer after it is taken."""
    m = mount_with(mount, tmp_path, {"h": hostile_entry("good")},
                   tool_timeout="20s")
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"text": "ok", "flood": 80 << 20},
                      timeout=40)
    assert content == "OK", content[:200]
    rss = 0
    with open("/proc/%d/status" % m.pid) as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                rss = int(ln.split()[1]) * 1024
    assert rss < 60 << 20, "the daemon peaked at %d MiB" % (rss >> 20)


@pytest.mark.xdist_group("timing")
def test_a_late_answer_does_not_reach_the_next_call(fake, mount, tmp_path):
    """A call times out; the server answers it later anyway. That answer
    is dropped: the next call gets its own (ids are never reused)."""
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"h": hostile_entry("parallel", pids)},
                   tool_timeout="1s")
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"text": "late", "delay": 2})
    assert content == ("error: h__shout did not finish within 1000 ms and "
                       "was cancelled"), content
    # Still the same process (it answered the ping); the late answer
    # comes and goes.
    wait_for(lambda: "hostile: answered request" in m.log(), timeout=10,
             message="the late answer sent")
    content, _ = call(m, fake, "h__shout", {"text": "fresh", "delay": 0.2},
                      call_id="call_2")
    assert content == "FRESH", content
    assert len(pids.read_text().split()) == 1
    assert "LATE" not in read_text(cdir(m, "c") / "messages.jsonl")


@pytest.mark.xdist_group("timing")
def test_no_server_starts_once_unmount_began(fake, mount, tmp_path):
    """A request waits for one server's start when the unmount comes: the
    servers after it in mcp.json are not started on the way out."""
    first, second = tmp_path / "pids1", tmp_path / "pids2"
    m = tmount(mount)
    r = put_conf(m, tmp_path, None, raw=json.dumps({"mcpServers": {
        "s": hostile_entry("silent", first),
        "t": hostile_entry("good", second)}}))
    assert r.returncode == 0, r.stderr
    mkconv(m, "c")
    prompt(m, "c", "go")
    wait_for(lambda: first.exists() and first.read_text().strip(),
             timeout=15, message="the first server started")
    m.umount()
    assert m.pid is None
    assert not second.exists(), "a server was started during the unmount"
    assert "mcp t:" not in m.log(), m.log()


def daemon_children(pid):
    kids = []
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, t)) as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def test_no_zombies_are_left(fake, mount, tmp_path):
    """Tools that ran, a server that crashed and was started again: the
    daemon has reaped every process it started but the server running."""
    m = mount_with(mount, tmp_path, {"h": hostile_entry("crash")})
    add_tool(m, tmp_path, "quick", QUICK_TOOL)
    mkconv(m, "c")
    content, _ = call(m, fake, "h__shout", {"text": "x"})
    assert "stopped during the call" in content, content
    for i in range(3):
        fake.enqueue(Reply(tool_calls=[{"id": "q%d" % i, "name": "quick",
                                        "arguments": "{}"}]))
        ask_fake(m, fake, "c", "go")

    def settled():
        kids = daemon_children(m.pid)
        # One shepherd: the server started again by the turn's next
        # request.
        return len(kids) == 1 and not proc_gone(kids[0])
    wait_for(settled, timeout=10, message="only the running server's "
             "shepherd is a child: %r" % daemon_children(m.pid))


@pytest.mark.xdist_group("timing")
def test_a_server_dropped_from_mcp_json_is_not_started_again(fake, mount,
                                                             tmp_path):
    """A request still waits for one server's start when mcp.json drops
    another: the dropped one is not started afterwards (it would run on,
    listed nowhere, until the unmount)."""
    first, second = tmp_path / "pids1", tmp_path / "pids2"
    m = tmount(mount, tool_timeout="3s")
    s_entry = hostile_entry("silent", first)
    r = put_conf(m, tmp_path, None, raw=json.dumps({"mcpServers": {
        "s": s_entry, "t": hostile_entry("good", second)}}))
    assert r.returncode == 0, r.stderr
    mkconv(m, "c")
    fake.enqueue(Reply(text="fine"))
    prompt(m, "c", "go")
    wait_for(lambda: first.exists() and first.read_text().strip(),
             timeout=15, message="the first server started")
    r = put_conf(m, tmp_path, {"s": s_entry})
    assert r.returncode == 0, r.stderr
    assert "mcp t" not in tstatus(m)
    assert reply(m, "c", timeout=20).strip() == "fine"
    assert not second.exists(), "the dropped server was started"


@pytest.mark.xdist_group("timing")
def test_cancel_while_a_server_starts(fake, mount, tmp_path):
    """The answer is cancelled while its request waits for a server's
    start (it does not answer initialize): the turn ends at once, not at
    tool_timeout, and the conversation goes on."""
    pids = tmp_path / "pids"
    m = mount_with(mount, tmp_path, {"s": hostile_entry("silent", pids)},
                   tool_timeout="20s")
    mkconv(m, "c")
    prompt(m, "c", "go")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout=15,
             message="the server started")
    t0 = time.monotonic()
    write_text(cdir(m, "c") / ".ctl", "cancel\n")
    r = sh(m, "cat c/.reply", timeout=30)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 3, "cancel waited for the server's start"
    wait_for(lambda: "busy" not in read_text(cdir(m, "c") / ".status"),
             timeout=5, message="the conversation idle again")
    # The half-started server is gone; no delay holds its next start.
    wait_for(lambda: proc_gone(int(pids.read_text().split()[0])), timeout=5,
             message="the server given up is killed")
    assert "mcp s: down: its start was given up (cancelled) (restarted " \
        "on next use)" in tstatus(m), tstatus(m)

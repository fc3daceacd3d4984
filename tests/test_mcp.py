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
    m = mount_with(mount, tmp_path, {"everything": everything_entry()},
                   tool_timeout="2s")
    mkconv(m, "c")
    t0 = time.monotonic()
    content, _ = call(m, fake, "everything__trigger-long-running-operation",
                      {"duration": 30, "steps": 3})
    took = time.monotonic() - t0
    assert content == ("error: everything__trigger-long-running-operation "
                       "did not finish within 2000 ms and was cancelled"), \
        content
    assert took < 15, took
    # The server answered its ping: still the same process, still ready.
    content, _ = call(m, fake, "everything__echo", {"message": "again"},
                      call_id="call_2")
    assert content == "Echo: again", content
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

"""Tool calls at the edges: a tool that was not offered never runs, a tool
starts with only descriptors 0-2, big arguments go on stdin only, calls
beyond the per-reply limit are answered with an error, and a call without a
name is a protocol failure (never an empty answer).

Every filesystem access has a timeout (conftest/conv_helpers helpers)."""

import errno
import json

import pytest

from conftest import write_text
from conv_helpers import (chat_bodies, history, mkconv, cdir, prompt,
                          reply_errno, status, stream_text)
from fake_lms import Reply
from test_tools import (QUICK_TOOL, add_tool, ask_fake, assert_still_serving,
                        check_history_json, failed_mark, functions_of,
                        one_call, status_lines, stream_lines, tmount)

# The limits lmsfs documents (README "tools/", toolrun.h).
MAX_CALLS = 32
ENV_ARG_MAX = 4096
ENV_ARGS_MAX = 64 * 1024

MARKER_TOOL = """#!/bin/sh
# @description Leaves a marker file
touch %s
echo ran
"""

NOT_OFFERED = ("error: the tool 'marker' is not available in this "
               "conversation (it was not offered in this request)")


# ------------------------------------------- only what was offered runs

OTHER_FN = {"type": "function",
            "function": {"name": "other", "description": "Says ok",
                         "parameters": {"type": "object",
                                        "properties": {}}}}


@pytest.mark.parametrize("how", ["tools_false", "tools_list", "skipped",
                                 "params_tools"])
def test_a_tool_not_offered_never_runs(fake, mount, tmp_path, how):
    """lmsfs_tools false or a list, a tool tools/.status skips, and
    params.json's own "tools": a call to a tool the request did not offer
    is answered with an error and the tool never starts."""
    m = tmount(mount)
    marker = tmp_path / "ran"
    add_tool(m, tmp_path, "other", QUICK_TOOL)
    c = mkconv(m, "c")
    if how == "skipped":
        # Executable, but its header is malformed: skipped, not offered.
        add_tool(m, tmp_path, "marker", "#!/bin/sh\n"
                 "# @param x nosuchtype required X\ntouch %s\n" % marker)
        assert status_lines(m)["marker"][0] == "skipped", status_lines(m)
    else:
        add_tool(m, tmp_path, "marker", MARKER_TOOL % marker)
        params = {"tools_false": {"lmsfs_tools": False},
                  "tools_list": {"lmsfs_tools": ["other"]},
                  "params_tools": {"tools": [OTHER_FN]}}[how]
        write_text(c / "params.json", json.dumps(params))

    content = one_call(m, fake, "marker")
    first = chat_bodies(fake)[-2]
    assert "marker" not in functions_of(first), first.get("tools")
    if how == "tools_false":
        assert "tools" not in first and "functions" not in first, first
    assert content == NOT_OFFERED, content
    assert failed_mark(m, "marker") == content
    assert not marker.exists(), "a tool that was not offered ran"

    # The same call runs once the tool is offered: the marker would have
    # shown a run above.
    if how == "skipped":
        add_tool(m, tmp_path, "marker", MARKER_TOOL % marker)
    else:
        write_text(c / "params.json", json.dumps({}))
    assert one_call(m, fake, "marker", call_id="call_2") == "ran\n"
    assert marker.exists()
    assert_still_serving(m, fake)


# ------------------------------------------------- descriptors 0-2 only

FD_TOOL = """#!/usr/bin/env python3
# @description Lists its open file descriptors
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except OSError:
        pass  # the descriptor listdir itself used, closed by now
print(json.dumps(fds, sort_keys=True))
"""


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_tool_starts_with_only_stdio(fake, mount, tmp_path, stream):
    m = tmount(mount)
    add_tool(m, tmp_path, "fds", FD_TOOL)
    c = mkconv(m, "c")
    if not stream:
        write_text(c / "params.json", json.dumps({"stream": False}))
    # A first turn: libcurl has its connections and socket pair by now.
    ask_fake(m, fake, "c", "warm up")
    fds = json.loads(one_call(m, fake, "fds"))
    assert sorted(fds) == ["0", "1", "2"], \
        "the tool inherited the daemon's descriptors: %s" % fds
    assert all(v.startswith("pipe:") for v in fds.values()), fds


# ------------------------------------------- big arguments: stdin only

ARGS_TOOL = """#!/usr/bin/env python3
# @description Reports what arrived on stdin and in the environment
import json, os, sys
args = json.load(sys.stdin)
env = {k[len("LMSFS_ARG_"):]: v for k, v in os.environ.items()
       if k.startswith("LMSFS_ARG_")}
print(json.dumps({"stdin": {k: len(str(v)) for k, v in args.items()},
                  "env": {k: len(v) for k, v in env.items()},
                  "env_ok": all(str(args[k]) == v or k == "n"
                                for k, v in env.items())}))
"""


def test_big_arguments_reach_the_tool_on_stdin(fake, mount, tmp_path):
    """A string over 128 KiB once failed with E2BIG (it went into the
    environment): now every argument is on stdin, and only scalars of at
    most 4 KiB (64 KiB in all) are in LMSFS_ARG_*."""
    m = tmount(mount)
    add_tool(m, tmp_path, "args", ARGS_TOOL)
    big = "b" * (200 << 10)
    args = {"big": big, "edge": "e" * ENV_ARG_MAX,
            "over": "o" * (ENV_ARG_MAX + 1), "small": "hello", "n": 3}
    content = one_call(m, fake, "args", arguments=args)
    assert not content.startswith("error"), content[:300]
    got = json.loads(content)
    assert got["stdin"] == {"big": len(big), "edge": ENV_ARG_MAX,
                            "over": ENV_ARG_MAX + 1, "small": 5, "n": 1}, got
    assert got["env"] == {"edge": ENV_ARG_MAX, "small": 5, "n": 1}, got
    assert got["env_ok"], got
    lines = stream_lines(m)
    assert [ln for ln in lines if ln.startswith("[lmsfs] tool args done: ")]

    # Many values that each fit: the environment stops at 64 KiB in all,
    # the rest are on stdin only.
    many = {"a%02d" % i: "v" * 4000 for i in range(40)}
    content = one_call(m, fake, "args", arguments=many, call_id="call_2")
    got = json.loads(content)
    assert len(got["stdin"]) == 40, got["stdin"]
    assert 0 < len(got["env"]) < 40, got["env"]
    assert sum(got["env"].values()) <= ENV_ARGS_MAX, got["env"]
    assert got["env_ok"], got
    assert_still_serving(m, fake)


# ------------------------------------------- many calls in one reply

COUNT_TOOL = """#!/bin/sh
# @description Counts its calls
echo "$LMSFS_TOOL_CALL_ID" >> %s
echo counted
"""


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_calls_beyond_the_limit_are_answered_with_an_error(fake, mount,
                                                           tmp_path, stream):
    m = tmount(mount)
    log = tmp_path / "calls"
    add_tool(m, tmp_path, "count", COUNT_TOOL % log)
    c = mkconv(m, "c")
    if not stream:
        write_text(c / "params.json", json.dumps({"stream": False}))
    n = MAX_CALLS + 8
    ids = ["call_%02d" % i for i in range(n)]
    fake.enqueue(Reply(tool_calls=[{"id": i, "name": "count",
                                    "arguments": {}} for i in ids]))
    out, bodies = ask_fake(m, fake, "c", "many", timeout=60)
    assert out.strip() == "Echo: many", out
    assert len(bodies) == 2, len(bodies)
    msgs = bodies[1]["messages"]
    calls = [x for x in msgs if x["role"] == "assistant" and
             x.get("tool_calls")]
    assert len(calls) == 1 and [t["id"] for t in calls[0]["tool_calls"]] \
        == ids, calls
    results = [x for x in msgs if x["role"] == "tool"]
    assert [r["tool_call_id"] for r in results] == ids
    assert all(r["content"] == "counted\n" for r in results[:MAX_CALLS]), \
        results[:MAX_CALLS]
    for r in results[MAX_CALLS:]:
        assert r["content"].startswith(
            "error: not run: at most %d tool calls of one reply run"
            % MAX_CALLS), r
    # Exactly the first 32 ran, in order.
    assert log.read_text().split() == ids[:MAX_CALLS]
    lines = stream_lines(m)
    assert len([ln for ln in lines
                if ln.startswith("[lmsfs] tool count done: ")]) == MAX_CALLS
    assert len([ln for ln in lines if ln.startswith(
        "[lmsfs] tool count failed: error: not run: ")]) == n - MAX_CALLS
    hist = check_history_json(m)
    assert [h["role"] for h in hist] == (["user", "assistant"] +
                                         ["tool"] * n + ["assistant"])
    assert status(m, "c")["error"] is None


def test_more_calls_than_a_reply_may_hold_is_a_protocol_failure(
        fake, mount, tmp_path):
    """The documented bound on calls in one reply (128): beyond it the
    answer fails as protocol and nothing runs."""
    m = tmount(mount)
    log = tmp_path / "calls"
    add_tool(m, tmp_path, "count", COUNT_TOOL % log)
    mkconv(m, "c")
    fake.enqueue(Reply(tool_calls=[{"id": "call_%d" % i, "name": "count",
                                    "arguments": {}} for i in range(129)]))
    prompt(m, "c", "too many")
    assert reply_errno(m, "c") == errno.EPROTO
    assert status(m, "c")["error"]["class"] == "protocol"
    assert not log.exists()
    assert_still_serving(m, fake)


# ---------------------------------------------- calls without a name

NAMELESS = {
    "null_name": lambda: Reply(tool_calls=[
        {"id": "call_1", "name": None, "arguments": {}}]),
    "empty_name": lambda: Reply(tool_calls=[
        {"id": "call_1", "name": "", "arguments": {}}]),
    "second_nameless": lambda: Reply(tool_calls=[
        {"id": "call_1", "name": "marker", "arguments": {}},
        {"id": "call_2", "name": None, "arguments": {}}]),
    "finish_without_calls": lambda: Reply(text="", finish_reason="tool_calls"),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("case", sorted(NAMELESS))
def test_a_call_without_a_name_is_a_protocol_failure(fake, mount, tmp_path,
                                                     case, stream):
    m = tmount(mount)
    marker = tmp_path / "ran"
    add_tool(m, tmp_path, "marker", MARKER_TOOL % marker)
    c = mkconv(m, "c")
    if not stream:
        write_text(c / "params.json", json.dumps({"stream": False}))
    fake.enqueue(NAMELESS[case]())
    before = len(fake.chat_requests())
    prompt(m, "c", "go")
    assert reply_errno(m, "c") == errno.EPROTO, \
        "stored as an answer: %s" % history(m, "c")
    st = status(m, "c")
    assert st["error"]["class"] == "protocol", st
    assert len(fake.chat_requests()) == before + 1
    assert not marker.exists(), "a call of a broken reply ran"
    h = history(m, "c")
    assert [x["role"] for x in h] == ["user", "assistant"], h
    assert h[-1]["lmsfs_status"].startswith("protocol: "), h[-1]
    assert "tool_calls" not in h[-1], h[-1]
    s = stream_text(m, "c")
    assert "[lmsfs] error protocol: " in s, s
    assert "[lmsfs] tool " not in s, s
    # The conversation goes on.
    out, _ = ask_fake(m, fake, "c", "and now")
    assert out.strip() == "Echo: and now"

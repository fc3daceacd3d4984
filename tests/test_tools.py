"""Tools: discovery (tools/NAME, NAME.json, script headers), the request
schemas, the tool-call loop (streamed, non-streamed, legacy functions), the
limits around running a tool, and the example tools in examples/tools/.

Every filesystem access has a timeout (conftest/conv_helpers helpers), so a
broken daemon fails a test instead of hanging the suite."""

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (REPO, SUMMARY_LINE, read_text, run, wait_for,
                      write_text)
from conv_helpers import (LLAMA, chat_bodies, cdir, history_text, mkconv,
                          opts, prompt, reply, sh, status, stream_text)
from fake_lms import Reply

EXAMPLES = REPO / "examples" / "tools"


# ----------------------------------------------------------------- helpers

def tmount(mount, env=None, **kw):
    """A mount on the fake server with default_model set."""
    kw.setdefault("default_model", LLAMA)
    return mount(args=opts(**kw), env=env)


def add_tool(m, tmp_path, name, text, mode=0o755):
    """Writes TEXT to a scratch file with MODE and `cp`s it to
    MOUNT/tools/NAME (cp keeps the mode bits)."""
    src_dir = tmp_path / "toolsrc"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / "f"
    if src.exists():
        src.unlink()
    src.write_text(text)
    os.chmod(src, mode)
    r = run(["cp", str(src), str(m.path / "tools" / name)])
    assert r.returncode == 0, "cp to tools/%s failed: %s" % (name, r.stderr)


def add_json(m, tmp_path, name, obj):
    """MOUNT/tools/NAME.json with obj (a dict, or raw text)."""
    add_tool(m, tmp_path, name + ".json",
             obj if isinstance(obj, str) else json.dumps(obj), mode=0o644)


def tools_status(m):
    return read_text(m.path / "tools" / ".status")


def status_lines(m):
    """{name: (verdict, rest)} from tools/.status."""
    res = {}
    for ln in tools_status(m).splitlines():
        mo = re.match(r"^(ok|skipped) (.+?): ?(.*)$", ln)
        if mo:
            res[mo.group(2)] = (mo.group(1), mo.group(3))
    return res


def functions_of(body):
    """{name: function object} of the request's "tools" (checks the
    wrapper shape on the way)."""
    out = {}
    for t in body.get("tools") or []:
        assert set(t) == {"type", "function"}, t
        assert t["type"] == "function", t
        out[t["function"]["name"]] = t["function"]
    return out


def ask_fake(m, fake, conv, text, timeout=15):
    """Prompts, waits for the answer, returns (reply text, request bodies
    of this turn)."""
    before = len(fake.chat_requests())
    if not cdir(m, conv).exists():
        mkconv(m, conv)
    prompt(m, conv, text)
    out = reply(m, conv, timeout=timeout)
    return out, chat_bodies(fake)[before:]


def assert_still_serving(m, fake, conv="c"):
    """The daemon is alive and the next prompt gets its answer."""
    assert m.pid is not None, "the daemon died:\n" + m.log()
    out, _ = ask_fake(m, fake, conv, "are you still there")
    assert out.strip() == "Echo: are you still there"


def stream_lines(m, conv="c"):
    return stream_text(m, conv).splitlines()


def check_history_json(m, conv="c"):
    """Every line of messages.jsonl is one valid JSON object."""
    text = history_text(m, conv)
    assert text.endswith("\n"), repr(text[-200:])
    msgs = []
    for i, ln in enumerate(text.split("\n")[:-1]):
        try:
            obj = json.loads(ln)
        except ValueError as e:
            raise AssertionError("messages.jsonl line %d is not JSON (%s): %r"
                                 % (i + 1, e, ln[:300]))
        assert isinstance(obj, dict), ln
        msgs.append(obj)
    return msgs


def proc_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# Echoes its stdin (the arguments JSON) on the first line, then what it
# received in its environment.
ECHO_TOOL = r"""#!/bin/sh
# @description %(name)s: echoes its input
# @param x string required Some text
# @param n integer optional Some number
cat
printf '\nx=%%s\nn=%%s\nid=%%s\nname=%%s\nconv=%%s\n' "$LMSFS_ARG_x" "$LMSFS_ARG_n" "$LMSFS_TOOL_CALL_ID" "$LMSFS_TOOL_NAME" "$LMSFS_CONVERSATION"
"""

QUICK_TOOL = "#!/bin/sh\n# @description Says ok\necho ok\n"


def echo_tool(name):
    return ECHO_TOOL % {"name": name}


def echo_output(name, args, call_id, conv="c"):
    """What ECHO_TOOL prints, minus its first line (stdin)."""
    return "\nx=%s\nn=%s\nid=%s\nname=%s\nconv=%s\n" % (
        args.get("x", ""), args.get("n", ""), call_id, name, conv)


def check_echo_content(content, name, args, call_id, conv="c"):
    first, _, rest = content.partition("\n")
    assert json.loads(first) == args, content
    assert "\n" + rest == echo_output(name, args, call_id, conv), content


# ------------------------------------------------------ discovery, schemas

WEATHER = """#!/bin/sh
# @description Weather forecast for a city
# @param city string required City name, e.g. Paris
# @param days integer optional How many days ahead
# @param lat number optional Latitude in degrees
# @param metric boolean optional Use metric units
# @param unit enum:celsius|fahrenheit|kelvin required Temperature unit
echo sunny
"""

WEATHER_FN = {
    "name": "weather",
    "description": "Weather forecast for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "days": {"type": "integer", "description": "How many days ahead"},
            "lat": {"type": "number", "description": "Latitude in degrees"},
            "metric": {"type": "boolean", "description": "Use metric units"},
            "unit": {"type": "string",
                     "enum": ["celsius", "fahrenheit", "kelvin"],
                     "description": "Temperature unit"},
        },
        "required": ["city", "unit"],
    },
}

LOOKUP_FN = {
    "name": "lookup",
    "description": "Look a key up in the company directory",
    "parameters": {
        "type": "object",
        "properties": {
            "key": {"type": "string", "minLength": 1},
            "fields": {"type": "array", "items": {"type": "string"}},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        "required": ["key"],
        "additionalProperties": False,
    },
}

WRAPPED_FN = {
    "name": "wrapped",
    "description": "Defined with the {type, function} wrapper",
    "parameters": {"type": "object",
                   "properties": {"q": {"type": "string"}}},
}


def test_declared_schemas_reach_the_server(fake, mount, tmp_path):
    """Must-show (1): a header-described shell tool and .json-described
    tools appear in the request with exactly the declared schemas."""
    m = tmount(mount)
    add_tool(m, tmp_path, "weather", WEATHER)
    # The .json wins over a header in the script.
    add_tool(m, tmp_path, "lookup",
             "#!/bin/sh\n# @description IGNORED header\n"
             "# @param zzz string required ignored\necho x\n")
    add_json(m, tmp_path, "lookup", LOOKUP_FN)
    add_tool(m, tmp_path, "wrapped", "#!/bin/sh\necho w\n")
    add_json(m, tmp_path, "wrapped", {"type": "function",
                                      "function": WRAPPED_FN})
    add_tool(m, tmp_path, "hello", "#!/bin/sh\n# @description Says hi\n"
             "echo hi\n")
    add_tool(m, tmp_path, "bare", "#!/bin/sh\necho bare\n")

    out, bodies = ask_fake(m, fake, "c", "hi there")
    assert out.strip() == "Echo: hi there"
    assert len(bodies) == 1
    body = bodies[0]
    assert functions_of(body) == {
        "weather": WEATHER_FN,
        "lookup": LOOKUP_FN,
        "wrapped": WRAPPED_FN,
        # A header without @param: no "required".
        "hello": {"name": "hello", "description": "Says hi",
                  "parameters": {"type": "object", "properties": {}}},
        # No header, no .json: the generic definition.
        "bare": {"name": "bare", "description": "bare",
                 "parameters": {"type": "object", "properties": {}}},
    }
    assert "functions" not in body
    st = status_lines(m)
    for n in ("weather", "lookup", "wrapped", "hello", "bare"):
        assert st.get(n, ("?",))[0] == "ok", tools_status(m)


def test_status_reports_skipped_files_and_chmod(fake, mount, tmp_path):
    m = tmount(mount)
    add_tool(m, tmp_path, "good", QUICK_TOOL)
    add_tool(m, tmp_path, "x" * 64, QUICK_TOOL)
    add_tool(m, tmp_path, "Dash-and_under9", QUICK_TOOL)
    add_tool(m, tmp_path, "noexec", QUICK_TOOL, mode=0o644)
    add_tool(m, tmp_path, "bad.name", QUICK_TOOL)
    add_tool(m, tmp_path, "y" * 65, QUICK_TOOL)
    add_tool(m, tmp_path, "sp ace", QUICK_TOOL)
    add_tool(m, tmp_path, "badtype", "#!/bin/sh\n# @description d\n"
             "# @param a strnig required A\necho\n")
    add_tool(m, tmp_path, "badflag", "#!/bin/sh\n# @description d\n"
             "# @param a string maybe A\necho\n")
    add_tool(m, tmp_path, "wrongname", QUICK_TOOL)
    add_json(m, tmp_path, "wrongname", {"name": "other", "description": "d",
                                        "parameters": {"type": "object"}})
    add_tool(m, tmp_path, "badparams", QUICK_TOOL)
    add_json(m, tmp_path, "badparams", {"name": "badparams",
                                        "parameters": "a string"})
    add_tool(m, tmp_path, "notjson", QUICK_TOOL)
    add_json(m, tmp_path, "notjson", "{not json")

    st = status_lines(m)
    text = tools_status(m)
    for n in ("good", "x" * 64, "Dash-and_under9"):
        assert st.get(n, ("?",))[0] == "ok", "%s not ok:\n%s" % (n, text)
    for n in ("noexec", "bad.name", "y" * 65, "sp ace", "badtype", "badflag",
              "wrongname", "badparams", "notjson"):
        assert n in st, "%s not listed in .status:\n%s" % (n, text)
        assert st[n][0] == "skipped", "%s: %s\n%s" % (n, st[n], text)
        assert st[n][1].strip(), "no reason given for %s:\n%s" % (n, text)
    assert "execut" in st["noexec"][1], text
    assert "name" in st["bad.name"][1], text

    _, bodies = ask_fake(m, fake, "c", "one")
    assert sorted(functions_of(bodies[0])) == sorted(
        ["good", "x" * 64, "Dash-and_under9"])

    # chmod +x through the mount makes it count.
    r = run(["chmod", "+x", str(m.path / "tools" / "noexec")])
    assert r.returncode == 0, r.stderr
    assert os.stat(m.path / "tools" / "noexec").st_mode & 0o111
    assert status_lines(m)["noexec"][0] == "ok", tools_status(m)
    _, bodies = ask_fake(m, fake, "c", "two")
    assert "noexec" in functions_of(bodies[0])
    # cp kept the mode bits in the state dir too.
    assert os.stat(m.state / "tools" / "good").st_mode & 0o777 == 0o755


def test_params_json_narrows_tools_and_lmsfs_keys_stay_home(fake, mount,
                                                            tmp_path):
    m = tmount(mount)
    for n in ("a", "b", "c"):
        add_tool(m, tmp_path, n, QUICK_TOOL)
    mkconv(m, "c")
    write_text(cdir(m, "c") / "params.json", json.dumps(
        {"lmsfs_tools": ["a", "c"], "temperature": 0.25,
         "lmsfs_whatever": 1}))
    _, bodies = ask_fake(m, fake, "c", "narrow")
    body = bodies[0]
    assert sorted(functions_of(body)) == ["a", "c"]
    assert body.get("temperature") == 0.25
    assert not [k for k in body if k.startswith("lmsfs")], sorted(body)

    write_text(cdir(m, "c") / "params.json", json.dumps(
        {"lmsfs_tools": False}))
    _, bodies = ask_fake(m, fake, "c", "none")
    body = bodies[0]
    assert "tools" not in body and "functions" not in body, sorted(body)
    assert not [k for k in body if k.startswith("lmsfs")], sorted(body)


def test_no_tools_no_tools_key(fake, mount):
    m = tmount(mount)
    _, bodies = ask_fake(m, fake, "c", "plain")
    assert "tools" not in bodies[0] and "functions" not in bodies[0]


# ------------------------------------------------------------ the loop

ARGS_A = {"x": "hello, \"world\" {}", "n": 3}
ARGS_B = {"x": "second call \u00e9\u00e8 \u2603"}


def two_tools(m, tmp_path):
    add_tool(m, tmp_path, "alpha", echo_tool("alpha"))
    add_tool(m, tmp_path, "beta", echo_tool("beta"))


def check_two_call_turn(m, fake, bodies, out, final):
    """The whole tool round for calls call_A1 (alpha) + call_B2 (beta)."""
    assert out.strip() == final
    assert len(bodies) == 2, [b["messages"][-1] for b in bodies]
    first, second = bodies
    assert sorted(functions_of(first)) == ["alpha", "beta"]
    msgs = second["messages"]
    assert msgs[:-3] == first["messages"], "the second request must extend " \
        "the first one"
    asst, t1, t2 = msgs[-3:]
    assert asst["role"] == "assistant"
    calls = asst["tool_calls"]
    assert [c["id"] for c in calls] == ["call_A1", "call_B2"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert [c["function"]["name"] for c in calls] == ["alpha", "beta"]
    assert json.loads(calls[0]["function"]["arguments"]) == ARGS_A
    assert json.loads(calls[1]["function"]["arguments"]) == ARGS_B
    assert set(t1) == {"role", "tool_call_id", "content"}, t1
    assert (t1["role"], t1["tool_call_id"]) == ("tool", "call_A1")
    assert (t2["role"], t2["tool_call_id"]) == ("tool", "call_B2")
    check_echo_content(t1["content"], "alpha", ARGS_A, "call_A1")
    check_echo_content(t2["content"], "beta", ARGS_B, "call_B2")

    hist = check_history_json(m)
    assert [h["role"] for h in hist] == ["user", "assistant", "tool", "tool",
                                         "assistant"], hist
    assert [c["id"] for c in hist[1]["tool_calls"]] == ["call_A1", "call_B2"]
    assert hist[2] == t1 and hist[3] == t2
    assert hist[4]["content"] == final
    assert not hist[4].get("tool_calls")

    lines = stream_lines(m)
    marks = [ln for ln in lines if ln.startswith("[lmsfs] tool ")]
    assert len(marks) == 4, lines
    assert marks[0].startswith("[lmsfs] tool alpha {"), marks
    assert json.loads(marks[0][len("[lmsfs] tool alpha "):]) == ARGS_A
    assert marks[2].startswith("[lmsfs] tool beta {"), marks
    for mark, name, content in ((marks[1], "alpha", t1["content"]),
                                (marks[3], "beta", t2["content"])):
        mo = re.match(r"^\[lmsfs\] tool %s done: exit 0, (\d+) bytes, "
                      r"(\d+) ms$" % name, mark)
        assert mo, mark
        assert int(mo.group(1)) == len(content.encode()), (mark, content)
    # The final answer streams after the tool lines.
    assert final in "\n".join(lines[lines.index(marks[3]) + 1:]), lines


def enqueue_two_calls(fake, final, **kw):
    fake.enqueue(Reply(tool_calls=[
        {"id": "call_A1", "name": "alpha", "arguments": ARGS_A},
        {"id": "call_B2", "name": "beta", "arguments": ARGS_B}], **kw),
        Reply(text=final))


def test_two_interleaved_streamed_calls(fake, mount, tmp_path):
    """Must-show (2)."""
    m = tmount(mount)
    two_tools(m, tmp_path)
    final = "Both tools answered, thank you."
    enqueue_two_calls(fake, final, interleave=True)
    out, bodies = ask_fake(m, fake, "c", "use both tools")
    assert all(b.get("stream") is True for b in bodies)
    check_two_call_turn(m, fake, bodies, out, final)
    assert status(m, "c")["state"] == "idle"
    assert_still_serving(m, fake)


def test_two_calls_not_streamed(fake, mount, tmp_path):
    """Must-show (3), first half: -o stream=false."""
    m = tmount(mount, stream=False)
    two_tools(m, tmp_path)
    final = "Non-streamed final answer."
    enqueue_two_calls(fake, final)
    out, bodies = ask_fake(m, fake, "c", "use both tools")
    assert all(not b.get("stream") for b in bodies)
    check_two_call_turn(m, fake, bodies, out, final)
    assert_still_serving(m, fake)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nostream"])
def test_legacy_functions_api(fake, mount, tmp_path, stream):
    """Must-show (3), second half: -o tool_api=functions."""
    m = tmount(mount, tool_api="functions", stream=stream)
    two_tools(m, tmp_path)
    final = "Legacy final answer."
    fake.enqueue(Reply(tool_calls=[{"id": "call_A1", "name": "alpha",
                                    "arguments": ARGS_A}]),
                 Reply(text=final))
    out, bodies = ask_fake(m, fake, "c", "use the legacy api")
    assert out.strip() == final
    assert len(bodies) == 2
    first, second = bodies
    assert "tools" not in first
    fns = {f["name"]: f for f in first["functions"]}
    assert sorted(fns) == ["alpha", "beta"]
    assert set(fns["alpha"]) == {"name", "description", "parameters"}
    assert fns["alpha"]["parameters"]["required"] == ["x"]
    msgs = second["messages"]
    assert msgs[:-2] == first["messages"]
    asst, res = msgs[-2:]
    assert asst["role"] == "assistant"
    assert asst["function_call"]["name"] == "alpha"
    assert json.loads(asst["function_call"]["arguments"]) == ARGS_A
    assert not asst.get("tool_calls")
    assert res["role"] == "function" and res["name"] == "alpha", res
    assert "tool_call_id" not in res
    first_line = res["content"].partition("\n")[0]
    assert json.loads(first_line) == ARGS_A

    hist = check_history_json(m)
    assert [h["role"] for h in hist] == ["user", "assistant", "function",
                                         "assistant"], hist
    assert hist[2] == res
    assert re.search(r"^\[lmsfs\] tool alpha done: exit 0, \d+ bytes, \d+ ms$",
                     stream_text(m, "c"), re.M), stream_text(m, "c")
    assert_still_serving(m, fake)


def test_tool_environment_cwd_and_process_group(fake, mount, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    m = tmount(mount, env={"SECRET_TOKEN": "hunter2", "HOME": home,
                           "LANG": "C.UTF-8", "TZ": "Europe/Paris",
                           "LMSFS_TOOLS_NOTES_DIR": "/srv/notes"})
    add_tool(m, tmp_path, "envdump", r"""#!/bin/sh
printf 'stdin=%s\n' "$(cat)"
printf 'cwd=%s\n' "$(pwd -P)"
printf 'pid=%s\n' "$$"
printf 'pgid=%s\n' "$(cut -d' ' -f5 /proc/$$/stat)"
tr '\0' '\n' < /proc/$$/environ | sed 's/^/env:/'
""")
    args = {"s": "a b  c", "n": 2.5, "i": 7, "yes": True, "no": False,
            "obj": {"k": 1}, "arr": [1, 2]}
    fake.enqueue(Reply(tool_calls=[{"id": "call_env1", "name": "envdump",
                                    "arguments": args}]))
    _, bodies = ask_fake(m, fake, "c", "dump")
    content = bodies[-1]["messages"][-1]["content"]
    kv = {}
    env = {}
    for ln in content.splitlines():
        if ln.startswith("env:"):
            k, _, v = ln[4:].partition("=")
            env[k] = v
        else:
            k, _, v = ln.partition("=")
            kv[k] = v
    assert json.loads(kv["stdin"]) == args
    assert kv["cwd"] == os.path.realpath(m.state / "tools")
    assert kv["pid"] == kv["pgid"], "the tool is not in its own process " \
        "group: %s" % content
    assert env.get("LMSFS_TOOL_CALL_ID") == "call_env1"
    assert env.get("LMSFS_CONVERSATION") == "c"
    assert env.get("LMSFS_TOOL_NAME") == "envdump"
    assert env.get("LMSFS_ARG_s") == "a b  c"
    assert float(env.get("LMSFS_ARG_n")) == 2.5
    assert env.get("LMSFS_ARG_i") == "7"
    assert env.get("LMSFS_ARG_yes") == "true"
    assert env.get("LMSFS_ARG_no") == "false"
    assert "LMSFS_ARG_obj" not in env and "LMSFS_ARG_arr" not in env, env
    assert env.get("HOME") == str(home)
    assert env.get("LANG") == "C.UTF-8" and env.get("TZ") == "Europe/Paris"
    assert env.get("PATH")
    # LMSFS_TOOLS_* is how users hand settings to their tools.
    assert env.get("LMSFS_TOOLS_NOTES_DIR") == "/srv/notes"
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "LMSFS_TOOL_CALL_ID",
               "LMSFS_CONVERSATION", "LMSFS_TOOL_NAME", "LMSFS_TOOLS_NOTES_DIR"}
    extra = sorted(k for k in env
                   if k not in allowed and not k.startswith("LMSFS_ARG_"))
    assert not extra, "unexpected variables in the tool's environment: %s" \
        % extra


# ------------------------------------------------------ failures, limits

def one_call(m, fake, name, arguments="{}", call_id="call_1", timeout=15):
    """The model calls NAME once, then gets the default echo reply. Returns
    the tool message content sent back to the model."""
    fake.enqueue(Reply(tool_calls=[{"id": call_id, "name": name,
                                    "arguments": arguments}]))
    out, bodies = ask_fake(m, fake, "c", "go", timeout=timeout)
    assert out.strip() == "Echo: go", out
    assert len(bodies) == 2, [b["messages"][-1] for b in bodies]
    last = bodies[1]["messages"][-1]
    assert last["role"] == "tool" and last["tool_call_id"] == call_id, last
    hist = check_history_json(m)
    assert [h["role"] for h in hist[-4:]] == ["user", "assistant", "tool",
                                              "assistant"]
    return last["content"]


def failed_mark(m, name):
    """The stream's "[lmsfs] tool NAME failed: ..." line (asserts there is
    exactly one, after a start line)."""
    lines = stream_lines(m)
    start = [ln for ln in lines if ln.startswith("[lmsfs] tool %s " % name)
             and " failed: " not in ln and " done: " not in ln]
    failed = [ln for ln in lines
              if ln.startswith("[lmsfs] tool %s failed: " % name)]
    assert len(start) == 1 and len(failed) == 1, lines
    assert lines.index(start[0]) < lines.index(failed[0])
    return failed[0][len("[lmsfs] tool %s failed: " % name):]


def test_tool_exits_non_zero(fake, mount, tmp_path):
    m = tmount(mount)
    add_tool(m, tmp_path, "fails", "#!/bin/sh\necho 'half done'\n"
             "echo 'stderr-marker-8731' >&2\nexit 1\n")
    content = one_call(m, fake, "fails")
    assert content.startswith("error: fails exited with status 1"), content
    assert "half done" in content
    assert "stderr-marker-8731" not in content
    assert failed_mark(m, "fails").startswith(
        "error: fails exited with status 1")
    wait_for(lambda: "stderr-marker-8731" in m.log(), timeout=5,
             message="the tool's stderr in the daemon log")
    assert_still_serving(m, fake)


def test_tool_timeout_kills_the_process_group(fake, mount, tmp_path):
    m = tmount(mount, tool_timeout="1s")
    pids = tmp_path / "pids"
    pids.mkdir()
    # Ignores TERM (and so does its child): only KILL ends them. The child
    # keeps the stdout pipe open.
    add_tool(m, tmp_path, "hang", """#!/bin/sh
trap '' TERM
echo $$ > %(d)s/parent
sleep 1000 &
echo $! > %(d)s/child
echo started
wait
sleep 1000
""" % {"d": pids})
    t0 = time.monotonic()
    content = one_call(m, fake, "hang", timeout=20)
    took = time.monotonic() - t0
    assert content.startswith(
        "error: hang did not finish within 1000 ms and was killed"), content
    assert failed_mark(m, "hang").startswith(
        "error: hang did not finish within 1000 ms")
    parent = int((pids / "parent").read_text())
    child = int((pids / "child").read_text())
    wait_for(lambda: proc_gone(parent) and proc_gone(child), timeout=5,
             message="the tool (%d) and its child (%d) killed"
             % (parent, child))
    assert took < 10, took
    assert_still_serving(m, fake)


@pytest.mark.parametrize("cap", [None, "1K"], ids=["default", "1K"])
def test_huge_output_is_capped(fake, mount, tmp_path, cap):
    kw = {} if cap is None else {"tool_output_max": cap}
    limit = 65536 if cap is None else 1024
    m = tmount(mount, **kw)
    add_tool(m, tmp_path, "big",
             "#!/bin/sh\nhead -c 10485760 /dev/zero | tr '\\0' x\n")
    content = one_call(m, fake, "big", timeout=30)
    marker = "[output truncated at %d bytes]" % limit
    assert content.startswith("x" * limit), content[:100]
    assert content.rstrip().endswith(marker), content[-200:]
    assert len(content) <= limit + len(marker) + 8, len(content)
    assert content.count("x") == limit
    lines = stream_lines(m)
    done = [ln for ln in lines if ln.startswith("[lmsfs] tool big done: ")]
    assert len(done) == 1, lines
    assert re.match(r"^\[lmsfs\] tool big done: exit 0, %d bytes.*, \d+ ms$"
                    % limit, done[0]), done[0]
    assert_still_serving(m, fake)


@pytest.mark.parametrize("name", ["nosuch", "../x", "a;touch PWN"],
                         ids=["unknown", "dotdot", "shellish"])
def test_unknown_or_bad_tool_names(fake, mount, tmp_path, name):
    m = tmount(mount)
    add_tool(m, tmp_path, "real", QUICK_TOOL)
    marker = tmp_path / "ran"
    # state_dir/x is what tools/../x would reach.
    (m.state / "x").write_text("#!/bin/sh\ntouch %s\necho escaped\n" % marker)
    os.chmod(m.state / "x", 0o755)
    pwn = tmp_path / "PWN"
    name = name.replace("PWN", str(pwn))
    content = one_call(m, fake, name)
    # lmsfs quotes at most 80 bytes of the name (tmp_path is longer under
    # pytest-xdist).
    assert content == "error: there is no tool named '%s'" % name[:80], \
        content
    assert failed_mark(m, name) == content
    assert not marker.exists() and not pwn.exists()
    assert_still_serving(m, fake)


def test_non_executable_tool(fake, mount, tmp_path):
    m = tmount(mount)
    marker = tmp_path / "ran"
    add_tool(m, tmp_path, "plain", "#!/bin/sh\ntouch %s\necho hi\n" % marker,
             mode=0o644)
    content = one_call(m, fake, "plain")
    assert content.startswith("error: ") and "plain" in content, content
    assert failed_mark(m, "plain") == content
    assert not marker.exists()
    assert_still_serving(m, fake)


@pytest.mark.parametrize("arguments", ['{"x": 1,', '[1, 2]', '"just text"',
                                       "not json at all"],
                         ids=["truncated", "array", "string", "garbage"])
def test_arguments_not_a_json_object(fake, mount, tmp_path, arguments):
    m = tmount(mount)
    marker = tmp_path / "ran"
    add_tool(m, tmp_path, "marker", "#!/bin/sh\ntouch %s\necho hi\n" % marker)
    content = one_call(m, fake, "marker", arguments=arguments)
    assert content.startswith(
        "error: the arguments for marker are not a JSON object: "), content
    assert failed_mark(m, "marker") == content
    assert not marker.exists()
    assert_still_serving(m, fake)


@pytest.mark.parametrize("limit", [None, 2], ids=["default8", "2"])
def test_round_limit(fake, mount, tmp_path, limit):
    kw = {} if limit is None else {"max_tool_rounds": limit}
    m = tmount(mount, **kw)
    n = 8 if limit is None else limit
    add_tool(m, tmp_path, "again", QUICK_TOOL)
    for i in range(n + 1):
        fake.enqueue(Reply(tool_calls=[{"id": "call_r%d" % i, "name": "again",
                                        "arguments": {}}]))
    mkconv(m, "c")
    prompt(m, "c", "loop forever")
    r = sh(m, "cat c/.reply", timeout=30)
    assert r.returncode != 0, "the answer should fail: %r" % r.stdout
    bodies = chat_bodies(fake)
    assert len(bodies) == n + 1
    # Every round but the refused one gave the model its tool's output.
    for i, b in enumerate(bodies[1:]):
        last = b["messages"][-1]
        assert last == {"role": "tool", "tool_call_id": "call_r%d" % i,
                        "content": "ok\n"}, last
    want = ("[lmsfs] error bad_request: the model kept calling tools: "
            "stopped after %d rounds (max_tool_rounds)" % n)
    assert want in stream_lines(m), stream_text(m, "c")
    st = status(m, "c")
    assert st["state"] == "failed", st
    assert "max_tool_rounds" in json.dumps(st["error"]), st
    check_history_json(m)
    assert_still_serving(m, fake)


def test_shell_metacharacters_stay_inert(fake, mount, tmp_path):
    """Must-show (5)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious").write_text("keep me")
    m = tmount(mount, env={"HOME": home})
    p1 = tmp_path / "pwned1"
    p2 = tmp_path / "pwned2"
    evil = ("$(touch %s); rm -rf ~ `touch %s` ; echo \"$HOME\" 'x' \\ | > < "
            "&& * ?\nsecond line" % (p1, p2))
    add_tool(m, tmp_path, "parrot", """#!/bin/sh
# @description Repeats its text
# @param text string required The text
printf '%s' "$LMSFS_ARG_text"
""")
    content = one_call(m, fake, "parrot", arguments={"text": evil})
    assert content == evil
    time.sleep(0.2)
    assert not p1.exists() and not p2.exists()
    assert (home / "precious").read_text() == "keep me"
    assert_still_serving(m, fake)


@pytest.mark.xdist_group("timing")
def test_round_trip_overhead(fake, mount, tmp_path, record_property):
    """Must-show (6): fake -> lmsfs -> tool -> lmsfs -> fake, minus running
    the script by hand. Printed (in the terminal summary), not asserted."""
    m = tmount(mount)
    add_tool(m, tmp_path, "quick", QUICK_TOOL)
    n = 7
    mkconv(m, "c")
    for i in range(n):
        fake.enqueue(Reply(tool_calls=[{"id": "call_q%d" % i, "name": "quick",
                                        "arguments": {}}]),
                     Reply(text="done %d" % i))
        prompt(m, "c", "round %d" % i)
        assert reply(m, "c").strip() == "done %d" % i
    reqs = fake.chat_requests()
    assert len(reqs) == 2 * n
    trips = [reqs[2 * i + 1]["t"] - reqs[2 * i]["t"] for i in range(n)]
    script = str(m.state / "tools" / "quick")
    hand = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run([script], input=b"{}", stdout=subprocess.PIPE,
                       cwd=str(m.state / "tools"), check=True, timeout=10)
        hand.append(time.monotonic() - t0)
    trip, by_hand = statistics.median(trips), statistics.median(hand)
    record_property(SUMMARY_LINE, "[tool round trip] fake->tool->fake "
                    "%.1f ms, script by hand %.1f ms, lmsfs overhead %.1f ms "
                    "(median of %d)" % (trip * 1e3, by_hand * 1e3,
                                        (trip - by_hand) * 1e3, n))


# ------------------------------------------------------------- examples

def example_env(tmp_path, **args):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}
    for k, v in args.items():
        if k.isupper():
            env[k] = str(v)
        else:
            env["LMSFS_ARG_" + k] = str(v)
    return env


def run_example(tmp_path, name, **args):
    plain = {k: v for k, v in args.items() if not k.isupper()}
    return run([str(EXAMPLES / name)], input=json.dumps(plain),
               env=example_env(tmp_path, **args), cwd=str(EXAMPLES),
               timeout=10)


@pytest.fixture
def notes(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("buy milk\ncall mom\n")
    (d / "ideas.txt").write_text("A FUSE filesystem for LLMs\nMore Milk\n")
    return d


@pytest.mark.parametrize("case", [
    ("get_time", {"tz": "UTC"}, 0,
     r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\w+day\)\n$"),
    ("get_time", {}, 0, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\w+day\)\n$"),
    ("get_time", {"tz": "../../etc/passwd"}, 2, r"invalid time zone"),
    ("get_time", {"tz": "Mars/Olympus"}, 2, r"unknown time zone"),
    ("calc", {"expr": "(6*7)+0.5"}, 0, r"^42\.5\n$"),
    ("calc", {"expr": "2^10"}, 0, r"^1024\n$"),
    ("calc", {"expr": "10/3", "scale": 2}, 0, r"^3\.33\n$"),
    ("calc", {"expr": "1; system(\"id\")"}, 2, r"not an arithmetic"),
    ("calc", {"expr": "a+1"}, 2, r"only sqrt"),
    ("wordcount", {"path": "todo.txt", "LMSFS_TOOLS_NOTES_DIR": "NOTES"}, 0,
     r"^lines=2 words=4 bytes=18\n$"),
    ("wordcount", {"path": "../etc/passwd", "LMSFS_TOOLS_NOTES_DIR": "NOTES"}, 2,
     r"relative"),
    ("wordcount", {"path": "missing.txt", "LMSFS_TOOLS_NOTES_DIR": "NOTES"}, 1,
     r"no such file"),
    ("search_notes", {"query": "milk", "LMSFS_TOOLS_NOTES_DIR": "NOTES"}, 0,
     r"(?m)\A(?=.*^\./todo\.txt:1:buy milk$)(?=.*^\./ideas\.txt:2:More Milk$)"),
    ("search_notes", {"query": "milk", "max": 1, "LMSFS_TOOLS_NOTES_DIR": "NOTES"},
     0, r"^\./\w+\.txt:\d:[^\n]*\n$"),
    ("search_notes", {"query": "-e .", "LMSFS_TOOLS_NOTES_DIR": "NOTES"}, 0,
     r"^no match for: -e \.\n$"),
], ids=lambda c: "%s-%s" % (c[0], "-".join("%s" % v for k, v in c[1].items()
                                            if not k.isupper())))
def test_example_tool_directly(tmp_path, notes, case):
    name, args, rc, pattern = case
    args = {k: (str(notes) if v == "NOTES" else v) for k, v in args.items()}
    r = run_example(tmp_path, name, **args)
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert re.search(pattern, r.stdout, re.S), r.stdout


def test_example_notes_default_to_home_notes(tmp_path):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "a.txt").write_text("one two three\n")
    r = run_example(tmp_path, "wordcount", path="a.txt")
    assert r.stdout == "lines=1 words=3 bytes=14\n", (r.stdout, r.stderr)
    r = run_example(tmp_path, "search_notes", query="TWO")
    assert r.stdout == "./a.txt:1:one two three\n", (r.stdout, r.stderr)


# name -> ({param: (type, required)}, ...)
EXAMPLE_PARAMS = {
    "get_time": {"tz": ("string", False)},
    "calc": {"expr": ("string", True), "scale": ("integer", False)},
    "wordcount": {"path": ("string", True)},
    "search_notes": {"query": ("string", True), "max": ("integer", False)},
}


def header_texts(path):
    """(description, {param: description}) as written in the header."""
    desc, params = None, {}
    for ln in Path(path).read_text().splitlines():
        mo = re.match(r"^#\s*@description\s+(.*?)\s*$", ln)
        if mo:
            desc = mo.group(1)
        mo = re.match(r"^#\s*@param\s+(\S+)\s+\S+\s+\S+\s+(.*?)\s*$", ln)
        if mo:
            params[mo.group(1)] = mo.group(2)
    return desc, params


def test_examples_register_with_expected_schema(fake, mount, tmp_path):
    m = tmount(mount)
    for name in EXAMPLE_PARAMS:
        r = run(["cp", str(EXAMPLES / name), str(m.path / "tools" / name)])
        assert r.returncode == 0, r.stderr
    st = status_lines(m)
    for name in EXAMPLE_PARAMS:
        assert st.get(name, ("?",))[0] == "ok", tools_status(m)
    _, bodies = ask_fake(m, fake, "c", "what can you do")
    fns = functions_of(bodies[0])
    assert sorted(fns) == sorted(EXAMPLE_PARAMS)
    for name, params in EXAMPLE_PARAMS.items():
        desc, pdesc = header_texts(EXAMPLES / name)
        assert desc, "%s has no @description" % name
        props = {p: {"type": t, "description": pdesc[p]}
                 for p, (t, _) in params.items()}
        want_params = {"type": "object", "properties": props}
        req = [p for p, (_, r) in params.items() if r]
        if req:
            want_params["required"] = req
        assert fns[name] == {"name": name, "description": desc,
                             "parameters": want_params}, name


def test_parallel_conversations_each_offer_every_tool_once(fake, mount, tmp_path):
    """Every request reads tools/ again; conversations asking at the same
    moment must each see the whole directory, every tool exactly once."""
    m = tmount(mount)
    names = ["t%d" % i for i in range(6)]
    for n in names:
        add_tool(m, tmp_path, n, "#!/bin/sh\n# @description tool %s\necho ok\n" % n)
    convs = ["p%d" % i for i in range(12)]
    for c in convs:
        mkconv(m, c)
    procs = [subprocess.Popen(["bash", "-c", "echo go > %s/prompt" % c],
                              cwd=str(m.path / "conversations"))
             for c in convs]
    for p in procs:
        assert p.wait(timeout=20) == 0
    wait_for(lambda: len(fake.chat_requests()) >= len(convs), timeout=20)
    for body in chat_bodies(fake):
        offered = sorted(t["function"]["name"] for t in body["tools"])
        assert offered == names, offered


@pytest.mark.parametrize("raw", [b"c\xc0\xafd", b"c\xed\xa0\x80d", b"c\xffd"],
                         ids=["overlong", "surrogate", "invalid byte"])
def test_tool_output_that_is_not_utf8_is_repaired(fake, mount, tmp_path, raw):
    """A tool printing bytes that are not UTF-8 (an overlong form, a
    surrogate, a stray byte) must not put invalid UTF-8 into the history:
    the turn completes, with U+FFFD in their place."""
    m = tmount(mount)
    octal = "".join("\\%03o" % b for b in raw)
    add_tool(m, tmp_path, "badbytes", "#!/bin/sh\nprintf '%s'\n" % octal)
    content = one_call(m, fake, "badbytes")
    assert content.startswith("c") and content.endswith("d"), content
    assert "\ufffd" in content, content
    raw_hist = (cdir(m, "c") / "messages.jsonl").read_bytes()
    raw_hist.decode("utf-8")  # strict: raises on invalid UTF-8
    assert_still_serving(m, fake)

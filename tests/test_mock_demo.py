"""The built-in mock provider (-o provider=mock), `make demo`
(examples/demo.sh), examples/chat.sh, `make install` and the man page.

None of these tests uses the fake server: the mounts get a base_url on
which nothing listens, which the mock provider never contacts."""

import json
import os
import re
import time

import pytest

from conftest import REPO, clean_env, is_mounted, listdir, run
from conv_helpers import (history, mkconv, opts, prompt, reply, sh,
                          status, stream_text)

MOCK = "mock-1b-instruct"
EXAMPLES = REPO / "examples"


def mock_mount(mount, env=None, mountpoint=None, **kw):
    kw.setdefault("provider", "mock")
    kw.setdefault("mock_delay", "5ms")
    kw.setdefault("default_model", MOCK)
    return mount(args=opts(**kw), env=env, mountpoint=mountpoint)


def mock_text(turn, said):
    return "This is the lmsfs mock model (turn %d). You said: %s" % (turn,
                                                                   said)


def ask(m, conv, text, timeout=15):
    prompt(m, conv, text)
    return reply(m, conv, timeout=timeout)


def cp_tool(m, name):
    r = run(["cp", str(EXAMPLES / "tools" / name),
             str(m.path / "tools" / name)])
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ the mock

def test_mock_lists_its_models(mount):
    m = mount(args=opts(provider="mock", mock_delay="5ms"))
    assert listdir(m.path / "models") == sorted(
        ["mock-1b-instruct", "lmsfs%2Fmock-echo"])


def test_mock_answers_with_turn_numbers(mount):
    m = mock_mount(mount)
    mkconv(m, "c")
    assert ask(m, "c", "hello there").strip() == mock_text(1, "hello there")
    assert ask(m, "c", "and again?").strip() == mock_text(2, "and again?")
    hist = history(m, "c")
    assert [(h["role"], h["content"]) for h in hist] == [
        ("user", "hello there"), ("assistant", mock_text(1, "hello there")),
        ("user", "and again?"), ("assistant", mock_text(2, "and again?"))]
    st = status(m, "c")
    assert st["state"] == "idle" and st["error"] is None, st
    assert st["last"]["model"] == MOCK, st


def test_mock_streams_word_by_word(mount):
    m = mock_mount(mount, mock_delay="40ms")
    mkconv(m, "c")
    said = "one two three four five six"
    final = mock_text(1, said)
    prompt(m, "c", said)
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            s = stream_text(m, "c")
        except FileNotFoundError:
            s = ""
        if not seen or seen[-1] != s:
            seen.append(s)
        if s.strip() == final:
            break
        time.sleep(0.01)
    assert seen[-1].strip() == final, seen
    partial = [s for s in seen if s and s.strip() != final]
    assert len(partial) >= 3, "the answer did not stream: %r" % seen
    for s in partial:
        assert final.startswith(s), (s, final)
    assert reply(m, "c").strip() == final


def test_mock_calls_a_registered_tool(mount):
    m = mock_mount(mount)
    cp_tool(m, "calc")
    mkconv(m, "c")
    out = ask(m, "c", "Please use calc with expr=(6*7)+0.5 for me")
    assert out.strip() == "The tool answered: 42.5"
    hist = history(m, "c")
    assert [h["role"] for h in hist] == ["user", "assistant", "tool",
                                         "assistant"], hist
    call = hist[1]["tool_calls"][0]
    assert call["function"]["name"] == "calc"
    assert json.loads(call["function"]["arguments"]) == {"expr": "(6*7)+0.5"}
    assert hist[2]["tool_call_id"] == call["id"]
    assert hist[2]["content"].strip() == "42.5"
    s = stream_text(m, "c")
    start = [ln for ln in s.splitlines() if ln.startswith("[lmsfs] tool calc {")]
    assert len(start) == 1, s
    assert json.loads(start[0][len("[lmsfs] tool calc "):]) == {
        "expr": "(6*7)+0.5"}
    assert re.search(r"^\[lmsfs\] tool calc done: exit 0, \d+ bytes, \d+ ms$",
                     s, re.M), s

    # A number parameter becomes a number; the word must be a whole word.
    assert ask(m, "c", "calc expr=10/3 scale=2").strip() == \
        "The tool answered: 3.33"
    args = json.loads(history(m, "c")[-3]["tool_calls"][0]["function"]
                      ["arguments"])
    assert args == {"expr": "10/3", "scale": 2}
    out = ask(m, "c", "no calculator needed here")
    assert re.fullmatch(r"This is the lmsfs mock model \(turn \d+\)\. You "
                        r"said: no calculator needed here", out.strip()), out


def test_mock_legacy_functions(mount):
    m = mock_mount(mount, tool_api="functions")
    cp_tool(m, "calc")
    mkconv(m, "c")
    assert ask(m, "c", "calc expr=1+2").strip() == "The tool answered: 3"
    hist = history(m, "c")
    assert [h["role"] for h in hist] == ["user", "assistant", "function",
                                         "assistant"], hist
    assert hist[1]["function_call"]["name"] == "calc"
    assert hist[2]["name"] == "calc" and hist[2]["content"].strip() == "3"


def test_mock_runs_every_example_tool(mount, tmp_path):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("buy milk\ncall mom\n")
    m = mock_mount(mount, env={"HOME": home})
    for name in ("get_time", "calc", "wordcount", "search_notes"):
        cp_tool(m, name)
    mkconv(m, "c")
    out = ask(m, "c", "get_time tz=UTC").strip()
    assert re.fullmatch(r"The tool answered: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                        r"UTC \(\w+day\)", out), out
    assert ask(m, "c", "wordcount path=todo.txt").strip() == \
        "The tool answered: lines=2 words=4 bytes=18"
    assert ask(m, "c", "search_notes query=milk").strip() == \
        "The tool answered: ./todo.txt:1:buy milk"
    assert ask(m, "c", "calc expr=2^10").strip() == "The tool answered: 1024"


def test_mock_error(mount):
    m = mock_mount(mount)
    mkconv(m, "c")
    prompt(m, "c", "please mock:error now")
    r = sh(m, "cat c/.reply")
    assert r.returncode != 0, r.stdout
    assert r.stderr.strip(), "cat should report an errno"
    st = status(m, "c")
    assert st["state"] == "failed", st
    assert st["error"]["class"] == "server_error", st
    assert re.search(r"^\[lmsfs\] error server_error: .+$",
                     stream_text(m, "c"), re.M), stream_text(m, "c")
    # The mount keeps serving.
    out = ask(m, "c", "fine now").strip()
    assert re.fullmatch(r"This is the lmsfs mock model \(turn \d+\)\. You "
                        r"said: fine now", out), out
    assert status(m, "c")["state"] == "idle"


# ------------------------------------------------------------ demo

def check_demo_output(r):
    assert r.returncode == 0, "exit %s\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout, r.stderr)
    out = r.stdout
    assert mock_text(1, "What is a FUSE filesystem?") in out, out
    assert "The tool answered: 42.5" in out, out
    assert "What is on my list? (1 file attached: list.txt)" in out, out
    # Each command starts after a blank line: output that did not end with
    # a newline (a .reply's answer) does not run into the next prompt.
    lines = out.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("$ ") and i > 1:
            assert lines[i - 1] == "", "\n".join(lines[i - 2:i + 1])
    mo = re.search(r"mounted on (\S+)", out)
    if mo:
        mnt = mo.group(1)
        assert not is_mounted(mnt), "the demo left %s mounted" % mnt
        assert not os.path.exists(os.path.dirname(mnt)), \
            "the demo left %s behind" % os.path.dirname(mnt)


def test_demo_script_without_terminal(tmp_path, lmsfs_bin):
    env = clean_env(tmp_path, {"LMSFS_BIN": lmsfs_bin})
    t0 = time.monotonic()
    r = run(["sh", str(EXAMPLES / "demo.sh")], cwd=str(REPO), env=env,
            timeout=90, start_new_session=True)
    took = time.monotonic() - t0
    check_demo_output(r)
    print("demo.sh took %.1f s" % took)


@pytest.mark.xdist_group("repo-build")
def test_make_demo_without_terminal(tmp_path):
    env = clean_env(tmp_path)
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    r = run(["make", "--no-print-directory", "demo"], cwd=str(REPO), env=env,
            timeout=180, start_new_session=True)
    check_demo_output(r)


# ------------------------------------------------------------ chat.sh

@pytest.mark.parametrize("how", ["env", "default", "new-conversation"])
def test_chat_sh(mount, tmp_path, how):
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(tmp_path, {"HOME": home})
    if how == "default":
        m = mock_mount(mount, mountpoint=home / "lms")
    else:
        m = mock_mount(mount)
        env["LMSFS_MOUNT"] = str(m.path)
    if how != "new-conversation":
        mkconv(m, "talk")
    chat = EXAMPLES / "chat.sh"
    assert chat.is_file(), "examples/chat.sh is missing"
    assert os.access(chat, os.X_OK), "examples/chat.sh is not executable"
    r = run([str(chat), "talk"], input="first question\nsecond question\n",
            env=env, cwd=str(tmp_path), timeout=30, start_new_session=True)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    a1 = mock_text(1, "first question")
    a2 = mock_text(2, "second question")
    assert a1 in r.stdout and a2 in r.stdout, r.stdout
    assert r.stdout.index(a1) < r.stdout.index(a2)
    assert [h["role"] for h in history(m, "talk")] == [
        "user", "assistant", "user", "assistant"]


# ------------------------------------------------------------ install, man

def man_warnings(path):
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    r = run(["man", "--warnings", "-l", str(path)], env=env, timeout=30)
    return r


@pytest.mark.xdist_group("repo-build")
def test_make_install(tmp_path):
    dest = tmp_path / "dest"
    env = clean_env(tmp_path)
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    r = run(["make", "--no-print-directory", "install", "DESTDIR=%s" % dest,
             "PREFIX=/usr"], cwd=str(REPO), env=env, timeout=180)
    assert r.returncode == 0, "make install failed:\n%s\n%s" % (r.stdout,
                                                               r.stderr)
    binp = dest / "usr/bin/lmsfs"
    manp = dest / "usr/share/man/man1/lmsfs.1"
    conf = dest / "usr/share/doc/lmsfs/lmsfs.conf.example"
    for p in (binp, manp, conf):
        assert p.is_file(), "%s not installed" % p
    assert os.access(binp, os.X_OK)
    assert conf.read_text() == (REPO / "lmsfs.conf").read_text()
    r = man_warnings(manp)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "man warnings for the installed page:\n" + r.stderr


def test_man_page_renders_without_warnings():
    page = REPO / "lmsfs.1"
    assert page.is_file(), "lmsfs.1 is missing"
    r = man_warnings(page)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "man --warnings -l lmsfs.1:\n" + r.stderr
    text = r.stdout
    for word in ("NAME", "SYNOPSIS", "DESCRIPTION", "lmsfs"):
        assert word in text, "%s not in the rendered page" % word

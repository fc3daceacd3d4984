"""Conversations through the mounted filesystem: life cycle, prompts, the
hidden .reply/.status/.ctl files, stream, messages.jsonl, request
construction, model choice, crash recovery, concurrency, server failures
and a matrix of real command line clients.

Bad input (refused names, limits, invalid history lines, ...) lives in
test_conv_bad_input.py."""

import errno
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import (call_with_timeout, listdir, read_bytes, read_text,
                      run, stat, wait_for, write_text)
from conv_helpers import (DEFAULT_SYSTEM, FAST_FAIL, LLAMA, QWEN, Bg, ask,
                          cdir, chat_bodies, cmount, convs, echo_of,
                          history, history_text, mkconv, prompt, q,
                          renameat2, RENAME_NOREPLACE, reply, sh,
                          slow_reply, status, stream_text, wait_answered,
                          wait_state)
from fake_lms import (Disconnect, ErrorEvent, Garbage, Hang,
                      default_models, server_error)

HIDDEN = (".reply", ".status", ".ctl")


# ------------------------------------------------------------ life cycle

def test_mkdir_creates_empty_dir_files_appear_with_first_prompt(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "a")
    assert "a" in listdir(convs(m))
    assert listdir(c) == []
    r = sh(m, "ls -A a")
    assert r.returncode == 0 and r.stdout == "", r
    # Nothing asked yet: .reply is there and has nothing to wait for.
    assert read_bytes(c / ".reply", timeout=5) == b""
    assert listdir(c) == []
    assert ask(m, "a", "hello world").rstrip("\n") == echo_of("hello world")
    names = listdir(c)
    assert "messages.jsonl" in names and "stream" in names, names
    for h in HIDDEN:
        assert h not in names
        stat(c / h)  # hidden but there
    r = sh(m, "ls -A a")
    assert not any(h in r.stdout.split() for h in HIDDEN), r.stdout


def test_rm_r_deletes(fake, mount):
    m = cmount(mount)
    mkconv(m, "gone")
    ask(m, "gone", "bye")
    r = sh(m, "rm -r gone")
    assert r.returncode == 0, r.stderr
    assert "gone" not in listdir(convs(m))
    with pytest.raises(FileNotFoundError):
        stat(cdir(m, "gone"))
    # The name is free again, and empty.
    mkconv(m, "gone")
    assert listdir(cdir(m, "gone")) == []
    # Survives a remount (deleted for good).
    r = sh(m, "rmdir gone")
    assert r.returncode == 0, r.stderr
    m.remount()
    assert "gone" not in listdir(convs(m))


def test_mv_renames_and_history_follows(fake, mount):
    m = cmount(mount)
    mkconv(m, "old")
    ask(m, "old", "first")
    before = history_text(m, "old")
    r = sh(m, "mv old new")
    assert r.returncode == 0, r.stderr
    names = listdir(convs(m))
    assert "new" in names and "old" not in names, names
    assert history_text(m, "new") == before
    assert status(m, "new")["name"] == "new"
    assert ask(m, "new", "second").rstrip("\n") == echo_of("second")
    body = chat_bodies(fake)[-1]
    assert [x["content"] for x in body["messages"]] == [
        DEFAULT_SYSTEM, "first", echo_of("first"), "second"]


def test_mv_onto_existing_conversation(fake, mount):
    m = cmount(mount)
    for n in ("a", "b", "empty"):
        mkconv(m, n)
    ask(m, "a", "from a")
    ask(m, "b", "from b")
    ha, hb = history_text(m, "a"), history_text(m, "b")

    # mv a b: b is a directory, so mv moves a INTO b: conversations do
    # not nest -> EPERM, nothing changes.
    r = sh(m, "mv a b")
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr, r.stderr
    # RENAME_NOREPLACE onto an existing name -> EEXIST.
    assert renameat2(cdir(m, "a"), cdir(m, "b"), RENAME_NOREPLACE) == \
        errno.EEXIST
    r = sh(m, "mv -n -T a b")
    assert history_text(m, "a") == ha and history_text(m, "b") == hb
    # mv -T onto a non-empty conversation -> ENOTEMPTY.
    r = sh(m, "mv -T a b")
    assert r.returncode != 0
    assert "Directory not empty" in r.stderr, r.stderr
    assert history_text(m, "a") == ha and history_text(m, "b") == hb
    # mv -T onto an empty one replaces it.
    r = sh(m, "mv -T a empty")
    assert r.returncode == 0, r.stderr
    names = listdir(convs(m))
    assert "a" not in names and "empty" in names and "b" in names, names
    assert history_text(m, "empty") == ha
    # RENAME_NOREPLACE onto a free name works.
    assert renameat2(cdir(m, "empty"), cdir(m, "fresh"),
                     RENAME_NOREPLACE) == 0
    assert history_text(m, "fresh") == ha


# ---------------------------------------------------------------- prompt

def test_prompt_submits_trimmed_text_and_request_defaults(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "p")
    r = sh(m, "printf 'what is up?  \\n\\n\\t ' > p/prompt")
    assert r.returncode == 0, r.stderr
    assert reply(m, "p").rstrip("\n") == echo_of("what is up?")
    assert history(m, "p") == [
        {"role": "user", "content": "what is up?"},
        {"role": "assistant", "content": echo_of("what is up?")}]
    assert stream_text(m, "p") == echo_of("what is up?") + "\n"
    # prompt reads return nothing and have size 0.
    assert read_bytes(c / "prompt") == b""
    assert stat(c / "prompt").st_size == 0
    [req] = fake.chat_requests()
    body = req["body"]
    assert body["model"] == LLAMA
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": "what is up?"}]
    assert body["temperature"] == 0.7
    assert body["max_tokens"] == 1024
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_empty_writes_submit_nothing(fake, mount):
    m = cmount(mount)
    mkconv(m, "e")
    for cmd in (": > e/prompt", "touch e/prompt", "printf '' >> e/prompt",
                "touch e/prompt"):
        r = sh(m, cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    assert status(m, "e")["submitted"] == 0
    ask(m, "e", "real one")
    # Exactly one request, one user message: the empty writes sent nothing.
    assert len(fake.chat_requests()) == 1
    assert [x["role"] for x in history(m, "e")] == ["user", "assistant"]
    assert status(m, "e")["submitted"] == 1


def test_prompts_queue_in_order_and_history_grows(fake, mount):
    m = cmount(mount)
    mkconv(m, "q")
    fake.enqueue(slow_reply(words=4, delay=0.1)[0])
    for t in ("one", "two", "three"):
        prompt(m, "q", t)
    wait_answered(m, "q", 3)
    h = history(m, "q")
    assert [x["role"] for x in h] == ["user", "assistant"] * 3
    assert [x["content"] for x in h[0::2]] == ["one", "two", "three"]
    bodies = chat_bodies(fake)
    assert len(bodies) == 3
    assert [x["content"] for x in bodies[2]["messages"]] == [
        DEFAULT_SYSTEM, "one", h[1]["content"], "two", echo_of("two"),
        "three"]


def test_single_loaded_model_is_used_without_default(fake, mount):
    models = default_models()
    for x in models:
        if x["id"] == LLAMA:
            x["state"] = "not-loaded"
    fake.models = models
    m = cmount(mount, model=None)
    mkconv(m, "one")
    assert ask(m, "one", "hi").rstrip("\n") == echo_of("hi")
    assert chat_bodies(fake)[-1]["model"] == QWEN


# ------------------------------------------------------ hidden files

def test_reply_blocks_until_answer_then_returns_last(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "r")
    rep, text = slow_reply(words=8, delay=0.15)
    fake.enqueue(rep)
    t0 = time.monotonic()
    prompt(m, "r", "slow please")
    got = reply(m, "r", timeout=15)
    took = time.monotonic() - t0
    assert got.rstrip("\n") == text
    assert took >= 0.8, "read of .reply returned after %.2f s" % took
    # Nothing pending: the last answer, at once.
    took, got = _timed(lambda: reply(m, "r"))
    assert got.rstrip("\n") == text and took < 1.0, took

    # A .reply opened before a new prompt answers the old one; opened
    # after it, the new one.
    rep2, text2 = slow_reply(words=6, delay=0.15, prefix="v")
    fake.enqueue(rep2)
    f_old = call_with_timeout(open, c / ".reply", "rb")
    try:
        prompt(m, "r", "second")
        f_new = call_with_timeout(open, c / ".reply", "rb")
        try:
            assert call_with_timeout(f_old.read).decode().rstrip("\n") \
                == text
            assert call_with_timeout(f_new.read, timeout=15).decode() \
                .rstrip("\n") == text2
        finally:
            f_new.close()
    finally:
        f_old.close()


def _timed(fn):
    t0 = time.monotonic()
    v = fn()
    return time.monotonic() - t0, v


def test_status_while_generating_and_after(fake, mount):
    m = cmount(mount)
    mkconv(m, "s")
    st = status(m, "s")
    assert st["name"] == "s" and st["state"] == "idle"
    assert (st["queued"], st["submitted"], st["answered"]) == (0, 0, 0)
    assert st["error"] is None
    rep, text = slow_reply(words=12, delay=0.15)
    fake.enqueue(rep)
    prompt(m, "s", "first")
    prompt(m, "s", "second")

    def generating_with_tokens():
        s = status(m, "s")
        g = s.get("generating")
        return s if (s["state"] == "generating" and g and
                     g["tokens"] >= 2) else None
    st = wait_for(generating_with_tokens, timeout=10)
    assert st["submitted"] == 2 and st["answered"] == 0, st
    assert st["queued"] == 1, st
    g = st["generating"]
    assert g["elapsed_ms"] > 0 and g["tokens_per_second"] >= 0, g
    wait_answered(m, "s", 2)
    st = status(m, "s")
    assert st["state"] == "idle" and st["queued"] == 0, st
    assert st["submitted"] == 2 and st["answered"] == 2, st
    assert not st.get("generating"), st
    assert st["error"] is None
    last = st["last"]
    assert last["model"] == LLAMA
    assert last["finish_reason"] == "stop"
    assert last["attempts"] == 1 and last["retries"] == 0
    assert isinstance(last["usage"]["prompt_tokens"], int)
    assert last["usage"]["completion_tokens"] > 0
    assert last["ttft_ms"] >= 0 and last["tokens_per_second"] > 0


def test_ctl_cancel_keeps_partial(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "x")
    rep, text = slow_reply(words=40, delay=0.1)
    fake.enqueue(rep)
    prompt(m, "x", "go on and on")
    f = call_with_timeout(open, c / ".reply", "rb")
    box = {}

    def reader():
        try:
            box["data"] = f.read()
        except OSError as e:
            box["errno"] = e.errno
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(stream_text(m, "x")) > 8, timeout=10)
        r = sh(m, "echo cancel > x/.ctl")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "[lmsfs] cancelled" in stream_text(m, "x"),
                 timeout=5)
        t.join(5)
        assert not t.is_alive(), ".reply read still blocked after cancel"
        assert box.get("errno") == errno.ECANCELED, box
    finally:
        f.close()
    s = stream_text(m, "x")
    partial = s.split("[lmsfs] cancelled")[0].rstrip("\n")
    assert partial and text.startswith(partial) and partial != text, s
    last = history(m, "x")[-1]
    assert last["role"] == "assistant"
    assert last["lmsfs_status"] == "cancelled"
    assert last["content"] and text.startswith(last["content"])
    assert len(last["content"]) < len(text)
    # The stream stops growing: the rest of the answer never arrives.
    time.sleep(0.3)
    assert text not in stream_text(m, "x")
    # The next prompt works and sends the partial answer without the
    # private member.
    assert ask(m, "x", "again").rstrip("\n") == echo_of("again")
    msgs = chat_bodies(fake)[-1]["messages"]
    asst = [x for x in msgs if x["role"] == "assistant"]
    assert asst == [{"role": "assistant", "content": last["content"]}]
    assert not any("lmsfs_status" in x for x in msgs)


def test_ctl_retry_after_failure(fake, mount):
    m = cmount(mount, **FAST_FAIL)
    mkconv(m, "t")
    fake.enqueue(Disconnect(after_chunks=2))
    prompt(m, "t", "alpha beta gamma delta")
    wait_state(m, "t", "failed")
    h = history(m, "t")
    assert h[-1]["role"] == "assistant" and "lmsfs_status" in h[-1]
    r = sh(m, "echo retry > t/.ctl")
    assert r.returncode == 0, r.stderr
    assert reply(m, "t").rstrip("\n") == echo_of("alpha beta gamma delta")
    h = history(m, "t")
    assert h == [{"role": "user", "content": "alpha beta gamma delta"},
                 {"role": "assistant",
                  "content": echo_of("alpha beta gamma delta")}]
    bodies = chat_bodies(fake)
    assert len(bodies) == 2
    assert bodies[1]["messages"] == bodies[0]["messages"]
    st = status(m, "t")
    assert st["state"] == "idle" and st["error"] is None, st


# ---------------------------------------------------------------- stream

def test_tail_f_sees_stream_grow(fake, mount, tmp_path):
    m = cmount(mount)
    mkconv(m, "tl")
    ask(m, "tl", "warm up")
    rep, text = slow_reply(words=12, delay=0.25)
    fake.enqueue(rep)
    bg = Bg("tail -f -s 0.1 tl/stream", tmp_path / "tail.out", convs(m))
    try:
        base = wait_for(lambda: len(bg.output()) >=
                        len(echo_of("warm up")) + 1 and len(bg.output()),
                        timeout=5)
        prompt(m, "tl", "stream it")
        final = base + len(text) + 1
        seen = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            n = len(bg.output())
            seen.add(n)
            if n >= final:
                break
            time.sleep(0.03)
        out = bg.output().decode()
        assert out.endswith(text + "\n"), out
        inter = sorted(n for n in seen if base < n < final)
        assert len(inter) >= 2, "tail -f saw lengths %s" % sorted(seen)
    finally:
        bg.kill()


def test_stream_setting_false_and_params_stream_false(fake, mount):
    m = cmount(mount, stream=False)
    mkconv(m, "ns")
    assert ask(m, "ns", "no stream").rstrip("\n") == echo_of("no stream")
    assert stream_text(m, "ns") == echo_of("no stream") + "\n"
    assert chat_bodies(fake)[-1].get("stream") in (False, None)
    m.umount()
    m2 = cmount(mount)
    c = mkconv(m2, "ps")
    write_text(c / "params.json", '{"stream": false}\n')
    assert ask(m2, "ps", "params say no").rstrip("\n") == \
        echo_of("params say no")
    assert chat_bodies(fake)[-1].get("stream") in (False, None)
    assert stream_text(m2, "ps") == echo_of("params say no") + "\n"
    history(m2, "ps")


# ------------------------------------------------------- request content

def test_system_prompt_config_and_file(fake, mount):
    m = cmount(mount, system_prompt="Answer in French.")
    mkconv(m, "cfg")
    ask(m, "cfg", "hi")
    assert chat_bodies(fake)[-1]["messages"][0] == {
        "role": "system", "content": "Answer in French."}
    c = mkconv(m, "own")
    r = sh(m, "echo 'You are a pirate.' > own/system")
    assert r.returncode == 0, r.stderr
    ask(m, "own", "ahoy")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert msgs[0]["role"] == "system"
    assert msgs[0]["content"].rstrip("\n") == "You are a pirate."
    assert [x["role"] for x in msgs] == ["system", "user"]
    assert read_text(c / "system").rstrip("\n") == "You are a pirate."


def test_params_json_merged_into_request(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "pj")
    write_text(c / "params.json",
               json.dumps({"top_k": 40, "repeat_penalty": 1.1, "ttl": 60}))
    ask(m, "pj", "with params")
    body = chat_bodies(fake)[-1]
    assert body["top_k"] == 40
    assert body["repeat_penalty"] == 1.1
    assert body["ttl"] == 60
    assert body["model"] == LLAMA and body["stream"] is True


def test_model_file_substring_resolves(fake, mount):
    m = cmount(mount)  # default_model is llama; the file wins
    c = mkconv(m, "mq")
    r = sh(m, "echo qwen > mq/model")
    assert r.returncode == 0, r.stderr
    ask(m, "mq", "which model")
    assert chat_bodies(fake)[-1]["model"] == QWEN
    assert status(m, "mq")["last"]["model"] == QWEN
    assert read_text(c / "model").strip() == "qwen"


def test_allowed_models_permits_listed(fake, mount):
    m = cmount(mount, model=None, allowed_models=LLAMA)
    c = mkconv(m, "al")
    write_text(c / "model", "llama\n")
    assert ask(m, "al", "ok?").rstrip("\n") == echo_of("ok?")
    assert chat_bodies(fake)[-1]["model"] == LLAMA


# ------------------------------------------------------------- failures

FAILURES = [
    pytest.param(lambda: server_error(), "server_error", errno.EIO, "",
                 id="http500"),
    pytest.param(lambda: Disconnect(after_chunks=3), "protocol",
                 errno.EPROTO, "Echo: one two ", id="disconnect"),
    pytest.param(lambda: ErrorEvent(after_chunks=2), "server_error",
                 errno.EIO, "Echo: one ", id="error_event"),
    pytest.param(lambda: Garbage(b"this is not an event stream\n"),
                 "protocol", errno.EPROTO, "", id="garbage"),
]


@pytest.mark.parametrize("make, cls, err, partial", FAILURES)
def test_server_failure_during_answer(fake, mount, make, cls, err, partial):
    m = cmount(mount, **FAST_FAIL)
    c = mkconv(m, "f")
    fake.enqueue(make())
    prompt(m, "f", "one two three four five")
    st = wait_state(m, "f", "failed")
    assert st["error"]["class"] == cls, st
    assert st["error"]["message"], st
    # .reply fails with the class's errno.
    with pytest.raises(OSError) as ei:
        call_with_timeout(lambda: open(c / ".reply", "rb").read())
    assert ei.value.errno == err, ei.value
    r = sh(m, "cat f/.reply")
    assert r.returncode != 0
    s = stream_text(m, "f")
    lines = s.split("\n")
    marked = [ln for ln in lines if ln.startswith("[lmsfs] error ")]
    assert len(marked) == 1, s
    assert marked[0].startswith("[lmsfs] error %s: " % cls), s
    assert s.startswith(partial), s
    h = history(m, "f")
    assert h[0] == {"role": "user", "content": "one two three four five"}
    if partial:
        assert h[-1]["role"] == "assistant"
        assert h[-1]["content"] == partial
        assert cls in h[-1]["lmsfs_status"]
    # The next prompt works; the private member is not sent.
    assert ask(m, "f", "next one").rstrip("\n") == echo_of("next one")
    body = chat_bodies(fake)[-1]
    assert body["messages"][-1] == {"role": "user", "content": "next one"}
    assert not any("lmsfs_status" in x for x in body["messages"])
    st = status(m, "f")
    assert st["state"] == "idle" and st["error"] is None, st
    assert stream_text(m, "f").endswith(echo_of("next one") + "\n")


def test_5xx_retried_with_backoff(fake, mount):
    m = cmount(mount, max_retries_stream=2, initial_backoff="10ms",
               breaker_threshold=1000)
    mkconv(m, "rt")
    fake.enqueue(server_error(), server_error())
    assert ask(m, "rt", "persist").rstrip("\n") == echo_of("persist")
    assert len(fake.chat_requests()) == 3
    last = status(m, "rt")["last"]
    assert last["attempts"] == 3 and last["retries"] == 2, last
    assert "[lmsfs]" not in stream_text(m, "rt")


# ----------------------------------------------------------------- crash

def test_kill9_during_answer_then_remount(fake, mount):
    m = cmount(mount)
    mkconv(m, "a")
    mkconv(m, "b")
    ask(m, "a", "before crash")
    words = " ".join("x%d" % i for i in range(40))
    fake.chunk_delay = 0.2
    prompt(m, "a", words)           # slow, acknowledged
    prompt(m, "b", "b slow " + words)
    prompt(m, "b", "queued behind")  # not started at kill time
    wait_for(lambda: stream_text(m, "a").count("x") >= 3 and
             stream_text(m, "b").count("x") >= 1, timeout=10)
    m.kill9()
    fake.chunk_delay = 0.0
    n_before = len(fake.chat_requests())
    m.start()

    for name in ("a", "b"):
        for ln in history_text(m, name).splitlines():
            json.loads(ln)  # every line is valid JSON
    h = history(m, "a")
    assert h[:2] == [{"role": "user", "content": "before crash"},
                     {"role": "assistant",
                      "content": echo_of("before crash")}]
    assert h[2] == {"role": "user", "content": words}
    assert len(h) == 4, h
    assert h[3]["role"] == "assistant"
    assert "interrupted" in h[3]["lmsfs_status"]
    assert h[3]["content"].startswith("Echo: x0 x1")
    s = stream_text(m, "a")
    assert s.rstrip("\n").split("\n")[-1].startswith(
        "[lmsfs] error interrupted"), s
    st = status(m, "a")
    assert st["state"] == "failed", st
    assert st["error"]["class"] == "interrupted", st

    # The queued prompt of b is answered after the remount.
    def b_done():
        hb = history(m, "b")
        return hb if (hb[-1]["role"] == "assistant" and
                      hb[-1]["content"] == echo_of("queued behind")) \
            else None
    hb = wait_for(b_done, timeout=15)
    users = [x["content"] for x in hb if x["role"] == "user"]
    assert users == ["b slow " + words, "queued behind"], hb
    assert "interrupted" in hb[1].get("lmsfs_status", ""), hb

    # retry in a gives the full answer.
    r = sh(m, "echo retry > a/.ctl")
    assert r.returncode == 0, r.stderr
    assert reply(m, "a").rstrip("\n") == echo_of(words)
    h = history(m, "a")
    assert h[-1] == {"role": "assistant", "content": echo_of(words)}
    assert [x["role"] for x in h] == ["user", "assistant"] * 2
    assert len(fake.chat_requests()) == n_before + 2
    assert status(m, "a")["state"] == "idle"


# ----------------------------------------------------------- concurrency

def _prompt_and_wait_all(m, names, text, timeout=30):
    """One shell: writes every prompt, then waits for every .reply."""
    script = ["set -e"]
    for n in names:
        script.append("echo %s > %s/prompt" % (q(text), q(n)))
    script.append("pids=")
    for n in names:
        script.append("cat %s/.reply > /dev/null & pids=\"$pids $!\"" % q(n))
    script.append("for p in $pids; do wait $p; done")
    t0 = time.monotonic()
    r = sh(m, "\n".join(script), timeout=timeout)
    took = time.monotonic() - t0
    assert r.returncode == 0, "%s\ndaemon exit status: %s\n--- log ---\n%s" \
        % (r.stderr[-2000:], m.proc.poll(), m.log()[-4000:])
    return took


@pytest.mark.xdist_group("timing")
def test_32_conversations_in_parallel(fake, mount, record_property):
    m = cmount(mount)
    names = ["c%02d" % i for i in range(32)]
    r = sh(m, "mkdir " + " ".join(names))
    assert r.returncode == 0, r.stderr
    fake.chunk_delay = 0.05
    text = "a b c d e f g h i"  # 10 chunks with "Echo: "
    single = _prompt_and_wait_all(m, ["c00"], text)
    many = _prompt_and_wait_all(m, names, text)
    record_property("single_s", round(single, 3))
    record_property("parallel32_s", round(many, 3))
    print("single answer %.3f s, 32 in parallel %.3f s" % (single, many))
    assert single >= 0.45, single
    assert many < 5 * single, (single, many)
    for n in names:
        assert history(m, n)[-1] == {"role": "assistant",
                                     "content": echo_of(text)}, n


@pytest.mark.xdist_group("timing")
def test_100_blocked_readers_do_not_block_other_ops(fake, mount,
                                                    record_property):
    m = cmount(mount)
    mkconv(m, "busy")
    mkconv(m, "other")
    ask(m, "other", "hello")
    rep, text = slow_reply(words=10, delay=0.3)
    fake.enqueue(rep)
    prompt(m, "busy", "take your time")
    procs = []
    try:
        for _ in range(100):
            procs.append(subprocess.Popen(
                ["cat", str(cdir(m, "busy") / ".reply")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL))

        def blocked():
            n = 0
            for p in procs:
                try:
                    with open("/proc/%d/wchan" % p.pid) as f:
                        w = f.read()
                    with open("/proc/%d/stat" % p.pid) as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if state in "SD" and ("request_wait_answer" in w or
                                      "fuse" in w):
                    n += 1
            return n >= 100
        wait_for(blocked, timeout=10, message="100 blocked readers")
        worst = 0.0
        for p in (cdir(m, "other") / "messages.jsonl",
                  cdir(m, "other") / "stream", m.path / "health",
                  cdir(m, "other")):
            t0 = time.monotonic()
            stat(p, timeout=5)
            worst = max(worst, time.monotonic() - t0)
        t0 = time.monotonic()
        assert history(m, "other")[0]["content"] == "hello"
        read_s = time.monotonic() - t0
        record_property("stat_worst_s", round(worst, 4))
        record_property("read_s", round(read_s, 4))
        print("with 100 blocked readers: worst stat %.1f ms, read %.1f ms"
              % (worst * 1000, read_s * 1000))
        assert worst < 0.5, worst
        assert read_s < 0.5, read_s
        assert all(p.poll() is None for p in procs[:90]), \
            "readers returned before the answer was done"
        # All of them get the answer.
        for p in procs:
            out, err = p.communicate(timeout=15)
            assert p.returncode == 0, err
            assert out.decode().rstrip("\n") == text
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


@pytest.mark.xdist_group("timing")
def test_sigkill_of_blocked_reply_reader(fake, mount):
    m = cmount(mount, timeout=30)
    mkconv(m, "h")
    fake.enqueue(Hang(20))
    prompt(m, "h", "hang")
    p = subprocess.Popen(["cat", str(cdir(m, "h") / ".reply")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status(m, "h")["state"] == "generating", timeout=5)
        time.sleep(0.2)
        assert p.poll() is None, "cat .reply did not block"
        t0 = time.monotonic()
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        took = time.monotonic() - t0
        assert took < 1.0, took
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        sh(m, "echo cancel > h/.ctl")
    # The daemon still answers.
    wait_for(lambda: status(m, "h")["state"] != "generating", timeout=5)
    assert ask(m, "h", "still there").rstrip("\n") == echo_of("still there")


# ------------------------------------------------------ real clients

def _setup_two(m):
    mkconv(m, "src")
    ask(m, "src", "needle in a haystack")
    ask(m, "src", "second question")
    write_text(cdir(m, "src") / "model", "llama\n")
    mkconv(m, "plain")
    ask(m, "plain", "nothing special")


@pytest.mark.parametrize("cp", ["cp -r", "cp -a"])
def test_cp_copies_without_new_requests(fake, mount, cp):
    m = cmount(mount)
    _setup_two(m)
    n = len(fake.chat_requests())
    r = sh(m, "%s src copy" % cp)
    assert r.returncode == 0, r.stderr
    assert history_text(m, "copy") == history_text(m, "src")
    assert stream_text(m, "copy") == stream_text(m, "src")
    assert read_text(cdir(m, "copy") / "model") == "llama\n"
    assert len(fake.chat_requests()) == n, "the copy sent a chat request"
    assert status(m, "copy")["state"] == "idle"
    if cp == "cp -a":
        a, b = stat(cdir(m, "src") / "messages.jsonl"), \
            stat(cdir(m, "copy") / "messages.jsonl")
        assert int(a.st_mtime) == int(b.st_mtime)
    # The copy continues the conversation.
    ask(m, "copy", "continue")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert [x["content"] for x in msgs][1:] == [
        "needle in a haystack", echo_of("needle in a haystack"),
        "second question", echo_of("second question"), "continue"]
    # The source is untouched.
    assert [x["content"] for x in history(m, "src")][-1] == \
        echo_of("second question")


def test_echo_append_valid_history_line(fake, mount):
    m = cmount(mount)
    mkconv(m, "ap")
    ask(m, "ap", "start")
    r = sh(m, "echo '{\"role\":\"user\",\"content\":\"injected\"}' "
              ">> ap/messages.jsonl && echo '{\"role\":\"assistant\","
              "\"content\":\"fake answer\"}' >> ap/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert [x["content"] for x in history(m, "ap")][-2:] == [
        "injected", "fake answer"]
    ask(m, "ap", "after")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert [x["content"] for x in msgs] == [
        DEFAULT_SYSTEM, "start", echo_of("start"), "injected",
        "fake answer", "after"]


def test_sed_i_rewind(fake, mount):
    m = cmount(mount)
    mkconv(m, "sd")
    for t in ("q1", "q2", "q3"):
        ask(m, "sd", t)
    r = sh(m, "sed -i '3,$d' sd/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert [x["content"] for x in history(m, "sd")] == ["q1", echo_of("q1")]
    ask(m, "sd", "q2 again")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert [x["content"] for x in msgs] == [
        DEFAULT_SYSTEM, "q1", echo_of("q1"), "q2 again"]
    # A listing shows no sed leftovers.
    assert sorted(listdir(cdir(m, "sd"))) == ["messages.jsonl", "prompt",
                                              "stream"]


def test_vim_style_save(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "vi")
    ask(m, "vi", "orig")
    f = c / "messages.jsonl"
    new = ('{"role":"user","content":"edited"}\n'
           '{"role":"assistant","content":"edited answer"}\n')

    def save():
        os.rename(f, str(f) + "~")
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, new.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(str(f) + "~")
    call_with_timeout(save)
    assert history_text(m, "vi") == new
    assert "messages.jsonl~" not in listdir(c)
    ask(m, "vi", "next")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert [x["content"] for x in msgs] == [
        DEFAULT_SYSTEM, "edited", "edited answer", "next"]


def test_real_vim_save(fake, mount, tmp_path):
    m = cmount(mount)
    mkconv(m, "vim")
    ask(m, "vim", "orig")
    env = dict(os.environ, HOME=str(tmp_path))
    r = run(["vim", "-n", "-u", "NONE", "-i", "NONE", "-es",
             "+set backupcopy=no writebackup",
             "+%s/orig/changed/", "+wq", "vim/messages.jsonl"],
            timeout=20, cwd=str(convs(m)), env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    h = history(m, "vim")
    assert h[0] == {"role": "user", "content": "changed"}, h
    assert sorted(listdir(cdir(m, "vim"))) == ["messages.jsonl", "prompt",
                                               "stream"]


def test_truncate_history_to_zero(fake, mount):
    m = cmount(mount)
    mkconv(m, "tz")
    ask(m, "tz", "forget me")
    r = sh(m, "truncate -s 0 tz/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert history_text(m, "tz") == ""
    assert stat(cdir(m, "tz") / "messages.jsonl").st_size == 0
    ask(m, "tz", "fresh start")
    assert chat_bodies(fake)[-1]["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": "fresh start"}]


def test_rsync_out_and_back_in(fake, mount, tmp_path):
    m = cmount(mount)
    _setup_two(m)
    out = tmp_path / "rs"
    r = sh(m, "rsync -a src/ %s/" % q(out))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["messages.jsonl", "model", "prompt",
                                       "stream"]
    assert (out / "messages.jsonl").read_text() == history_text(m, "src")
    n = len(fake.chat_requests())
    r = sh(m, "rsync -a %s/ back/" % q(out))
    assert r.returncode == 0, r.stderr
    assert history_text(m, "back") == history_text(m, "src")
    assert stream_text(m, "back") == stream_text(m, "src")
    assert sorted(listdir(cdir(m, "back"))) == [
        "messages.jsonl", "model", "prompt", "stream"]
    assert len(fake.chat_requests()) == n
    ask(m, "back", "from rsync")
    assert chat_bodies(fake)[-1]["messages"][1]["content"] == \
        "needle in a haystack"


def test_tar_excludes_hidden_files(fake, mount, tmp_path):
    m = cmount(mount)
    _setup_two(m)
    r = run(["tar", "cf", str(tmp_path / "c.tar"), "conversations"],
            timeout=20, cwd=str(m.path))
    assert r.returncode == 0, r.stderr
    r = run(["tar", "tf", str(tmp_path / "c.tar")], timeout=10)
    names = set(r.stdout.split())
    assert "conversations/src/messages.jsonl" in names, names
    assert "conversations/plain/stream" in names, names
    assert not any(n.rsplit("/", 1)[-1] in HIDDEN for n in names), names
    x = tmp_path / "x"
    x.mkdir()
    r = run(["tar", "xf", str(tmp_path / "c.tar"), "-C", str(x)],
            timeout=10)
    assert r.returncode == 0, r.stderr
    assert (x / "conversations/src/messages.jsonl").read_text() == \
        history_text(m, "src")
    assert (x / "conversations/plain/stream").read_text() == \
        stream_text(m, "plain")


def test_grep_r_across_conversations(fake, mount):
    m = cmount(mount)
    _setup_two(m)
    r = sh(m, "grep -rl needle .", timeout=10)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["./src/messages.jsonl",
                                        "./src/stream"], r.stdout
    r = sh(m, "grep -rc special .", timeout=10)
    assert "./plain/messages.jsonl:2" in r.stdout.split(), r.stdout


def test_python_open_seek_read(fake, mount):
    m = cmount(mount)
    _setup_two(m)
    for fn in ("messages.jsonl", "stream"):
        p = cdir(m, "src") / fn
        whole = read_bytes(p)
        assert stat(p).st_size == len(whole)

        def partial():
            with open(p, "rb") as f:
                f.seek(7)
                a = f.read(10)
                f.seek(-5, os.SEEK_END)
                b = f.read()
                f.seek(0)
                c = f.read(3)
                return a, b, c
        a, b, c = call_with_timeout(partial)
        assert a == whole[7:17] and b == whole[-5:] and c == whole[:3]
        with call_with_timeout(open, p, "r") as f:
            lines = call_with_timeout(f.readlines)
        assert "".join(lines).encode() == whole


def test_ls_stat_find_du(fake, mount):
    m = cmount(mount)
    _setup_two(m)
    src = cdir(m, "src")
    size = len(read_bytes(src / "messages.jsonl"))
    r = sh(m, "ls -l src")
    assert r.returncode == 0, r.stderr
    row = [ln for ln in r.stdout.splitlines()
           if ln.endswith(" messages.jsonl")][0]
    assert int(row.split()[4]) == size, row
    r = sh(m, "stat -c '%s %F' src/messages.jsonl src/stream src")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "%d regular file" % size
    assert lines[1] == "%d regular file" % len(read_bytes(src / "stream"))
    assert lines[2].endswith("directory")
    r = sh(m, "find . -type f | sort")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "./plain/messages.jsonl", "./plain/prompt", "./plain/stream",
        "./src/messages.jsonl", "./src/model", "./src/prompt",
        "./src/stream"], r.stdout
    r = sh(m, "find . -name '.*'")
    assert r.stdout.split() == ["."], r.stdout
    r = sh(m, "du -s --apparent-size -b src; du -s .")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[0]) >= size


def test_persistence_across_remount(fake, mount):
    m = cmount(mount)
    _setup_two(m)
    c = cdir(m, "src")
    write_text(c / "system", "Be brief.\n")
    write_text(c / "params.json", '{"top_k": 7}')
    mkconv(m, "empty one")
    snap = {n: (history_text(m, n), stream_text(m, n))
            for n in ("src", "plain")}
    st = status(m, "src")
    m.umount()
    m.start()
    assert sorted(listdir(convs(m))) == ["empty one", "plain", "src"]
    assert listdir(cdir(m, "empty one")) == []
    for n, (h, s) in snap.items():
        assert history_text(m, n) == h and stream_text(m, n) == s
    assert read_text(c / "model") == "llama\n"
    assert read_text(c / "system") == "Be brief.\n"
    assert json.loads(read_text(c / "params.json")) == {"top_k": 7}
    st2 = status(m, "src")
    assert st2["state"] == "idle" and st2["error"] is None, st2
    assert st["answered"] == 2
    # With nothing pending, .reply gives the last answer, which is the
    # last assistant message of the kept history.
    last_reply = reply(m, "src")
    ask(m, "src", "after remount")
    body = chat_bodies(fake)[-1]
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].rstrip("\n") == "Be brief."
    assert body["top_k"] == 7
    assert len(body["messages"]) == 6
    assert last_reply.rstrip("\n") == echo_of("second question"), \
        ".reply after remount: %r" % last_reply

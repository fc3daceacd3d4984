"""Reasoning you can watch and stats for every turn (issue 13, items 4-5),
through the mounted filesystem: the per-conversation `reasoning` file,
the `[lmsfs] reasoning` line in stream, reasoning_content in the history
(sent back only with send_reasoning), split_think_tags, lmsfs_stats on
every assistant line, tokens per model in metrics."""

import json
import os
import re

import pytest

from conftest import read_text, run, wait_for
from conv_helpers import (LLAMA, Bg, cdir, chat_bodies, cmount, convs,
                          history_text, mkconv, prompt, reply, sh, status)
from fake_lms import Reply

MARK = "[lmsfs] reasoning\n"


def lines(m, name):
    return [json.loads(ln) for ln in history_text(m, name).splitlines()
            if ln.strip()]


def assistants(m, name):
    return [x for x in lines(m, name) if x.get("role") == "assistant"]


def reasoning_text(m, name):
    return read_text(cdir(m, name) / "reasoning")


def sent_messages(fake):
    return [b["messages"] for b in chat_bodies(fake)]


def add_tool(m, tmp_path, name, text):
    src = tmp_path / ("tool-" + name)
    src.write_text(text)
    os.chmod(src, 0o755)
    r = run(["cp", str(src), str(m.path / "tools" / name)])
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------- reasoning

def test_reasoning_followed_live_while_stream_has_one_line(fake, mount,
                                                          tmp_path):
    m = cmount(mount)
    mkconv(m, "r")
    # An answer without reasoning makes no reasoning file.
    fake.enqueue(Reply(text="Plain."))
    prompt(m, "r", "plain")
    assert reply(m, "r") == "Plain."
    assert not (cdir(m, "r") / "reasoning").exists()
    # The first reasoning makes it; from then on tail -f follows it.
    fake.enqueue(Reply(text="Warm.", reasoning="warming up",
                       reasoning_key="reasoning_content"))
    prompt(m, "r", "warm up")
    assert reply(m, "r") == "Warm."
    assert reasoning_text(m, "r") == "warming up\n"
    words = ["thinking%d " % i for i in range(12)]
    fake.enqueue(Reply(text="The answer.", reasoning=words, delay=0.2,
                       reasoning_key="reasoning_content"))
    tail_r = Bg("tail -f -s 0.1 r/reasoning", tmp_path / "r.out", convs(m))
    # stream from what comes after the first two answers on.
    skip = len("Plain.\n" + MARK + "Warm.\n")
    tail_s = Bg("tail -c +%d -f -s 0.1 r/stream" % (skip + 1),
                tmp_path / "s.out", convs(m))
    try:
        prompt(m, "r", "think about it")
        # Some reasoning is visible while the answer is still being made.
        wait_for(lambda: b"thinking3" in tail_r.output(), timeout=10,
                 message="tail -F reasoning shows the reasoning live")
        assert status(m, "r")["state"] != "idle"
        assert b"thinking11" not in tail_r.output()
        # Meanwhile stream holds the one marked line, not the reasoning.
        wait_for(lambda: tail_s.output() == MARK.encode(), timeout=5,
                 message="stream shows only the marked line: %r"
                 % tail_s.output())
        out = reply(m, "r")
        assert out == "The answer."
        wait_for(lambda: tail_s.output().endswith(b"The answer.\n"),
                 timeout=5)
    finally:
        tail_r.kill()
        tail_s.kill()
    assert read_text(cdir(m, "r") / "stream") == (
        "Plain.\n" + MARK + "Warm.\n" + MARK + "The answer.\n")
    want = "warming up\n\n" + "".join(words) + "\n"
    assert reasoning_text(m, "r") == want
    # Append-only, like stream.
    assert sh(m, ": > r/reasoning").returncode != 0
    assert reasoning_text(m, "r") == want
    _, _, a = assistants(m, "r")
    assert a["content"] == "The answer."
    assert a["reasoning_content"] == "".join(words)


def test_second_turn_other_field_blank_line_and_not_sent_back(fake, mount):
    m = cmount(mount)
    mkconv(m, "t")
    fake.enqueue(Reply(text="One.", reasoning="first thoughts",
                       reasoning_key="reasoning_content"))
    prompt(m, "t", "q1")
    assert reply(m, "t") == "One."
    fake.enqueue(Reply(text="Two.", reasoning="second thoughts",
                       reasoning_key="reasoning"))
    prompt(m, "t", "q2")
    assert reply(m, "t") == "Two."
    # One blank line between turns.
    assert reasoning_text(m, "t") == "first thoughts\n\nsecond thoughts\n"
    assert read_text(cdir(m, "t") / "stream") == (
        MARK + "One.\n" + MARK + "Two.\n")
    a1, a2 = assistants(m, "t")
    assert a1["reasoning_content"] == "first thoughts"
    assert a2["reasoning_content"] == "second thoughts"
    # The second request carries the first answer without its reasoning.
    msgs = sent_messages(fake)[1]
    prev = [x for x in msgs if x["role"] == "assistant"]
    assert prev == [{"role": "assistant", "content": "One."}], msgs
    raw = fake.chat_requests()[1]["raw"]
    assert b"reasoning_content" not in raw and b"first thoughts" not in raw


def test_send_reasoning_sends_it_back(fake, mount):
    m = cmount(mount, send_reasoning=True)
    mkconv(m, "s")
    fake.enqueue(Reply(text="One.", reasoning="kept thoughts",
                       reasoning_key="reasoning_content"))
    prompt(m, "s", "q1")
    reply(m, "s")
    prompt(m, "s", "q2")
    reply(m, "s")
    prev = [x for x in sent_messages(fake)[1] if x["role"] == "assistant"]
    assert prev == [{"role": "assistant", "content": "One.",
                     "reasoning_content": "kept thoughts"}], prev


def test_reasoning_of_a_reply_that_does_not_stream(fake, mount):
    m = cmount(mount, stream=False)
    mkconv(m, "n")
    fake.enqueue(Reply(text="Whole.", reasoning="quiet thoughts",
                       reasoning_key="reasoning_content"))
    prompt(m, "n", "q")
    assert reply(m, "n") == "Whole."
    fake.enqueue(Reply(text="Again.", reasoning="more thoughts",
                       reasoning_key="reasoning"))
    prompt(m, "n", "q2")
    assert reply(m, "n") == "Again."
    assert reasoning_text(m, "n") == "quiet thoughts\n\nmore thoughts\n"
    assert read_text(cdir(m, "n") / "stream") == (
        MARK + "Whole.\n" + MARK + "Again.\n")
    a1, a2 = assistants(m, "n")
    assert a1["reasoning_content"] == "quiet thoughts"
    assert a2["reasoning_content"] == "more thoughts"


@pytest.mark.parametrize("stream", [True, False])
def test_split_think_tags(fake, mount, stream):
    m = cmount(mount, split_think_tags=True, stream=stream)
    mkconv(m, "k")
    # Streamed, the tags arrive cut across chunks ("<thi", "nk>", ...).
    fake.enqueue(Reply(text="Final answer.", think="weigh the options"))
    prompt(m, "k", "q")
    assert reply(m, "k") == "Final answer."
    assert reasoning_text(m, "k") == "weigh the options\n"
    assert read_text(cdir(m, "k") / "stream") == MARK + "Final answer.\n"
    (a,) = assistants(m, "k")
    assert a["content"] == "Final answer."
    assert a["reasoning_content"] == "weigh the options"
    # A <think> that does not start the answer is text.
    fake.enqueue(Reply(chunks=["Use ", "<thi", "nk> tags."]))
    prompt(m, "k", "q2")
    assert reply(m, "k") == "Use <think> tags."


def test_think_tags_are_text_by_default(fake, mount):
    m = cmount(mount)
    mkconv(m, "d")
    fake.enqueue(Reply(text="Final.", think="hmm"))
    prompt(m, "d", "q")
    assert reply(m, "d") == "<think>hmm</think>\n\nFinal."
    assert not (cdir(m, "d") / "reasoning").exists()
    assert "reasoning_content" not in assistants(m, "d")[0]


def test_reasoning_in_a_tool_round(fake, mount, tmp_path):
    m = cmount(mount)
    add_tool(m, tmp_path, "clock", "#!/bin/sh\necho noon\n")
    mkconv(m, "tr")
    fake.enqueue(Reply(reasoning="need the time",
                       reasoning_key="reasoning_content",
                       tool_calls=[{"name": "clock", "arguments": {}}]),
                 Reply(text="It is noon.", reasoning="got it",
                       reasoning_key="reasoning_content"))
    prompt(m, "tr", "what time is it")
    assert reply(m, "tr") == "It is noon."
    call, final = assistants(m, "tr")
    assert call["tool_calls"] and call["reasoning_content"] == "need the time"
    assert final["reasoning_content"] == "got it"
    assert reasoning_text(m, "tr") == "need the time\n\ngot it\n"
    st = read_text(cdir(m, "tr") / "stream")
    assert st.startswith(MARK) and st.endswith(MARK + "It is noon.\n"), st
    # The follow-up request carries the call without its reasoning.
    raw = fake.chat_requests()[1]["raw"]
    assert b"need the time" not in raw and b"reasoning_content" not in raw


# ----------------------------------------------------------------- stats

def check_stats(a, model=LLAMA):
    s = a["lmsfs_stats"]
    assert s["model"] == model, s
    for k in ("prompt_tokens", "completion_tokens"):
        assert isinstance(s[k], int) and s[k] >= 0, s
    assert s["ttft_ms"] >= 0 and s["duration_ms"] > 0, s
    assert s["tokens_per_second"] > 0, s
    assert s["finish_reason"] in ("stop", "tool_calls"), s
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_stats_on_every_assistant_line_never_sent(fake, mount, tmp_path,
                                                  stream):
    m = cmount(mount, stream=stream)
    add_tool(m, tmp_path, "clock", "#!/bin/sh\necho noon\n")
    mkconv(m, "st")
    sstats = {"tokens_per_second": 42.5, "time_to_first_token": 0.25,
              "generation_time": 0.5, "stop_reason": "eosFound",
              "draft_model": "tiny", "total_draft_tokens_count": 9,
              "accepted_draft_tokens_count": 6,
              "rejected_draft_tokens_count": 3,
              "ignored_draft_tokens_count": 0}
    fake.enqueue(Reply(text="Plain.", reasoning="r", stats=sstats,
                       stream_stats=sstats, reasoning_tokens=7,
                       usage={"prompt_tokens": 11, "completion_tokens": 21,
                              "total_tokens": 32,
                              "completion_tokens_details":
                                  {"reasoning_tokens": 7}}))
    prompt(m, "st", "one")
    reply(m, "st")
    fake.enqueue(Reply(tool_calls=[{"name": "clock", "arguments": {}}]),
                 Reply(text="Noon."))
    prompt(m, "st", "two")
    reply(m, "st")
    a1, call, a3 = assistants(m, "st")
    s1 = check_stats(a1)
    assert (s1["prompt_tokens"], s1["completion_tokens"],
            s1["reasoning_tokens"]) == (11, 21, 7)
    assert s1["stats"] == sstats
    assert s1["ttft_ms"] == 250 and s1["tokens_per_second"] == 42.5
    assert check_stats(call)["finish_reason"] == "tool_calls"
    assert check_stats(a3)["finish_reason"] == "stop"
    # jq adds them up; nothing lmsfs keeps is ever sent.
    r = sh(m, "jq -s '[.[].lmsfs_stats.completion_tokens // 0] | add' "
              "st/messages.jsonl")
    assert r.returncode == 0, r.stderr
    total = sum(a["lmsfs_stats"]["completion_tokens"]
                for a in (a1, call, a3))
    assert int(r.stdout) == total
    for req in fake.chat_requests():
        assert b"lmsfs" not in req["raw"], req["raw"][:300]


def test_stats_of_a_cancelled_answer(fake, mount):
    m = cmount(mount)
    mkconv(m, "c")
    fake.enqueue(Reply(text=" ".join("w%d" % i for i in range(40)),
                       delay=0.1))
    prompt(m, "c", "long")
    wait_for(lambda: "w3" in read_text(cdir(m, "c") / "stream"), timeout=10)
    assert sh(m, "echo cancel > c/.ctl").returncode == 0
    wait_for(lambda: assistants(m, "c"), timeout=10)
    (a,) = assistants(m, "c")
    assert a["lmsfs_status"] == "cancelled"
    assert a["lmsfs_stats"]["model"] == LLAMA
    assert a["lmsfs_stats"]["duration_ms"] > 0


def test_metrics_tokens_per_model(fake, mount):
    m = cmount(mount, model=None)
    for name, model in (("a", LLAMA), ("b", "qwen2.5"), ("c", LLAMA)):
        mkconv(m, name)
        assert sh(m, "echo %s > %s/model" % (model, name)).returncode == 0
        fake.enqueue(Reply(text="ok", usage={
            "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "completion_tokens_details": {"reasoning_tokens": 2}}))
        prompt(m, name, "hi")
        reply(m, name)
    text = read_text(m.path / "metrics")
    got = {}
    for mo, d, v in re.findall(
            r'^lmsfs_model_tokens_total\{model="([^"]+)",direction="(\w+)"\}'
            r' (\d+)$', text, re.M):
        got[(mo, d)] = int(v)
    q = "lmstudio-community/qwen2.5-7b-instruct"
    assert got == {(LLAMA, "in"): 20, (LLAMA, "out"): 10,
                   (LLAMA, "reasoning"): 4, (q, "in"): 10, (q, "out"): 5,
                   (q, "reasoning"): 2}, text
    assert "# TYPE lmsfs_model_tokens_total counter" in text


def test_stats_counted_once_when_cancelled_in_a_tool_round(fake, mount,
                                                           tmp_path):
    m = cmount(mount)
    add_tool(m, tmp_path, "slow", "#!/bin/sh\nsleep 1\necho late\n")
    mkconv(m, "cx")
    fake.enqueue(Reply(tool_calls=[{"name": "slow", "arguments": {}}],
                       usage={"prompt_tokens": 10, "completion_tokens": 7,
                              "total_tokens": 17}))
    prompt(m, "cx", "go")
    wait_for(lambda: "[lmsfs] tool slow" in read_text(cdir(m, "cx") /
                                                        "stream"),
             timeout=10)
    assert sh(m, "echo cancel > cx/.ctl").returncode == 0
    # (The tool is not stopped by a cancel on this branch: the round ends
    # when it does, then the answer is marked cancelled.)
    wait_for(lambda: status(m, "cx")["state"] != "generating", timeout=15)
    call, marked = assistants(m, "cx")
    assert call["lmsfs_stats"]["completion_tokens"] == 7
    assert marked["lmsfs_status"] == "cancelled"
    assert marked["lmsfs_stats"] == {"model": LLAMA}, marked
    r = sh(m, "jq -s '[.[].lmsfs_stats.completion_tokens // 0] | add' "
              "cx/messages.jsonl")
    assert r.returncode == 0 and int(r.stdout) == 7, (r.stdout, r.stderr)


def test_reasoning_cannot_be_replaced_by_rename(fake, mount):
    """reasoning is append-only like stream: a rename over it (once it
    holds something) is refused and leaves it as it was; moving it away
    still works."""
    m = cmount(mount)
    c = mkconv(m, "rr")
    fake.enqueue(Reply(text="Done.", reasoning="thinking hard",
                       reasoning_key="reasoning_content"))
    prompt(m, "rr", "go")
    assert reply(m, "rr") == "Done."
    before = reasoning_text(m, "rr")
    assert "thinking hard" in before
    assert sh(m, "printf forged > rr/tmp").returncode == 0
    r = sh(m, "mv rr/tmp rr/reasoning")
    assert r.returncode != 0 and "not permitted" in r.stderr, r
    assert reasoning_text(m, "rr") == before
    assert (c / "tmp").exists()
    assert sh(m, "mv rr/reasoning rr/old-reasoning").returncode == 0
    assert read_text(c / "old-reasoning") == before

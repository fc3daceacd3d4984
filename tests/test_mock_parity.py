"""The built-in mock provider goes through the same conversation, stream,
history and tool code as a real server: the same scenarios run against the
fake LM Studio and against provider=mock, with provider-neutral checks."""

import json
import os

import pytest

from conftest import run, wait_for
from conv_helpers import (LLAMA, history, mkconv, opts, prompt, reply, sh,
                          status, stream_text)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["fake", "mock"])
def provider(request, mount):
    """A factory: provider(**options) -> (mount, fake or None)."""
    fake = request.getfixturevalue("fake") if request.param == "fake" else None

    def make(**kw):
        if fake is None:
            kw.setdefault("mock_delay", "2ms")
            m = mount(args=opts(provider="mock", default_model="mock-1b-instruct",
                                **kw))
        else:
            m = mount(base_url=fake.url, args=opts(default_model=LLAMA, **kw))
        return m, fake
    return make


@pytest.fixture
def pmount(provider):
    return provider()


def chat_count(fake):
    return len(fake.chat_requests()) if fake else None


def test_ask_stream_history(pmount):
    m, _ = pmount
    mkconv(m, "a")
    prompt(m, "a", "first question")
    out = reply(m, "a")
    assert out
    h = history(m, "a")
    assert [x["role"] for x in h] == ["user", "assistant"]
    assert h[0]["content"] == "first question"
    assert h[1]["content"] == out
    assert stream_text(m, "a") == out + "\n"
    assert status(m, "a")["state"] == "idle"


def test_queue_answers_in_order(pmount):
    m, _ = pmount
    mkconv(m, "q")
    for w in ("one", "two", "three"):
        prompt(m, "q", w)
    wait_for(lambda: status(m, "q")["answered"] == 3 and
             status(m, "q")["state"] == "idle", timeout=20)
    h = history(m, "q")
    assert [x["content"] for x in h if x["role"] == "user"] == [
        "one", "two", "three"]
    assert [x["role"] for x in h] == ["user", "assistant"] * 3


def test_fork_and_rewind(pmount):
    m, fake = pmount
    mkconv(m, "src")
    prompt(m, "src", "alpha")
    reply(m, "src")
    prompt(m, "src", "beta")
    reply(m, "src")
    n = chat_count(fake)
    r = sh(m, "cp -r src fork")
    assert r.returncode == 0, r.stderr
    assert history(m, "fork") == history(m, "src")
    assert chat_count(fake) == n
    r = sh(m, "sed -i '3,$d' fork/messages.jsonl")
    assert r.returncode == 0, r.stderr
    prompt(m, "fork", "gamma")
    reply(m, "fork")
    assert [x["content"] for x in history(m, "fork") if x["role"] == "user"] \
        == ["alpha", "gamma"]
    assert len(history(m, "src")) == 4


def test_cancel_keeps_partial_text(provider):
    m, fake = provider(mock_delay="50ms")
    text = " ".join("word%d" % i for i in range(60))
    if fake:
        from fake_lms import Reply
        fake.enqueue(Reply(text=text, delay=0.05))
    mkconv(m, "c")
    prompt(m, "c", text)
    wait_for(lambda: status(m, "c").get("generating", {}).get("tokens", 0) >= 2)
    r = sh(m, "echo cancel > c/.ctl")
    assert r.returncode == 0, r.stderr
    r = sh(m, "cat c/.reply")
    assert r.returncode != 0 and "canceled" in r.stderr.lower(), r
    st = status(m, "c")
    assert st["state"] == "failed" and st["error"]["class"] == "cancelled"
    last = history(m, "c")[-1]
    assert last["role"] == "assistant" and last["lmsfs_status"] == "cancelled"
    assert last["content"] and len(last["content"]) < len(text)
    assert "[lmsfs] cancelled" in stream_text(m, "c")


def test_tool_round(pmount, tmp_path):
    m, fake = pmount
    src = os.path.join(REPO, "examples", "tools", "calc")
    r = run(["cp", src, str(m.path / "tools" / "calc")])
    assert r.returncode == 0, r.stderr
    mkconv(m, "t")
    if fake:
        from fake_lms import Reply
        fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": "calc",
                                        "arguments": {"expr": "6*7"}}]))
        fake.enqueue(Reply(text="It is 42."))
    prompt(m, "t", "use calc with expr=6*7 please")
    out = reply(m, "t")
    assert "42" in out
    h = history(m, "t")
    assert [x["role"] for x in h] == ["user", "assistant", "tool", "assistant"]
    call = h[1]["tool_calls"][0]
    assert call["function"]["name"] == "calc"
    assert json.loads(call["function"]["arguments"]) == {"expr": "6*7"}
    assert h[2]["tool_call_id"] == call["id"]
    assert h[2]["content"].strip() == "42"
    s = stream_text(m, "t")
    assert "[lmsfs] tool calc " in s and "[lmsfs] tool calc done: exit 0" in s


def test_failure_is_marked_and_next_prompt_works(provider):
    m, fake = provider(max_retries=0, max_retries_stream=0)
    mkconv(m, "f")
    if fake:
        from fake_lms import HttpError
        fake.enqueue(HttpError(500, "boom"))
        prompt(m, "f", "please fail")
    else:
        prompt(m, "f", "please fail mock:error")
    r = sh(m, "cat f/.reply")
    assert r.returncode != 0
    st = status(m, "f")
    assert st["state"] == "failed" and st["error"]["class"] == "server_error"
    assert "[lmsfs] error server_error: " in stream_text(m, "f")
    prompt(m, "f", "and now?")
    assert reply(m, "f")
    assert status(m, "f")["state"] == "idle"

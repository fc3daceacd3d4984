"""What lmsfs sends is well formed whatever the history holds (README
"What is sent"): consecutive user messages are joined, tool calls left
without a result by a rewind are answered with a short tool message. The
history on disk stays exactly as written. Driven through the mount against
a fake server that, like strict chat templates, refuses anything else."""

import json

from conftest import read_text, write_text
from conv_helpers import (LLAMA, chat_bodies, echo_of, history, mkconv, opts,
                          prompt, reply, sh)


def strict_mount(fake, mount):
    fake.strict_messages = True
    return mount(args=opts(default_model=LLAMA))


def test_consecutive_user_messages_are_sent_joined(fake, mount):
    m = strict_mount(fake, mount)
    c = mkconv(m, "c")
    # A history written by hand that ends in a question nobody answered.
    lines = [{"role": "user", "content": "first question"},
             {"role": "assistant", "content": "first answer"},
             {"role": "user", "content": "unanswered"}]
    write_text(c / "messages.jsonl",
               "".join(json.dumps(x) + "\n" for x in lines))
    before = read_text(c / "messages.jsonl")
    prompt(m, "c", "and now?")
    out = reply(m, "c")
    assert out.rstrip("\n") == echo_of("unanswered\n\nand now?"), out
    sent = [x for x in chat_bodies(fake)[-1]["messages"]
            if x["role"] != "system"]
    assert sent[-1] == {"role": "user", "content": "unanswered\n\nand now?"}
    assert [x["role"] for x in sent] == ["user", "assistant", "user"]
    # The history is as written, plus the new turn.
    assert read_text(c / "messages.jsonl").startswith(before)
    assert [x["role"] for x in history(m, "c")] == [
        "user", "assistant", "user", "user", "assistant"]


def test_rewind_after_a_tool_turn_sends_a_result_for_every_call(fake, mount,
                                                                 tmp_path):
    m = strict_mount(fake, mount)
    c = mkconv(m, "c")
    lines = [{"role": "user", "content": "use the tool"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_9", "type": "function",
                  "function": {"name": "t", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "call_9", "content": "ok"},
             {"role": "assistant", "content": "done"}]
    write_text(c / "messages.jsonl",
               "".join(json.dumps(x) + "\n" for x in lines))
    # Rewind to just after the call, as the undo recipe does.
    r = sh(m, "sed -i '3,$d' c/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert [x["role"] for x in history(m, "c")] == ["user", "assistant"]
    prompt(m, "c", "try again")
    out = reply(m, "c")
    assert out.rstrip("\n") == echo_of("try again"), out
    sent = [x for x in chat_bodies(fake)[-1]["messages"]
            if x["role"] != "system"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9",
                       "content": "no result: the tool round was cut"}
    assert sent[3] == {"role": "user", "content": "try again"}
    # Not written into the history.
    assert "no result" not in read_text(c / "messages.jsonl")


def test_strict_server_refuses_what_old_lmsfs_sent(fake, mount):
    """The fake's strict mode itself: a malformed list is refused (so the
    tests above would fail if lmsfs sent the history as it is)."""
    import urllib.request
    fake.strict_messages = True
    body = json.dumps({"model": LLAMA, "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    req = urllib.request.Request(fake.url + "/v1/chat/completions",
                                 data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("accepted two user messages in a row")
    except urllib.error.HTTPError as e:
        assert e.code == 400

"""Connections to the server are reused (issue 12, item 3): streamed turns,
in one conversation or several, go over one kept-alive connection; an
answer whose reply stays open after [DONE] is not held back by it; and a
failed transfer (cancel, server error, cut) never leaves a connection that
breaks the next turn. The fake server numbers its connections (req["conn"])."""

import time

import pytest

from conftest import wait_for
from conv_helpers import (FAST_FAIL, ask, cmount, echo_of, mkconv, prompt,
                          reply, sh, slow_reply, status, stream_text,
                          wait_state, qn)
from fake_lms import Disconnect, server_error

# No model list refresh between turns: only chat requests in the way.
QUIET = {"models_ttl": "3600"}


@pytest.mark.parametrize("stream", [True, False])
def test_turns_share_one_connection(fake, mount, stream):
    fake.chunked = True  # a keep-alive server, as LM Studio is
    m = cmount(mount, stream=stream, **QUIET)
    for name in ("a", "b"):
        mkconv(m, name)
    turns = 0
    for i in range(3):
        for name in ("a", "b"):
            assert ask(m, name, "q%d" % i) == echo_of("q%d" % i)
            turns += 1
    chats = fake.chat_requests()
    assert len(chats) == turns
    assert all(bool(r["body"].get("stream")) == stream for r in chats)
    # Six turns in two conversations: one connection (the model list that
    # the first prompt needed came first, on the same one).
    assert len(fake.conns_of(chats)) == 1, [r["conn"] for r in chats]
    assert fake.connections == 1


@pytest.mark.xdist_group("timing")
def test_reply_left_open_after_done_does_not_hold_the_answer(fake, mount):
    """A server that keeps the reply open after [DONE] (and keeps sending)
    costs its connection, not the answer's time."""
    fake.chunked = True
    fake.linger = 8.0
    fake.linger_data = b": keep-alive\n\n"
    m = cmount(mount, **QUIET)
    mkconv(m, "c")
    t0 = time.monotonic()
    assert ask(m, "c", "hello") == echo_of("hello")
    took = time.monotonic() - t0
    assert took < 2.0, "the answer waited %.1f s for the end of the reply" % took
    assert status(m, "c")["state"] == "idle"
    # A flood after [DONE] is cut at its bound too.
    fake.linger = 0.0
    fake.linger_data = b": x\n\n" * 100000
    t0 = time.monotonic()
    assert ask(m, "c", "again") == echo_of("again")
    assert time.monotonic() - t0 < 2.0
    fake.linger_data = b""
    assert ask(m, "c", "third") == echo_of("third")


@pytest.mark.xdist_group("timing")
def test_reply_trickling_after_done_does_not_hold_the_answer(fake, mount):
    """A server that trickles a few bytes every 50 ms after [DONE] (never
    enough for the byte bound) is cut by the time bound: the answer is
    not held for the whole trickle, and the next turn works."""
    fake.chunked = True
    fake.linger = 6.0
    fake.linger_every = 0.05
    fake.linger_data = b": ping\n\n"
    m = cmount(mount, **QUIET)
    mkconv(m, "c")
    for q in ("one", "two"):
        t0 = time.monotonic()
        assert ask(m, "c", q) == echo_of(q)
        took = time.monotonic() - t0
        assert took < 2.0, "the answer waited %.1f s for the trickle" % took
        assert status(m, "c")["state"] == "idle"
    fake.linger = 0.0
    assert ask(m, "c", "three") == echo_of("three")


def test_failed_transfers_leave_no_poisoned_connection(fake, mount):
    fake.chunked = True
    cfg = dict(FAST_FAIL)
    cfg.update(QUIET)
    m = cmount(mount, **cfg)
    mkconv(m, "c")
    assert ask(m, "c", "one") == echo_of("one")

    # Cancelled mid-stream: the next prompt works.
    r, _ = slow_reply(words=40, delay=0.1)
    fake.enqueue(r)
    prompt(m, "c", "long")
    wait_for(lambda: "w2" in stream_text(m, "c"), timeout=10)
    assert sh(m, "echo cancel > %s/.ctl" % qn("c")).returncode == 0
    wait_for(lambda: status(m, "c")["answered"] >= 2 and
             status(m, "c")["state"] == "failed", timeout=10)
    assert status(m, "c")["error"]["class"] == "cancelled"
    assert ask(m, "c", "after cancel") == echo_of("after cancel")

    # A server error (the connection stays up on the server's side).
    fake.enqueue(server_error())
    prompt(m, "c", "boom")
    wait_for(lambda: status(m, "c")["answered"] >= 4 and
             status(m, "c")["state"] == "failed", timeout=10)
    assert status(m, "c")["error"]["class"] == "server_error"
    assert ask(m, "c", "after error") == echo_of("after error")

    # The server cuts the stream.
    fake.enqueue(Disconnect(after_chunks=2))
    prompt(m, "c", "cut")
    wait_for(lambda: status(m, "c")["answered"] >= 6 and
             status(m, "c")["state"] == "failed", timeout=10)
    assert status(m, "c")["error"]["class"] == "protocol"
    assert ask(m, "c", "after cut") == echo_of("after cut")
    # Every one of these was answered on the first try.
    assert wait_state(m, "c", "idle")["answered"] == 7
    assert len(fake.chat_requests()) == 7


def test_fake_numbers_connections_and_holds_replies_open(fake):
    """The fake server's own knobs used above: connection numbers, and a
    chunked reply held open after [DONE] (srv.linger, srv.linger_data)."""
    import http.client
    import json
    fake.chunked = True
    fake.linger = 0.3
    fake.linger_data = b": ping\n\n"
    body = json.dumps({"model": "meta-llama-3.1-8b-instruct", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    c1 = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    c2 = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        for c in (c1, c1, c2):
            t0 = time.monotonic()
            c.request("POST", "/v1/chat/completions", body,
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            assert time.monotonic() - t0 >= 0.3
            assert data.index(b"[DONE]") < data.index(b": ping")
    finally:
        c1.close()
        c2.close()
    reqs = fake.chat_requests()
    assert [r["conn"] for r in reqs] == [1, 1, 2]
    assert reqs[0]["peer"] == reqs[1]["peer"] != reqs[2]["peer"]
    assert fake.connections == 2 and fake.conns_of(reqs) == {1, 2}

"""The circuit breaker, as a user meets it through the mount.

It counts failed requests (one per prompt, once its retries are over), not
attempts; a 429 neither opens it nor resets the count; a half-open probe
that ends without a verdict (cancelled, its conversation removed, rate
limited) lets the next request probe; and every refusal says that the
circuit is open *and* which failure opened it: in .status, in stream and in
the refused write() (.status rejected_write, the log).

Waits are on conditions with deadlines; every filesystem access has a
timeout (conftest/conv_helpers helpers)."""

import errno
import re

import pytest

from conftest import read_json, wait_for
from conv_helpers import (LLAMA, echo_of, mkconv, opts, prompt, reply,
                          reply_errno, sh, status, stream_text, wait_state)
from fake_lms import Garbage, Hang, HttpError, rate_limited, server_error

CHAT = ("POST", "/v1/chat/completions")


def bmount(mount, **kw):
    kw.setdefault("default_model", LLAMA)
    kw.setdefault("initial_backoff", "10ms")
    kw.setdefault("max_backoff", "20ms")
    return mount(args=opts(**kw))


def breaker(m):
    return read_json(m.path / "health")["breaker"]


def answered(m, name, n, timeout=15):
    return wait_for(lambda: status(m, name)["answered"] >= n and
                    status(m, name)["state"] != "generating",
                    timeout=timeout,
                    message="%s: %d answers" % (name, n))


def write_errno(m, name, text):
    """echo TEXT > NAME/prompt: 0, or the errno the shell reported."""
    r = prompt(m, name, text, check=False)
    if r.returncode == 0:
        return 0
    assert "Device or resource busy" in r.stderr, r.stderr
    return errno.EBUSY


def slow_500(message, delay):
    return HttpError(500, {"error": {"message": message,
                                     "type": "server_error",
                                     "code": "internal_error"}}, delay=delay)


# What names the failure that opened the breaker, wherever it is shown.
def opened_by(n, cls, text):
    return re.compile(
        r"circuit open after %d failed requests? in a row \(last: %s: "
        r"[^)]*%s[^)]*\); next probe in \d+ (s|ms)" % (n, cls, re.escape(text)))


def test_breaker_counts_failed_requests_not_attempts(fake, mount):
    """A prompt whose three attempts all get HTTP 500 is one failed
    request: with breaker_threshold=2 the breaker stays closed, the prompt
    reports its own server_error after all its attempts (before: the
    second attempt opened the breaker and the prompt said circuit_open);
    a second failed prompt opens it."""
    m = bmount(mount, breaker_threshold=2, breaker_reset="60s",
               max_retries_stream=2)
    fake.routes[CHAT] = server_error("the GPU is on fire")
    mkconv(m, "a")
    prompt(m, "a", "first")
    st = wait_state(m, "a", "failed")
    assert st["error"]["class"] == "server_error", st
    assert "the GPU is on fire" in st["error"]["message"], st
    assert st["last"]["attempts"] == 3 and st["last"]["retries"] == 2, st
    assert reply_errno(m, "a") == errno.EIO
    assert "[lmsfs] error server_error:" in stream_text(m, "a")
    assert "circuit_open" not in stream_text(m, "a")
    b = breaker(m)
    assert b["state"] == "closed" and b["consecutive_failures"] == 1, b
    assert len(fake.chat_requests()) == 3

    # The second failed request (three attempts again) opens it.
    prompt(m, "a", "second")
    answered(m, "a", 2)
    st = status(m, "a")
    assert st["error"]["class"] == "server_error", st
    assert st["last"]["attempts"] == 3, st
    b = breaker(m)
    assert b["state"] == "open" and b["consecutive_failures"] == 2 and \
        b["times_opened"] == 1, b
    assert write_errno(m, "a", "refused") == errno.EBUSY
    assert len(fake.chat_requests()) == 6


def test_rate_limited_then_server_error_keep_the_breaker_closed(fake, mount):
    """The issue's case, with the default breaker_threshold (5) and
    retries (2 for streams): one rate-limited prompt (3 attempts) then one
    HTTP 500 prompt (3 attempts). Before, those 5 attempts opened the
    breaker, the 500 prompt said circuit_open and every conversation got
    EBUSY; now the 500 prompt reports server_error: HTTP 500, only it
    counts, and other conversations go on."""
    m = bmount(mount)
    b = breaker(m)
    assert b["threshold"] == 5, b
    fake.enqueue(*([rate_limited(0)] * 3 + [server_error("boom")] * 3))
    mkconv(m, "busy")
    prompt(m, "busy", "too many")
    st = wait_state(m, "busy", "failed")
    assert st["error"]["class"] == "rate_limited", st
    assert st["last"]["attempts"] == 3, st
    assert breaker(m)["consecutive_failures"] == 0
    mkconv(m, "broken")
    prompt(m, "broken", "five hundred")
    st = wait_state(m, "broken", "failed")
    assert st["error"]["class"] == "server_error", st
    assert "HTTP 500" in st["error"]["message"] and \
        "boom" in st["error"]["message"], st
    assert st["last"]["attempts"] == 3, st
    s = stream_text(m, "broken")
    assert "[lmsfs] error server_error: HTTP 500" in s, s
    b = breaker(m)
    assert b["state"] == "closed" and b["consecutive_failures"] == 1, b
    mkconv(m, "other")
    assert write_errno(m, "other", "still works") == 0
    assert reply(m, "other").rstrip("\n") == echo_of("still works")
    assert breaker(m)["consecutive_failures"] == 0


def test_429_never_opens_the_breaker_nor_resets_it(fake, mount):
    """breaker_threshold=2, no retries: a 500 counts 1; any number of 429s
    leave the breaker closed and the count at 1 (the server is alive but
    busy: not a failure, not a success); the next 500 makes 2 and opens
    it. Before, the first 429 counted and opened it."""
    m = bmount(mount, breaker_threshold=2, breaker_reset="60s",
               max_retries_stream=0)
    mkconv(m, "k")
    fake.enqueue(server_error(), *[rate_limited(0)] * 4, server_error())
    want = [("server_error", 1)] + [("rate_limited", 1)] * 4
    for i, (cls, cons) in enumerate(want):
        prompt(m, "k", "p%d" % i)
        answered(m, "k", i + 1)
        st = status(m, "k")
        assert st["error"]["class"] == cls, (i, st)
        b = breaker(m)
        assert b["state"] == "closed" and b["consecutive_failures"] == cons, \
            (i, b)
    prompt(m, "k", "p5")
    answered(m, "k", 6)
    assert status(m, "k")["error"]["class"] == "server_error"
    b = breaker(m)
    assert b["state"] == "open" and b["consecutive_failures"] == 2, b
    assert len(fake.chat_requests()) == 6


@pytest.mark.xdist_group("timing")
def test_a_retry_is_not_turned_into_circuit_open(fake, mount):
    """A prompt waiting to retry after an HTTP 500 while another
    conversation's failure opens the breaker ends with its own error
    (server_error, and why it was not retried), not circuit_open; both
    failed requests count."""
    m = bmount(mount, breaker_threshold=1, breaker_reset="60s",
               max_retries_stream=2, initial_backoff="3s", max_backoff="3s")
    fake.enqueue(server_error("overloaded"), Garbage(b"data: {broken\n\n"))
    mkconv(m, "a")
    mkconv(m, "b")
    prompt(m, "a", "will retry")
    # a's first attempt failed; it waits 1.5-3 s before its retry.
    wait_for(lambda: re.search(r"a: server_error .*; retry 1 in", m.log()),
             timeout=10, message="a's first retry scheduled")
    prompt(m, "b", "garbled")
    st = wait_state(m, "b", "failed")
    assert st["error"]["class"] == "protocol", st
    st = wait_state(m, "a", "failed", timeout=10)
    assert st["error"]["class"] == "server_error", st
    assert "overloaded" in st["error"]["message"], st
    assert "not retried: the circuit breaker opened" in \
        st["error"]["message"], st
    assert st["last"]["attempts"] == 1, st
    assert "[lmsfs] error server_error:" in stream_text(m, "a")
    b = breaker(m)
    assert b["state"] == "open" and b["consecutive_failures"] == 2, b
    assert len(fake.chat_requests()) == 2


def test_refusal_names_the_failure_that_opened_the_breaker(fake, mount):
    """threshold 2: three prompts queued at once, the first two fail with
    HTTP 500 (slowly, so the third is queued before the breaker opens) and
    the third is refused by the breaker. The refusal says the circuit is
    open, after how many failed requests, the last failure (class and
    message) and when the next probe is: in .status, in stream, from
    .reply (EBUSY), and for a refused write() in .status rejected_write
    and the log."""
    m = bmount(mount, breaker_threshold=2, breaker_reset="60s",
               max_retries_stream=0)
    fake.routes[CHAT] = slow_500("the GPU is on fire", 1.0)
    mkconv(m, "a")
    for i in range(3):
        prompt(m, "a", "q%d" % i)
    answered(m, "a", 3)
    assert len(fake.chat_requests()) == 2
    want = opened_by(2, "server_error", "the GPU is on fire")
    st = status(m, "a")
    assert st["error"]["class"] == "circuit_open", st
    assert want.search(st["error"]["message"]), st
    assert "HTTP 500" in st["error"]["message"], st
    assert st["last"]["attempts"] == 0, st
    s = stream_text(m, "a")
    line = [ln for ln in s.splitlines()
            if ln.startswith("[lmsfs] error circuit_open: ")]
    assert len(line) == 1 and want.search(line[0]), s
    assert s.count("[lmsfs] error server_error: HTTP 500") == 2, s
    assert reply_errno(m, "a") == errno.EBUSY

    mkconv(m, "b")
    r = sh(m, "echo hello > b/prompt")
    assert r.returncode != 0 and "Device or resource busy" in r.stderr, r
    rej = status(m, "b")["rejected_write"]
    assert want.search(rej), rej
    mo = re.search(r"next probe in (\d+) s", rej)
    assert mo and 1 <= int(mo.group(1)) <= 60, rej
    wait_for(lambda: re.search(
        r"conversation b: refused prompt: circuit open after 2 failed "
        r"requests in a row \(last: server_error: [^)]*the GPU is on fire",
        m.log()), timeout=5, message="the refusal in the log")
    assert status(m, "b")["submitted"] == 0
    assert len(fake.chat_requests()) == 2


def open_then_wait_for_probe(m, fake):
    """Opens the breaker (threshold 1) with one HTTP 500 and waits until
    the next request may probe."""
    fake.enqueue(server_error("first failure"))
    mkconv(m, "x")
    prompt(m, "x", "break it")
    wait_state(m, "x", "failed")
    b = breaker(m)
    assert b["state"] == "open" and b["times_opened"] == 1, b
    wait_for(lambda: breaker(m)["next_probe_ms"] == 0, timeout=5)


def end_probe_by_cancel(m):
    r = sh(m, "echo cancel > p/.ctl")
    assert r.returncode == 0, r.stderr
    answered(m, "p", 1)
    assert status(m, "p")["error"]["class"] == "cancelled"


def end_probe_by_rmdir(m):
    r = sh(m, "rm -r p")
    assert r.returncode == 0, r.stderr


@pytest.mark.xdist_group("timing")
@pytest.mark.parametrize("end_probe", [end_probe_by_cancel,
                                       end_probe_by_rmdir],
                         ids=["cancel", "rmdir"])
def test_an_ended_probe_releases_half_open(fake, mount, end_probe):
    """The half-open probe hangs; while it runs other prompts are refused
    (and the refusal names the failure that opened the breaker). When the
    probe is cancelled (`echo cancel > .ctl`) or its conversation removed,
    the next prompt is accepted and probes; its success closes the breaker.
    Before, the breaker stayed half-open with its probe 'out' until
    restart: every prompt got EBUSY, forever."""
    m = bmount(mount, breaker_threshold=1, breaker_reset="1s",
               max_retries_stream=0, timeout="60s")
    open_then_wait_for_probe(m, fake)
    fake.enqueue(Hang(60))
    mkconv(m, "p")
    prompt(m, "p", "the probe")
    wait_for(lambda: breaker(m)["state"] == "half_open", timeout=5)
    fake.wait_requests(2)
    mkconv(m, "q")
    assert write_errno(m, "q", "during the probe") == errno.EBUSY
    rej = status(m, "q")["rejected_write"]

    end_probe(m)
    # The next prompt is accepted at once and is the new probe.
    wait_for(lambda: write_errno(m, "q", "after the probe") == 0,
             timeout=10, message="a prompt accepted after the probe ended")
    assert reply(m, "q").rstrip("\n") == echo_of("after the probe")
    b = breaker(m)
    assert b["state"] == "closed" and b["consecutive_failures"] == 0 and \
        b["times_opened"] == 1, b
    # The refusal during the probe said why.
    assert rej.startswith("prompt: circuit half-open after 1 failed "
                          "request in a row (last: server_error: "), rej
    assert "first failure" in rej, rej


@pytest.mark.xdist_group("timing")
def test_a_rate_limited_probe_releases_half_open(fake, mount):
    """A probe answered with 429 gave no verdict: the breaker does not
    open again (before, the 429 counted as a failure and reopened it for
    breaker_reset); the next prompt is accepted at once and probes."""
    m = bmount(mount, breaker_threshold=1, breaker_reset="1s",
               max_retries_stream=0)
    open_then_wait_for_probe(m, fake)
    fake.enqueue(rate_limited(0))
    mkconv(m, "p")
    prompt(m, "p", "the probe")
    st = wait_state(m, "p", "failed")
    assert st["error"]["class"] == "rate_limited", st
    b = breaker(m)
    assert b["state"] == "half_open" and b["times_opened"] == 1 and \
        b["consecutive_failures"] == 1, b
    mkconv(m, "q")
    assert write_errno(m, "q", "next probe") == 0
    assert reply(m, "q").rstrip("\n") == echo_of("next probe")
    b = breaker(m)
    assert b["state"] == "closed" and b["consecutive_failures"] == 0, b

"""Resilience: which failures are retried and how (exponential backoff with
jitter, Retry-After as a floor, never once text was shown), the circuit
breaker (open, fail fast without traffic, half-open probe, close), and the
metrics file (a small Prometheus text parser checks that the counters match
what the test did).

Every filesystem access has a timeout (conftest/conv_helpers helpers), so a
broken daemon fails a test instead of hanging the suite."""

import errno
import math
import os
import re
import statistics
import time

import pytest

from conftest import (call_with_timeout, listdir, read_json, read_text,
                      wait_for)
from conv_helpers import (LLAMA, cdir, echo_of, history, mkconv, opts,
                          prompt, reply, reply_errno, sh, status, stream_text,
                          wait_state)
from fake_lms import (Disconnect, ErrorEvent, Garbage, Hang, HttpError,
                      Reply, context_too_long, model_not_found, rate_limited,
                      server_error, unauthorized)

CHAT = ("POST", "/v1/chat/completions")


# ----------------------------------------------------------------- helpers

def rmount(mount, **kw):
    kw.setdefault("default_model", LLAMA)
    return mount(args=opts(**kw))


def health(m):
    return read_json(m.path / "health")


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_prometheus(text):
    """Parses the Prometheus text format (0.0.4).

    Returns (samples, types): samples maps (name, frozenset(labels)) to a
    float, types maps a family name to its TYPE. Raises AssertionError on
    anything malformed: a sample line that does not parse, a duplicate
    sample, a sample of a family without a TYPE line, a TYPE after the
    family's samples."""
    samples, types, seen_family = {}, {}, set()
    assert text.endswith("\n"), "metrics text must end with a newline"
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                fam = parts[2]
                assert len(parts) == 4 and parts[3] in (
                    "counter", "gauge", "histogram", "summary",
                    "untyped"), "line %d: bad TYPE: %r" % (n, line)
                assert fam not in seen_family, \
                    "line %d: TYPE after samples of %s" % (n, fam)
                assert fam not in types, "line %d: second TYPE for %s" % (
                    n, fam)
                types[fam] = parts[3]
            elif len(parts) >= 3 and parts[1] == "HELP":
                pass
            continue
        mo = _SAMPLE.match(line)
        assert mo, "line %d: not a sample: %r" % (n, line)
        name, _, lab, value = mo.groups()
        labels = {}
        if lab:
            pos = 0
            while pos < len(lab):
                lm = _LABEL.match(lab, pos)
                assert lm, "line %d: bad labels %r" % (n, lab)
                labels[lm.group(1)] = re.sub(r"\\(.)", r"\1", lm.group(2))
                pos = lm.end()
        if value in ("+Inf", "-Inf", "NaN"):
            v = float(value.replace("Inf", "inf").replace("NaN", "nan"))
        else:
            v = float(value)
        fam = name
        for sfx in ("_bucket", "_sum", "_count"):
            if name.endswith(sfx) and name[:-len(sfx)] in types and \
                    types[name[:-len(sfx)]] in ("histogram", "summary"):
                fam = name[:-len(sfx)]
        assert fam in types, "line %d: sample of %s without TYPE" % (n, fam)
        seen_family.add(fam)
        key = (name, frozenset(labels.items()))
        assert key not in samples, "line %d: duplicate sample %r" % (n, line)
        samples[key] = v
    return samples, types


class Metrics:
    """Parsed metrics with convenient lookups."""

    def __init__(self, text):
        self.text = text
        self.samples, self.types = parse_prometheus(text)

    def get(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, "no sample %s%r in:\n%s" % (
            name, labels, self.text)
        return self.samples[key]

    def labels_of(self, name, label):
        return {dict(k[1]).get(label) for k in self.samples if k[0] == name}

    def buckets(self, fam):
        out = []
        for (name, labels), v in self.samples.items():
            if name == fam + "_bucket":
                le = dict(labels)["le"]
                out.append((math.inf if le == "+Inf" else float(le), v))
        return sorted(out)

    def check_histogram(self, fam):
        assert self.types.get(fam) == "histogram", fam
        b = self.buckets(fam)
        assert b and b[-1][0] == math.inf, b
        counts = [v for _, v in b]
        assert counts == sorted(counts), "%s buckets not cumulative: %r" % (
            fam, b)
        count = self.get(fam + "_count")
        assert b[-1][1] == count, (fam, b[-1], count)
        assert self.get(fam + "_sum") >= 0
        return count


def metrics(m):
    return Metrics(read_text(m.path / "metrics"))


CLASSES = ["unreachable", "timeout", "rate_limited", "auth",
           "model_not_found", "no_model", "model_not_allowed",
           "context_too_long", "bad_request", "server_error", "protocol",
           "circuit_open", "cancelled", "interrupted", "storage",
           "resources"]


def timed_prompt_write(m, name, text):
    """open/write/close of NAME/prompt; returns (errno or 0, seconds the
    failing call (or the whole write+close) took)."""
    path = cdir(m, name) / "prompt"
    data = text.encode() + b"\n"

    def w():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        t0 = time.monotonic()
        try:
            os.write(fd, data)
        except OSError as e:
            took = time.monotonic() - t0
            os.close(fd)
            return e.errno, took
        try:
            os.close(fd)
        except OSError as e:
            return e.errno, time.monotonic() - t0
        return 0, time.monotonic() - t0
    return call_with_timeout(w, timeout=10)


def gaps(reqs):
    t = [r["t"] for r in reqs]
    return [b - a for a, b in zip(t, t[1:])]


# ------------------------------------------------------- metrics parser

def test_prometheus_parser_itself():
    text = ('# HELP a_total A.\n# TYPE a_total counter\na_total 3\n'
            '# TYPE b gauge\nb{x="1",y="q\\"z"} 2.5\n'
            '# TYPE h histogram\nh_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 2\n'
            'h_sum 0.3\nh_count 2\n')
    mt = Metrics(text)
    assert mt.get("a_total") == 3
    assert mt.get("b", x="1", y='q"z') == 2.5
    assert mt.check_histogram("h") == 2
    for bad in ("nolabel_no_type 1\n", "# TYPE a counter\na{x=1} 2\n",
                "# TYPE a counter\na 1\na 2\n", "# TYPE a counter\na one\n"):
        with pytest.raises((AssertionError, ValueError)):
            parse_prometheus(bad)


# --------------------------------------------------------------- backoff

@pytest.mark.xdist_group("timing")
def test_500_500_200_answer_after_3_attempts_growing_jittered_delays(
        fake, mount):
    """Must-show (1): the server answers 500, 500, 200; the answer arrives
    after 3 attempts; the waits grow (b/2..b with b = 200 ms, then 400 ms)
    and are jittered (not the same every time)."""
    m = rmount(mount, initial_backoff="200ms", max_backoff="30s")
    rounds = 4
    g1, g2 = [], []
    for i in range(rounds):
        name = "r%d" % i
        mkconv(m, name)
        before = len(fake.chat_requests())
        fake.enqueue(server_error(), server_error())
        text = "round %d of retries" % i
        t0 = time.monotonic()
        prompt(m, name, text)
        assert reply(m, name).rstrip("\n") == echo_of(text)
        took = time.monotonic() - t0
        reqs = fake.chat_requests()[before:]
        assert len(reqs) == 3, "round %d: %d chat requests" % (i, len(reqs))
        a, b = gaps(reqs)
        print("round %d: gaps %.3f s, %.3f s (answer after %.3f s)"
              % (i, a, b, took))
        # attempt 1 waits in [100, 200] ms, attempt 2 in [200, 400] ms.
        assert 0.09 <= a <= 0.2 + 0.15, (i, a)
        assert 0.19 <= b <= 0.4 + 0.15, (i, b)
        # b >= 200 ms >= a by construction; 50 ms for scheduling noise.
        assert b > a - 0.05, "the second wait is not longer: %r" % ((a, b),)
        g1.append(a)
        g2.append(b)
        last = status(m, name)["last"]
        assert last["attempts"] == 3 and last["retries"] == 2, last
        # Nothing was shown before the retries: no error mark, text once.
        s = stream_text(m, name)
        assert s == echo_of(text) + "\n", s
        assert history(m, name)[-1] == {"role": "assistant",
                                        "content": echo_of(text)}
    assert statistics.mean(g2) > 1.1 * statistics.mean(g1), (g1, g2)
    spread1, spread2 = max(g1) - min(g1), max(g2) - min(g2)
    assert spread1 > 0.005 or spread2 > 0.01, \
        "no jitter: first waits %r, second waits %r" % (g1, g2)
    mt = metrics(m)
    assert mt.get("lmsfs_retries_total") == 2 * rounds
    assert mt.get("lmsfs_requests_total") == 3 * rounds
    assert mt.get("lmsfs_answers_total", outcome="ok") == rounds
    assert mt.get("lmsfs_answers_total", outcome="failed") == 0
    assert mt.get("lmsfs_breaker_state") == 0


@pytest.mark.xdist_group("timing")
def test_backoff_capped_by_max_backoff(fake, mount):
    m = rmount(mount, initial_backoff="100ms", max_backoff="120ms",
               max_retries_stream=3)
    mkconv(m, "cap")
    fake.enqueue(server_error(), server_error(), server_error())
    assert reply_after(m, "cap", "capped") == echo_of("capped")
    g = gaps(fake.chat_requests())
    assert len(g) == 3, g
    # b = 100, then min(200, 120), min(400, 120): every wait <= 120 ms.
    assert 0.045 <= g[0] <= 0.1 + 0.15, g
    for x in g[1:]:
        assert 0.055 <= x <= 0.12 + 0.15, g


def reply_after(m, name, text):
    prompt(m, name, text)
    return reply(m, name, timeout=20).rstrip("\n")


@pytest.mark.parametrize("stream, want", [(True, 3), (False, 4)],
                         ids=["streamed-2-retries", "plain-3-retries"])
def test_max_retries_then_server_error(fake, mount, stream, want):
    m = rmount(mount, initial_backoff="10ms", max_backoff="20ms",
               stream=stream)
    mkconv(m, "mx")
    fake.routes[CHAT] = server_error("still broken")
    prompt(m, "mx", "never works")
    st = wait_state(m, "mx", "failed", timeout=15)
    assert st["error"]["class"] == "server_error", st
    assert "still broken" in st["error"]["message"], st
    assert st["last"]["attempts"] == want, st
    assert st["last"]["retries"] == want - 1, st
    assert reply_errno(m, "mx") == errno.EIO
    time.sleep(0.2)
    assert len(fake.chat_requests()) == want
    mt = metrics(m)
    assert mt.get("lmsfs_retries_total") == want - 1
    assert mt.get("lmsfs_failures_total", **{"class": "server_error"}) == 1
    assert mt.get("lmsfs_answers_total", outcome="failed") == 1
    # `want` (< 5) consecutive failures: the breaker stays closed; the
    # server comes back and the next prompt works.
    del fake.routes[CHAT]
    assert reply_after(m, "mx", "works now") == echo_of("works now")


NOT_RETRIED = [
    pytest.param(lambda: HttpError(400, "bad"), "bad_request",
                 errno.EINVAL, id="400"),
    pytest.param(lambda: unauthorized(), "auth", errno.EACCES, id="401"),
    pytest.param(lambda: HttpError(403, "forbidden"), "auth", errno.EACCES,
                 id="403"),
    pytest.param(lambda: HttpError(404, "Unexpected endpoint"),
                 "bad_request", errno.EINVAL, id="404"),
    pytest.param(lambda: context_too_long(), "context_too_long",
                 errno.E2BIG, id="context"),
    pytest.param(lambda: model_not_found(LLAMA), "model_not_found",
                 errno.ENOENT, id="model-not-found"),
    pytest.param(lambda: Garbage(b"data: {broken\n\n"), "protocol",
                 errno.EPROTO, id="garbage"),
]


@pytest.mark.parametrize("make, cls, err", NOT_RETRIED)
def test_not_retried(fake, mount, make, cls, err):
    m = rmount(mount, initial_backoff="10ms", breaker_threshold=1000)
    mkconv(m, "nr")
    fake.enqueue(make(), make(), make())
    prompt(m, "nr", "once only")
    st = wait_state(m, "nr", "failed")
    assert st["error"]["class"] == cls, st
    assert st["last"]["attempts"] == 1 and st["last"]["retries"] == 0, st
    assert reply_errno(m, "nr") == err
    time.sleep(0.15)
    assert len(fake.chat_requests()) == 1
    assert metrics(m).get("lmsfs_retries_total") == 0


@pytest.mark.parametrize("make", [
    pytest.param(lambda: HttpError(502, b"<html>bad gateway</html>"),
                 id="502-html"),
    pytest.param(lambda: HttpError(503, "loading", {"Retry-After": "0"}),
                 id="503"),
    pytest.param(lambda: HttpError(504, {"error": {"message": "gw"}}),
                 id="504"),
    pytest.param(lambda: rate_limited(0), id="429"),
    pytest.param(lambda: Disconnect(before_headers=True), id="reset"),
])
def test_retried_then_answer(fake, mount, make, request):
    m = rmount(mount, initial_backoff="10ms", max_backoff="20ms")
    mkconv(m, "rt")
    fake.enqueue(make())
    assert reply_after(m, "rt", "second time lucky") == \
        echo_of("second time lucky")
    last = status(m, "rt")["last"]
    assert last["attempts"] == last["retries"] + 1, last
    if "reset" not in request.node.name:
        assert last["retries"] >= 1, last
    # (A connection closed before any byte on a reused connection may be
    # retried by libcurl itself; either way the request is sent again.)
    assert len(fake.chat_requests()) >= 2
    assert "[lmsfs]" not in stream_text(m, "rt")


def test_timeout_is_retried(fake, mount):
    m = rmount(mount, timeout="1s", initial_backoff="10ms")
    mkconv(m, "to")
    fake.enqueue(Hang(30))
    t0 = time.monotonic()
    assert reply_after(m, "to", "slow server") == echo_of("slow server")
    took = time.monotonic() - t0
    last = status(m, "to")["last"]
    assert last["retries"] == 1 and last["attempts"] == 2, last
    print("a hung first attempt cost %.2f s with timeout=1s" % took)
    assert took < 20, took


def test_connect_failure_retried_until_server_is_back(fake, mount):
    """The server is down when the answer starts (the prompt is accepted
    thanks to the cached model list): the refused connection is retried
    with backoff, and the server is back before the retry."""
    m = rmount(mount, initial_backoff="600ms", max_backoff="2s",
               models_ttl="60s", breaker_threshold=1000)
    mkconv(m, "cf")
    assert reply_after(m, "cf", "warm up") == echo_of("warm up")
    n_before = len(fake.chat_requests())
    fake.stop()
    prompt(m, "cf", "while down")
    # The first attempt is refused and its retry scheduled (logged with
    # its class) before the server comes back.
    wait_for(lambda: re.search(r"\bcf: unreachable \(.*\); retry 1 in ",
                               m.log()), timeout=10,
             message="the refused attempt's retry in the log")
    fake.start()
    r = sh(m, "cat cf/.reply", timeout=20)
    st = status(m, "cf")
    assert r.returncode == 0, "%s\nstatus: %r" % (r.stderr, st)
    assert r.stdout.rstrip("\n") == echo_of("while down")
    assert st["last"]["retries"] >= 1, st
    # The refused attempt never reached the server.
    assert len(fake.chat_requests()) == n_before + 1
    assert "unreachable" in m.log()  # the retry is logged with its class


def test_server_dies_mid_answer_next_prompt_retried(fake, mount):
    """The server dies during an answer (the stream ends early: protocol,
    partial text kept) and comes back 0.1 s later; the prompt queued behind
    it must not fail for good: its first attempt meets a dead server
    (refused, or a reset connection: both `unreachable`, README) and is
    retried with backoff."""
    m = rmount(mount, initial_backoff="600ms", max_backoff="2s",
               models_ttl="60s", breaker_threshold=1000)
    mkconv(m, "cf")
    words = " ".join("w%d" % i for i in range(40))
    fake.enqueue(Reply(text=words, delay=0.05))
    prompt(m, "cf", "first")
    prompt(m, "cf", "second")
    wait_for(lambda: "w3" in stream_text(m, "cf"), timeout=10)
    fake.stop()
    wait_for(lambda: status(m, "cf")["answered"] >= 1, timeout=10)
    time.sleep(0.1)
    fake.start()
    r = sh(m, "cat cf/.reply", timeout=20)
    st = status(m, "cf")
    assert r.returncode == 0, "the prompt queued behind the outage " \
        "failed: %s\nstatus: %r" % (r.stderr, st)
    assert r.stdout.rstrip("\n") == echo_of("second")
    assert st["last"]["retries"] >= 1, st
    h = history(m, "cf")
    assert h[1]["role"] == "assistant" and h[1]["content"].startswith(
        words[:10]) and "protocol" in h[1].get("lmsfs_status", ""), h[1]
    assert h[-1] == {"role": "assistant", "content": echo_of("second")}


def _handler():
    """The fake's request handler running this callable (found up the
    stack), for what the fake cannot script: connection-level tricks."""
    import inspect
    from http.server import BaseHTTPRequestHandler
    f = inspect.currentframe()
    while f is not None:
        h = f.f_locals.get("self")
        if isinstance(h, BaseHTTPRequestHandler):
            return h
        f = f.f_back
    raise AssertionError("no request handler on the stack")


def _reset_connection(req):
    """A callable fake response: finds the handler's socket up the stack
    and closes it with SO_LINGER 0, so the client gets a TCP RST before
    any byte of the response."""
    import socket
    import struct
    conn = _handler().connection
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    conn.close()
    return Garbage(b"")  # writing it fails: the socket is gone


def test_reset_before_any_byte_is_retried(fake, mount):
    m = rmount(mount, initial_backoff="10ms", max_backoff="20ms")
    mkconv(m, "rs")
    fake.enqueue(_reset_connection)
    prompt(m, "rs", "after a reset")
    r = sh(m, "cat rs/.reply")
    st = status(m, "rs")
    assert r.returncode == 0, "%s\nstatus: %r" % (r.stderr, st)
    assert r.stdout.rstrip("\n") == echo_of("after a reset")
    assert st["last"]["retries"] == 1, st
    assert len(fake.chat_requests()) == 2


# ------------------------------------------- never retry once text shown

@pytest.mark.parametrize("make, cls", [
    pytest.param(lambda: ErrorEvent(after_chunks=1, error={
        "message": "Internal server error", "type": "server_error",
        "code": 500}), "server_error", id="500-event-after-first-chunk"),
    pytest.param(lambda: Disconnect(after_chunks=2), "protocol",
                 id="cut-after-2-chunks"),
])
def test_failure_after_first_chunk_is_not_retried(fake, mount, make, cls):
    """Must-show (2): text was shown, so no retry: exactly one chat
    request, the partial text is kept in the history and marked."""
    m = rmount(mount, initial_backoff="10ms")
    mkconv(m, "pt")
    fake.enqueue(make())
    prompt(m, "pt", "alpha beta gamma delta")
    st = wait_state(m, "pt", "failed")
    assert st["error"]["class"] == cls, st
    assert st["last"]["attempts"] == 1 and st["last"]["retries"] == 0, st
    time.sleep(0.3)  # a (wrong) retry would arrive within 10-20 ms
    assert len(fake.chat_requests()) == 1
    s = stream_text(m, "pt")
    assert s.count("Echo:") == 1, s
    partial = s.split("\n")[0]
    assert partial.startswith("Echo:") and partial != echo_of(
        "alpha beta gamma delta"), s
    assert "[lmsfs] error %s: " % cls in s, s
    h = history(m, "pt")
    assert h[-1]["role"] == "assistant", h
    assert h[-1]["content"] == partial, (h[-1], partial)
    assert cls in h[-1]["lmsfs_status"], h[-1]
    mt = metrics(m)
    assert mt.get("lmsfs_retries_total") == 0
    assert mt.get("lmsfs_failures_total", **{"class": cls}) == 1


# ------------------------------------------------------------ Retry-After

@pytest.mark.xdist_group("timing")
def test_429_retry_after_is_a_floor(fake, mount):
    """Must-show (4): 429 with Retry-After: 1 waits about a second, even
    though the backoff (10 ms, capped at 100 ms) is much shorter."""
    m = rmount(mount, initial_backoff="10ms", max_backoff="100ms")
    mkconv(m, "rl")
    fake.enqueue(rate_limited(1))
    assert reply_after(m, "rl", "patience") == echo_of("patience")
    reqs = fake.chat_requests()
    assert len(reqs) == 2
    (g,) = gaps(reqs)
    print("Retry-After: 1 -> waited %.3f s" % g)
    assert 0.9 <= g <= 2.0, g
    last = status(m, "rl")["last"]
    assert last["attempts"] == 2 and last["retries"] == 1, last
    assert metrics(m).get("lmsfs_retries_total") == 1


@pytest.mark.xdist_group("timing")
def test_429_without_retry_after_uses_backoff(fake, mount):
    m = rmount(mount, initial_backoff="10ms", max_backoff="100ms")
    mkconv(m, "rl")
    fake.enqueue(HttpError(429, "slow down"))
    assert reply_after(m, "rl", "quick") == echo_of("quick")
    (g,) = gaps(fake.chat_requests())
    assert g < 0.5, g


def test_429_exhausted_is_rate_limited_ebusy(fake, mount):
    """A rate-limited answer fails .reply with EBUSY: not EAGAIN, which
    readers take for "no data yet" (Python's read() returned None)."""
    m = rmount(mount, initial_backoff="10ms", max_backoff="20ms",
               max_retries_stream=1)
    mkconv(m, "rl")
    fake.routes[CHAT] = rate_limited(0)
    prompt(m, "rl", "too many")
    st = wait_state(m, "rl", "failed")
    assert st["error"]["class"] == "rate_limited", st
    assert reply_errno(m, "rl") == errno.EBUSY
    assert len(fake.chat_requests()) == 2
    r = sh(m, "cat rl/.reply")
    assert r.returncode != 0 and "busy" in r.stderr, r

    def python_read():
        with open(cdir(m, "rl") / ".reply") as f:
            return f.read()
    with pytest.raises(OSError) as ei:
        call_with_timeout(python_read)
    assert ei.value.errno == errno.EBUSY


# ---------------------------------------------------------------- breaker

@pytest.mark.xdist_group("timing")
def test_breaker_opens_fails_fast_and_a_probe_closes_it(fake, mount):
    """Must-show (3): the chat endpoint fails (the model list still
    answers). After breaker_threshold (5) failures in a row the breaker
    opens: prompts are refused at write() with EBUSY in well under 10 ms,
    queued answers fail with circuit_open without any request; after
    breaker_reset a probe goes through; a failed probe reopens it, a good
    one closes it."""
    m = rmount(mount, max_retries_stream=0, initial_backoff="10ms",
               breaker_reset="1s")
    h = health(m)["breaker"]
    assert h == {"state": "closed", "consecutive_failures": 0,
                 "threshold": 5, "times_opened": 0, "next_probe_ms": 0}, h
    fake.routes[CHAT] = HttpError(500, "server down", delay=0.1)
    mkconv(m, "b")
    # 7 prompts queued at once: 5 reach the server and fail, then the
    # breaker is open and the last 2 fail without a request.
    for i in range(7):
        prompt(m, "b", "q%d" % i)
    wait_for(lambda: status(m, "b")["answered"] == 7, timeout=15)
    time.sleep(0.1)
    assert len(fake.chat_requests()) == 5
    st = status(m, "b")
    assert st["state"] == "failed", st
    assert st["error"]["class"] == "circuit_open", st
    assert "circuit open" in st["error"]["message"], st
    assert st["last"]["attempts"] == 0, st
    s = stream_text(m, "b")
    assert s.count("[lmsfs] error server_error") == 5, s
    assert s.count("[lmsfs] error circuit_open: circuit open") == 2, s
    err = reply_errno(m, "b")
    assert err == errno.EBUSY, err
    hb = health(m)["breaker"]
    assert hb["state"] == "open" and hb["consecutive_failures"] == 5 and \
        hb["times_opened"] == 1, hb
    assert 0 < hb["next_probe_ms"] <= 1000, hb
    mt = metrics(m)
    assert mt.get("lmsfs_breaker_state") == 1
    assert mt.get("lmsfs_breaker_opened_total") == 1
    assert mt.get("lmsfs_failures_total", **{"class": "server_error"}) == 5
    assert mt.get("lmsfs_failures_total", **{"class": "circuit_open"}) == 2
    assert mt.get("lmsfs_answers_total", outcome="failed") == 7
    assert mt.get("lmsfs_requests_total") == 5

    # Fail fast: refused from write(), no request, well under 10 ms.
    mkconv(m, "c")
    n = len(fake.chat_requests())
    times = []
    for i in range(5):
        e, took = timed_prompt_write(m, "c", "while open %d" % i)
        assert e == errno.EBUSY, errno.errorcode.get(e, e)
        times.append(took)
    print("refused writes took %s ms" % ", ".join(
        "%.2f" % (t * 1000) for t in times))
    assert max(times) < 0.010, times
    r = sh(m, "echo hello > c/prompt")
    assert r.returncode != 0 and "Device or resource busy" in r.stderr, r
    assert "circuit" in status(m, "c")["rejected_write"]
    assert status(m, "c")["submitted"] == 0
    assert len(fake.chat_requests()) == n

    # After breaker_reset: the probe goes through and fails -> open again.
    wait_for(lambda: health(m)["breaker"]["next_probe_ms"] == 0, timeout=3)
    prompt(m, "c", "probe one")
    wait_for(lambda: status(m, "c")["answered"] == 1, timeout=10)
    assert len(fake.chat_requests()) == n + 1
    hb = health(m)["breaker"]
    assert hb["state"] == "open" and hb["times_opened"] == 2, hb
    assert timed_prompt_write(m, "c", "refused again")[0] == errno.EBUSY

    # Server back; the next probe (slow, so half-open can be seen)
    # succeeds and closes the breaker.
    del fake.routes[CHAT]
    fake.enqueue(Reply(text="probe ok", head_delay=0.6))
    wait_for(lambda: health(m)["breaker"]["next_probe_ms"] == 0, timeout=3)
    prompt(m, "c", "probe two")
    wait_for(lambda: health(m)["breaker"]["state"] == "half_open",
             timeout=3)
    assert metrics(m).get("lmsfs_breaker_state") == 2
    mkconv(m, "d")
    assert timed_prompt_write(m, "d", "during the probe")[0] == errno.EBUSY
    assert reply(m, "c").rstrip("\n") == "probe ok"
    hb = health(m)["breaker"]
    assert hb["state"] == "closed" and hb["consecutive_failures"] == 0, hb
    assert hb["times_opened"] == 2, hb
    mt = metrics(m)
    assert mt.get("lmsfs_breaker_state") == 0
    assert mt.get("lmsfs_breaker_opened_total") == 2
    assert reply_after(m, "d", "all good") == echo_of("all good")


def test_breaker_counts_only_server_failures(fake, mount):
    """bad_request/auth answers prove the server is alive: they reset the
    count; unreachable/timeout/5xx/protocol count; a 429 does neither
    (alive but busy: see test_breaker.py)."""
    m = rmount(mount, max_retries_stream=0, max_retries=0,
               initial_backoff="10ms", breaker_threshold=3,
               breaker_reset="60s")
    mkconv(m, "k")
    fake.enqueue(server_error(), Garbage(b"nonsense\n"),
                 HttpError(400, "bad"), rate_limited(0), server_error(),
                 unauthorized(), HttpError(503, "x"))
    want_cons = [1, 2, 0, 0, 1, 0, 1]
    for i, want in enumerate(want_cons):
        prompt(m, "k", "p%d" % i)
        wait_for(lambda: status(m, "k")["answered"] == i + 1, timeout=10)
        got = health(m)["breaker"]
        assert got["consecutive_failures"] == want, (i, got)
        assert got["state"] == "closed", (i, got)
    # A success resets the count.
    assert reply_after(m, "k", "fine") == echo_of("fine")
    assert health(m)["breaker"]["consecutive_failures"] == 0


def test_model_list_is_not_behind_the_breaker(fake, mount):
    m = rmount(mount, max_retries_stream=0, breaker_threshold=1,
               breaker_reset="60s", models_ttl="0s")
    mkconv(m, "x")
    fake.enqueue(server_error())
    prompt(m, "x", "break it")
    wait_for(lambda: health(m)["breaker"]["state"] == "open", timeout=10)
    n = len(fake.requests_to("/api/v0/models"))
    assert LLAMA in listdir(m.path / "models") or \
        any(LLAMA in x for x in listdir(m.path / "models"))
    h = health(m)
    assert h["reachable"] is True and h["breaker"]["state"] == "open", h
    # Listings go on, in the background (readers do not wait for them).
    wait_for(lambda: listdir(m.path / "models") is not None and
             len(fake.requests_to("/api/v0/models")) > n, timeout=5)


# ---------------------------------------------------------------- metrics

TOOL_OK = "#!/bin/sh\n# @description says ok\necho ok\n"
TOOL_FAIL = "#!/bin/sh\n# @description fails\necho broken >&2\nexit 3\n"
TOOL_SLOW = "#!/bin/sh\n# @description sleeps\nsleep 5\necho late\n"


def add_tool(m, tmp_path, name, text):
    src = tmp_path / ("tool-" + name)
    src.write_text(text)
    os.chmod(src, 0o755)
    r = sh(m, "cp %s %s" % (src, m.path / "tools" / name))
    assert r.returncode == 0, r.stderr


def test_metrics_match_what_happened(fake, mount, tmp_path):
    m = rmount(mount, initial_backoff="10ms", max_backoff="20ms",
               breaker_threshold=1000, tool_timeout="1s")
    mt0 = metrics(m)
    assert set(mt0.types) >= {
        "lmsfs_requests_total", "lmsfs_failures_total",
        "lmsfs_retries_total", "lmsfs_answers_total", "lmsfs_breaker_state",
        "lmsfs_breaker_opened_total", "lmsfs_tokens_total",
        "lmsfs_ttft_seconds", "lmsfs_generation_seconds",
        "lmsfs_queue_length", "lmsfs_active_generations",
        "lmsfs_tool_runs_total"}, mt0.types
    for fam in ("lmsfs_requests_total", "lmsfs_failures_total",
                "lmsfs_retries_total", "lmsfs_answers_total",
                "lmsfs_breaker_opened_total", "lmsfs_tokens_total",
                "lmsfs_tool_runs_total"):
        assert mt0.types[fam] == "counter", fam
    for fam in ("lmsfs_breaker_state", "lmsfs_queue_length",
                "lmsfs_active_generations"):
        assert mt0.types[fam] == "gauge", fam
    assert mt0.labels_of("lmsfs_failures_total", "class") == set(CLASSES)
    assert mt0.labels_of("lmsfs_answers_total", "outcome") == {"ok",
                                                               "failed"}
    assert mt0.labels_of("lmsfs_tokens_total", "direction") == {"in", "out"}
    assert mt0.labels_of("lmsfs_tool_runs_total", "outcome") == {
        "ok", "failed", "timeout", "unknown"}
    assert all(v == 0 for (n, _), v in mt0.samples.items()), mt0.text

    # a: two good answers.
    mkconv(m, "a")
    for t in ("one", "two"):
        assert reply_after(m, "a", t) == echo_of(t)
    # Tokens of one answer = its usage in .status.
    mt_a = metrics(m)
    assert reply_after(m, "a", "three four five") == \
        echo_of("three four five")
    usage = status(m, "a")["last"]["usage"]
    mt_b = metrics(m)
    assert mt_b.get("lmsfs_tokens_total", direction="in") - mt_a.get(
        "lmsfs_tokens_total", direction="in") == usage["prompt_tokens"]
    assert mt_b.get("lmsfs_tokens_total", direction="out") - mt_a.get(
        "lmsfs_tokens_total", direction="out") == usage["completion_tokens"]
    # b: one retry then ok.
    mkconv(m, "b")
    fake.enqueue(server_error())
    assert reply_after(m, "b", "retry me") == echo_of("retry me")
    # c: server_error after 2 retries.
    mkconv(m, "c")
    fake.enqueue(server_error(), server_error(), server_error())
    prompt(m, "c", "doomed")
    wait_state(m, "c", "failed")
    # d: bad_request, not retried.
    mkconv(m, "d")
    fake.enqueue(HttpError(400, "nope"))
    prompt(m, "d", "rejected")
    wait_state(m, "d", "failed")
    # e: one round of four tool calls: ok, failed, timeout, unknown.
    add_tool(m, tmp_path, "good", TOOL_OK)
    add_tool(m, tmp_path, "bad", TOOL_FAIL)
    add_tool(m, tmp_path, "slow", TOOL_SLOW)
    mkconv(m, "e")
    fake.enqueue(Reply(tool_calls=[
        {"id": "c1", "name": "good", "arguments": {}},
        {"id": "c2", "name": "bad", "arguments": {}},
        {"id": "c3", "name": "slow", "arguments": {}},
        {"id": "c4", "name": "missing", "arguments": {}}]))
    assert reply_after(m, "e", "use tools") == echo_of("use tools")
    # f: active/queue gauges while an answer runs and one waits.
    mkconv(m, "f")
    fake.enqueue(Reply(text="slow slow slow slow slow", delay=0.2))
    prompt(m, "f", "first")
    prompt(m, "f", "second")
    wait_for(lambda: "slow" in stream_text(m, "f"), timeout=10)
    mid = metrics(m)
    assert mid.get("lmsfs_active_generations") == 1, mid.text
    assert mid.get("lmsfs_queue_length") == 1, mid.text
    wait_for(lambda: status(m, "f")["answered"] == 2 and
             status(m, "f")["state"] == "idle", timeout=15)

    mt = metrics(m)
    n_req = len(fake.chat_requests())
    assert mt.get("lmsfs_requests_total") == n_req
    assert mt.get("lmsfs_retries_total") == 1 + 2
    ok, failed = 3 + 1 + 1 + 2, 2  # a, b, e, f | c, d
    assert mt.get("lmsfs_answers_total", outcome="ok") == ok
    assert mt.get("lmsfs_answers_total", outcome="failed") == failed
    for c in CLASSES:
        want = {"server_error": 1, "bad_request": 1}.get(c, 0)
        assert mt.get("lmsfs_failures_total", **{"class": c}) == want, c
    for o, want in (("ok", 1), ("failed", 1), ("timeout", 1),
                    ("unknown", 1)):
        assert mt.get("lmsfs_tool_runs_total", outcome=o) == want, o
    assert mt.get("lmsfs_breaker_state") == 0
    assert mt.get("lmsfs_breaker_opened_total") == 0
    assert mt.get("lmsfs_queue_length") == 0
    assert mt.get("lmsfs_active_generations") == 0
    assert mt.get("lmsfs_tokens_total", direction="in") > 0
    assert mt.get("lmsfs_tokens_total", direction="out") >= ok
    gen = mt.check_histogram("lmsfs_generation_seconds")
    assert gen == ok + failed, gen
    ttft = mt.check_histogram("lmsfs_ttft_seconds")
    assert ok <= ttft <= ok + failed, ttft
    # The slow answer (5 chunks 0.2 s apart) took >= 0.8 s.
    assert mt.get("lmsfs_generation_seconds_sum") >= 0.8
    b = dict(mt.buckets("lmsfs_generation_seconds"))
    assert b[0.5] <= gen - 1, b  # f's first answer is above 0.5 s

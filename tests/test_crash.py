"""Crash safety (README "Never losing data"): kill -9 at random moments
while 16 conversations answer at once (streaming slowly, some inside tool
calls), remount, and check after every cycle:

  - every acknowledged prompt (its write()+close() returned success) is in
    that conversation's messages.jsonl, or still pending (in the queue),
    and none is there twice;
  - every line of messages.jsonl is valid JSON (json.loads);
  - every assistant message with tool_calls is followed by one tool
    message per call id (the daemon repairs an interrupted round when the
    conversation is loaded, so .status is opened first);
and at the end every conversation still answers a new prompt (after
`echo retry > .ctl` where the state is failed).

The random seed is printed; LMSFS_CRASH_SEED and LMSFS_CRASH_CYCLES
override it and the number of cycles."""

import errno
import itertools
import json
import os
import random
import threading
import time

import pytest

from conftest import call_with_timeout, read_json, read_text, wait_for
from conv_helpers import LLAMA, cdir, echo_of, opts, sh
from fake_lms import Reply

SEED = int(os.environ.get("LMSFS_CRASH_SEED", "20240611"))
CYCLES = int(os.environ.get("LMSFS_CRASH_CYCLES", "50"))
N_CONV = 16
CHAT = ("POST", "/v1/chat/completions")

TOOL = r"""#!/bin/sh
# @description Crash test tool: sleeps a little, then answers
# @param x integer optional A number
sleep 0.05
echo "tool ran with $LMSFS_ARG_x"
"""


class Script:
    """The fake's chat behaviour for this test, safe under many concurrent
    requests (no shared FIFO whose order depends on thread timing): the
    answer depends only on the request. A last user message carrying
    "[tool]" ("[tool2]") gets one (two) tool call(s) first; everything
    else gets the echo of the last user message, streamed word by word
    with the fake's chunk_delay."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    def new_id(self):
        with self.lock:
            return "call_%d" % next(self.ids)

    def __call__(self, req):
        body = req["body"] if isinstance(req["body"], dict) else {}
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs else {}
        if last.get("role") == "user":
            text = last.get("content") or ""
            n = 2 if "[tool2]" in text else 1 if "[tool]" in text else 0
            if n and body.get("tools"):
                return Reply(tool_calls=[
                    {"id": self.new_id(), "name": "crashtool",
                     "arguments": {"x": k}} for k in range(n)])
        return Reply()


def users_of(msgs):
    return [x.get("content") for x in msgs if x.get("role") == "user"]


def parse_history(text, where):
    msgs = []
    assert text == "" or text.endswith("\n"), \
        "%s: history does not end with a newline: %r" % (where, text[-200:])
    for i, ln in enumerate(text.split("\n")[:-1]):
        try:
            obj = json.loads(ln)
        except ValueError as e:
            raise AssertionError("%s: messages.jsonl line %d is not JSON "
                                 "(%s): %r" % (where, i + 1, e, ln[:300]))
        assert isinstance(obj, dict), (where, i + 1, ln[:300])
        msgs.append(obj)
    return msgs


def incomplete_rounds(msgs):
    """[(index, missing ids, at_tail)] for assistant messages whose
    tool_calls lack a following tool message."""
    out = []
    for i, msg in enumerate(msgs):
        if msg.get("role") != "assistant" or not msg.get("tool_calls"):
            continue
        ids = {c.get("id") for c in msg["tool_calls"]}
        j, got = i + 1, set()
        while j < len(msgs) and msgs[j].get("role") == "tool":
            got.add(msgs[j].get("tool_call_id"))
            j += 1
        if ids - got:
            out.append((i, sorted(ids - got), j == len(msgs)))
    return out


class World:
    def __init__(self, m, fake):
        self.m = m
        self.fake = fake
        self.names = ["c%02d" % i for i in range(N_CONV)]
        self.acked = {n: [] for n in self.names}
        self.sent = 0
        self.refused = {}

    def status(self, n):
        return read_json(cdir(self.m, n) / ".status")

    def history_text(self, n):
        p = cdir(self.m, n) / "messages.jsonl"

        def r():
            try:
                return p.read_text()
            except FileNotFoundError:
                return ""
        return call_with_timeout(r, timeout=10)

    def check(self, n, where):
        # .status first: loading the conversation repairs it.
        s1 = self.status(n)
        msgs = parse_history(self.history_text(n), "%s %s" % (where, n))
        users = users_of(msgs)
        acked = self.acked[n]
        for p in acked:
            assert users.count(p) <= 1, "%s %s: prompt %r is in the " \
                "history %d times" % (where, n, p, users.count(p))
        missing = [p for p in acked if p not in users]
        # What is not in the history must still be queued: at most
        # `queued` of them, and the last ones acknowledged (FIFO).
        assert len(missing) <= s1["queued"], (
            "%s %s: acknowledged prompts lost: %r (status %r, last "
            "users %r)" % (where, n, missing, s1, users[-5:]))
        assert missing == acked[len(acked) - len(missing):], (
            "%s %s: lost from the middle: %r of %r" % (where, n, missing,
                                                       acked))
        present = [p for p in users if p in set(acked)]
        assert present == [p for p in acked if p in set(present)], (
            "%s %s: prompts answered out of order" % (where, n))
        # Tool rounds: only the one running right now may be incomplete.
        bad = incomplete_rounds(msgs)
        for i, ids, at_tail in bad:
            assert at_tail, "%s %s: message %d has tool calls %r without " \
                "results in the middle of the history" % (where, n, i, ids)

            def done():
                again = parse_history(self.history_text(n), where)
                rest = incomplete_rounds(again)
                return not [x for x in rest if x[0] == i]
            try:
                wait_for(done, timeout=10, interval=0.05)
            except AssertionError:
                raise AssertionError(
                    "%s %s: message %d has tool calls %r without results "
                    "and nothing completes them (status %r)" % (
                        where, n, i, ids, self.status(n)))
        return s1

    def submit(self, rng, cycle):
        """Starts one writer thread per conversation; returns them."""
        threads = []
        for n in self.names:
            k = 2 if rng.random() < 0.25 else 1
            texts = []
            for j in range(k):
                tag = rng.choice(["", "", "[tool] ", "[tool2] "])
                texts.append("%s%s n%d k%d a b c d e f g h" % (
                    tag, n, cycle, j))
            t = threading.Thread(target=self._write, args=(n, texts),
                                 daemon=True)
            threads.append(t)
        for t in threads:
            t.start()
        return threads

    def _write(self, n, texts):
        path = cdir(self.m, n) / "prompt"
        for text in texts:
            self.sent += 1
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                             0o644)
            except OSError as e:
                self.refused[e.errno] = self.refused.get(e.errno, 0) + 1
                return
            try:
                os.write(fd, (text + "\n").encode())
            except OSError as e:
                self.refused[e.errno] = self.refused.get(e.errno, 0) + 1
                try:
                    os.close(fd)
                except OSError:
                    pass
                return
            try:
                os.close(fd)
            except OSError as e:
                self.refused[e.errno] = self.refused.get(e.errno, 0) + 1
                return
            self.acked[n].append(text)  # write() and close() succeeded


@pytest.mark.xdist_group("timing")
def test_kill9_cycles_lose_no_acknowledged_prompt(fake, mount, tmp_path):
    box = {}
    try:
        _crash_cycles(fake, mount, tmp_path, box)
    except (AssertionError, OSError) as e:
        m = box.get("m")
        if m is None:
            raise
        alive = m.pid is not None
        raise AssertionError("%s\n(daemon %s; seed %d)\n--- lmsfs log tail "
                             "---\n%s" % (e, "alive" if alive else "DEAD",
                                           SEED, m.log()[-4000:])) from e


def _crash_cycles(fake, mount, tmp_path, box):
    rng = random.Random(SEED)
    print("crash test: seed %d (LMSFS_CRASH_SEED), %d cycles" % (SEED,
                                                                   CYCLES))
    fake.chunk_delay = 0.01
    fake.routes[CHAT] = Script()
    m = mount(args=opts(default_model=LLAMA, initial_backoff="10ms",
                        breaker_threshold=100000, models_ttl="60s"))
    box["m"] = m
    src = tmp_path / "crashtool"
    src.write_text(TOOL)
    os.chmod(src, 0o755)
    r = sh(m, "cp %s %s" % (src, m.path / "tools" / "crashtool"))
    assert r.returncode == 0, r.stderr
    r = sh(m, "mkdir " + " ".join("c%02d" % i for i in range(N_CONV)))
    assert r.returncode == 0, r.stderr
    w = World(m, fake)
    t_start = time.monotonic()
    delays = []
    states = {}
    for cycle in range(CYCLES):
        for n in w.names:
            st = w.check(n, "cycle %d" % cycle)
            states[st["state"]] = states.get(st["state"], 0) + 1
        threads = w.submit(rng, cycle)
        # 0-300 ms after submitting, a fifth of them in the first 10 ms
        # (while prompts are being written and fsync'd).
        d = rng.uniform(0.0, 0.01 if rng.random() < 0.2 else 0.3)
        delays.append(d)
        time.sleep(d)
        m.kill9()
        for t in threads:
            t.join(10)
            assert not t.is_alive(), "a prompt writer hung after kill -9"
        m.remount()
    took = time.monotonic() - t_start
    n_acked = sum(len(v) for v in w.acked.values())
    print("%d cycles in %.1f s: %d prompts sent, %d acknowledged, refused "
          "%r; states seen after remounts %r; %d chat requests" % (
              CYCLES, took, w.sent, n_acked,
              {errno.errorcode.get(k, k): v for k, v in w.refused.items()},
              states, len(fake.chat_requests())))
    assert n_acked >= CYCLES * N_CONV // 4, "too few prompts acknowledged"

    # Let everything settle, retry what failed, then one more question
    # everywhere.
    for n in w.names:
        w.check(n, "final")

    def settled():
        return all(w.status(n)["state"] in ("idle", "failed")
                   for n in w.names)
    wait_for(settled, timeout=60, interval=0.1,
             message="every conversation idle or failed")
    problems = []
    for n in w.names:
        st = w.check(n, "settled")
        assert st["queued"] == 0, st
        missing = [p for p in w.acked[n]
                   if p not in users_of(parse_history(w.history_text(n),
                                                      n))]
        assert not missing, "%s: acknowledged prompts never answered: " \
            "%r" % (n, missing)
        if st["state"] == "failed":
            r = sh(m, "echo retry > %s/.ctl" % n)
            if r.returncode != 0:
                problems.append(
                    "%s: `echo retry > .ctl` refused in state failed: %s"
                    "status %r\nhistory tail %r\nstream tail %r" % (
                        n, r.stderr, st,
                        parse_history(w.history_text(n), n)[-3:],
                        read_text(cdir(m, n) / "stream")[-300:]))
    for n in w.names:
        text = "final question for %s" % n
        r = sh(m, "echo %s > %s/prompt && cat %s/.reply" % (
            json.dumps(text), n, n), timeout=60)
        assert r.returncode == 0, (n, r.stderr, w.status(n))
        assert r.stdout.rstrip("\n") == echo_of(text), (n, r.stdout[-300:])
        msgs = parse_history(w.history_text(n), n)
        assert not incomplete_rounds(msgs), (n, incomplete_rounds(msgs))
        last = {k: v for k, v in msgs[-1].items() if k != "lmsfs_stats"}
        assert last == {"role": "assistant", "content": echo_of(text)}
        # None silently skipped: every user message is followed by an
        # assistant message, an answer or one marked (lmsfs_status) as cut
        # by the crash.
        for i, x in enumerate(msgs[:-1]):
            if x["role"] == "user":
                assert msgs[i + 1]["role"] == "assistant", (
                    n, i, msgs[i:i + 2])
    assert not problems, "\n\n".join(problems)

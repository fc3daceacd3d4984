#!/usr/bin/env python3
"""make bench: lmsfs against direct curl and the backing disk, side by side.

Every figure is measured in the same run as its baseline and reported as a
ratio, because the machines are shared and noisy. Prints one table and
writes tests/bench/results.json. Needs: cc, curl, fusermount3, and
LMSFS_BIN (default build/lmsfs). Runs in a few minutes on 2 cores.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = os.environ.get("LMSFS_BIN", str(REPO / "build" / "lmsfs"))
QUICK = os.environ.get("LMSFS_BENCH_QUICK") == "1"


def now():
    return time.perf_counter()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Server:
    def __init__(self, work):
        exe = work / "sse_server"
        subprocess.run(["cc", "-O2", "-pthread", "-o", str(exe),
                        str(HERE / "sse_server.c")], check=True)
        self.log = open(work / "sse_server.log", "w")
        self.proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


class Mount:
    def __init__(self, work, url, name="m"):
        self.mnt = work / (name + "-mnt")
        self.state = work / (name + "-state")
        self.mnt.mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self.url = url
        self.proc = None
        self.work, self.name = work, name

    def start(self):
        work, name = self.work, self.name
        t0 = now()
        wrap = os.environ.get("LMSFS_BENCH_WRAP", "").split()
        self.proc = subprocess.Popen(
            wrap + [BIN, "-f", str(self.mnt), "-o",
             "state_dir=%s,base_url=%s,default_model=bench-model,log_level=warn"
             % (self.state, self.url)],
            stdout=subprocess.DEVNULL, stderr=open(work / (name + ".log"), "w"),
            start_new_session=True)
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise SystemExit("lmsfs exited at mount")
            time.sleep(0.0005)
        os.stat(self.mnt / "conversations")
        return now() - t0

    def stop(self):
        subprocess.run(["fusermount3", "-u", str(self.mnt)])
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            subprocess.run(["fusermount3", "-uz", str(self.mnt)])

    def rss_mib(self):
        for line in open("/proc/%d/status" % self.proc.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def conv(self, name, params=None):
        c = self.mnt / "conversations" / name
        c.mkdir(exist_ok=True)
        if params is not None:
            (c / "params.json").write_text(json.dumps(params))
        return c


def ask(c, text="go"):
    with open(c / "prompt", "w") as f:
        f.write(text)
    with open(c / ".reply", "rb") as f:
        return f.read()


def curl(url, body, fmt):
    r = subprocess.run(["curl", "-sN", "-o", "/dev/null", "-w", fmt, "-X", "POST",
                        "-H", "Content-Type: application/json", "-d",
                        json.dumps(body), url + "/v1/chat/completions"],
                       capture_output=True, text=True, check=True)
    return float(r.stdout)


ROWS = []


def row(key, what, lmsfs, base, unit, ratio, target, ok):
    ROWS.append({"figure": key, "what": what, "lmsfs": lmsfs, "baseline": base,
                 "unit": unit, "ratio": ratio, "target": target, "met": ok})
    print("  %-4s %-44s lmsfs %10.3f  base %10.3f %-6s ratio %7.2f  target %-10s %s"
          % (key, what, lmsfs, base, unit, ratio, target, "ok" if ok else "MISSED"),
          flush=True)


def p1(m, srv, n):
    c = m.conv("p1", {"bench_tokens": 4})
    ask(c)
    stream = c / "stream"
    lat = []
    for _ in range(n):
        size = stream.stat().st_size
        t0 = now()
        with open(c / "prompt", "w") as f:
            f.write("go")
        while stream.stat().st_size == size:
            pass
        lat.append(now() - t0)
        with open(c / ".reply", "rb") as f:
            f.read()
    tail_lat = []
    for _ in range(max(n // 5, 5)):
        tp = subprocess.Popen(["tail", "-f", "-s", "0.05", "-n", "0", str(stream)],
                              stdout=subprocess.PIPE)
        time.sleep(0.15)
        t0 = now()
        with open(c / "prompt", "w") as f:
            f.write("go")
        tp.stdout.read(1)
        tail_lat.append(now() - t0)
        tp.kill()
        tp.wait()
        with open(c / ".reply", "rb") as f:
            f.read()
    base = [curl(srv.url, {"model": "bench-model", "stream": True, "bench_tokens": 4,
                           "messages": [{"role": "user", "content": "go"}]},
                 "%{time_starttransfer}") for _ in range(n)]
    lm, bm = median(lat) * 1e3, median(base) * 1e3
    row("P1", "first token, stat poller (ms, median)", lm, bm, "ms", lm / bm,
        "+<=1 ms", lm - bm <= 1.0)
    tm = median(tail_lat) * 1e3
    row("P1t", "first token, tail -f -s 0.05 (ms, median)", tm, bm, "ms", tm / bm,
        "info", True)


def p2(m, srv, tokens):
    c = m.conv("p2", {"bench_tokens": tokens})
    t0 = now()
    ask(c)
    dt = now() - t0
    got = (c / "stream").stat().st_size
    base = curl(srv.url, {"model": "bench-model", "stream": True,
                          "bench_tokens": tokens,
                          "messages": [{"role": "user", "content": "go"}]},
                "%{time_total}")
    lr, br = tokens / dt, tokens / base
    row("P2", "stream throughput (tokens/s)", lr, br, "tok/s", lr / br, ">=0.8x",
        lr / br >= 0.8)
    return got


def p3(m, n, tokens, interval_us):
    params = {"bench_tokens": tokens, "bench_interval_us": interval_us}
    one = m.conv("p3-solo", params)
    t0 = now()
    ask(one)
    solo = now() - t0
    convs = [m.conv("p3-%d" % i, params) for i in range(n)]
    ls_times = []
    stop = threading.Event()

    def lister():
        while not stop.is_set():
            t = now()
            os.listdir(m.mnt / "conversations")
            ls_times.append(now() - t)
            time.sleep(0.01)

    th = threading.Thread(target=lister)

    def submit(c):
        with open(c / "prompt", "w") as f:
            f.write("go")

    # "At once": every conversation gets its prompt from its own thread,
    # as `echo ... > c/prompt &` in a shell loop would.
    t0 = now()
    subs = [threading.Thread(target=submit, args=(c,)) for c in convs]
    for t in subs:
        t.start()
    for t in subs:
        t.join()
    th.start()
    for c in convs:
        with open(c / ".reply", "rb") as f:
            f.read()
    wall = now() - t0
    stop.set()
    th.join()
    row("P3", "%d conversations at once vs one (s)" % n, wall, solo, "s",
        wall / solo, "<=1.2x", wall / solo <= 1.2)
    lsm = max(ls_times) * 1e3 if ls_times else float("nan")
    row("P3ls", "ls conversations during P3 (max ms)", lsm, 10, "ms", lsm / 10,
        "<10 ms", lsm < 10)


def build_tree(root, n, lines=2):
    line = '{"role":"user","content":"hello"}\n{"role":"assistant","content":"hi"}\n'
    for i in range(n):
        d = root / ("c%05d" % i)
        d.mkdir()
        (d / "messages.jsonl").write_text(line * (lines // 2))
        (d / "stream").write_text("hi\n")


def timed(cmd, reps=3):
    best = float("inf")
    for _ in range(reps):
        t = now()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        best = min(best, now() - t)
    return best


def p4(work, url, n):
    m = Mount(work, url, "p4")
    conv_root = m.state / "conversations"
    conv_root.mkdir(parents=True)
    build_tree(conv_root, n)
    mount_t = m.start()
    try:
        mnt = m.mnt / "conversations"
        ls_l, ls_b = timed(["ls", str(mnt)]), timed(["ls", str(conv_root)])
        f_l = timed(["find", str(mnt), "-name", "messages.jsonl"])
        f_b = timed(["find", str(conv_root), "-name", "messages.jsonl"])
        rss = m.rss_mib()
    finally:
        m.stop()
    row("P4ls", "ls of %d conversations (ms)" % n, ls_l * 1e3, ls_b * 1e3, "ms",
        ls_l / ls_b, "<=3x", ls_l / ls_b <= 3)
    row("P4f", "find -name messages.jsonl (ms)", f_l * 1e3, f_b * 1e3, "ms",
        f_l / f_b, "<=3x", f_l / f_b <= 3)
    row("P4m", "daemon RSS after find (MiB)", rss, 64, "MiB", rss / 64, "<=64 MiB",
        rss <= 64)
    row("P4t", "mount time (ms)", mount_t * 1e3, 200, "ms", mount_t * 1e3 / 200,
        "<=200 ms", mount_t <= 0.2)


def p5(m, big_lines, cat_mb):
    def history(c, n):
        # As lmsfs writes them: user lines carry the prompt's id.
        line = ('{"role":"user","content":"hello there",'
                '"lmsfs_id":"0123456789abcdef"}\n'
                '{"role":"assistant","content":"hi"}\n')
        (m.state / "conversations" / c.name / "messages.jsonl").write_text(
            line * (n // 2))

    small, big = m.conv("p5-small"), m.conv("p5-big")
    history(small, 10)
    history(big, big_lines)
    msg = '{"role":"assistant","content":"ok"}\n'

    # Both histories on disk first: a pending writeback of the freshly
    # written big file would land in the first fdatasync otherwise.
    os.sync()

    def append_time(c, reps=50):
        ts = []
        for _ in range(reps):
            t = now()
            with open(c / "messages.jsonl", "a") as f:
                f.write(msg)
            ts.append(now() - t)
        return median(ts)

    a_small, a_big = append_time(small), append_time(big)
    row("P5a", "append one turn: %d vs 10 messages (ms)" % big_lines, a_big * 1e3,
        a_small * 1e3, "ms", a_big / a_small, "~1x", a_big / a_small <= 1.5)
    # A whole turn includes sending the history: it grows with it by nature.
    t = now()
    ask(big)
    turn_big = now() - t
    t = now()
    ask(small)
    turn_small = now() - t
    row("P5t", "whole turn: %d vs 10 messages (ms)" % big_lines, turn_big * 1e3,
        turn_small * 1e3, "ms", turn_big / turn_small, "info", True)
    huge = m.conv("p5-cat")
    backing = m.state / "conversations" / "p5-cat" / "messages.jsonl"
    line = json.dumps({"role": "user", "content": "x" * 200}) + "\n"
    with open(backing, "w") as f:
        f.write(line * (cat_mb * 1024 * 1024 // len(line)))
    size = backing.stat().st_size / 1e6
    tl = timed(["cat", str(huge / "messages.jsonl")], reps=3)
    tb = timed(["cat", str(backing)], reps=3)
    row("P5c", "cat %d MB messages.jsonl (MB/s)" % size, size / tl, size / tb,
        "MB/s", tb / tl, ">=0.5x", tb / tl >= 0.5)


def p6(m, work, reps):
    tool = m.state / "tools" / "noop"
    tool.write_text("#!/bin/sh\n# @description does nothing\ncat >/dev/null\necho ok\n")
    tool.chmod(0o755)
    plain = m.conv("p6-plain", {"bench_tokens": 4, "lmsfs_tools": False})
    withtool = m.conv("p6-tool", {"bench_tokens": 4, "bench_tool": 1})
    by_hand, t_plain, t_tool = [], [], []
    for _ in range(reps):
        t = now()
        subprocess.run([str(tool)], input=b"{}", stdout=subprocess.DEVNULL)
        by_hand.append(now() - t)
        t = now()
        ask(plain)
        t_plain.append(now() - t)
        t = now()
        ask(withtool)
        t_tool.append(now() - t)
    # What a tool round adds to a turn (the tool, one more request, the
    # history writes), next to running the same script by hand.
    added = (median(t_tool) - median(t_plain)) * 1e3
    hand = median(by_hand) * 1e3
    row("P6", "tool round trip: tool turn minus plain turn (ms)", added, hand,
        "ms", added / hand, "<=hand+5 ms", added <= hand + 5)


def p7(work, n):
    """P7: TCP connections opened for n streamed turns (two conversations,
    turns alternating) against a keep-alive server: the fake LM Studio of
    the tests, which numbers its connections. Baseline: one connection."""
    sys.path.insert(0, str(HERE.parent))
    from fake_lms import FakeLMS
    srv = FakeLMS()
    srv.chunked = True
    srv.start()
    m = Mount(work, srv.url, "p7")
    try:
        m.start()
        cs = [m.conv("p7-a"), m.conv("p7-b")]
        # default_model is the bench server's: name one the fake has.
        for c in cs:
            (c / "model").write_text("meta-llama-3.1-8b-instruct")
        for i in range(n):
            ask(cs[i % 2], "turn %d" % i)
    finally:
        m.stop()
        srv.stop()
    chats = srv.chat_requests()
    conns = len(srv.conns_of(chats))
    row("P7", "connections for %d streamed turns" % len(chats), conns, 1,
        "conns", conns / 1, "1", conns == 1 and len(chats) == n)


def main():
    if not os.access(BIN, os.X_OK):
        raise SystemExit("no lmsfs binary at %s (make first)" % BIN)
    work = Path(tempfile.mkdtemp(prefix="lmsfs-bench."))
    srv = Server(work)
    m = Mount(work, srv.url)
    t_start = now()
    print("lmsfs benchmark (%s); server %s; work dir %s" % (BIN, srv.url, work))
    try:
        m.start()
        p1(m, srv, 20 if QUICK else 60)
        p2(m, srv, 20000 if QUICK else 200000)
        # A local model streams 20-100 tokens/s: 20 tokens 25 ms apart.
        p3(m, 16 if QUICK else 64, 20, 25000)
        p5(m, 10000 if QUICK else 100000, 10 if QUICK else 100)
        p6(m, work, 5 if QUICK else 20)
        m.stop()
        p4(work, srv.url, 1000 if QUICK else 10000)
        p7(work, 10 if QUICK else 40)
    finally:
        if m.proc and m.proc.poll() is None:
            m.stop()
        srv.stop()
        if os.environ.get("LMSFS_BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": now() - t_start,
           "quick": QUICK, "rows": ROWS}
    (HERE / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["| figure | what | lmsfs | baseline | ratio | target | met |",
          "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        md.append("| %s | %s | %.3g %s | %.3g %s | %s | %s | %s |" % (
            r["figure"], r["what"], r["lmsfs"], r["unit"], r["baseline"],
            r["unit"], "-" if r["ratio"] != r["ratio"] else "%.2f" % r["ratio"],
            r["target"], "yes" if r["met"] else "**no**"))
    (HERE / "results.md").write_text("\n".join(md) + "\n")
    print("wrote %s (%.0f s)" % (HERE / "results.json", out["seconds"]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""make bench: lmsfs against direct clients and the backing disk, side by side.

Every figure is measured in the same run as its baseline and reported as a
ratio, because the machines are shared and noisy; each is repeated
LMSFS_BENCH_RUNS times (default 3) and shown as min/median/max. Prints one
table and writes tests/bench/results.json and results.md. Needs: cc,
libcurl and cJSON headers, curl, jq, rsync, fusermount3, and LMSFS_BIN
(default build/lmsfs). Cold figures drop the kernel's caches (root only;
skipped otherwise).

Sizes (environment): LMSFS_BENCH_QUICK=1 runs everything smaller;
LMSFS_BENCH_P4=N conversations for P4 (default 10000);
LMSFS_BENCH_P4_MOUNT=N conversations for the mount time and RSS
(default 100000; 0 skips it). LMSFS_BENCH_ONLY=P2,P3 runs only those.
"""

import json
import os
import random
import resource
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
RUNS = int(os.environ.get("LMSFS_BENCH_RUNS", "3"))
P4_N = int(os.environ.get("LMSFS_BENCH_P4", "1000" if QUICK else "10000"))
P4_MOUNT_N = int(os.environ.get("LMSFS_BENCH_P4_MOUNT", "10000" if QUICK else "100000"))
ROOT = os.geteuid() == 0
ONLY = set(x for x in os.environ.get("LMSFS_BENCH_ONLY", "").split(",") if x)


def want(fig):
    return not ONLY or fig in ONLY


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
             # P3 runs 64 answers at once: above the default cap of 32
             # (max_active), which would make it two rounds.
             "state_dir=%s,base_url=%s,default_model=bench-model,log_level=warn,"
             "max_active=64"
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


def stats3(xs):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return (float("nan"),) * 3
    return xs[0], statistics.median(xs), xs[-1]


def row(key, what, lm, base, unit, target, ok, ratios=None):
    """lm, base: one value per run; ratios: per run (default lm/base)."""
    if ratios is None:
        ratios = [a / b if b else float("nan") for a, b in zip(lm, base)]
    L, B, R = stats3(lm), stats3(base), stats3(ratios)
    met = bool(ok(L, B, R))
    ROWS.append({"figure": key, "what": what, "unit": unit, "lmsfs": L,
                 "baseline": B, "ratio": R, "target": target, "met": met,
                 "runs": len(lm)})
    print("  %-6s %-46s lmsfs %9.3g  base %9.3g %-6s ratio %6.2f (%5.2f-%5.2f)"
          "  target %-14s %s" % (key, what, L[1], B[1], unit, R[1], R[0], R[2],
                                 target, "ok" if met else "MISSED"), flush=True)


def drop_caches():
    if not ROOT:
        return False
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return True


def cpu_s(pid):
    """User + system CPU seconds of process pid (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def p1(m, srv, n):
    """First token: a stat poller after `echo > prompt` returns, against
    curl's time to first byte; the prompt's write (it fsyncs) apart; tail
    -f -s 0.1 with a random start phase, as a fraction of its interval."""
    c = m.conv("p1", {"bench_tokens": 4})
    ask(c)
    stream = c / "stream"
    first, write = [], []
    for _ in range(n):
        size = stream.stat().st_size
        t0 = now()
        with open(c / "prompt", "w") as f:
            f.write("go")
        t1 = now()
        while stream.stat().st_size == size:
            pass
        first.append(now() - t1)
        write.append(t1 - t0)
        with open(c / ".reply", "rb") as f:
            f.read()
    interval = 0.1
    tail = []
    for _ in range(max(n // 4, 4)):
        tp = subprocess.Popen(["tail", "-f", "-s", str(interval), "-n", "0", str(stream)],
                              stdout=subprocess.PIPE)
        time.sleep(0.25 + random.random() * interval)
        t0 = now()
        with open(c / "prompt", "w") as f:
            f.write("go")
        tp.stdout.read(1)
        tail.append((now() - t0) / interval)
        tp.kill()
        tp.wait()
        with open(c / ".reply", "rb") as f:
            f.read()
    base = [curl(srv.url, {"model": "bench-model", "stream": True, "bench_tokens": 4,
                           "messages": [{"role": "user", "content": "go"}]},
                 "%{time_starttransfer}") for _ in range(n)]
    # The prompt's own write next to the same write + fsync on the disk.
    disk = []
    for i in range(n):
        t0 = now()
        with open(m.work / "p1-disk", "w") as f:
            f.write("go")
            f.flush()
            os.fsync(f.fileno())
        disk.append(now() - t0)
    return {"first": median(first) * 1e3, "curl": median(base) * 1e3,
            "write": median(write) * 1e3, "disk": median(disk) * 1e3,
            "tail": median(tail)}


def p1_rows(rs):
    row("P1", "first token to a stat poller vs curl TTFB (ms)",
        [r["first"] for r in rs], [r["curl"] for r in rs], "ms",
        "<= curl+0.7 ms, every run",
        lambda L, B, R: all(r["first"] - r["curl"] <= 0.7 for r in rs))
    row("P1w", "echo > prompt (durable) vs write+fsync (ms)",
        [r["write"] for r in rs], [r["disk"] for r in rs], "ms", "<= 1.0 ms",
        lambda L, B, R: L[1] <= 1.0)
    row("P1t", "tail -f -s 0.1, random phase (x interval)",
        [r["tail"] for r in rs], [0.5] * len(rs), "x", "info (0.5 = avg wait)",
        lambda L, B, R: True)


def p2(m, srv, work, tokens):
    """Stream throughput: lmsfs against a C client that parses every event
    with cJSON and appends the text to a file, and against curl | jq."""
    body = {"model": "bench-model", "stream": True, "bench_tokens": tokens,
            "messages": [{"role": "user", "content": "go"}]}
    c = m.conv("p2", {"bench_tokens": tokens})
    cpu0 = cpu_s(m.proc.pid)
    t0 = now()
    ask(c)
    lm_t = now() - t0
    lm_cpu = cpu_s(m.proc.pid) - cpu0
    out = work / "p2-client.out"
    out.unlink(missing_ok=True)
    c0 = children_cpu()
    t0 = now()
    r = subprocess.run([str(work / "sse_client"), srv.url + "/v1/chat/completions",
                        json.dumps(body), str(out)], capture_output=True, text=True,
                       check=True)
    cl_t = now() - t0
    cl_cpu = children_cpu() - c0
    assert int(r.stdout) == tokens, r.stdout
    jq_prog = ('select(startswith("data: {")) | .[6:] | fromjson '
               '| .choices[0].delta.content // empty')
    c0 = children_cpu()
    t0 = now()
    subprocess.run("curl -sN -H 'Content-Type: application/json' -d @- %s | "
                   "jq -Rrj '%s' > %s" % (srv.url + "/v1/chat/completions", jq_prog,
                                          work / "p2-jq.out"),
                   shell=True, input=json.dumps(body).encode(), check=True)
    jq_t = now() - t0
    jq_cpu = children_cpu() - c0
    raw = curl(srv.url, body, "%{time_total}")
    return {"lm": tokens / lm_t, "client": tokens / cl_t, "jq": tokens / jq_t,
            "curl": tokens / raw, "lm_cpu": lm_cpu / tokens * 1e6,
            "client_cpu": cl_cpu / tokens * 1e6, "jq_cpu": jq_cpu / tokens * 1e6}


def p2_rows(rs):
    row("P2", "stream: lmsfs vs C client with cJSON (tok/s)",
        [r["lm"] for r in rs], [r["client"] for r in rs], "tok/s", ">= 0.9x",
        lambda L, B, R: R[1] >= 0.9)
    row("P2j", "stream: lmsfs vs curl piped to jq -Rrj (tok/s)",
        [r["lm"] for r in rs], [r["jq"] for r in rs], "tok/s", ">= 5x",
        lambda L, B, R: R[1] >= 5)
    row("P2cpu", "CPU s per million tokens: lmsfs vs C client",
        [r["lm_cpu"] for r in rs], [r["client_cpu"] for r in rs], "s/Mtok", "info",
        lambda L, B, R: True)
    row("P2jcpu", "CPU s per million tokens: curl piped to jq",
        [r["jq_cpu"] for r in rs], [r["client_cpu"] for r in rs], "s/Mtok", "info",
        lambda L, B, R: True)
    row("P2n", "stream: lmsfs vs curl > /dev/null (tok/s)",
        [r["lm"] for r in rs], [r["curl"] for r in rs], "tok/s", "info",
        lambda L, B, R: True)


def p3(m, n, tokens, interval_us, run):
    """n answers at once against one, at a local model's pace; the daemon's
    CPU per streamed token."""
    params = {"bench_tokens": tokens, "bench_interval_us": interval_us}
    one = m.conv("p3-solo-%d" % run, params)
    t0 = now()
    ask(one)
    solo = now() - t0
    convs = [m.conv("p3-%d-%d" % (run, i), params) for i in range(n)]
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
    cpu0 = cpu_s(m.proc.pid)
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
    cpu = cpu_s(m.proc.pid) - cpu0
    stop.set()
    th.join()
    # The same answers with 200 more tokens, 5 ms apart (still one token
    # per read): what a token costs beyond the answer's own (files,
    # fsyncs, the request). Enough tokens for the 10 ms CPU clock.
    extra = 200
    more = dict(params, bench_tokens=tokens + extra, bench_interval_us=5000)
    for c in convs:
        (m.state / "conversations" / c.name / "params.json").write_text(json.dumps(more))
    cpu1 = cpu_s(m.proc.pid)
    subs = [threading.Thread(target=submit, args=(c,)) for c in convs]
    for t in subs:
        t.start()
    for t in subs:
        t.join()
    for c in convs:
        with open(c / ".reply", "rb") as f:
            f.read()
    cpu_long = cpu_s(m.proc.pid) - cpu1
    return {"wall": wall, "solo": solo, "cpu_tok": cpu / (n * tokens) * 1e6,
            "cpu_marg": (cpu_long - cpu) / (n * extra) * 1e6,
            "ls": max(ls_times) * 1e3 if ls_times else float("nan")}


def p3_rows(rs, n):
    row("P3", "%d answers at once vs one (s)" % n, [r["wall"] for r in rs],
        [r["solo"] for r in rs], "s", "<= 1.25x", lambda L, B, R: R[1] <= 1.25)
    row("P3cpu", "daemon CPU per streamed token, marginal (us)",
        [r["cpu_marg"] for r in rs], [25] * len(rs), "us", "<= 25 us",
        lambda L, B, R: L[1] <= 25)
    row("P3cpa", "daemon CPU per token, answers' own costs in (us)",
        [r["cpu_tok"] for r in rs], [25] * len(rs), "us", "info",
        lambda L, B, R: True)
    row("P3ls", "ls conversations during P3 (max ms)", [r["ls"] for r in rs],
        [10] * len(rs), "ms", "info", lambda L, B, R: True)


def build_tree(root, n, lines=2):
    line = '{"role":"user","content":"hello"}\n{"role":"assistant","content":"hi"}\n'
    for i in range(n):
        d = root / ("c%06d" % i)
        d.mkdir()
        (d / "messages.jsonl").write_text(line * (lines // 2))
        (d / "stream").write_text("hi\n")


def timed(cmd, cwd=None):
    t = now()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=cwd)
    return now() - t


P4_CMDS = [
    ("find", lambda d, w: ["find", d, "-name", "messages.jsonl"], "<= 3x warm, 6x cold", 3, 6),
    ("ls -l", lambda d, w: ["ls", "-l", d], "<= 1.5x", 1.5, None),
    ("du -s", lambda d, w: ["du", "-s", d], "<= 6x", 6, None),
    ("rsync -an", lambda d, w: ["rsync", "-an", d + "/", str(w / "rsync-dest")], "<= 5x", 5, None),
    ("grep -rl", lambda d, w: ["grep", "-rl", "hello", d], "<= 8x", 8, None),
]


def p4(work, url, n, runs):
    """Tools over n conversations, through the mount and on the backing
    directory (the same disk), cold (kernel caches dropped) and warm."""
    m = Mount(work, url, "p4")
    conv_root = m.state / "conversations"
    conv_root.mkdir(parents=True)
    build_tree(conv_root, n)
    m.start()
    res = {name: {"cold": [], "cold_b": [], "warm": [], "warm_b": []}
           for name, *_ in P4_CMDS}
    try:
        mnt = str(m.mnt / "conversations")
        for _ in range(runs):
            for name, cmd, *_ in P4_CMDS:
                for d, key in ((mnt, ""), (str(conv_root), "_b")):
                    if drop_caches():
                        res[name]["cold" + key].append(timed(cmd(d, work)))
                    timed(cmd(d, work))
                    res[name]["warm" + key].append(timed(cmd(d, work)))
        rss = m.rss_mib()
    finally:
        m.stop()
    for name, _, target, warm_max, cold_max in P4_CMDS:
        r = res[name]
        row("P4", "%s, %d conversations, warm (ms)" % (name, n),
            [x * 1e3 for x in r["warm"]], [x * 1e3 for x in r["warm_b"]], "ms", target,
            lambda L, B, R, w=warm_max: R[1] <= w)
        if r["cold"]:
            cm = cold_max if cold_max else warm_max
            row("P4c", "%s, %d conversations, cold (ms)" % (name, n),
                [x * 1e3 for x in r["cold"]], [x * 1e3 for x in r["cold_b"]], "ms",
                "<= %gx" % cm, lambda L, B, R, c=cm: R[1] <= c)
    row("P4m", "daemon RSS after these (MiB)", [rss], [64], "MiB", "info",
        lambda L, B, R: True)


def p4_mount(work, url, n, runs):
    """Mount time and memory with n conversations in the state directory."""
    m = Mount(work, url, "p4big")
    conv_root = m.state / "conversations"
    conv_root.mkdir(parents=True)
    build_tree(conv_root, n)
    times, rss, rss_ls = [], [], []
    for _ in range(runs):
        times.append(m.start())
        try:
            rss.append(m.rss_mib())
            subprocess.run(["ls", "-l", str(m.mnt / "conversations")],
                           stdout=subprocess.DEVNULL, check=True)
            rss_ls.append(m.rss_mib())
        finally:
            m.stop()
    row("P4t", "mount with %d conversations (ms)" % n, [t * 1e3 for t in times],
        [1000] * runs, "ms", "<= 1 s", lambda L, B, R: L[1] <= 1000)
    row("P4r", "RSS after mount, %d conversations (MiB)" % n, rss, [64] * runs, "MiB",
        "<= 64 MiB", lambda L, B, R: L[1] <= 64)
    row("P4rl", "RSS after ls -l of them (MiB)" , rss_ls, [64] * runs, "MiB",
        "info", lambda L, B, R: True)


def p5(m, big_lines, cat_mb, runs):
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

    huge = m.conv("p5-cat")
    backing = m.state / "conversations" / "p5-cat" / "messages.jsonl"
    line = json.dumps({"role": "user", "content": "x" * 200}) + "\n"
    with open(backing, "w") as f:
        f.write(line * (cat_mb * 1024 * 1024 // len(line)))
    os.sync()
    size = backing.stat().st_size / 1e6
    through = str(huge / "messages.jsonl")
    out = {"a_big": [], "a_small": [], "t_big": [], "t_small": [],
           "cat1": [], "cat1_b": [], "cat": [], "cat_b": [],
           "jq1": [], "jq1_b": [], "jq": [], "jq_b": []}
    for _ in range(runs):
        out["a_small"].append(append_time(small) * 1e3)
        out["a_big"].append(append_time(big) * 1e3)
        # A whole turn includes sending the history: it grows with it.
        t = now()
        ask(big)
        out["t_big"].append((now() - t) * 1e3)
        t = now()
        ask(small)
        out["t_small"].append((now() - t) * 1e3)
        for tool, key in ((["cat"], "cat"), (["jq", "-c", "."], "jq")):
            # First read: the backing file hot in the page cache, nothing
            # of it in the mount's (the baseline: the same file, hot).
            drop_caches()
            timed(["cat", str(backing)])
            out[key + "1"].append(size / timed(tool + [through]))
            out[key + "1_b"].append(size / timed(tool + [str(backing)]))
            out[key].append(size / timed(tool + [through]))
            out[key + "_b"].append(size / timed(tool + [str(backing)]))
    row("P5a", "append one turn: %d vs 10 messages (ms)" % big_lines, out["a_big"],
        out["a_small"], "ms", "~1x", lambda L, B, R: R[1] <= 1.5)
    row("P5t", "whole turn: %d vs 10 messages (ms)" % big_lines, out["t_big"],
        out["t_small"], "ms", "info", lambda L, B, R: True)
    row("P5c1", "cat %d MB history, first read (MB/s)" % size, out["cat1"],
        out["cat1_b"], "MB/s", ">= 0.2x", lambda L, B, R: R[1] >= 0.2)
    row("P5c", "cat %d MB history, hot (MB/s)" % size, out["cat"], out["cat_b"],
        "MB/s", ">= 0.6x", lambda L, B, R: R[1] >= 0.6)
    row("P5j1", "jq -c . of it, first read (MB/s)", out["jq1"], out["jq1_b"], "MB/s",
        "info", lambda L, B, R: True)
    row("P5j", "jq -c . of it, hot (MB/s)", out["jq"], out["jq_b"], "MB/s",
        ">= 0.9x", lambda L, B, R: R[1] >= 0.9)


def p6(m, work, reps, run):
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
    return {"added": (median(t_tool) - median(t_plain)) * 1e3,
            "hand": median(by_hand) * 1e3}


def p6_rows(rs):
    row("P6", "tool round trip: tool turn minus plain turn (ms)",
        [r["added"] for r in rs], [r["hand"] for r in rs], "ms", "<= hand+5 ms",
        lambda L, B, R: L[1] <= B[1] + 5)


# P7 (connections opened for N streamed turns) is its own function, added
# beside these and called from main() like them.


def fmt3(v):
    return "%.3g" % v[1] if v[0] != v[0] else "%.3g (%.3g-%.3g)" % (v[1], v[0], v[2])


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
    work = Path(tempfile.mkdtemp(prefix="lmsfs-bench.", dir=os.environ.get("LMSFS_BENCH_DIR")))
    subprocess.run(["cc", "-O2", "-o", str(work / "sse_client"), str(HERE / "sse_client.c")]
                   + subprocess.run(["pkg-config", "--cflags", "--libs", "libcjson", "libcurl"],
                                    capture_output=True, text=True,
                                    check=True).stdout.split(), check=True)
    srv = Server(work)
    m = Mount(work, srv.url)
    t_start = now()
    print("lmsfs benchmark (%s); %d runs; server %s; work dir %s" % (BIN, RUNS, srv.url, work))
    try:
        m.start()
        if want("P1"):
            p1_rows([p1(m, srv, 10 if QUICK else 30) for _ in range(RUNS)])
        if want("P2"):
            p2_rows([p2(m, srv, work, 20000 if QUICK else 200000) for _ in range(RUNS)])
        # A local model streams 20-100 tokens/s: 20 tokens 25 ms apart.
        n3 = 16 if QUICK else 64
        if want("P3"):
            p3_rows([p3(m, n3, 20, 25000, i) for i in range(RUNS)], n3)
        if want("P5"):
            p5(m, 10000 if QUICK else 100000, 10 if QUICK else 100, RUNS)
        if want("P6"):
            p6_rows([p6(m, work, 5 if QUICK else 10, i) for i in range(RUNS)])
        m.stop()
        if want("P4"):
            p4(work, srv.url, P4_N, RUNS)
        if P4_MOUNT_N and want("P4"):
            p4_mount(work, srv.url, P4_MOUNT_N, RUNS)
        if want("P7"):
            p7(work, 10 if QUICK else 40)
    finally:
        if m.proc and m.proc.poll() is None:
            m.stop()
        srv.stop()
        if os.environ.get("LMSFS_BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": now() - t_start,
           "quick": QUICK, "runs": RUNS, "bin": BIN, "rows": ROWS}
    dest = Path(os.environ.get("LMSFS_BENCH_OUT", str(HERE / "results")))
    dest.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["| figure | what | lmsfs | baseline | ratio (min-max) | target | met |",
          "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        md.append("| %s | %s | %s %s | %s %s | %s | %s | %s |" % (
            r["figure"], r["what"], fmt3(r["lmsfs"]), r["unit"], fmt3(r["baseline"]),
            r["unit"], fmt3(r["ratio"]), r["target"], "yes" if r["met"] else "**no**"))
    dest.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("wrote %s.{json,md} (%.0f s)" % (dest, out["seconds"]))


if __name__ == "__main__":
    main()

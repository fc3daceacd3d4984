"""The on-disk store (README "Never losing data", "messages.jsonl",
"Security"): regressions found in how lmsfs keeps conversations in its state
directory, each driven through the mounted filesystem with real commands.

  1. a full disk: a refused append leaves no torn line; an answer that
     cannot be stored fails as class "storage" (errno ENOSPC) and the
     conversation works again once there is room;
  2. two identical prompts and a crash: both stay in the history;
  3. an in-place edit (r+ or O_TRUNC handle held open) while an answer is
     appended keeps the appended lines;
  4. kill -9 before the first token, with prompts queued behind: every
     user message gets an assistant line (answer or marked);
  5. symlinks planted in the state directory are never followed;
  6. cp -a, tar xpf and touch -d keep nanosecond mtimes;
  7. truncate -s +N of messages.jsonl is refused, of a plain file pads;
  8. an "a+" handle reads back its own appends.

Conventions of the store: user lines written by lmsfs may carry bookkeeping
members whose names start with "lmsfs" (e.g. "lmsfs_id"); messages are
compared without them. An answer cut short is an assistant line with an
"lmsfs_status" member.

The disk-full tests mount a 1 MiB tmpfs (needs root) as the state
directory; it is unmounted at teardown, after the daemon."""

import errno
import json
import os
import re
import time
from pathlib import Path
from stat import S_ISREG

import pytest

from conftest import (call_with_timeout, read_bytes, read_json, read_text,
                      run, stat, wait_for)
from conv_helpers import (FAST_FAIL, LLAMA, echo_of, errno_name,
                          history_text, holds_for, mkconv, opts, prompt, q,
                          reply, reply_errno, sh, status, stream_text)
from fake_lms import Reply

CHAT = ("POST", "/v1/chat/completions")
ENOSPC_TEXT = "No space left on device"


# ----------------------------------------------------------------- helpers

def smount(mount, state=None, **kw):
    """A mount with default_model set, failures neither retried nor
    tripping the breaker."""
    kw.setdefault("default_model", LLAMA)
    for k, v in FAST_FAIL.items():
        kw.setdefault(k, v)
    return mount(args=opts(**kw), state=state)


def plain(msg):
    """A message without lmsfs's bookkeeping members (lmsfs*)."""
    return {k: v for k, v in msg.items() if not k.startswith("lmsfs")}


def parse_history(text, where="messages.jsonl"):
    """Every line of a history as a dict; fails on a torn or non-JSON
    line."""
    assert text == "" or text.endswith("\n"), \
        "%s does not end with a newline: %r" % (where, text[-300:])
    out = []
    for i, ln in enumerate(text.split("\n")[:-1], 1):
        try:
            obj = json.loads(ln)
        except ValueError as e:
            raise AssertionError("%s line %d is not JSON (%s): %r" % (
                where, i, e, ln[:300]))
        assert isinstance(obj, dict), (where, i, ln[:300])
        out.append(obj)
    return out


def hist(m, name):
    return parse_history(history_text(m, name), "%s/messages.jsonl" % name)


def plain_hist(m, name):
    return [plain(x) for x in hist(m, name)]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def line(msg):
    return json.dumps(msg, separators=(",", ":")) + "\n"


def settle(m, name, timeout=20, queued_ok=False):
    """Waits until NAME is idle or failed with nothing queued (with
    queued_ok: prompts may stay queued behind a failure); returns its
    status."""
    def done():
        s = status(m, name)
        return s if (queued_ok or s["queued"] == 0) and \
            s["state"] in ("idle", "failed") else None
    return wait_for(done, timeout=timeout, interval=0.05,
                    message="%s idle or failed%s" % (
                        name, "" if queued_ok else " with nothing queued"))


def check_turns(msgs, where, mark="interrupted"):
    """Asserts that every user message is followed by an assistant line:
    its whole answer (the fake's echo), or one whose lmsfs_status starts
    with `mark` (a cut answer, maybe with empty content)."""
    for i, x in enumerate(msgs):
        if x.get("role") != "user":
            continue
        nxt = msgs[i + 1] if i + 1 < len(msgs) else None
        assert nxt is not None and nxt.get("role") == "assistant", (
            "%s: user message %d (%r) is followed by %r, not by an "
            "assistant line; history: %r" % (where, i, x.get("content"),
                                             nxt, msgs))
        if nxt.get("content") == echo_of(x.get("content")):
            continue
        st = nxt.get("lmsfs_status")
        assert isinstance(st, str) and st.startswith(mark), (
            "%s: the answer to user message %d (%r) is cut but not marked "
            "%r: %r" % (where, i, x.get("content"), mark, nxt))


def stream_or_empty(m, name):
    try:
        return stream_text(m, name)
    except FileNotFoundError:
        return ""


def errno_of(fn, timeout=15):
    """Runs fn() with a timeout; returns 0 or the errno of the OSError it
    raised."""
    def w():
        try:
            fn()
        except OSError as e:
            return e.errno
        return 0
    return call_with_timeout(w, timeout=timeout)


def metric(m, name, **labels):
    """The value of one sample of MOUNT/metrics (None when absent)."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for ln in read_text(m.path / "metrics").splitlines():
        mo = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$',
                      ln)
        if not mo or mo.group(1) != name:
            continue
        got = ",".join(sorted(
            p.strip() for p in (mo.group(2) or "").split(",") if p.strip()))
        if got == want:
            return float(mo.group(3))
    return None


def answer_lines(log, name):
    """The daemon's one-line summaries of NAME's answers."""
    return [ln for ln in log.splitlines()
            if "conversation=%s " % name in ln and "outcome=" in ln]


def fill_up(d):
    """Fills the filesystem of directory d with d/filler until it is full
    (dd fails with ENOSPC); returns the filler's path."""
    f = Path(d) / "filler"
    r = run(["dd", "if=/dev/zero", "of=%s" % f, "bs=4k"], timeout=30)
    assert r.returncode != 0 and ENOSPC_TEXT in r.stderr, \
        "dd did not fill %s: %r" % (d, r.stderr)
    return f


def free_bytes(d):
    st = os.statvfs(str(d))
    return st.f_bavail * st.f_frsize


def mtimes(d):
    """{file name: st_mtime_ns} of the regular files of directory d."""
    out = {}
    for n in call_with_timeout(os.listdir, str(d)):
        st = stat(Path(d) / n)
        if S_ISREG(st.st_mode):
            out[n] = st.st_mtime_ns
    return out


STAMP = "2020-01-02 03:04:05.123456789"


def ns_of(stamp):
    """A `touch -d` time stamp as st_mtime_ns (in this machine's zone)."""
    r = run(["date", "-d", stamp, "+%s%N"])
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/tmpfs (for a state directory). Request it
    before `mount` so that the daemon is gone before it is unmounted; if
    the unmount still finds it busy, it is detached lazily."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700",
             "tmpfs", str(d)])
    if r.returncode != 0:
        pytest.fail("cannot mount a tmpfs at %s (these tests need root): %s"
                    % (d, r.stderr), pytrace=False)
    try:
        yield d
    finally:
        r = run(["umount", str(d)])
        if r.returncode != 0:
            run(["umount", "-l", str(d)])


# ------------------------------------------------------------ 1. disk full

def test_full_disk_append_to_history_leaves_no_torn_line(fake, small_tmpfs,
                                                         mount):
    m = smount(mount, state=small_tmpfs)
    c = mkconv(m, "c")
    prompt(m, "c", "short")
    reply(m, "c")
    before = read_bytes(c / "messages.jsonl")
    assert len(parse_history(before.decode())) == 2
    fill_up(small_tmpfs)
    big = line(user("y" * 4000))

    def append():
        with open(c / "messages.jsonl", "a") as f:
            f.write(big)
    got = errno_of(append)
    assert got == errno.ENOSPC, \
        "appending to a history on a full disk: %s, wanted ENOSPC" % (
            errno_name(got) if got else "success")
    after = read_bytes(c / "messages.jsonl")
    assert after == before, \
        "the refused append changed messages.jsonl: %d -> %d bytes, " \
        "tail %r" % (len(before), len(after), after[-120:])


def test_full_disk_while_storing_an_answer_fails_as_storage(
        fake, small_tmpfs, mount):
    m = smount(mount, state=small_tmpfs)
    mkconv(m, "c")
    prompt(m, "c", "short")
    reply(m, "c")
    # About 300 KB of answer in 300 chunks; the disk keeps 96 KiB free.
    chunks = ["%06d " % i + "z" * 993 for i in range(300)]
    fake.enqueue(Reply(chunks=chunks))
    filler = fill_up(small_tmpfs)
    r = run(["truncate", "-s", "-96K", str(filler)])
    assert r.returncode == 0, r.stderr
    assert free_bytes(small_tmpfs) < 200 * 1024
    log_at = len(m.log())

    prompt(m, "c", "a long answer please")
    r = sh(m, "cat c/.reply > /dev/null", timeout=30)
    assert r.returncode != 0 and ENOSPC_TEXT in r.stderr, (
        "cat .reply of an answer that could not be stored: exit %d, %r"
        % (r.returncode, r.stderr))
    assert reply_errno(m, "c") == errno.ENOSPC
    st = status(m, "c")
    assert st["state"] == "failed", st
    assert st["error"]["class"] == "storage", st
    assert ENOSPC_TEXT in st["error"]["message"], st
    msgs = hist(m, "c")  # every line parses
    assert [plain(x) for x in msgs[:3]] == [
        user("short"), assistant(echo_of("short")),
        user("a long answer please")], msgs[:3]
    n = metric(m, "lmsfs_failures_total", **{"class": "storage"})
    assert n is not None and n >= 1, read_text(m.path / "metrics")
    h = read_json(m.path / "health")
    assert isinstance(h.get("storage"), dict), h
    assert h["storage"]["failures"] >= 1, h
    assert h["storage"]["last_error"], h
    # The answer's one-line summary in the log names the storage failure.
    def logged():
        t = m.log()[log_at:]
        return t if "storage" in t and answer_lines(t, "c") else None
    log = wait_for(logged, timeout=5, message="the storage failure logged")
    assert not any("outcome=ok" in ln for ln in answer_lines(log, "c")), \
        answer_lines(log, "c")

    # Room again: the conversation works, and so does an edit.
    os.unlink(filler)
    r = sh(m, "echo hi > c/prompt && cat c/.reply", timeout=30)
    assert r.returncode == 0, (r.stderr, status(m, "c"))
    assert r.stdout.rstrip("\n") == echo_of("hi")
    assert plain_hist(m, "c")[-2:] == [user("hi"), assistant(echo_of("hi"))]
    r = sh(m, "sed -i 's/hi/HI/' c/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert plain_hist(m, "c")[-2:] == [user("HI"), assistant(echo_of("HI"))]


# -------------------------------------------- 2. identical prompts + crash

def test_identical_prompts_survive_a_crash(fake, mount):
    m = smount(mount)
    mkconv(m, "c")
    fake.enqueue(Reply(text=" ".join("s%d" % i for i in range(60)),
                       delay=0.2))
    prompt(m, "c", "continue")
    wait_for(lambda: "s1" in stream_text(m, "c"), timeout=10,
             message="the first answer streaming")
    prompt(m, "c", "continue")
    assert status(m, "c")["queued"] == 1
    m.kill9()
    m.start()
    settle(m, "c")
    msgs = hist(m, "c")
    users = [plain(x) for x in msgs if x["role"] == "user"]
    assert users == [user("continue"), user("continue")], (
        "two acknowledged prompts \"continue\", the history holds %d: %r"
        % (len(users), msgs))
    check_turns(msgs, "c")


# ------------------------------------ 3. in-place edit while an answer lands

EDITS = ["r+ same length", "r+ shorter, truncated", "O_TRUNC writer"]


@pytest.mark.parametrize("how", EDITS)
def test_in_place_edit_keeps_lines_appended_meanwhile(fake, mount, how):
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "one")
    reply(m, "c")
    p = c / "messages.jsonl"
    orig = read_text(p)
    first, rest = orig.split("\n", 1)
    if how == "r+ same length":
        edited = first.replace('"one"', '"ONE"', 1) + "\n" + rest
        assert len(edited) == len(orig) and edited != orig
    else:
        edited = line(user("edited first question")) + rest
    want = [plain(x) for x in parse_history(edited)] + [
        user("two"), assistant(echo_of("two"))]

    f = call_with_timeout(open, p, "w" if how == "O_TRUNC writer" else "r+")
    try:
        prompt(m, "c", "two")
        assert reply(m, "c").rstrip("\n") == echo_of("two")

        def rewrite():
            f.seek(0)
            f.write(edited)
            if how == "r+ shorter, truncated":
                f.truncate()
            f.close()
        call_with_timeout(rewrite)
    finally:
        if not f.closed:
            try:
                call_with_timeout(f.close)
            except OSError:
                pass
    try:
        wait_for(lambda: plain_hist(m, "c") == want, timeout=5)
    except AssertionError:
        raise AssertionError(
            "%s: edit through a handle held open while lmsfs appended:\n"
            "want %r\ngot  %r" % (how, want, plain_hist(m, "c")))


# ------------------------- 4. kill -9 before the first token, queue behind

@pytest.mark.parametrize("wait_in", ["headers", "first chunk"])
def test_kill9_before_first_token_answers_every_prompt(fake, mount,
                                                       wait_in):
    """The server takes 5 s before the first token of p1 (before its
    response headers, or after the headers and the role chunk); p2 and p3
    are queued; kill -9 meanwhile."""
    m = smount(mount)
    mkconv(m, "c")
    if wait_in == "headers":
        fake.enqueue(Reply(head_delay=5.0))
    else:
        fake.enqueue(Reply(first_delay=5.0))
    prompt(m, "c", "p1")
    fake.wait_requests(1)
    prompt(m, "c", "p2")
    prompt(m, "c", "p3")
    assert status(m, "c")["queued"] == 2
    assert stream_or_empty(m, "c").strip() == ""  # no token yet
    m.kill9()
    m.start()
    settle(m, "c")
    msgs = hist(m, "c")
    assert [x["content"] for x in msgs if x["role"] == "user"] == [
        "p1", "p2", "p3"], msgs
    check_turns(msgs, "c")
    assert [plain(x) for x in msgs[-4:]] == [
        user("p2"), assistant(echo_of("p2")),
        user("p3"), assistant(echo_of("p3"))], msgs


class SlowFirst:
    """Fake chat behaviour: the first request for a prompt starting with
    "a" waits 5 s before its response headers; everything else (a prompt
    asked again included) is answered at once."""

    def __init__(self):
        self.seen = set()

    def __call__(self, req):
        msgs = (req["body"] or {}).get("messages") or [{}]
        text = msgs[-1].get("content") or ""
        if text.startswith("a") and text not in self.seen:
            self.seen.add(text)
            return Reply(head_delay=5.0)
        return Reply()


def last_user_is(text):
    def pred(req):
        if req["method"] != "POST" or not isinstance(req["body"], dict):
            return False
        msgs = req["body"].get("messages") or [{}]
        return msgs[-1].get("content") == text
    return pred


def test_quick_crash_cycles_before_first_token(fake, mount):
    """Ten kill -9 cycles, each while prompt aN waits for its first token
    and bN is queued behind it."""
    fake.routes[CHAT] = SlowFirst()
    m = smount(mount)
    mkconv(m, "c")
    sent = []
    t0 = time.monotonic()
    for cycle in range(10):
        a, b = "a%d" % cycle, "b%d" % cycle
        prompt(m, "c", a)
        fake.wait_for_request(last_user_is(a))
        prompt(m, "c", b)
        sent += [a, b]
        m.kill9()
        m.start()
    settle(m, "c", timeout=30)
    took = time.monotonic() - t0
    msgs = hist(m, "c")
    assert [x["content"] for x in msgs if x["role"] == "user"] == sent, msgs
    check_turns(msgs, "c")
    assert took < 30, "10 crash cycles took %.1f s" % took


# ------------------------------------- 5. symlinks in the state directory

SECRET = "SECRET-d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize("when", ["before mount", "while mounted"])
@pytest.mark.parametrize("victim", ["system", "stream", "messages.jsonl"])
def test_symlinks_in_state_dir_are_not_followed(fake, mount, tmp_path,
                                                victim, when):
    """STATE/conversations/c/VICTIM is made a symlink to a file outside the
    state directory (while the daemon is down, or behind its back while it
    runs); then a prompt."""
    m = smount(mount)
    mkconv(m, "c")
    if when == "before mount":
        m.umount()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / victim
    if victim == "messages.jsonl":
        target.write_text(line(user(SECRET)) + line(assistant(SECRET)))
    else:
        target.write_text("%s\n" % SECRET)
    os.utime(target, ns=(ns_of(STAMP), ns_of(STAMP)))
    before = (target.read_bytes(), os.stat(target).st_mtime_ns)
    os.symlink(str(target), str(m.state / "conversations" / "c" / victim))
    log_at = len(m.log())
    if when == "before mount":
        m.start()

    r = prompt(m, "c", "hello", check=False)
    if r.returncode == 0:
        # Answered, or failed (the prompt may stay queued behind it).
        settle(m, "c", queued_ok=True)
    elif victim == "system":
        assert "Too many levels of symbolic links" in r.stderr, r.stderr
    for req in fake.requests:
        assert SECRET.encode() not in req["raw"], \
            "the target of the symlink %s was sent to the server" % victim
    after = (target.read_bytes(), os.stat(target).st_mtime_ns)
    assert after == before, \
        "the file outside the state dir behind %s changed: %r" % (victim,
                                                                  after)
    for n in ("system", "stream", "messages.jsonl"):
        r = sh(m, "cat c/%s" % n)
        assert SECRET not in r.stdout, \
            "cat c/%s through the mount shows the symlink's target" % n
    if victim == "system":
        log = m.log()[log_at:]
        assert any(("symlink" in ln.lower() or "symbolic link" in ln)
                   and "system" in ln for ln in log.splitlines()), \
            "the log does not mention the refused symlink:\n" + log[-3000:]


# ----------------------------------------------------- 6. nanosecond mtimes

COPIES = ["cp -a inside the mount", "cp -a from outside", "tar xpf"]
FILES = ("messages.jsonl", "stream", "system", "notes.txt")


def outside_conversation(d):
    """A conversation as it would be on a disk, every file stamped
    STAMP."""
    d.mkdir(parents=True)
    (d / "messages.jsonl").write_text(line(user("q")) +
                                      line(assistant(echo_of("q"))))
    (d / "stream").write_text(echo_of("q") + "\n")
    (d / "system").write_text("Be brief.\n")
    (d / "notes.txt").write_text("some notes\n")
    r = run(["touch", "-d", STAMP] + [str(d / n) for n in FILES])
    assert r.returncode == 0, r.stderr
    return d


def mtime_diff(got, want):
    return "\n".join("  %s: %s, source %s" % (n, got.get(n), want.get(n))
                     for n in sorted(set(want) | set(got))
                     if got.get(n) != want.get(n))


@pytest.mark.parametrize("how", COPIES)
def test_copies_keep_nanosecond_mtimes(fake, mount, tmp_path, how):
    m = smount(mount)
    conv = m.path / "conversations"
    if how == "cp -a inside the mount":
        src = mkconv(m, "src")
        prompt(m, "src", "q")
        reply(m, "src")
        r = sh(m, "echo 'Be brief.' > src/system && echo notes > "
                  "src/notes.txt && touch -d %s %s" % (
                      q(STAMP), " ".join("src/" + n for n in FILES)))
        assert r.returncode == 0, r.stderr
        # touch -d itself sets nanoseconds, on the history too.
        got = {n: stat(src / n).st_mtime_ns for n in FILES}
        assert got == {n: ns_of(STAMP) for n in FILES}, got
        r = sh(m, "cp -a src dst")
    else:
        src = outside_conversation(tmp_path / "out" / "dst")
        if how == "cp -a from outside":
            r = sh(m, "cp -a %s dst" % q(src))
        else:
            tarball = tmp_path / "conv.tar"
            r = run(["tar", "--format=posix", "-C", str(src.parent), "-cf",
                     str(tarball), "dst"])
            assert r.returncode == 0, r.stderr
            r = sh(m, "tar -xpf %s" % q(tarball))
    assert r.returncode == 0, r.stderr
    want = {n: v for n, v in mtimes(src).items() if n in FILES}
    assert sorted(want) == sorted(FILES), want
    assert all(v % 10 ** 9 for v in want.values()), want  # sub-second part

    def same():
        got = {n: v for n, v in mtimes(conv / "dst").items() if n in FILES}
        return got == want
    try:
        # Settled (the kernel releases cp's files after close() returns)
        # and stays so.
        wait_for(same, timeout=5)
        holds_for(same, seconds=0.3)
    except AssertionError:
        got = {n: v for n, v in mtimes(conv / "dst").items() if n in FILES}
        raise AssertionError("%s: mtimes (ns) differ from the source's:\n%s"
                             % (how, mtime_diff(got, want)))
    if how == "cp -a inside the mount":
        stamp = "2021-05-06 07:08:09.5"
        r = sh(m, "touch -d %s dst/messages.jsonl" % q(stamp))
        assert r.returncode == 0, r.stderr
        assert stat(conv / "dst" / "messages.jsonl").st_mtime_ns == \
            ns_of(stamp)


# -------------------------------------------------- 7. truncate -s +N

def test_truncate_grow_refused_for_history_pads_plain_files(fake, mount):
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "q")
    reply(m, "c")
    before = read_bytes(c / "messages.jsonl")
    r = sh(m, "truncate -s +1K c/messages.jsonl")
    assert r.returncode != 0 and "Invalid argument" in r.stderr, (
        "truncate -s +1K messages.jsonl: exit %d, %r" % (r.returncode,
                                                          r.stderr))
    assert read_bytes(c / "messages.jsonl") == before
    assert stat(c / "messages.jsonl").st_size == len(before)

    r = sh(m, "printf 'abc' > c/notes.txt && truncate -s +1K c/notes.txt")
    assert r.returncode == 0, r.stderr
    assert read_bytes(c / "notes.txt") == b"abc" + b"\0" * 1024
    assert stat(c / "notes.txt").st_size == 1027


# ------------------------------------------- 8. a+ sees its own appends

def test_append_plus_reader_sees_its_own_appends(fake, mount):
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "q")
    reply(m, "c")
    p = c / "messages.jsonl"
    before = read_text(p)
    new = line(user("appended through a+"))

    def a_plus():
        with open(p, "a+") as f:
            f.write(new)
            f.flush()
            f.seek(0)
            return f.read()
    seen = call_with_timeout(a_plus)
    assert seen == before + new, (
        "an a+ handle read back %r after appending %r" % (seen[-200:], new))
    assert read_text(p) == before + new


# ------------------------------- review findings: merges, locks, retries

def test_rename_of_an_invalid_file_racing_retry_does_not_deadlock(fake, mount):
    """mv of a file that is not a valid history over messages.jsonl while
    someone writes retry to .ctl: the refused rename must not wait for the
    conversation's lock while holding the history's (that deadlocked)."""
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "one")
    reply(m, "c")
    script = (
        "end=$(( $(date +%%s) + 3 ))\n"
        "while [ $(date +%%s) -lt $end ]; do\n"
        "  printf 'not json\\n' > %s/bad.jsonl\n"
        "  mv %s/bad.jsonl %s/messages.jsonl 2>/dev/null\n"
        "done\n" % (q(str(c)), q(str(c)), q(str(c))))
    loop_retry = (
        "end=$(( $(date +%%s) + 3 ))\n"
        "while [ $(date +%%s) -lt $end ]; do\n"
        "  echo retry > %s/.ctl 2>/dev/null\n"
        "done\n" % q(str(c)))
    a = run(["bash", "-c", "( %s ) &\n( %s ) &\nwait" % (script, loop_retry)],
            timeout=20)
    assert a.returncode == 0, a.stderr
    # Still serving: status and a new prompt answer.
    call_with_timeout(status, m, "c", timeout=5)
    prompt(m, "c", "after the race")
    assert reply(m, "c").rstrip("\n") == echo_of("after the race")


def test_in_place_edit_after_the_history_was_removed_is_refused(fake, mount):
    """A writer holding messages.jsonl open (r+) after `rm` of it and a new
    history appended by lmsfs: its close must not splice a fragment of the
    new file after its content (a torn line); it is refused with EBUSY and
    the new history stays."""
    m = smount(mount)
    c = mkconv(m, "c")
    p = c / "messages.jsonl"
    call_with_timeout(p.write_text, line(user("old")) + line(assistant("a")))
    f = call_with_timeout(open, p, "r+")
    try:
        r = sh(m, "rm c/messages.jsonl")
        assert r.returncode == 0, r.stderr
        prompt(m, "c", "new prompt after rm")
        assert reply(m, "c").rstrip("\n") == echo_of("new prompt after rm")
        before = read_text(p)

        def rewrite():
            f.seek(0)
            f.write(line(user("OLD")) + line(assistant("a")))
            f.close()
        with pytest.raises(OSError) as ei:
            call_with_timeout(rewrite)
        assert ei.value.errno == errno.EBUSY, ei.value
    finally:
        if not f.closed:
            try:
                call_with_timeout(f.close)
            except OSError:
                pass
    assert read_text(p) == before
    parse_history(read_text(p))


def test_mv_of_a_snapshot_restores_the_history(fake, mount):
    """cp messages.jsonl snap; one more turn; mv snap messages.jsonl: the
    history is the snapshot again (a file closed long ago is not a sed
    temporary whose appended lines are kept)."""
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "first")
    reply(m, "c")
    r = sh(m, "cp c/messages.jsonl c/snap.jsonl")
    assert r.returncode == 0, r.stderr
    snap = read_text(c / "snap.jsonl")
    time.sleep(1.5)  # the snapshot is closed for longer than sed's rename takes
    prompt(m, "c", "second")
    reply(m, "c")
    r = sh(m, "mv c/snap.jsonl c/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert read_text(c / "messages.jsonl") == snap


def test_sed_i_keeps_an_answer_appended_while_it_ran(fake, mount):
    """sed -i on messages.jsonl while an answer is being appended: the
    edited lines and the answer are both there, once."""
    m = smount(mount)
    c = mkconv(m, "c")
    prompt(m, "c", "alpha")
    reply(m, "c")
    fake.routes[CHAT] = Reply(text="slow answer", delay=0.05)
    prompt(m, "c", "beta")
    # Edit while beta's answer streams; whatever sed saw is merged once.
    r = sh(m, "sed -i 's/alpha/ALPHA/' c/messages.jsonl")
    assert r.returncode == 0, r.stderr
    reply(m, "c")
    msgs = plain_hist(m, "c")
    users = [x["content"] for x in msgs if x["role"] == "user"]
    assert users == ["ALPHA", "beta"], msgs
    assert msgs[-1] == assistant("slow answer"), msgs
    assert [x["role"] for x in msgs] == ["user", "assistant", "user", "assistant"], msgs


def test_clean_unmount_interrupts_a_running_answer_and_retry_works(fake, mount):
    """fusermount -u while an answer streams: the answer is kept marked
    "interrupted" (not "cancelled": nobody cancelled it), .status says so
    after the next mount, and retry answers the prompt again."""
    m = smount(mount)
    mkconv(m, "c")
    text = " ".join("w%d" % i for i in range(40))
    fake.enqueue(Reply(text=text, delay=0.2))
    prompt(m, "c", "tell me")
    wait_for(lambda: "w1" in stream_or_empty(m, "c"), timeout=10,
             message="the answer started")
    m.umount()
    m.start()
    last = hist(m, "c")[-1]
    assert last["role"] == "assistant", last
    assert last.get("lmsfs_status", "").startswith("interrupted"), last
    assert text.startswith(last["content"]) and last["content"], last
    st = status(m, "c")
    assert st["state"] == "failed" and st["error"]["class"] == "interrupted", st
    r = sh(m, "echo retry > c/.ctl")
    assert r.returncode == 0, r.stderr
    assert reply(m, "c").rstrip("\n") == echo_of("tell me")
    msgs = plain_hist(m, "c")
    assert msgs[-2:] == [user("tell me"), assistant(echo_of("tell me"))], msgs


def test_full_disk_prompt_is_refused_where_the_shell_sees_it(fake, small_tmpfs,
                                                              mount):
    """bash's echo ignores errors from close(): on a full disk a prompt is
    refused from write(), so `echo q > prompt` fails, and .status, health and
    metrics say why."""
    m = smount(mount, state=small_tmpfs)
    mkconv(m, "c")
    prompt(m, "c", "short")
    reply(m, "c")
    fill_up(small_tmpfs)
    r = sh(m, "echo 'a question' > c/prompt")
    assert r.returncode != 0, "echo into prompt on a full disk exited 0"
    assert ENOSPC_TEXT in r.stderr, r.stderr
    st = status(m, "c")
    assert "room" in st.get("rejected_write", ""), st
    assert read_json(m.path / "health")["storage"]["failures"] >= 1
    assert metric(m, "lmsfs_failures_total", **{"class": "storage"}) >= 1
    assert "a question" not in history_text(m, "c")


def test_retry_after_a_stalled_prompt_waits_for_the_new_attempt(fake, mount):
    """A prompt that could not enter the history stays queued; once the
    cause is gone, `echo retry > .ctl && cat .reply` gives its answer (not
    the failure already reported)."""
    m = smount(mount)
    mkconv(m, "c")
    d = m.state / "conversations" / "c"
    outside = d.parent.parent / "outside.jsonl"
    outside.write_text("")
    os.symlink(outside, d / "messages.jsonl")
    prompt(m, "c", "stuck")
    wait_for(lambda: status(m, "c")["state"] == "failed", timeout=10)
    assert status(m, "c")["queued"] == 1, status(m, "c")
    (d / "messages.jsonl").unlink()
    r = sh(m, "echo retry > c/.ctl && cat c/.reply")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == echo_of("stuck")
    assert outside.read_text() == ""


def test_reading_a_planted_symlink_through_the_mount_is_eloop(fake, mount,
                                                              tmp_path):
    m = smount(mount)
    mkconv(m, "c")
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    os.symlink(secret, m.state / "conversations" / "c" / "system")
    r = sh(m, "cat c/system")
    assert r.returncode != 0 and "SECRET" not in r.stdout, (r.stdout, r.stderr)
    assert "Too many levels of symbolic links" in r.stderr, r.stderr


# ------------------------------- review: behaviours with no test before

def test_the_prompt_queue_is_private(fake, mount):
    """The spool holds prompt text: only its owner may read it (0600)."""
    m = smount(mount)
    mkconv(m, "c")
    prompt(m, "c", "a private question")
    reply(m, "c")
    spool = m.state / "conversations" / "c" / ".lmsfs" / "queue"
    assert spool.exists()
    assert (spool.stat().st_mode & 0o777) == 0o600, oct(spool.stat().st_mode)
    private = spool.parent.stat().st_mode & 0o777
    assert private == 0o700, oct(private)


def test_retry_that_cannot_be_saved_changes_nothing(fake, small_tmpfs, mount):
    """echo retry > .ctl on a full disk fails (ENOSPC, from write(), so the
    shell sees it) and the marked answer it would drop is still there."""
    from fake_lms import HttpError
    m = smount(mount, state=small_tmpfs)
    c = mkconv(m, "c")
    fake.enqueue(HttpError(500, "broken"))
    prompt(m, "c", "q")
    settle(m, "c")
    before = read_bytes(c / "messages.jsonl")
    assert "lmsfs_status" in hist(m, "c")[-1], hist(m, "c")
    filler = fill_up(small_tmpfs)
    r = sh(m, "echo retry > c/.ctl")
    assert r.returncode != 0 and ENOSPC_TEXT in r.stderr, (r.returncode, r.stderr)
    assert read_bytes(c / "messages.jsonl") == before
    os.unlink(filler)
    r = sh(m, "echo retry > c/.ctl && cat c/.reply", timeout=30)
    assert r.returncode == 0, r.stderr
    assert plain_hist(m, "c") == [user("q"), assistant(echo_of("q"))]


def test_retry_settles_a_mark_still_owed(fake, small_tmpfs, mount):
    """An answer that could not be stored, nor its marked line: once there
    is room, retry answers the prompt, with no empty marked line before the
    answer (the mark owed for the failure is settled by the retry)."""
    m = smount(mount, state=small_tmpfs)
    mkconv(m, "c")
    prompt(m, "c", "short")
    reply(m, "c")
    chunks = ["%06d " % i + "z" * 993 for i in range(300)]
    fake.enqueue(Reply(chunks=chunks))
    filler = fill_up(small_tmpfs)
    r = run(["truncate", "-s", "-96K", str(filler)])
    assert r.returncode == 0, r.stderr
    prompt(m, "c", "a long answer please")
    assert reply_errno(m, "c", timeout=30) == errno.ENOSPC
    assert plain_hist(m, "c")[-1] == user("a long answer please")
    os.unlink(filler)
    r = sh(m, "echo retry > c/.ctl && cat c/.reply", timeout=30)
    assert r.returncode == 0, r.stderr
    assert plain_hist(m, "c") == [
        user("short"), assistant(echo_of("short")),
        user("a long answer please"), assistant(echo_of("a long answer please"))]

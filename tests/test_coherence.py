"""Coherence: what the kernel may cache never hides a change lmsfs makes.

lmsfs lets the kernel cache entries, attributes, directory listings and
the history's pages, and pushes an invalidation for every change the
daemon makes itself (an answer, a retry, a commit). These tests prime the
kernel's caches first (stat, cat, ls), then let the daemon change the file
and look at once, as a user would. A build that caches without notifying
fails them (tail -f sees no token, stat a stale size, ls no new file).
"""

import json
import os
import subprocess
import time

from conftest import call_with_timeout, read_json, read_text, run, wait_for
from conv_helpers import (FAST_FAIL, Bg, ask, cdir, cmount, convs, echo_of,
                          mkconv, prompt, reply, sh, slow_reply, wait_state)
from fake_lms import Disconnect


def backing(m, name, f):
    return m.state / "conversations" / name / f


def mount_stat(m, name, f):
    """stat -c %s through the mount (a new process, like a user's)."""
    r = sh(m, "stat -c %%s %s/%s" % (name, f))
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def mount_cat(m, name, f):
    r = sh(m, "cat %s/%s" % (name, f))
    assert r.returncode == 0, r.stderr
    return r.stdout


def prime(m, name):
    """Fills the kernel's caches: attributes, pages, the listing."""
    for f in ("stream", "messages.jsonl"):
        mount_stat(m, name, f)
        mount_cat(m, name, f)
        mount_cat(m, name, f)
    sh(m, "ls -l %s; ls -l" % name)


def test_answer_appends_seen_by_stat_and_cat_at_once(fake, mount):
    m = cmount(mount)
    mkconv(m, "a")
    ask(m, "a", "one")
    prime(m, "a")
    ask(m, "a", "two")
    # .reply has returned: the answer is on disk, and visible at once.
    for f in ("stream", "messages.jsonl"):
        disk = backing(m, "a", f).read_text()
        assert mount_stat(m, "a", f) == len(disk.encode()), f
        assert mount_cat(m, "a", f) == disk, f
    assert echo_of("two") in mount_cat(m, "a", "stream")
    # And by an open file's fstat and read (a reader that stays open).
    with open(cdir(m, "a") / "messages.jsonl") as fh:
        first = call_with_timeout(fh.read)
        ask(m, "a", "three")
        size = backing(m, "a", "messages.jsonl").stat().st_size
        assert os.fstat(fh.fileno()).st_size == size
        rest = call_with_timeout(fh.read)
    assert (first + rest) == backing(m, "a", "messages.jsonl").read_text()


def test_stream_size_grows_during_an_answer(fake, mount):
    m = cmount(mount)
    mkconv(m, "g")
    ask(m, "g", "warm")
    prime(m, "g")
    rep, text = slow_reply(words=10, delay=0.2)
    fake.enqueue(rep)
    prompt(m, "g", "go")
    path = cdir(m, "g") / "stream"
    # While the answer runs, every size the disk reaches shows through
    # stat soon after (tail -f relies on it).
    seen = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        disk = backing(m, "g", "stream").stat().st_size
        if disk > seen:
            wait_for(lambda: os.stat(path).st_size >= disk, timeout=1,
                     message="stat of stream reaching %d bytes" % disk)
            seen = disk
        if backing(m, "g", "stream").read_text().endswith(text + "\n"):
            break
        time.sleep(0.05)
    reply(m, "g")
    assert os.stat(path).st_size == backing(m, "g", "stream").stat().st_size


def test_tail_f_sees_every_token(fake, mount, tmp_path):
    m = cmount(mount)
    mkconv(m, "t")
    ask(m, "t", "warm")
    prime(m, "t")
    words = 20
    rep, text = slow_reply(words=words, delay=0.1)
    fake.enqueue(rep)
    bg = Bg("tail -f -s 0.1 -n +1 t/stream", tmp_path / "tail.out", convs(m))
    try:
        wait_for(lambda: echo_of("warm") in bg.output().decode(), timeout=5)
        prompt(m, "t", "go")
        # Each word appears in tail's output while the answer runs, not
        # all at the end.
        grew = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = bg.output().decode()
            grew.add(len(out))
            if out.endswith(text + "\n"):
                break
            time.sleep(0.03)
        out = bg.output().decode()
        assert out.endswith(text + "\n"), out
        for i in range(words):
            assert "w%d" % i in out
        assert len(grew) >= 5, "tail -f output lengths: %s" % sorted(grew)
    finally:
        bg.kill()
    reply(m, "t")


def test_files_created_by_the_daemon_are_listed(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "n")
    # An empty conversation, listed (the kernel may cache the listing);
    # prompt is there before the question, so that asking creates nothing
    # through the mount (which the kernel would see by itself).
    assert sh(m, "ls -a n").stdout.split() == [".", ".."]
    assert sh(m, "touch n/prompt").returncode == 0
    assert sh(m, "ls -a n").stdout.split() == [".", "..", "prompt"]
    assert sh(m, "ls -l n").returncode == 0
    assert sh(m, "ls -l").returncode == 0
    r = sh(m, "stat n/stream")
    assert r.returncode != 0
    ask(m, "n", "hello")
    assert sorted(sh(m, "ls n").stdout.split()) == ["messages.jsonl", "prompt", "stream"]
    assert sorted(os.listdir(c)) == ["messages.jsonl", "prompt", "stream"]
    assert mount_cat(m, "n", "stream") == echo_of("hello") + "\n"
    r = sh(m, "find n -type f | sort")
    assert r.stdout.split() == ["n/messages.jsonl", "n/prompt", "n/stream"]


def test_retry_cut_and_new_answer_seen(fake, mount):
    m = cmount(mount, **FAST_FAIL)
    mkconv(m, "r")
    fake.enqueue(Disconnect(after_chunks=2))
    prompt(m, "r", "alpha beta gamma delta")
    wait_state(m, "r", "failed")
    prime(m, "r")
    marked = mount_cat(m, "r", "messages.jsonl")
    assert "lmsfs_status" in marked
    r = sh(m, "echo retry > r/.ctl")
    assert r.returncode == 0, r.stderr
    reply(m, "r")
    disk = backing(m, "r", "messages.jsonl").read_text()
    assert "lmsfs_status" not in disk
    assert mount_cat(m, "r", "messages.jsonl") == disk
    assert mount_stat(m, "r", "messages.jsonl") == len(disk.encode())
    lines = [json.loads(x) for x in disk.splitlines()]
    assert lines[-1]["content"] == echo_of("alpha beta gamma delta")


def test_users_rewrites_seen_same_size_too(fake, mount):
    m = cmount(mount)
    mkconv(m, "u")
    ask(m, "u", "one")
    ask(m, "u", "two")
    prime(m, "u")
    # A rewind with sed -i (a temporary renamed over the history).
    r = sh(m, "sed -i '3,$d' u/messages.jsonl")
    assert r.returncode == 0, r.stderr
    disk = backing(m, "u", "messages.jsonl").read_text()
    assert len(disk.splitlines()) == 2
    assert mount_cat(m, "u", "messages.jsonl") == disk
    assert mount_stat(m, "u", "messages.jsonl") == len(disk.encode())
    prime(m, "u")
    # The same size, other bytes: only the content tells.
    r = sh(m, "sed -i 's/Echo: one/ECHO: ONE/' u/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert "ECHO: ONE" in mount_cat(m, "u", "messages.jsonl")
    prime(m, "u")
    # A rewrite with > (committed at close), same size again.
    new = disk.replace("Echo: one", "echo: One")
    assert len(new) == len(disk)
    with open(cdir(m, "u") / "messages.jsonl", "w") as fh:
        fh.write(new)
    assert mount_cat(m, "u", "messages.jsonl") == new
    # The daemon appends to what the user wrote: seen at once too.
    ask(m, "u", "three")
    disk = backing(m, "u", "messages.jsonl").read_text()
    assert disk.startswith(new) and echo_of("three") in disk
    assert mount_cat(m, "u", "messages.jsonl") == disk


def test_mv_and_rm_while_a_reader_holds_the_directory(fake, mount):
    m = cmount(mount)
    for n in ("x", "y"):
        mkconv(m, n)
        ask(m, n, "hi " + n)
    prime(m, "x")
    top = os.open(str(convs(m)), os.O_RDONLY | os.O_DIRECTORY)
    inner = os.open(str(cdir(m, "x")), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(top)) == ["x", "y"]
        assert sorted(os.listdir(inner)) == ["messages.jsonl", "prompt", "stream"]
        r = sh(m, "mv x z")
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(top)) == ["y", "z"]
        assert sorted(sh(m, "ls").stdout.split()) == ["y", "z"]
        assert sh(m, "stat x").returncode != 0
        assert mount_cat(m, "z", "stream") == echo_of("hi x") + "\n"
        # The renamed conversation still answers, under its new name.
        ask(m, "z", "again")
        assert echo_of("again") in mount_cat(m, "z", "stream")
        assert sorted(os.listdir(inner)) == ["messages.jsonl", "prompt", "stream"]
        r = sh(m, "rm -r z")
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(top)) == ["y"]
        assert sh(m, "ls").stdout.split() == ["y"]
        assert sh(m, "stat z").returncode != 0
        assert sh(m, "ls z/stream").returncode != 0
        # A new conversation by the old name starts empty.
        mkconv(m, "z")
        assert sh(m, "ls -a z").stdout.split() == [".", ".."]
    finally:
        os.close(inner)
        os.close(top)


def test_status_and_health_changes_seen(fake, mount):
    m = cmount(mount)
    mkconv(m, "s")
    st = cdir(m, "s") / ".status"
    assert read_json(st)["state"] == "idle"
    os.stat(st)
    rep, _ = slow_reply(words=10, delay=0.2)
    fake.enqueue(rep)
    prompt(m, "s", "go")
    wait_for(lambda: read_json(st)["state"] == "generating", timeout=10)
    reply(m, "s")
    assert read_json(st)["state"] == "idle"
    assert read_json(st)["answered"] == 1
    health = m.path / "health"
    os.stat(health)
    assert read_json(health)["reachable"] is True
    assert read_json(health)["last_failure"] is None
    fake.stop()
    # The server went away: health says so on the next read.
    prompt(m, "s", "nobody home", check=False)
    wait_state(m, "s", "failed", timeout=30)
    h = read_json(health)
    assert h["reachable"] is False and h["last_failure"] is not None, h
    assert read_json(st)["state"] == "failed"


def test_users_append_to_stream_seen_by_readers(fake, mount):
    m = cmount(mount)
    mkconv(m, "w")
    ask(m, "w", "one")
    prime(m, "w")
    with open(cdir(m, "w") / "stream") as held:
        assert call_with_timeout(held.read) == echo_of("one") + "\n"
        r = sh(m, "echo note >> w/stream")
        assert r.returncode == 0, r.stderr
        disk = backing(m, "w", "stream").read_text()
        assert disk.endswith("note\n")
        assert mount_cat(m, "w", "stream") == disk
        assert mount_stat(m, "w", "stream") == len(disk.encode())
        held.seek(0)
        assert call_with_timeout(held.read) == disk
    ask(m, "w", "two")
    assert mount_cat(m, "w", "stream") == backing(m, "w", "stream").read_text()


def test_models_listing_follows_the_server(fake, mount):
    m = cmount(mount, models_ttl="100ms")
    first = sorted(os.listdir(m.path / "models"))
    assert len(first) == 2
    sorted(os.listdir(m.path / "models"))
    # The server unloads one: models/ stops listing it (no stale cache).
    loaded = [x for x in fake.models if x.get("state") == "loaded"]
    fake.models = [x for x in fake.models if x is not loaded[0]]
    wait_for(lambda: len(os.listdir(m.path / "models")) == 1, timeout=10,
             message="models/ listing one model")


def test_daemonized_mount_announces_changes(fake, mount):
    # The notifier thread must run in the daemon, not in the process that
    # forked it: answers are seen at once and .reply does not wait for it.
    from conv_helpers import LLAMA, opts
    m = mount(args=opts(default_model=LLAMA), foreground=False)
    mkconv(m, "d")
    ask(m, "d", "one")
    prime(m, "d")
    t0 = time.monotonic()
    ask(m, "d", "two")
    assert time.monotonic() - t0 < 1.5
    for f in ("stream", "messages.jsonl"):
        disk = backing(m, "d", f).read_text()
        assert mount_cat(m, "d", f) == disk, f
        assert mount_stat(m, "d", f) == len(disk.encode()), f


def test_reasoning_created_and_grown_by_the_daemon_is_seen(fake, mount):
    from fake_lms import Reply
    m = cmount(mount)
    mkconv(m, "r")
    ask(m, "r", "warm")
    prime(m, "r")
    # No reasoning yet: the listing (cached) has no reasoning file.
    assert "reasoning" not in sh(m, "ls r").stdout.split()
    fake.enqueue(Reply(text="Done.", reasoning="thinking hard",
                       reasoning_key="reasoning_content"))
    prompt(m, "r", "think")
    assert reply(m, "r") == "Done."
    assert "reasoning" in sh(m, "ls r").stdout.split()
    disk = backing(m, "r", "reasoning").read_text()
    assert mount_stat(m, "r", "reasoning") == len(disk.encode())
    assert mount_cat(m, "r", "reasoning") == disk == "thinking hard\n"
    # A second turn grows it: seen at once by stat and cat.
    fake.enqueue(Reply(text="Again.", reasoning="more thought",
                       reasoning_key="reasoning"))
    prompt(m, "r", "again")
    assert reply(m, "r") == "Again."
    disk = backing(m, "r", "reasoning").read_text()
    assert disk == "thinking hard\n\nmore thought\n"
    assert mount_stat(m, "r", "reasoning") == len(disk.encode())
    assert mount_cat(m, "r", "reasoning") == disk


def test_attachments_moved_by_the_daemon_are_seen(fake, mount):
    m = cmount(mount)
    mkconv(m, "f")
    ask(m, "f", "warm")
    assert sh(m, "mkdir f/attach && echo note > f/attach/n.txt").returncode == 0
    # Prime the listings and entries of attach/ and the conversation.
    assert sh(m, "ls f/attach").stdout.split() == ["n.txt"]
    assert "files" not in sh(m, "ls f").stdout.split()
    assert sh(m, "stat f/attach/n.txt").returncode == 0
    ask(m, "f", "read it")
    # lmsfs moved the file: attach/ is empty, files/ holds it.
    assert sh(m, "ls f/attach").stdout.split() == []
    assert sh(m, "stat f/attach/n.txt").returncode != 0
    assert "files" in sh(m, "ls f").stdout.split()
    assert sh(m, "ls f/files").stdout.split() == ["n.txt"]
    assert mount_cat(m, "f", "files/n.txt") == "note\n"
    # The same name may be attached again.
    assert sh(m, "echo second > f/attach/n.txt").returncode == 0
    ask(m, "f", "and this")
    assert sorted(sh(m, "ls f/files").stdout.split()) == ["n-1.txt", "n.txt"]
    assert sh(m, "ls f/attach").stdout.split() == []


def test_reader_holding_the_history_follows_a_rewrite(fake, mount, tmp_path):
    # A committed rewrite is a new file put in place under the same
    # inode of the mount: a reader that held messages.jsonl open (tail -f,
    # less) reads what is in place now, as its fstat says, and the pages
    # it reads are not the old file's served to the next cat.
    m = cmount(mount)
    mkconv(m, "h")
    ask(m, "h", "one")
    ask(m, "h", "two")
    fd = os.open(str(cdir(m, "h") / "messages.jsonl"), os.O_RDONLY)
    try:
        assert os.read(fd, 1 << 20).decode() == backing(m, "h", "messages.jsonl").read_text()
        r = sh(m, "head -n 2 h/messages.jsonl > %s/x && cat %s/x > h/messages.jsonl"
               % (tmp_path, tmp_path))
        assert r.returncode == 0, r.stderr
        ask(m, "h", "three")
        disk = backing(m, "h", "messages.jsonl").read_text()
        assert len(disk.splitlines()) == 4 and echo_of("three") in disk
        assert os.fstat(fd).st_size == len(disk.encode())
        assert os.pread(fd, 1 << 20, 0).decode() == disk
        assert mount_cat(m, "h", "messages.jsonl") == disk
    finally:
        os.close(fd)


def test_reader_holding_a_setting_follows_commits(fake, mount):
    m = cmount(mount)
    mkconv(m, "p")
    old = '{"temperature": 0.5}\n'
    new = '{"top_p": 0.25, "seed": 1}\n'
    assert sh(m, "printf '%%s' '%s' > p/params.json" % old).returncode == 0
    with open(cdir(m, "p") / "params.json") as held:
        assert held.read() == old
        # Refused: the old text stays, for the holder and a new reader.
        r = sh(m, "/bin/echo nope > p/params.json")
        assert r.returncode != 0
        assert mount_cat(m, "p", "params.json") == old
        assert mount_stat(m, "p", "params.json") == len(old)
        held.seek(0)
        assert held.read() == old
        # Accepted: the holder reads the new text, as fstat says.
        assert sh(m, "printf '%%s' '%s' > p/params.json" % new).returncode == 0
        assert mount_cat(m, "p", "params.json") == new
        assert mount_stat(m, "p", "params.json") == len(new)
        assert os.fstat(held.fileno()).st_size == len(new)
        held.seek(0)
        assert held.read() == new


def test_touch_loads_a_model_another_client_just_unloaded(fake, mount):
    # The kernel must not keep a model's name once lmsfs sees it gone: a
    # touch right after would open the old file (and load nothing)
    # instead of creating it (a load), and return 0.
    from conftest import listdir
    from conv_helpers import LLAMA
    from test_models_load import loads, msh, v1
    v1(fake)
    m = mount(args=("-o", "models_ttl=100ms"))
    assert LLAMA in listdir(m.path / "models")
    assert read_json(m.path / "models" / LLAMA)["loaded_instances"]
    os.stat(m.path / "models" / LLAMA)
    fake.models[1]["_instances"] = []
    fake.models[1]["state"] = "not-loaded"
    wait_for(lambda: LLAMA not in listdir(m.path / "models"), timeout=10,
             message="models/ without the unloaded model")
    r = msh(m, "cat %s" % LLAMA)
    assert r.returncode != 0 and "No such file" in r.stderr
    r = msh(m, "touch %s" % LLAMA)
    assert r.returncode == 0, r.stderr
    assert loads(fake) == [{"model": LLAMA}]
    assert read_json(m.path / "models" / LLAMA)["loaded_instances"]


def test_temporary_renamed_over_the_history_with_lines_merged_in(fake, mount):
    # sed -i's way, slowed down: its temporary is written (through the
    # kernel's cache) and still open when an answer lands, then renamed
    # over messages.jsonl; lmsfs merges the answer's lines in. The kernel
    # must drop what it cached of the temporary (size, pages): a cat that
    # missed the answer would make the next edit drop it for good.
    m = cmount(mount)
    mkconv(m, "s")
    ask(m, "s", "one")
    prime(m, "s")
    d = cdir(m, "s")
    edited = mount_cat(m, "s", "messages.jsonl").replace("Echo: one", "ECHO: ONE")
    with open(d / "sedXYZ", "w") as tmp:
        tmp.write(edited)
        tmp.flush()
        os.stat(d / "sedXYZ")
        ask(m, "s", "two")
        os.rename(d / "sedXYZ", d / "messages.jsonl")
    disk = backing(m, "s", "messages.jsonl").read_text()
    assert disk.startswith(edited) and echo_of("two") in disk
    assert mount_stat(m, "s", "messages.jsonl") == len(disk.encode())
    assert mount_cat(m, "s", "messages.jsonl") == disk


def test_reads_at_any_offset_through_a_writable_handle(fake, mount):
    """A handle opened for writing reads past the page cache, at whatever
    offset the reader asks: a read from inside a page spans one page more
    than its size, and must come back whole, never hang."""
    m = cmount(mount)
    mkconv(m, "o")
    line = '{"role":"user","content":"%s"}\n' % ("x" * 200)
    data = (line * 8000).encode()
    path = cdir(m, "o") / "messages.jsonl"
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDWR)
    try:
        for off in (0, 1, 100, 4095, 4097, 65536 + 7, len(data) - 10):
            for size in (1, 4096, 65536, 131072, 1 << 20):
                got = call_with_timeout(os.pread, fd, size, off, timeout=10)
                assert got == data[off:off + size], (off, size)
    finally:
        os.close(fd)

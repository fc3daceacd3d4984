"""lmsfs's own files of a conversation live in one hidden directory,
conversations/NAME/.lmsfs/ in the state directory (README "Never losing
data"): the spool, the running answer's marker and the scratch names of a
replacement. Checked through the mount:

  1. bookkeeping never changes the conversation directory: its mtime and
     ctime stay put across answers, and `tar` of a conversation while an
     answer streams never says the directory "changed as we read it"
     (stream itself is the live transcript and may be reported);
  2. a state directory in the earlier layout (.lmsfs.queue, .lmsfs.partial
     and scratch files in the conversation directory) is moved on mount:
     the queued prompt is answered, the interrupted answer marked;
  3. a symlink planted as .lmsfs is refused, never followed, and rm -r
     of the conversation still works;
  4. rm -r, mv and cp -r of conversations through the mount.
"""

import errno
import json
import os
import re
import shutil
import time

from conftest import read_text, wait_for
from conv_helpers import (LLAMA, FAST_FAIL, cdir, echo_of, history, mkconv,
                          opts, os_errno, prompt, reply, sh, status,
                          wait_answered)


def bmount(mount, **kw):
    kw.setdefault("default_model", LLAMA)
    for k, v in FAST_FAIL.items():
        kw.setdefault(k, v)
    return mount(args=opts(**kw))


def back(m, name):
    return m.state / "conversations" / name


def clear_private(b):
    """Removes lmsfs's own files of backing conversation directory b."""
    shutil.rmtree(b / ".lmsfs", ignore_errors=True)
    for x in private_names(b):
        os.unlink(b / x)


def private_names(d):
    return sorted(x for x in os.listdir(d) if x.startswith(".lmsfs"))


# ------------------------------------------------- 1. the directory stays

def test_answers_do_not_change_the_conversation_directory(fake, mount):
    m = bmount(mount)
    mkconv(m, "d")
    prompt(m, "d", "first")
    assert reply(m, "d").strip() == echo_of("first")
    b = back(m, "d")
    before = os.stat(b)
    seen = os.stat(cdir(m, "d"))
    fake.chunk_delay = 0.02
    for text in ("second one two three", "third one two three"):
        prompt(m, "d", text)
    wait_answered(m, "d", 3)
    after = os.stat(b)
    assert (after.st_mtime_ns, after.st_ctime_ns) == \
        (before.st_mtime_ns, before.st_ctime_ns), "the backing directory changed"
    now = os.stat(cdir(m, "d"))
    assert (now.st_mtime_ns, now.st_ctime_ns) == \
        (seen.st_mtime_ns, seen.st_ctime_ns), "the directory changed in the mount"
    assert private_names(b) == [".lmsfs"]


def test_tar_during_answers_does_not_see_the_directory_change(fake, mount):
    """tar -c of a conversation while answers stream: no "file changed as
    we read it" about the directory itself. tar may still report
    t/stream and t/messages.jsonl (with -f /dev/null too: it compares
    their size and ctime before and after): they do grow while an answer
    streams and when it is stored."""
    m = bmount(mount)
    mkconv(m, "t")
    prompt(m, "t", "first")
    reply(m, "t")
    # Many short answers: each starts and ends (where lmsfs's bookkeeping
    # used to create and remove a file in the directory) while tar runs.
    fake.chunk_delay = 0.005
    n, sent = 40, 0
    complaints = []
    runs = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = status(m, "t")
        if st["answered"] >= n + 1 and st["state"] == "idle":
            break
        while sent < n and sent - (st["answered"] - 1) < 8:
            prompt(m, "t", "%d one two three" % sent)
            sent += 1
        for cmd in ("tar -cf /dev/null t", "tar -cf /dev/null t",
                    "tar -cf - t | cat > /dev/null"):
            r = sh(m, cmd)
            runs += 1
            complaints += [ln + " (" + cmd + ")" for ln in r.stderr.splitlines()
                           if "changed as we read it" in ln]
    wait_answered(m, "t", n + 1, timeout=30)
    assert runs >= 10, runs
    about_dir = [c for c in complaints if c.startswith("tar: t: ")]
    assert not about_dir, complaints
    # Anything else tar noticed is a file the answer writes, never a
    # private one.
    for c in complaints:
        assert re.search(r"t/(stream|messages\.jsonl|reasoning): file changed", c), c


# ------------------------------------------------ 2. the earlier layout

def test_earlier_layout_is_moved_and_its_prompts_answered(fake, mount):
    m = bmount(mount)
    mkconv(m, "o")
    prompt(m, "o", "hello")
    assert reply(m, "o").strip() == echo_of("hello")
    m.kill9()
    b = back(m, "o")
    # As an earlier version leaves it, killed while answering "cut": the
    # prompt taken into the history, part of its answer in stream, the
    # marker and the spool in the conversation directory; "after" queued.
    clear_private(b)
    off = os.path.getsize(b / "stream")
    with open(b / "messages.jsonl", "a") as f:
        f.write(json.dumps({"role": "user", "content": "cut",
                            "lmsfs_id": "00000000000000c1"}) + "\n")
    with open(b / "stream", "a") as f:
        f.write("half an ans")
    (b / ".lmsfs.partial").write_text('{"stream_offset":%d}\n' % off)
    (b / ".lmsfs.queue").write_text(
        json.dumps({"id": "00000000000000c1", "content": "cut"}) + "\n" +
        json.dumps({"id": "00000000000000c2", "content": "after"}) + "\n")
    (b / ".lmsfs.tmp.system").write_text("half written")
    m.start()
    # Resumed at mount, before anyone looks at the conversation.
    wait_for(lambda: echo_of("after") in (b / "messages.jsonl").read_text(),
             timeout=15)
    wait_answered(m, "o", 1)
    wait_for(lambda: len(history(m, "o")) >= 5, timeout=15)
    h = history(m, "o")
    assert h[2] == {"role": "user", "content": "cut"}, h
    assert h[3]["role"] == "assistant" and h[3]["content"] == "half an ans", h
    assert h[3]["lmsfs_status"].startswith("interrupted"), h
    assert h[4] == {"role": "user", "content": "after"}, h
    wait_for(lambda: len(history(m, "o")) == 6, timeout=15)
    assert history(m, "o")[5]["content"] == echo_of("after")
    # Moved: nothing of lmsfs's is left beside the user's files.
    assert private_names(b) == [".lmsfs"], private_names(b)
    assert sorted(os.listdir(b / ".lmsfs")) in (["queue", "tmp.system"],
                                                ["tmp.system"])
    assert (b / ".lmsfs" / "tmp.system").read_text() == "half written"
    r = sh(m, "ls -a o")
    assert ".lmsfs" not in r.stdout and "system" not in r.stdout, r.stdout
    # The next prompt works as usual.
    prompt(m, "o", "again")
    wait_answered(m, "o", 2)
    assert history(m, "o")[-1]["content"] == echo_of("again")


# --------------------------------------------- 3. a symlink planted there

def test_a_symlink_planted_as_the_private_directory_is_refused(fake, mount,
                                                               tmp_path):
    m = bmount(mount)
    mkconv(m, "s")
    prompt(m, "s", "hello")
    reply(m, "s")
    m.kill9()
    b = back(m, "s")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clear_private(b)
    os.symlink(elsewhere, b / ".lmsfs")
    m.start()
    r = prompt(m, "s", "through the link?", check=False)
    assert r.returncode != 0, "a prompt was spooled through a symlink"
    st = status(m, "s")
    assert "prompt queue" in (st["error"] or {}).get("message", ""), st
    # Settings replaced through the mount are refused too (their scratch
    # files would go there).
    def write_system():
        with open(cdir(m, "s") / "system", "w") as f:
            f.write("x\n")
    assert os_errno(write_system) == errno.ELOOP
    assert read_text(cdir(m, "s") / "system") == ""
    assert os.listdir(elsewhere) == []
    assert "refused to follow a symlink" in m.log()
    # rm -r removes the link, never what it points to.
    r = sh(m, "rm -r s")
    assert r.returncode == 0, r.stderr
    assert not b.exists() and elsewhere.is_dir()


# ------------------------------------------------- 4. rm -r, mv and cp -r

def test_rm_mv_and_cp_of_conversations(fake, mount):
    m = bmount(mount)
    mkconv(m, "a")
    prompt(m, "a", "one")
    reply(m, "a")
    assert (back(m, "a") / ".lmsfs").is_dir()
    # mv carries lmsfs's directory with it.
    r = sh(m, "mv a b")
    assert r.returncode == 0, r.stderr
    assert (back(m, "b") / ".lmsfs").is_dir() and not back(m, "a").exists()
    prompt(m, "b", "two")
    wait_answered(m, "b", 2)
    # cp -r copies what the user sees: the copy starts with nothing queued.
    fake.chunk_delay = 0.05
    prompt(m, "b", "three four five six seven eight")
    r = sh(m, "cp -r b c")
    assert r.returncode == 0, r.stderr
    c = back(m, "c")
    assert private_names(c) in ([], [".lmsfs"])
    assert not (c / ".lmsfs").exists() or os.listdir(c / ".lmsfs") == []
    assert status(m, "c")["queued"] == 0 and status(m, "c")["state"] == "idle"
    wait_answered(m, "b", 3)
    # rm -r of both, lmsfs's directory included.
    r = sh(m, "rm -r b c")
    assert r.returncode == 0, r.stderr
    assert os.listdir(m.state / "conversations") == []
    # A conversation renamed over an empty one (lmsfs's directory is all
    # the empty one holds).
    mkconv(m, "f")
    prompt(m, "f", "kept")
    wait_answered(m, "f", 1)
    mkconv(m, "g")
    assert os_errno(os.rename, cdir(m, "f"), cdir(m, "g")) == 0
    assert history(m, "g")[-1]["content"] == echo_of("kept")
    assert os.listdir(back(m, "g") / ".lmsfs") in ([], ["queue"])
    r = sh(m, "rm -r g")
    assert r.returncode == 0, r.stderr
    # rmdir of a conversation that only lmsfs's directory keeps.
    mkconv(m, "e")
    assert os_errno(os.rmdir, cdir(m, "e")) == 0
    assert not back(m, "e").exists()


# ----------------------------------- 5. a file of the user's named .lmsfs

def test_a_users_file_named_lmsfs_is_never_lost(fake, mount):
    """Earlier versions let a user make a file named .lmsfs. It is kept
    (as .lmsfs~, or .lmsfs~1 when that is taken, nothing replaced) and the
    conversation works; rmdir of a conversation it alone is in does not
    remove it."""
    m = bmount(mount)
    mkconv(m, "u")
    prompt(m, "u", "hello")
    reply(m, "u")
    mkconv(m, "v")
    m.kill9()
    b = back(m, "u")
    clear_private(b)
    (b / ".lmsfs").write_text("mine\n")
    (b / ".lmsfs~").write_text("backup\n")
    v = back(m, "v")
    clear_private(v)
    (v / ".lmsfs").write_text("keep me\n")
    m.start()
    prompt(m, "u", "again")
    wait_answered(m, "u", 1)
    assert history(m, "u")[-1]["content"] == echo_of("again")
    r = sh(m, "ls -a u")
    assert ".lmsfs~\n" in r.stdout and ".lmsfs~1\n" in r.stdout, r.stdout
    assert read_text(cdir(m, "u") / ".lmsfs~") == "backup\n"
    assert read_text(cdir(m, "u") / ".lmsfs~1") == "mine\n"
    # rmdir of a conversation the user's file is in: not empty, kept.
    assert os_errno(os.rmdir, cdir(m, "v")) == errno.ENOTEMPTY
    kept = [x for x in os.listdir(v) if x in (".lmsfs", ".lmsfs~")]
    assert kept, os.listdir(v)
    assert (v / ".lmsfs~").read_text() == "keep me\n"
    r = sh(m, "ls -a v")
    assert ".lmsfs~" in r.stdout, r.stdout

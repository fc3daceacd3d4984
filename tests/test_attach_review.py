"""Attachments (issue 14), review findings: the mock provider reads an
array-form prompt; moves out of attach/ survive a name taken in files/
meanwhile and never follow a symlink planted in the state directory;
attach/ and files/ are listed without following symlinks. Each test drives
the mounted filesystem."""

import json
import os

import pytest

from conftest import listdir, read_text, run, wait_for
from conv_helpers import (LLAMA, FAST_FAIL, cdir, chat_bodies, cmount,
                          history, mkconv, opts, prompt, qn, reply, sh,
                          status, wait_answered)
from fake_lms import content_parts


def put(m, conv, name, data):
    r = sh(m, "mkdir -p %s/attach" % qn(conv))
    assert r.returncode == 0, r.stderr
    p = cdir(m, conv) / "attach" / name
    with open(p, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return p


def file_ref(path):
    return {"type": "file", "file": {"path": path}}


# --- the mock provider ---------------------------------------------------------

def test_mock_reads_the_text_of_a_prompt_with_attachments(mount):
    """The mock used to read an array content as an empty prompt."""
    m = mount(args=opts(provider="mock", mock_delay="1ms",
                        default_model="mock-1b-instruct"))
    mkconv(m, "mk")
    put(m, "mk", "notes.txt", "the total is 12.50\n")
    put(m, "mk", "todo.md", "- buy milk\n")
    prompt(m, "mk", "what do these say?")
    out = reply(m, "mk").strip()
    assert out == ("This is the lmsfs mock model (turn 1). You said: what do "
                   "these say? (2 files attached: notes.txt, todo.md)"), out
    prompt(m, "mk", "and now?")
    out = reply(m, "mk").strip()
    assert out == ("This is the lmsfs mock model (turn 2). You said: and "
                   "now?"), out


# --- moves: names taken meanwhile, planted symlinks, later files ----------------

def vmount(mount, fake):
    fake.set_model_type(LLAMA, "vlm")
    return cmount(mount, **FAST_FAIL)


def texts_sent(fake):
    return [p.get("text") for p in content_parts(chat_bodies(fake)[-1])]


def crash_state(m, conv, entry_files):
    """What kill -9 leaves between the spool's fsync and the renames: the
    spool entry lists the moves, the files are still in attach/."""
    m.kill9()
    d = m.state / "conversations" / conv
    entry = {"id": "00112233aabbccdd", "content": "after the crash",
             "files": entry_files}
    (d / ".lmsfs").mkdir(exist_ok=True)
    (d / ".lmsfs" / "queue").write_text(json.dumps(entry) + "\n")
    return d


def test_a_name_taken_in_files_before_the_move_gets_the_next_one(mount, fake):
    """files/a.txt made by the user between the choice of the name and the
    move: the attachment is not left behind in attach/, the user's file is
    not sent in its place, and the history names where it went."""
    m = vmount(mount, fake)
    mkconv(m, "tk")
    put(m, "tk", "a.txt", "the attachment")
    ino = os.stat(m.state / "conversations" / "tk" / "attach" /
                  "a.txt").st_ino  # the inode on disk, not the mount's
    d = crash_state(m, "tk", [["a.txt", "a.txt", ino]])
    (d / "files").mkdir()
    (d / "files" / "a.txt").write_text("the user's own")
    m.start()
    wait_answered(m, "tk", 1)
    assert listdir(cdir(m, "tk") / "attach") == []
    assert sorted(listdir(cdir(m, "tk") / "files")) == ["a-1.txt", "a.txt"]
    assert read_text(cdir(m, "tk") / "files" / "a.txt") == "the user's own"
    assert read_text(cdir(m, "tk") / "files" / "a-1.txt") == "the attachment"
    assert history(m, "tk")[0]["content"][1] == file_ref("files/a-1.txt")
    assert "[file a-1.txt]\nthe attachment" in texts_sent(fake)


def test_a_symlink_planted_as_files_is_never_moved_through(mount, fake,
                                                            tmp_path):
    """files/ replaced in the state directory by a symlink to a directory
    outside it: the attachment stays in attach/, nothing lands outside, the
    prompt stays queued with the reason in .status (no history line naming
    a file that is not in files/), and a retry once it is fixed sends it."""
    m = vmount(mount, fake)
    mkconv(m, "sl")
    put(m, "sl", "a.txt", "secret")
    d = crash_state(m, "sl", [["a.txt", "a.txt"]])
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, d / "files")
    m.start()
    err = wait_for(lambda: status(m, "sl").get("error"))
    assert os.listdir(outside) == []
    assert os.listdir(d / "attach") == ["a.txt"]
    assert err["class"] == "storage", err
    assert "attach/ to files/" in err["message"], err
    assert "symbolic links" in err["message"], err
    assert not (d / "messages.jsonl").exists()  # no line was written
    os.unlink(d / "files")
    r = sh(m, "echo retry > sl/.ctl")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: history(m, "sl") and status(m, "sl")["state"] == "idle"
             and not status(m, "sl").get("error"), message="the retry")
    assert listdir(cdir(m, "sl") / "attach") == []
    assert read_text(cdir(m, "sl") / "files" / "a.txt") == "secret"
    assert history(m, "sl")[0]["content"][1] == file_ref("files/a.txt")
    assert "[file a.txt]\nsecret" in texts_sent(fake)


def test_a_later_file_of_the_same_name_stays_for_the_next_prompt(mount, fake):
    """A queued prompt's attachment moved at submit; the user removes it
    from files/ and drops a new a.txt in attach/ for the next prompt: when
    the queued prompt is taken, the new file is not moved with it."""
    m = vmount(mount, fake)
    fake.chunk_delay = 0.2
    mkconv(m, "lt")
    prompt(m, "lt", "a slow first question")
    wait_for(lambda: status(m, "lt")["state"] != "idle")
    put(m, "lt", "a.txt", "for the second")
    prompt(m, "lt", "the second")
    assert listdir(cdir(m, "lt") / "attach") == []
    os.unlink(cdir(m, "lt") / "files" / "a.txt")
    put(m, "lt", "a.txt", "for the third")
    fake.chunk_delay = 0.0
    # The second prompt's file is gone from files/: its answer fails.
    err = wait_for(lambda: status(m, "lt").get("error"), timeout=30)
    assert "files/a.txt" in err["message"], err
    assert listdir(cdir(m, "lt") / "attach") == ["a.txt"]
    assert read_text(cdir(m, "lt") / "attach" / "a.txt") == "for the third"



# --- special files never block ---------------------------------------------------

def test_a_fifo_in_attach_or_files_is_refused_without_blocking(mount, fake):
    """A FIFO planted in attach/ is refused at write(); one planted in
    files/ under a referenced name fails the answer naming it. Neither is
    ever opened for a blocking read (the worker would hang)."""
    m = vmount(mount, fake)
    mkconv(m, "ff")
    put(m, "ff", "ok.txt", "fine")
    d = m.state / "conversations" / "ff"
    os.mkfifo(d / "attach" / "pipe.txt")
    r = prompt(m, "ff", "with a fifo", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r.stderr
    assert sorted(listdir(cdir(m, "ff") / "attach")) == ["ok.txt", "pipe.txt"]
    os.unlink(d / "attach" / "pipe.txt")
    prompt(m, "ff", "first")
    reply(m, "ff")
    os.unlink(d / "files" / "ok.txt")
    os.mkfifo(d / "files" / "ok.txt")
    prompt(m, "ff", "again")
    err = wait_for(lambda: status(m, "ff").get("error"), timeout=10)
    assert err["class"] == "bad_request"
    assert "files/ok.txt" in err["message"] and "plain file" in err["message"]

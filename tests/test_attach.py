"""Attachments (issue 14): conversations/NAME/attach/ is an outbox whose
files go with the next prompt and move to files/; the history keeps
references ({"type": "file", "file": {"path": "files/NAME"}}), expanded
when a request is sent (images to base64 data URLs, UTF-8 text to a text
part naming the file). Everything through the mount, with real commands."""

import errno
import json
import os
import re
import zlib
import struct

import pytest

from conftest import listdir, read_bytes, read_json, read_text, run, wait_for
from conv_helpers import (LLAMA, FAST_FAIL, cdir, chat_bodies, cmount,
                          history, mkconv, prompt, q, qn, reply, sh, status,
                          wait_answered)
from fake_lms import content_parts, image_bytes


def png(extra=b""):
    """A small valid PNG (1x1, grey), with optional bytes after IEND."""
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x80")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", idat) + chunk(b"IEND", b"") + extra)


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4


def vmount(mount, fake, mtype="vlm", **kw):
    """A mount whose default model has /api/v0 type mtype."""
    fake.set_model_type(LLAMA, mtype)
    return cmount(mount, **dict(FAST_FAIL, **kw))


def put(m, conv, name, data):
    d = cdir(m, conv) / "attach"
    r = sh(m, "mkdir -p %s/attach" % qn(conv))
    assert r.returncode == 0, r.stderr
    p = d / name
    if isinstance(data, str):
        data = data.encode()
    with open(p, "wb") as f:
        f.write(data)
    return p


def file_ref(path):
    return {"type": "file", "file": {"path": path}}


def last_user_parts(fake):
    return content_parts(chat_bodies(fake)[-1])


# --- the outbox, the move and the request ----------------------------------

def test_image_and_text_go_with_the_prompt(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "pics")
    img = png(os.urandom(3000))
    put(m, "pics", "receipt.png", img)
    put(m, "pics", "notes.txt", "total: 12.50 €\n\"quoted\"\tline\n")
    prompt(m, "pics", "What is the total?")
    # Moved at once, before the answer.
    assert listdir(cdir(m, "pics") / "attach") == []
    assert listdir(cdir(m, "pics") / "files") == ["notes.txt", "receipt.png"]
    reply(m, "pics")
    parts = last_user_parts(fake)
    assert parts[0] == {"type": "text", "text": "What is the total?"}
    # Names sorted: notes.txt, then receipt.png.
    assert parts[1]["type"] == "text"
    assert parts[1]["text"] == ("[file notes.txt]\ntotal: 12.50 €\n"
                                "\"quoted\"\tline\n")
    assert parts[2]["type"] == "image_url"
    assert image_bytes(parts[2]) == ("image/png", img)
    # The history keeps references, in the documented form.
    h = history(m, "pics")
    assert h[0] == {"role": "user", "content": [
        {"type": "text", "text": "What is the total?"},
        file_ref("files/notes.txt"), file_ref("files/receipt.png")]}
    assert read_bytes(cdir(m, "pics") / "files" / "receipt.png") == img


def test_jpeg_and_later_turns_resend_the_files(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "j")
    put(m, "j", "photo.jpg", JPEG)
    prompt(m, "j", "look")
    reply(m, "j")
    prompt(m, "j", "and again")
    reply(m, "j")
    body = chat_bodies(fake)[-1]
    imgs = [p for p in content_parts(body) if p["type"] == "image_url"]
    assert [image_bytes(p) for p in imgs] == [("image/jpeg", JPEG)]
    # The second turn's user line is plain text: nothing was attached.
    assert history(m, "j")[2] == {"role": "user", "content": "and again"}


def test_a_taken_name_gets_a_numbered_suffix(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "n")
    first, second = png(b"1"), png(b"2")
    put(m, "n", "receipt.png", first)
    prompt(m, "n", "one")
    reply(m, "n")
    put(m, "n", "receipt.png", second)
    prompt(m, "n", "two")
    reply(m, "n")
    assert listdir(cdir(m, "n") / "files") == ["receipt-1.png", "receipt.png"]
    assert read_bytes(cdir(m, "n") / "files" / "receipt-1.png") == second
    assert history(m, "n")[2]["content"][1] == file_ref(
        "files/receipt-1.png")


# --- refusals at write() -----------------------------------------------------

def refused(m, conv, text, err):
    r = prompt(m, conv, text, check=False)
    assert r.returncode != 0, "prompt accepted"
    assert os.strerror(err) in r.stderr, r.stderr
    return r


def test_image_for_a_model_that_cannot_see_is_refused(mount, fake):
    m = vmount(mount, fake, mtype="llm")
    mkconv(m, "blind")
    img = png()
    put(m, "blind", "a.png", img)
    put(m, "blind", "b.txt", "text")
    refused(m, "blind", "what is this?", errno.EINVAL)
    assert listdir(cdir(m, "blind") / "attach") == ["a.png", "b.txt"]
    assert "files" not in listdir(cdir(m, "blind"))
    st = read_text(cdir(m, "blind") / ".status")
    assert "cannot see images" in st and LLAMA in st
    assert chat_bodies(fake) == []
    assert history(m, "blind") == [] if os.path.exists(
        cdir(m, "blind") / "messages.jsonl") else True
    # Text alone is fine for that model.
    os.unlink(cdir(m, "blind") / "attach" / "a.png")
    prompt(m, "blind", "read this")
    reply(m, "blind")
    assert last_user_parts(fake)[1]["text"] == "[file b.txt]\ntext"


def test_when_the_server_says_nothing_the_image_is_sent(mount, fake):
    m = vmount(mount, fake, mtype=None)
    mkconv(m, "unk")
    put(m, "unk", "a.png", png())
    prompt(m, "unk", "see?")
    reply(m, "unk")
    assert last_user_parts(fake)[1]["type"] == "image_url"


def test_binary_file_is_refused(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "bin")
    put(m, "bin", "blob.bin", b"\x00\x01\x02\xffbinary")
    put(m, "bin", "ok.txt", "fine")
    refused(m, "bin", "hm", errno.EINVAL)
    assert listdir(cdir(m, "bin") / "attach") == ["blob.bin", "ok.txt"]
    assert "files" not in listdir(cdir(m, "bin"))
    assert "blob.bin" in read_text(cdir(m, "bin") / ".status")
    assert chat_bodies(fake) == []


def test_over_the_size_caps_is_efbig(mount, fake):
    m = vmount(mount, fake, max_attach_bytes="1K",
               max_attach_request_bytes="1500")
    mkconv(m, "big")
    put(m, "big", "large.txt", "x" * 1025)
    refused(m, "big", "too big", errno.EFBIG)
    assert listdir(cdir(m, "big") / "attach") == ["large.txt"]
    assert "max_attach_bytes" in read_text(cdir(m, "big") / ".status")
    # Each under the cap, together over the request's cap.
    os.unlink(cdir(m, "big") / "attach" / "large.txt")
    put(m, "big", "a.txt", "a" * 800)
    put(m, "big", "b.txt", "b" * 800)
    refused(m, "big", "too much", errno.EFBIG)
    assert listdir(cdir(m, "big") / "attach") == ["a.txt", "b.txt"]
    assert "max_attach_request_bytes" in read_text(cdir(m, "big") /
                                                   ".status")
    assert chat_bodies(fake) == []


def test_a_file_gone_from_files_fails_the_answer_naming_it(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "gone")
    put(m, "gone", "notes.txt", "hello")
    prompt(m, "gone", "first")
    reply(m, "gone")
    os.unlink(cdir(m, "gone") / "files" / "notes.txt")
    n = len(chat_bodies(fake))
    prompt(m, "gone", "second")
    r = sh(m, "cat %s/.reply" % qn("gone"))
    assert r.returncode != 0
    err = wait_for(lambda: status(m, "gone").get("error"))
    assert err["class"] == "bad_request"
    assert "files/notes.txt" in err["message"]
    assert len(chat_bodies(fake)) == n  # nothing was sent


# --- the two subdirectories --------------------------------------------------

def test_attach_and_files_are_the_only_subdirectories(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "d")
    assert sh(m, "mkdir d/attach").returncode == 0
    assert sh(m, "mkdir d/files").returncode == 0
    assert sh(m, "mkdir -p d/attach").returncode == 0
    r = sh(m, "mkdir d/other")
    assert r.returncode != 0 and "not permitted" in r.stderr
    r = sh(m, "mkdir d/attach/deeper")
    assert r.returncode != 0 and "not permitted" in r.stderr
    assert sh(m, "mv d/attach d/elsewhere").returncode != 0
    # Plain files: create, append, rename within and across, remove.
    assert sh(m, "echo hi > d/attach/a.txt && echo more >> d/attach/a.txt"
              ).returncode == 0
    assert read_text(cdir(m, "d") / "attach" / "a.txt") == "hi\nmore\n"
    assert sh(m, "mv d/attach/a.txt d/attach/b.txt").returncode == 0
    assert sh(m, "mv d/attach/b.txt d/files/b.txt").returncode == 0
    assert sh(m, "cp d/files/b.txt d/loose.txt && mv d/loose.txt "
              "d/attach/").returncode == 0
    assert listdir(cdir(m, "d") / "attach") == ["loose.txt"]
    assert sh(m, "mv d/attach/loose.txt d/prompt").returncode != 0
    assert sh(m, "rm d/attach/loose.txt").returncode == 0
    assert sorted(listdir(cdir(m, "d"))) == ["attach", "files"]
    assert sh(m, "rmdir d/attach").returncode == 0
    assert listdir(cdir(m, "d")) == ["files"]


def test_copies_moves_and_removal_carry_the_subdirectories(mount, fake,
                                                         tmp_path):
    m = vmount(mount, fake)
    mkconv(m, "src")
    put(m, "src", "n.txt", "note")
    prompt(m, "src", "with a note")
    reply(m, "src")
    put(m, "src", "waiting.txt", "next time")
    for cmd in ("cp -r src cpr", "cp -a src cpa", "rsync -a src/ rs/"):
        r = sh(m, cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    for name in ("cpr", "cpa", "rs"):
        assert listdir(cdir(m, name) / "files") == ["n.txt"], name
        assert listdir(cdir(m, name) / "attach") == ["waiting.txt"], name
    r = run(["tar", "-C", str(cdir(m, "src")), "-cf", str(tmp_path / "t.tar"),
             "."])
    assert r.returncode == 0, r.stderr
    r = run(["tar", "-tf", str(tmp_path / "t.tar")])
    assert "./files/n.txt" in r.stdout.split()
    assert "./attach/waiting.txt" in r.stdout.split()
    r = sh(m, "mkdir untar && tar -C untar -xf %s" % q(tmp_path / "t.tar"))
    assert r.returncode == 0, r.stderr
    assert read_text(cdir(m, "untar") / "files" / "n.txt") == "note"
    assert sh(m, "mv cpr moved").returncode == 0
    assert read_text(cdir(m, "moved") / "files" / "n.txt") == "note"
    assert sh(m, "rm -r moved").returncode == 0
    assert "moved" not in listdir(m.path / "conversations")


def test_a_fork_has_its_own_files_and_answers_on_its_own(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "a")
    put(m, "a", "doc.txt", "original")
    prompt(m, "a", "read")
    reply(m, "a")
    assert sh(m, "cp -r a b").returncode == 0
    n = len(chat_bodies(fake))
    assert len(chat_bodies(fake)) == n  # copying asked nothing
    # The fork's copy is its own: changing it leaves the parent's alone.
    assert sh(m, "echo changed > b/files/doc.txt").returncode == 0
    assert read_text(cdir(m, "a") / "files" / "doc.txt") == "original"
    st_a = os.stat(m.state / "conversations" / "a" / "files" / "doc.txt")
    st_b = os.stat(m.state / "conversations" / "b" / "files" / "doc.txt")
    assert st_a.st_ino != st_b.st_ino
    prompt(m, "b", "again")
    reply(m, "b")
    texts = [p.get("text") for p in last_user_parts(fake)]
    assert "[file doc.txt]\nchanged\n" in texts
    prompt(m, "a", "again")
    reply(m, "a")
    texts = [p.get("text") for p in last_user_parts(fake)]
    assert "[file doc.txt]\noriginal" in texts


# --- the history: remount, sed, hand-written lines -------------------------

def test_references_survive_remount_and_sed(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "h")
    put(m, "h", "old.txt", "old text")
    prompt(m, "h", "read it")
    reply(m, "h")
    line = history(m, "h")[0]
    m.remount()
    assert history(m, "h")[0] == line
    # Rename the file and the reference, by hand.
    assert sh(m, "mv h/files/old.txt h/files/new.txt").returncode == 0
    r = sh(m, "sed -i 's#files/old.txt#files/new.txt#' h/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert history(m, "h")[0]["content"][1] == file_ref("files/new.txt")
    prompt(m, "h", "and now?")
    reply(m, "h")
    texts = [p.get("text") for p in last_user_parts(fake)]
    assert "[file new.txt]\nold text" in texts


def test_a_hand_written_reference_is_expanded(mount, fake):
    m = vmount(mount, fake)
    mkconv(m, "hw")
    assert sh(m, "mkdir hw/files").returncode == 0
    img = png(b"hand")
    with open(cdir(m, "hw") / "files" / "x.png", "wb") as f:
        f.write(img)
    line = {"role": "user", "content": [
        {"type": "text", "text": "what is in x.png?"},
        {"type": "file", "file": {"path": "files/x.png"}}]}
    with open(cdir(m, "hw") / "messages.jsonl", "w") as f:
        f.write(json.dumps(line) + "\n")
    assert sh(m, "echo retry > hw/.ctl").returncode == 0
    reply(m, "hw")
    parts = last_user_parts(fake)
    assert image_bytes(parts[1]) == ("image/png", img)
    # A reference that leaves files/ is never read.
    bad = {"role": "user", "content": [
        {"type": "file", "file": {"path": "../a/messages.jsonl"}}]}
    with open(cdir(m, "hw") / "messages.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")
    assert sh(m, "echo retry > hw/.ctl").returncode == 0
    err = wait_for(lambda: status(m, "hw").get("error"))
    assert err["class"] == "bad_request"
    assert "files/NAME" in err["message"]


# --- crashes ------------------------------------------------------------------

def test_recovery_finishes_moves_a_crash_cut(mount, fake):
    """A spool entry that lists moves (synced before anything moved) with
    the files still in attach/: what kill -9 leaves between the spool's
    fsync and the renames. The remount moves them and answers."""
    m = vmount(mount, fake)
    mkconv(m, "k")
    put(m, "k", "a.txt", "crash text")
    m.kill9()
    conv = m.state / "conversations" / "k"
    entry = {"id": "00112233aabbccdd", "content": "after the crash",
             "files": [["a.txt", "a.txt"]]}
    (conv / ".lmsfs").mkdir(exist_ok=True)
    (conv / ".lmsfs" / "queue").write_text(json.dumps(entry) + "\n")
    m.start()
    wait_answered(m, "k", 1)
    assert listdir(cdir(m, "k") / "attach") == []
    assert listdir(cdir(m, "k") / "files") == ["a.txt"]
    assert history(m, "k")[0] == {"role": "user", "content": [
        {"type": "text", "text": "after the crash"},
        file_ref("files/a.txt")]}
    texts = [p.get("text") for p in last_user_parts(fake)]
    assert "[file a.txt]\ncrash text" in texts


def test_kill9_after_submit_keeps_prompt_and_files(mount, fake):
    m = vmount(mount, fake)
    fake.chunk_delay = 0.3
    mkconv(m, "k2")
    put(m, "k2", "a.txt", "kept")
    prompt(m, "k2", "survive")
    m.kill9()
    assert (m.state / "conversations" / "k2" / "files" / "a.txt").exists()
    fake.chunk_delay = 0.0
    m.start()
    assert listdir(cdir(m, "k2") / "files") == ["a.txt"]
    assert listdir(cdir(m, "k2") / "attach") == []
    # The line is written when the prompt is taken, which kill -9 may have
    # cut: then the restarted worker writes it.
    h = wait_for(lambda: history(m, "k2"), message="the prompt's line")
    assert h[0]["content"][1] == file_ref("files/a.txt")


# --- memory -------------------------------------------------------------------

def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.xdist_group("timing")
def test_a_20mb_image_is_sent_with_bounded_memory(mount, fake):
    m = vmount(mount, fake)
    pid = m.pid
    mkconv(m, "big")
    size = 20 << 20
    img = png(os.urandom(size - 100))
    put(m, "big", "huge.png", img)
    before = vm_hwm_kb(pid)
    prompt(m, "big", "describe")
    reply(m, "big", timeout=60)
    after = vm_hwm_kb(pid)
    part = last_user_parts(fake)[1]
    assert image_bytes(part) == ("image/png", img)
    grown = (after - before) * 1024
    # The base64 body (4/3 of the image) once, plus small buffers.
    assert grown < 2 * size, "RSS grew by %d MiB for a 20 MiB image" % (
        grown >> 20)


def test_directories_made_outside_the_mount_work(mount, fake):
    """attach/ and files/ made in the state directory (by lmsfs or by hand
    before mounting) work as if made through the mount."""
    m = vmount(mount, fake)
    m.umount()
    conv = m.state / "conversations" / "pre"
    (conv / "attach").mkdir(parents=True)
    (conv / "files").mkdir()
    (conv / "files" / "x.txt").write_text("taken")
    (conv / "attach" / "x.txt").write_text("new one")
    m.start()
    assert sorted(listdir(cdir(m, "pre"))) == ["attach", "files"]
    prompt(m, "pre", "both")
    reply(m, "pre")
    assert listdir(cdir(m, "pre") / "files") == ["x-1.txt", "x.txt"]
    texts = [p.get("text") for p in last_user_parts(fake)]
    assert "[file x-1.txt]\nnew one" in texts

"""Security (README "Security"): who may use the mount, what the model may
make lmsfs run or write, names that try to leave their directory, lmsfs's
private files, and secrets that must stay where they are.

Every filesystem access has a timeout (conftest/conv_helpers helpers), so a
broken daemon fails a test instead of hanging the suite."""

import errno
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import (listdir, read_json, read_text, run, wait_for)
from conv_helpers import (LLAMA, cdir, echo_of, errno_name, history,
                          mkconv, opts, os_errno, prompt, raw_write, reply,
                          sh, status, stream_text)
from fake_lms import Reply

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def smount(mount, env=None, **kw):
    kw.setdefault("default_model", LLAMA)
    return mount(args=opts(**kw), env=env)


def add_tool(m, tmp_path, name, text, mode=0o755):
    src = tmp_path / ("src-" + name)
    src.write_text(text)
    os.chmod(src, mode)
    r = run(["cp", str(src), str(m.path / "tools" / name)])
    assert r.returncode == 0, r.stderr


def as_nobody(*cmd):
    return run(NOBODY + list(cmd), timeout=10)


def snapshot(root, skip=()):
    """Every path under root (not following symlinks, not entering the
    paths in skip)."""
    skip = {os.path.realpath(str(s)) for s in skip}
    out = set()
    for d, dirs, files in os.walk(str(root)):
        dirs[:] = [x for x in dirs
                   if os.path.realpath(os.path.join(d, x)) not in skip]
        for x in dirs + files:
            out.add(os.path.join(d, x))
    return out


def tool_messages(m, conv):
    return [x for x in history(m, conv) if x["role"] == "tool"]


# --------------------------------------------------------- other users

@pytest.fixture
def open_dir():
    """A directory that uid 65534 may traverse (pytest's tmp dirs are
    0700, which would make any test of the mount's own protection
    meaningless)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    d = tempfile.mkdtemp(prefix="lmsfs-sec-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        for sub in ("mnt", "mnt-ao"):
            p = os.path.join(d, sub)
            if os.path.ismount(p):
                subprocess.run(["fusermount3", "-uz", p],
                               capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_other_user_cannot_use_the_mount(fake, mount, open_dir):
    mnt = open_dir / "mnt"
    mnt.mkdir()
    os.chmod(mnt, 0o755)
    # Control: before mounting, uid 65534 can list the directory.
    r = as_nobody("ls", "-la", str(mnt))
    assert r.returncode == 0, r.stderr
    m2 = mount(args=opts(default_model=LLAMA), mountpoint=mnt,
               state=open_dir / "state")
    mkconv(m2, "private")
    assert reply_after(m2, "private", "secret stuff") == \
        echo_of("secret stuff")
    for cmd in (["ls", str(mnt)],
                ["cat", str(mnt / "health")],
                ["stat", str(mnt / "conversations")],
                ["cat", str(mnt / "conversations/private/messages.jsonl")],
                ["sh", "-c", "echo hi > %s" % (
                    mnt / "conversations/private/prompt")]):
        r = as_nobody(*cmd)
        assert r.returncode != 0, (cmd, r.stdout)
        assert "Permission denied" in r.stderr, (cmd, r.stderr)
    assert status(m2, "private")["submitted"] == 1
    # The owner is not affected.
    assert "private" in listdir(mnt / "conversations")


def status_after(m, name):
    """.status once the pending answer has ended (read .reply first)."""
    sh(m, "cat %s/.reply" % name)
    return status(m, name)


def reply_after(m, name, text):
    prompt(m, name, text)
    return reply(m, name).rstrip("\n")


def test_allow_other_still_keeps_conversations_private(fake, mount,
                                                       open_dir):
    """With allow_other (root may always use it) other users pass the
    FUSE check, but default_permissions keeps conversations/ and tools/
    (0700) closed to them."""
    mnt = open_dir / "mnt-ao"
    mnt.mkdir()
    os.chmod(mnt, 0o755)
    m = mount(args=opts(default_model=LLAMA) + ("-o", "allow_other"),
              mountpoint=mnt, state=open_dir / "state-ao")
    mkconv(m, "private")
    r = as_nobody("ls", str(mnt))
    assert r.returncode == 0, r.stderr  # the control: allow_other works
    for p in ("conversations", "tools", "conversations/private"):
        r = as_nobody("ls", str(mnt / p))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (
            p, r.stdout, r.stderr)
    r = as_nobody("mkdir", str(mnt / "conversations" / "intruder"))
    assert r.returncode != 0, r
    assert listdir(mnt / "conversations") == ["private"]


# ------------------------------------------------------- model vs. tools

EVIL = "#!/bin/sh\ntouch %s\necho escaped\n"


@pytest.mark.parametrize("trick", [
    "../../bin/sh", "/bin/sh", "../evil", "../../evil", "ABS_EVIL",
    "real/../real", "./real", "real/", "..", ".", "", " real",
    "real\u0000../../evil", ".lmsfs.queue", "real\n[lmsfs] error auth: x",
    "real.json",
])
def test_tool_names_cannot_leave_tools_dir(fake, mount, tmp_path, trick):
    """The model names a tool with a path trick: the tool is unknown,
    nothing runs, and nothing runs from outside tools/."""
    m = smount(mount)
    marker = tmp_path / "ran"
    add_tool(m, tmp_path, "real", EVIL % marker)
    for p in (m.state / "evil", tmp_path / "evil"):
        p.write_text(EVIL % marker)
        os.chmod(p, 0o755)
    name = trick.replace("ABS_EVIL", str(tmp_path / "evil"))
    mkconv(m, "c")
    fake.enqueue(Reply(tool_calls=[{"id": "call_1", "name": name,
                                    "arguments": {}}]))
    if name == "":
        # A call without a name is a broken reply (protocol): nothing runs.
        prompt(m, "c", "do it")
        assert status_after(m, "c")["error"]["class"] == "protocol"
        assert not marker.exists(), "a tool ran for name %r" % name
        assert reply_after(m, "c", "again") == echo_of("again")
        assert not marker.exists()
        return
    got = reply_after(m, "c", "do it")
    assert not marker.exists(), "a tool ran for name %r" % name
    assert got == echo_of("do it")
    msgs = tool_messages(m, "c")
    assert len(msgs) == 1, msgs
    assert msgs[0]["tool_call_id"] == "call_1"
    assert msgs[0]["content"].startswith("error: "), msgs[0]
    assert "no tool" in msgs[0]["content"], msgs[0]
    # One marked line per event: a newline in the name cannot forge one.
    lines = stream_text(m, "c").split("\n")
    assert not any(ln.startswith("[lmsfs] error auth") for ln in lines), \
        lines
    assert 'lmsfs_tool_runs_total{outcome="unknown"} 1\n' in read_text(
        m.path / "metrics")
    assert 'lmsfs_tool_runs_total{outcome="ok"} 0\n' in read_text(
        m.path / "metrics")


def test_tool_arguments_and_ids_with_path_tricks_write_nothing_outside(
        fake, mount, tmp_path):
    """Arguments, call ids and model fields full of path tricks: lmsfs
    writes nothing outside state_dir (no new file anywhere under the test
    dir but the state dir, none in /tmp, none named after the token)."""
    token = "pwned" + uuid.uuid4().hex[:8]
    m = smount(mount)
    add_tool(m, tmp_path, "real", "#!/bin/sh\ncat\necho\n")
    skip = [m.path]
    before = snapshot(tmp_path, skip)
    tmp_before = set(os.listdir("/tmp"))
    tricks = ["../../../../%s" % token, "/tmp/%s" % token,
              "../../%s\n" % token, "%s/../../../x" % token,
              "..%%2F..%%2F%s" % token]
    calls = []
    for i, t in enumerate(tricks):
        calls.append({"id": "../../%s_%d" % (token, i), "name": "real",
                      "arguments": {"path": t, "file": t, "x": t}})
    calls.append({"id": "/tmp/%s_abs" % token, "name": "real",
                  "arguments": {"path": "/tmp/%s_abs" % token}})
    mkconv(m, "c")
    fake.enqueue(Reply(tool_calls=calls, model="../../%s_model" % token))
    fake.enqueue(Reply(text="done", model="/tmp/%s_model2" % token))
    assert reply_after(m, "c", "tricks") == "done"
    # The tools ran (ids and arguments are data, not paths).
    msgs = tool_messages(m, "c")
    assert [x["tool_call_id"] for x in msgs] == [c["id"] for c in calls]
    for x, c in zip(msgs, calls):
        assert json.loads(x["content"].splitlines()[0]) == c["arguments"]
    # A conversation named like a path trick is just a name.
    mkconv(m, "..." + token)
    assert reply_after(m, "..." + token, "hi") == echo_of("hi")
    after = snapshot(tmp_path, skip)
    new = after - before
    outside = [p for p in new
               if not p.startswith(str(m.state) + os.sep)]
    assert not outside, outside
    assert not [p for p in after if token in os.path.basename(p) and
                "..." + token not in p], [p for p in after if token in p]
    assert (m.state / "conversations" / ("..." + token)).is_dir()
    tmp_new = set(os.listdir("/tmp")) - tmp_before
    assert not [x for x in tmp_new if token in x], tmp_new
    assert not list(Path(m.cwd).glob("*%s*" % token))


def test_model_ids_with_path_tricks_are_only_names(fake, mount, tmp_path):
    token = "pwned" + uuid.uuid4().hex[:8]
    evil_id = "../../%s" % token
    fake.models.append({"id": evil_id, "object": "model", "type": "llm",
                        "state": "loaded"})
    m = smount(mount)
    names = listdir(m.path / "models")
    fname = "%2E.%2F..%2F" + token  # '/' is %2F, a leading '.' %2E
    assert fname in names, names
    assert read_json(m.path / "models" / fname)["id"] == evil_id
    mkconv(m, "c")
    assert raw_write(cdir(m, "c") / "model", token + "\n",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == 0
    assert reply_after(m, "c", "which model") == echo_of("which model")
    assert fake.chat_requests()[-1]["body"]["model"] == evil_id
    found = [p for p in snapshot(tmp_path, [m.path]) if token in p]
    assert not found, found


# --------------------------------------------- names that try to escape

def test_conversation_names_cannot_escape(fake, mount, tmp_path):
    m = smount(mount)
    conv = m.path / "conversations"
    mkconv(m, "a")
    before = snapshot(tmp_path, [m.path])
    state_top = sorted(os.listdir(m.state))
    # ".." exists already; "x/../y" needs x; "../x" is the root, where
    # nothing may be created; "../../x" is outside the mount.
    assert os_errno(os.mkdir, conv / "..") == errno.EEXIST
    assert os_errno(os.mkdir, conv / "nope/../b") == errno.ENOENT
    got = os_errno(os.mkdir, conv / "../escaped")
    assert got in (errno.EACCES, errno.EPERM), errno_name(got)
    got = os_errno(os.mkdir, conv / "a/../../escaped2")
    assert got in (errno.EACCES, errno.EPERM), errno_name(got)
    r = sh(m, "mkdir -p ../escaped3/x")
    assert r.returncode != 0, r
    # Renames out of conversations/ or out of the mount.
    got = os_errno(os.rename, conv / "a", m.path / "escaped")
    assert got in (errno.EACCES, errno.EPERM, errno.EXDEV), errno_name(got)
    got = os_errno(os.rename, conv / "a", m.path / "tools" / "a")
    assert got in (errno.EACCES, errno.EPERM, errno.EXDEV), errno_name(got)
    got = os_errno(os.rename, conv / "a", tmp_path / "escaped4")
    assert got == errno.EXDEV, errno_name(got)
    # Files of a conversation cannot be moved to another place either.
    ask_ok = reply_after(m, "a", "content")
    assert ask_ok == echo_of("content")
    got = os_errno(os.rename, conv / "a" / "messages.jsonl",
                   m.path / "tools" / "messages.jsonl")
    assert got in (errno.EACCES, errno.EPERM, errno.EXDEV), errno_name(got)
    # Links of any kind are refused, so nothing can point outside.
    for fn, args in ((os.symlink, ("/etc/passwd", conv / "a" / "link")),
                     (os.symlink, ("/etc/passwd", conv / "a" / "system")),
                     (os.symlink, ("/tmp", conv / "dirlink")),
                     (os.link, (conv / "a" / "stream", conv / "a" / "hl")),
                     (os.mkfifo, (conv / "a" / "fifo",))):
        got = os_errno(fn, *args)
        assert got in (errno.EPERM, errno.EACCES), (fn, errno_name(got))
    assert sorted(os.listdir(m.state)) == state_top
    assert sorted(os.listdir(m.state / "conversations")) == ["a"]
    new = snapshot(tmp_path, [m.path]) - before
    assert all(p.startswith(str(m.state / "conversations" / "a"))
               for p in new), new
    assert listdir(conv) == ["a"]
    assert "escaped" not in listdir(m.path)


# -------------------------------------------------------- private files

def test_private_files_are_invisible_and_untouchable(fake, mount):
    m = smount(mount)
    c = mkconv(m, "p")
    fake.chunk_delay = 0.1
    prompt(m, "p", "one two three four five six")
    prompt(m, "p", "queued behind")
    back = m.state / "conversations" / "p"
    wait_for(lambda: (back / ".lmsfs" / "queue").exists(), timeout=5)
    # lmsfs's files are in one directory of their own.
    assert [x for x in os.listdir(back) if x.startswith(".lmsfs")] == [".lmsfs"]
    private = [".lmsfs/" + x for x in os.listdir(back / ".lmsfs")]
    assert ".lmsfs/queue" in private, private
    r = sh(m, "ls -a p")
    assert r.returncode == 0 and ".lmsfs" not in r.stdout, r.stdout
    for name in [".lmsfs", ".lmsfs.queue", ".lmsfs.partial"] + private:
        p = c / name
        nested = "/" in name  # the directory itself is not there
        assert os_errno(os.stat, p) == errno.ENOENT, name
        assert os_errno(lambda: os.close(os.open(p, os.O_RDONLY))) == \
            errno.ENOENT, name
        assert os_errno(os.unlink, p) == errno.ENOENT, name
        got = os_errno(lambda: os.close(os.open(
            p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)))
        assert got == (errno.ENOENT if nested else errno.EINVAL), (
            name, errno_name(got))
        assert raw_write(c / "scratch", "x", os.O_WRONLY | os.O_CREAT) == 0
        got = os_errno(os.rename, c / "scratch", p)
        assert got == (errno.ENOENT if nested else errno.EINVAL), (
            name, errno_name(got))
        assert os_errno(os.unlink, c / "scratch") == 0
        got = os_errno(os.mkdir, p)  # (no directories in a conversation)
        assert got in ((errno.ENOENT,) if nested else (errno.EINVAL, errno.EPERM)), (
            name, errno_name(got))
        assert os_errno(os.rmdir, p) in (errno.ENOENT, errno.ENOTDIR), name
    # Private names are refused everywhere, not only in conversations.
    for where in (m.path / "conversations", m.path / "tools"):
        got = os_errno(lambda: os.close(os.open(
            where / ".lmsfs.x", os.O_WRONLY | os.O_CREAT, 0o644)))
        assert got in (errno.EINVAL, errno.EACCES, errno.EPERM), (
            where, errno_name(got))
    # The real queue file is intact and the prompts get answered.
    assert (back / ".lmsfs" / "queue").exists() or \
        status(m, "p")["queued"] == 0
    fake.chunk_delay = 0.0
    wait_for(lambda: status(m, "p")["answered"] == 2 and
             status(m, "p")["state"] == "idle", timeout=20)
    assert [x["content"] for x in history(m, "p") if x["role"] == "user"] \
        == ["one two three four five six", "queued behind"]
    # A copy of the conversation carries no private file.
    r = sh(m, "cp -r p p2")
    assert r.returncode == 0, r.stderr
    copy = m.state / "conversations" / "p2"
    assert not [x for x in os.listdir(copy) if x.startswith(".lmsfs.")]
    assert not os.path.exists(copy / ".lmsfs") or os.listdir(copy / ".lmsfs") == []
    r = sh(m, "grep -r lmsfs_ . ; tar cf - p | tar tf -")
    assert ".lmsfs" not in r.stdout, r.stdout


# ------------------------------------------------------------- secrets

ENV_TOOL = "#!/bin/sh\n# @description dumps its environment\nenv\n"


def test_secrets_stay_out_of_files_logs_and_tools(fake, mount, tmp_path):
    secret = "sk-" + uuid.uuid4().hex
    other = "other-" + uuid.uuid4().hex
    fake.require_token = secret
    m = smount(mount, env={"LMSFS_API_KEY": secret,
                           "AWS_SECRET_ACCESS_KEY": other,
                           "LMSFS_TOOLS_VISIBLE": "yes-visible"})
    add_tool(m, tmp_path, "envdump", ENV_TOOL)
    mkconv(m, "s")
    fake.enqueue(Reply(tool_calls=[{"id": "c1", "name": "envdump",
                                    "arguments": {"q": "x"}}]))
    assert reply_after(m, "s", "show env") == echo_of("show env")
    # The key is used...
    assert all(r["headers"].get("authorization") == "Bearer " + secret
               for r in fake.requests)
    h = read_json(m.path / "health")
    assert h["http"]["api_key_set"] is True, h
    # ...but shown nowhere.
    env_out = tool_messages(m, "s")[0]["content"]
    assert "LMSFS_ARG_q=x" in env_out, env_out
    assert "LMSFS_TOOLS_VISIBLE=yes-visible" in env_out, env_out
    for what, text in (("tool environment", env_out),
                       ("health", read_text(m.path / "health")),
                       ("metrics", read_text(m.path / "metrics")),
                       (".status", read_text(cdir(m, "s") / ".status")),
                       ("tools/.status",
                        read_text(m.path / "tools" / ".status")),
                       ("stream", stream_text(m, "s")),
                       ("messages.jsonl",
                        read_text(cdir(m, "s") / "messages.jsonl")),
                       ("log", m.log())):
        assert secret not in text, "the API key leaks into %s" % what
        assert other not in text, "an unrelated secret leaks into %s" % what
    # A failed request does not echo the key in its error either.
    fake.require_token = "something-else"
    mkconv(m, "f")
    prompt(m, "f", "denied")
    wait_for(lambda: status(m, "f")["state"] == "failed", timeout=10)
    st = read_text(cdir(m, "f") / ".status")
    assert "auth" in st and secret not in st, st
    assert secret not in stream_text(m, "f")
    assert secret not in m.log()

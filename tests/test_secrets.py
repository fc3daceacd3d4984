"""The API key stays secret (issue 12, item 16): api_key_file and
LMSFS_API_KEY are the documented ways to give it; a key given with
`-o api_key=` is scrubbed from the process's arguments (ps,
/proc/PID/cmdline); the daemon is not dumpable, so a tool (same user)
cannot read its environment from /proc/$PPID/environ."""

import os
import shutil
import uuid

import pytest

from conftest import (Mount, clean_env, is_mounted, read_json, run,
                      wait_for)
from conv_helpers import LLAMA, ask, echo_of, mkconv, opts

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read()


@pytest.mark.parametrize("foreground", [True, False])
def test_api_key_option_is_scrubbed_from_the_arguments(fake, mount,
                                                       foreground):
    secret = "sk-" + uuid.uuid4().hex
    fake.require_token = secret
    m = mount(args=("-o", "api_key=%s,default_model=%s" % (secret, LLAMA)),
              foreground=foreground)
    pid = m.pid
    assert pid
    args = cmdline(pid)
    assert secret.encode() not in args, args
    assert b"api_key=*" in args  # shown as given, value masked
    ps = run(["ps", "-ww", "-o", "args=", "-p", str(pid)])
    assert ps.returncode == 0 and "lmsfs" in ps.stdout, ps
    assert secret not in ps.stdout
    # The key still works.
    mkconv(m, "c")
    assert ask(m, "c", "hi").rstrip("\n") == echo_of("hi")
    assert all(r["headers"].get("authorization") == "Bearer " + secret
               for r in fake.requests)


def test_api_key_file(fake, mount, tmp_path):
    secret = "tok-" + uuid.uuid4().hex
    fake.require_token = secret
    kf = tmp_path / "key"
    kf.write_text("  %s \n\n" % secret)  # trimmed
    os.chmod(kf, 0o600)
    m = mount(args=opts(api_key_file=kf, default_model=LLAMA))
    mkconv(m, "c")
    assert ask(m, "c", "from file").rstrip("\n") == echo_of("from file")
    chats = fake.chat_requests()
    assert chats and all(r["headers"].get("authorization") ==
                         "Bearer " + secret for r in fake.requests)
    assert read_json(m.path / "health")["http"]["api_key_set"] is True
    assert secret not in m.log()
    # From the configuration file too, and -o api_key_file wins over a
    # key from the environment (the stronger source wins).
    m.umount()
    m2 = mount(config={"api_key_file": str(kf), "default_model": LLAMA})
    mkconv(m2, "d")
    assert ask(m2, "d", "conf").rstrip("\n") == echo_of("conf")
    m2.umount()
    m3 = mount(env={"LMSFS_API_KEY": "wrong-key"},
               args=opts(api_key_file=kf, default_model=LLAMA))
    mkconv(m3, "e")
    assert ask(m3, "e", "env").rstrip("\n") == echo_of("env")


def _start_fails(lmsfs_bin, tmp_path, *o):
    mnt = tmp_path / "mnt-x"
    mnt.mkdir(exist_ok=True)
    r = run([str(lmsfs_bin), str(mnt), "-f", "-o",
             "state_dir=%s,base_url=http://127.0.0.1:9" % (tmp_path / "st")]
            + list(o), env=clean_env(tmp_path))
    assert r.returncode != 0, r
    assert not is_mounted(mnt)
    return r.stderr


def test_api_key_file_refused_with_a_reason(lmsfs_bin, tmp_path):
    kf = tmp_path / "key"
    kf.write_text("secret-value\n")
    os.chmod(kf, 0o644)
    err = _start_fails(lmsfs_bin, tmp_path, "-o", "api_key_file=%s" % kf)
    assert "api_key_file %s" % kf in err and "other users" in err, err
    assert "chmod o-rwx" in err and "secret-value" not in err
    err = _start_fails(lmsfs_bin, tmp_path, "-o",
                       "api_key_file=%s" % (tmp_path / "missing"))
    assert "No such file or directory" in err, err
    os.chmod(kf, 0o600)
    kf.write_text("two\nlines\n")
    err = _start_fails(lmsfs_bin, tmp_path, "-o", "api_key_file=%s" % kf)
    assert "control character" in err, err
    kf.write_text(" \n")
    err = _start_fails(lmsfs_bin, tmp_path, "-o", "api_key_file=%s" % kf)
    assert "is empty" in err, err
    err = _start_fails(lmsfs_bin, tmp_path, "-o", "api_key_file=%s" % tmp_path)
    assert "not a regular file" in err, err


PEEK_TOOL = """#!/bin/sh
# @description Looks at its parent process
cat >/dev/null
if tr '\\0' '\\n' < /proc/$PPID/environ | grep -q "$WANT"; then
  echo "key:found"
else
  echo "key:absent"
fi
"""


def test_a_tool_finds_no_key_in_the_daemons_environment(fake, mount,
                                                          tmp_path):
    """LMSFS_API_KEY leaves the daemon's environment (and the bytes
    /proc/PID/environ shows) once read. Here, as root, the tool may read
    that file; an ordinary user's tool may not read it at all (the next
    test)."""
    from fake_lms import Reply
    secret = "sk-" + uuid.uuid4().hex
    fake.require_token = secret
    m = mount(env={"LMSFS_API_KEY": secret,
                   "LMSFS_TOOLS_X": "y"},
              args=opts(default_model=LLAMA))
    tool = m.path / "tools" / "peek"
    src = tmp_path / "peek"
    src.write_text(PEEK_TOOL.replace("$WANT", secret[3:]))
    os.chmod(src, 0o755)
    assert run(["cp", str(src), str(tool)]).returncode == 0
    fake.enqueue(Reply(tool_calls=[{"id": "c1", "name": "peek",
                                    "arguments": {}}]),
                 Reply(text="done"))
    mkconv(m, "c")
    assert ask(m, "c", "peek").rstrip("\n") == "done"
    msgs = fake.chat_requests()[1]["body"]["messages"]
    out = [x["content"] for x in msgs if x.get("role") == "tool"]
    assert out == ["key:absent\n"] or out == ["key:absent"], out
    with open("/proc/%d/environ" % m.pid, "rb") as f:
        assert secret.encode() not in f.read()


def test_the_daemon_is_not_dumpable(fake, lmsfs_bin, tmp_path):
    """Run as an ordinary user (uid 65534, with just the capabilities to
    mount by itself: this machine's /dev/fuse is root's only), the daemon's
    /proc/PID files belong to root, as the kernel does for a process that
    is not dumpable: tools and other processes of that user cannot read
    its environ or mem."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    state.mkdir()
    caps = "+sys_admin,+dac_override"
    cmd = NOBODY + ["--inh-caps=" + caps, "--ambient-caps=" + caps,
                    str(lmsfs_bin), str(mnt), "-f", "-o",
                    "allow_other,state_dir=%s,base_url=%s" % (state, fake.url)]
    m = Mount(lmsfs_bin, mnt, state, tmp_path / "lmsfs.log", cmd,
              clean_env(tmp_path, {"LMSFS_API_KEY": "k"}), str(tmp_path),
              fake.url, None, True)
    try:
        m.start(wait=False)
        wait_for(lambda: is_mounted(mnt), timeout=10,
                 message="the mount as uid 65534")
        with open("/proc/%d/status" % m.pid) as f:
            uids = [ln for ln in f if ln.startswith("Uid:")][0].split()[1:]
        assert uids == ["65534"] * 4, uids
        for f in ("environ", "mem"):
            st = os.stat("/proc/%d/%s" % (m.pid, f))
            assert st.st_uid == 0, (f, st.st_uid)
    finally:
        m.umount()


@pytest.mark.parametrize("spelling", [
    ("-oapi_key=%s",),
    ("-o", "stream=true", "-o", "stream=true,api_key=%s"),
    ("-o", "api\\_key=%s"),            # a backslash escapes any character
    ("-o", "a\\pi_key=%s"),
    ("-o", "api_key\\=%s"),
    ("-o", "system_prompt=y\\,z,api_key=%s"),
], ids=["joined", "several", "escaped-underscore", "escaped-p",
        "escaped-equals", "after-escaped-comma"])
def test_api_key_scrubbed_in_every_spelling(fake, mount, spelling):
    """Every spelling of -o that the option parser reads as api_key has
    its value scrubbed, escapes included (the parser drops a backslash
    and keeps the character after it)."""
    secret = "sk-" + uuid.uuid4().hex
    fake.require_token = secret
    args = tuple(a.replace("%s", secret) for a in spelling)
    args += ("-o", "default_model=%s" % LLAMA)
    m = mount(args=args)
    assert m.pid
    args = cmdline(m.pid)
    assert secret.encode() not in args, args
    assert secret[3:].encode() not in args, args
    # The key was read (it is the one the server wants).
    mkconv(m, "c")
    assert ask(m, "c", "hi").rstrip("\n") == echo_of("hi")


@pytest.mark.parametrize("spelling", [
    ("-o", "api_key=%s,default_model=" + LLAMA),
    ("-oapi_key=%s",),
    ("-o", "default_model=%s,api\\_key=%%s" % LLAMA),
], ids=["separate", "joined", "escaped"])
def test_scrubbed_arguments_do_not_show_the_key_length(fake, mount, spelling):
    """ps and /proc/PID/cmdline show api_key=**** whatever the key's
    length: what stands for the key is the same for a short and a long
    key, and the other arguments are intact."""
    shown = []
    for secret in ("sk-" + uuid.uuid4().hex[:6], "sk-" + uuid.uuid4().hex * 3):
        fake.require_token = secret
        args = tuple(a.replace("%s", secret) for a in spelling)
        if "default_model" not in "".join(args):
            args += ("-o", "default_model=%s" % LLAMA)
        m = mount(args=args)
        raw = cmdline(m.pid)
        assert secret.encode() not in raw, raw
        argv = raw.rstrip(b"\0").split(b"\0")
        ps = run(["ps", "-ww", "-o", "args=", "-p", str(m.pid)]).stdout
        assert "_key=****" in ps and "*****" not in ps, ps
        assert str(m.path) in ps.split(), ps
        assert str(m.path).encode() in argv, argv
        assert b"*****" not in raw, raw
        mkconv(m, "c")
        assert ask(m, "c", "hi").rstrip("\n") == echo_of("hi")
        shown.append((ps.strip().replace(str(m.path), "MNT")
                       .replace(str(m.state), "STATE"),
                      [a for a in argv if a]))
        m.umount()
    assert shown[0][0] == shown[1][0], shown


def test_arguments_after_a_scrubbed_key_are_still_read(lmsfs_bin, tmp_path):
    # The scrub moves the arguments after the key: the ones lmsfs kept a
    # pointer to (-c FILE, the mount point) are still the same text.
    conf = tmp_path / "missing.conf"
    r = run([str(lmsfs_bin), "-o", "api_key=sk-" + uuid.uuid4().hex,
             "-c", str(conf), str(tmp_path)])
    assert r.returncode != 0
    assert "%s: no such configuration file" % conf in r.stderr, r.stderr

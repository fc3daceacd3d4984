"""The settings files of a conversation (issue 12, item 10): the system
file wins over a system message at the start of messages.jsonl; model,
system and params.json that cannot be used are refused at write() or
close (EINVAL, EFBIG) with the reason in .status, and the old content
stays; a UTF-8 BOM that starts a history line or a settings file is
dropped, never the line."""

import errno
import json
import os
import threading

import pytest

from conftest import read_bytes, read_text
from conv_helpers import (chat_bodies, cmount, mkconv,
                          os_errno, prompt, raw_write, reply, sh, status)

BOM = "\ufeff"


def sent(fake, i=-1):
    return chat_bodies(fake)[i]["messages"]


def write_file(path, data):
    """open(O_WRONLY|O_CREAT|O_TRUNC), write, close: the errno or 0."""
    return raw_write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC)


# ------------------------------------------------------------ precedence

def test_system_file_wins_over_history_system_message(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "p")
    hist = [{"role": "system", "content": "from the history"},
            {"role": "user", "content": "hi"}]
    assert sh(m, "printf '%%s\\n' %s > p/messages.jsonl" % " ".join(
        "'%s'" % json.dumps(x) for x in hist)).returncode == 0
    # Without a system file the history's system message leads.
    prompt(m, "p", "one")
    reply(m, "p")
    msgs = sent(fake)
    assert msgs[0] == {"role": "system", "content": "from the history"}
    assert [x["role"] for x in msgs].count("system") == 1
    # With one, the file's text replaces it in what is sent...
    assert sh(m, "echo 'from the file' > p/system").returncode == 0
    prompt(m, "p", "two")
    reply(m, "p")
    msgs = sent(fake)
    assert msgs[0] == {"role": "system", "content": "from the file"}
    assert [x["role"] for x in msgs].count("system") == 1, msgs
    assert msgs[1] == {"role": "user", "content": "hi\n\none"} or \
        msgs[1]["role"] == "user"
    # ...and the history stays as written.
    first = json.loads(read_text(c / "messages.jsonl").splitlines()[0])
    assert first == {"role": "system", "content": "from the history"}
    # An empty system file is no system file.
    assert sh(m, ": > p/system").returncode == 0
    prompt(m, "p", "three")
    reply(m, "p")
    assert sent(fake)[0] == {"role": "system", "content": "from the history"}


# -------------------------------------------------------------- refusals

BAD = [
    ("system", b"caf\xe9 au lait\n", errno.EINVAL, "UTF-8"),
    ("model", b"llama\x00x\n", errno.EINVAL, "NUL"),
    ("params.json", b'{"temperature": 0.1,\n', errno.EINVAL, "JSON"),
    ("params.json", b'[1, 2]\n', errno.EINVAL, "object"),
    ("system", b"x" * ((1 << 20) + 10), errno.EFBIG, "1 MiB"),
]


@pytest.mark.parametrize("name,data,err,reason", BAD,
                         ids=["utf8", "nul", "json", "not-object", "big"])
def test_unusable_setting_refused_old_content_kept(fake, mount, name, data,
                                                   err, reason):
    m = cmount(mount)
    c = mkconv(m, "s")
    good = {"system": "be brief\n", "model": "llama\n",
            "params.json": '{"temperature": 0.5}\n'}[name]
    assert sh(m, "printf %%s '%s' > s/%s" % (good, name)).returncode == 0
    assert read_text(c / name) == good
    assert write_file(c / name, data) == err
    assert read_text(c / name) == good
    st = status(m, "s")
    assert name in st["rejected_write"] and reason in st["rejected_write"], st
    # The old setting is still the one used.
    prompt(m, "s", "hi")
    reply(m, "s")
    body = chat_bodies(fake)[-1]
    if name == "system":
        assert body["messages"][0]["content"] == "be brief"
    elif name == "params.json":
        assert body["temperature"] == 0.5
    else:
        assert body["model"] == "meta-llama-3.1-8b-instruct"


def test_shell_redirect_sees_refusal(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "e")
    assert sh(m, "echo '{\"seed\": 1}' > e/params.json").returncode == 0
    r = sh(m, "printf 'a\\000b' > e/model")
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r
    r = sh(m, "echo '{oops' > e/params.json")
    assert r.returncode != 0 and "Invalid argument" in r.stderr, r
    assert json.loads(read_text(c / "params.json")) == {"seed": 1}
    r = sh(m, "head -c 1100000 /dev/zero | tr '\\0' x > e/system")
    assert r.returncode != 0 and "too large" in r.stderr, r
    assert not (c / "system").exists() or read_text(c / "system") == ""


def test_good_settings_still_written_every_way(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "g")
    assert sh(m, "echo one > g/system && echo two >> g/system").returncode == 0
    assert read_text(c / "system") == "one\ntwo\n"
    assert sh(m, "truncate -s 3 g/system").returncode == 0
    assert read_text(c / "system") == "one"
    assert sh(m, "sed -i s/one/three/ g/system").returncode == 0
    assert read_text(c / "system") == "three"
    assert write_file(c / "params.json", '{"top_k": 5}') == 0
    assert json.loads(read_text(c / "params.json")) == {"top_k": 5}
    with open(c / "system", "r+") as f:
        f.seek(2)
        f.write("X")
    assert read_text(c / "system") == "thXee"


def test_setting_written_by_several_commands_through_one_redirect(
        fake, mount, tmp_path):
    """A shell group writes params.json in pieces through one descriptor;
    a command of the group that exits closes its copy (a flush) while the
    text is not whole yet. That close may say so, but the text is not
    refused for good: the rest arrives and the whole JSON goes in."""
    m = cmount(mount)
    c = mkconv(m, "grp")
    assert sh(m, "echo '{\"seed\": 1}' > grp/params.json").returncode == 0
    body = tmp_path / "body"
    body.write_text('"seed": 7,\n"top_k": 3\n')
    sh(m, "{ echo '{'; cat %s; echo '}'; } > grp/params.json" % body)
    assert json.loads(read_text(c / "params.json")) == {"seed": 7, "top_k": 3}
    prompt(m, "grp", "hi")
    reply(m, "grp")
    body = chat_bodies(fake)[-1]
    assert body["seed"] == 7 and body["top_k"] == 3
    # A text that never becomes whole is still refused; the old stays.
    r = sh(m, "{ echo '{'; cat %s; } > grp/params.json" % (tmp_path / "body"))
    assert r.returncode != 0
    assert json.loads(read_text(c / "params.json")) == {"seed": 7, "top_k": 3}
    assert "params.json" in status(m, "grp")["rejected_write"]


def test_concurrent_writers_of_a_setting(fake, mount):
    """Writers closing the same settings file at the same time each put
    their whole text in place, in some order: none of them fails, and
    what is read at any moment is one writer's whole text."""
    m = cmount(mount)
    c = mkconv(m, "cw")
    errs, torn, written = [], [], {0}
    stop = threading.Event()
    assert sh(m, "echo '{\"seed\": 0}' > cw/params.json").returncode == 0

    def writer(k):
        for i in range(25):
            seed = k * 1000 + i
            written.add(seed)
            try:
                with open(c / "params.json", "w") as f:
                    f.write(json.dumps({"seed": seed, "pad": "x" * 4000}))
            except OSError as e:
                errs.append((seed, e))

    def reader():
        while not stop.is_set():
            try:
                t = read_text(c / "params.json")
                if t and json.loads(t)["seed"] not in written:
                    torn.append(t[:60])
            except ValueError:
                torn.append(t[:60])
            except OSError as e:
                torn.append(e)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    r.join()
    assert not errs, errs[:5]
    assert not torn, torn[:5]
    assert json.loads(read_text(c / "params.json"))["seed"] in written


def test_unusable_file_renamed_over_a_setting_refused(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "mv")
    assert sh(m, "echo '{\"seed\": 3}' > mv/params.json").returncode == 0
    assert sh(m, "printf '{nope' > mv/tmp1").returncode == 0
    assert os_errno(os.rename, c / "tmp1", c / "params.json") == errno.EINVAL
    assert sh(m, "mv mv/tmp1 mv/params.json").returncode != 0
    assert json.loads(read_text(c / "params.json")) == {"seed": 3}
    assert (c / "tmp1").exists()
    assert "params.json" in status(m, "mv")["rejected_write"]
    # A good one goes in (an editor's save by rename).
    assert sh(m, "printf '{\"seed\": 4}' > mv/tmp2 && "
                 "mv mv/tmp2 mv/params.json").returncode == 0
    assert json.loads(read_text(c / "params.json")) == {"seed": 4}


# -------------------------------------------------------------------- BOM

def test_bom_at_start_of_history_line_is_dropped_not_the_line(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "b")
    line = BOM + json.dumps({"role": "user", "content": "with a bom"})
    assert write_file(c / "messages.jsonl", (line + "\n").encode()) == 0
    prompt(m, "b", "next")
    reply(m, "b")
    users = [x["content"] for x in sent(fake) if x["role"] == "user"]
    assert users == ["with a bom\n\nnext"], sent(fake)
    # The history keeps what was written.
    assert read_bytes(c / "messages.jsonl").startswith(BOM.encode())


def test_bom_at_start_of_settings_files_is_dropped(fake, mount):
    m = cmount(mount)
    c = mkconv(m, "f")
    assert write_file(c / "system", (BOM + "bom system\n").encode()) == 0
    assert write_file(c / "params.json",
                      (BOM + '{"temperature": 0.25}').encode()) == 0
    assert write_file(c / "model", (BOM + "qwen\n").encode()) == 0
    prompt(m, "f", "hi")
    reply(m, "f")
    body = chat_bodies(fake)[-1]
    assert body["messages"][0] == {"role": "system", "content": "bom system"}
    assert body["temperature"] == 0.25
    assert body["model"] == "lmstudio-community/qwen2.5-7b-instruct"

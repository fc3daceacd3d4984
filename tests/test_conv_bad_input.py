"""Conversations: refused input. Names, where files may be created, prompt
limits, the request queue bound, model choice errors, .ctl words, stream
and messages.jsonl write rules. Every refusal must leave the state as it
was."""

import errno
import json
import os

import pytest

from conftest import call_with_timeout, listdir, stat
from conv_helpers import (LLAMA, QWEN, ask, cdir, chat_bodies, cmount,
                          convs, echo_of, errno_name, history, history_text,
                          holds_for, mkconv, os_errno, prompt, q, raw_write,
                          reply, sh, status, stream_text, wait_answered)


# ------------------------------------------------------------------ names

GOOD_NAMES = ["with space", "ünïcødé ✓", "-dash", "a.b", ".dotted",
              "quote'and\"double", "100%", "a%2Fb", "UPPER", "x" * 255]


def test_unusual_names_work_and_persist(fake, mount):
    m = cmount(mount)
    for n in GOOD_NAMES:
        assert os_errno(os.mkdir, cdir(m, n)) == 0, n
    got = set(listdir(convs(m)))
    assert got == set(GOOD_NAMES), got ^ set(GOOD_NAMES)
    used = [n for n in GOOD_NAMES if n != "100%"]
    for i, n in enumerate(used):
        assert ask(m, n, "hi %d" % i).rstrip("\n") == echo_of("hi %d" % i)
        assert status(m, n)["name"] == n
    m.remount()
    assert set(listdir(convs(m))) == set(GOOD_NAMES)
    for i, n in enumerate(used):
        assert history(m, n)[0] == {"role": "user", "content": "hi %d" % i}
    assert listdir(cdir(m, "100%")) == []


@pytest.mark.parametrize("name, err", [
    ("new\nline", errno.EINVAL),
    ("tab\there", errno.EINVAL),
    ("ctl\x01a", errno.EINVAL),
    ("esc\x1b[0m", errno.EINVAL),
    ("y" * 256, errno.ENAMETOOLONG),
], ids=["newline", "tab", "ctrl-a", "escape", "256-bytes"])
def test_bad_names_refused(fake, mount, name, err):
    m = cmount(mount)
    got = os_errno(os.mkdir, cdir(m, name))
    assert got == err, errno_name(got)
    mkconv(m, "ok")
    ask(m, "ok", "keep me")
    got = os_errno(os.rename, cdir(m, "ok"), cdir(m, name))
    assert got == err, errno_name(got)
    assert listdir(convs(m)) == ["ok"]
    assert history(m, "ok")[0]["content"] == "keep me"


def test_mkdir_inside_conversation_refused(fake, mount):
    m = cmount(mount)
    mkconv(m, "c")
    r = sh(m, "mkdir c/sub")
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr, r.stderr
    assert os_errno(os.mkdir, cdir(m, "c") / "sub") == errno.EPERM
    assert listdir(cdir(m, "c")) == []
    ask(m, "c", "first")
    assert os_errno(os.mkdir, cdir(m, "c") / "sub2") == errno.EPERM
    assert "sub2" not in listdir(cdir(m, "c"))


@pytest.mark.parametrize("where", ["root", "models"])
def test_no_files_in_root_or_models(fake, mount, where):
    m = cmount(mount)
    d = m.path if where == "root" else m.path / "models"
    before = listdir(d)

    def create(p):
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    for fn, arg in ((create, d / "newfile"), (os.mkdir, d / "newdir")):
        got = os_errno(fn, arg)
        # A file in models/ loads a model: not on a server without
        # /api/v1 (test_models_load.py).
        ok = (errno.EACCES, errno.EPERM) + (
            (errno.ENOTSUP,) if where == "models" and fn is create else ())
        assert got in ok, (fn, errno_name(got))
    r = sh(m, "touch %s" % q(d / "touched"))
    assert r.returncode != 0
    assert listdir(d) == before


# ----------------------------------------------------------------- prompt

def test_prompt_too_large(fake, mount):
    m = cmount(mount, max_prompt_bytes=100)
    mkconv(m, "big")
    r = prompt(m, "big", "z" * 150, check=False)
    assert r.returncode != 0
    assert "File too large" in r.stderr, r.stderr
    st = status(m, "big")
    assert st["submitted"] == 0 and st.get("rejected_write"), st
    assert fake.chat_requests() == []
    # Under the limit: accepted.
    assert ask(m, "big", "s" * 90).rstrip("\n") == echo_of("s" * 90)
    assert len(fake.chat_requests()) == 1
    assert [x["content"] for x in history(m, "big")] == [
        "s" * 90, echo_of("s" * 90)]


def test_prompt_too_large_over_several_writes(fake, mount):
    """The limit is hit by the second write() of one open file: that
    write fails EFBIG and no truncated prompt is submitted at close."""
    m = cmount(mount, max_prompt_bytes=100)
    c = mkconv(m, "big")
    fd = call_with_timeout(os.open, str(c / "prompt"),
                           os.O_WRONLY | os.O_CREAT)
    try:
        assert call_with_timeout(os.write, fd, b"a" * 60) == 60
        with pytest.raises(OSError) as ei:
            call_with_timeout(os.write, fd, b"b" * 60)
        assert ei.value.errno == errno.EFBIG
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    holds_for(lambda: status(m, "big")["submitted"] == 0, 0.3,
              message=lambda: "a prompt was submitted after a refused "
              "write: status %r, history %r" % (status(m, "big"),
                                                history_text(m, "big")))
    assert fake.chat_requests() == []


def test_prompt_in_several_writes_is_one_message(fake, mount, tmp_path):
    m = cmount(mount)
    c = mkconv(m, "mw")

    def pieces():
        fd = os.open(c / "prompt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for part in (b"first part, ", b"second part, ", b"third\n"):
                os.write(fd, part)
        finally:
            os.close(fd)
    call_with_timeout(pieces)
    text = "first part, second part, third"
    assert reply(m, "mw").rstrip("\n") == echo_of(text)
    # A 300 KB prompt from a file (cat writes it in big pieces).
    big = " ".join("word%d" % i for i in range(40000))
    (tmp_path / "big.txt").write_text(big + "\n")
    r = sh(m, "cat %s > mw/prompt" % q(tmp_path / "big.txt"))
    assert r.returncode == 0, r.stderr
    wait_answered(m, "mw", 2, timeout=20)
    users = [x["content"] for x in history(m, "mw") if x["role"] == "user"]
    assert users == [text, big]
    assert len(fake.chat_requests()) == 2


def test_queue_bound_gives_ebusy(fake, mount):
    m = cmount(mount, max_queue=2)
    mkconv(m, "qb")
    fake.chunk_delay = 0.1
    results = []
    for i in range(6):
        r = prompt(m, "qb", "p%d a b c d e f g" % i, check=False)
        results.append(r)
    ok = [i for i, r in enumerate(results) if r.returncode == 0]
    busy = [i for i, r in enumerate(results) if r.returncode != 0]
    assert ok[:2] == [0, 1], [(r.returncode, r.stderr) for r in results]
    assert busy, "max_queue=2 never refused a prompt"
    for i in busy:
        assert "Device or resource busy" in results[i].stderr, \
            results[i].stderr
    assert len(ok) <= 3, ok
    st = status(m, "qb")
    assert st["submitted"] == len(ok), st
    assert st.get("rejected_write"), st
    fake.chunk_delay = 0.0
    wait_answered(m, "qb", len(ok), timeout=20)
    users = [x["content"] for x in history(m, "qb") if x["role"] == "user"]
    assert users == ["p%d a b c d e f g" % i for i in ok]
    # Room again once the queue drained.
    assert ask(m, "qb", "later").rstrip("\n") == echo_of("later")


def test_no_resolvable_model(fake, mount):
    m = cmount(mount, model=None)
    mkconv(m, "nm")
    r = prompt(m, "nm", "anyone?", check=False)
    assert r.returncode != 0
    assert "No such file or directory" in r.stderr, r.stderr
    rej = status(m, "nm")["rejected_write"]
    assert QWEN in rej and LLAMA in rej, rej
    assert fake.chat_requests() == []
    assert status(m, "nm")["submitted"] == 0
    # Choosing one in the model file fixes it.
    assert raw_write(cdir(m, "nm") / "model", "llama\n",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == 0
    assert ask(m, "nm", "now?").rstrip("\n") == echo_of("now?")
    assert chat_bodies(fake)[-1]["model"] == LLAMA


@pytest.mark.parametrize("model, err, needle", [
    ("instruct", errno.EINVAL, "ambiguous"),
    ("no-such-model", errno.ENOENT, None),
], ids=["ambiguous", "unknown"])
def test_model_file_errors(fake, mount, model, err, needle):
    m = cmount(mount)  # the model file overrides default_model
    c = mkconv(m, "mf")
    assert raw_write(c / "model", model + "\n",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == 0
    got = raw_write(c / "prompt", "hello\n", os.O_WRONLY | os.O_CREAT)
    assert got == err, errno_name(got)
    rej = status(m, "mf")["rejected_write"]
    if needle:
        assert needle in rej, rej
    else:
        assert QWEN in rej and LLAMA in rej, rej
    assert fake.chat_requests() == []
    assert status(m, "mf")["submitted"] == 0
    assert "messages.jsonl" not in listdir(c) or history(m, "mf") == []


def test_model_not_in_allowed_models(fake, mount):
    m = cmount(mount, model=None, allowed_models=LLAMA)
    c = mkconv(m, "na")
    assert raw_write(c / "model", "qwen\n",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC) == 0
    r = prompt(m, "na", "hello", check=False)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr, r.stderr
    assert "allowed" in status(m, "na")["rejected_write"]
    assert fake.chat_requests() == []


# -------------------------------------------------------------------- ctl

def test_ctl_unknown_word(fake, mount):
    m = cmount(mount)
    mkconv(m, "k")
    ask(m, "k", "hi")
    for word in ("bogus", "cancelx", "RETRY please"):
        r = sh(m, "echo %s > k/.ctl" % q(word))
        assert r.returncode != 0, word
        assert "Invalid argument" in r.stderr, r.stderr
    assert len(fake.chat_requests()) == 1
    assert status(m, "k")["state"] == "idle"


# ----------------------------------------------------------------- stream

def test_stream_overwrite_and_truncate_refused(fake, mount):
    m = cmount(mount)
    mkconv(m, "st")
    ask(m, "st", "keep this")
    before = stream_text(m, "st")
    r = sh(m, "echo x > st/stream")
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr, r.stderr
    holds_for(lambda: stream_text(m, "st") == before, 0.2)
    r = sh(m, "truncate -s 0 st/stream")
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr, r.stderr
    assert stream_text(m, "st") == before
    assert os_errno(os.truncate, cdir(m, "st") / "stream", 3) == errno.EPERM
    assert stream_text(m, "st") == before
    # Appending is allowed.
    r = sh(m, "echo appended >> st/stream")
    assert r.returncode == 0, r.stderr
    assert stream_text(m, "st") == before + "appended\n"


# --------------------------------------------------------- messages.jsonl

INVALID_LINES = [
    ('{"role":"user"}', "user-no-content"),
    ('{"role":"system"}', "system-no-content"),
    ('{"role":"developer"}', "developer-no-content"),
    ('{"role":"assistant"}', "assistant-no-content"),
    ('{"role":"tool","content":"42"}', "tool-no-id"),
    ('{"role":"tool","tool_call_id":"1"}', "tool-no-content"),
    ('{"role":"function","content":"42"}', "function-no-name"),
    ('{"role":"function","name":"f"}', "function-no-content"),
    ('{"role":"wizard","content":"x"}', "unknown-role"),
    ('{"content":"x"}', "no-role"),
    ('not json at all', "not-json"),
    ('[1, 2, 3]', "array"),
    ('"just a string"', "string"),
    ('{"role":"user","content":"x"', "truncated"),
    ('{"role":"user","content":"a"} trailing', "trailing"),
]


def _seed(m, name="h"):
    mkconv(m, name)
    ask(m, name, "seed")
    return history_text(m, name)


@pytest.mark.parametrize("line", [x[0] for x in INVALID_LINES],
                         ids=[x[1] for x in INVALID_LINES])
def test_invalid_history_line_append_refused(fake, mount, line):
    m = cmount(mount)
    before = _seed(m)
    r = sh(m, "echo %s >> h/messages.jsonl" % q(line))
    assert r.returncode != 0, "accepted: %s" % line
    assert "Invalid argument" in r.stderr, r.stderr
    holds_for(lambda: history_text(m, "h") == before, 0.2)


def test_overwrite_with_invalid_line_keeps_history(fake, mount):
    """`echo BAD > messages.jsonl` opens with O_TRUNC: the refused write
    must not leave the history truncated (now or after the release)."""
    m = cmount(mount)
    before = _seed(m)
    r = sh(m, "echo '{\"role\":\"user\"}' > h/messages.jsonl")
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr, r.stderr
    holds_for(lambda: history_text(m, "h") == before, 0.5,
              message=lambda: "history changed after a refused `> f`: "
              "%r" % history_text(m, "h"))
    ask(m, "h", "next")
    assert [x["content"] for x in chat_bodies(fake)[-1]["messages"]][1:] \
        == ["seed", echo_of("seed"), "next"]


def test_invalid_history_refusals_keep_history(fake, mount):
    """Binary garbage, a 10 MB line, a bad line among good ones (all
    appended): refused, history unchanged, next prompt fine."""
    m = cmount(mount)
    before = _seed(m)
    f = cdir(m, "h") / "messages.jsonl"

    garbage = bytes(range(256)) * 16 + b"\n"
    got = raw_write(f, garbage)
    assert got == errno.EINVAL, errno_name(got)
    holds_for(lambda: history_text(m, "h") == before, 0.2)

    huge = (b'{"role":"user","content":"' + b"a" * (10 * 1024 * 1024) +
            b'"}\n')
    got = raw_write(f, huge, timeout=30)
    assert got == errno.EFBIG, errno_name(got)
    holds_for(lambda: history_text(m, "h") == before, 0.2)

    mixed = ('{"role":"user","content":"good"}\n'
             '{"role":"assistant"}\n')
    got = raw_write(f, mixed)
    assert got == errno.EINVAL, errno_name(got)
    holds_for(lambda: history_text(m, "h") == before, 0.2)

    assert ask(m, "h", "still fine").rstrip("\n") == echo_of("still fine")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert [x["content"] for x in msgs][1:] == [
        "seed", echo_of("seed"), "still fine"]


VALID_LINES = [
    {"role": "system", "content": "be nice ✓"},
    {"role": "developer", "content": "dev note"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "now", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    {"role": "function", "name": "now", "content": "12:00"},
    {"role": "assistant", "content": "done"},
]


def test_valid_lines_accepted_and_sent(fake, mount):
    m = cmount(mount)
    _seed(m)
    f = cdir(m, "h") / "messages.jsonl"
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n"
                   for x in VALID_LINES)
    # Written in 7-byte pieces that split lines and UTF-8 sequences.
    data = text.encode()

    def pieces():
        fd = os.open(f, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(0, len(data), 7):
                os.write(fd, data[i:i + 7])
        finally:
            os.close(fd)
    call_with_timeout(pieces)
    got = history(m, "h")
    assert got[2:] == VALID_LINES
    ask(m, "h", "go")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert msgs[1:] == history(m, "h")[:-1]


def test_overwrite_with_valid_history(fake, mount):
    m = cmount(mount)
    _seed(m)
    r = sh(m, "echo '{\"role\":\"user\",\"content\":\"replaced\"}' "
              "> h/messages.jsonl")
    assert r.returncode == 0, r.stderr
    assert history(m, "h") == [{"role": "user", "content": "replaced"}]


def test_sed_i_invalid_result_refused(fake, mount):
    m = cmount(mount)
    before = _seed(m)
    for expr in ('s/"role":"user"/"role":"nobody"/', "1s/.*/garbage/",
                 's/"content"/"contents"/'):
        r = sh(m, "sed -i %s h/messages.jsonl" % q(expr))
        assert r.returncode != 0, expr
        holds_for(lambda: history_text(m, "h") == before, 0.2,
                  message="history changed by a refused sed -i %s" % expr)
    assert sorted(listdir(cdir(m, "h"))) == ["messages.jsonl", "prompt",
                                             "stream"]
    ask(m, "h", "after sed")
    assert len(history(m, "h")) == 4


def test_large_history_copied_in(fake, mount, tmp_path):
    """cp writes in big chunks that split lines: a 300 KB line and many
    small ones arrive intact."""
    m = cmount(mount)
    src = tmp_path / "import"
    src.mkdir()
    lines = [{"role": "user", "content": "L" * 300000},
             {"role": "assistant", "content": "ok"}]
    for i in range(2000):
        lines.append({"role": "user" if i % 2 == 0 else "assistant",
                      "content": "line %d ✓" % i})
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    (src / "messages.jsonl").write_text(text)
    r = sh(m, "cp -r %s imported" % q(src), timeout=30)
    assert r.returncode == 0, r.stderr
    assert history_text(m, "imported") == text
    assert stat(cdir(m, "imported") / "messages.jsonl").st_size == \
        len(text.encode())
    assert fake.chat_requests() == []
    ask(m, "imported", "end")
    msgs = chat_bodies(fake)[-1]["messages"]
    assert len(msgs) == 1 + len(lines) + 1
    assert msgs[1]["content"] == "L" * 300000

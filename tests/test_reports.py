"""Failures are reported where users look (README "Errors"): health names
the last failure of any kind with its time, and .status's rejected_write
does not outlive an accepted prompt."""

import time

from conftest import read_json, write_text
from conv_helpers import (FAST_FAIL, LLAMA, echo_of, mkconv, opts, prompt,
                          reply, status, wait_state)
from fake_lms import HttpError


def test_health_names_the_last_failure_of_any_kind(fake, mount):
    kw = dict(FAST_FAIL, default_model=LLAMA)
    m = mount(args=opts(**kw))
    mkconv(m, "c")
    assert read_json(m.path / "health")["last_failure"] is None
    fake.enqueue(HttpError(500, "the server broke"))
    t0 = time.time()
    prompt(m, "c", "hello")
    wait_state(m, "c", "failed")
    h = read_json(m.path / "health")
    lf = h["last_failure"]
    assert lf["class"] == "server_error", lf
    assert "the server broke" in lf["message"], lf
    assert lf["conversation"] == "c", lf
    at = time.mktime(time.strptime(lf["at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(at - t0) < 60, (lf["at"], t0)


def test_rejected_write_is_cleared_by_an_accepted_prompt(fake, mount):
    m = mount(args=opts(default_model=LLAMA, max_prompt_bytes=10))
    c = mkconv(m, "c")
    try:
        write_text(c / "prompt", "x" * 100)
    except OSError:
        pass
    assert status(m, "c").get("rejected_write"), status(m, "c")
    prompt(m, "c", "short")
    assert reply(m, "c").rstrip("\n") == echo_of("short")
    assert not status(m, "c").get("rejected_write"), status(m, "c")


def test_retry_settings_are_explained_alike_everywhere(lmsfs_bin):
    """max_retries governs requests that do not stream, max_retries_stream
    streamed ones: --help, the man page, lmsfs.conf and the README say so."""
    import subprocess
    from conftest import REPO
    helptext = subprocess.run([str(lmsfs_bin), "--help"], capture_output=True,
                              text=True, timeout=10).stdout
    texts = {"--help": helptext,
             "lmsfs.1": (REPO / "lmsfs.1").read_text(),
             "lmsfs.conf": (REPO / "lmsfs.conf").read_text(),
             "README.md": (REPO / "README.md").read_text()}
    for where, t in texts.items():
        flat = " ".join(t.replace("\\fB", "").replace("\\fR", "").replace(
            ".B ", "").split())
        assert "max_retries_stream" in flat, where
        assert "do not stream" in flat or "does not stream" in flat, where
        assert "first token" in flat, where


def test_allowed_models_narrow_matching_and_models_dir(fake, mount):
    """With allowed_models, a model name is matched among the allowed models
    only ("instruct" is then not ambiguous), models/ shows only them, and a
    unique substring of one is a valid default_model."""
    from conftest import listdir
    from conv_helpers import QWEN, chat_bodies
    m = mount(args=opts(allowed_models=LLAMA, default_model="llama"))
    names = listdir(m.path / "models")
    assert names == [LLAMA], names
    import errno as _errno
    import pytest as _pytest
    with _pytest.raises(OSError) as ei:
        read_json(m.path / "models" / QWEN.replace("/", "%2F"))
    assert ei.value.errno == _errno.ENOENT
    c = mkconv(m, "c")
    write_text(c / "model", "instruct\n")
    prompt(m, "c", "which one")
    assert reply(m, "c").rstrip("\n") == echo_of("which one")
    assert chat_bodies(fake)[-1]["model"] == LLAMA
    # The default (a substring of the allowed id) serves a conversation
    # without a model file.
    mkconv(m, "d")
    prompt(m, "d", "default")
    assert reply(m, "d").rstrip("\n") == echo_of("default")
    assert chat_bodies(fake)[-1]["model"] == LLAMA

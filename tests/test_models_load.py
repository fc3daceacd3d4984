"""Loading and unloading models from the shell (issue 13, item 3): touch
models/KEY loads and returns when loaded, writing load settings to it
loads with them, rm unloads; errors have fitting errnos; a waiting touch
holds no daemon thread and dies at once on Ctrl-C."""

import errno
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import listdir, read_json, read_text, run, wait_for
from conv_helpers import LLAMA, holds_for, os_errno
from fake_lms import default_models

QWEN3 = "qwen/qwen3-4b"
EQWEN3 = "qwen%2Fqwen3-4b"


def with_qwen3(fake):
    fake.models.append(dict(default_models()[0], id=QWEN3, publisher="qwen",
                            arch="qwen3", state="not-loaded"))


def v1(fake):
    fake.mode = "v1"
    with_qwen3(fake)


def msh(m, cmd, timeout=30):
    """bash -c cmd in MOUNT/models."""
    return run(["bash", "-c", cmd], timeout=timeout, cwd=str(m.path / "models"))


def loads(fake):
    return [r["body"] for r in fake.requests_to("/api/v1/models/load")]


def unloads(fake):
    return [r["body"] for r in fake.requests_to("/api/v1/models/unload")]


def test_touch_loads_and_returns_when_loaded(fake, mount):
    v1(fake)
    fake.load_delay = 0.8
    m = mount()
    assert EQWEN3 not in listdir(m.path / "models")
    t0 = time.monotonic()
    r = msh(m, "touch $(grep -m1 qwen3 .available)")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert took >= 0.7, "touch returned before the load ended (%.2f s)" % took
    # Listed at once, no waiting for a refresh.
    assert EQWEN3 in listdir(m.path / "models")
    assert read_json(m.path / "models" / EQWEN3)["loaded_instances"][0][
        "id"] == QWEN3
    assert loads(fake) == [{"model": QWEN3}]


def test_touch_of_loaded_model_loads_nothing(fake, mount):
    v1(fake)
    m = mount()
    r = msh(m, "touch %s" % LLAMA)
    assert r.returncode == 0, r.stderr
    assert loads(fake) == []


@pytest.mark.parametrize("how", ["echo", "python"])
def test_write_settings_loads_once_with_them(fake, mount, how):
    v1(fake)
    m = mount()
    settings = {"context_length": 16384, "flash_attention": False}
    if how == "echo":
        r = msh(m, "echo '%s' > %s" % (json.dumps(settings), EQWEN3))
        assert r.returncode == 0, r.stderr
    else:
        with open(m.path / "models" / EQWEN3, "w") as f:
            f.write(json.dumps(settings))
    assert loads(fake) == [dict(settings, model=QWEN3)]
    assert EQWEN3 in listdir(m.path / "models")
    doc = read_json(m.path / "models" / EQWEN3)
    assert doc["loaded_instances"][0]["config"]["context_length"] == 16384


def test_bad_settings_refused(fake, mount):
    v1(fake)
    m = mount()
    for bad in ('{"context_length": -1}', '{"gpu": "max"}', "[1]", "nope"):
        r = msh(m, "echo '%s' > %s" % (bad, EQWEN3))
        assert r.returncode != 0, bad
        assert "Invalid argument" in r.stderr, (bad, r.stderr)
    assert loads(fake) == []
    assert EQWEN3 not in listdir(m.path / "models")


def test_rm_unloads_the_instance(fake, mount):
    v1(fake)
    fake.models[1]["_instances"] = [LLAMA, LLAMA + ":2"]
    m = mount()
    r = msh(m, "rm %s:2" % LLAMA)
    assert r.returncode == 0, r.stderr
    assert unloads(fake) == [{"instance_id": LLAMA + ":2"}]
    names = listdir(m.path / "models")
    assert LLAMA + ":2" not in names and LLAMA in names
    r = msh(m, "rm %s" % LLAMA)
    assert r.returncode == 0, r.stderr
    assert LLAMA not in listdir(m.path / "models")
    assert LLAMA in read_text(m.path / "models" / ".available")


def test_unknown_key_is_enoent(fake, mount):
    v1(fake)
    m = mount()
    r = msh(m, "touch no-such-model")
    assert r.returncode != 0 and "No such file" in r.stderr, r.stderr
    r = msh(m, "echo '{}' > no-such-model")
    assert r.returncode != 0 and "No such file" in r.stderr, r.stderr
    assert os_errno(os.unlink, m.path / "models" / "no-such-model") == \
        errno.ENOENT
    assert loads(fake) == [] and unloads(fake) == []
    assert "not downloaded" in m.log()


@pytest.mark.parametrize("mode", ["v0", "openai"])
def test_server_without_api_v1_is_enotsup(fake, mount, mode):
    fake.mode = mode
    with_qwen3(fake)
    m = mount()
    assert listdir(m.path / "models")
    # (A /v1-only server lists every model as loaded: touch a new name.)
    r = msh(m, "touch %s" % (EQWEN3 if mode == "v0" else "other-model"))
    assert r.returncode != 0 and "not supported" in r.stderr, r.stderr
    assert os_errno(os.unlink, m.path / "models" / LLAMA) == errno.ENOTSUP
    assert LLAMA in listdir(m.path / "models")


@pytest.mark.parametrize("fail,err,text", [
    ("oom", "Cannot allocate memory", "memory"),
    ("the GPU caught fire", "Input/output error", "the GPU caught fire"),
])
def test_load_failure(fake, mount, fail, err, text):
    v1(fake)
    fake.load_fail = fail
    m = mount()
    r = msh(m, "touch %s" % EQWEN3)
    assert r.returncode != 0 and err in r.stderr, r.stderr
    h = read_json(m.path / "health")
    assert text in h["last_failure"]["message"], h
    assert QWEN3 in h["last_failure"]["message"]
    assert text in m.log()
    assert EQWEN3 not in listdir(m.path / "models")


@pytest.mark.xdist_group("timing")
def test_ctrl_c_during_slow_load_holds_no_thread(fake, mount):
    v1(fake)
    keys = ["big-model-%02d" % i for i in range(40)]
    fake.models += [dict(default_models()[1], id=k, state="not-loaded")
                    for k in keys]
    fake.load_delay = 60
    m = mount()
    # More waiting loads than the daemon has threads (32).
    procs = [subprocess.Popen(["touch", str(m.path / "models" / k)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for k in keys]
    try:
        wait_for(lambda: len(loads(fake)) == 40, timeout=20,
                 message="40 loads under way")
        # The daemon still answers everything else at once.
        t0 = time.monotonic()
        assert LLAMA in listdir(m.path / "models")
        assert read_json(m.path / "health")["reachable"] is True
        assert time.monotonic() - t0 < 2.0
        for p in procs:
            assert p.poll() is None  # still waiting for the load
        t0 = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(5)
        assert time.monotonic() - t0 < 3.0
        assert all(p.returncode != 0 for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert not set(keys) & set(listdir(m.path / "models"))


def test_concurrent_touches_share_one_load(fake, mount):
    v1(fake)
    fake.load_delay = 1.5
    m = mount()
    path = str(m.path / "models" / EQWEN3)
    t0 = time.monotonic()
    first = subprocess.Popen(["touch", path])
    wait_for(lambda: len(loads(fake)) == 1, timeout=10)
    others = [subprocess.Popen(["touch", path]) for _ in range(3)]
    # They wait for the load under way (they do not return at once).
    assert holds_for(lambda: all(p.poll() is None for p in others),
                     seconds=0.5)
    # One of them gives up: the load goes on for the rest.
    others[0].send_signal(signal.SIGINT)
    assert others[0].wait(5) != 0
    for p in [first] + others[1:]:
        assert p.wait(20) == 0
    assert time.monotonic() - t0 >= 1.4
    assert loads(fake) == [{"model": QWEN3}]
    assert EQWEN3 in listdir(m.path / "models")


@pytest.mark.xdist_group("timing")
def test_daemon_stop_answers_a_waiting_touch(fake, mount):
    """SIGTERM while a touch waits for a slow load: the touch is answered
    (it fails) and the daemon ends in a few seconds, not after the load."""
    v1(fake)
    fake.load_delay = 60
    m = mount()
    p = subprocess.Popen(["touch", str(m.path / "models" / EQWEN3)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(loads(fake)) == 1, timeout=10,
                 message="the load under way")
        t0 = time.monotonic()
        os.kill(m.pid, signal.SIGTERM)
        assert p.wait(10) != 0
        m.proc.wait(10)
        assert time.monotonic() - t0 < 5.0
        assert m.proc.returncode == 0, m.log()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


@pytest.mark.xdist_group("timing")
def test_rm_waits_for_the_unload_and_ctrl_c_ends_it(fake, mount):
    """rm returns once the server has unloaded. Meanwhile only models/
    waits (the kernel locks the directory during an unlink): health and
    prompts answer at once; Ctrl-C ends the rm, and models/ with it."""
    v1(fake)
    fake.unload_delay = 60
    m = mount()
    conv = m.path / "conversations" / "c"
    os.mkdir(conv)
    p = subprocess.Popen(["rm", str(m.path / "models" / LLAMA)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(unloads(fake)) == 1, timeout=10,
                 message="the unload under way")
        t0 = time.monotonic()
        assert read_json(m.path / "health")["reachable"] is True
        r = run(["bash", "-c", "echo %s > %s/model && echo hi > %s/prompt"
                 % (LLAMA, conv, conv)], timeout=20)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 2.0
        assert p.poll() is None  # still waiting for the unload
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(5) != 0
        assert LLAMA in listdir(m.path / "models")
        assert time.monotonic() - t0 < 3.0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_touch_after_load_while_first_file_still_open(fake, mount):
    """touch's first close loads; its file stays open a moment longer
    (touch closes a dup of it at exit). A touch in that moment finds the
    model loaded and loads nothing (no second instance)."""
    v1(fake)
    m = mount()
    path = str(m.path / "models" / EQWEN3)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    fd2 = os.dup(fd)
    try:
        os.close(fd)  # loads, returns once loaded
        assert len(loads(fake)) == 1
        r = run(["touch", path], timeout=20)
        assert r.returncode == 0, r.stderr
        assert loads(fake) == [{"model": QWEN3}]
    finally:
        os.close(fd2)
    assert listdir(m.path / "models").count(EQWEN3) == 1
    assert EQWEN3 + ":2" not in listdir(m.path / "models")

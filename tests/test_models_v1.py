"""Models as LM Studio 0.4 shows them (issue 13, items 1-2): /api/v1/models
with loaded instances and capabilities, falling back to /api/v0 and /v1;
models/.available; just-in-time loading of a downloaded model."""


import pytest

from conftest import listdir, read_json, read_text, wait_for
from conv_helpers import (FAST_FAIL, LLAMA, QWEN, cdir, mkconv, opts,
                          prompt, reply, sh, status)
from fake_lms import Reply, default_models, v1_model

EMBED = "text-embedding-nomic-embed-text-v1.5"
QWEN3 = "qwen/qwen3-4b"


def enc(i):
    return i.replace("%", "%25").replace("/", "%2F")


def with_qwen3(fake):
    """A downloaded reasoning model that is not loaded."""
    fake.models.append(dict(default_models()[0], id=QWEN3, publisher="qwen",
                            arch="qwen3", state="not-loaded",
                            capabilities=["tool_use", "reasoning"]))


def listings(fake):
    return [r["path"] for r in fake.requests
            if r["method"] == "GET" and "models" in r["path"]]


def test_v1_lists_loaded_instances(fake, mount):
    fake.mode = "v1"
    fake.models[1]["_instances"] = [LLAMA, LLAMA + ":2"]
    m = mount()
    names = listdir(m.path / "models")
    assert names == sorted([enc(QWEN), LLAMA, LLAMA + ":2"])
    # Each file holds the server's /api/v1 object of its model.
    doc = read_json(m.path / "models" / (LLAMA + ":2"))
    assert doc == v1_model(fake.models[1])
    assert [i["id"] for i in doc["loaded_instances"]] == [LLAMA, LLAMA + ":2"]
    assert doc["capabilities"]["trained_for_tool_use"] is True
    assert read_json(m.path / "models" / enc(QWEN))["key"] == QWEN
    assert fake.requests_to("/api/v1/models")
    assert not fake.requests_to("/api/v0/models")
    h = read_json(m.path / "health")
    assert h["models_loaded"] == 3 and h["models_downloaded"] == 3
    assert h["models_api"] == "v1"
    # A second instance is a model a conversation can name.
    mkconv(m, "c")
    sh(m, "echo %s > c/model" % (LLAMA + ":2"))
    prompt(m, "c", "hi")
    assert "hi" in reply(m, "c")
    assert fake.chat_requests()[-1]["body"]["model"] == LLAMA + ":2"


@pytest.mark.parametrize("mode", ["v0", "openai"])
def test_older_servers_fall_back(fake, mount, mode):
    fake.mode = mode
    m = mount()
    names = listdir(m.path / "models")
    if mode == "v0":
        assert names == sorted([enc(QWEN), LLAMA])
        assert read_json(m.path / "models" / LLAMA)["state"] == "loaded"
    else:
        # /v1/models has no state: everything it lists counts.
        assert names == sorted([enc(QWEN), LLAMA, enc(EMBED)])
        assert read_json(m.path / "models" / LLAMA)["object"] == "model"
    # /api/v1 was asked first and is not there.
    assert listings(fake)[0] == "/api/v1/models"
    assert read_json(m.path / "health")["models_api"] == mode
    mkconv(m, "c")
    sh(m, "echo %s > c/model" % LLAMA)
    prompt(m, "c", "hello")
    assert "hello" in reply(m, "c")


@pytest.mark.parametrize("mode", ["v1", "v0", "openai"])
def test_available_lists_downloaded(fake, mount, mode):
    fake.mode = mode
    with_qwen3(fake)
    m = mount(args=opts(models_ttl="60s"))
    want = [enc(QWEN), LLAMA, enc(EMBED), enc(QWEN3)]
    text = read_text(m.path / "models" / ".available")
    assert text.splitlines() == want
    assert text.endswith("\n")
    # Cached: reading it again asks the server nothing.
    before = len(listings(fake))
    for _ in range(3):
        assert read_text(m.path / "models" / ".available").splitlines() == want
    assert len(listings(fake)) == before
    # It is not a model: ls does not show it.
    assert ".available" not in listdir(m.path / "models")


def test_available_respects_allowed_models(fake, mount):
    fake.mode = "v1"
    m = mount(args=opts(allowed_models=LLAMA))
    assert read_text(m.path / "models" / ".available").splitlines() == [LLAMA]


@pytest.mark.parametrize("mode", ["v1", "v0"])
def test_jit_model_is_accepted_and_loaded(fake, mount, mode):
    fake.mode = mode
    with_qwen3(fake)
    fake.jit_delay = 1.5
    m = mount(args=opts(**FAST_FAIL))
    mkconv(m, "c")
    # A unique substring of a downloaded, not loaded model.
    sh(m, "echo qwen3 > c/model")
    sh(m, """echo '{"ttl": 300}' > c/params.json""")
    r = prompt(m, "c", "wake up", check=False)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: status(m, "c")["state"] == "loading", timeout=5,
             message=".status says loading during the load")
    assert "wake up" in reply(m, "c")
    assert status(m, "c")["state"] == "idle"
    body = fake.chat_requests()[-1]["body"]
    assert body["model"] == QWEN3
    assert body["ttl"] == 300
    assert fake.jit_loads == [(QWEN3, 300)]
    # Now it is loaded, and listed.
    wait_for(lambda: enc(QWEN3) in listdir(m.path / "models"), timeout=6)


def test_loading_ends_with_first_byte(fake, mount):
    """A loaded model never shows "loading"; a JIT one only until the
    answer starts."""
    fake.mode = "v1"
    with_qwen3(fake)
    fake.jit_delay = 1.0
    fake.enqueue(Reply(text="a b c d e f g h", delay=0.3))
    m = mount(args=opts(**FAST_FAIL))
    mkconv(m, "c")
    sh(m, "echo %s > c/model" % QWEN3)
    prompt(m, "c", "x")
    wait_for(lambda: status(m, "c")["state"] == "loading", timeout=5)
    wait_for(lambda: status(m, "c")["state"] == "generating", timeout=5,
             message="generating once the answer streams")
    reply(m, "c")


@pytest.mark.parametrize("mode", ["v1", "v0"])
def test_unknown_model_refused_listing_downloaded(fake, mount, mode):
    fake.mode = mode
    m = mount(args=opts(**FAST_FAIL))
    mkconv(m, "c")
    sh(m, "echo no-such-model > c/model")
    r = prompt(m, "c", "x", check=False)
    assert r.returncode != 0
    assert "No such file" in r.stderr  # ENOENT
    why = status(m, "c")["rejected_write"]
    assert "no-such-model" in why and "downloaded" in why, why
    for k in (QWEN, LLAMA, EMBED):
        assert k in why, why
    assert fake.chat_requests() == []


def test_available_lists_only_usable_names(fake, mount):
    """A key that cannot be a file name (a control character, over 255
    bytes once encoded) is not in .available: every line is a name that
    touch can use, and no key is split across lines."""
    fake.mode = "v1"
    fake.models += [dict(default_models()[1], id=k, state="not-loaded")
                    for k in ("bad\nkey", "x" * 300, "ok-key")]
    m = mount(args=opts(models_ttl="60s"))
    lines = read_text(m.path / "models" / ".available").splitlines()
    assert "ok-key" in lines
    assert "bad" not in lines and "key" not in lines, lines
    assert all(len(n) <= 255 for n in lines), [len(n) for n in lines]

"""The fake server's model endpoints (WIRE.md "Models", "Native REST API
v1"): the three modes (v1, v0, openai), /api/v1/models, load (taking time,
failing on demand), unload, and just-in-time loading on a chat request."""

import json
import time

import pytest

from fake_lms import FakeLMS, HttpError, default_models, v1_model
from test_fake_server import chat, req

LLAMA = "meta-llama-3.1-8b-instruct"
EMBED = "text-embedding-nomic-embed-text-v1.5"


@pytest.fixture
def srv():
    s = FakeLMS().start()
    yield s
    s.stop()


def get(srv, path):
    st, _, raw = req(srv, "GET", path)
    return st, json.loads(raw)


def post(srv, path, body):
    st, _, raw = req(srv, "POST", path, body)
    return st, json.loads(raw)


@pytest.mark.parametrize("mode,v1,v0", [("v1", 200, 200), ("v0", 404, 200),
                                        ("openai", 404, 404)])
def test_modes(srv, mode, v1, v0):
    srv.mode = mode
    assert get(srv, "/api/v1/models")[0] == v1
    assert get(srv, "/api/v0/models")[0] == v0
    st, doc = get(srv, "/v1/models")
    assert st == 200 and len(doc["data"]) == 3
    assert post(srv, "/api/v1/models/load", {"model": EMBED})[0] == (
        200 if mode == "v1" else 404)


def test_api_v1_models_shape(srv):
    srv.mode = "v1"
    st, doc = get(srv, "/api/v1/models")
    assert st == 200
    by_key = {m["key"]: m for m in doc["models"]}
    assert set(by_key) == {m["id"] for m in default_models()}
    llama = by_key[LLAMA]
    for field in ("type", "key", "display_name", "publisher", "architecture",
                  "quantization", "size_bytes", "params_string", "format",
                  "max_context_length", "loaded_instances", "capabilities"):
        assert field in llama, field
    assert llama["loaded_instances"][0]["id"] == LLAMA
    assert llama["capabilities"] == {"vision": False,
                                     "trained_for_tool_use": True}
    assert by_key[EMBED]["type"] == "embedding"
    assert by_key[EMBED]["loaded_instances"] == []
    # A vlm can see; a "_v1" dict overrides.
    srv.models.append(dict(default_models()[1], id="v", type="vlm",
                           _v1={"display_name": "Vis"}))
    m = [x for x in get(srv, "/api/v1/models")[1]["models"]
         if x["key"] == "v"][0]
    assert m["capabilities"]["vision"] is True and m["display_name"] == "Vis"
    # The fake's own keys never show in /api/v0.
    assert all(not k.startswith("_")
               for x in get(srv, "/api/v0/models")[1]["data"] for k in x)


def test_load_takes_time_and_adds_instances(srv):
    srv.mode = "v1"
    srv.load_delay = 0.3
    t0 = time.monotonic()
    st, doc = post(srv, "/api/v1/models/load",
                   {"model": EMBED, "context_length": 2048})
    assert time.monotonic() - t0 >= 0.3
    assert st == 200
    assert doc == {"type": "embedding", "instance_id": EMBED,
                   "load_time_seconds": 0.3, "status": "loaded"}
    st, doc = post(srv, "/api/v1/models/load", {"model": LLAMA})
    assert doc["instance_id"] == LLAMA + ":2"
    assert LLAMA + ":2" in srv.loaded_ids()
    m = [x for x in get(srv, "/api/v1/models")[1]["models"]
         if x["key"] == EMBED][0]
    assert m["loaded_instances"][0]["config"]["context_length"] == 2048
    assert get(srv, "/api/v0/models")[1]["data"][2]["state"] == "loaded"
    # A chat request may name the second instance.
    assert chat(srv, {"model": LLAMA + ":2"})[0] == 200


def test_load_failures(srv):
    srv.mode = "v1"
    st, doc = post(srv, "/api/v1/models/load", {"model": "nope"})
    assert st == 404 and doc["error"]["code"] == "model_not_found"
    srv.load_fail = "oom"
    st, doc = post(srv, "/api/v1/models/load", {"model": EMBED})
    assert st == 500 and "memory" in doc["error"]["message"]
    srv.load_fail = "boom"
    st, doc = post(srv, "/api/v1/models/load", {"model": EMBED})
    assert st == 500 and doc["error"]["message"] == "boom"
    srv.load_fail = HttpError(400, "bad")
    assert post(srv, "/api/v1/models/load", {"model": EMBED})[0] == 400
    assert EMBED not in srv.loaded_ids()


def test_unload(srv):
    srv.mode = "v1"
    st, doc = post(srv, "/api/v1/models/unload", {"instance_id": LLAMA})
    assert st == 200 and doc == {"instance_id": LLAMA}
    assert LLAMA not in srv.loaded_ids()
    assert [m for m in get(srv, "/api/v0/models")[1]["data"]
            if m["id"] == LLAMA][0]["state"] == "not-loaded"
    st, _ = post(srv, "/api/v1/models/unload", {"instance_id": LLAMA})
    assert st == 404


@pytest.mark.parametrize("mode", ["v1", "v0"])
def test_jit_load_on_chat(srv, mode):
    srv.mode = mode
    srv.jit_delay = 0.3
    t0 = time.monotonic()
    st, _, raw = chat(srv, {"model": EMBED, "ttl": 60})
    assert st == 200 and time.monotonic() - t0 >= 0.3
    assert srv.jit_loads == [(EMBED, 60)]
    assert EMBED in srv.loaded_ids()
    # Loaded now: no second wait.
    t0 = time.monotonic()
    chat(srv, {"model": EMBED})
    assert time.monotonic() - t0 < 0.3 and len(srv.jit_loads) == 1


def test_no_jit_in_openai_mode(srv):
    srv.mode = "openai"
    srv.jit_delay = 5
    t0 = time.monotonic()
    assert chat(srv, {"model": EMBED})[0] == 200
    assert time.monotonic() - t0 < 2 and srv.jit_loads == []


def test_v1_model_of_default(srv):
    assert v1_model(default_models()[0])["key"] == default_models()[0]["id"]

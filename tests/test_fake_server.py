"""Tests of the fake LM Studio server itself (no lmsfs needed)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from fake_lms import (DEFAULT, Disconnect, ErrorEvent, FakeLMS, Garbage,
                      Hang, HttpError, Json, Reply, SlowLoris, default_models,
                      free_port, model_not_found, no_models_loaded, parse_sse,
                      split_words, sse_json)

LLAMA = "meta-llama-3.1-8b-instruct"
QWEN = "lmstudio-community/qwen2.5-7b-instruct"


# ----------------------------------------------------------------- helpers

def req(srv, method, path, body=None, headers=None, timeout=10, conn=None):
    """One request with http.client; returns (status, headers, raw body).
    headers are lower-cased."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port,
                                          timeout=timeout)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, raw
    finally:
        if own:
            conn.close()


def chat(srv, body=None, path="/v1/chat/completions", **kw):
    b = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}
    b.update(body or {})
    return req(srv, "POST", path, b, **kw)


def raw_exchange(srv, request_bytes, timeout=5):
    """Sends raw bytes, reads until EOF; returns everything received."""
    with socket.create_connection(("127.0.0.1", srv.port),
                                  timeout=timeout) as s:
        s.sendall(request_bytes)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
        return out


def raw_chat(srv, body, path="/v1/chat/completions", timeout=5):
    """A chat request over a raw socket; returns (status, headers, body)
    where body is everything after the headers up to EOF (so truncated
    streams are visible as they are)."""
    data = json.dumps(body).encode()
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            "\r\nContent-Length: %d\r\n\r\n" % (path, len(data))).encode()
    out = raw_exchange(srv, head + data, timeout)
    if not out:
        return None, {}, b""
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def stream_body(**extra):
    b = {"model": LLAMA, "stream": True,
         "messages": [{"role": "system", "content": "sys"},
                      {"role": "user", "content": "hello big world"}]}
    b.update(extra)
    return b


def content_of(events):
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events
                   if isinstance(e, dict) and e.get("choices"))


def assemble_tool_calls(events):
    calls = {}
    for e in events:
        if not isinstance(e, dict) or not e.get("choices"):
            continue
        for tc in e["choices"][0]["delta"].get("tool_calls") or []:
            c = calls.setdefault(tc["index"], {"id": None, "name": None,
                                               "arguments": ""})
            if "id" in tc:
                c["id"] = tc["id"]
            fn = tc.get("function") or {}
            if "name" in fn:
                c["name"] = fn["name"]
            c["arguments"] += fn.get("arguments", "")
    return [calls[i] for i in sorted(calls)]


@pytest.fixture
def srv():
    s = FakeLMS().start()
    yield s
    s.stop()


# ------------------------------------------------------------------ models

def test_api_v0_models_lists_all_with_state(srv):
    st, h, raw = req(srv, "GET", "/api/v0/models")
    assert st == 200
    assert h["content-type"].startswith("application/json")
    assert int(h["content-length"]) == len(raw)
    doc = json.loads(raw)
    assert doc["object"] == "list"
    assert doc["data"] == default_models()
    ids = [m["id"] for m in doc["data"]]
    assert ids == [QWEN, LLAMA, "text-embedding-nomic-embed-text-v1.5"]
    assert [m["state"] for m in doc["data"]] == ["loaded", "loaded",
                                                  "not-loaded"]
    for m in doc["data"]:
        for k in ("id", "object", "type", "publisher", "arch",
                  "compatibility_type", "quantization", "state",
                  "max_context_length"):
            assert k in m
    assert srv.loaded_ids() == [QWEN, LLAMA]


def test_api_v0_model_by_id_with_slash(srv):
    for path in ("/api/v0/models/" + QWEN,
                 "/api/v0/models/lmstudio-community%2Fqwen2.5-7b-instruct"):
        st, _, raw = req(srv, "GET", path)
        assert st == 200
        assert json.loads(raw) == default_models()[0]
    st, _, raw = req(srv, "GET", "/api/v0/models/nope")
    assert st == 404
    assert json.loads(raw)["error"]["code"] == "model_not_found"


def test_models_are_live_and_custom(srv):
    srv.models = [dict(default_models()[1], id="a/b%c")]
    st, _, raw = req(srv, "GET", "/api/v0/models")
    assert [m["id"] for m in json.loads(raw)["data"]] == ["a/b%c"]
    st, _, raw = req(srv, "GET", "/api/v0/models/a%2Fb%25c")
    assert st == 200 and json.loads(raw)["id"] == "a/b%c"


def test_v1_models_openai_form(srv):
    st, _, raw = req(srv, "GET", "/v1/models")
    assert st == 200
    doc = json.loads(raw)
    assert doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == [
        m["id"] for m in default_models()]
    for m in doc["data"]:
        assert set(m) == {"id", "object", "owned_by"}
        assert m["object"] == "model"
    srv.jit = False
    _, _, raw = req(srv, "GET", "/v1/models")
    assert [m["id"] for m in json.loads(raw)["data"]] == [QWEN, LLAMA]


def test_no_api_v0_answers_404(srv):
    srv.no_api_v0 = True
    for path in ("/api/v0/models", "/api/v0/models/" + LLAMA):
        st, _, raw = req(srv, "GET", path)
        assert st == 404
        assert isinstance(json.loads(raw)["error"], str)
    st, _, _ = chat(srv, path="/api/v0/chat/completions")
    assert st == 404
    st, _, raw = req(srv, "GET", "/v1/models")
    assert st == 200 and len(json.loads(raw)["data"]) == 3
    st, _, _ = chat(srv)
    assert st == 200


def test_unknown_endpoint_404(srv):
    st, _, raw = req(srv, "GET", "/nope")
    assert st == 404
    assert "Unexpected endpoint" in json.loads(raw)["error"]


# -------------------------------------------------------------------- auth

def test_require_token(srv):
    srv.require_token = "s3cret"
    for path in ("/api/v0/models", "/v1/models", "/api/v0/models/" + LLAMA):
        for hdr in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "s3cret"}):
            st, _, raw = req(srv, "GET", path, headers=hdr)
            assert st == 401, (path, hdr)
            err = json.loads(raw)["error"]
            assert isinstance(err, dict) and err["message"]
    st, _, raw = chat(srv)
    assert st == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert req(srv, "GET", "/api/v0/models", headers=ok)[0] == 200
    assert req(srv, "GET", "/v1/models",
               headers={"authorization": "bearer s3cret"})[0] == 200
    assert chat(srv, headers=ok)[0] == 200
    # Every request is recorded, refused or not.
    assert len(srv.requests) == 13


# ---------------------------------------------------------------- HTTP/1.1

def test_keep_alive_reuses_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        st, h, _ = req(srv, "GET", "/api/v0/models", conn=conn)
        assert st == 200 and h.get("connection") == "keep-alive"
        sock = conn.sock
        assert sock is not None
        st, _, _ = chat(srv, conn=conn)  # non-streamed: keep-alive
        assert st == 200
        st, _, _ = req(srv, "GET", "/v1/models", conn=conn)
        assert st == 200
        assert conn.sock is sock
    finally:
        conn.close()


def test_expect_100_continue(srv):
    body = json.dumps({"model": LLAMA, "messages": [
        {"role": "user", "content": "x" * 2000}]}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n"
                   "Expect: 100-continue\r\nConnection: close\r\n\r\n"
                   % len(body)).encode())
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100")
        s.sendall(body)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    assert b"HTTP/1.1 200" in out
    assert srv.chat_requests()[0]["body"]["messages"][0]["content"] == \
        "x" * 2000


def test_chunked_request_body(srv):
    body = json.dumps({"model": LLAMA, "messages": [
        {"role": "user", "content": "chunky"}]}).encode()
    a, b = body[:10], body[10:]
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"%x\r\n" % len(a) + a + b"\r\n" + b"%x\r\n" % len(b) + b
            + b"\r\n0\r\n\r\n")
    out = raw_exchange(srv, data)
    assert out.startswith(b"HTTP/1.1 200")
    assert b"Echo: chunky" in out
    assert srv.chat_requests()[0]["raw"] == body


# --------------------------------------------------------------- streaming

def test_stream_default_reply_framing(srv):
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 200
    assert h["content-type"] == "text/event-stream"
    assert h["connection"] == "close"
    assert "content-length" not in h
    text = raw.decode()
    # Every event is one "data: ..." line followed by a blank line.
    assert text.endswith("data: [DONE]\n\n")
    blocks = text.split("\n\n")
    assert blocks[-1] == ""
    for b in blocks[:-1]:
        assert b.startswith("data: ") and "\n" not in b
    ev = sse_json(raw)
    assert ev[-1] == "[DONE]"
    chunks = ev[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["model"] == LLAMA for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant",
                                                "content": ""}
    assert chunks[0]["choices"][0]["finish_reason"] is None
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert words == ["Echo: ", "hello ", "big ", "world"]
    assert all(c["choices"][0]["finish_reason"] is None
               for c in chunks[1:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks)  # not asked
    # Compact JSON, as LM Studio sends it.
    assert text.startswith('data: {"id":"chatcmpl-')


def test_stream_usage_only_when_asked(srv):
    _, _, raw = raw_chat(srv, stream_body(
        stream_options={"include_usage": True}))
    ev = sse_json(raw)
    assert ev[-1] == "[DONE]"
    u = ev[-2]
    assert u["choices"] == []
    assert set(u["usage"]) == {"prompt_tokens", "completion_tokens",
                               "total_tokens"}
    assert u["usage"]["total_tokens"] == (u["usage"]["prompt_tokens"] +
                                          u["usage"]["completion_tokens"])
    assert ev[-3]["choices"][0]["finish_reason"] == "stop"
    # include_usage false, or usage disabled: no usage chunk.
    _, _, raw = raw_chat(srv, stream_body(
        stream_options={"include_usage": False}))
    assert not any("usage" in e for e in sse_json(raw)[:-1])
    srv.enqueue(Reply("x", usage=False))
    _, _, raw = raw_chat(srv, stream_body(
        stream_options={"include_usage": True}))
    assert not any("usage" in e for e in sse_json(raw)[:-1])
    srv.enqueue(Reply("x", usage="always"))
    _, _, raw = raw_chat(srv, stream_body())
    assert "usage" in sse_json(raw)[-2]
    srv.enqueue(Reply("x", usage={"prompt_tokens": 1,
                                  "completion_tokens": 2,
                                  "total_tokens": 3}))
    _, _, raw = raw_chat(srv, stream_body(
        stream_options={"include_usage": True}))
    assert sse_json(raw)[-2]["usage"] == {"prompt_tokens": 1,
                                          "completion_tokens": 2,
                                          "total_tokens": 3}


def test_stream_scripted_text_and_chunks(srv):
    srv.enqueue(Reply("Once upon a time"),
                Reply(chunks=["Hé", "llo", " wörld ✓"]))
    _, _, raw = raw_chat(srv, stream_body())
    assert content_of(sse_json(raw)) == "Once upon a time"
    _, _, raw = raw_chat(srv, stream_body())
    ev = sse_json(raw)
    assert [e["choices"][0]["delta"].get("content") for e in ev[1:4]] == \
        ["Hé", "llo", " wörld ✓"]
    # Then back to the default reply.
    _, _, raw = raw_chat(srv, stream_body())
    assert content_of(sse_json(raw)) == "Echo: hello big world"


def test_stream_other_server_quirks(srv):
    srv.enqueue(Reply("a b c", role_chunk=False, done=False,
                      content_type=False, chunk_id_per_chunk=True,
                      finish_chunk=False))
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 200
    assert "content-type" not in h
    ev = sse_json(raw)
    assert "[DONE]" not in ev
    assert len(ev) == 3
    assert "role" not in ev[0]["choices"][0]["delta"]
    assert len({e["id"] for e in ev}) == 3
    assert [e["choices"][0]["finish_reason"] for e in ev] == [
        None, None, "stop"]
    assert content_of(ev) == "a b c"
    # No finish_reason at all.
    srv.enqueue(Reply("a b", finish_reason=None))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert all(e["choices"][0]["finish_reason"] is None for e in ev[:-1])
    assert ev[-1] == "[DONE]"
    # A custom finish reason.
    srv.enqueue(Reply("a", finish_reason="length"))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert ev[-2]["choices"][0]["finish_reason"] == "length"


def test_stream_crlf_and_split_writes(srv):
    srv.enqueue(Reply("héllo wörld ✓ ok", eol="\r\n", write_size=3))
    _, _, raw = raw_chat(srv, stream_body())
    assert b"\r\n\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    assert content_of(sse_json(raw)) == "héllo wörld ✓ ok"


def test_stream_reasoning_before_content(srv):
    srv.enqueue(Reply("The answer.", reasoning="Let me think."),
                Reply("x", reasoning=["a", "b"],
                      reasoning_key="reasoning_content"))
    ev = sse_json(raw_chat(srv, stream_body())[2])[1:-2]
    kinds = [next(iter(e["choices"][0]["delta"])) for e in ev]
    assert kinds == ["reasoning"] * 3 + ["content"] * 2
    assert "".join(e["choices"][0]["delta"].get("reasoning", "")
                   for e in ev) == "Let me think."
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert [e["choices"][0]["delta"].get("reasoning_content")
            for e in ev[1:3]] == ["a", "b"]


def test_stream_delay_and_chunk_delay(srv):
    srv.enqueue(Reply("a b c d", delay=0.1))
    t0 = time.monotonic()
    raw_chat(srv, stream_body())
    assert time.monotonic() - t0 >= 0.35
    srv.chunk_delay = 0.05
    t0 = time.monotonic()
    raw_chat(srv, stream_body())
    assert time.monotonic() - t0 >= 0.2


def test_stream_chunked_transfer_encoding(srv):
    srv.chunked = True
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        st, h, raw = chat(srv, {"stream": True}, conn=conn)
        assert st == 200
        assert h["transfer-encoding"] == "chunked"
        assert h["connection"] == "keep-alive"
        ev = sse_json(raw)
        assert ev[-1] == "[DONE]" and content_of(ev) == "Echo: hi"
        sock = conn.sock
        st, _, raw = chat(srv, {"stream": True}, conn=conn)
        assert st == 200 and conn.sock is sock
    finally:
        conn.close()


# -------------------------------------------------------------- tool calls

CALLS = [
    {"id": "814890118", "name": "get_current_weather",
     "arguments": {"location": "San Francisco", "unit": "celsius"}},
    {"name": "search_products",
     "arguments": '{"query":"dell","max_price":50}'},
]


def test_stream_tool_calls_reassemble(srv):
    srv.enqueue(Reply(tool_calls=CALLS))
    ev = sse_json(raw_chat(srv, stream_body(tools=[{"type": "function"}]))[2])
    assert ev[-1] == "[DONE]"
    assert ev[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert ev[-2]["choices"][0]["delta"] == {}
    calls = assemble_tool_calls(ev)
    assert calls[0] == {"id": "814890118", "name": "get_current_weather",
                        "arguments": json.dumps(CALLS[0]["arguments"])}
    assert calls[1]["name"] == "search_products"
    assert calls[1]["arguments"] == CALLS[1]["arguments"]
    assert calls[1]["id"].isdigit()
    assert json.loads(calls[0]["arguments"]) == CALLS[0]["arguments"]
    # Shape of the deltas.
    deltas = [e["choices"][0]["delta"]["tool_calls"] for e in ev
              if e != "[DONE]" and e["choices"] and
              "tool_calls" in e["choices"][0]["delta"]]
    assert all(len(d) == 1 for d in deltas)
    firsts = [d[0] for d in deltas if "id" in d[0]]
    assert len(firsts) == 2
    for f in firsts:
        assert f["type"] == "function"
        assert f["function"]["arguments"] == ""
        assert set(f) == {"index", "id", "type", "function"}
    frags = [d[0] for d in deltas if "id" not in d[0]]
    for f in frags:
        assert set(f) == {"index", "function"}
        assert set(f["function"]) == {"arguments"}
        assert 1 <= len(f["function"]["arguments"]) <= 7
    assert len([f for f in frags if f["index"] == 0]) >= 3
    # Not interleaved: indexes never go back.
    idx = [d[0]["index"] for d in deltas]
    assert idx == sorted(idx)
    assert content_of(ev) == ""


def test_stream_tool_calls_interleaved_and_text_first(srv):
    srv.enqueue(Reply("Let me check.", tool_calls=CALLS, interleave=True))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    idx = [e["choices"][0]["delta"]["tool_calls"][0]["index"] for e in ev
           if e != "[DONE]" and e["choices"] and
           "tool_calls" in e["choices"][0]["delta"]]
    assert idx != sorted(idx)
    calls = assemble_tool_calls(ev)
    assert [c["arguments"] for c in calls] == [
        json.dumps(CALLS[0]["arguments"]), CALLS[1]["arguments"]]
    assert content_of(ev) == "Let me check."
    # Content comes before any tool call delta.
    kinds = [("c" if "content" in e["choices"][0]["delta"] else "t")
             for e in ev[1:-2]]
    assert kinds == sorted(kinds)


def test_non_stream_tool_calls(srv):
    srv.enqueue(Reply(tool_calls=CALLS[:1]))
    st, _, raw = chat(srv)
    doc = json.loads(raw)
    ch = doc["choices"][0]
    assert ch["finish_reason"] == "tool_calls"
    msg = ch["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] is None
    assert msg["tool_calls"] == [{
        "id": "814890118", "type": "function",
        "function": {"name": "get_current_weather",
                     "arguments": json.dumps(CALLS[0]["arguments"])}}]
    srv.enqueue(Reply("Let me check the time.", tool_calls=CALLS[1:]))
    msg = json.loads(chat(srv)[2])["choices"][0]["message"]
    assert msg["content"] == "Let me check the time."
    assert isinstance(msg["tool_calls"][0]["function"]["arguments"], str)


def test_legacy_functions(srv):
    body = stream_body(functions=[{"name": "get_current_weather",
                                   "parameters": {}}])
    srv.enqueue(Reply(tool_calls=CALLS[:1]))
    ev = sse_json(raw_chat(srv, body)[2])
    fc = [e["choices"][0]["delta"]["function_call"] for e in ev
          if e != "[DONE]" and e["choices"] and
          "function_call" in e["choices"][0]["delta"]]
    assert fc[0] == {"name": "get_current_weather", "arguments": ""}
    assert all(set(f) == {"arguments"} for f in fc[1:])
    assert "".join(f["arguments"] for f in fc) == json.dumps(
        CALLS[0]["arguments"])
    assert ev[-2]["choices"][0]["finish_reason"] == "function_call"
    assert not any("tool_calls" in e["choices"][0]["delta"] for e in ev
                   if e != "[DONE]" and e["choices"])
    # Not streamed.
    srv.enqueue(Reply(tool_calls=CALLS[:1]))
    body["stream"] = False
    doc = json.loads(chat(srv, body)[2])
    ch = doc["choices"][0]
    assert ch["finish_reason"] == "function_call"
    assert ch["message"]["function_call"] == {
        "name": "get_current_weather",
        "arguments": json.dumps(CALLS[0]["arguments"])}
    assert "tool_calls" not in ch["message"]


# ------------------------------------------------------------- not streamed

def test_non_stream_reply_shape(srv):
    st, h, raw = chat(srv, {"messages": [
        {"role": "user", "content": "Hello there"}]})
    assert st == 200
    assert h["content-type"].startswith("application/json")
    assert int(h["content-length"]) == len(raw)
    doc = json.loads(raw)
    assert doc["object"] == "chat.completion"
    assert doc["id"].startswith("chatcmpl-")
    assert isinstance(doc["created"], int)
    assert doc["model"] == LLAMA
    assert doc["choices"] == [{
        "index": 0, "logprobs": None, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Echo: Hello there"}}]
    u = doc["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    s = doc["stats"]
    assert s["stop_reason"] == "eosFound"
    for k in ("tokens_per_second", "time_to_first_token", "generation_time"):
        assert isinstance(s[k], (int, float))
    assert "model_info" not in doc
    # /api/v0 adds model_info and runtime, and always stats.
    srv.enqueue(Reply("x", stats=False))
    doc = json.loads(chat(srv, path="/api/v0/chat/completions")[2])
    assert {"stats", "model_info", "runtime"} <= set(doc)
    srv.enqueue(Reply("x", stats=False, usage=False))
    doc = json.loads(chat(srv)[2])
    assert "stats" not in doc and "usage" not in doc
    srv.enqueue(Reply("x", finish_reason="length"))
    doc = json.loads(chat(srv)[2])
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["stats"]["stop_reason"] == "maxPredictedTokensReached"
    srv.enqueue(Reply("x", reasoning="hmm"))
    msg = json.loads(chat(srv)[2])["choices"][0]["message"]
    assert msg["reasoning"] == "hmm" and msg["content"] == "x"


def test_reply_model_field(srv):
    srv.enqueue(Reply("x", model="other-model"))
    assert json.loads(chat(srv)[2])["model"] == "other-model"
    b = {"messages": [{"role": "user", "content": "q"}], "stream": False}
    st, _, raw = req(srv, "POST", "/v1/chat/completions", b)
    assert json.loads(raw)["model"] == QWEN  # first loaded one


def test_default_echo_uses_last_user_message(srv):
    b = {"model": QWEN, "messages": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Echo: first"},
        {"role": "user", "content": [{"type": "text", "text": "sec"},
                                     {"type": "text", "text": "ond"}]}]}
    doc = json.loads(req(srv, "POST", "/v1/chat/completions", b)[2])
    assert doc["choices"][0]["message"]["content"] == "Echo: second"


# ------------------------------------------------------------------ errors

def test_http_error_bodies(srv):
    srv.enqueue(HttpError(500, "boom"),
                HttpError(400, {"error": {"message": "bad", "code": "x"}}),
                HttpError(502, b"<html>bad gateway</html>"),
                model_not_found("o4-mini"),
                no_models_loaded(),
                HttpError(429, "slow down", headers={"Retry-After": "2"}))
    st, h, raw = chat(srv)
    assert st == 500 and json.loads(raw) == {"error": "boom"}
    assert int(h["content-length"]) == len(raw)
    st, _, raw = chat(srv)
    assert st == 400 and json.loads(raw) == {
        "error": {"message": "bad", "code": "x"}}
    st, _, raw = chat(srv)
    assert st == 502 and raw == b"<html>bad gateway</html>"
    st, _, raw = chat(srv)
    err = json.loads(raw)["error"]
    assert st == 400
    assert err["code"] == "model_not_found"
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "model"
    assert err["message"].startswith('Invalid model identifier "o4-mini"')
    st, _, raw = chat(srv)
    assert st == 400
    assert json.loads(raw)["error"].startswith("No models loaded.")
    st, h, raw = chat(srv)
    assert st == 429 and h["retry-after"] == "2"
    # The connection survives an HTTP error (keep-alive).
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        srv.enqueue(HttpError(500, "boom"))
        assert chat(srv, conn=conn)[0] == 500
        sock = conn.sock
        assert chat(srv, conn=conn)[0] == 200
        assert conn.sock is sock
    finally:
        conn.close()


def test_validate_model(srv):
    srv.enqueue(Reply("scripted"))
    st, _, raw = chat(srv, {"model": "o4-mini"})
    assert st == 400
    assert json.loads(raw)["error"]["code"] == "model_not_found"
    assert srv.pending() == 1  # the queue was not consumed
    # JIT: a downloaded but not loaded model is accepted.
    st, _, raw = chat(srv, {"model": "text-embedding-nomic-embed-text-v1.5"})
    assert st == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == "scripted"
    for m in srv.models:
        m["state"] = "not-loaded"
    b = {"messages": [{"role": "user", "content": "q"}]}
    st, _, raw = req(srv, "POST", "/v1/chat/completions", b)
    assert st == 400 and "No models loaded" in json.loads(raw)["error"]
    srv.validate_model = False
    st, _, raw = chat(srv, {"model": "o4-mini"})
    assert st == 200 and json.loads(raw)["model"] == "o4-mini"


def test_bad_chat_body(srv):
    st, _, raw = req(srv, "POST", "/v1/chat/completions", b"not json")
    assert st == 400 and "error" in json.loads(raw)
    assert srv.chat_requests()[0]["body"] is None
    assert srv.chat_requests()[0]["raw"] == b"not json"


def test_disconnect_mid_stream(srv):
    srv.enqueue(Disconnect(after_chunks=2, text="one two three four"))
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 200
    assert b"[DONE]" not in raw
    ev = sse_json(raw)
    assert "[DONE]" not in ev
    assert content_of(ev) == "one two "
    assert all(e["choices"][0]["finish_reason"] is None for e in ev)
    # Default text: the echo.
    srv.enqueue(Disconnect(after_chunks=1))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert content_of(ev) == "Echo: "
    # Even in chunked mode the stream just stops (no terminating chunk).
    srv.chunked = True
    srv.enqueue(Disconnect(after_chunks=1))
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            chat(srv, {"stream": True}, conn=conn)
    finally:
        conn.close()


def test_disconnect_before_headers_and_non_stream(srv):
    srv.enqueue(Disconnect(before_headers=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        chat(srv)
    srv.enqueue(Disconnect())
    with pytest.raises(http.client.IncompleteRead):
        chat(srv)
    # The server is still fine afterwards.
    assert chat(srv)[0] == 200


def test_error_event_in_stream(srv):
    srv.enqueue(ErrorEvent(after_chunks=2, text="a b c",
                           error={"message": "oops", "type": "x"}),
                ErrorEvent(error="plain string error"))
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 200
    ev = sse_json(raw)
    assert ev[-1] == {"error": {"message": "oops", "type": "x"}}
    assert "[DONE]" not in ev
    assert content_of(ev[:-1]) == "a b "
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert ev[-1] == {"error": "plain string error"}
    assert len(ev) == 2  # role chunk, error
    srv.enqueue(ErrorEvent(error="nope"))
    st, _, raw = chat(srv)
    assert st == 200 and json.loads(raw) == {"error": "nope"}


def test_garbage(srv):
    srv.enqueue(Garbage(b"data: {not json\n\n"),
                Garbage([b"data: {\"a\":", b"1}\n\n"], status=503,
                        content_type=None, delay=0.05),
                Garbage(b"SSH-2.0-OpenSSH\r\n", raw=True),
                Garbage("\xff\xfe", content_type="application/json"))
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 200 and h["content-type"] == "text/event-stream"
    assert raw == b"data: {not json\n\n"
    st, h, raw = raw_chat(srv, stream_body())
    assert st == 503 and "content-type" not in h
    assert raw == b'data: {"a":1}\n\n'
    data = json.dumps(stream_body()).encode()
    out = raw_exchange(srv, b"POST /v1/chat/completions HTTP/1.1\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(data) + data)
    assert out == b"SSH-2.0-OpenSSH\r\n"
    st, h, raw = raw_chat(srv, stream_body())
    assert raw == "\xff\xfe".encode()


def test_hang_and_then(srv):
    srv.enqueue(Hang(30))
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        chat(srv, timeout=0.3)
    assert time.monotonic() - t0 < 2
    srv.enqueue(Hang(0.3, then=Reply("late")))
    t0 = time.monotonic()
    st, _, raw = chat(srv)
    assert time.monotonic() - t0 >= 0.3
    assert json.loads(raw)["choices"][0]["message"]["content"] == "late"
    srv.enqueue(Hang(0.1))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        chat(srv)


def test_slowloris(srv):
    srv.enqueue(SlowLoris(0.002, then=HttpError(500, "slow")))
    t0 = time.monotonic()
    st, _, raw = chat(srv)
    took = time.monotonic() - t0
    assert st == 500 and json.loads(raw) == {"error": "slow"}
    assert took >= 0.002 * 150  # status line + headers + body, byte by byte
    srv.enqueue(SlowLoris(0.0005))
    st, _, raw = raw_chat(srv, stream_body())
    assert content_of(sse_json(raw)) == "Echo: hello big world"


# -------------------------------------------------------- scripting, routes

def test_enqueue_fifo_and_callables(srv):
    seen = []

    def script(r):
        seen.append(r["body"]["messages"][-1]["content"])
        return Reply("called back")

    srv.enqueue(Reply("one"), script, HttpError(500, "three"))
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] \
        == "one"
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] \
        == "called back"
    assert seen == ["hi"]
    assert chat(srv)[0] == 500
    assert srv.pending() == 0
    assert json.loads(chat(srv)[2])["choices"][0]["message"]["content"] \
        == "Echo: hi"


def test_routes_override(srv):
    srv.routes[("GET", "/api/v0/models")] = [HttpError(500, "a"),
                                             HttpError(503, "b")]
    assert req(srv, "GET", "/api/v0/models")[0] == 500
    assert req(srv, "GET", "/api/v0/models")[0] == 503
    assert req(srv, "GET", "/api/v0/models")[0] == 503  # last one sticks
    srv.routes[("GET", "/v1/models")] = lambda r: Json({"data": []},
                                                       status=200)
    assert json.loads(req(srv, "GET", "/v1/models?x=1")[2]) == {"data": []}
    srv.routes.clear()
    assert req(srv, "GET", "/api/v0/models")[0] == 200


# --------------------------------------------------------------- recording

def test_request_recording(srv):
    t0 = time.monotonic()
    chat(srv, {"stream": True}, headers={"X-Test": "1",
                                         "Authorization": "Bearer k"})
    req(srv, "GET", "/api/v0/models?foo=bar")
    chat(srv, path="/api/v0/chat/completions")
    assert len(srv.requests) == 3
    r0, r1, r2 = srv.requests
    assert r0["method"] == "POST" and r0["path"] == "/v1/chat/completions"
    assert r0["headers"]["x-test"] == "1"
    assert r0["headers"]["authorization"] == "Bearer k"
    assert all(k == k.lower() for k in r0["headers"])
    assert r0["body"]["stream"] is True
    assert json.loads(r0["raw"]) == r0["body"]
    assert r1["path"] == "/api/v0/models?foo=bar" and r1["body"] is None
    assert r1["raw"] == b""
    assert t0 <= r0["t"] <= r1["t"] <= r2["t"] <= time.monotonic()
    assert [r["path"] for r in srv.chat_requests()] == [
        "/v1/chat/completions", "/api/v0/chat/completions"]
    assert srv.wait_requests(2, timeout=1) == srv.chat_requests()
    assert srv.requests_to("/api/v0/models") == [r1]
    t = time.monotonic()
    with pytest.raises(AssertionError):
        srv.wait_requests(3, timeout=0.2)
    assert time.monotonic() - t < 1.5
    assert srv.wait_for_request(lambda r: r["method"] == "GET") is r1
    srv.clear()
    assert srv.requests == [] and srv.chat_requests() == []


def test_wait_requests_wakes_up(srv):
    def later():
        time.sleep(0.2)
        chat(srv)

    th = threading.Thread(target=later, daemon=True)
    th.start()
    t0 = time.monotonic()
    got = srv.wait_requests(1, timeout=5)
    assert len(got) == 1 and time.monotonic() - t0 < 2
    th.join(5)


def test_concurrent_streams(srv):
    srv.chunk_delay = 0.05
    results = []

    def one(i):
        b = stream_body(messages=[{"role": "user", "content": "n%d" % i}])
        results.append(content_of(sse_json(raw_chat(srv, b)[2])))

    ths = [threading.Thread(target=one, args=(i,), daemon=True)
           for i in range(8)]
    t0 = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join(10)
    assert sorted(results) == sorted("Echo: n%d" % i for i in range(8))
    assert time.monotonic() - t0 < 2  # served in parallel


# ---------------------------------------------------------------- lifecycle

def test_stop_does_not_hang_with_open_streams():
    s = FakeLMS().start()
    s.chunk_delay = 0.5
    s.enqueue(Reply(chunks=["x"] * 100), Hang(60))
    conns = []

    def open_stream():
        try:
            raw_chat(s, stream_body(), timeout=30)
        except OSError:
            pass

    for _ in range(2):
        t = threading.Thread(target=open_stream, daemon=True)
        t.start()
        conns.append(t)
    # An idle keep-alive connection too.
    idle = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    req(s, "GET", "/v1/models", conn=idle)
    s.wait_requests(2, timeout=5)
    time.sleep(0.2)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 3
    for t in conns:
        t.join(5)
        assert not t.is_alive()
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    s.stop()  # idempotent


def test_restart_on_same_port():
    port = free_port()
    s = FakeLMS(port=port)
    assert s.url == "http://127.0.0.1:%d" % port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    s.start()
    try:
        assert s.port == port
        assert req(s, "GET", "/v1/models")[0] == 200
        s.stop()
        assert not s.running
        s.start()
        assert s.port == port
        assert req(s, "GET", "/v1/models")[0] == 200
    finally:
        s.stop()


def test_context_manager():
    with FakeLMS() as s:
        assert req(s, "GET", "/v1/models")[0] == 200
    assert not s.running


def test_standalone_main():
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "fake_lms.py")
    p = subprocess.Popen([sys.executable, script, "--port", "0",
                          "--delay", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        box = {}
        t = threading.Thread(target=lambda: box.update(
            line=p.stdout.readline()), daemon=True)
        t.start()
        t.join(10)
        url = box.get("line", "").strip()
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])

        class S:
            pass
        s = S()
        s.port = port
        st, _, raw = req(s, "GET", "/api/v0/models")
        assert st == 200 and len(json.loads(raw)["data"]) == 3
        st, _, raw = chat(s, {"stream": True})
        assert content_of(sse_json(raw)) == "Echo: hi"
        p.terminate()
        assert p.wait(5) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


# ------------------------------------------------------------------- utils

def test_split_words_and_parse_sse():
    for t in ["", "a", "  lead", "trail  ", "a  b\nc\td", "   ", "x y z "]:
        assert "".join(split_words(t)) == t
    assert split_words("Echo: hello world") == ["Echo: ", "hello ", "world"]
    raw = b"data: a\r\n\r\n: comment\n\ndata: b\ndata: c\n\nevent: x\n\n"
    assert parse_sse(raw) == ["a", "b\nc"]
    assert DEFAULT is not None


# ------------------------------------------- think text, stream stats, usage

def test_think_text_cut_across_chunks(srv):
    srv.enqueue(Reply("Answer.", think="weigh it"),
                Reply("Answer.", think="weigh it"))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    pieces = [e["choices"][0]["delta"].get("content") for e in ev[1:-2]]
    assert pieces[:2] == ["<thi", "nk>"] and "</th" in pieces, pieces
    assert content_of(ev) == "<think>weigh it</think>\n\nAnswer."
    msg = json.loads(chat(srv)[2])["choices"][0]["message"]
    assert msg["content"] == "<think>weigh it</think>\n\nAnswer."


def test_stats_on_the_final_chunk_and_reasoning_tokens(srv):
    st = {"tokens_per_second": 3.5, "stop_reason": "eosFound"}
    srv.enqueue(Reply("x y", reasoning="a b", stream_stats=st,
                      reasoning_tokens=True),
                Reply("x y", stream_stats=True),
                Reply("x", reasoning="a b c", reasoning_tokens=5))
    ev = sse_json(raw_chat(srv, stream_body(
        stream_options={"include_usage": True}))[2])
    with_stats = [e for e in ev if isinstance(e, dict) and "stats" in e]
    assert len(with_stats) == 1 and with_stats[0]["stats"] == st
    assert with_stats[0]["choices"][0]["finish_reason"] == "stop"
    usage = [e["usage"] for e in ev if isinstance(e, dict) and "usage" in e]
    assert usage[0]["completion_tokens_details"] == {"reasoning_tokens": 2}
    ev = sse_json(raw_chat(srv, stream_body())[2])
    (fin,) = [e for e in ev if isinstance(e, dict) and "stats" in e]
    assert fin["stats"]["stop_reason"] == "eosFound"
    doc = json.loads(chat(srv)[2])
    assert doc["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 5}
    assert doc["stats"]["stop_reason"] == "eosFound"
    # Without the option, no chunk carries stats (as before).
    srv.enqueue(Reply("x"))
    ev = sse_json(raw_chat(srv, stream_body())[2])
    assert not [e for e in ev if isinstance(e, dict) and "stats" in e]

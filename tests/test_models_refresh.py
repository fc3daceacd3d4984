"""The model list is refreshed in the background (issue 12, item 1): with a
server whose model listings hang, prompts, health and models/ answer at
once from what is cached; once the server is back, retry and new prompts
work at once."""

import threading
import time

import pytest

from conftest import listdir, read_json, run, wait_for
from conv_helpers import (FAST_FAIL, LLAMA, cdir, history_text, mkconv,
                          opts, prompt, reply, sh, status)
from fake_lms import FakeLMS, Hang, free_port

LISTINGS = ("/api/v1/models", "/api/v0/models", "/v1/models")
# The issue asks for 50 ms; a loaded 2-core machine gets a margin (each
# timing includes starting bash or cat). A read that waited on the hanging
# listing would take connect_timeout (3 s).
FAST = 0.6


def hang_listings(fake, seconds=60):
    for p in LISTINGS:
        fake.routes[("GET", p)] = Hang(seconds)


def timed(fn):
    t0 = time.monotonic()
    v = fn()
    return time.monotonic() - t0, v


def hmount(mount, **kw):
    cfg = dict(FAST_FAIL, connect_timeout="3s", models_ttl=0)
    cfg.update(kw)
    return mount(args=opts(**cfg))


@pytest.mark.xdist_group("timing")
def test_hanging_listing_blocks_nothing(fake, mount):
    m = hmount(mount)
    mkconv(m, "named")
    sh(m, "echo %s > named/model" % LLAMA)
    mkconv(m, "sub")
    sh(m, "echo llama > sub/model")
    assert LLAMA in listdir(m.path / "models")  # the list is cached
    hang_listings(fake)
    # An exact model, and a substring resolved from the cached list.
    for name in ("named", "sub"):
        took, r = timed(lambda: prompt(m, name, "hi " + name, check=False))
        assert r.returncode == 0, r.stderr
        assert took < FAST, "echo > %s/prompt took %.2f s" % (name, took)
    took, r = timed(lambda: run(["cat", str(m.path / "health")], timeout=20))
    assert r.returncode == 0 and took < FAST, took
    took, names = timed(lambda: listdir(m.path / "models"))
    assert took < FAST, "ls models took %.2f s" % took
    # Four readers at once: none queues behind another's listing.
    times = []

    def cat_health():
        times.append(timed(lambda: run(["cat", str(m.path / "health")],
                                       timeout=20))[0])
    ts = [threading.Thread(target=cat_health) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(times) == 4 and max(times) < FAST, times
    # The answers themselves are not held up by the listing.
    assert "hi named" in reply(m, "named")
    assert "hi sub" in reply(m, "sub")


@pytest.mark.xdist_group("timing")
def test_hanging_listing_unnamed_refused_at_once(fake, mount):
    """Nothing cached and nothing named: refused at once, with the reason
    known (no listing yet), not after the listing's timeout."""
    hang_listings(fake)
    m = hmount(mount)
    # The first listing after mount may be waited for briefly (500 ms);
    # once it is overdue, nothing waits for it.
    assert listdir(m.path / "models") == []
    mkconv(m, "c")
    took, r = timed(lambda: prompt(m, "c", "hi", check=False))
    assert took < FAST, took
    assert r.returncode != 0
    assert "rejected_write" in status(m, "c")
    took, names = timed(lambda: listdir(m.path / "models"))
    assert took < FAST and names == []
    # A named model is not held back by the unknown list.
    sh(m, "echo %s > c/model" % LLAMA)
    took, r = timed(lambda: prompt(m, "c", "named", check=False))
    assert r.returncode == 0 and took < FAST, (took, r.stderr)
    assert "named" in reply(m, "c")


def test_retry_and_prompts_work_as_soon_as_server_is_back(mount):
    srv = FakeLMS(port=free_port()).start()
    try:
        m = mount(base_url=srv.url, args=opts(**FAST_FAIL))
        mkconv(m, "c")
        sh(m, "echo %s > c/model" % LLAMA)
        srv.stop()
        wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
                 timeout=10, message="health sees the server gone")
        # The prompt names its model: accepted; the request fails.
        prompt(m, "c", "first")
        wait_for(lambda: status(m, "c")["state"] == "failed", timeout=10)
        assert status(m, "c")["error"]["class"] == "unreachable"
        srv.start()
        r = sh(m, "echo retry > c/.ctl")
        assert r.returncode == 0, r.stderr
        assert "first" in reply(m, "c")
        assert status(m, "c")["error"] is None
        # And a new prompt, at once too.
        prompt(m, "c", "second")
        assert "second" in reply(m, "c")
    finally:
        srv.stop()


def test_new_prompt_right_after_server_is_back(mount):
    srv = FakeLMS(port=free_port()).start()
    try:
        m = mount(base_url=srv.url, args=opts(**FAST_FAIL))
        mkconv(m, "c")
        sh(m, "echo %s > c/model" % LLAMA)
        srv.stop()
        wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
                 timeout=10, message="health sees the server gone")
        srv.start()
        # The cached list still says "unreachable"; the prompt names its
        # model, so it is not refused from that stale failure.
        r = prompt(m, "c", "back", check=False)
        assert r.returncode == 0, r.stderr
        assert "back" in reply(m, "c")
    finally:
        srv.stop()


def test_listing_failure_reason_cached_for_unnamed(mount):
    """A down server and no model named: refused at once with the reason
    of the last listing (EHOSTDOWN), as before."""
    m = mount(base_url="http://127.0.0.1:9", args=opts(**FAST_FAIL))
    wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
             timeout=10)
    mkconv(m, "c")
    r = prompt(m, "c", "x", check=False)
    assert r.returncode != 0
    assert "unreachable" in status(m, "c")["rejected_write"]


def one_loaded(srv):
    """Only LLAMA loaded: a conversation without a model file uses it."""
    for mdl in srv.models:
        if mdl["id"] != LLAMA and mdl.get("state") == "loaded":
            mdl["state"] = "not-loaded"


def test_unnamed_model_prompt_and_retry_right_after_server_is_back(mount):
    """No model named (the single loaded one is used): a listing that
    failed is not kept for models_ttl; once the server is back, a new
    prompt and a retry work at once."""
    srv = FakeLMS(port=free_port()).start()
    one_loaded(srv)
    try:
        m = mount(base_url=srv.url, args=opts(models_ttl="60s", **FAST_FAIL))
        mkconv(m, "c")
        prompt(m, "c", "before")
        assert "before" in reply(m, "c")
        mkconv(m, "d")
        srv.stop()
        wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
                 timeout=10, message="health sees the server gone")
        # Refused from the cached failure, at once.
        r = prompt(m, "d", "refused", check=False)
        assert r.returncode != 0
        srv.start()
        one_loaded(srv)
        r = prompt(m, "c", "back", check=False)
        assert r.returncode == 0, (r.stderr, status(m, "c"))
        assert "back" in reply(m, "c")
    finally:
        srv.stop()


def test_unnamed_model_retry_right_after_server_is_back(mount):
    srv = FakeLMS(port=free_port()).start()
    one_loaded(srv)
    try:
        m = mount(base_url=srv.url, args=opts(models_ttl="60s", **FAST_FAIL))
        mkconv(m, "c")
        prompt(m, "c", "before")
        assert "before" in reply(m, "c")
        srv.stop()
        prompt(m, "c", "lost")
        wait_for(lambda: status(m, "c")["state"] == "failed", timeout=10)
        wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
                 timeout=10, message="health sees the server gone")
        srv.start()
        one_loaded(srv)
        r = sh(m, "echo retry > c/.ctl")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: status(m, "c")["state"] in ("idle", "failed"),
                 timeout=10)
        assert status(m, "c")["error"] is None, status(m, "c")
        assert "lost" in reply(m, "c")
    finally:
        srv.stop()


@pytest.mark.xdist_group("timing")
def test_unmount_while_listing_hangs(fake, mount):
    """The refresher is stuck in a listing that hangs: unmount does not
    wait for it (connect_timeout is 30 s here)."""
    m = hmount(mount, connect_timeout="30s")
    assert LLAMA in listdir(m.path / "models")
    def listings():
        return sum(len(fake.requests_to(p, "GET")) for p in LISTINGS)
    n = listings()
    hang_listings(fake, seconds=120)
    # A reader asks for a refresh, which hangs.
    listdir(m.path / "models")
    wait_for(lambda: listings() > n, timeout=10,
             message="a listing under way")
    t0 = time.monotonic()
    rc = m.umount()
    took = time.monotonic() - t0
    assert took < 5.0, "unmount took %.1f s" % took
    assert rc == 0, m.log()


def test_retry_waiting_for_a_listing_is_cancelled(mount):
    """A retry without a model named waits for a new listing (the last
    one failed); cancel ends that wait at once, as a cancel."""
    srv = FakeLMS(port=free_port()).start()
    one_loaded(srv)
    try:
        m = mount(base_url=srv.url, args=opts(
            models_ttl="60s", connect_timeout="30s", **FAST_FAIL))
        mkconv(m, "c")
        prompt(m, "c", "before")
        assert "before" in reply(m, "c")
        srv.stop()
        prompt(m, "c", "lost")
        wait_for(lambda: status(m, "c")["state"] == "failed", timeout=10)
        wait_for(lambda: read_json(m.path / "health")["reachable"] is False,
                 timeout=10, message="health sees the server gone")
        srv.start()
        hang_listings(srv, seconds=120)
        r = sh(m, "echo retry > c/.ctl")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: status(m, "c")["state"] == "generating", timeout=10)
        t0 = time.monotonic()
        r = sh(m, "echo cancel > c/.ctl")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: status(m, "c")["state"] != "generating", timeout=5)
        assert time.monotonic() - t0 < 3.0
        st = status(m, "c")
        assert st["error"] is None or st["error"]["class"] == "cancelled", st
        assert "cancelled" in history_text(m, "c").splitlines()[-1]
    finally:
        srv.stop()



@pytest.mark.xdist_group("timing")
def test_health_shows_a_listing_that_hangs(fake, mount):
    """health does not wait on a hanging model listing, and says that one
    is under way, since when, and when it is given up."""
    hang_listings(fake)
    m = hmount(mount, connect_timeout="3s", models_ttl="60s")
    h = {}

    def listing_for(ms):
        h.clear()
        h.update(read_json(m.path / "health"))
        return h.get("listing") and h["listing"]["since_ms"] >= ms
    # Freshly mounted against a server that does not answer.
    wait_for(lambda: listing_for(300), timeout=2.5,
             message="health shows the first listing under way")
    assert h["reachable"] is False and h["error"] is None, h
    assert h["listing"]["timeout_ms"] == 3000, h
    # Given up after connect_timeout: an error, no listing under way.
    wait_for(lambda: read_json(m.path / "health")["error"] is not None,
             timeout=10, message="the listing given up")
    assert read_json(m.path / "health")["error"]["class"] == "timeout"
    # A server that answered and then hangs: the old list is kept, and
    # health (which asks for a new listing) says that one waits.
    fake.routes.clear()
    wait_for(lambda: read_json(m.path / "health")["reachable"] is True,
             timeout=10, message="the server answers again")
    hang_listings(fake)
    wait_for(lambda: listing_for(200), timeout=2.5,
             message="health shows the hanging listing")
    assert h["reachable"] is True and LLAMA in h["models"], h

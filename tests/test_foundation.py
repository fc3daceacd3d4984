"""Foundation: command line, configuration, the root of the tree, models/,
health, startup errors, daemon life cycle. Every filesystem access goes
through a helper with a timeout, so a broken daemon fails tests instead of
hanging them."""

import errno
import itertools
import json
import os
import signal
import stat as statmod
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (DEAD_URL, call_with_timeout, clean_env, fusermount,
                      is_mounted, listdir, mount_count, mount_entries,
                      pids_with_arg, read_json, read_text, run, stat,
                      wait_for)
from fake_lms import FakeLMS, Garbage, Hang, HttpError, free_port, \
    rate_limited

VERSION = "0.1.0"
QWEN = "lmstudio-community/qwen2.5-7b-instruct"
LLAMA = "meta-llama-3.1-8b-instruct"
EMBED = "text-embedding-nomic-embed-text-v1.5"

# Model listing failures must not be retried with back-off or trip the
# breaker in the tests that provoke them: keep those tests fast and focused.
NO_RETRY = {"max_retries": 0, "breaker_threshold": 1000}


def encode_id(mid):
    s = mid.replace("%", "%25").replace("/", "%2F")
    if s.startswith("."):
        s = "%2E" + s[1:]
    return s


def models_dir(m):
    return m.path / "models"


def health(m):
    return read_json(m.path / "health")


# ------------------------------------------------------- launching by hand

_launch_seq = itertools.count(1)


class Launched:
    def __init__(self, rc, out, err, elapsed, cmd):
        self.returncode = rc
        self.stdout = out
        self.stderr = err
        self.elapsed = elapsed
        self.cmd = cmd

    def __repr__(self):
        return ("<rc=%s after %.2f s: %s\nstdout: %s\nstderr: %s>"
                % (self.returncode, self.elapsed, " ".join(self.cmd),
                   self.stdout, self.stderr))


def launch(cmd, tmp_path, env=None, timeout=10, cwd=None):
    """Runs cmd with stdout/stderr in files (so a daemon that keeps them open
    cannot block us) and waits at most `timeout` s for it to exit;
    returncode None if it had to be killed."""
    n = next(_launch_seq)
    out = Path(tmp_path) / ("launch-%d.out" % n)
    err = Path(tmp_path) / ("launch-%d.err" % n)
    cmd = [str(c) for c in cmd]
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o,
                             stderr=e,
                             env=env if env is not None else clean_env(
                                 tmp_path),
                             cwd=str(cwd or tmp_path),
                             start_new_session=True)
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        rc = None
    elapsed = time.monotonic() - t0
    return Launched(rc, out.read_text(errors="replace"),
                    err.read_text(errors="replace"), elapsed, cmd)


def force_cleanup(path):
    """Kills any daemon serving `path` and removes every mount there."""
    for pid in pids_with_arg(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(5):
        if not is_mounted(path):
            break
        fusermount(path, lazy=True)
        time.sleep(0.05)


def lmsfs_lines(text):
    return [ln for ln in text.splitlines() if ln.startswith("lmsfs:")]


# ----------------------------------------------------------- command line

def test_help(lmsfs_bin, tmp_path):
    r = run([str(lmsfs_bin), "--help"], timeout=10,
            env=clean_env(tmp_path))
    assert r.returncode == 0, r
    assert "usage" in r.stdout.lower()
    assert "MOUNTPOINT" in r.stdout
    assert "-o" in r.stdout


def test_version(lmsfs_bin, tmp_path):
    r = run([str(lmsfs_bin), "--version"], timeout=10,
            env=clean_env(tmp_path))
    assert r.returncode == 0, r
    assert "lmsfs " + VERSION in r.stdout


# ------------------------------------------------------------------- root

def test_root_entries(fake, mount):
    m = mount()
    names = listdir(m.path)
    assert {"models", "conversations", "tools", "health",
            "metrics"} <= set(names), names
    for d in ("models", "conversations", "tools"):
        assert statmod.S_ISDIR(stat(m.path / d).st_mode), d
    for f in ("health", "metrics"):
        assert statmod.S_ISREG(stat(m.path / f).st_mode), f
    # Ordinary tools read them (cat relies on st_size or direct I/O).
    r = run(["cat", str(m.path / "health")], timeout=10)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    r = run(["cat", str(m.path / "metrics")], timeout=10)
    assert r.returncode == 0, r.stderr
    r = run(["ls", "-la", str(m.path), str(m.path / "models")], timeout=10)
    assert r.returncode == 0, r.stderr


def test_mount_type_and_options(fake, mount):
    m = mount(args=("-o", "rw,timeout=4"))
    [e] = mount_entries(m.path)
    assert e["fstype"] == "fuse.lmsfs"
    assert e["options"].split(",")[0] == "rw"
    assert health(m)["http"]["timeout_ms"] == 4000


def test_debug_flag(fake, mount):
    m = mount(args=("-d",))
    assert "models" in listdir(m.path)
    assert m.log().strip() != ""


# ----------------------------------------------------------------- models/

def test_models_lists_loaded_only(fake, mount):
    m = mount()
    names = listdir(models_dir(m))
    assert names == sorted([encode_id(QWEN), LLAMA])
    for mid in (QWEN, LLAMA):
        text = read_text(models_dir(m) / encode_id(mid))
        doc = json.loads(text)
        assert doc["id"] == mid
        want = [x for x in fake.models if x["id"] == mid][0]
        assert doc == want  # the model object as the server gave it


def test_model_file_size_matches_content(fake, mount):
    m = mount()
    p = models_dir(m) / LLAMA
    data = read_text(p).encode()
    assert stat(p).st_size == len(data)
    r = run(["wc", "-c", str(p)], timeout=10)
    assert int(r.stdout.split()[0]) == len(data)


def test_model_files_without_api_v1(fake, mount):
    """Model files take load settings and rm unloads (test_models_load.py);
    a server without /api/v1 (this fake's default mode) cannot do either:
    what is written is checked, and nothing changes."""
    m = mount()
    p = models_dir(m) / LLAMA
    st = stat(p)
    assert st.st_mode & 0o777 == 0o644
    def write_x():
        with open(p, "w") as f:
            f.write("x")
    with pytest.raises(OSError) as ei:
        call_with_timeout(write_x)
    assert ei.value.errno == errno.EINVAL  # not load settings
    with pytest.raises(OSError) as ei:
        call_with_timeout(os.unlink, str(p))
    assert ei.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as ei:
        call_with_timeout(lambda: open(models_dir(m) / "new", "w").close())
    assert ei.value.errno == errno.ENOTSUP
    assert stat(models_dir(m) / ".available").st_mode & 0o777 == 0o444
    assert read_json(p)["id"] == LLAMA
    with pytest.raises(FileNotFoundError):
        stat(models_dir(m) / "no-such-model")


def test_model_name_encoding(fake, mount):
    base = fake.models[1]
    ids = ["a%b", "x/y/z", ".hidden", "..", ".", "lit%2Fslash", "plain",
           "nomic@q4_k_m"]
    fake.models = [dict(base, id=i) for i in ids]
    m = mount()
    names = listdir(models_dir(m))
    assert names == sorted(encode_id(i) for i in ids)
    assert encode_id("..") == "%2E." and encode_id(".") == "%2E"
    for i in ids:
        assert read_json(models_dir(m) / encode_id(i))["id"] == i
    # The raw id is not a name (x/y/z would be a path).
    with pytest.raises(OSError):
        stat(models_dir(m) / "x")
    with pytest.raises(OSError):
        stat(models_dir(m) / ".hidden")


def test_models_fallback_to_v1(fake, mount):
    fake.no_api_v0 = True
    m = mount()
    names = listdir(models_dir(m))
    # /v1/models has no state: everything it lists is shown.
    assert names == sorted(encode_id(i) for i in (QWEN, LLAMA, EMBED))
    doc = read_json(models_dir(m) / LLAMA)
    assert doc == {"id": LLAMA, "object": "model",
                   "owned_by": "lmstudio-community"}
    assert fake.requests_to("/v1/models")
    assert health(m)["models_loaded"] == 3


def test_models_follow_server_changes(fake, mount):
    m = mount()
    assert LLAMA in listdir(models_dir(m))
    fake.models = [x for x in fake.models if x["id"] != LLAMA]
    wait_for(lambda: LLAMA not in listdir(models_dir(m)), timeout=5,
             message="an unloaded model disappears from models/")
    new = dict(fake.models[0], id="new-model")
    fake.models.append(new)
    wait_for(lambda: "new-model" in listdir(models_dir(m)), timeout=5,
             message="a loaded model appears in models/")
    wait_for(lambda: health(m)["models_loaded"] == 2, timeout=5)


@pytest.mark.xdist_group("timing")
def test_models_empty_fast_when_server_down(mount):
    m = mount(config={"connect_timeout": 5}, base_url=DEAD_URL)
    t0 = time.monotonic()
    assert listdir(models_dir(m)) == []
    for _ in range(5):
        assert listdir(models_dir(m)) == []
    assert time.monotonic() - t0 < 2.0
    h = health(m)
    assert h["reachable"] is False
    assert h["error"]["class"] == "unreachable"
    assert isinstance(h["error"]["message"], str) and h["error"]["message"]
    assert h["models_loaded"] == 0
    assert time.monotonic() - t0 < 4.0


def test_models_listing_is_cached_not_a_storm(fake, mount):
    fake.routes[("GET", "/api/v0/models")] = HttpError(500, "boom")
    fake.routes[("GET", "/v1/models")] = HttpError(500, "boom")
    m = mount(config=NO_RETRY)
    t0 = time.monotonic()
    for _ in range(20):
        assert listdir(models_dir(m)) == []
    took = time.monotonic() - t0
    n = (len(fake.requests_to("/api/v0/models")) +
         len(fake.requests_to("/v1/models")))
    # At most a refresh every ~2 s (plus a fallback attempt each time, and
    # a probe at startup), not one per readdir.
    assert n <= 2 * (int(took / 2) + 3), (n, took)


@pytest.mark.xdist_group("timing")
def test_models_appear_after_server_starts(mount):
    port = free_port()
    srv = FakeLMS(port=port)
    try:
        m = mount(base_url=srv.url)
        assert listdir(models_dir(m)) == []
        assert health(m)["reachable"] is False
        srv.start()
        t0 = time.monotonic()
        wait_for(lambda: listdir(models_dir(m)), timeout=8,
                 message="models after the server came up")
        assert time.monotonic() - t0 < 3.5
        assert set(listdir(models_dir(m))) == {encode_id(QWEN), LLAMA}
        wait_for(lambda: health(m)["reachable"] is True, timeout=5)
    finally:
        srv.stop()


def test_models_vanish_when_server_stops_and_come_back(mount):
    srv = FakeLMS().start()
    try:
        m = mount(base_url=srv.url, config=NO_RETRY)
        assert listdir(models_dir(m))
        srv.stop()
        wait_for(lambda: listdir(models_dir(m)) == [], timeout=6,
                 message="models/ empty once the server is gone")
        h = health(m)
        assert h["reachable"] is False
        assert h["error"]["class"] == "unreachable"
        srv.start()
        wait_for(lambda: listdir(models_dir(m)), timeout=6,
                 message="models/ back with the server")
    finally:
        srv.stop()


# ------------------------------------------------------------------ health

def test_health_ok(fake, mount):
    m = mount()
    h = health(m)
    assert h["provider"] == "lmstudio"
    assert h["base_url"] == fake.url
    assert h["reachable"] is True
    assert h["error"] is None
    assert h["models_loaded"] == 2
    assert h["http"]["timeout_ms"] == 60000
    assert h["http"]["connect_timeout_ms"] == 10000
    assert h["http"]["keep_alive_ms"] == 30000
    assert h["http"]["max_idle_connections"] == 10
    assert h["breaker"]["state"] == "closed"
    assert h["version"] == VERSION


def test_health_refreshes_on_read(mount):
    port = free_port()
    srv = FakeLMS(port=port)
    try:
        m = mount(base_url=srv.url)
        h = health(m)
        assert h["reachable"] is False
        assert h["error"]["class"] == "unreachable"
        srv.start()
        h = wait_for(lambda: (lambda x: x if x["reachable"] else None)(
            health(m)), timeout=5, message="health reachable")
        assert h["error"] is None and h["models_loaded"] == 2
        srv.stop()
        wait_for(lambda: health(m)["reachable"] is False, timeout=5,
                 message="health unreachable again")
    finally:
        srv.stop()


def test_health_auth_error(fake, mount):
    fake.require_token = "s3cret"
    m = mount(config=NO_RETRY)
    assert listdir(models_dir(m)) == []
    h = health(m)
    assert h["error"]["class"] == "auth"
    assert h["error"]["message"]


@pytest.mark.parametrize("resp,cls", [
    (HttpError(500, {"error": {"message": "boom", "type": "server_error"}}),
     "server_error"),
    (HttpError(503, "busy"), "server_error"),
    (rate_limited(), "rate_limited"),
    (Garbage(b"this is not json", content_type="application/json"),
     "protocol"),
    (HttpError(403, {"error": {"message": "forbidden"}}), "auth"),
], ids=["500", "503", "429", "garbage", "403"])
def test_health_error_classes(fake, mount, resp, cls):
    for path in ("/api/v0/models", "/v1/models"):
        fake.routes[("GET", path)] = resp
    m = mount(config=NO_RETRY)
    assert listdir(models_dir(m)) == []
    h = health(m)
    assert h["error"]["class"] == cls, h
    assert h["error"]["message"]
    assert h["models_loaded"] == 0
    # Once the server recovers, so does health.
    fake.routes.clear()
    wait_for(lambda: health(m)["error"] is None, timeout=6,
             message="health error cleared")


@pytest.mark.xdist_group("timing")
def test_health_timeout_class(fake, mount):
    for path in ("/api/v0/models", "/v1/models"):
        fake.routes[("GET", path)] = Hang(30)
    m = mount(config=dict(NO_RETRY, timeout=1, connect_timeout=1))
    t0 = time.monotonic()
    assert listdir(models_dir(m), timeout=15) == []
    assert time.monotonic() - t0 < 1 + 2.5
    # health answers at once; the listing's timeout shows once it is over.
    h = wait_for(lambda: (lambda h: h if h["error"] else None)(
        read_json(m.path / "health", timeout=15)), timeout=6)
    assert h["error"]["class"] == "timeout", h
    assert h["http"]["timeout_ms"] == 1000


# ----------------------------------------------------------------- api_key

@pytest.mark.parametrize("how", ["config", "env", "opt"])
def test_api_key_sent_as_bearer(fake, mount, how):
    fake.require_token = "s3cret"
    if how == "config":
        m = mount(config={"api_key": "s3cret"})
    elif how == "env":
        m = mount(env={"LMSFS_API_KEY": "s3cret"})
    else:
        m = mount(args=("-o", "api_key=s3cret"))
    assert listdir(models_dir(m)) == sorted([encode_id(QWEN), LLAMA])
    reqs = [r for r in fake.requests
            if r["path"].split("?")[0] in ("/api/v0/models", "/v1/models")]
    assert reqs
    for r in reqs:
        assert r["headers"].get("authorization") == "Bearer s3cret"
    h = read_text(m.path / "health")
    assert json.loads(h)["error"] is None
    assert "s3cret" not in h  # the key is not shown


def test_no_authorization_header_without_key(fake, mount):
    m = mount()
    assert listdir(models_dir(m))
    for r in fake.requests:
        assert "authorization" not in r["headers"]


def test_base_url_trailing_slash(fake, mount):
    m = mount(base_url=fake.url + "/")
    assert listdir(models_dir(m))
    assert all(not r["path"].startswith("//") for r in fake.requests)
    assert health(m)["base_url"] == fake.url


# ----------------------------------------------------- config precedence

@pytest.mark.parametrize("config,env,opt,want", [
    (None, None, None, 60000),
    ({"timeout": 5}, None, None, 5000),
    ({"timeout": 5}, {"LMSFS_TIMEOUT": "7"}, None, 7000),
    ({"timeout": 5}, {"LMSFS_TIMEOUT": "7"}, "timeout=9", 9000),
    (None, {"LMSTUDIO_TIMEOUT": "2500"}, None, 2500),
    ({"timeout": 5}, {"LMSTUDIO_TIMEOUT": "2500"}, None, 2500),
    (None, {"LMSTUDIO_TIMEOUT": "2500", "LMSFS_TIMEOUT": "3"}, None, 3000),
    (None, {"LMSTUDIO_TIMEOUT": "2500"}, "timeout=8", 8000),
    (None, None, "timeout=1.5", 1500),
    (None, None, "timeout=250ms", 250),
    (None, None, "timeout=2m", 120000),
    (None, None, "timeout=3s", 3000),
    ({"timeout": "0.5"}, None, None, 500),
    ({"timeout": "45s"}, None, None, 45000),
], ids=["default", "file", "env>file", "opt>env", "alias-ms",
        "alias>file", "env>alias", "opt>alias", "1.5", "250ms", "2m", "3s",
        "file-0.5", "file-45s"])
def test_timeout_precedence(fake, mount, config, env, opt, want):
    args = ("-o", opt) if opt else ()
    m = mount(config=config, env=env, args=args)
    assert health(m)["http"]["timeout_ms"] == want


def test_base_url_precedence(fake, mount):
    dead = DEAD_URL
    cases = [
        (dict(config={"base_url": fake.url}), fake.url),
        (dict(config={"base_url": dead},
              env={"LMSFS_BASE_URL": fake.url}), fake.url),
        (dict(env={"LMSTUDIO_URL": fake.url}), fake.url),
        (dict(config={"base_url": dead},
              env={"LMSTUDIO_URL": fake.url}), fake.url),
        (dict(env={"LMSTUDIO_URL": dead,
                   "LMSFS_BASE_URL": fake.url}), fake.url),
        (dict(env={"LMSFS_BASE_URL": dead},
              args=("-o", "base_url=" + fake.url)), fake.url),
    ]
    for kw, want in cases:
        m = mount(base_url=False, **kw)
        h = health(m)
        assert h["base_url"] == want, kw
        assert h["reachable"] is True, kw
        m.umount()


def test_other_keys_via_o(fake, mount):
    m = mount(args=("-o", "provider=lmstudio,default_model=" + LLAMA +
                    ",stream=false,connect_timeout=2,keep_alive=5s,"
                    "max_idle_connections=3,temperature=0.2,max_tokens=-1,"
                    "max_retries=1,tool_api=functions"))
    h = health(m)["http"]
    assert h["connect_timeout_ms"] == 2000
    assert h["keep_alive_ms"] == 5000
    assert h["max_idle_connections"] == 3


def test_config_file_sections_and_comments(fake, mount):
    text = ("# lmsfs test config\n"
            "; another comment\n"
            "\n"
            "[server]\n"
            "base_url = %s\n"
            "\n"
            "[http]\n"
            "timeout = 12   \n"
            "connect_timeout=3\n" % fake.url)
    m = mount(config=text, base_url=False)
    h = health(m)
    assert h["base_url"] == fake.url
    assert h["http"]["timeout_ms"] == 12000
    assert h["http"]["connect_timeout_ms"] == 3000


def test_xdg_default_config_file(fake, mount, tmp_path):
    xdg = tmp_path / "my-xdg"
    (xdg / "lmsfs").mkdir(parents=True)
    (xdg / "lmsfs" / "lmsfs.conf").write_text("timeout = 11\n")
    m = mount(env={"XDG_CONFIG_HOME": str(xdg)})
    assert health(m)["http"]["timeout_ms"] == 11000


def test_explicit_config_replaces_default_file(fake, mount, tmp_path):
    xdg = tmp_path / "my-xdg"
    (xdg / "lmsfs").mkdir(parents=True)
    (xdg / "lmsfs" / "lmsfs.conf").write_text("this line is broken\n")
    m = mount(config={"timeout": 13}, env={"XDG_CONFIG_HOME": str(xdg)})
    assert health(m)["http"]["timeout_ms"] == 13000


# ----------------------------------------------------- bad startup input

def _bad_cases(tmp_path):
    """name -> (argv after the binary, env overrides, needles, mountpoint)"""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    st = tmp_path / "state"
    st.mkdir(exist_ok=True)
    base = ["-o", "state_dir=%s,base_url=%s" % (st, DEAD_URL)]

    def cfg(name, text):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    c_malformed = cfg("malformed.conf",
                      "timeout = 5\nthis line is malformed\n")
    c_unknown = cfg("unknown.conf", "# ok\ntimeout = 5\nno_such_key = 1\n")
    c_badval = cfg("badval.conf", "timeout = abc\n")
    c_dir = tmp_path / "conf-is-a-dir"
    c_dir.mkdir(exist_ok=True)
    c_missing = str(tmp_path / "no-such.conf")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    nodir = tmp_path / "no-such-dir"
    return {
        "malformed-line": ([mnt] + base + ["-c", c_malformed], None,
                           [c_malformed + ":2"], mnt),
        "unknown-key": ([mnt] + base + ["-c", c_unknown], None,
                        [c_unknown + ":3", "no_such_key"], mnt),
        "bad-value-in-file": ([mnt] + base + ["-c", c_badval], None,
                              [c_badval + ":1", "timeout"], mnt),
        "bad-timeout-opt": ([mnt] + base + ["-o", "timeout=abc"], None,
                            ["timeout"], mnt),
        "bad-timeout-env": ([mnt] + base, {"LMSFS_TIMEOUT": "abc"},
                            ["timeout"], mnt),
        "bad-alias-env": ([mnt] + base, {"LMSTUDIO_TIMEOUT": "soon"},
                          ["LMSTUDIO_TIMEOUT"], mnt),
        "negative-connect-timeout": ([mnt] + base +
                                     ["-o", "connect_timeout=-1"], None,
                                     ["connect_timeout"], mnt),
        "bad-provider": ([mnt] + base + ["-o", "provider=nope"], None,
                         ["provider"], mnt),
        "bad-bool": ([mnt] + base + ["-o", "stream=maybe"], None,
                     ["stream"], mnt),
        "config-is-dir": ([mnt] + base + ["-c", c_dir], None,
                          [str(c_dir)], mnt),
        "config-missing": ([mnt] + base + ["-c", c_missing], None,
                           [c_missing], mnt),
        "no-mountpoint": (base, None, ["mountpoint"], None),
        "mountpoint-missing": ([nodir] + base, None, [str(nodir)], nodir),
        "mountpoint-is-file": ([afile] + base, None, [str(afile)], afile),
        "base-url-not-url": ([mnt, "-o", "state_dir=%s,base_url=notaurl"
                              % st], None, ["base_url"], mnt),
        "base-url-ftp": ([mnt, "-o", "state_dir=%s,base_url=ftp://h:1"
                          % st], None, ["base_url"], mnt),
        "base-url-no-host": ([mnt, "-o", "state_dir=%s,base_url=http://"
                              % st], None, ["base_url"], mnt),
    }


BAD_CASES = ["malformed-line", "unknown-key", "bad-value-in-file",
             "bad-timeout-opt", "bad-timeout-env", "bad-alias-env",
             "negative-connect-timeout", "bad-provider", "bad-bool",
             "config-is-dir", "config-missing", "no-mountpoint",
             "mountpoint-missing", "mountpoint-is-file", "base-url-not-url",
             "base-url-ftp", "base-url-no-host"]


def _mounts_under(path):
    p = os.path.realpath(str(path)) + "/"
    return [e for e in mount_entries() if (e["mountpoint"] + "/")
            .startswith(p)]


@pytest.mark.parametrize("foreground", [True, False], ids=["fg", "daemon"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_startup_input(lmsfs_bin, tmp_path, case, foreground):
    args, env, needles, mnt = _bad_cases(tmp_path)[case]
    cmd = [lmsfs_bin] + args + (["-f"] if foreground else [])
    try:
        r = launch(cmd, tmp_path, env=clean_env(tmp_path, env), timeout=8)
        mounted = _mounts_under(tmp_path)
    finally:
        for p in {str(e["mountpoint"]) for e in _mounts_under(tmp_path)}:
            force_cleanup(p)
        if mnt is not None:
            force_cleanup(mnt)
    assert r.returncode is not None, "still running after 8 s: %r" % r
    assert r.returncode != 0, r
    assert r.elapsed < 5, r
    lines = lmsfs_lines(r.stderr)
    assert lines, "no 'lmsfs:' line on stderr: %r" % r
    assert any(all(n.lower() in ln.lower() for n in needles)
               for ln in lines), (needles, r)
    assert mounted == [], (mounted, r)


def test_refuses_to_mount_on_live_mount(fake, mount, lmsfs_bin, tmp_path):
    m = mount()
    st2 = tmp_path / "state-other"
    st2.mkdir()
    cmd = [lmsfs_bin, m.path, "-f", "-o",
           "state_dir=%s,base_url=%s" % (st2, fake.url)]
    try:
        r = launch(cmd, tmp_path, timeout=8)
        count = mount_count(m.path)
    finally:
        # Only a stacked second daemon would have st2 in its argv.
        for e in mount_entries(m.path)[1:]:
            fusermount(m.path, lazy=True)
        for pid in pids_with_arg("state_dir=%s,base_url=%s"
                                 % (st2, fake.url)):
            os.kill(pid, signal.SIGKILL)
    assert r.returncode not in (0, None), r
    assert r.elapsed < 5, r
    lines = lmsfs_lines(r.stderr)
    assert any(str(m.path) in ln for ln in lines), r
    assert count == 1
    # The first mount is unharmed.
    assert listdir(models_dir(m))
    assert m.proc.poll() is None


# ------------------------------------------------------------- life cycle

def test_fusermount_u_ends_foreground_daemon_with_0(fake, mount):
    m = mount()
    assert listdir(models_dir(m))
    r = fusermount(m.path)
    assert r.returncode == 0, r.stderr
    try:
        rc = m.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("daemon still running 10 s after fusermount3 -u\n" +
                    m.log())
    assert rc == 0, m.log()
    assert not is_mounted(m.path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["TERM", "INT"])
def test_signal_unmounts_and_exits(fake, mount, sig):
    m = mount()
    assert listdir(m.path)
    os.kill(m.proc.pid, sig)
    try:
        m.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("daemon ignored %s for 10 s\n%s" % (sig, m.log()))
    wait_for(lambda: not is_mounted(m.path), timeout=5,
             message="mount gone after %s" % sig)


def test_kill9_then_remount(fake, mount):
    m = mount()
    assert listdir(models_dir(m))
    m.kill9()
    assert not is_mounted(m.path)
    m.remount()
    assert set(listdir(models_dir(m))) == {encode_id(QWEN), LLAMA}
    assert health(m)["reachable"] is True


def test_fstab_form_daemonizes(fake, lmsfs_bin, tmp_path):
    state = tmp_path / "state"
    mnt = tmp_path / "mnt"
    state.mkdir()
    mnt.mkdir()
    env = clean_env(tmp_path, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    cmd = [lmsfs_bin, state, mnt, "-o", "rw,base_url=" + fake.url]
    try:
        r = launch(cmd, tmp_path, env=env, cwd="/", timeout=10)
        assert r.returncode == 0, r
        # Up by the time the command returns.
        assert is_mounted(mnt), r
        assert r.elapsed < 10
        pids = pids_with_arg(mnt)
        assert len(pids) == 1, pids
        assert {"models", "conversations", "tools", "health",
                "metrics"} <= set(listdir(mnt))
        assert set(listdir(mnt / "models")) == {encode_id(QWEN), LLAMA}
        assert read_json(mnt / "health")["reachable"] is True
        r2 = fusermount(mnt)
        assert r2.returncode == 0, r2.stderr
        wait_for(lambda: not pids_with_arg(mnt), timeout=10,
                 message="the daemon exits after fusermount3 -u")
        assert not is_mounted(mnt)
    finally:
        force_cleanup(mnt)


def test_daemon_mode_relative_paths(fake, lmsfs_bin, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "rel.conf").write_text("timeout = 7\n")
    root_state_existed = os.path.exists("/state")
    cmd = [lmsfs_bin, "state", "mnt", "-o", "base_url=" + fake.url,
           "-c", "rel.conf"]
    mnt = tmp_path / "mnt"
    try:
        r = launch(cmd, tmp_path, cwd=tmp_path, timeout=10)
        assert r.returncode == 0, r
        assert is_mounted(mnt)
        h = read_json(mnt / "health")
        assert h["http"]["timeout_ms"] == 7000
        assert set(listdir(mnt / "models")) == {encode_id(QWEN), LLAMA}
        assert os.path.exists("/state") == root_state_existed
        assert fusermount(mnt).returncode == 0
        # "-o base_url=URL" names this test's daemon: other daemons (other
        # tests, other runs) may have "mnt" in their argv too.
        wait_for(lambda: not is_mounted(mnt) and not pids_with_arg(
            "base_url=" + fake.url), timeout=10, message="daemon gone")
    finally:
        for pid in pids_with_arg("base_url=" + fake.url):
            try:
                if os.readlink("/proc/%d/cwd" % pid) in ("/", str(tmp_path)):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        force_cleanup(mnt)


def test_mount_factory_daemon_mode(fake, mount):
    m = mount(foreground=False, source=True, args=("-o", "rw"))
    assert m.pid is not None and m.pid != m.proc.pid
    assert set(listdir(models_dir(m))) == {encode_id(QWEN), LLAMA}
    m.umount()
    assert not is_mounted(m.path)
    assert m.pid is None

"""Shared fixtures and helpers for the lmsfs test suite.

Fixtures
    fake        a started fake_lms.FakeLMS, stopped at teardown.
    lmsfs_bin   path of the daemon: $LMSFS_BIN, else <repo>/build/lmsfs;
                fails (does not skip) with a clear message when missing.
    mount       factory: m = mount(config=None, env=None, args=(),
                base_url=None, wait=True, mountpoint=None, state=None,
                foreground=True, source=False). See Mount below. Every mount
                it made is unmounted at teardown, even when the test failed;
                then the test fails if a daemon log holds a sanitizer report.

Helpers (import them: `from conftest import wait_for, run, ...`)
    wait_for(pred, timeout=10, interval=0.02, message=None)
    run(cmd, timeout=20, **kw)      subprocess.run with capture_output,
                                    text, a timeout, never hangs
    call_with_timeout(fn, *a, timeout=10, **kw)   runs fn in a thread; a
                                    filesystem call that hangs fails the test
                                    instead of hanging it
    listdir(p), read_text(p), read_bytes(p), read_json(p), stat(p),
    write_text(p, s), append_text(p, s)   the same, with timeout=10
    is_mounted(p), mount_count(p)   from /proc/self/mountinfo (no stat, so a
                                    hung daemon cannot hang the check)
    pids_with_arg(s)                pids whose argv has s as an element
    fusermount(p, lazy=False)
    SANITIZER_PATTERNS

Nothing here touches the filesystem under test from the main thread without
a timeout.

Parallel runs (`make test` runs pytest-xdist with --dist loadgroup)
    Every test has its own tmp_path, mounts, daemons and fake server on a
    port of its own, so tests run side by side. The exceptions are marked:
    @pytest.mark.xdist_group("timing")   a test that asserts on elapsed
        time with a tight margin, or that loads the machine (a bench-like
        figure, hundreds of processes): these run one after another on one
        worker, so that no two of them overlap.
    @pytest.mark.xdist_group("repo-build")   runs `make` in the repository
        or builds with its Makefile: one at a time.
    What a test wants shown at the end of the run it hands to
    record_property(SUMMARY_LINE, text) (or "fault_sweep", a dict): the
    report carries it from a worker to the controller, which prints it
    in the terminal summary.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fake_lms import FakeLMS  # noqa: E402

SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
)

# A port on which (almost certainly) nothing listens: connections are
# refused at once.
DEAD_URL = "http://127.0.0.1:9"

# A suite started in the background by a shell without job control
# (`make test &`) inherits SIGINT ignored, every daemon would inherit that,
# and libfuse leaves an ignored SIGINT ignored: the daemons get the
# default disposition (a handler is reset to it by exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


# ------------------------------------------------------ session summary

SUMMARY_LINE = "summary_line"
_summary_lines = []
_fault_sweeps = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "xdist_group(name): run with the other tests of that "
        "group, one at a time on one worker (see conftest.py)")


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for key, value in getattr(report, "user_properties", ()):
        if key == SUMMARY_LINE:
            _summary_lines.append(value)
        elif key == "fault_sweep":
            _fault_sweeps.append(value)


def pytest_terminal_summary(terminalreporter):
    lines = list(_summary_lines)
    if _fault_sweeps:
        from fault_helpers import sweep_summary
        lines += sweep_summary(_fault_sweeps)
    for line in lines:
        terminalreporter.write_line(line)


# ----------------------------------------------------------------- helpers

def _pauses(interval):
    """Sleeps between polls: 1 ms, doubling up to `interval`, so that a
    condition that comes true at once costs no fixed 20 ms."""
    pause = min(0.001, interval)
    while True:
        yield pause
        pause = min(pause * 2, interval)


def wait_for(predicate, timeout=10, interval=0.02, message=None):
    """Polls predicate() until it returns a truthy value, which is returned.
    Raises AssertionError after `timeout` seconds. Exceptions raised by the
    predicate count as "not yet" (the last one is reported). The first
    polls come sooner than `interval`, the pause between two is at most
    `interval`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    last_val = None
    pauses = _pauses(interval)
    while True:
        try:
            last_val = predicate()
            if last_val:
                return last_val
            last_exc = None
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            detail = ("last exception: %r" % (last_exc,) if last_exc
                      else "last value: %r" % (last_val,))
            raise AssertionError("timed out after %.1f s waiting for %s (%s)"
                                 % (timeout, what, detail))
        time.sleep(next(pauses))


def run(cmd, timeout=20, **kw):
    """subprocess.run(cmd, capture_output=True, text=True) with a timeout.
    Unlike subprocess.run it cannot hang after the timeout on a child stuck
    in an uninterruptible FUSE request: it kills it, waits at most 5 s more,
    and raises subprocess.TimeoutExpired."""
    kw.setdefault("text", True)
    check = kw.pop("check", False)
    inp = kw.pop("input", None)
    if kw.pop("capture_output", True):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    if inp is not None:
        kw["stdin"] = subprocess.PIPE
    else:
        kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, **kw)
    try:
        out, err = proc.communicate(inp, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out = err = None
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err)
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        res.check_returncode()
    return res


def call_with_timeout(fn, *args, timeout=10, **kw):
    """fn(*args, **kw) in a daemon thread; returns its value or re-raises
    its exception; AssertionError if it has not returned after `timeout`."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        name = getattr(fn, "__name__", repr(fn))
        raise AssertionError("%s(%s) did not return within %.1f s" % (
            name, ", ".join(repr(a) for a in args), timeout))
    if "error" in box:
        raise box["error"]
    return box.get("value")


def listdir(path, timeout=10):
    return sorted(call_with_timeout(os.listdir, str(path), timeout=timeout))


def read_bytes(path, timeout=10):
    return call_with_timeout(lambda: Path(path).read_bytes(), timeout=timeout)


def read_text(path, timeout=10):
    return read_bytes(path, timeout).decode("utf-8")


def read_json(path, timeout=10):
    return json.loads(read_text(path, timeout))


def stat(path, timeout=10):
    return call_with_timeout(os.stat, str(path), timeout=timeout)


def write_text(path, text, timeout=10):
    def w():
        with open(path, "w") as f:
            f.write(text)
    return call_with_timeout(w, timeout=timeout)


def append_text(path, text, timeout=10):
    def w():
        with open(path, "a") as f:
            f.write(text)
    return call_with_timeout(w, timeout=timeout)


def _unescape_mount_field(s):
    out, i = [], 0
    while i < len(s):
        oct3 = s[i + 1:i + 4]
        if s[i] == "\\" and len(oct3) == 3 and oct3.isdigit():
            out.append(chr(int(oct3, 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_entries(path=None):
    """Entries of /proc/self/mountinfo as dicts (mountpoint, fstype,
    source, options), only those at `path` when given."""
    want = os.path.realpath(str(path)) if path is not None else None
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf = left.split(" ")
            rf = right.split(" ")
            if len(lf) < 5 or len(rf) < 2:
                continue
            mp = _unescape_mount_field(lf[4])
            if want is not None and mp != want:
                continue
            res.append({"mountpoint": mp, "fstype": rf[0],
                        "source": _unescape_mount_field(rf[1]),
                        "options": lf[5] if len(lf) > 5 else "",
                        "super_options": rf[2] if len(rf) > 2 else ""})
    return res


def mount_count(path):
    return len(mount_entries(path))


def is_mounted(path):
    return mount_count(path) > 0


def fusermount(path, lazy=False, timeout=10):
    cmd = ["fusermount3", "-uz" if lazy else "-u", str(path)]
    try:
        return run(cmd, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, -1, "", "timeout: %s" % e)


def pids_with_arg(arg):
    """Pids (other than ours) whose command line has `arg` as an element."""
    arg = str(arg).encode()
    me = os.getpid()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if arg in argv:
            try:
                with open("/proc/%s/stat" % d) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue  # zombie: already dead
            except (OSError, IndexError):
                pass
            pids.append(int(d))
    return pids


def sanitizer_report(text):
    if any(p in text for p in SANITIZER_PATTERNS):
        return True
    # valgrind (make valgrind, --quiet): it prints only errors and
    # definite leaks, each line as "==PID== ...".
    if re.search(r"^==[0-9]+== ", text, re.M):
        return True
    m = re.search(r"ERROR SUMMARY: ([1-9][0-9]*) errors", text)
    return m is not None


def clean_env(tmp_path, overrides=None):
    """os.environ minus LMSFS_* / LMSTUDIO_*, with XDG_CONFIG_HOME and
    XDG_DATA_HOME in tmp_path (so no user config is read), plus overrides
    (a value of None removes the variable)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LMSFS_", "LMSTUDIO_"))}
    xdg_config = Path(tmp_path) / "xdg-config"
    xdg_data = Path(tmp_path) / "xdg-data"
    xdg_config.mkdir(exist_ok=True)
    xdg_data.mkdir(exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(xdg_config)
    env["XDG_DATA_HOME"] = str(xdg_data)
    for k, v in (overrides or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def ini_text(config):
    """A config dict as INI text (key = value lines); a str is returned
    as is. Booleans become true/false."""
    if isinstance(config, str):
        return config
    lines = []
    for k, v in config.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        lines.append("%s = %s" % (k, v))
    return "\n".join(lines) + "\n"


def _opt_escape(v):
    return str(v).replace("\\", "\\\\").replace(",", "\\,")


# ------------------------------------------------------------------ mounts

class Mount:
    """One lmsfs daemon on one mountpoint.

    .path      mountpoint (pathlib.Path)      .state   state dir
    .proc      subprocess.Popen of the daemon (foreground) or the launcher
    .cmd       argv used                      .env     environment used
    .url       base_url passed (or None)      .config_path  -c FILE or None
    .log()     daemon output so far (text)    .log_path
    .pid       pid of the daemon (None when it is gone)
    .umount()  idempotent: fusermount3 -u (then -uz), wait up to 10 s for
               the daemon, SIGKILL it if needed; returns its exit status
               (foreground) or None
    .kill9()   SIGKILL by pid, then fusermount3 -uz
    .remount() same argv, env and state dir; returns self
    """

    def __init__(self, bin_path, mountpoint, state, log_path, cmd, env,
                 cwd, url, config_path, foreground):
        self.bin = bin_path
        self.path = Path(mountpoint)
        self.state = Path(state)
        self.log_path = Path(log_path)
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.url = url
        self.config_path = config_path
        self.foreground = foreground
        self.proc = None
        self.starts = 0

    def __repr__(self):
        return "<Mount %s pid=%s>" % (self.path, self.pid)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self):
        if self.foreground:
            if self.proc is not None and self.proc.poll() is None:
                return self.proc.pid
            return None
        pids = pids_with_arg(self.path)
        return pids[0] if pids else None

    def _fail(self, what):
        pytest.fail("%s\ncommand: %s\n----- lmsfs log -----\n%s"
                    % (what, " ".join(self.cmd), self.log()), pytrace=False)

    def start(self, wait=True, timeout=10):
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(("=== lmsfs start %d: %s\n" % (
                self.starts, " ".join(self.cmd))).encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True)
        if wait:
            self.wait_mounted(timeout)
        return self

    def wait_mounted(self, timeout=10):
        deadline = time.monotonic() + timeout
        pauses = _pauses(0.02)
        while not is_mounted(self.path):
            rc = self.proc.poll()
            if rc is not None and (self.foreground or rc != 0):
                self._fail("lmsfs exited with status %s before the mount "
                           "was up" % rc)
            if time.monotonic() > deadline:
                self._fail("lmsfs did not mount %s within %.0f s"
                           % (self.path, timeout))
            time.sleep(next(pauses))
        if not self.foreground:
            try:
                rc = self.proc.wait(max(deadline - time.monotonic(), 0.5))
            except subprocess.TimeoutExpired:
                self._fail("lmsfs (without -f) did not return after mounting")
            if rc != 0:
                self._fail("lmsfs (without -f) exited with status %s" % rc)
        try:
            call_with_timeout(os.stat, str(self.path),
                              timeout=max(deadline - time.monotonic(), 2))
        except AssertionError:
            self._fail("the mount at %s does not answer stat()" % self.path)
        except OSError as e:
            self._fail("stat(%s) failed after mounting: %s" % (self.path, e))

    def _daemon_pids(self):
        if self.foreground:
            return [self.proc.pid] if (self.proc is not None and
                                       self.proc.poll() is None) else []
        return pids_with_arg(self.path)

    def _daemon_gone(self):
        if self.foreground:
            return self.proc is None or self.proc.poll() is not None
        return not pids_with_arg(self.path)

    def umount(self, timeout=10):
        if self.proc is None:
            return None
        if is_mounted(self.path) and not self._daemon_gone():
            r = fusermount(self.path)
            if r.returncode != 0 and is_mounted(self.path):
                fusermount(self.path, lazy=True)
        deadline = time.monotonic() + timeout
        pauses = _pauses(0.02)
        while not self._daemon_gone() and time.monotonic() < deadline:
            time.sleep(next(pauses))
        if not self._daemon_gone():
            for pid in self._daemon_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.foreground:
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            else:
                wait_for(self._daemon_gone, timeout=5, message="daemon death")
        if self.foreground and self.proc.poll() is None:
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
        if not self.foreground and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        # A dead daemon leaves "Transport endpoint is not connected".
        for _ in range(3):
            if not is_mounted(self.path):
                break
            fusermount(self.path, lazy=True)
        return self.proc.returncode if self.foreground else None

    def kill9(self):
        for pid in self._daemon_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.foreground:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        else:
            wait_for(self._daemon_gone, timeout=10, message="daemon death")
        fusermount(self.path, lazy=True)
        wait_for(lambda: not is_mounted(self.path), timeout=5,
                 message="%s unmounted after kill -9" % self.path)

    def remount(self, wait=True):
        self.umount()
        return self.start(wait=wait)


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def fake():
    srv = FakeLMS()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def lmsfs_bin():
    p = Path(os.environ.get("LMSFS_BIN") or REPO / "build" / "lmsfs")
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail("lmsfs binary not found or not executable at %s: build "
                    "it with `make` (or point LMSFS_BIN at it)" % p,
                    pytrace=False)
    return p


_OMIT = object()


@pytest.fixture
def mount(request, tmp_path, lmsfs_bin):
    the_fake = (request.getfixturevalue("fake")
                if "fake" in request.fixturenames else None)
    made = []

    def factory(config=None, env=None, args=(), base_url=None, wait=True,
                mountpoint=None, state=None, foreground=True, source=False):
        """Mounts lmsfs and returns a Mount.

        config      dict (or raw INI text) written to a file passed with -c
        env         environment overrides (None values remove a variable)
        args        extra command line arguments, appended at the end
        base_url    default: the `fake` server's URL when the test uses
                    that fixture, else DEAD_URL; False: not passed at all
        mountpoint, state   default: fresh dirs in tmp_path ("mnt",
                    "state", then "mnt2", "state2", ...)
        foreground  True: -f; False: the daemon backgrounds itself (the
                    launcher must exit 0 once the mount is up)
        source      True: the state dir is passed as SOURCE (first
                    positional argument) instead of -o state_dir=
        """
        n = len(made) + 1
        sfx = "" if n == 1 else str(n)
        mnt = Path(mountpoint) if mountpoint else tmp_path / ("mnt" + sfx)
        st = Path(state) if state else tmp_path / ("state" + sfx)
        mnt.mkdir(parents=True, exist_ok=True)
        st.mkdir(parents=True, exist_ok=True)
        if base_url is None:
            base_url = the_fake.url if the_fake is not None else DEAD_URL
        cfg_path = None
        if config is not None:
            cfg_path = tmp_path / ("lmsfs%s.conf" % sfx)
            cfg_path.write_text(ini_text(config))
        opts = []
        if not source:
            opts.append("state_dir=" + _opt_escape(st))
        if base_url is not False:
            opts.append("base_url=" + _opt_escape(base_url))
        cmd = [str(lmsfs_bin)]
        wrapper = os.environ.get("LMSFS_WRAPPER")
        if wrapper and foreground:
            # make valgrind: run the daemon under a checker.
            cmd = shlex.split(wrapper) + cmd
        if source:
            cmd.append(str(st))
        cmd.append(str(mnt))
        if foreground:
            cmd.append("-f")
        if opts:
            cmd += ["-o", ",".join(opts)]
        if cfg_path is not None:
            cmd += ["-c", str(cfg_path)]
        cmd += [str(a) for a in args]
        m = Mount(lmsfs_bin, mnt, st, tmp_path / ("lmsfs%s.log" % sfx), cmd,
                  clean_env(tmp_path, env), str(tmp_path),
                  None if base_url is False else base_url, cfg_path,
                  foreground)
        made.append(m)
        m.start(wait=wait)
        return m

    yield factory

    errors = []
    for m in reversed(made):
        try:
            m.umount()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append("%s: umount failed: %r" % (m.path, e))
    for m in made:
        text = m.log()
        if sanitizer_report(text):
            errors.append("sanitizer report in %s:\n%s" % (m.log_path, text))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)

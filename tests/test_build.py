"""The Makefile's flags. A user's CFLAGS is added to what the build needs,
never put in its place: `make CFLAGS=-O0` into a directory of its own still
compiles with -std=gnu11, -D_GNU_SOURCE, -DFUSE_USE_VERSION=314, the
warnings, the pkg-config flags and the hardening flags (without
_FORTIFY_SOURCE, which needs optimisation). Without -D_GNU_SOURCE, memmem
would be implicitly declared and return a truncated pointer: the binary
built here is mounted for one turn against the fake server."""

import os
import shlex
import subprocess

import pytest

from conftest import REPO, run
from conv_helpers import cmount, echo_of, history, mkconv, prompt, reply

# What the top-level `make test` exports must not change this build.
_MAKE_VARS = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "CFLAGS", "CPPFLAGS",
              "LDFLAGS", "LDLIBS", "SAN", "BUILD", "WERROR", "HARDEN")

NEEDED = ["-std=gnu11", "-D_GNU_SOURCE", "-DFUSE_USE_VERSION=314",
          "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong", "-fPIE",
          "-pthread"]


@pytest.fixture(scope="module")
def o0_build(tmp_path_factory):
    """make CFLAGS=-O0 WERROR=1 BUILD=<tmp>/build-O0 <tmp>/build-O0/lmsfs:
    (the build directory, make's stdout)."""
    build = tmp_path_factory.mktemp("make") / "build-O0"
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_VARS}
    r = run(["make", "--no-print-directory", "BUILD=%s" % build,
             "CFLAGS=-O0", "WERROR=1", str(build / "lmsfs")],
            cwd=str(REPO), env=env, timeout=300)
    assert r.returncode == 0, "make CFLAGS=-O0 failed:\n%s\n%s" % (
        r.stdout[-4000:], r.stderr[-4000:])
    return build, r.stdout


def _pkg_cflags():
    r = run(["pkg-config", "--cflags", "fuse3", "libcurl", "libcjson",
             "inih"])
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


@pytest.mark.xdist_group("repo-build")
def test_O0_build_keeps_what_the_build_needs(o0_build):
    build, out = o0_build
    cmds = [shlex.split(ln) for ln in out.splitlines() if " -o " in ln]
    compiles = [c for c in cmds if "-c" in c]
    links = [c for c in cmds if "-c" not in c and
             str(build / "lmsfs") in c]
    assert len(compiles) == len(list((REPO / "fs").glob("*.c"))), out
    assert len(links) == 1, out
    pkg = _pkg_cflags()
    for c in compiles:
        for flag in NEEDED + pkg + ["-O0"]:
            assert flag in c, "%s missing from: %s" % (flag, " ".join(c))
        assert not [f for f in c if "_FORTIFY_SOURCE" in f], " ".join(c)
        # The user's CFLAGS comes last, so that it can override.
        assert c.index("-O0") > c.index("-std=gnu11")
    for flag in ("-pie", "-Wl,-z,relro,-z,now"):
        assert flag in links[0], "%s missing from: %s" % (
            flag, " ".join(links[0]))


@pytest.mark.xdist_group("repo-build")
def test_O0_binary_is_hardened(o0_build):
    build, _ = o0_build
    binary = str(build / "lmsfs")
    env = dict(os.environ, LC_ALL="C")
    hdr = subprocess.run(["readelf", "-hdlW", binary], env=env,
                         capture_output=True, text=True, timeout=30)
    assert hdr.returncode == 0, hdr.stderr
    assert "DYN (Position-Independent Executable" in hdr.stdout, hdr.stdout
    assert "BIND_NOW" in hdr.stdout or "Flags: NOW" in hdr.stdout
    assert "GNU_RELRO" in hdr.stdout


@pytest.fixture
def lmsfs_bin(o0_build):
    """The mount fixture uses this module's -O0 binary."""
    return o0_build[0] / "lmsfs"


@pytest.mark.xdist_group("repo-build")
def test_O0_binary_answers_a_turn(fake, mount, lmsfs_bin):
    m = cmount(mount)
    assert m.cmd[0] == str(lmsfs_bin)
    mkconv(m, "smoke")
    prompt(m, "smoke", "hello from -O0")
    assert reply(m, "smoke").rstrip("\n") == echo_of("hello from -O0")
    assert history(m, "smoke") == [
        {"role": "user", "content": "hello from -O0"},
        {"role": "assistant", "content": echo_of("hello from -O0")}]
    assert len(fake.chat_requests()) == 1

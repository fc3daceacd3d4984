"""Runs the C unit tests (tests/unit/test_*.c) built by `make unit`.

Each source file becomes one test case that runs its binary from
$LMSFS_UNIT_DIR (default: build/unit in the repository) and expects exit
status 0. test_config is also given the example lmsfs.conf, which it loads
and compares with the built-in defaults.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT_SRC = REPO / "tests" / "unit"
UNIT_DIR = Path(os.environ.get("LMSFS_UNIT_DIR", REPO / "build" / "unit"))
EXAMPLE_CONF = REPO / "lmsfs.conf"

NAMES = sorted(p.stem for p in UNIT_SRC.glob("test_*.c"))


def test_unit_sources_exist():
    assert NAMES, f"no tests/unit/test_*.c under {UNIT_SRC}"


@pytest.mark.parametrize("name", NAMES)
def test_unit_binary(name):
    binary = UNIT_DIR / name
    if not binary.is_file():
        pytest.fail(
            f"unit test binary {binary} is missing; build it with "
            f"`make unit` (or set LMSFS_UNIT_DIR)"
        )
    env = dict(os.environ, LMSFS_CONF_EXAMPLE=str(EXAMPLE_CONF))
    proc = subprocess.run(
        [str(binary), str(EXAMPLE_CONF)],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=300,
    )
    last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}: {last[0]}\n{proc.stdout}"
    )
    assert last[0].endswith(" 0 failed"), proc.stdout

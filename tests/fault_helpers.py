"""The test side of the fault-injection shim (tests/fault/fault.c): creates
its control file, arms and disarms it, reads its counters, and builds the
environment that preloads the shim into the lmsfs daemon.

The control file layout is described at the top of fault.c; this module
must agree with it."""

import errno
import mmap
import os
import struct
from pathlib import Path

MAGIC = 0x544c464c
VERSION = 1
SIZE = 4096

# Classes of calls, as numbered in fault.c.
CLASSES = {"write": 1, "sync": 2, "rename": 3, "ftruncate": 4, "open": 5}
CLASS_NAMES = {v: k for k, v in CLASSES.items()}

_OFF_GENERATION = 8
_OFF_ARMED = 16      # u32 class, u32 errno
_OFF_TARGET = 24
_OFF_FIRED = 32
_OFF_ACK = 40        # written by the shim only
_OFF_COUNT = 48      # 6 x u64, index 0 unused
_OFF_LAST_CLASS = 96
_OFF_LAST_WHAT = 104
_LAST_WHAT_LEN = 256


def fault_lib():
    """Path of libfault.so from $LMSFS_FAULT_LIB, or None when unset or
    missing."""
    p = os.environ.get("LMSFS_FAULT_LIB")
    if not p or not Path(p).is_file():
        return None
    return Path(p)


def preload_env(lib, state_dir, ctl_path):
    """Environment overrides that load the shim into the daemon, watching
    state_dir and controlled through ctl_path. The sanitizer builds need
    verify_asan_link_order=0 when another library is preloaded."""
    asan = os.environ.get("ASAN_OPTIONS", "")
    asan = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "LD_PRELOAD": str(lib) + (" " + preload if preload else ""),
        "LMSFS_FAULT_DIR": os.path.realpath(str(state_dir)),
        "LMSFS_FAULT_CTL": str(ctl_path),
        "ASAN_OPTIONS": asan,
    }


class FaultCtl:
    """The control file, mapped shared. arm() and disarm() start a new
    generation: the shim then counts calls from zero again."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "wb") as f:
            f.write(struct.pack("<II", MAGIC, VERSION) + bytes(SIZE - 8))
        self._f = open(self.path, "r+b")
        self._m = mmap.mmap(self._f.fileno(), SIZE, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self):
        self._m.close()
        self._f.close()

    def _u32(self, off):
        return struct.unpack_from("<I", self._m, off)[0]

    def _u64(self, off):
        return struct.unpack_from("<Q", self._m, off)[0]

    def _arm(self, cls, n, err):
        # The fields first, the generation last: the shim reads the
        # generation to learn that they changed. Our own zeroing of the
        # counters is for readers of this file; the shim zeroes them too
        # when it first sees the new generation.
        struct.pack_into("<II", self._m, _OFF_ARMED, cls, err)
        struct.pack_into("<Q", self._m, _OFF_TARGET, n)
        struct.pack_into("<Q", self._m, _OFF_FIRED, 0)
        struct.pack_into("<6Q", self._m, _OFF_COUNT, 0, 0, 0, 0, 0, 0)
        struct.pack_into("<I", self._m, _OFF_LAST_CLASS, 0)
        self._m[_OFF_LAST_WHAT:_OFF_LAST_WHAT + _LAST_WHAT_LEN] = \
            bytes(_LAST_WHAT_LEN)
        gen = self._u64(_OFF_GENERATION) + 1
        struct.pack_into("<Q", self._m, _OFF_GENERATION, gen)

    def arm(self, cls_name, n, err=errno.ENOSPC):
        """The nth call (1-based) of class cls_name from now fails with
        err, once."""
        self._arm(CLASSES[cls_name], n, err)

    def disarm(self):
        """Nothing fails; counting starts from zero (a dry run)."""
        self._arm(0, 0, 0)

    def counts(self):
        """{class name: calls since the arming}."""
        vals = struct.unpack_from("<6Q", self._m, _OFF_COUNT)
        return {name: vals[num] for name, num in CLASSES.items()}

    def fired(self):
        return self._u64(_OFF_FIRED)

    def last_fault(self):
        """'CALL PATH' of the last injected fault, or ''."""
        raw = self._m[_OFF_LAST_WHAT:_OFF_LAST_WHAT + _LAST_WHAT_LEN]
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def sweep_summary(rows):
    """The lines that sum up the fault sweeps of a run (rows: the dicts
    test_faults.py records, in any order)."""
    order = list(CLASSES)
    rows = sorted(rows, key=lambda s: (order.index(s["cls"])
                                       if s["cls"] in order else len(order),
                                       s["cls"], s["errno"]))
    per = {}
    for s in rows:
        per[s["cls"]] = max(per.get(s["cls"], 0), s["points"])
    lines = ["fault sweep: %d runs, %d faults fired; points per errno: %s; "
             "errnos: %s" % (sum(s["runs"] for s in rows),
                             sum(s["fired"] for s in rows),
                             ", ".join("%s %d" % kv for kv in per.items()),
                             ", ".join(sorted({s["errno"] for s in rows})))]
    for s in rows:
        lines.append("  %-9s %-6s dry run %3d, N=1..%d, fired %d, failing "
                     "runs %d (with [extra] findings %d), %.1f s"
                     % (s["cls"], s["errno"], s["points"], s["runs"],
                        s["fired"], s["bad_runs"], s["extra_runs"],
                        s["seconds"]))
    return lines

"""overlay2's upper directory follows fs/overlayfs (index=off, redirect_dir=off):
whiteouts, origin, impure and opaque, on the simulated driver and, where the
machine allows the mounts, on the real kernel side by side."""
from __future__ import annotations

import io
import os
import stat as _stat
import subprocess
import tarfile
import tempfile

import pytest

from thinp.validate.union import upper_manifest
from .union_helpers import make

ORIGIN, IMPURE, OPAQUE = "trusted.overlay.origin", "trusted.overlay.impure", "trusted.overlay.opaque"


def _lower(t) -> None:
    """The lower layer, through a target with mkdir/write/link (sim or real)."""
    t.mkdir("/d")
    t.write("/d/one", 100)
    t.write("/d/two", 200)
    t.link("/d/two", "/d/two-again")
    t.mkdir("/gone")
    t.write("/gone/f", 10)
    t.write("/x", 1)


def _upper(t) -> None:
    t.chmod("/d/one", 0o600)        # one link: copy-up with origin
    t.chmod("/d/two", 0o640)        # two links: the link breaks, no origin
    t.unlink("/x")                  # a whiteout
    t.unlink("/gone/f")
    t.rmdir("/gone")
    t.mkdir("/gone")                # a directory where a whiteout was: opaque
    t.mkdir("/lnk")
    t.link("/d/one", "/lnk/one")    # a link to a file with an origin: its new parent is impure


class _Sim:
    def __init__(self, view):
        self.v = view

    def mkdir(self, p):
        self.v.mkdir(p, 0o755)

    def write(self, p, n):
        self.v.create(p, 0o644)
        self.v.write(p, 0, n)

    def link(self, a, b):
        self.v.link(a, b)

    def chmod(self, p, m):
        self.v.chmod(p, m)

    def unlink(self, p):
        self.v.unlink(p)

    def rmdir(self, p):
        self.v.rmdir(p)


class _Real(_Sim):
    def __init__(self, root):
        self.root = root

    def mkdir(self, p):
        os.mkdir(self.root + p, 0o755)

    def write(self, p, n):
        with open(self.root + p, "wb") as f:
            f.write(b"x" * n)
        os.chmod(self.root + p, 0o644)

    def link(self, a, b):
        os.link(self.root + a, self.root + b)

    def chmod(self, p, m):
        os.chmod(self.root + p, m)

    def unlink(self, p):
        os.unlink(self.root + p)

    def rmdir(self, p):
        os.rmdir(self.root + p)


def _sim_upper() -> dict:
    drv = make("overlay2")
    drv.create("base", None)
    drv.fill("base", lambda v: _lower(_Sim(v)))
    drv.create("c", "base", read_write=True)
    _upper(_Sim(drv.get("c")))
    return {p: (r["type"], r["mode"], r["nlink"] if r["type"] == "f" else 0, r["target"], tuple(sorted(r["xattrs"])))
            for p, r in upper_manifest(drv, "c").items()}


EXPECTED = {
    "d": ("d", 0o755, 0, "", (IMPURE, ORIGIN)),
    "d/one": ("f", 0o600, 2, "", (ORIGIN,)),
    "lnk": ("d", 0o755, 0, "", (IMPURE,)),
    "lnk/one": ("f", 0o600, 2, "", (ORIGIN,)),
    "d/two": ("f", 0o640, 1, "", ()),
    "x": ("c", 0o000, 0, "0:0", ()),
    "gone": ("d", 0o755, 0, "", (OPAQUE,)),
}


def test_simulated_upper_follows_the_kernel_rules():
    assert _sim_upper() == EXPECTED


def test_whiteouts_in_a_committed_layer_are_mode_000():
    drv = make("overlay2")
    drv.create("base", None)
    drv.fill("base", lambda v: _lower(_Sim(v)))
    drv.create("c", "base", read_write=True)
    drv.get("c").unlink("/x")
    layer = drv.diff("c", "base")
    with layer.open_uncompressed() as f:
        members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(f.read()))}
    assert members[".wh.x"].mode == 0 and members[".wh.x"].isreg() and members[".wh.x"].size == 0
    [wh] = [e for e in layer.entries() if e.kind == "whiteout"]
    assert (wh.path, wh.mode) == ("x", 0)


def _run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise PermissionError(r.stderr.strip() or f"{args[0]} failed")


def test_the_real_kernel_agrees():
    if os.geteuid() != 0:
        pytest.skip("needs root to mount tmpfs and overlayfs")
    base = tempfile.mkdtemp(prefix="thinp-ovl-rules-")
    mounted = []
    try:
        try:
            _run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", base])
        except PermissionError as e:
            pytest.skip(f"tmpfs mount refused: {e}")
        mounted.append(base)
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(f"{base}/{d}")
        _lower(_Real(f"{base}/lower"))
        try:
            _run(["mount", "-t", "overlay", "overlay", "-o",
                  f"index=off,redirect_dir=off,lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work",
                  f"{base}/merged"])
        except PermissionError as e:
            pytest.skip(f"overlay mount refused: {e}")
        mounted.append(f"{base}/merged")
        _upper(_Real(f"{base}/merged"))
        _run(["umount", f"{base}/merged"])
        mounted.pop()
        got = {}
        up = f"{base}/upper"
        for d, dirs, files in os.walk(up):
            for n in dirs + files:
                p = os.path.join(d, n)
                st = os.lstat(p)
                typ = "d" if _stat.S_ISDIR(st.st_mode) else "f" if _stat.S_ISREG(st.st_mode) else "c"
                got[os.path.relpath(p, up)] = (
                    typ, _stat.S_IMODE(st.st_mode), st.st_nlink if typ == "f" else 0,
                    f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if typ == "c" else "",
                    tuple(sorted(os.listxattr(p, follow_symlinks=False))))
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", m], capture_output=True)
        os.rmdir(base)
    assert got == EXPECTED
    assert got == _sim_upper()

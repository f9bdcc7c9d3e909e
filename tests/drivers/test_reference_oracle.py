"""The oracle checked against an independent implementation.

The reference driver's container view must behave like one plain
filesystem holding the same tree: :mod:`thinp.fs` (ext4 model) is a separate
implementation of the same POSIX operations.  The equivalence workload runs
in lockstep on both, and every result (errno) and the final tree (types,
modes, owners, sizes, bytes or version stamps, symlink targets, hardlink
groups) must agree.  Directory renames are allowed here (a plain filesystem
has no EXDEV).
"""
from __future__ import annotations

import stat as _stat

from hypothesis import given, settings

from thinp.blockdev import PlainDevice
from thinp.drivers import get_driver
from thinp.fs import mkfs

from . import contract
from .test_equivalence import SETTINGS, _run, _setup, workloads


def _copy_tree(view, fs) -> None:
    """Recreate ``view``'s tree on the filesystem ``fs`` (hardlinks kept)."""
    fs.rmdir("/lost+found")
    links: dict[int, str] = {}
    for top, dirs, files in view.walk("/"):
        for name in sorted(dirs + files):
            p = top.rstrip("/") + "/" + name
            st = view.lstat(p)
            fmt = _stat.S_IFMT(st.st_mode)
            perm = _stat.S_IMODE(st.st_mode)
            if fmt == _stat.S_IFDIR:
                fs.mkdir(p, perm)
            elif fmt == _stat.S_IFLNK:
                fs.symlink(view.readlink(p), p)
            elif fmt == _stat.S_IFREG:
                if st.st_nlink > 1 and st.st_ino in links:
                    fs.link(links[st.st_ino], p)
                    continue
                links[st.st_ino] = p
                fs.create(p, perm)
                data = view.read(p)
                if data:
                    fs.write(p, 0, data)
            else:
                fs.mknod(p, fmt | perm, st.st_rdev)
            if fmt != _stat.S_IFLNK:
                fs.chown(p, st.st_uid, st.st_gid)


def check_against_fs(ops) -> None:
    ref = get_driver("reference", None, payload=True)
    top, r = _setup(ref)
    fs = mkfs(PlainDevice("64MiB", payload=True), "ext4")
    _copy_tree(r, fs)
    assert contract.snapshot(fs) == contract.snapshot(r)
    for o in ops:
        got, want = _run(o, fs), _run(o, r)
        assert got == want, f"{o}: thinp.fs gives errno {got}, the reference {want}"
    assert contract.snapshot(fs) == contract.snapshot(r)


@settings(max_examples=100, **SETTINGS)
@given(ops=workloads)
def test_reference_view_behaves_like_a_filesystem(ops):
    check_against_fs(ops)

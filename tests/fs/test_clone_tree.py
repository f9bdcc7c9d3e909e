"""``Filesystem.clone_tree`` against the per-path copy it replaces
(tests/reference/copy_tree.py): the same calls in the same order, so the
whole filesystem state -- inode numbers, block and inode bitmaps, extents,
delayed allocation, dirty/journal sets, counters, the device's counters --
must come out identical (times aside)."""
from __future__ import annotations

import errno
import stat as _stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.reference.copy_tree import copy_tree_per_path
from thinp.blockdev import PlainDevice
from thinp.fs import mkfs

SKIP = {"_pcache", "_release_hooks", "atime", "mtime", "ctime"}


def _norm(v, depth=0):
    if depth > 6:
        return repr(type(v))
    if isinstance(v, np.ndarray):
        return ("nd", str(v.dtype), v.shape, v.tobytes())
    if isinstance(v, np.random.Generator):
        return ("rng", repr(v.bit_generator.state))
    if isinstance(v, (set, frozenset)):
        return ("set", sorted((_norm(x, depth + 1) for x in v), key=repr))
    if isinstance(v, dict):
        return ("dict", [(_norm(k, depth + 1), _norm(x, depth + 1)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_norm(x, depth + 1) for x in v])
    if isinstance(v, (int, float, str, bytes, bool, type(None), np.integer)):
        return v
    names = list(getattr(v, "__dict__", {})) or [s for c in type(v).__mro__ for s in getattr(c, "__slots__", ())]
    if not names:
        return repr(v)
    return (type(v).__name__, [(n, _norm(getattr(v, n, None), depth + 1)) for n in names if n not in SKIP])


def snapshot(fs) -> dict:
    out = {k: _norm(v) for k, v in vars(fs).items() if k not in SKIP and k not in ("inodes", "device")}
    out["inodes"] = [(ino, _norm(fs.inodes[ino])) for ino in sorted(fs.inodes.keys())]
    out["device"] = _norm(fs.device)
    return out


def assert_same(a, b):
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == sb[k], f"filesystem field {k} differs"


# one tree entry: (kind, depth-selector, name, size/target, xattr size)
entry = st.tuples(
    st.sampled_from(["dir", "file", "file", "file", "symlink", "fifo", "char", "hardlink"]),
    st.integers(0, 50),
    st.text("abcdefghij", min_size=1, max_size=6),
    st.integers(0, 300_000),
    st.sampled_from([0, 0, 0, 10, 200]),
)


def build(fs, entries, top="/src"):
    fs.mkdir(top, 0o755)
    dirs, files = [top], []
    for i, (kind, sel, name, size, xsize) in enumerate(entries):
        parent = dirs[sel % len(dirs)]
        p = f"{parent}/{name}{i}"
        if kind == "dir":
            fs.mkdir(p, 0o750, uid=i % 3, gid=7)
            dirs.append(p)
        elif kind == "file":
            fs.create(p, 0o640, uid=1000, gid=i % 5)
            if size:
                fs.write(p, 0, bytes([i % 251 + 1]) * size if fs.payload else size)
            files.append(p)
        elif kind == "symlink":
            fs.symlink("t" * (size % 120 + 1), p)      # inline and block symlinks
        elif kind == "fifo":
            fs.mknod(p, _stat.S_IFIFO | 0o600)
        elif kind == "char":
            fs.mknod(p, _stat.S_IFCHR | 0o600, (5 << 8) | 1)
        elif files:
            fs.link(files[sel % len(files)], p)
        else:
            continue
        if xsize:
            fs.setxattr(p, "user.x", b"v" * xsize, follow_symlinks=False)
    return fs


def pair(fstype, payload, entries, **attrs):
    out = []
    for _ in range(2):
        fs = mkfs(PlainDevice("2G", payload=payload), fstype)
        for k, v in attrs.items():
            setattr(fs, k, v)
        build(fs, entries)
        fs.commit()
        out.append(fs)
    assert_same(*out)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(entry, min_size=1, max_size=60), fstype=st.sampled_from(["ext4", "xfs"]),
       commit_blocks=st.sampled_from([4096, 12]))
def test_clone_tree_matches_per_path_copy(entries, fstype, commit_blocks):
    # a small writeback limit so delayed allocation flushes in the middle of
    # a copy; a small dirty limit so the journal commits in the middle of one
    a, b = pair(fstype, False, entries, writeback_blocks=64, commit_blocks=commit_blocks)
    copy_tree_per_path(a, "/src", "/dst")
    before = len(b.inodes)
    made = b.clone_tree("/src", "/dst")
    assert_same(a, b)
    assert made == len(b.inodes) - before
    # vfs's chain: a clone of the clone
    copy_tree_per_path(a, "/dst", "/dst2")
    b.clone_tree("/dst", "/dst2")
    assert_same(a, b)
    assert [(p, d, f) for p, d, f in b.walk("/dst2")] == [(p.replace("/src", "/dst2", 1), d, f) for p, d, f in b.walk("/src")]
    b.check()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(entry, min_size=1, max_size=25))
def test_clone_tree_payload_matches(entries):
    a, b = pair("ext4", True, entries)
    copy_tree_per_path(a, "/src", "/dst")
    b.clone_tree("/src", "/dst")
    assert_same(a, b)
    for top, _d, files in b.walk("/src"):
        for f in files:
            p = top.rstrip("/") + "/" + f
            if _stat.S_ISREG(b.lstat(p).st_mode):
                assert b.read(p) == b.read("/dst" + p[len("/src"):])


def test_clone_tree_counts_and_errors():
    fs = mkfs(PlainDevice("1G"), "ext4")
    build(fs, [("dir", 0, "d", 0, 0), ("file", 1, "f", 5000, 0), ("hardlink", 0, "h", 0, 0),
               ("symlink", 0, "l", 3, 0)])
    before = len(fs.inodes)
    assert fs.clone_tree("/src", "/copy") == 4     # /copy, d0, f1, l3 (h2 is a second link to f1)
    assert len(fs.inodes) == before + 4
    assert fs.stat("/copy/d0/f1").st_nlink == 2
    assert fs.stat("/copy/d0/f1").st_ino == fs.stat("/copy/h2").st_ino != fs.stat("/src/d0/f1").st_ino
    assert np.array_equal(fs.read("/copy/d0/f1"), fs.read("/src/d0/f1"))
    with pytest.raises(OSError) as e:
        fs.clone_tree("/src", "/copy")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        fs.clone_tree("/src/l3", "/other")
    assert e.value.errno == errno.ENOTDIR
    assert not fs.exists("/other")


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
@pytest.mark.parametrize("room", [1, 3, 6])
def test_clone_tree_out_of_inodes_matches_per_path_copy(fstype, room):
    """Out of inodes in the middle of a run of files (ext4 takes a run's
    inodes in one kernel call): ENOSPC as the per-path copy gives it, and the
    same partial copy, the inodes taken ahead for the rest of the run given
    back (bitmap, hints and per-group counts as if never taken)."""
    entries = [("dir", 0, "d", 0, 0)] + [("file", 1, "f", 5000, 0)] * 6 + [("symlink", 1, "l", 3, 0),
                                                                          ("dir", 1, "e", 0, 0)]
    a, b = pair(fstype, False, entries)
    limit = len(a.inodes) + room
    a.max_inodes = b.max_inodes = limit
    for fs, copy in ((a, lambda: copy_tree_per_path(a, "/src", "/dst")), (b, lambda: b.clone_tree("/src", "/dst"))):
        with pytest.raises(OSError) as e:
            copy()
        assert e.value.errno == errno.ENOSPC
    assert_same(a, b)
    b.check()


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_clone_tree_out_of_space_mid_run_matches_per_path_copy(fstype):
    """Out of data blocks half-way through a run of files: the inodes ext4
    took ahead for the rest of the run go back, and the partial copy is
    the per-path copy's, field for field."""
    entries = [("dir", 0, "d", 0, 0)] + [("file", 1, "f", 400_000, 0)] * 8
    a, b = pair(fstype, False, entries)
    for fs in (a, b):
        fs.sync()
        fs.create("/fill", 0o644)
        # room for about three of the eight files' data
        fs.write("/fill", 0, (fs._free_blocks() - fs._reserved_blocks() - 3 * 98 - 40) * 4096)
        fs.sync()
    with pytest.raises(OSError) as e:
        copy_tree_per_path(a, "/src", "/dst")
    assert e.value.errno == errno.ENOSPC
    made = len(a.listdir("/dst/d0"))
    assert 0 < made < 8                   # stopped in the middle of the run
    with pytest.raises(OSError) as e:
        b.clone_tree("/src", "/dst")
    assert e.value.errno == errno.ENOSPC
    assert_same(a, b)
    b.check()


def _big_tree(fs, top="/src"):
    """Directories of hundreds of entries (several blocks and an htree root
    each), hard links, block and inline symlinks, device nodes, files of 0
    to 200 KB."""
    fs.mkdir(top, 0o755)
    dirs = [top]
    for i in range(40):
        d = f"{dirs[i // 4]}/dir-{i}"
        fs.mkdir(d, 0o750 + i % 8, uid=i % 3, gid=i % 2)
        dirs.append(d)
    files = []
    for i in range(1500):
        p = f"{dirs[(i * 7) % 3]}/a-file-with-a-long-name-{i}" if i % 2 else f"{dirs[i % len(dirs)]}/f{i}"
        fs.create(p, 0o644, uid=i % 5)
        if i % 9:
            fs.write(p, 0, (i * 7919) % 200_000 + 1)
        files.append(p)
    for i in range(120):
        fs.symlink("x" * (i % 90 + 1), f"{dirs[i % len(dirs)]}/l{i}")
        fs.link(files[i * 11], f"{dirs[(i + 3) % len(dirs)]}/h{i}")
        fs.mknod(f"{dirs[i % len(dirs)]}/p{i}", _stat.S_IFIFO | 0o600)
    fs.sync()


@pytest.mark.parametrize("limits", [{}, {"commit_blocks": 64, "writeback_blocks": 300}])
def test_bulk_clone_kernel_matches_per_path_copy(monkeypatch, limits):
    """ext4's kernel copy (thinp.fs._bulk_clone) of a tree whose directories
    grow to several blocks, with commits and writebacks falling inside the
    copy, matches the per-path copy field for field -- and the kernel did
    the copying (no entry went through the per-entry calls)."""
    from thinp.fs.ext4 import Ext4

    per_entry, by_kernel = [], []
    real, made = Ext4._bulk_item, Ext4._bulk_materialize
    monkeypatch.setattr(Ext4, "_bulk_item", lambda fs, P, k: (per_entry.append(k), real(fs, P, k)))
    monkeypatch.setattr(Ext4, "_bulk_materialize", lambda fs, P, k0, k1: (by_kernel.append(k1 - k0),
                                                                          made(fs, P, k0, k1)))
    a, b = (mkfs(PlainDevice("4G"), "ext4") for _ in range(2))
    for fs in (a, b):
        for k, v in limits.items():
            setattr(fs, k, v)
        _big_tree(fs)
        fs.mkdir("/layers", 0o700)
    assert_same(a, b)
    commits = b.counters["commits"]
    copy_tree_per_path(a, "/src", "/layers/one")
    b.clone_tree("/src", "/layers/one")
    assert_same(a, b)
    copy_tree_per_path(a, "/layers/one", "/layers/two")
    b.clone_tree("/layers/one", "/layers/two")
    a.sync()
    b.sync()
    assert_same(a, b)
    assert per_entry == []
    assert sum(by_kernel) == 2 * (1500 + 3 * 120 + 40 + 41)     # every entry, and each directory's turn
    if limits:
        assert b.counters["commits"] - commits > 10
    b.check()

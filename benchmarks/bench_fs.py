"""File-layer benchmarks (pytest-benchmark).

    python -m pytest benchmarks/bench_fs.py --benchmark-only
"""
import pytest

from thinp.blockdev import PlainDevice
from thinp.config import njit
from thinp.fs import mkfs
from thinp.fs.populate import wl_rootfs
from thinp.validate.fixtures import ROOTFS_MANIFEST, fixtures_dir, load_manifest
from thinp.validate.target import SimTarget

FSTYPES = ["ext4", "xfs"]


def _warm():
    fs = mkfs(PlainDevice("1G"), "ext4")
    fs.write("w", 0, 100000)
    fs.umount()
    fs.fstrim()


@pytest.mark.benchmark(group="fs-mkfs")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_mkfs_10g(benchmark, fstype):
    _warm()
    fs = benchmark.pedantic(lambda: mkfs(PlainDevice("10G"), fstype), rounds=5, iterations=1)
    print(f"\nmkfs {fstype} 10 GiB: {1 / benchmark.stats['mean']:.1f} ops/s")
    assert fs.nr_blocks == 2621440


@pytest.mark.benchmark(group="fs-rootfs")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_rootfs_laydown(benchmark, fstype):
    path = fixtures_dir() / ROOTFS_MANIFEST
    if not path.exists():
        pytest.skip(f"{path} missing")
    rows = load_manifest(path)
    _warm()

    def setup():
        return (SimTarget(mkfs(PlainDevice("10G"), fstype)),), {}

    def run(t):
        wl_rootfs(t, rows)
        t.fs.umount()

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    print(f"\nrootfs {fstype}: {len(rows) / benchmark.stats['mean']:.0f} entries/s")
    assert benchmark.stats["mean"] < 5.0


@pytest.mark.benchmark(group="fs-smallfiles")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_100k_small_file_creates(benchmark, fstype):
    _warm()
    n = 100_000

    def setup():
        fs = mkfs(PlainDevice("10G"), fstype)
        for d in range(1000):
            fs.mkdir(f"d{d}")
        return (fs,), {}

    def run(fs):
        for i in range(n):
            p = f"d{i % 1000}/f{i}"
            fs.create(p)
            fs.write(p, 0, 1 + (i * 7919) % 8192)
        fs.umount()

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    print(f"\n{fstype}: {n / benchmark.stats['mean']:.0f} creates/s")


def _image_like_tree(fs, top: str) -> int:
    """A tree about the size of the webapp image's rootfs (6,668 entries):
    6,669 inodes (the top, 600 directories four deep, 5,800 files of 1 B to
    60 KB, 268 symlinks), about 175 MB in accounting mode."""
    fs.mkdir(top, 0o755)
    dirs = [top]
    for i in range(600):
        d = f"{dirs[i // 8]}/d{i}"
        fs.mkdir(d, 0o755)
        dirs.append(d)
    for i in range(5800):
        p = f"{dirs[(i * 7) % len(dirs)]}/f{i}"
        fs.create(p, 0o644)
        fs.write(p, 0, 1 + (i * 7919) % 60000)
    for i in range(268):
        fs.symlink(f"../f{i}", f"{dirs[1 + i % 600]}/l{i}")
    fs.sync()
    return 1 + 600 + 5800 + 268


@njit(cache=False)
def _bare_copy(cols, stamps, cols_out, stamps_out):
    """Copy every column and every stamp with explicit loops: what a tree
    copy costs when a filesystem keeps its inodes, entries and extents in
    arrays and does nothing else."""
    for j in range(cols.shape[0]):
        for i in range(cols.shape[1]):
            cols_out[j, i] = cols[j, i]
    for i in range(stamps.shape[0]):
        stamps_out[i] = stamps[i]
    return cols.shape[1]


def _tree_arrays(fs, top):
    """The tree under ``top`` as arrays: one int64 column per inode field the
    copy carries (ino, mode, uid, gid, nlink, size, parent, loc, zone, the
    entry's name length, crc and directory), and every file's stamps."""
    import zlib

    import numpy as np

    rows, stamps = [], []
    stack = [fs.inode(top)]
    while stack:
        d = stack.pop()
        for name, ino in d.entries.items():
            c = fs.inodes[ino]
            rows.append((c.ino, c.mode, c.uid, c.gid, c.nlink, c.size, c.parent, c.loc, c.zone, len(name),
                         zlib.crc32(name.encode()), d.ino))
            if c.entries is not None:
                stack.append(c)
            elif c.stamps is not None:
                stamps.append(c.stamps)
    cols = np.ascontiguousarray(np.array(rows, dtype=np.int64).T)
    return cols, np.concatenate(stamps)


@pytest.mark.benchmark(group="fs-clone-tree")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_clone_tree(benchmark, fstype):
    """vfs's layer copy, ``Filesystem.clone_tree`` of an image-sized tree
    (ext4: one kernel call, thinp/fs/_bulk_clone.py; xfs: the inode walk),
    against three figures timed in the same run: the per-path copy it
    replaced (tests/reference/copy_tree.py: one public call per entry; the
    result is the same, see tests/fs/test_clone_tree.py), the floor of this
    object model (copying the tree's inode objects and nothing else), and
    the ceiling of an array model, a bare numba copy of the same inodes'
    fields and stamps.  Each copy is timed with the ``sync`` that writes
    back its delayed data, as vfs pays it."""
    import time

    import numpy as np

    from tests.reference.copy_tree import copy_tree_per_path

    _warm()

    def setup():
        fs = mkfs(PlainDevice("20G"), fstype)
        _image_like_tree(fs, "/src")
        return (fs,), {}

    def per_path_s() -> float:
        (fs,), _ = setup()
        t0 = time.perf_counter()
        copy_tree_per_path(fs, "/src", "/dst")
        fs.sync()
        return time.perf_counter() - t0

    def objects_s() -> float:
        (fs,), _ = setup()
        nodes = [fs.inodes[ino] for ino in fs.inodes.keys()]
        t0 = time.perf_counter()
        [n._copy() for n in nodes]
        return time.perf_counter() - t0

    (fs,), _ = setup()
    made = fs.clone_tree("/src", "/warm")      # warm the kernels once, untimed
    cols, stamps = _tree_arrays(fs, "/src")
    cols_out, stamps_out = np.empty_like(cols), np.empty_like(stamps)
    _bare_copy(cols, stamps, cols_out, stamps_out)

    def numba_s() -> float:
        t0 = time.perf_counter()
        _bare_copy(cols, stamps, cols_out, stamps_out)
        return time.perf_counter() - t0

    per_path = min(per_path_s() for _ in range(3))
    objects = min(objects_s() for _ in range(3))
    ceiling = min(numba_s() for _ in range(5))
    assert np.array_equal(cols_out, cols) and np.array_equal(stamps_out, stamps)
    benchmark.pedantic(lambda fs: (fs.clone_tree("/src", "/dst"), fs.sync()), setup=setup, rounds=3, iterations=1)
    t = benchmark.stats.stats.min
    benchmark.extra_info.update({"entries": made, "seconds": t, "per_path_s": per_path, "objects_s": objects,
                                 "numba_copy_s": ceiling})
    print(f"\nclone_tree + sync {fstype}: {made} entries in {t:.3f} s ({made / t:,.0f} entries/s, {t / made * 1e6:.1f} us "
          f"each); per-path copy {per_path:.3f} s ({per_path / t:.2f}x slower); copying the inode objects alone "
          f"{objects:.3f} s (the clone takes {t / objects:.1f}x that); a bare numba copy of the same fields and "
          f"{len(stamps):,} stamps {ceiling * 1e3:.2f} ms (the clone takes {t / ceiling:,.0f}x that)")
    assert made == 6669
    assert cols.shape[1] == made - 1
    assert t < per_path

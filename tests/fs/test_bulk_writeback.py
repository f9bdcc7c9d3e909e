"""ext4's writeback kernel (``BulkClone.writeback``, thinp.fs._clone_kernels.
writeback_plan) against the per-inode writeback it replaces
(``Filesystem.writeback``: ``_flush_inode`` for each delayed inode): on the
same filesystem the whole state -- extents, block bitmap and hints, the
locality-group window, dirty and journal sets, commits, the device's
counters -- must come out identical."""
from __future__ import annotations

import numpy as np
import pytest

from tests.fs.test_clone_tree import assert_same
from thinp.blockdev import PlainDevice
from thinp.fs import mkfs
from thinp.fs.core import Filesystem
from thinp.fs.ext4 import Ext4


def _tree(fs, seed: int) -> None:
    """Files of 1 block to a few MiB in a few directories, then a fill of
    the free space but for the holes of every third small file (so the last
    files split into several extents); some files appended to after a sync
    (extents already, dirty pages: the per-inode path's)."""
    rng = np.random.default_rng(seed)
    fs.mkdir("/d", 0o755)
    for i in range(6):
        fs.mkdir(f"/d/s{i}", 0o755)
    sizes = rng.choice([1, 100, 4096, 9000, 60_000, 70_000, 300_000, 2_100_000, 9_000_000], size=400)
    for i, size in enumerate(sizes.tolist()):
        p = f"/d/s{i % 6}/f{i}"
        fs.create(p, 0o644)
        fs.write(p, 0, size)
        if i % 50 == 7:
            fs.sync()
    fs.sync()
    fs.create("/fill", 0o644)
    fs.write("/fill", 0, (fs._free_blocks() - fs._reserved_blocks() - 3000) * 4096)
    fs.sync()
    fs.mkdir("/h", 0o755)
    for i in range(1400):                           # then a checkerboard of 2-block holes
        fs.create(f"/h/x{i}", 0o644)
        fs.write(f"/h/x{i}", 0, 8192)
    fs.sync()
    for i in range(0, 1400, 2):
        fs.unlink(f"/h/x{i}")
    for i in range(0, 400, 3):
        if sizes[i] <= 300_000:                     # holes of at most 74 blocks
            fs.unlink(f"/d/s{i % 6}/f{i}")
    fs.sync()
    for i in range(1, 400, 3):
        p = f"/d/s{i % 6}/f{i}"
        fs.write(p, fs.stat(p).st_size, 5000)       # an append: mapped, then delayed
        fs.write(p, 0, 10)                          # a dirty page
    room = (fs._free_blocks() - fs._reserved_blocks()) * 4096 * 6 // 10
    i = 0
    while True:
        size = int(rng.choice([50, 5000, 20_000, 70_000, 1_500_000]))
        if size > room:
            break
        room -= size
        p = f"/d/s{i % 6}/g{i}"
        fs.create(p, 0o644)
        fs.write(p, 0, size)
        i += 1


@pytest.mark.parametrize("commit_blocks", [4096, 12])
@pytest.mark.parametrize("seed", [1, 2])
def test_writeback_kernel_matches_per_inode_writeback(monkeypatch, seed, commit_blocks):
    by_kernel = []
    real = Ext4._wb_materialize
    monkeypatch.setattr(Ext4, "_wb_materialize", lambda fs, nodes, nblk, ext, eoff, k0, k1: (
        by_kernel.extend(nodes[k0:k1]), real(fs, nodes, nblk, ext, eoff, k0, k1)))
    a, b = (mkfs(PlainDevice("1G"), "ext4") for _ in range(2))
    for fs in (a, b):
        fs.commit_blocks = commit_blocks
        fs.writeback_blocks = 1 << 40       # no writeback until the one compared
        _tree(fs, seed)
    assert_same(a, b)
    assert len(b._delayed_inodes) > 120
    Filesystem.writeback(a)                 # per inode
    by_kernel.clear()
    commits = b.counters["commits"]
    b.writeback()
    assert_same(a, b)
    assert len(by_kernel) > 10              # the kernel wrote the new files back
    assert any(len(n.extents) > 4 for n in by_kernel)   # some split into an extent tree
    if commit_blocks < 100:
        assert b.counters["commits"] > commits          # a commit inside the kernel's run
    a.commit()
    b.commit()
    assert_same(a, b)
    b.check()

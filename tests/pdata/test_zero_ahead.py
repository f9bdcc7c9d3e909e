"""Zeroing the holes of the sparse metadata file ahead of the allocator
(BlockManager.zero_holes, TransactionManager.zero_ahead): only free holes
are written, bytes never change, and a pool's commit leaves the blocks past
its cursor backed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from thinp.pdata.block import BLOCK_SIZE, BlockManager
from thinp.thin.pool_metadata import PoolMetadata


def _holes(fd, nr):
    """bool per block: a hole of the file (SEEK_DATA/SEEK_HOLE)."""
    out = np.ones(nr, dtype=bool)
    pos = 0
    while pos < nr * BLOCK_SIZE:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out[d // BLOCK_SIZE:-(-h // BLOCK_SIZE)] = False
        pos = h
    return out


def _pool_after_one_commit(path):
    """A pool over a sparse metadata file whose first commit mapped 50,000
    blocks (skipped where the filesystem reports no holes)."""
    md = PoolMetadata.format(path, nr_metadata_blocks=65536, nr_data_blocks=1 << 20, data_block_sectors=128)
    if _holes(md.bm.fd, 65536).sum() == 0:
        md.close(commit=False)
        pytest.skip("this filesystem reports no holes (SEEK_DATA/SEEK_HOLE)")
    md.create_thin(0)
    md.write_blocks(0, np.arange(50_000))
    md.commit()
    return md


@pytest.fixture
def sparse(tmp_path):
    p = tmp_path / "m"
    with open(p, "wb") as f:
        f.truncate(64 * BLOCK_SIZE)
    bm = BlockManager.open_file(str(p), writable=True)
    if not _holes(bm.fd, 64).all():
        bm.close()
        pytest.skip("this filesystem reports no holes (SEEK_DATA/SEEK_HOLE)")
    yield bm
    bm.close()


def test_zero_holes_writes_only_free_holes(sparse):
    bm = sparse
    bm.blocks[10, :] = 7  # data written through the mapping, not written back
    free = np.ones(64, dtype=bool)
    free[20:24] = False  # in use (or committed): never written
    before = np.array(bm.blocks).copy()
    n = bm.zero_holes(0, 64, free)
    holes = _holes(bm.fd, 64)
    assert n == 64 - 1 - 4
    assert holes[20:24].all() and not holes[:20].any() and not holes[24:].any()
    assert np.array_equal(np.array(bm.blocks), before)  # every byte as it was
    assert bm.zero_holes(0, 64, free) == 0  # remembered: nothing twice
    assert not bm.may_have_holes(0, 20, free[:20])
    assert bm.may_have_holes(20, 24, np.ones(4, dtype=bool))  # freed later: looked at again
    assert bm.zero_holes(20, 24, np.ones(4, dtype=bool)) == 4


def test_read_only_and_in_memory_managers_write_nothing(tmp_path):
    p = tmp_path / "m"
    with open(p, "wb") as f:
        f.truncate(16 * BLOCK_SIZE)
    bm = BlockManager.open_file(str(p))
    try:
        assert bm.zero_holes(0, 16, np.ones(16, dtype=bool)) == 0
    finally:
        bm.close()
    assert BlockManager.in_memory(16).zero_holes(0, 16, np.ones(16, dtype=bool)) == 0


def test_commit_backs_the_blocks_past_the_cursor(tmp_path):
    md = _pool_after_one_commit(str(tmp_path / "m"))
    try:
        cursor = md.tm.begin
        md.bm.wait_zeroing()  # the zeroing for the next transaction runs behind the commit
        holes = _holes(md.bm.fd, 65536)
        used = md.tm.count != 0
        assert not holes[used].any()  # (every block in use was written)
        # the next transaction's blocks are backed: at least ZERO_AHEAD_MIN past the cursor
        assert not holes[cursor:cursor + 1024].any()
        # ... and not the whole file: a bounded window (2 x (1024 + the
        # transaction's ~1,000 allocations)) ahead of a cursor near 1,000
        assert cursor < 4096 and holes[16384:].all()
        # zeroed free blocks read as the holes did
        assert not np.asarray(md.bm.blocks[cursor:cursor + 1024]).any()
    finally:
        md.close(commit=False)


def test_zeroing_behind_is_over_before_the_next_allocation(tmp_path):
    """The zeroing a commit leaves to a thread (zero_ahead(..., behind=True),
    its last step) is waited for by the first use of the free-block array
    (every allocation's), so no block is handed out while zeros may still
    land in it; it writes only free holes, and the pool goes on."""
    md = _pool_after_one_commit(str(tmp_path / "m"))
    try:
        md.tm.free  # (waits for the commit's own zeroing behind, if any)
        cursor = md.tm.begin
        before = np.array(md.bm.blocks).copy()
        assert _holes(md.bm.fd, 65536)[cursor + 8192:cursor + 16384].all()
        n0 = md.bm.zero_stats[0]
        assert md.tm.zero_ahead(8192, behind=True) == 0  # returns at once: the thread does it
        md.tm.free  # what every allocation asks for first
        assert md.bm._zeroing is None
        assert md.bm.zero_stats[0] - n0 >= 8192  # 2 x 8,192 past the cursor, less what was backed
        assert not _holes(md.bm.fd, 65536)[cursor:cursor + 16384].any()
        assert np.array_equal(np.array(md.bm.blocks), before)  # no byte changed
        md.write_blocks(0, np.arange(50_000, 300_000))  # allocates from the zeroed blocks on
        md.commit()
        md.close(commit=False)  # waits for any zeroing behind before closing the file
        assert md.bm._zeroing is None
        md = PoolMetadata.open(str(tmp_path / "m"))  # (checked as thin_check does)
        assert md.lookup(0, 299_999) is not None and md.lookup(0, 0) is not None
    finally:
        md.close(commit=False)


def test_zeroing_behind_flushes_only_when_the_pool_syncs(tmp_path, monkeypatch):
    """A pool with sync off flushes nothing at its commits; the zeroing its
    commit leaves behind must not flush either (the thread's fdatasync is for
    a syncing pool's next barrier)."""
    import os

    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    for sync in (False, True):
        md = _pool_after_one_commit(str(tmp_path / f"m{sync}"))
        try:
            md.tm.free  # (waits for the commit's own zeroing behind, if any)
            cursor = md.tm.begin
            assert _holes(md.bm.fd, 65536)[cursor + 8192:cursor + 16384].all()
            del calls[:]
            n0 = md.bm.zero_stats[0]
            assert md.tm.zero_ahead(8192, behind=True, sync=sync) == 0
            md.tm.free  # waits for the thread
            assert md.bm.zero_stats[0] - n0 >= 8192  # it did zero
            assert (md.bm.fd in calls) == sync
        finally:
            md.close(commit=False)


def test_the_commit_zeroes_ahead_only_for_its_own_shadows(tmp_path):
    """A commit's foreground zeroing asks for the blocks its own part took
    last time (TransactionManager.commit_allocs, measured from
    zero_for_commit to end_transaction), not for the transaction's writes,
    whose blocks are behind the cursor: where the cursor has run into holes
    it zeroes twice that many, and nothing further."""
    md = _pool_after_one_commit(str(tmp_path / "m"))
    try:
        tm = md.tm
        md.bm.wait_zeroing()
        took = tm.commit_allocs  # the first commit's own shadows
        assert 0 < took < 64 and took < (tm.nr_allocs - took) // 10  # the writes took the rest
        md.write_blocks(0, np.arange(50_000, 50_100))
        a0 = tm.nr_allocs
        real_seal = tm.seal_dirty
        seen = {}

        def seal():
            seen["own"] = tm.nr_allocs - seen["from"]
            return real_seal()

        def zero_for_commit():
            seen["from"] = tm.nr_allocs
            seen["zeroed"] = type(tm).zero_for_commit(tm)
            return seen["zeroed"]

        tm.seal_dirty = seal
        tm.zero_for_commit = zero_for_commit
        md.commit()
        assert tm.nr_allocs > a0 and 0 < seen["own"] <= tm.commit_allocs == tm.nr_allocs - seen["from"]
        assert seen["zeroed"] == 0  # the last commit's zeroing behind covers them
        md.bm.wait_zeroing()
        # the cursor put among holes, past every zeroed block
        holes = _holes(md.bm.fd, 65536)
        far = 40_000
        assert holes[far:].all() and tm.free[far:].all()
        tm.begin = far
        tm.commit_allocs = 3
        assert type(tm).zero_for_commit(tm) == 6
        holes = _holes(md.bm.fd, 65536)
        assert not holes[far:far + 6].any() and holes[far + 6:].all()
        tm.commit_allocs = 0
        tm.begin = far + 100
        assert type(tm).zero_for_commit(tm) == 0
    finally:
        md.close(commit=False)

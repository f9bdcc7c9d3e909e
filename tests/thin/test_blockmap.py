"""thinp.thin.block_map: exclusive and shared blocks after known writes and snapshots."""
from __future__ import annotations

import numpy as np
import pytest

from thinp import errors
from thinp.thin import ThinPool, block_map
from thinp.thin.blockmap import EXCLUSIVE, SHARED, UNMAPPED
from thinp.thin.ls import ls, parse_format

BS = 64 * 1024


def chain(tmp_path):
    """origin 0 (8 of 16 blocks written) -> snap 1 (4 KiB into block 2) -> snap 2;
    then the origin overwrites block 5 whole."""
    pool = ThinPool.create(tmp_path / "pool", data_size=64 * BS, block_size=BS)
    origin = pool.create_thin(0, 16 * BS)
    origin.write(0, 8 * BS)
    pool.create_snap(1, 0).write(2 * BS + 4096, 4096)   # CoW: a new block for snap 1
    pool.create_snap(2, 1)                               # shares snap 1's tree
    origin.write(5 * BS, BS)                             # whole block: a new block, no copy
    return pool


def test_counts_after_cow_match_the_sequence(tmp_path):
    pool = chain(tmp_path)
    bm = block_map(pool)
    assert bm.pblocks.shape == (3, 16)
    assert list(bm.mapped_blocks()) == [8, 8, 8]
    # the origin's old block 2 and its new block 5 are its own; the rest is shared three ways
    assert list(bm.exclusive_blocks()) == [2, 0, 0]
    assert list(bm.shared_blocks()) == [6, 8, 8]
    s = bm.state
    assert list(s[0, :8]) == [SHARED, SHARED, EXCLUSIVE, SHARED, SHARED, EXCLUSIVE, SHARED, SHARED]
    assert (s[:, 8:] == UNMAPPED).all() and (bm.pblocks[:, 8:] == -1).all()
    # snapshots 1 and 2 map the same blocks; the origin differs at 2 and 5
    assert (bm.pblocks[1] == bm.pblocks[2]).all()
    assert list(np.flatnonzero(bm.pblocks[0] != bm.pblocks[1])) == [2, 5]
    assert list(bm.refs[0, :8]) == [3, 3, 1, 3, 3, 1, 3, 3]
    assert list(bm.refs[1, :8]) == [3, 3, 2, 3, 3, 2, 3, 3]
    assert bm.shared_matrix().tolist() == [[8, 6, 6], [6, 8, 8], [6, 8, 8]]
    df = bm.to_frame()
    assert df["exclusive_bytes"].tolist() == [2 * BS, 0, 0]
    pool.close()


def test_agrees_with_thin_ls(tmp_path):
    pool = chain(tmp_path)
    bm = block_map(pool)
    pool.close()
    lines = ls(tmp_path / "pool", parse_format("DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"), headers=False).splitlines()
    got = [[int(c) for c in line.split()[1:4]] for line in lines]
    want = [[int(m), int(e), int(s)] for m, e, s in
            zip(bm.mapped_blocks(), bm.exclusive_blocks(), bm.shared_blocks())]
    assert got == want


def test_window_and_subset_still_count_sharing_pool_wide(tmp_path):
    pool = chain(tmp_path)
    bm = block_map(pool, dev_ids=[2, 0], begin=4, end=8)
    assert list(bm.dev_ids) == [2, 0] and bm.pblocks.shape == (2, 4)
    # device 1 is not shown, yet its mappings keep device 2's blocks shared
    assert list(bm.exclusive_blocks()) == [0, 1]
    assert list(bm.refs[0]) == [3, 2, 3, 3]
    with pytest.raises(errors.DeviceNotFoundError):
        block_map(pool, dev_ids=[7])
    with pytest.raises(ValueError):
        block_map(pool, begin=5, end=2)
    pool.close()


def test_delete_makes_blocks_exclusive_again(tmp_path):
    pool = chain(tmp_path)
    pool.delete(2)
    pool.delete(1)
    bm = block_map(pool)
    assert list(bm.exclusive_blocks()) == [8] and list(bm.shared_blocks()) == [0]
    pool.close()

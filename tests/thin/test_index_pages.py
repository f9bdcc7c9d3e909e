"""The volatile index's page policy (thinp.thin.index): small pages while
it is sparse, huge pages from the commit that finds it dense."""
from __future__ import annotations

import numpy as np

import thinp
from thinp.pdata import radix as K
from thinp.thin.index import DENSE_MAPPINGS_PER_NODE, DENSE_MIN_NODES
from thinp.trace import TRACE_DTYPE, WRITE

BS = 64 * 1024


def _writes(vblocks, length=4096):
    t = np.zeros(len(vblocks), dtype=TRACE_DTYPE)
    t["op"] = WRITE
    t["offset"] = np.asarray(vblocks, dtype=np.uint64) * BS
    t["length"] = length
    return t


def _index(pool):
    return pool._md  # (the index is the pool's own; no public handle)


def test_random_provisioning_leaves_the_index_in_small_pages(tmp_path):
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "1T")
    pool.create_thin(0, "1T")
    vbs = np.random.default_rng(5).choice((1 << 40) // BS, 20_000, replace=False)
    pool.replay(_writes(vbs))
    pool.commit()
    md = _index(pool)
    nodes = int(md.sp.scal[K.S_MUSED])
    assert nodes >= DENSE_MIN_NODES  # many nodes, few mappings each
    assert md.dv.mapped.sum() < DENSE_MAPPINGS_PER_NODE * nodes
    assert not md.huge
    pool.close()
    pool = thinp.ThinPool.open(str(tmp_path / "p"))
    assert not _index(pool).huge
    pool.close()


def test_a_dense_index_moves_to_huge_pages_at_its_commit(tmp_path):
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "64G")
    dev = pool.create_thin(0, "32G")
    full = np.zeros(1, dtype=TRACE_DTYPE)
    full[0] = (0, WRITE, 0, dev.size)
    pool.replay(full)
    md = _index(pool)
    assert not md.huge  # (nothing decided between commits)
    pool.commit()
    assert int(md.sp.scal[K.S_MUSED]) >= DENSE_MIN_NODES and md.huge
    assert dev.mapped_blocks == dev.size // BS
    pool.close()
    pool = thinp.ThinPool.open(str(tmp_path / "p"))
    assert _index(pool).huge  # the open's fill is dense too
    assert pool.device(0).mapped_blocks == (32 << 30) // BS
    pool.close()

"""The volatile index's page policy (thinp.thin.index): small pages while
it is sparse or growing, huge pages from the first replay that finds it
dense and serves it more lookups than mapping changes."""
from __future__ import annotations

import numpy as np

import thinp
from thinp.pdata import radix as K
from thinp.thin.index import DENSE_MAPPINGS_PER_NODE, DENSE_MIN_NODES
from thinp.trace import READ, TRACE_DTYPE, WRITE

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


def test_a_dense_index_moves_to_huge_pages_when_it_serves_lookups(tmp_path):
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "64G")
    dev = pool.create_thin(0, "32G")
    full = np.zeros(1, dtype=TRACE_DTYPE)
    full[0] = (0, WRITE, 0, dev.size)
    pool.replay(full)
    md = _index(pool)
    pool.commit()
    assert int(md.sp.scal[K.S_MUSED]) >= DENSE_MIN_NODES
    assert not md.huge  # dense, but the replay that filled it only changed mappings
    nr = dev.size // BS
    pool.replay(_writes(np.random.default_rng(3).integers(0, nr, 1000)))  # overwrites
    assert md.huge
    assert dev.mapped_blocks == nr
    pool.close()
    pool = thinp.ThinPool.open(str(tmp_path / "p"))
    assert _index(pool).huge  # the open's fill is dense too
    assert pool.device(0).mapped_blocks == (32 << 30) // BS
    pool.close()


def test_sequential_provisioning_across_commits_stays_in_small_pages(tmp_path):
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "64G", commit_interval=100_000)
    pool.create_thin(0, "32G")
    n = 300_000  # (two commits find the index dense: ~500 mappings a node)
    res = pool.replay(_writes(np.arange(n)))
    md = _index(pool)
    assert res["nr_provisioned"] == n
    assert int(md.sp.scal[K.S_OPS_SINCE_COMMIT]) < n  # (the commits ran)
    assert int(md.sp.scal[K.S_MUSED]) >= DENSE_MIN_NODES
    assert int(md.dv.mapped.sum()) >= DENSE_MAPPINGS_PER_NODE * int(md.sp.scal[K.S_MUSED])
    assert not md.huge
    # reads of what it wrote are lookups: now it moves
    reads = _writes(np.arange(0, n, 7))
    reads["op"] = READ
    pool.replay(reads)
    assert md.huge
    pool.close()


def _mapping_after(tmp_path, name, vbs):
    pool = thinp.ThinPool.create(str(tmp_path / name), "1T")
    pool.create_thin(0, "1T")
    pool.replay(_writes(vbs))
    got = [a.copy() for a in pool.device(0).mapping()]
    mm = _index(pool).mm
    pool.close()
    return got, mm


def test_a_closed_index_leaves_its_node_array_to_the_next_one(tmp_path):
    """The next pool's index takes the closed one's node array, nodes and
    all, and maps exactly what it maps in a fresh array: a node is zeroed
    when allocated, never read before."""
    from thinp.thin import index as I

    rng = np.random.default_rng(11)
    first = rng.choice((1 << 40) // BS, 3000, replace=False)
    then = rng.choice((1 << 40) // BS, 3000, replace=False)
    _, mm1 = _mapping_after(tmp_path, "a", first)
    assert I._SPARE == [mm1]  # (kept, its nodes still holding the first pool's entries)
    recycled, mm2 = _mapping_after(tmp_path, "b", then)
    assert mm2 is mm1
    I._SPARE.clear()  # (the next build maps a fresh array)
    fresh, mm3 = _mapping_after(tmp_path, "c", then)
    assert mm3 is not mm1
    for a, b in zip(recycled, fresh):
        assert np.array_equal(a, b)
    assert len(recycled[0]) == 3000


def test_a_node_array_still_viewed_is_not_recycled(tmp_path):
    from thinp.thin import index as I

    I._SPARE.clear()
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "1G")
    pool.create_thin(0, "1G")
    pool.replay(_writes(np.arange(100)))
    held = _index(pool).meta[1]  # a caller's view outlives the pool
    pool.close()
    assert I._SPARE == []
    assert held.shape == (K.NODE_ENTRIES,)


def test_a_fresh_index_builds_its_space_without_reading_its_data_counts(tmp_path):
    """A new pool's data counts are known zero: its allocation bitmap (the
    bits past the last block set) is built without reading them, and is the
    one read from them would give."""
    pool = thinp.ThinPool.create(str(tmp_path / "p"), 1000 * BS)  # (1000 blocks: a part word)
    sp = _index(pool).sp
    assert np.array_equal(sp.dbits, K.make_bitmap(np.zeros(1000, dtype=bool), 1000))
    assert int(sp.scal[K.S_DUSED]) == 0
    dev = pool.create_thin(0, 2000 * BS)
    pool.replay(_writes(np.arange(1000)))
    assert dev.mapped_blocks == 1000 and pool.nr_free_data_blocks == 0
    pool.close()

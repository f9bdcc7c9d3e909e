"""thin_repair's numba reads (pdata.salvage) against the Python btree walk:
the tolerant walk, the block scan, the choice of roots, the reference count."""
from __future__ import annotations

import numpy as np
import pytest

from thinp import errors
from thinp.pdata import btree, salvage
from thinp.pdata.block import BTREE_NODE, BlockManager
from thinp.thin.format import DETAILS_SIZE, read_superblock
from thinp.thin.pool_metadata import PoolMetadata


def _pool(path, commits=True):
    md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=60000, data_block_sectors=128)
    md.sync = False
    md.create_thin(7)
    md.write_blocks(7, np.arange(20000))  # a root, internal nodes, leaves
    if commits:
        md.commit()
    md.create_snap(12, 7)
    md.write_blocks(12, np.random.default_rng(4).choice(30000, 500, replace=False))
    md.create_thin(900)
    md.write_blocks(900, np.array([5, 1 << 40, 77]))
    md.commit()
    md.close()


def _open(path):
    bm = BlockManager.open_file(str(path))  # a private mapping: changes stay in memory
    return bm, read_superblock(bm)


def _subtree_root(bm, sb, dev):
    return int(btree.lookup(bm, sb.data_mapping_root, dev, 8).view("<u8")[0])


def test_an_intact_tree_reads_as_the_python_walk(tmp_path):
    _pool(tmp_path / "m")
    bm, sb = _open(tmp_path / "m")
    try:
        for root, vs in [(sb.data_mapping_root, 8), (sb.device_details_root, DETAILS_SIZE),
                         (_subtree_root(bm, sb, 7), 8), (_subtree_root(bm, sb, 12), 8)]:
            got = salvage.tolerant_collect(bm, root, vs)
            k, v = btree.collect(bm, root, vs)
            assert got.keys.tolist() == k.tolist()
            assert np.array_equal(got.values, v)
            assert got.damaged == []
        b, depth = _subtree_root(bm, sb, 7), 0
        while not btree.read_node(bm, b, 8).is_leaf:
            b, depth = int(btree.read_node(bm, b, 8).values64()[0]), depth + 1
        assert depth >= 1
        assert salvage.tolerant_collect(bm, _subtree_root(bm, sb, 7), 8).leaf_depth == depth
    finally:
        bm.close()


def test_damaged_nodes_are_skipped_and_recorded(tmp_path):
    _pool(tmp_path / "m")
    bm, sb = _open(tmp_path / "m")
    try:
        root = _subtree_root(bm, sb, 7)
        n = btree.read_node(bm, root, 8)
        assert not n.is_leaf
        leaf = int(n.values64()[2])
        assert btree.read_node(bm, leaf, 8).is_leaf
        lo, hi = int(n.keys()[2]), int(n.keys()[3])
        before = salvage.tolerant_collect(bm, root, 8)
        bm.blocks[leaf, 1000] ^= 0xFF  # its checksum fails
        got = salvage.tolerant_collect(bm, root, 8)
        assert got.damaged == [(leaf, lo, hi, 1)]
        keep = (before.keys < lo) | (before.keys >= hi)
        assert got.keys.tolist() == before.keys[keep].tolist()
        # a child outside the device: recorded at its parent's entry, the walk goes on
        nr = n.nr_entries
        last = int(n.values64()[nr - 1])
        n.values64()[nr - 1] = bm.blocks.shape[0] + 5
        n.h32[0] = BTREE_NODE.checksum(bm.blocks[root])
        got = salvage.tolerant_collect(bm, root, 8)
        assert got.damaged[-1] == (bm.blocks.shape[0] + 5, int(n.keys()[nr - 1]), 1 << 64, 1)
        assert got.keys.tolist() == before.keys[keep & (before.keys < n.keys()[nr - 1])].tolist()
        n.values64()[nr - 1] = last
        n.h32[0] = BTREE_NODE.checksum(bm.blocks[root])
        # a lost root: all of it recorded, nothing read
        got = salvage.tolerant_collect(bm, 0, 8)
        assert got.damaged == [(0, 0, 1 << 64, 0)] and len(got.keys) == 0 and got.leaf_depth is None
    finally:
        bm.close()


def test_the_scan_finds_the_nodes_read_node_accepts(tmp_path):
    _pool(tmp_path / "m")
    bm, sb = _open(tmp_path / "m")
    try:
        victim = _subtree_root(bm, sb, 12)
        bm.blocks[victim, 3000] ^= 1
        kind = salvage.scan(bm)
        for b in range(1, bm.blocks.shape[0]):
            try:
                n = btree.read_node(bm, b)
                want = 2 if n.is_leaf else 1
            except errors.MetadataCorruptError:
                want = 0
            assert kind[b] == want, b
        assert kind[victim] == 0 and kind[sb.data_mapping_root] != 0
    finally:
        bm.close()


def test_roots_found_by_scan_are_the_superblocks(tmp_path):
    # one commit after the format: no stale copy of a non-empty top level
    _pool(tmp_path / "m", commits=False)
    bm, sb = _open(tmp_path / "m")
    try:
        kind = salvage.scan(bm)
        assert salvage.find_roots(bm, kind, DETAILS_SIZE) == (sb.data_mapping_root, sb.device_details_root)
    finally:
        bm.close()


def test_reference_counts_match_the_python_walk(tmp_path):
    _pool(tmp_path / "m")
    bm, sb = _open(tmp_path / "m")
    try:
        roots = [(_subtree_root(bm, sb, d), 8) for d in (7, 12, 900)]
        roots += [(sb.data_mapping_root, 8), (sb.device_details_root, DETAILS_SIZE)]
        refs = salvage.count_refs(bm, roots)
        seen: dict = {}
        for r, vs in roots:
            btree.walk(bm, r, vs, lambda *a: None, seen=seen)
        assert {b: int(refs[b]) for b in np.flatnonzero(refs).tolist()} == seen
        assert max(seen.values()) >= 2  # the snapshot shares nodes
    finally:
        bm.close()


@pytest.mark.parametrize("split", ["halves", "current"])
def test_bulk_insert_writes_the_loops_image(tmp_path, split):
    rng = np.random.default_rng(9)
    vb = np.sort(rng.choice(1 << 20, 30000, replace=False))
    pb = rng.permutation(40000)[:30000]
    tm = rng.integers(0, 5, 30000)
    for name, bulk in (("loop", False), ("bulk", True)):
        md = PoolMetadata.format(tmp_path / name, nr_metadata_blocks=2048, nr_data_blocks=40000,
                                 data_block_sectors=128, split=split)
        md.sync = False
        for dev in (1, 2):
            md.create_thin(dev)
            k = vb[dev - 1::2]
            if bulk:
                assert md.insert_block_times(dev, k, pb[dev - 1::2], tm[dev - 1::2]) == len(k)
            else:
                for v, p, t in zip(k.tolist(), pb[dev - 1::2].tolist(), tm[dev - 1::2].tolist()):
                    md.insert_block_time(dev, v, p, t)
        md.close()
    assert (tmp_path / "loop").read_bytes() == (tmp_path / "bulk").read_bytes()
    md = PoolMetadata.open(tmp_path / "bulk")
    try:
        with pytest.raises(ValueError, match="data block 40000 outside the 40000 data blocks"):
            md.insert_block_times(1, np.array([1]), np.array([40000]), np.array([0]))
    finally:
        md.close(commit=False)

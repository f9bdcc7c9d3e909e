"""The one numba leaf walk reads the same mappings, and counts the same
references, as the Python btree walk."""
from __future__ import annotations

import random

import numpy as np
import pytest

from thinp import errors
from thinp.pdata.block import BlockManager
from thinp.pdata import btree
from thinp.pdata import mapping_tree as MT
from thinp.pdata.btree import collect
from thinp.pdata.mapping_index import collect as collect_trees
from thinp.pdata.mapping_index import device_mappings, mapping_index
from thinp.thin.format import read_superblock
from thinp.thin.pool_metadata import PoolMetadata


def _pool(path):
    rng = random.Random(3)
    md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=50000, data_block_sectors=128)
    md.sync = False
    md.create_thin(7)
    md.write_blocks(7, np.arange(20000))  # several levels of internal nodes
    md.create_thin(3)  # an empty device
    md.create_snap(12, 7)
    md.write_blocks(12, np.array(rng.sample(range(30000), 500)))
    md.create_thin(900)
    md.write_blocks(900, np.array([5, 1 << 40, 77]))
    md.commit()
    md.close()


def test_walk_matches_the_python_walk(tmp_path):
    _pool(tmp_path / "m")
    bm = BlockManager.open_file(str(tmp_path / "m"))
    try:
        sb = read_superblock(bm)
        ix = mapping_index(bm, sb.data_mapping_root)
        top_keys, top_vals = collect(bm, sb.data_mapping_root, 8)
        assert ix.devs.tolist() == top_keys.tolist() == [3, 7, 12, 900]
        assert ix.roots.tolist() == top_vals.reshape(-1).view("<u8").tolist()
        for j, dev in enumerate(ix.devs.tolist()):
            keys, vals = collect(bm, int(ix.roots[j]), 8)
            vb, v = ix.device(dev)
            one_k, one_v = device_mappings(bm, int(ix.roots[j]))
            assert one_k.tolist() == vb.tolist() and one_v.tolist() == v.tolist()
            assert vb.tolist() == keys.tolist()
            assert v.tolist() == vals.reshape(-1).view("<u8").tolist()
        assert len(ix.device(7)[0]) == 20000 and len(ix.device(3)[0]) == 0
        assert ix.device(900)[0].tolist() == [5, 77, 1 << 40]
        assert len(ix.device(4)[0]) == 0  # no such device
        assert ix.begin[-1] == len(ix.vblock) == sum(len(ix.device(d)[0]) for d in (3, 7, 12, 900))
    finally:
        bm.close()


def test_a_broken_node_is_named(tmp_path):
    _pool(tmp_path / "m")
    bm = BlockManager.open_file(str(tmp_path / "m"))  # a private mapping: the file is untouched
    try:
        sb = read_superblock(bm)
        ix = mapping_index(bm, sb.data_mapping_root)
        root7 = int(ix.roots[1])
        leaf = int(bm.blocks[root7].view("<u8")[4 + 252])  # the first child of device 7's root
        bm.blocks[leaf].view("<u4")[5] = 999  # max_entries
        with pytest.raises(errors.MetadataCorruptError, match=f"thin device 7's mapping tree: btree node {leaf} "):
            mapping_index(bm, sb.data_mapping_root)
        bm.blocks[leaf].view("<u4")[5] = 252
        keys = bm.blocks[leaf].view("<u8")[4:4 + 252]
        keys[3], keys[4] = keys[4], keys[3]
        with pytest.raises(errors.MetadataCorruptError, match="out of order"):
            mapping_index(bm, sb.data_mapping_root)
    finally:
        bm.close()


def _leaves(w, root):
    """(block, fresh) of every leaf the walk ``w`` yields from ``root``."""
    assert MT.start(w, root) == 0
    out = []
    while True:
        b = MT.next_leaf(w)
        assert b >= 0, (b, int(w.bad[0]))
        if b == 0:
            return out
        out.append((int(b), bool(MT.leaf_fresh(w))))


def _shared_pool(path):
    md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=50000, data_block_sectors=128)
    md.sync = False
    md.create_thin(7)
    md.write_blocks(7, np.arange(20000))
    md.create_snap(12, 7)
    md.write_blocks(12, np.array([5, 10000]))   # two leaves unshared, the rest shared with 7
    md.create_snap(13, 12)                      # 12's whole tree shared
    md.create_thin(3)
    md.commit()
    md.close()


def test_shared_nodes_are_counted_and_skipped_or_revisited(tmp_path):
    """Device 12 is a snapshot of 7 that wrote 2 blocks, 13 a snapshot of
    12: most leaves are shared.  Counting references, the walk visits a shared node
    once (thin_check's walk, thin_rmap's first reach) with exactly the
    Python walk's reference counts; with W_REVISIT it also reads every
    device's whole tree (the index fill), the shared leaves not fresh."""
    _shared_pool(tmp_path / "m")
    bm = BlockManager.open_file(str(tmp_path / "m"))
    try:
        sb = read_superblock(bm)
        ix = mapping_index(bm, sb.data_mapping_root)
        assert ix.devs.tolist() == [3, 7, 12, 13]
        roots = ix.roots
        nb = bm.blocks.shape[0]
        # the Python walk's view: references per node, leaves first reached per device
        seen: dict = {}
        first = []
        for r in roots.tolist():
            ks = []
            btree.walk(bm, r, 8, lambda _n, k, _v: ks.append(k.copy()), seen=seen)
            first.append(np.concatenate(ks) if ks else np.zeros(0, np.uint64))
        assert sum(seen.values()) > len(seen)  # shared nodes exist
        for opts in (MT.W_VERIFY, MT.W_VERIFY | MT.W_REVISIT):
            w = MT.new_walk(bm.blocks, 8, opts, seen=np.zeros(nb, np.int32), under=np.zeros(nb, np.int64))
            fresh_leaves, all_leaves = [], []
            for j, r in enumerate(roots.tolist()):
                got = _leaves(w, r)
                fresh_leaves.append([b for b, f in got if f])
                all_leaves.append([b for b, _ in got])
                # the leaves first reached hold what the Python walk read first
                keys = [int(k) for b in fresh_leaves[-1] for k in bm.blocks[b].view("<u8")[4:4 + int(
                    bm.blocks[b].view("<u4")[4])]]
                assert keys == first[j].tolist()
                assert int(w.under[r]) == len(ix.device(int(ix.devs[j]))[0])   # the device's mapped count
            assert {b: int(c) for b, c in enumerate(w.seen) if c} == seen
            if opts & MT.W_REVISIT:
                for j, leaves in enumerate(all_leaves):  # each device's tree whole
                    n = sum(int(bm.blocks[b].view("<u4")[4]) for b in leaves)
                    assert n == len(ix.device(int(ix.devs[j]))[0])
                assert len(all_leaves[2]) > len(fresh_leaves[2])   # device 12 shares leaves with 7
                assert fresh_leaves[3] == [] and all_leaves[3] == all_leaves[2]   # 13 shares 12's root
            else:
                assert all_leaves == fresh_leaves
        # the CSR reader over the same walk, first reach only
        begin, v, _ = collect_trees(bm, roots, first_reach=True)
        assert [v[begin[j]:begin[j + 1]].tolist() for j in range(len(roots))] == [f.tolist() for f in first]
    finally:
        bm.close()


def test_verify_finds_a_bad_checksum_the_header_walk_does_not(tmp_path):
    _pool(tmp_path / "m")
    bm = BlockManager.open_file(str(tmp_path / "m"))
    try:
        sb = read_superblock(bm)
        ix = mapping_index(bm, sb.data_mapping_root)
        root7 = int(ix.roots[1])
        leaf = int(bm.blocks[root7].view("<u8")[4 + 252])
        vals = bm.blocks[leaf].view("<u8")[4 + 252:4 + 252 + 3]
        vals[1] ^= np.uint64(1 << 30)   # a mapping changed, the checksum left as it was
        assert len(device_mappings(bm, root7)[0]) == 20000
        with pytest.raises(errors.MetadataCorruptError, match=f"btree node {leaf} has a bad checksum"):
            device_mappings(bm, root7, verify=True)
    finally:
        bm.close()

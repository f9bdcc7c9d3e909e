"""The fast check names a damaged device tree exactly as the node-by-node
Python check does (it walks only the damaged tree in Python), and shapes()
from the numba walk counts what the Python walk counts."""
from __future__ import annotations

import numpy as np
import pytest

from thinp import errors
from thinp.pdata import btree
from thinp.pdata.block import BTREE_NODE
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.pool_metadata import PoolMetadata


def _build(path):
    md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=60000, data_block_sectors=128)
    md.sync = False
    md.create_thin(1)
    md.write_blocks(1, np.arange(15000))
    md.create_snap(2, 1)
    md.write_blocks(2, np.random.default_rng(2).choice(1500, 100, replace=False))
    md.create_thin(3)
    md.write_blocks(3, np.arange(0, 30000, 7))
    md.close()


def _leaf_of(path, dev, nth):
    with DmMetadata.open(path) as r:
        d = next(d for d in r.devices() if d.dev_id == dev)
        leaves = []
        btree.walk(r.bm, d.root, 8, lambda n, k, v: leaves.append(n.b))
        return leaves[nth]


def _damage(path, b, how):
    raw = np.memmap(path, dtype=np.uint8, mode="r+")
    blk = raw[b * 4096:(b + 1) * 4096]
    keys = blk[32:32 + 8 * 252].view("<u8")
    vals = blk[32 + 8 * 252:32 + 16 * 252].view("<u8")
    if how == "checksum":
        blk[2000] ^= 0x10
    elif how == "order":
        keys[3], keys[4] = keys[4], keys[3]
    elif how == "range":
        keys[0] = keys[0] + 100000
    elif how == "data":
        vals[5] = np.uint64(59999 + 70) << np.uint64(24)
    elif how == "header":
        blk[4:8].view("<u4")[0] = 3
    if how != "checksum":
        blk[:4].view("<u4")[0] = BTREE_NODE.checksum(np.array(blk))
    raw.flush()
    del raw


@pytest.mark.parametrize("how", ["checksum", "order", "range", "data", "header"])
@pytest.mark.parametrize("dev,nth", [(1, 5), (2, 0), (3, -1)])
def test_fast_check_names_damage_as_the_slow_check(tmp_path, how, dev, nth):
    path = tmp_path / "m"
    _build(path)
    b = _leaf_of(path, dev, nth)
    _damage(path, b, how)
    with DmMetadata.open(path) as r:
        with pytest.raises(errors.MetadataCorruptError) as slow:
            r.check(fast=False)
    with DmMetadata.open(path) as r:
        with pytest.raises(errors.MetadataCorruptError) as fast:
            r.check()
    assert str(fast.value) == str(slow.value)
    assert f"{b}" in str(fast.value)


def test_shapes_count_as_the_python_walk(tmp_path):
    path = tmp_path / "m"
    _build(path)
    with DmMetadata.open(path) as r:
        sh = r.shapes()
        want = btree.TreeShape()
        seen: dict = {}
        for d in r.devices():
            btree.walk(r.bm, d.root, 8, lambda *a: None, seen=seen, shape=want)
    assert (sh.subtrees.nr_leaves, sh.subtrees.nr_internal, sh.subtrees.nr_entries) == \
        (want.nr_leaves, want.nr_internal, want.nr_entries)
    assert sorted(sh.subtrees.blocks) == sorted(want.blocks)
    assert want.nr_entries < 15000 + 15000 + 30000 // 7  # the snapshot's shared leaves count once


def test_shapes_of_a_damaged_tree_name_it(tmp_path):
    path = tmp_path / "m"
    _build(path)
    b = _leaf_of(path, 3, 2)
    _damage(path, b, "checksum")
    with DmMetadata.open(path) as r:
        with pytest.raises(errors.MetadataCorruptError, match=f"btree node block {b}: bad checksum"):
            r.shapes()

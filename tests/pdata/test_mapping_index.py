"""The numba leaf walk reads the same mappings as the Python btree walk."""
from __future__ import annotations

import random

import numpy as np
import pytest

from thinp import errors
from thinp.pdata.block import BlockManager
from thinp.pdata.btree import collect
from thinp.pdata.mapping_index import mapping_index
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

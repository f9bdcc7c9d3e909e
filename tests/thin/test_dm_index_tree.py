"""The pre-5.14 model with a data space map index of several leaves (more than
168 bitmaps: pools above 168 * 16,320 = 2,741,760 data blocks).

Before 5.14 each data bitmap's index entry goes into the index tree as its
count first changes in a transaction (dm_btree_insert: the path from the
root to the entry's leaf is shadowed then).  The numba write path shadows
that path itself; the Python path inserts the entry with the Python btree.
Both must place every block alike, and the real tools must accept the
result."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from thinp.pdata import btree
from thinp.pdata.space_map import ENTRIES_PER_BITMAP
from thinp.thin import ThinPool
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.dump import dump
from thinp.thin.pool_metadata import PoolMetadata

from .dm_fixtures import real_tool

BLOCK = 4096


def _index_shape(path):
    with DmMetadata.open(path) as m:
        sh = btree.TreeShape()
        btree.walk(m.bm, m.sb.data_sm_root.bitmap_root, 16, lambda *a: None, shape=sh)
        return sh


def _build(path, nr_bitmaps, bulk, pblocks):
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=nr_bitmaps * ENTRIES_PER_BITMAP,
                             data_block_sectors=128, split="halves")
    md.sync = False
    md.create_thin(1)
    md.create_thin(2)
    md.commit()
    for dev, part in ((1, pblocks[:len(pblocks) // 2]), (2, pblocks[len(pblocks) // 2:])):
        vb = np.arange(len(part)) * 3
        if bulk:
            md.insert_block_times(dev, vb, part, np.zeros(len(part), np.int64), kernel=True)
        else:
            for v, p in zip(vb.tolist(), part.tolist()):
                md.insert_block_time(dev, v, p, 0, kernel=True)
        md.commit()
    md.close()


def _pblocks(nr_bitmaps, seed):
    rng = np.random.default_rng(seed)
    bitmaps = rng.choice(nr_bitmaps, 40, replace=True)
    return np.unique(bitmaps * ENTRIES_PER_BITMAP + rng.integers(0, ENTRIES_PER_BITMAP, 40))[::-1].copy()


@pytest.mark.parametrize("seed", range(3))
def test_kernel_and_python_paths_place_alike(tmp_path, seed):
    nr_bitmaps = 200  # index: a root over two leaves (84 + 116 entries)
    pb = _pblocks(nr_bitmaps, seed)
    _build(tmp_path / "python", nr_bitmaps, False, pb)
    _build(tmp_path / "kernel", nr_bitmaps, True, pb)
    sh = _index_shape(tmp_path / "kernel")
    assert (sh.nr_internal, sh.nr_leaves, sh.nr_entries) == (1, 2, nr_bitmaps)
    a = np.fromfile(tmp_path / "python", dtype=np.uint8).reshape(-1, BLOCK)
    b = np.fromfile(tmp_path / "kernel", dtype=np.uint8).reshape(-1, BLOCK)
    assert [i for i in range(len(a)) if not np.array_equal(a[i], b[i])] == []
    out = subprocess.run([real_tool("thin_check"), str(tmp_path / "kernel")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("nr_bitmaps", [168, 252])
def test_a_full_index_node_splits_as_dm_insert_does(tmp_path, nr_bitmaps):
    # 168 bitmaps: the index is one full leaf (dm's insert splits it
    # beneath at the first entry saved); 252: its last leaf holds 168, full
    # (split into a new right sibling)
    last = nr_bitmaps - 1
    pb = np.array([last * ENTRIES_PER_BITMAP + 5, 10, 100 * ENTRIES_PER_BITMAP + 3, (last - 1) * ENTRIES_PER_BITMAP,
                   (last - 90) * ENTRIES_PER_BITMAP + 7, 3 * ENTRIES_PER_BITMAP])
    _build(tmp_path / "kernel", nr_bitmaps, True, pb)
    _build(tmp_path / "python", nr_bitmaps, False, pb)
    a = np.fromfile(tmp_path / "python", dtype=np.uint8).reshape(-1, BLOCK)
    b = np.fromfile(tmp_path / "kernel", dtype=np.uint8).reshape(-1, BLOCK)
    assert [i for i in range(len(a)) if not np.array_equal(a[i], b[i])] == []
    sh = _index_shape(tmp_path / "kernel")
    assert sh.nr_leaves == (2 if nr_bitmaps == 168 else 3) and sh.nr_entries == nr_bitmaps
    out = subprocess.run([real_tool("thin_check"), str(tmp_path / "kernel")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with DmMetadata.open(tmp_path / "kernel") as m:
        assert m.check().ok


def test_a_pool_past_one_index_leaf_passes_the_real_tools(tmp_path):
    """A 200 GiB pool (3,276,800 data blocks, 201 bitmaps) in the pre-5.14
    model, its data allocated across index leaves by sequential and
    random writes over several commits."""
    bs = 64 * 1024
    nr = 3_276_800
    pool = ThinPool.create(tmp_path / "pool", nr * bs, "64KiB", metadata_size="256MiB", split="halves")
    try:
        pool.create_thin(1, nr * bs)
        dev = pool.device(1)
        rng = np.random.default_rng(5)
        for lo in range(0, 1_500_000, 500_000):
            for vb in range(lo, lo + 500_000, 50_000):
                dev.write(vb * bs, 50_000 * bs)
            pool.commit()
        for vb in rng.choice(np.arange(2_000_000, nr), 2000, replace=False).tolist():
            dev.write(int(vb) * bs, bs)
        pool.commit()
    finally:
        pool.close()
    want = dump(tmp_path / "pool")
    meta = tmp_path / "pool" / "metadata"
    sh = _index_shape(meta)
    assert sh.nr_leaves >= 2 and sh.nr_entries == 201
    out = subprocess.run([real_tool("thin_check"), str(meta)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = subprocess.run([real_tool("thin_dump"), str(meta)], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want

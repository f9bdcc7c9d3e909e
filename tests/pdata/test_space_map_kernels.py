"""The space maps' numba paths write exactly what the Python btree writes.

Snapshots push data and metadata reference counts past 2, so both space
maps' ref-count trees grow (past one node) and, after deletes, shrink
again; every commit's image must be the same byte for byte as the
reference's (the Python btree for every tree), and thin_check-clean.
"""
from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from thinp.thin.pool_metadata import PoolMetadata


def _reference(md: PoolMetadata, fast: bool) -> None:
    md.fast = fast
    md.tm.fast = fast
    md.data_sm.fast = fast


def _run(path, fast: bool, split: str, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=40000, data_block_sectors=128,
                             split=split)
    md.sync = False
    _reference(md, fast)
    images = []

    def commit():
        md.commit()
        images.append(path.read_bytes())

    md.create_thin(0)
    for vb in range(6000):
        md.insert(0, vb, md.alloc_data())
    commit()
    devs = [0]
    for s in range(1, 9):
        origin = rng.choice(devs)
        md.create_snap(s, origin)
        devs.append(s)
        if rng.random() < 0.5:
            commit()  # some snapshots share a whole tree at commit (root counts >= 3)
            continue
        for vb in rng.sample(range(6000), 60):
            md.insert(s, vb, md.alloc_data())  # CoW: shadowed leaves inc their data blocks
        commit()
    for d in rng.sample(devs[1:], 5):  # counts fall back below 3: ref-count entries removed
        md.delete(d)
        commit()
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 1), ("halves", 2)])
def test_ref_count_kernel_matches_the_reference(tmp_path, split, seed):
    ref = _run(tmp_path / "ref", False, split, seed)
    fast = _run(tmp_path / "fast", True, split, seed)
    assert len(ref) == len(fast) > 10
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"commit {k} differs"


def test_ref_count_trees_grow_and_shrink(tmp_path):
    """The scenario above really exercises the ref-count trees: the data
    one holds more than one leaf's worth (336) at its peak."""
    from thinp.pdata.btree import collect
    from thinp.pdata.block import BlockManager
    from thinp.thin.format import read_superblock

    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=4096, nr_data_blocks=40000,
                             data_block_sectors=128)
    md.sync = False
    md.create_thin(0)
    for vb in range(6000):
        md.insert(0, vb, md.alloc_data())
    for s in (1, 2, 3):
        md.create_snap(s, 0)
        md.commit()
        for vb in range(17, 6000, 100):  # shadows every shared leaf
            md.insert(s, vb, md.alloc_data())
    md.commit()
    md.close()
    bm = BlockManager.open_file(str(tmp_path / "m"))
    try:
        sb = read_superblock(bm)
        keys, vals = collect(bm, sb.data_sm_root.ref_count_root, 4, who="data ref counts")
        assert len(keys) > 336
        assert set(vals.reshape(-1).view("<u4").tolist()) <= {3, 4}
    finally:
        bm.close()
    if shutil.which("thin_check"):
        r = subprocess.run(["thin_check", str(tmp_path / "m")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr + r.stdout

"""The data space map's ref-count tree changes where dm changes it.

dm keeps a data block's count of 3 or more in a btree beside the bitmaps,
and changes that tree as the count moves (sm_ll_inc / sm_ll_dec in
dm-space-map-common.c): a count reaching 3 is inserted, one above 3 set in
its leaf after the path is shadowed, one leaving 3 removed.  The counts
move inside the mapping tree's operations -- inc_children of a shared leaf
being shadowed, the dec of a replaced or removed mapping -- so the
ref-count tree's nodes are shadowed between the mapping nodes, not at the
commit.

The scenario: a thin of 1,000 blocks, a snapshot of it, a snapshot of the
snapshot (the subtree root shared three ways), then in one transaction a
write into the origin and one into the first snapshot, both in the first
leaf.  The second write's leaf copy raises the counts of that leaf's other
blocks from 2 to 3: the ref-count tree (committed empty) is shadowed right
after that copy.  The block it replaces drops from 3 to 2 (a removal).  A
second transaction writes into the second snapshot: the block replaced
there drops from 3 to 2, which shadows the tree's leaf right after the
leaf holding the mapping, and a snapshot of it with a write raises counts
above 3 (set in place).
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from thinp import ThinPool
from thinp.thin.dm_metadata import DmMetadata

from ._md_scenario import open_for, pool_for
from .dm_fixtures import real_tool

BLOCK = 4096
NR_DATA = 4000
LEAF = 2


def _leaf_of(md, dev: int, vblock: int) -> int:
    """The metadata block of the leaf of ``dev``'s tree holding ``vblock``."""
    m64 = md.tm.bm.blocks.view(np.uint64)
    m32 = md.tm.bm.blocks.view(np.uint32)
    b = md.subtree_root(dev)
    while not m32[b, 1] & LEAF:
        nr, mx = int(m32[b, 4]), int(m32[b, 5])
        keys = m64[b, 4:4 + nr]
        i = max(0, int(np.searchsorted(keys, vblock, side="right")) - 1)
        b = int(m64[b, 4 + mx + i])
    return b


def _scenario(path, mode):
    """Returns (the image at each commit, placement facts)."""
    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False).close()
    images, seen = [], {}
    if mode == "pool":
        pool, commit = pool_for(path, images)
        pool.message("create_thin 1")
        pool.device(1).write(0, 1000 * bs)
        commit()
        pool.message("create_snap 2 1")
        pool.message("create_snap 3 2")
        commit()
        pool.device(1).write(5 * bs, bs)
        pool.device(2).write(6 * bs, bs)
        commit()
        pool.device(3).write(7 * bs, bs)
        pool.message("create_snap 4 3")
        pool.device(4).write(8 * bs, bs)
        commit()
        pool.close()
        return images, seen
    md, commit, write = open_for(path, mode, images)

    md.create_thin(1)
    md.commit()
    write(1, range(1000))
    commit()
    md.create_snap(2, 1)
    md.commit()
    md.create_snap(3, 2)
    md.commit()
    commit()
    rc_before = md.data_sm.ref_count_root
    write(1, [5])
    write(2, [6])
    seen["rc_root"] = md.data_sm.ref_count_root
    seen["rc_before"] = rc_before
    seen["leaf2"] = _leaf_of(md, 2, 6)
    seen["p6"] = int(md.lookup(3, 6)[0])
    seen["count_p6"] = int(md.data_sm.count[seen["p6"]])
    commit()
    rc_before = md.data_sm.ref_count_root
    write(3, [7])
    seen["rc_root3"] = md.data_sm.ref_count_root
    seen["leaf3"] = _leaf_of(md, 3, 7)
    md.create_snap(4, 3)
    md.commit()  # (the pool commits after each message, as dm-thin's pool_message)
    write(4, [8])
    commit()
    md.close()
    return images, seen


def test_counts_reaching_3_shadow_the_tree_after_the_leaf_that_raised_them(tmp_path):
    """dm's rule, on the blocks: the tree's new root is the block after the
    second write's leaf copy (in thinp before, the commit shadowed it after
    every mapping node of the transaction); a removal shadows its leaf
    right after the leaf holding the replaced mapping."""
    _, seen = _scenario(tmp_path / "k", "kernel")
    assert seen["rc_root"] != seen["rc_before"]
    assert seen["rc_root"] == seen["leaf2"] + 1
    assert seen["count_p6"] == 2  # 3, then the write into 2 replaced it
    assert seen["rc_root3"] == seen["leaf3"] + 1


@pytest.mark.parametrize("mode", ["reference", "pool"])
def test_ref_count_tree_changes_match_on_every_path(tmp_path, mode):
    """The numba kernels, the Python btree (its value type's inc and dec go
    through the data space map's own inc and dec) and ThinPool's apply_log
    write the same image at every commit, byte for byte; the real
    thin_check accepts it and thin_dump agrees with thinp's dump."""
    a, _ = _scenario(tmp_path / "k", "kernel")
    b, _ = _scenario(tmp_path / mode, mode)
    assert len(a) == len(b) == 4
    for k, (x, y) in enumerate(zip(a, b)):
        x = np.frombuffer(x, dtype=np.uint8).reshape(-1, BLOCK)
        y = np.frombuffer(y, dtype=np.uint8).reshape(-1, BLOCK)
        assert [i for i in range(1, len(x)) if not np.array_equal(x[i], y[i])] == [], f"commit {k}"
    out = subprocess.run([real_tool("thin_check"), str(tmp_path / mode / "metadata")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_counts_in_the_tree_are_the_mappings(tmp_path):
    """What the tree holds after the scenario is every data block's number
    of mappings where that is 3 or more (thin_check checks it too)."""
    _scenario(tmp_path / "k", "kernel")
    out = subprocess.run([real_tool("thin_check"), str(tmp_path / "k" / "metadata")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with DmMetadata.open(tmp_path / "k" / "metadata") as m:
        assert m.check().ok
        refs = np.zeros(NR_DATA, dtype=np.int64)
        for d in m.devices():
            _, pb, _ = m.mappings(d)
            np.add.at(refs, pb.astype(np.int64), 1)
    assert int(np.count_nonzero(refs >= 3)) > 200
    assert int(refs.max()) >= 4  # the snapshot of 3 took some above 3


def test_the_ref_count_step_has_one_signature(tmp_path):
    """Every kernel calls the ref-count step with the one signature it was
    compiled for first (_btree_kernels._compile_ref_count_step): another
    would be compiled from inside the mapping trees' steps, as a recursive
    call that a cached caller cannot resolve."""
    from thinp.pdata import _btree_kernels as BK

    _scenario(tmp_path / "k", "kernel")
    _scenario(tmp_path / "p", "pool")
    assert len(BK._ref_count_step.signatures) == 1

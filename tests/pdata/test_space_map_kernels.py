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

import numpy as np
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


def _settled(rc) -> None:
    """What a commit that scanned every block would leave."""
    n = rc.nr_blocks
    assert np.array_equal(rc.committed[:n], rc.count)
    assert np.array_equal(rc.free, rc.count == 0)
    assert not rc.changed.any()
    assert rc.nr_allocated == np.count_nonzero(rc.count)


def test_commit_visits_every_changed_bitmap(tmp_path):
    """A commit looks only at the bitmaps flagged as changed (by the
    kernels, and by the Python paths); afterwards every block's committed
    count, free flag and transaction marks are as a full scan would leave
    them, and the space maps on disk hold the counts (thin_check)."""
    rng = random.Random(5)
    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=40000, nr_data_blocks=70000,
                             data_block_sectors=128)
    md.sync = False
    md.create_thin(0)
    devs = [0]
    for step in range(25):
        r = rng.random()
        if r < 0.2:
            md.create_snap(len(devs), rng.choice(devs))
            devs.append(len(devs))
        elif r < 0.7:
            b = rng.randrange(60000)
            md.write_blocks(rng.choice(devs), np.arange(b, b + rng.randrange(1, 5000)))
        elif r < 0.85:
            for vb in rng.sample(range(60000), 50):
                md.remove(rng.choice(devs), vb)
        elif len(devs) > 2:
            d = rng.choice(devs[1:])
            md.delete(d)
            devs.remove(d)
        md.commit()
        for rc in (md.tm, md.data_sm):
            _settled(rc)
        assert not md.tm.txn.any() and not md.tm.kind.any() and not md.bm.fresh.any()
    md.close()
    if shutil.which("thin_check"):
        r = subprocess.run(["thin_check", str(tmp_path / "m")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr + r.stdout


def _rc_batches(tm, root, batches, fast: bool, split: str) -> int:
    from thinp.pdata import btree_write as bw

    cv = bw.ValueType(4)
    for blocks, counts in batches:
        if fast:
            root = tm.update_ref_counts(root, np.array(blocks), np.array(counts), split == "halves")
            continue
        for b, c in zip(blocks, counts):
            if c >= 3:
                root = bw.insert(tm, root, [b], np.array([c], dtype="<u4").view(np.uint8), cv, split=split)[0]
            else:
                root = bw.remove(tm, root, [b], cv)[0]
    return root


@pytest.mark.parametrize("split", ["current", "halves"])
def test_ref_count_runs_meet_full_leaves(tmp_path, split):
    """Runs of ascending updates that fill a leaf to dm's 336 entries and
    go on past it, overwrite keys of a full leaf (the halves rule splits
    it even so) and insert between its keys: the kernel, merging each run
    a leaf takes in place, leaves the blocks the Python btree leaves."""
    from thinp.pdata import btree_write as bw

    evens = list(range(0, 660, 2))  # 330 keys
    batches = [
        (evens, [3] * 330),
        # six new keys fill the leaf to dm's 336 entries, then one run goes
        # on to overwrite a key of it (the halves rule splits a full leaf
        # even for an overwrite)
        ([1, 3, 5, 7, 9, 11, 20], [3, 3, 3, 3, 3, 3, 4]),
        ([10, 12, 300], [4, 5, 6]),
        ([1, 3, 5, 10, 11], [3, 3, 3, 7, 3]),
        (list(range(1001, 1901, 2)), [3] * 450),  # past one leaf's room in one run
        (list(range(1, 671, 4)) + list(range(1003, 1400, 4)), [3] * 168 + [9] * 100),
        ([3, 5, 7, 10, 1001, 1003], [1, 2, 3, 2, 4, 0]),  # removals mixed in
    ]
    out = []
    for fast in (True, False):
        md = PoolMetadata.format(tmp_path / f"m{fast}", nr_metadata_blocks=4096, nr_data_blocks=40000,
                                 data_block_sectors=128, split=split)
        md.sync = False
        root = _rc_batches(md.tm, bw.empty(md.tm, 4), batches, fast, split)
        out.append((root, md.bm.blocks.copy(), md.tm.count.copy()))
        md.close(commit=False)
    (r1, b1, c1), (r2, b2, c2) = out
    assert r1 == r2
    assert np.array_equal(c1, c2)
    assert np.array_equal(b1, b2)


@pytest.mark.parametrize("split", ["current", "halves"])
def test_overwrite_in_place_is_dm_insert(tmp_path, split):
    """The data space map's index entries are rewritten in place where
    dm's insert would only descend; elsewhere it declines and the insert
    runs.  Either way the blocks are the insert's, key by key."""
    from thinp.pdata import btree_write as bw

    vt = bw.ValueType(16)
    out = []
    for in_place in (True, False):
        md = PoolMetadata.format(tmp_path / f"m{in_place}", nr_metadata_blocks=4096, nr_data_blocks=40000,
                                 data_block_sectors=128, split=split)
        md.sync = False
        tm = md.tm
        root = bw.empty(tm, 16)
        for k in range(500):  # several leaves of 168, some full
            root, _ = bw.insert(tm, root, [k], np.full(16, k % 251, dtype=np.uint8), vt, split=split)
        md.commit()  # nothing of the tree is this transaction's now
        declined = 0
        for k in [3, 4, 170, 5, 499, 168, 0, 167, 338, 339, 3]:
            v = np.full(16, (k * 7 + 1) % 251, dtype=np.uint8)
            if not (in_place and bw.overwrite_in_place(tm, root, k, v, split=split)):
                declined += 1
                root, inserted = bw.insert(tm, root, [k], v, vt, split=split)
                assert not inserted
        out.append((root, md.bm.blocks.copy(), tm.count.copy(), declined))
        md.close(commit=False)
    (r1, b1, c1, d1), (r2, b2, c2, _) = out
    assert 0 < d1 < 11  # both paths were taken
    assert r1 == r2 and np.array_equal(c1, c2) and np.array_equal(b1, b2)


def _many_bitmaps_run(path, fast: bool, split: str) -> list[bytes]:
    """A data space map of 400 bitmaps (its index tree: a root over three
    leaves) whose commits change counts in some of them: runs of bitmaps
    the transaction shadowed (written, their index entries in place or by
    dm's insert where the index leaf is not this transaction's yet),
    broken by bitmaps whose counts changed without their shadow (as the
    tools' ``inc(shadow=False)`` leaves them: the commit shadows them)."""
    from thinp.pdata.space_map import ENTRIES_PER_BITMAP

    rng = random.Random(11)
    md = PoolMetadata.format(path, nr_metadata_blocks=8192, nr_data_blocks=400 * ENTRIES_PER_BITMAP,
                             data_block_sectors=128, split=split)
    md.sync = False
    _reference(md, fast)
    md.create_thin(0)
    images = []
    for step in range(6):
        picked = sorted(rng.sample(range(400), 60 if step % 2 else 250))
        for i in picked:
            b = i * ENTRIES_PER_BITMAP + rng.randrange(ENTRIES_PER_BITMAP)
            if md.data_sm.count[b]:
                continue
            if rng.random() < 0.25:
                md.data_sm.inc([b], shadow=False)
            else:
                md.data_sm.inc([b])
        md.commit()
        images.append(path.read_bytes())
    md.close(commit=False)
    return images


@pytest.mark.parametrize("split", ["current", "halves"])
def test_bitmap_commit_in_runs_is_the_reference(tmp_path, split):
    """The commit writes bitmaps and their index entries in kernel runs
    (DiskSpaceMap._write_bitmaps): each commit's image is the one the
    bitmap-at-a-time Python path writes, byte for byte."""
    ref = _many_bitmaps_run(tmp_path / "ref", False, split)
    fast = _many_bitmaps_run(tmp_path / "fast", True, split)
    assert len(ref) == len(fast) == 6
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"commit {k} differs"


def _bitmap_reference(count, committed, nfb):
    """dm's bitmap entries and index entry, one entry at a time: entry e's
    2 bits (min(count, 3), high bit first) at bits 2e, 2e+1 of word e // 32;
    nr_free of the 16,320; the hint lowered to the first freed entry when
    that is below it, then stepped past entries newly in use."""
    from thinp.pdata.space_map import ENTRIES_PER_BITMAP

    words = [0] * (ENTRIES_PER_BITMAP // 32)
    for e, c in enumerate(count.tolist()):
        v = min(c, 3)
        words[e // 32] |= ((v >> 1) << (2 * (e % 32))) | ((v & 1) << (2 * (e % 32) + 1))
    freed = next((e for e in range(len(count)) if count[e] == 0 and committed[e] != 0), -1)
    if 0 <= freed < nfb:
        nfb = freed
    while nfb < len(count) and committed[nfb] == 0 and count[nfb] != 0:
        nfb += 1
    return words, ENTRIES_PER_BITMAP - int(np.count_nonzero(count)), nfb


@pytest.mark.parametrize("n,nfb", [(16320, 0), (16320, 9000), (16320, 16320), (16319, 40), (1000, 20000), (33, 3)])
def test_write_bitmap_is_the_reference(n, nfb):
    """The commit's bitmap kernel (branch-free words, the freed-entry
    search stopping at the hint) writes what dm's one-entry-at-a-time rule
    gives, for full and short bitmaps, with counts freed, newly used and
    past 3."""
    from thinp.pdata._btree_kernels import write_bitmap

    rng = np.random.default_rng(n + nfb)
    committed = rng.choice([0, 0, 1, 2, 3, 7], n).astype(np.uint32)
    count = committed.copy()
    moved = rng.random(n) < 0.3
    count[moved] = rng.choice([0, 1, 2, 3, 4], int(moved.sum())).astype(np.uint32)
    count[: nfb // 2] = np.maximum(count[: nfb // 2], 1)  # in use below the hint, mostly
    lo = 16320 * 2  # a bitmap other than the first: counts are indexed from lo
    cur = np.zeros(lo + n, dtype=np.uint32)
    old = np.zeros(lo + n, dtype=np.uint32)
    cur[lo:], old[lo:] = count, committed
    m64 = np.full((3, 512), 0xAAAA, dtype=np.uint64)
    out = np.zeros(2, dtype=np.int64)
    write_bitmap(m64, 1, cur, old, lo, lo + n, nfb, out)
    words, nr_free, hint = _bitmap_reference(count, committed, nfb)
    assert m64[1, 2:].tolist() == words
    assert m64[1, :2].tolist() == [0xAAAA, 0xAAAA]  # the header is not the kernel's
    assert (int(out[0]), int(out[1])) == (nr_free, hint)


def test_commit_ready_bitmaps_without_collecting_writes_the_same():
    """The data space map's first commit pass with the ref-count tree
    current (``collect`` False) writes the same bitmaps, index entries,
    settled counts and moved flags as with it, and collects nothing."""
    from thinp.pdata._btree_kernels import commit_ready_bitmaps
    from thinp.pdata.space_map import ENTRIES_PER_BITMAP as E

    rng = np.random.default_rng(5)
    nb = 5
    n = nb * E - 77  # the last bitmap short
    committed = rng.choice([0, 0, 1, 2, 3, 7], n).astype(np.uint32)
    count = committed.copy()
    for i, share in enumerate([0.3, 0.0, 0.001, 0.5, 0.2]):
        lo = i * E
        moved = np.flatnonzero(rng.random(min(n, lo + E) - lo) < share) + lo
        count[moved] = rng.choice([0, 1, 2, 3, 4], len(moved)).astype(np.uint32)
    free = rng.random(n) < 0.5
    bitmaps = np.arange(nb, dtype=np.int64)
    ie = np.zeros((nb, 2), dtype=np.uint64)
    ie[:, 0] = np.arange(nb) + 2
    ie[:, 1] = np.array([0, 40, 16320, 9000, 33], dtype=np.uint64) << np.uint64(32)
    got = []
    for collect in (True, False):
        st = dict(m64=np.full((nb + 2, 512), 0xAAAA, dtype=np.uint64), committed=np.append(committed, 0),
                  free=free.copy(), ie=ie.copy(), ready=np.array([1, 2, 2, 0, 2], dtype=np.uint8),
                  diff=np.zeros(nb, np.uint8))
        blocks, counts = np.zeros(n, np.uint32), np.zeros(n, np.uint32)
        k = commit_ready_bitmaps(st["m64"], count, st["committed"], st["free"], bitmaps, st["ready"], st["ie"], blocks,
                                 counts, st["diff"], np.zeros(2, dtype=np.int64), collect)
        got.append((k, st))
    (k1, a), (k0, b) = got
    assert k1 > 0 and k0 == 0
    assert a["diff"].tolist() == b["diff"].tolist() == [1, 0, 1, 1, 1]
    assert a["ready"].tolist() == b["ready"].tolist() == [3, 2, 3, 0, 3]
    for key in ("m64", "committed", "free", "ie"):
        assert np.array_equal(a[key], b[key]), key

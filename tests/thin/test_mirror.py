"""The replay log applied to dm's btree in one numba call writes exactly
what the Python btree writes, row by row.

``_mirror.apply_log`` changes a leaf in place when dm's insert would only
descend to it, and keeps that leaf for the rows after it; these runs mix
sequential runs, random rows, CoW over snapshots, several devices and
removals, in both split rules, and compare every commit's image byte for
byte with the reference (``PoolMetadata`` with ``fast`` off: the Python
btree, one insert or remove per row).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from thinp.pdata.mapping_index import device_mappings
from thinp.thin.format import pack_block_time
from thinp.thin.pool_metadata import PoolMetadata

from ._mirror_call import apply_log

NR_DATA = 200_000
KEYS = 6000


def _apply_log(md: PoolMetadata, log: np.ndarray) -> None:
    r, _root, done, *_ = apply_log(md, log)
    assert r == 0 and done == len(log)
    # the pool keeps mapped_blocks in its index; here, count the leaves
    for dev in set(log[:, 0].tolist()):
        d = md.devices[dev]
        d.mapped_blocks, d.changed = len(device_mappings(md.bm, md.subtree_root(dev))[0]), True


def _apply_rows(md: PoolMetadata, log: np.ndarray) -> None:
    """The reference: each insert row through the Python btree; a request's
    run of unmaps (no passdown here) as dm-thin's discard removes it, one
    dm_thin_remove_range per 1,024-block virtual piece (Linux 6.5+; one
    for the whole run under the older kernels' rules)."""
    rows = log.tolist()
    k = 0
    while k < len(rows):
        dev, vb, v, op = rows[k]
        if v >= 0:
            md.insert_block_time(dev, vb, v >> 24, v & 0xFFFFFF, kernel=True)
            k += 1
            continue
        j = k + 1
        while (j < len(rows) and rows[j][2] < 0 and rows[j][0] == dev and rows[j][3] == op
               and rows[j][1] > rows[j - 1][1] and (md.split == "halves" or rows[j][1] // 1024 == vb // 1024)):
            j += 1
        md.remove_range(dev, vb, rows[j - 1][1] + 1)
        k = j


def _log(rng: random.Random, devs: list, next_p: list, time: int) -> np.ndarray:
    rows = []
    for _ in range(rng.randrange(1, 8)):
        dev = rng.choice(devs)
        kind = rng.random()
        if kind < 0.3:  # a sequential run: provisions and CoW
            b = rng.randrange(KEYS)
            vbs = list(range(b, b + rng.randrange(1, 900)))
        elif kind < 0.85:  # random rows: leaves fill up, and full ones take overwrites
            vbs = [rng.randrange(KEYS) for _ in range(rng.randrange(1, 1500))]
        else:  # removals: a discard (its own request)
            b = rng.randrange(KEYS)
            rows += [(dev, vb, -1, len(rows)) for vb in range(b, b + rng.randrange(1, 1200))]
            continue
        for vb in vbs:
            rows.append((dev, vb, pack_block_time(next_p[0], time), len(rows)))
            next_p[0] += 1
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def _run(path, fast: bool, split: str, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    md = PoolMetadata.format(path, nr_metadata_blocks=8192, nr_data_blocks=NR_DATA, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = fast
    next_p = [0]
    md.create_thin(0)
    md.create_thin(7)
    devs = [0, 7]
    images = []
    for step in range(20):
        if step % 3 == 1:  # a snapshot: the rows after it break sharing
            d = 100 + step
            md.create_snap(d, rng.choice(devs))
            devs.append(d)
        log = _log(rng, devs, next_p, md.sb.time)
        (_apply_log if fast else _apply_rows)(md, log)
        if step % 2:
            md.commit()
            images.append(path.read_bytes())
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 1), ("current", 2), ("halves", 3)])
def test_apply_log_matches_the_reference(tmp_path, split, seed):
    _assert_same_images(_run(tmp_path / "fast", True, split, seed), _run(tmp_path / "ref", False, split, seed))


def _assert_same_images(fast: list[bytes], ref: list[bytes]) -> None:
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref)):
        assert a == b, f"image {i} differs"


def _full_leaf(path, fast: bool, split: str) -> bytes:
    md = PoolMetadata.format(path, nr_metadata_blocks=1024, nr_data_blocks=NR_DATA, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = fast
    md.create_thin(5)
    # one run fills the root leaf to dm's 252 entries, then overwrites a
    # key of the full leaf (the halves rule splits it even so), then adds
    # keys on both sides of it
    vbs = list(range(0, 504, 2)) + [10, 11, 600, 9]
    log = np.array([(5, vb, pack_block_time(i, 0), 0) for i, vb in enumerate(vbs)], dtype=np.int64)
    (_apply_log if fast else _apply_rows)(md, log)
    md.close()
    return path.read_bytes()


@pytest.mark.parametrize("split", ["current", "halves"])
def test_a_full_leaf_takes_its_next_row_as_dm_does(tmp_path, split):
    assert _full_leaf(tmp_path / "fast", True, split) == _full_leaf(tmp_path / "ref", False, split)


def _cow_after_snapshot(path, fast: bool, split: str, seed: int) -> list[bytes]:
    """Fully mapped ranges (leaves whose keys run without gaps), a snapshot
    of each, then random rows breaking sharing in both devices of a pair,
    with removals and re-provisions between them that leave gaps and
    move keys (the look-ahead's leaves go stale), and a second device over
    the same vblocks (the located leaves' directory is by device)."""
    rng = random.Random(seed)
    md = PoolMetadata.format(path, nr_metadata_blocks=8192, nr_data_blocks=NR_DATA, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = fast
    n = 3000
    next_p = 0
    images = []
    for dev in (1, 2):
        md.create_thin(dev)
        log = np.array([(dev, vb, pack_block_time(next_p + vb, 0), 0) for vb in range(n)], dtype=np.int64)
        next_p += n
        (_apply_log if fast else _apply_rows)(md, log)
    md.commit()
    md.create_snap(11, 1)
    md.create_snap(12, 2)
    for step in range(4):
        rows = []
        for vb in rng.sample(range(n), n // 2):
            dev = rng.choice((1, 2, 11, 12))
            if rng.random() < 0.03:  # a hole, or a run of them
                rows += [(dev, x, -1, len(rows)) for x in range(vb, min(n, vb + rng.randrange(1, 40)))]
            else:
                rows.append((dev, vb, pack_block_time(next_p, md.sb.time), 0))
                next_p += 1
        log = np.array(rows, dtype=np.int64)
        (_apply_log if fast else _apply_rows)(md, log)
        md.commit()
        images.append(path.read_bytes())
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 4), ("halves", 5)])
def test_random_cow_of_fully_mapped_ranges_matches_the_reference(tmp_path, split, seed):
    _assert_same_images(_cow_after_snapshot(tmp_path / "fast", True, split, seed),
                        _cow_after_snapshot(tmp_path / "ref", False, split, seed))

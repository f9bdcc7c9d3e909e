"""write_blocks (one kernel call per batch, with its append-to-the-last-leaf
fast path for sequential runs) writes exactly what the Python btree writes
when the same blocks are provisioned one insert at a time."""
from __future__ import annotations

import random

import numpy as np
import pytest

from thinp.thin.pool_metadata import PoolMetadata


def _write_reference(md: PoolMetadata, dev: int, vblocks) -> None:
    """dm-thin's write path, one Python btree insert per block."""
    snap = md.details(dev).snapshotted_time
    for vb in vblocks:
        r = md.lookup(dev, int(vb))
        if r is not None and r[1] >= snap:
            continue  # mapped and not shared
        md.insert(dev, int(vb), md.alloc_data())


def _run(path, fast: bool, split: str, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=200000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = md.tm.fast = md.data_sm.fast = fast
    images = []

    def write(dev, vblocks):
        if fast:
            md.write_blocks(dev, np.array(vblocks, dtype=np.int64))
        else:
            _write_reference(md, dev, vblocks)

    devs = [0]
    md.create_thin(0)
    for step in range(40):
        dev = rng.choice(devs)
        r = rng.random()
        if r < 0.1:
            s = len(devs)
            md.create_snap(s, rng.choice(devs))
            devs.append(s)
        elif r < 0.6:
            b = rng.randrange(0, 60000)
            write(dev, range(b, b + rng.randrange(1, 3000)))  # a sequential run, maybe over mapped blocks
        elif r < 0.8:
            runs = []
            for _ in range(rng.randrange(1, 6)):
                b = rng.randrange(0, 60000)
                runs.extend(range(b, b + rng.randrange(1, 400)))
            write(dev, runs)  # several runs in one batch
        else:
            write(dev, [rng.randrange(0, 60000) for _ in range(rng.randrange(1, 300))])
        if rng.random() < 0.4:
            md.commit()
            images.append(path.read_bytes())
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 11), ("current", 12), ("halves", 13)])
def test_write_blocks_matches_the_reference(tmp_path, split, seed):
    ref = _run(tmp_path / "ref", False, split, seed)
    fast = _run(tmp_path / "fast", True, split, seed)
    assert len(ref) == len(fast) > 5
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"commit {k} differs"


def _fill_below_a_mapped_block(path, fast: bool, split: str) -> bytes:
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=200000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = md.tm.fast = md.data_sm.fast = fast
    md.create_thin(0)
    runs = [[150000], range(0, 9000), range(9000, 20000), [5, 17000, 149999], range(20000, 26000)]
    for vbs in runs:
        if fast:
            md.write_blocks(0, np.array(list(vbs), dtype=np.int64))
        else:
            _write_reference(md, 0, vbs)
    md.create_snap(1, 0)
    if fast:
        md.write_blocks(1, np.arange(3000, 12000))
    else:
        _write_reference(md, 1, range(3000, 12000))
    md.close()
    return path.read_bytes()


@pytest.mark.parametrize("split", ["current", "halves"])
def test_sequential_fill_below_a_mapped_block(tmp_path, split):
    """A sequential run into leaves that also hold a higher key (so the
    run never appends at a leaf's end, and full leaves rebalance into a
    right sibling), then CoW over a snapshot: as the reference writes it."""
    assert _fill_below_a_mapped_block(tmp_path / "ref", False, split) == \
        _fill_below_a_mapped_block(tmp_path / "fast", True, split)


def _random_batches(path, fast: bool, split: str, seed: int) -> list[bytes]:
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=200000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = md.tm.fast = md.data_sm.fast = fast
    rng = np.random.default_rng(seed)
    images = []

    def write(dev, vblocks):
        if fast:
            md.write_blocks(dev, vblocks)
        else:
            _write_reference(md, dev, vblocks.tolist())

    md.create_thin(0)
    md.create_thin(1)
    # wide random keys (one leaf each, few rebalances in flight), then keys
    # in a narrow range (many requests ahead land in leaves that split or
    # rebalance before their turn), duplicates and mapped blocks included
    for dev, hi, nr in [(0, 150000, 3000), (0, 4000, 3000), (1, 150000, 2000)]:
        write(dev, rng.integers(0, hi, nr))
        md.commit()
        images.append(path.read_bytes())
    write(0, rng.integers(0, 150000, 2000))  # within the same transaction: no shadowing
    md.create_snap(2, 0)
    write(2, rng.integers(0, 150000, 2000))  # shared leaves: dm's insert shadows them
    write(0, rng.integers(0, 150000, 2000))
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 21), ("halves", 22)])
def test_random_batches_match_the_reference(tmp_path, split, seed):
    """Batches of random writes long enough for write_blocks' look-ahead
    (a leaf located requests early, used when the nodes above it are
    unchanged): as the reference writes them, byte for byte."""
    ref = _random_batches(tmp_path / "ref", False, split, seed)
    fast = _random_batches(tmp_path / "fast", True, split, seed)
    assert len(ref) == len(fast) == 4
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"image {k} differs"


def _mixed(path, fast: bool, split: str, seed: int) -> list[bytes]:
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=200000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = md.tm.fast = md.data_sm.fast = fast
    rng = np.random.default_rng(seed)
    images = []
    md.create_thin(0)
    first = rng.integers(0, 20000, 4000)
    # random keys into few leaves (splits and rebalances within the batch),
    # a sequential run into those leaves (not at their ends), the same
    # random keys again (now mapped), then a snapshot's device provisioning
    # and breaking sharing in one batch
    batches = [(0, np.concatenate([first, np.arange(5000, 9000), first[::-1], rng.integers(0, 40000, 3000)]))]
    for dev, vb in batches:
        if fast:
            md.write_blocks(dev, vb)
        else:
            _write_reference(md, dev, vb.tolist())
        md.commit()
        images.append(path.read_bytes())
    md.create_snap(1, 0)
    vb = np.concatenate([rng.integers(0, 40000, 3000), rng.integers(0, 20000, 3000)])
    if fast:
        md.write_blocks(1, vb)
    else:
        _write_reference(md, 1, vb.tolist())
    md.close()
    images.append(path.read_bytes())
    return images


@pytest.mark.parametrize("split,seed", [("current", 31), ("halves", 32)])
def test_mixed_batches_match_the_reference(tmp_path, split, seed):
    """One batch mixing random keys, a sequential run into the leaves they
    filled and a repeat of the random keys, then a snapshot's batch: as
    the reference writes them, byte for byte."""
    ref = _mixed(tmp_path / "ref", False, split, seed)
    fast = _mixed(tmp_path / "fast", True, split, seed)
    assert len(ref) == len(fast) == 2
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"image {k} differs"

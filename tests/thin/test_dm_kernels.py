"""The numba mapping-tree kernels write exactly what the Python btree writes."""
from __future__ import annotations

import random

import pytest

from thinp.thin.pool_metadata import PoolMetadata


def _run(path, fast, split, seed):
    rng = random.Random(seed)
    md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=30000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = fast
    images = []
    devs: list = []
    for step in range(120):
        op = rng.random()
        if op < 0.08 or not devs:
            d = rng.randrange(40)
            if d not in devs:
                md.create_thin(d)
                devs.append(d)
        elif op < 0.16:
            d = rng.randrange(40)
            if d not in devs:
                md.create_snap(d, rng.choice(devs))
                devs.append(d)
        elif op < 0.2 and len(devs) > 1:
            d = rng.choice(devs)
            md.delete(d)
            devs.remove(d)
        elif op < 0.65:
            d = rng.choice(devs)
            b = rng.randrange(20000)
            seq = range(b, b + rng.randrange(1, 600)) if rng.random() < 0.5 else \
                [rng.randrange(20000) for _ in range(rng.randrange(1, 300))]
            for vb in seq:
                p = md.alloc_data()
                if p is None:
                    break
                md.insert(d, vb, p)
        elif op < 0.8:
            d = rng.choice(devs)
            b = rng.randrange(20000)
            for vb in range(b, b + rng.randrange(1, 300)):
                md.remove(d, vb)
        else:
            md.commit()
            with open(path, "rb") as f:
                images.append(f.read())
    md.close()
    with open(path, "rb") as f:
        images.append(f.read())
    return images


@pytest.mark.parametrize("split,seed", [("current", 1), ("current", 2), ("halves", 3)])
def test_kernels_match_the_reference(tmp_path, split, seed):
    ref = _run(tmp_path / "ref", False, split, seed)
    fast = _run(tmp_path / "fast", True, split, seed)
    assert len(ref) == len(fast) > 3
    for k, (a, b) in enumerate(zip(ref, fast)):
        assert a == b, f"commit {k} differs"


def test_lookup(tmp_path):
    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=256, nr_data_blocks=3000, data_block_sectors=128)
    md.create_thin(4)
    for vb in range(0, 2000, 2):
        md.insert(4, vb, 2000 - vb // 2)
    for vb in (0, 1, 2, 1998, 1999, 5000):
        fast = md.lookup(4, vb)
        md.fast = False
        assert fast == md.lookup(4, vb)
        md.fast = True
    assert md.lookup(4, 10) == (1995, 0) and md.lookup(4, 11) is None
    md.close(commit=False)


def _pool_run(tmp_path, name, fast):
    from thinp.thin.dm_pool import DmPool

    pool = DmPool.create(tmp_path / name, "4G", metadata_size="8M")
    pool.md.fast = fast
    pool.md.sync = False
    bs = pool.block_size
    rng = random.Random(5)
    pool.create_thin(0, "2G")
    pool.write(0, 0, 3000 * bs)
    for s in range(1, 6):
        pool.create_snap(s, rng.choice(range(s)))
        for _ in range(20):
            dev = rng.choice(range(s + 1))
            off = rng.randrange(0, 30000) * bs
            pool.write(dev, off, rng.randrange(1, 50) * bs)
        pool.commit()
    pool.close()
    return (tmp_path / name / "metadata").read_bytes()


def test_write_kernel_matches_the_reference(tmp_path):
    assert _pool_run(tmp_path, "ref", False) == _pool_run(tmp_path, "fast", True)


def _drain(path, fast):
    """Fill a tree, snapshot it, then empty both in random order: every
    rebalancing case of dm-btree-remove, shared children, the root collapse."""
    rng = random.Random(9)
    md = PoolMetadata.format(path, nr_metadata_blocks=1024, nr_data_blocks=60000, data_block_sectors=128)
    md.sync = False
    md.fast = fast
    md.create_thin(1)
    for vb in range(25000):
        md.insert(1, vb, md.alloc_data())
    md.commit()
    md.create_snap(2, 1)
    order = list(range(25000))
    rng.shuffle(order)
    for k, vb in enumerate(order):
        md.remove(1 + (k % 2), vb)
        if k % 5000 == 4999:
            md.commit()
    for vb in order:
        md.remove(1, vb)
        md.remove(2, vb)
    md.close()
    return path.read_bytes()


def test_remove_kernel_matches_the_reference(tmp_path):
    a = _drain(tmp_path / "ref", False)
    b = _drain(tmp_path / "fast", True)
    assert a == b
    from thinp.thin.dm_metadata import DmMetadata
    with DmMetadata.open(tmp_path / "fast") as r:
        assert r.check().ok
        assert all(d.mapped_blocks == 0 for d in r.devices())

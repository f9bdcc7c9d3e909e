"""The space maps' running count of used blocks (RefCounts.nr_used) stays
equal to a scan of the counts through every kind of change: kernel
provisioning and CoW, Python inc/dec, deletes, unmaps, metadata snapshots,
commits, resizes, and a reopen."""
from __future__ import annotations

import random

import numpy as np

from thinp.pdata.mapping_tree import nr_used
from thinp.thin.pool_metadata import PoolMetadata


def _assert_counts(md: PoolMetadata) -> None:
    for sm in (md.tm, md.data_sm):
        assert sm.nr_used == int(np.count_nonzero(sm.count))
        assert nr_used(sm.committed) == sm.nr_used  # what numba callers read
        assert sm.nr_free == sm.nr_blocks - int(np.count_nonzero(sm.count))
    assert md.nr_used_metadata_blocks == int(np.count_nonzero(md.tm.count))


def test_running_count_matches_a_scan(tmp_path):
    rng = random.Random(5)
    path = tmp_path / "md"
    md = PoolMetadata.format(path, nr_metadata_blocks=4096, nr_data_blocks=100000, data_block_sectors=128)
    md.sync = False
    _assert_counts(md)
    devs = [0]
    md.create_thin(0)
    next_dev = 1
    for step in range(60):
        r = rng.random()
        dev = rng.choice(devs)
        if r < 0.12:
            md.create_snap(next_dev, dev)
            devs.append(next_dev)
            next_dev += 1
        elif r < 0.18 and len(devs) > 1:
            md.delete(dev)
            devs.remove(dev)
        elif r < 0.5:
            b = rng.randrange(0, 30000)
            md.write_blocks(dev, np.arange(b, b + rng.randrange(1, 2000)))
        elif r < 0.65:
            md.write_blocks(dev, np.array([rng.randrange(0, 30000) for _ in range(300)]))
        elif r < 0.8:
            for _ in range(50):
                md.remove(dev, rng.randrange(0, 30000))
        elif r < 0.85:
            p = md.alloc_data()
            md.insert(dev, rng.randrange(0, 30000), p)
        elif r < 0.88 and not md.sb.held_root:
            md.reserve_metadata_snap()
        elif r < 0.91 and md.sb.held_root:
            md.release_metadata_snap()
        elif r < 0.93:
            md.resize_data(md.data_sm.nr_blocks + 20000)
        _assert_counts(md)
        if rng.random() < 0.3:
            md.commit()
            _assert_counts(md)
    md.close()
    md = PoolMetadata.open(path)
    _assert_counts(md)
    md.resize_metadata(md.tm.nr_blocks + 20000)
    md.write_blocks(0, np.arange(40000, 45000))
    _assert_counts(md)
    md.commit()
    _assert_counts(md)
    md.close()

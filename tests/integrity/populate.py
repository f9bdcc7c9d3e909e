"""A populated pool for the [integrity] tests: thousands of mappings, snapshots
of snapshots, shared and exclusive blocks, discards and a deleted device."""
from __future__ import annotations

import numpy as np

from thinp.thin import ThinPool
from thinp.trace import DISCARD, TRACE_DTYPE, WRITE

BS = 64 * 1024


def trace(dev_id, vblocks, op=WRITE, nblocks=1):
    t = np.zeros(len(vblocks), dtype=TRACE_DTYPE)
    t["dev_id"] = dev_id
    t["op"] = op
    t["offset"] = np.asarray(vblocks, dtype=np.uint64) * BS
    t["length"] = nblocks * BS
    return t


def populate(path, seed=7, scale=1, payload=False, **create_kw):
    """Make a pool at ``path`` and return it open.  Devices: 0 (origin),
    1 = snap of 0, 2 = snap of 1, 3 an unrelated thin, 5 = snap of 2;
    4 was a snapshot and is deleted."""
    rng = np.random.default_rng(seed)
    nr_data = 16384 * scale
    pool = ThinPool.create(path, data_size=nr_data * BS, block_size=BS, payload=payload, sync=False, **create_kw)
    vsize = 8192 * scale
    pool.create_thin(0, vsize * BS)
    pool.replay(trace(0, np.arange(0, 1500 * scale)))                       # a long contiguous run
    pool.replay(trace(0, rng.choice(np.arange(1500 * scale, vsize), 1500 * scale, replace=False)))
    pool.create_snap(1, 0)
    pool.replay(trace(1, rng.choice(vsize, 700 * scale, replace=False)))
    pool.replay(trace(0, rng.choice(vsize, 300 * scale, replace=False)))
    pool.create_snap(2, 1)                                                   # snapshot of a snapshot
    pool.replay(trace(2, rng.choice(vsize, 400 * scale, replace=False)))
    pool.replay(trace(2, rng.choice(vsize // 8, 20, replace=False) * 8, op=DISCARD, nblocks=8))
    pool.replay(trace(0, [100 * scale], op=DISCARD, nblocks=200 * scale))   # a discarded range
    pool.create_thin(3, 4096 * BS)
    pool.replay(trace(3, rng.choice(4096, 900, replace=False)))
    pool.create_snap(4, 3)
    pool.replay(trace(4, rng.choice(4096, 100, replace=False)))
    pool.delete(4)
    pool.create_snap(5, 2)
    pool.replay(trace(5, rng.choice(vsize, 50, replace=False)))
    pool.set_transaction_id(0, 42)
    pool.commit()
    return pool

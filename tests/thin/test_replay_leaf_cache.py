"""The replay kernel maps a block of the leaf its last mapping change wrote
straight there (thinp.thin._kernels.replay, ``w_leaf``), without a walk
from the root, until a discard, which may prune that leaf.  A trace run in
one kernel call must leave what running each request in a call of its own
leaves (where nothing is remembered from one request to the next): the same
metadata file byte for byte after a commit, and the same mappings."""
from __future__ import annotations

import hashlib
import os

import numpy as np

import thinp

BS = 64 * 1024


def _rows(rows) -> np.ndarray:
    t = np.zeros(len(rows), dtype=thinp.TRACE_DTYPE)
    for i, (dev, op, vb, nr) in enumerate(rows):
        t[i] = (dev, op, vb * BS, nr * BS if op == thinp.DISCARD else 4096)
    return t


def _phases():
    """Sequential runs over leaf boundaries (a leaf maps 512 blocks), a
    discard that empties a leaf (pruned) and writes into it again, and, after
    a snapshot, writes breaking sharing in the leaves they go through."""
    w, d = thinp.WRITE, thinp.DISCARD
    one = [(0, w, vb, 1) for vb in range(400, 1300)]
    one += [(1, w, vb, 1) for vb in range(0, 600, 3)]
    # a mapping change in the leaf of blocks 512-1023 (the last one written),
    # then a discard that empties that leaf (pruned), then writes into it
    one += [(0, d, 700, 1), (0, w, 700, 1), (0, d, 512, 512)]
    one += [(0, w, vb, 1) for vb in range(1000, 520, -7)]
    one += [(0, d, 1100, 3), (0, w, 1101, 1), (0, w, 1102, 1), (1, w, 1, 1), (0, w, 1103, 1)]
    two = [(0, w, vb, 1) for vb in range(380, 1250, 2)] + [(0, d, 400, 100)] + [(0, w, vb, 1) for vb in range(399, 450)]
    return _rows(one), _rows(two)


def _run(path, per_request: bool):
    pool = thinp.ThinPool.create(str(path), "1G")
    pool.create_thin(0, "256M")
    pool.create_thin(1, "256M")
    one, two = _phases()

    def replay(tr):
        if per_request:
            for i in range(len(tr)):
                pool.replay(tr[i:i + 1])
        else:
            pool.replay(tr)

    replay(one)
    pool.create_snap(2, 0)
    replay(two)
    pool.commit()
    maps = [pool.device(d).mapping() for d in (0, 1, 2)]
    pool.close()
    with open(os.path.join(str(path), "metadata"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), maps


def test_one_kernel_call_equals_one_per_request(tmp_path):
    digest, maps = _run(tmp_path / "whole", per_request=False)
    digest_each, maps_each = _run(tmp_path / "each", per_request=True)
    assert digest == digest_each
    for (v, p, t), (v2, p2, t2) in zip(maps, maps_each):
        assert np.array_equal(v, v2) and np.array_equal(p, p2) and np.array_equal(t, t2)
    # and the mappings are the trace's: device 0's blocks as a set model of
    # its writes and discards says (a snapshot does not change the origin's)
    want: set[int] = set()
    for tr in _phases():
        for r in tr[tr["dev_id"] == 0]:
            lo = int(r["offset"]) // BS
            if r["op"] == thinp.DISCARD:
                want -= set(range(lo, lo + int(r["length"]) // BS))
            else:
                want.add(lo)
    assert set(maps[0][0].tolist()) == want
    # (the discards took blocks away: 451-499 odd went and were not written again)
    assert 451 not in want and 1101 in want and len(want) > 500

"""The sha256 of a pool's ``metadata`` file after every commit, for workloads
through ``ThinPool.replay``: run it under two trees and compare the output
to show a change to the replay path leaves every committed image as it was.

    PYTHONPATH=/work/main python scripts/metadata_commit_hashes.py > main.txt
    PYTHONPATH=$PWD python scripts/metadata_commit_hashes.py > mine.txt
    diff main.txt mine.txt

Workloads (each with ``split="current"`` and ``split="halves"``): the
random-provisioning benchmark (1 M 4 KiB first writes into a 1 TiB thin,
default settings), 2 M sequential 4 KiB first writes into a 1 TiB thin,
a mixed run with a commit every 50,000 requests (random writes, a
snapshot, CoW writes, discards from 1 block to 150,000, a second thin),
and snapshots of snapshots with a commit every 40,000 requests (CoW writes
into each, so data counts reach 3 and more and the ref-count tree changes
as they move; discards and a delete, so counts of 3 and more fall).
A profiling aid: it wraps the pool's private commit to hash after it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

import thinp
from thinp.thin import pool as P
from thinp.trace import DISCARD, TRACE_DTYPE, WRITE

BS = 64 * 1024


def _writes(dev, vblocks, rng):
    t = np.zeros(len(vblocks), dtype=TRACE_DTYPE)
    t["dev_id"] = dev
    t["op"] = WRITE
    t["offset"] = vblocks.astype(np.uint64) * BS + rng.integers(0, 16, len(vblocks)).astype(np.uint64) * 4096
    t["length"] = 4096
    return t


def _discards(dev, starts, lengths):
    t = np.zeros(len(starts), dtype=TRACE_DTYPE)
    t["dev_id"] = dev
    t["op"] = DISCARD
    t["offset"] = starts.astype(np.uint64) * BS
    t["length"] = lengths.astype(np.uint64) * BS
    return t


def random_provisioning(pool):
    nr = (1 << 40) // BS
    pool.create_thin(0, "1T")
    pool.replay(_writes(0, np.random.default_rng(20261128).choice(nr, 1 << 20, replace=False),
                        np.random.default_rng(1)))


def sequential(pool):
    pool.create_thin(0, "1T")
    pool.replay(_writes(0, np.arange(2 << 20), np.random.default_rng(2)))


def mixed(pool):
    rng = np.random.default_rng(3)
    nr = (64 << 30) // BS
    pool.create_thin(0, "64G")
    pool.replay(_writes(0, rng.integers(0, nr, 300_000), rng))
    pool.create_snap(1, 0)
    pool.replay(_writes(0, rng.integers(0, nr, 120_000), rng))
    starts = rng.integers(0, nr - 200_000, 40)
    lengths = np.concatenate([rng.integers(1, 5000, 36), [70_000, 150_000, 1, 20_000]])
    tr = np.concatenate([_writes(1, rng.integers(0, nr, 2000), rng), _discards(0, starts, lengths)])
    tr = tr[rng.permutation(len(tr))]
    pool.replay(tr)
    pool.create_thin(2, "64G")
    mix = np.concatenate([_writes(2, rng.integers(0, nr, 200_000), rng), _writes(1, rng.integers(0, nr, 100_000), rng),
                          _discards(1, rng.integers(0, nr - 3000, 300), rng.integers(1, 3000, 300))])
    pool.replay(mix[rng.permutation(len(mix))])


def snapshots(pool):
    rng = np.random.default_rng(4)
    nr = (16 << 30) // BS
    pool.create_thin(0, "16G")
    pool.replay(_writes(0, rng.permutation(nr)[:200_000], rng))
    for snap, origin in ((1, 0), (2, 0), (3, 1), (4, 3), (5, 2)):
        pool.create_snap(snap, origin)
        tr = np.concatenate([_writes(d, rng.integers(0, nr, 6000), rng) for d in range(snap + 1)])
        pool.replay(tr[rng.permutation(len(tr))])
    pool.delete(1)
    tr = np.concatenate([_discards(d, rng.integers(0, nr - 3000, 60), rng.integers(1, 3000, 60)) for d in (0, 3, 5)]
                        + [_writes(4, rng.integers(0, nr, 20_000), rng)])
    pool.replay(tr[rng.permutation(len(tr))])


def main() -> None:
    hashes: list = []
    real = P.ThinPool._commit

    def commit(self, *a, **kw):
        r = real(self, *a, **kw)
        with open(os.path.join(self.path, "metadata"), "rb") as f:
            hashes.append(hashlib.sha256(f.read()).hexdigest()[:16])
        return r

    P.ThinPool._commit = commit
    work = tempfile.mkdtemp(prefix="thinp-hashes-")
    try:
        for name, kw, fn in (("random provisioning", {}, random_provisioning), ("sequential", {}, sequential),
                             ("mixed", {"commit_interval": 50_000}, mixed),
                             ("snapshots", {"commit_interval": 40_000}, snapshots)):
            for split in ("current", "halves"):
                hashes.clear()
                path = os.path.join(work, "p")
                pool = thinp.ThinPool.create(path, "2T", split=split, **kw)
                fn(pool)
                pool.close()
                with open(os.path.join(path, "metadata"), "rb") as f:
                    final = hashlib.sha256(f.read()).hexdigest()[:16]
                print(f"{name} ({split}): {len(hashes)} commits {' '.join(hashes)}; closed {final}", flush=True)
                shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

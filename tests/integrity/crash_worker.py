"""Child process of the fault-injection test: a random workload on a payload
pool that logs every commit point, run until the parent kills it (-9).

Usage: python crash_worker.py POOL LOG STATE_JSON SEED

STATE_JSON holds the state the pool was verified to be in: {dev_id: {vblock:
tag}}.  A block with tag ``t`` holds :func:`pattern(t)`.  The log gets
``R`` when the pool is open, then for every call that commits, a line
``B n <state after the call as JSON>`` before the call and ``D n`` after it
returns.  The workload never writes a mapped, unshared block in place (it
discards it first), so the bytes of every committed mapping are fixed until
a later commit: what "committed bytes" means for dm-thin, whose in-place
writes are not transactional.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

BS = 64 * 1024
NR_VBLOCKS = 192
MAX_DEVICES = 6


def pattern(tag: int) -> bytes:
    a = np.full(BS // 8, tag, dtype=np.uint64)
    a[1::2] ^= np.uint64(0x5A5A5A5A5A5A5A5A)
    return a.tobytes()


def _warm_up():
    """Run every operation once on a scratch pool, so numba has loaded all
    kernels from its cache before the parent's kill clock starts."""
    import shutil
    import tempfile

    from thinp.thin import ThinPool

    d = tempfile.mkdtemp()
    try:
        p = ThinPool.create(os.path.join(d, "p"), data_size=64 * BS, payload=True, sync=False,
                            commit_interval=0, error_if_no_space=True)
        dev = p.create_thin(0, 8 * BS)
        dev.write(0, pattern(1))
        p.create_snap(1, 0)
        dev.write(0, pattern(2))
        dev.lookup(0)
        dev.discard(0, BS)
        p.delete(1)
        p.set_transaction_id(0, 1)
        p.close()
        p = ThinPool.open(os.path.join(d, "p"), read_only=True)
        p.device(0).read(0, BS)
        p.device(0).mapping()
        p.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(pool_path, log_path, state_path, seed):
    from thinp.thin import ThinPool

    rng = np.random.default_rng(seed)
    with open(state_path) as f:
        state = {int(d): {int(v): t for v, t in m.items()} for d, m in json.load(f).items()}
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    next_tag = seed * 1_000_000 + 1

    def logline(s: str):
        os.write(log, (s + "\n").encode())

    _warm_up()
    pool = ThinPool.open(pool_path)
    logline("R")

    def commit_point(fn):
        nonlocal n
        n += 1
        logline(f"B {n} " + json.dumps(state))
        fn()
        logline(f"D {n}")

    while True:
        r = rng.random()
        devs = sorted(state)
        if r < 0.08 and len(devs) < MAX_DEVICES:
            new = max(devs, default=-1) + 1
            if devs and rng.random() < 0.7:
                origin = int(rng.choice(devs))
                state[new] = dict(state[origin])
                commit_point(lambda: pool.create_snap(new, origin))
            else:
                state[new] = {}
                commit_point(lambda: pool.create_thin(new, NR_VBLOCKS * BS))
            continue
        if r < 0.12 and len(devs) > 1:
            victim = int(rng.choice(devs))
            del state[victim]
            commit_point(lambda: pool.delete(victim))
            continue
        if not devs:
            continue
        # a transaction of writes and discards, closed by set_transaction_id
        for _ in range(int(rng.integers(1, 12))):
            d = int(rng.choice(devs))
            dev = pool.device(d)
            vb = int(rng.integers(0, NR_VBLOCKS))
            if rng.random() < 0.25:
                length = int(rng.integers(1, 4))
                end = min(vb + length, NR_VBLOCKS)
                dev.discard(vb * BS, (end - vb) * BS)
                for v in range(vb, end):
                    state[d].pop(v, None)
                continue
            m = dev.lookup(vb)
            if m is not None and m[1] >= dev.snapshotted_time:
                dev.discard(vb * BS, BS)  # never overwrite committed bytes in place
            tag = next_tag
            next_tag += 1
            try:
                dev.write(vb * BS, pattern(tag))
            except Exception:
                # out of space: leave the model as dm would (write failed)
                state[d].pop(vb, None)
                raise
            state[d][vb] = tag
        cur = pool.transaction_id
        commit_point(lambda: pool.set_transaction_id(cur, cur + 1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

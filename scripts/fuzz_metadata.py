#!/usr/bin/env python
"""Long metadata fuzz run: random byte flips and truncations of a populated
pool's metadata, each opened, checked and read in a worker process.

    PYTHONPATH=. python scripts/fuzz_metadata.py [--cases 20000] [--seed 1]

Prints the outcome counts; exits 1 on the first crash, hang or wrong read.
Uses the same case function as tests/integrity/test_fuzz.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integrity.fuzzcase import run_case, snapshot  # noqa: E402
from tests.integrity.populate import populate  # noqa: E402
from thinp.config import METADATA_BLOCK_SIZE  # noqa: E402
from thinp.thin import ThinPool  # noqa: E402
from thinp.thin.dm_metadata import DmMetadata  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as base:
        src = os.path.join(base, "pool")
        pool = populate(src, seed=args.seed, metadata_size="2M")
        pool.reserve_metadata_snap()
        pool.close()
        previous = snapshot(src)
        pool = ThinPool.open(src)
        pool.device(0).write(0, 4096)
        pool.close()
        expected = (snapshot(src), previous)
        with DmMetadata.open(os.path.join(src, "metadata")) as md:
            used = np.flatnonzero(md.metadata_counts() > 0)
            size = md.sb.metadata_nr_blocks * METADATA_BLOCK_SIZE
        outcomes: dict = {}
        ctx = multiprocessing.get_context("forkserver")
        with cf.ProcessPoolExecutor(args.workers, mp_context=ctx) as ex:
            pending = {}
            for k in range(args.cases):
                if rng.random() < 0.1:
                    case = ([], int(rng.integers(0, size)))
                else:
                    flips = []
                    for _ in range(int(rng.integers(1, 5))):
                        if rng.random() < 0.5:
                            off = int(rng.choice(used)) * METADATA_BLOCK_SIZE + int(rng.integers(0, METADATA_BLOCK_SIZE))
                        else:
                            off = int(rng.integers(0, size))
                        flips.append((off, int(rng.integers(1, 256))))
                    case = (flips, None)
                work = os.path.join(base, f"case{k % (4 * args.workers)}")
                pending[ex.submit(run_case, src, work, case[0], case[1], expected)] = case
                if len(pending) >= 2 * args.workers:
                    fut = next(cf.as_completed(pending, timeout=300))
                    c = pending.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as e:  # noqa: BLE001
                        print(f"FAIL on {c}: {e!r}")
                        return 1
                    kind = res.split(":")[0]
                    outcomes[kind] = outcomes.get(kind, 0) + 1
                    # work dirs are reused round-robin; wait for all before wrapping
            for fut in cf.as_completed(pending, timeout=300):
                res = fut.result()
                kind = res.split(":")[0]
                outcomes[kind] = outcomes.get(kind, 0) + 1
        print(f"{args.cases} cases: {outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

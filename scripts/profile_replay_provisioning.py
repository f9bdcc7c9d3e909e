"""Where the CPU of random provisioning through ``ThinPool.replay`` goes.

Runs ``bench_pool.py``'s random-provisioning case (1 M 4 KiB first writes
into a 1 TiB thin, default settings) in this process, round by round (or, with ``--sequential``, its sequential case: 4 M
first writes into blocks 0, 1, 2, ...), each
round in a new pool, and splits each round's wall, user and system time
between the index's replay kernel, ``apply_log`` (dm's btree inserts) and
the commit.  The first round of a fresh process is the one a single
``thinp replay`` pays.  A profiling aid: it wraps private functions.

    PYTHONPATH=$PWD python scripts/profile_replay_provisioning.py [ROUNDS] [--serial] [--sequential]
"""
from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import thinp  # noqa: E402
from thinp.thin import _kernels as TK  # noqa: E402
from thinp.thin import pool as P  # noqa: E402
from bench_pool import BS, RNG_SEED, _trace, _warm  # noqa: E402


def _usage(who=resource.RUSAGE_SELF) -> np.ndarray:
    r = resource.getrusage(who)
    return np.array([time.perf_counter(), r.ru_utime, r.ru_stime])


def _wrap(owner, name: str, label: str, acc: dict) -> None:
    fn = getattr(owner, name)

    def timed(*a, **kw):
        t0 = _usage(resource.RUSAGE_THREAD)
        r = fn(*a, **kw)
        acc[label] = acc.get(label, 0) + (_usage(resource.RUSAGE_THREAD) - t0)
        return r

    setattr(owner, name, timed)


def main(rounds: int, serial: bool = False, sequential: bool = False) -> None:
    P.OVERLAP_APPLY = not serial
    work = tempfile.mkdtemp(prefix="thinp-prof-")
    try:
        _warm(work)
        nr = (1 << 40) // BS
        if sequential:  # bench_pool's sequential case: blocks 0, 1, 2, ...
            n = 1 << 22
            trace = _trace(0, np.arange(n))
        else:
            n = 1 << 20
            trace = _trace(0, np.random.default_rng(RNG_SEED).choice(nr, n, replace=False))
        acc: dict = {}
        _wrap(TK, "replay", "index replay kernel", acc)
        _wrap(P.ThinPool, "_apply_log_kernel", "apply_log", acc)
        _wrap(P.ThinPool, "_commit", "commit", acc)
        for r in range(rounds):
            acc.clear()
            path = os.path.join(work, f"p{r}")
            pool = thinp.ThinPool.create(path, "1T")
            pool.create_thin(0, "1T")
            t0 = _usage()
            pool.replay(trace)
            w, u, s = _usage() - t0
            print(f"round {r}: wall {w:.3f} s, user {u:.3f} s, system {s:.3f} s: {n / w / 1e6:.2f} M/s wall, "
                  f"{n / (u + s) / 1e6:.2f} M/s by CPU; load {os.getloadavg()[0]:.1f}"
                  f"{' (serial)' if serial else ''}")
            for label, (w, u, s) in acc.items():
                print(f"  {label:20s} wall {w:.3f} s, user {u:.3f} s, system {s:.3f} s")
            pool.close()
            shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 2, "--serial" in sys.argv[1:], "--sequential" in sys.argv[1:])

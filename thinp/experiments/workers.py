"""Worker processes for the experiments: compare's drivers and sweep's points."""
from __future__ import annotations

import os


def mp_context():
    """Fork where the OS can (no re-import, numba's compiled kernels
    inherited, no ``if __name__ == "__main__"`` guard needed), else spawn."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def process_pool(n: int, initializer=None, initargs=(), ctx=None):
    """A pool of ``n`` worker processes in ``ctx`` (default :func:`mp_context`),
    all started on return -- so a caller makes it before starting any thread
    of its own (a progress bar's): forking a threaded process is unsafe."""
    import concurrent.futures as cf

    ctx = ctx or mp_context()
    ex = cf.ProcessPoolExecutor(max_workers=max(1, n), mp_context=ctx, initializer=initializer,
                                initargs=initargs)
    if ctx.get_start_method() == "fork":
        ex.submit(int).result()      # a fork-context pool starts every worker on its first task
    return ex


def cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

"""Experiments built on the public API: driver comparison (:mod:`.compare`), overcommit curves and
parameter sweeps."""
from __future__ import annotations

import os


def cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def __getattr__(name):
    if name == "compare":
        from .compare import compare
        return compare
    if name == "overcommit":
        from .overcommit import overcommit
        return overcommit
    if name == "run_sweep":
        from .sweep import run_sweep
        return run_sweep
    raise AttributeError(name)

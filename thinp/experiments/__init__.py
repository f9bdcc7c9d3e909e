"""Experiments built on the public API: driver comparison (:mod:`.compare`), overcommit curves and
parameter sweeps."""
from __future__ import annotations

from .workers import cpus, mp_context, process_pool, stop_pool  # noqa: F401  (re-exported)


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

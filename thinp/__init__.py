"""thinp: a block-level thin-provisioning simulator.

A numba engine that behaves like Linux dm-thin, with ext4/xfs-like filesystems
and Docker's storage drivers above it.  The public API is curated here.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import errors  # noqa: F401
from .trace import DISCARD, READ, TRACE_DTYPE, WRITE, make_trace  # noqa: F401
from .units import parse_size  # noqa: F401

_LAZY = {
    "ThinPool": ("thinp.thin", "ThinPool"),
    "ThinDevice": ("thinp.thin", "ThinDevice"),
    "PoolStatus": ("thinp.thin", "PoolStatus"),
    "ThinStatus": ("thinp.thin", "ThinStatus"),
    "metadata_size": ("thinp.thin.metadata_size", "metadata_size"),
    "Engine": ("thinp.engine", "Engine"),
    "compare": ("thinp.experiments.compare", "compare"),
    "overcommit": ("thinp.experiments.overcommit", "overcommit"),
    "sweep": ("thinp.experiments.sweep", "run_sweep"),
}


def __getattr__(name):
    """Import the numba engine only when it is first used."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'thinp' has no attribute {name!r}")

__all__ = ["Engine", "compare", "ThinPool", "ThinDevice", "PoolStatus", "ThinStatus", "metadata_size", "TRACE_DTYPE",
           "READ", "WRITE", "DISCARD", "make_trace", "parse_size", "errors"]

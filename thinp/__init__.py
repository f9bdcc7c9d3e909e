"""thinp: a block-level thin-provisioning simulator.

A numba engine that behaves like Linux dm-thin, with ext4/xfs-like filesystems
and Docker's storage drivers above it.  The public API is curated here.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import errors  # noqa: F401
from .thin import PoolStatus, ThinDevice, ThinPool, ThinStatus, metadata_size  # noqa: F401
from .trace import DISCARD, READ, TRACE_DTYPE, WRITE, make_trace  # noqa: F401
from .units import parse_size  # noqa: F401

__all__ = ["ThinPool", "ThinDevice", "PoolStatus", "ThinStatus", "metadata_size", "TRACE_DTYPE",
           "READ", "WRITE", "DISCARD", "make_trace", "parse_size", "errors"]

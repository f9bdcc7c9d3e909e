"""Extent allocation over a block bitmap: the public face of the kernels
the filesystems allocate with, for other layers that keep a bitmap of
their own (the btrfs and zfs models' data allocators).

``bitmap`` is uint8[nr_blocks] (1 = in use); ``first_free`` and
``zone_used`` are the per-zone hints :mod:`thinp.fs.core` documents.  See
each function's docstring in :mod:`thinp.fs._kernels`.
"""
from __future__ import annotations

from ._kernels import count_free, find_extent, free_runs, set_range  # noqa: F401  (re-exported)

__all__ = ["count_free", "find_extent", "free_runs", "set_range"]

"""Large arrays in small pages, for what a pool's open allocates.

numpy asks for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every
array of 4 MiB or more.  With the kernel's default ``defrag=madvise`` each
first touch of such a 2 MiB page may stall in direct compaction, and the
arrays an open fills (reference counts and space maps of 16 M data blocks,
a few hundred MiB in all) then cost more system time than the work itself:
measured on a fresh process opening a pool with 16 M mappings, 1.4-2.8 s of
system time with numpy's huge pages against 0.4 s without.  These arrays are
scanned in order on open and touched sparsely afterwards, so small pages
lose little; :func:`zeros` maps them anonymously without the advice (the
kernel zero-fills each page on first touch, once).  Under
``transparent_hugepage/enabled=always`` the kernel still gives them huge
pages, as it gives every mapping.
"""
from __future__ import annotations

import mmap

import numpy as np

#: below this, numpy's allocator (no huge-page advice) is as good
SMALL = 1 << 22


def zeros(n: int, dtype) -> np.ndarray:
    """A zeroed, writable ``dtype[n]`` array in memory without huge-page
    advice (numpy's own for small sizes)."""
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    if nbytes < SMALL:
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE), dtype=dtype)


def copy(a: np.ndarray, dtype=None) -> np.ndarray:
    """A copy of the 1-d array ``a`` (as ``dtype``), allocated by :func:`zeros`."""
    out = zeros(a.shape[0], a.dtype if dtype is None else dtype)
    out[:] = a
    return out

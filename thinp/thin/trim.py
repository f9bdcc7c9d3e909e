"""``thinp trim``: punch the data file's free blocks out, like thin_trim.

thin_trim discards every data block the data space map shows free, so the
storage below (an SSD, or here a sparse file) can reclaim it.  Here each run
of free blocks becomes one ``fallocate(PUNCH_HOLE)`` on ``DIR/data``.

Difference from Debian's thin-provisioning-tools 0.9.0: that thin_trim has
an off-by-one in the end of the range it discards, so it also discards the
last allocated block (its data is lost on a device that honours discard).
thinp discards exactly the blocks with count 0 and nothing else; the tests
check that every allocated block keeps its bytes.

The pool must not be open read-write elsewhere (the metadata is opened
read-only, which a writer's exclusive lock refuses).
"""
from __future__ import annotations

import os

import numpy as np

from .pool import ThinPool, punch_hole


def free_runs(drc: np.ndarray):
    """(begin, end) block arrays, half-open, of every run of count-0 blocks."""
    free = np.concatenate([[False], drc == 0, [False]]).astype(np.int8)
    edges = np.diff(free)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def trim(pool_dir) -> tuple[int, int]:
    """Punch every free data block; returns (runs, blocks) discarded."""
    pool_dir = os.fspath(pool_dir)
    if not os.path.isdir(pool_dir):
        raise FileNotFoundError(f"{pool_dir}: no such pool directory")
    with ThinPool.open(pool_dir, read_only=True) as pool:
        bs = pool.block_size
        # dm's data space map: a block is free when no leaf maps it
        begin, end = free_runs(pool.data_counts())
        fd = os.open(os.path.join(pool_dir, "data"), os.O_RDWR)
        try:
            for b, e in zip(begin.tolist(), end.tolist()):
                punch_hole(fd, b * bs, (e - b) * bs)
        finally:
            os.close(fd)
        return len(begin), int((end - begin).sum())

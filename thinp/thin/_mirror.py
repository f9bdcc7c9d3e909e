"""Apply the replay kernel's mapping-change log to dm's btree, in order.

Private to :mod:`thinp.thin.pool`.  The log is int64[cap, 4], one row per
mapping change the volatile index made: dev_id, vblock, dm's leaf value
``pblock << 24 | time`` (or -1 for an unmap), op index.  Each row becomes
dm-thin's own metadata operation (``dm_thin_insert_block`` after the data
block's allocation, or ``dm_thin_remove_block``) through the numba btree
kernels, so tree shapes and metadata use are the kernel's.

dm-thin refuses a metadata operation once free metadata falls to its
reserve (the pool goes read-only); the kernel below stops at that row.
Free metadata is dm's count: blocks used at the last commit plus those
allocated since (freed ones come back only at the commit).
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ..pdata.mapping_tree import (PREFETCH_AHEAD, inc_data, insert_mapping_cached, prefetch_leaf,
                                  remove_mapping_scratch, shadow_data_bitmap)
from ..pdata.space_map import ENTRIES_PER_BITMAP


@njit
def apply_log(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log, n,
              halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out):
    """Apply rows ``0..n`` of ``log``.  ``out`` gets (new root, rows done,
    row at which free metadata fell to ``lwm`` or -1, free metadata blocks
    then, mappings added, mappings removed).  Free metadata is counted as
    dm's metadata space map counts it: the blocks in use at the last commit
    (``used_commit``) and every block allocated since (``tst[1]`` less
    ``allocs_commit``) are not free, as blocks freed in a transaction are
    not reusable before its commit.  Returns 0; -1 when free metadata is
    down to ``reserve`` before a row (``out[1]`` is that row; rows before it
    are applied and it is untouched: dm-thin commits there); -2 when a
    row's operation failed part-way for want of a free block.  A row's new
    data block shadows its bitmap first when it is the first count change
    there this transaction, as dm's allocation does (``dst``, see
    DiskSpaceMap.kernel_state)."""
    nr = count.shape[0]
    res = np.zeros(2, dtype=np.int64)
    # scratch for the btree kernels, and the leaf a row changed in place
    # (kept while rows land in it: a shadowed leaf takes its later rows
    # with one search; a removal or a split empties it)
    sp = np.zeros(4, dtype=np.int64)
    cache = np.full(2, -1, dtype=np.int64)
    hi = np.zeros(3, dtype=np.uint64)
    lres = np.zeros(3, dtype=np.int64)
    out[2] = -1
    out[3] = nr - used_commit - (tst[1] - allocs_commit)
    added = 0
    removed = 0
    armed = lwm_armed
    dbm_lo = np.int64(-ENTRIES_PER_BITMAP)  # the data bitmap known shadowed
    for k in range(n):
        free_now = nr - used_commit - (tst[1] - allocs_commit)
        if armed and free_now <= lwm:
            armed = False
            out[2] = k
            out[3] = free_now
        if free_now <= reserve:
            out[0] = root
            out[1] = k
            out[4] = added
            out[5] = removed
            return -1
        j = k + PREFETCH_AHEAD
        if j < n and not (log[j, 0] == log[j - 1, 0] and abs(log[j, 1] - log[j - 1, 1]) < 64):
            # a random row's leaf is cold: start fetching it now (a run's is hot)
            prefetch_leaf(m64, m32, root, log[j, 0], log[j, 1])
        dev = log[k, 0]
        vb = log[k, 1]
        v = log[k, 2]
        if v >= 0:
            p = v >> 24
            if p < dbm_lo or p >= dbm_lo + ENTRIES_PER_BITMAP:
                if shadow_data_bitmap(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p) < 0:
                    out[0] = root
                    out[1] = k
                    out[4] = added
                    out[5] = removed
                    return -2
                dbm_lo = p - p % ENTRIES_PER_BITMAP
            inc_data(dcount, dcommitted, dfree, p)
            r = insert_mapping_cached(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                      dfree, root, dev, vb, np.uint64(v), halves, sp, cache, hi, lres, res)
            added += res[1]
        else:
            cache[0] = -1
            r = remove_mapping_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                       dfree, root, dev, vb, sp, res)
            removed += res[1]
        if r < 0:
            # the operation itself failed part-way: a real metadata failure
            out[0] = root
            out[1] = k
            out[4] = added
            out[5] = removed
            return -2
        root = res[0]
    out[0] = root
    out[1] = n
    out[4] = added
    out[5] = removed
    return 0

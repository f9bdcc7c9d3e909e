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
from ..pdata.mapping_tree import (NO_BITMAP, PREFETCH_AHEAD, data_bitmap_shadowed, fetch_leaf, inc_data,
                                  insert_mapping_cached, locate_leaf, remove_mapping_scratch)

#: rows ahead whose leaf's entries are fetched, its header having landed
#: (the leaf was located PREFETCH_AHEAD rows ahead)
FILL_AHEAD = 8
#: apply_log's ring of located leaves (a power of two above PREFETCH_AHEAD)
RING = 32
#: its directory of located leaves: at most 2**DIR_BITS entries, one per
#: run of 2**DIR_SHIFT vblocks of a device (a leaf holds up to 252)
DIR_BITS = 13
DIR_SHIFT = 5
_HASH = 0x9E3779B97F4A7C15  # Fibonacci hashing of the dev_id


@njit(inline="always", refcount=False)
def _locate(m64, m32, count, txn, root, dev, vb, halves, ring, rk, s, row, ver, dl, dk, loc):
    """Ring slot ``s`` gets where row ``row`` (``dev``, ``vb``) lands (see
    apply_log) and the fetch of that leaf starts.  The directory (``dl``,
    ``dk``) answers a key within the bounds of a leaf located since the
    last change to the trees' nodes (``ver``) without a descent; a
    descent's leaf that insert_mapping_cached can take is entered there."""
    mask = np.uint64(dl.shape[0] - 1)
    key = np.uint64(vb)
    h = np.int64(((key >> np.uint64(DIR_SHIFT)) ^ (np.uint64(dev) * np.uint64(_HASH))) & mask)
    ring[s, 2] = row
    ring[s, 3] = ver
    if dl[h, 1] == ver and dl[h, 2] == dev and dk[h, 2] <= key and (dk[h, 1] != 0 or key < dk[h, 0]):
        b = dl[h, 0]
        ring[s, 0] = b
        ring[s, 1] = 1
        for i in range(3):
            rk[s, i] = dk[h, i]
    else:
        locate_leaf(m64, m32, count, txn, root, dev, vb, halves, rk[s], loc)
        b = loc[0]
        ring[s, 0] = b
        ring[s, 1] = loc[1]
        if b < 0:
            return
        if loc[1] == 0:
            # the leaf is to be shadowed (copied whole) or split
            fetch_leaf(m64, m32, b, vb, rk[s, 2], rk[s, 0], rk[s, 1], -1)
            return
        dl[h, 0] = b
        dl[h, 1] = ver
        dl[h, 2] = dev
        for i in range(3):
            dk[h, i] = rk[s, i]
    fetch_leaf(m64, m32, b, vb, rk[s, 2], rk[s, 0], rk[s, 1], 0)


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
    there this transaction, as dm's allocation does, and so does the data
    block a row unmaps or replaces, when its count drops (``dst``, see
    DiskSpaceMap.kernel_state)."""
    res = np.zeros(2, dtype=np.int64)
    # scratch for the btree kernels, and the leaf a row changed in place
    # (kept while rows land in it: a shadowed leaf takes its later rows
    # with one search; a removal or a split empties it)
    sp = np.zeros(4, dtype=np.int64)
    cache = np.full(2, -1, dtype=np.int64)
    hi = np.zeros(3, dtype=np.uint64)
    lres = np.zeros(3, dtype=np.int64)
    loc = np.zeros(2, dtype=np.int64)
    # A random row's leaf is cold: it is located PREFETCH_AHEAD rows early
    # (a read-only descent, or the directory) and fetched in two stages
    # (fetch_leaf).  Ring slot k % RING holds (leaf or -1, 1 when
    # insert_mapping_cached can take it, row, version) and the leaf's key
    # bounds, for row k.  ``ver`` counts the rows that went through dm's
    # insert or remove (which can move nodes, and keys between them); a
    # leaf located at the same version is still where row k lands, every
    # node above it this transaction's and unshared, so it is handed to
    # insert_mapping_cached as its cache (which checks the leaf's own room).
    ring = np.full((RING, 4), -1, dtype=np.int64)
    rk = np.zeros((RING, 3), dtype=np.uint64)
    nd = 16
    while nd < n and nd < (1 << DIR_BITS):
        nd *= 2
    dl = np.full((nd, 3), -1, dtype=np.int64)
    dk = np.zeros((nd, 3), dtype=np.uint64)
    return _apply(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log,
                  n, halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, res, sp, cache, hi, lres, loc,
                  ring, rk, dl, dk)


@njit(refcount=False)
def _apply(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log, n,
           halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, res, sp, cache, hi, lres, loc, ring, rk, dl,
           dk):
    """apply_log's loop, with its scratch (compiled without reference
    counting: a view of a ring slot costs nothing here)."""
    nr = count.shape[0]
    ver = 0
    out[2] = -1
    out[3] = nr - used_commit - (tst[1] - allocs_commit)
    added = 0
    removed = 0
    armed = lwm_armed
    dbm_lo = np.int64(NO_BITMAP)  # the data bitmap known shadowed (data_bitmap_shadowed)
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
            # (a run's leaf is hot, and in the cache)
            _locate(m64, m32, count, txn, root, log[j, 0], log[j, 1], halves, ring, rk, j & (RING - 1), j, ver, dl,
                    dk, loc)
        f = k + FILL_AHEAD
        if f < n:
            s = f & (RING - 1)
            if ring[s, 2] == f and ring[s, 0] >= 0 and ring[s, 1]:
                fetch_leaf(m64, m32, ring[s, 0], log[f, 1], rk[s, 2], rk[s, 0], rk[s, 1], 1)
        dev = log[k, 0]
        vb = log[k, 1]
        v = log[k, 2]
        if v >= 0:
            p = v >> 24
            dbm_lo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, dbm_lo)
            if dbm_lo < 0:
                out[0] = root
                out[1] = k
                out[4] = added
                out[5] = removed
                return -2
            inc_data(dcount, dcommitted, dfree, p)
            s = k & (RING - 1)
            if ring[s, 2] == k and ring[s, 0] >= 0 and ring[s, 1] and ring[s, 3] == ver:
                cache[0] = ring[s, 0]
                cache[1] = dev
                for i in range(3):
                    hi[i] = rk[s, i]
            r = insert_mapping_cached(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                      dfree, dst, root, dev, vb, np.uint64(v), halves, sp, cache, hi, lres, res)
            if cache[0] < 0:  # it went through dm's insert
                ver += 1
            added += res[1]
        else:
            cache[0] = -1
            ver += 1
            r = remove_mapping_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                       dfree, dst, root, dev, vb, sp, res)
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

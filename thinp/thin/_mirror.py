"""Apply the replay kernel's mapping-change log to dm's btree, in order.

Private to :mod:`thinp.thin.pool`.  The log is int64[cap, 4], one row per
mapping change the volatile index made: dev_id, vblock, dm's leaf value
``pblock << 24 | time`` (or, for an unmap, a negative value naming the
data block it held: _kernels.UNMAP_*), op index (LOG_NEW_KEY set when
the row provisions: the vblock was unmapped; LOG_OP masks it).  Each row
becomes dm-thin's own metadata operation (``dm_thin_insert_block`` after
the data block's allocation), and a discard's unmaps the
dm_thin_remove_range calls dm-thin cuts it into (_discard_piece_end),
through the numba btree kernels, so tree shapes and metadata use are the
kernel's.  A provision's row
(LOG_NEW_KEY) whose leaf dm's insert only descends to may wait for one
sorted merge into that leaf (see WAIT below): the leaf is merged before
anything reads it, so the bytes, the allocations and the row where
metadata runs out are those of applying the rows one by one.

dm-thin refuses a metadata operation once free metadata falls to its
reserve (the pool goes read-only); the kernel below stops at that row.
Free metadata is dm's count: blocks used at the last commit plus those
allocated since (freed ones come back only at the commit).
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ..pdata.mapping_tree import (HINT_BITS, NO_BITMAP, PREFETCH_AHEAD, SPACE_THRESHOLD, data_bitmap_shadowed,
                                  descend_hinted, fetch_leaf, fetch_parked, inc_data, insert_mapping_cached,
                                  leaf_merge_parked, leaf_park, locate_leaf, node_value, remove_range_scratch,
                                  subtree_height)
from ..pdata.space_map import ENTRIES_PER_BITMAP
from ._kernels import LOG_NEW_KEY, PRISON_RANGE_SHIFT, UNMAP_BLOCK_SHIFT, UNMAP_EMPTY, UNMAP_PASSDOWN, UNMAP_SHARED

#: rows ahead whose leaf's entries are fetched, its header having landed
#: (the leaf was located PREFETCH_AHEAD rows ahead)
FILL_AHEAD = 8
#: apply_log's ring of located leaves (a power of two above PREFETCH_AHEAD)
RING = 32


@njit(inline="always", refcount=False)
def _sub(m64, m32, count, txn, tst, root, dev, halves, sh):
    """``sh`` = (``dev``'s subtree root or -1, its internal levels, dev,
    blocks allocated and shadowed when found): found again when the dev
    differs or a block was allocated or shadowed since (a split or a
    shadow can move it)."""
    av = tst[1] + tst[2]
    if sh[2] != dev or sh[3] != av:
        subtree_height(m64, m32, count, txn, root, dev, halves, sh)
        sh[2] = dev
        sh[3] = av


@njit(inline="always", refcount=False)
def _locate(m64, m32, count, txn, tst, root, dev, vb, halves, ring, rk, s, row, ver, loc, sh, hints, hshift):
    """Ring slot ``s`` gets where row ``row`` (``dev``, ``vb``) lands (see
    apply_log) and the fetch of that leaf starts.  The descent below the
    device's subtree root tries the path last taken in the key's range
    first (``hints``, see descend_hinted)."""
    key = np.uint64(vb)
    ring[s, 2] = row
    ring[s, 3] = ver
    _sub(m64, m32, count, txn, tst, root, dev, halves, sh)
    if sh[0] >= 0:
        hh = np.int64((key >> hshift) & np.uint64(hints.shape[0] - 1))
        b, dr, got, bp, bpi, lo, hi, ho = descend_hinted(m64, m32, count, txn, sh[0], sh[1], key, np.int64(hints[hh]))
        ring[s, 5] = bp
        ring[s, 6] = bpi
        rk[s, 0] = hi
        rk[s, 1] = ho
        rk[s, 2] = lo
        ring[s, 0] = b
        ring[s, 1] = dr
        ring[s, 4] = got
        if dr:
            hints[hh] = np.uint32(got)
    else:
        locate_leaf(m64, m32, count, txn, root, dev, vb, halves, rk[s], loc)
        b = loc[0]
        ring[s, 0] = b
        ring[s, 1] = loc[1]
        ring[s, 4] = 0
        ring[s, 5] = -1
        if b < 0:
            return
    # stage -1: the leaf is to be shadowed (copied whole) or split
    fetch_leaf(m64, m32, b, vb, rk[s, 2], rk[s, 0], rk[s, 1], 0 if ring[s, 1] else -1)


@njit(inline="always", refcount=False)
def _discard_piece_end(log, k, n, halves):
    """The end (one past) of the rows from ``k`` that dm-thin removes with
    one dm_thin_remove_range: the unmaps of one discard (same request and
    device).  Since 6.5 dm cuts a thin device's discard into bios at
    1024-block virtual boundaries (thin_ctr's max_discard_granularity,
    thin_io_hints' max_discard_sectors: dm core's __max_io_len), with or
    without passdown.  Without passdown (process_discard_cell_no_passdown)
    each bio's range is one removal; with passdown (break_up_discard_bio)
    each run dm_thin_find_mapped_range finds in the bio -- contiguous
    vblocks mapping contiguous data blocks, all shared or none -- cut at
    1024-block data boundaries too.  ``halves`` (kernels before 5.14, so before 6.5
    too): no 1024 cut.  The rows of a discard hold every block it unmapped,
    and without passdown an UNMAP_EMPTY row for each 1024-block piece that
    unmapped nothing, so the range from the first row's vblock to the last
    row's end (_row_end) holds no other mapping.  (Not dm's yet: a discard
    cut by a full log, over 65,536 unmapped blocks, or near the metadata
    reserve, where the pool applies rows one at a time.)"""
    x = -1 - log[k, 2]
    passdown = (x & UNMAP_PASSDOWN) != 0
    j = k + 1
    while j < n and log[j, 2] < 0 and log[j, 0] == log[k, 0] and log[j, 3] == log[k, 3] and log[j, 1] > log[j - 1, 1]:
        y = -1 - log[j, 2]
        if passdown:
            py = y >> UNMAP_BLOCK_SHIFT
            pp = (-1 - log[j - 1, 2]) >> UNMAP_BLOCK_SHIFT
            if log[j, 1] != log[j - 1, 1] + 1 or py != pp + 1 or (y & UNMAP_SHARED) != (x & UNMAP_SHARED):
                break
            if not halves and (py >> PRISON_RANGE_SHIFT) != ((x >> UNMAP_BLOCK_SHIFT) >> PRISON_RANGE_SHIFT):
                break
        if not halves and (log[j, 1] >> PRISON_RANGE_SHIFT) != (log[k, 1] >> PRISON_RANGE_SHIFT):
            break
        j += 1
    return j


# Deferred rows.  Within a transaction a leaf's contents do not depend on
# the order of the new keys put into it while it neither splits nor
# rebalances: a row adding a key (LOG_NEW_KEY: the vblock was unmapped, so
# no replacement and no data count drop) that dm's insert would only
# descend to its leaf for (every node on the way this transaction's and
# unshared, no internal node full: the allocations, shadows and internal
# key changes are all in the descent, none of which it makes) and whose
# leaf has room counting the rows already waiting for it is only recorded
# against that leaf.  A leaf's waiting rows go in with one sorted merge
# (``_flush``) before anything else reads or changes the leaf -- a row
# that goes through dm's insert (a split, a rebalance, a shadow, a
# replacement) first flushes the leaf it lands in and that leaf's two
# siblings, which dm's rebalance looks at; a removal, or a return,
# flushes every leaf -- so each leaf holds, whenever it is read, what the
# row-by-row apply would have put there, and every allocation happens at
# the same row.  A leaf's waiting rows are kept in its own empty tail,
# past its entries (leaf_park), their count in the leaf's header padding
# word (WAIT), 0 in dm's format and again after the merge
# (leaf_merge_parked): the header line is the one the look-ahead fetched,
# and the tail's lines are fetched a few rows ahead (fetch_parked).
# ``act`` lists the leaves given rows (``nact[0]`` of them).  Rows may
# wait across apply_log_kept calls of one transaction, so a leaf takes the
# rows of several logs in one merge, which reads and moves the whole leaf:
# at the end of each 65,536-row log of 1 M random provisions into a 1 TiB
# thin, about 7,000 leaves were merged with some 9 rows each.

#: the header word (32-bit, node_header.padding) holding how many rows
#: wait in a leaf's tail
WAIT = 7


@njit(refcount=False)
def _flush(m64, m32, lf, kbuf, vbuf):
    """Merge leaf ``lf``'s waiting rows, kept in its tail, into it
    (leaf_merge_parked: no key among them is in the leaf, nor twice)."""
    c = np.int64(m32[lf, WAIT])
    if c == 0:
        return
    m32[lf, WAIT] = 0
    leaf_merge_parked(m64, m32, lf, c, kbuf, vbuf)


@njit(refcount=False)
def _flush_all(m64, m32, kbuf, vbuf, act, nact):
    """Every waiting leaf's rows in.  The leaves ahead are fetched in
    fetch_leaf's two stages: four ahead the header, two ahead the lines of
    its keys and values, not its empty tail (fetching the whole 4 KiB two
    ahead, 64 lines at once, stalled on the line fill buffers: about a
    fifth of apply_log's samples in ``perf`` on 1 M random provisions)."""
    na = nact[0]
    for a in range(na):
        if a + 4 < na:
            fetch_leaf(m64, m32, act[a + 4], 0, np.uint64(0), np.uint64(0), np.uint64(1), 0)
        if a + 2 < na:
            fetch_leaf(m64, m32, act[a + 2], 0, np.uint64(0), np.uint64(0), np.uint64(1), 1)
        _flush(m64, m32, act[a], kbuf, vbuf)
    nact[0] = 0


@njit(refcount=False)
def _flush_around(m64, m32, count, kbuf, vbuf, act, nact, leaf, parent, pi, full):
    """Before dm's insert of a row landing in ``leaf`` (-1: not known),
    under ``parent`` at index ``pi`` (-1: not known): that leaf's and its
    siblings' waiting rows, which dm's rebalance and split read; every
    leaf's when the leaf or its parent is not known.  ``full``: the row
    adds a key to that full leaf along a path dm's insert only descends
    (no internal node splits, so ``parent`` stays its parent), in the
    current rule: dm then rebalances into the left sibling alone when it is
    unshared with SPACE_THRESHOLD free entries (_rebalance_or_split), and
    reads the right one only otherwise."""
    if nact[0] == 0:
        return
    if leaf < 0 or parent < 0:
        _flush_all(m64, m32, kbuf, vbuf, act, nact)
        return
    _flush(m64, m32, leaf, kbuf, vbuf)
    nr = np.int64(m32[parent, 4])
    if pi > 0:
        lb = np.int64(node_value(m64, m32, parent, pi - 1))
        _flush(m64, m32, lb, kbuf, vbuf)
        if full and count[lb] <= 1 and np.int64(m32[lb, 5]) - np.int64(m32[lb, 4]) >= SPACE_THRESHOLD:
            return
    if pi + 1 < nr:
        _flush(m64, m32, np.int64(node_value(m64, m32, parent, pi + 1)), kbuf, vbuf)


@njit(inline="always", refcount=False)
def _row_end(log, j):
    """One past the last vblock unmap row ``j`` covers: its own, or an
    UNMAP_EMPTY piece's end."""
    x = -1 - log[j, 2]
    if x & UNMAP_EMPTY:
        return log[j, 1] + (x >> UNMAP_BLOCK_SHIFT)
    return log[j, 1] + 1


@njit(inline="always", refcount=False)
def _leave(m64, m32, kbuf, vbuf, act, nact, out, root, k, added, removed, code, keep):
    """End apply_log at row ``k`` with ``code``: every waiting leaf's rows
    in first, so the tree holds what the rows before ``k`` made -- unless
    ``keep`` and the log was applied whole with no low water mark crossed
    (no event for the pool to raise: nothing runs before its next
    apply_log call)."""
    if not (keep and code == 0 and out[2] < 0):
        _flush_all(m64, m32, kbuf, vbuf, act, nact)
    out[0] = root
    out[1] = k
    out[4] = added
    out[5] = removed
    return code


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
    return apply_log_kept(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root,
                          log, n, halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, new_waiting(n + 1),
                          False)


@njit
def new_waiting(leaves):
    """The list of up to ``leaves`` leaves with rows waiting for their merge
    (see WAIT; a full list merges them all), and how many are on it."""
    return np.zeros(max(1, leaves), dtype=np.int64), np.zeros(1, dtype=np.int64)


@njit
def apply_log_kept(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log,
                   n, halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, waiting, keep):
    """:func:`apply_log` with the list of leaves with waiting rows
    (new_waiting) passed in, rows left waiting by an earlier call in them.  ``keep``: the
    rows still waiting at the end stay so (their leaves' merges left to a
    later call) when the log went in whole and crossed no low water mark;
    otherwise, and always with ``keep`` false, every leaf's rows go in
    before it returns.  A call with ``n`` 0 merges them.  Nothing may read
    or copy dm's btree between a call that kept rows and the next."""
    res = np.zeros(2, dtype=np.int64)
    # scratch for the btree kernels, and the leaf a row changed in place
    # (kept while rows land in it: a shadowed leaf takes its later rows
    # with one search; a removal or a split empties it)
    sp = np.zeros(4, dtype=np.int64)
    cache = np.full(4, -1, dtype=np.int64)
    hi = np.zeros(3, dtype=np.uint64)
    lres = np.zeros(5, dtype=np.int64)
    loc = np.zeros(2, dtype=np.int64)
    # A random row's leaf is cold: it is located PREFETCH_AHEAD rows early
    # (a read-only descent: descend_hinted) and fetched in two stages
    # (fetch_leaf).  Ring slot k % RING holds (leaf or -1, 1 when
    # insert_mapping_cached can take it, row, version, the leaf's path: its
    # index in each internal node, its parent or -1, its index there) and
    # the leaf's key bounds, for row k.
    # ``ver`` counts the rows that went through dm's insert or remove (which
    # can move nodes, and keys between them); a leaf located at the same
    # version is still where row k lands, every node above it this
    # transaction's and unshared, so it is handed to insert_mapping_cached
    # as its cache (which checks the leaf's own room).  Located at an older
    # version, the row descends again along that path (descend_hinted: a
    # search only where an index moved), not from scratch.
    ring = np.full((RING, 7), -1, dtype=np.int64)
    rk = np.zeros((RING, 3), dtype=np.uint64)
    # the device's subtree root and height (see _sub); the paths last taken
    # by key range (descend_hinted), over the log's vblocks
    sh = np.full(4, -1, dtype=np.int64)
    top = 0
    for k in range(n):
        top = max(top, log[k, 1])
    hshift = 0
    while (top >> hshift) >> HINT_BITS:
        hshift += 1
    hints = np.zeros(1 << HINT_BITS if n > 2 * PREFETCH_AHEAD else 1, dtype=np.uint32)
    act, nact = waiting
    return _apply(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log,
                  n, halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, res, sp, cache, hi, lres, loc,
                  ring, rk, sh, hints, np.uint64(hshift), act, nact, np.zeros(256, dtype=np.uint64),
                  np.zeros(256, dtype=np.uint64), keep)


@njit(refcount=False)
def _apply(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, log, n,
           halves, reserve, lwm, lwm_armed, used_commit, allocs_commit, out, res, sp, cache, hi, lres, loc, ring, rk, sh,
           hints, hshift, act, nact, kbuf, vbuf, keep):
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
    past = 0  # rows before this one went into a range removal already
    for k in range(n):
        if k < past:
            continue
        free_now = nr - used_commit - (tst[1] - allocs_commit)
        if armed and free_now <= lwm:
            armed = False
            out[2] = k
            out[3] = free_now
        if free_now <= reserve:
            return _leave(m64, m32, kbuf, vbuf, act, nact, out, root, k, added, removed, -1, keep)
        j = k + PREFETCH_AHEAD
        if j < n and not (log[j, 0] == log[j - 1, 0] and abs(log[j, 1] - log[j - 1, 1]) < 64):
            # (a run's leaf is hot, and in the cache)
            _locate(m64, m32, count, txn, tst, root, log[j, 0], log[j, 1], halves, ring, rk, j & (RING - 1), j, ver,
                    loc, sh, hints, hshift)
        f = k + FILL_AHEAD
        if f < n:
            s = f & (RING - 1)
            if ring[s, 2] == f and ring[s, 0] >= 0 and ring[s, 1]:
                if not log[f, 3] & LOG_NEW_KEY:
                    fetch_leaf(m64, m32, ring[s, 0], log[f, 1], rk[s, 2], rk[s, 0], rk[s, 1], 1)
                else:  # (where it will wait, most likely)
                    fetch_parked(m64, m32, ring[s, 0], np.int64(m32[ring[s, 0], WAIT]))
        dev = log[k, 0]
        vb = log[k, 1]
        v = log[k, 2]
        if v >= 0:
            p = v >> 24
            if p < dbm_lo or p >= dbm_lo + ENTRIES_PER_BITMAP:  # (as write_blocks: the helper on a miss only)
                dbm_lo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p,
                                              dbm_lo)
                if dbm_lo < 0:
                    return _leave(m64, m32, kbuf, vbuf, act, nact, out, root, k, added, removed, -2, keep)
            inc_data(dcount, dcommitted, dfree, p)
            s = k & (RING - 1)
            key = np.uint64(vb)
            lf = np.int64(-1)  # where the row lands, its parent and index there (-1: not known)
            lp = np.int64(-1)
            lpi = np.int64(-1)
            full = False  # a new key for a full leaf along a path dm only descends (_flush_around)
            tagged = ring[s, 2] == k and ring[s, 0] >= 0
            if tagged and ring[s, 1] and ring[s, 3] == ver:
                cache[0] = ring[s, 0]
                cache[1] = dev
                cache[2] = ring[s, 5]
                cache[3] = ring[s, 6]
                for i in range(3):
                    hi[i] = rk[s, i]
            elif not (cache[0] >= 0 and cache[1] == dev and key >= hi[2] and (hi[1] or key < hi[0])):
                # nodes moved since the row was located (or it was not):
                # the descent again, along its located path
                _sub(m64, m32, count, txn, tst, root, dev, halves, sh)
                cache[0] = -1
                if sh[0] >= 0:
                    hh = np.int64((key >> hshift) & np.uint64(hints.shape[0] - 1))
                    path = ring[s, 4] if tagged else np.int64(hints[hh])
                    b, dr, got, bp, bpi, lo, up, uo = descend_hinted(m64, m32, count, txn, sh[0], sh[1], key, path)
                    lf = b
                    lp = bp
                    lpi = bpi
                    if dr:
                        cache[0] = b
                        cache[1] = dev
                        cache[2] = bp
                        cache[3] = bpi
                        hi[0] = up
                        hi[1] = uo
                        hi[2] = lo
                        hints[hh] = np.uint32(got)
            if cache[0] >= 0:
                lf = cache[0]
                lp = cache[2]
                lpi = cache[3]
                if log[k, 3] & LOG_NEW_KEY:
                    # a new key dm's insert only descends for: it waits
                    # for its leaf's merge while the leaf has room
                    if nact[0] == act.shape[0]:  # (the list of leaves is full: every leaf's rows in)
                        _flush_all(m64, m32, kbuf, vbuf, act, nact)
                    c = np.int64(m32[lf, WAIT])
                    if np.int64(m32[lf, 4]) + c < np.int64(m32[lf, 5]):
                        if c == 0:
                            act[nact[0]] = lf
                            nact[0] += 1
                        leaf_park(m64, m32, lf, c, key, np.uint64(v))
                        m32[lf, WAIT] = np.uint32(c + 1)
                        added += 1
                        continue
                    full = not halves
            _flush_around(m64, m32, count, kbuf, vbuf, act, nact, lf, lp, lpi, full)
            r = insert_mapping_cached(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                      dfree, dst, root, dev, vb, np.uint64(v), halves, sp, cache, hi, lres, res)
            if cache[0] < 0:  # it went through dm's insert or a rebalance: keys or nodes moved
                ver += 1
            added += res[1]
        else:
            # a discard's unmaps, as dm_thin_remove_range calls (pdplace5)
            _flush_all(m64, m32, kbuf, vbuf, act, nact)
            cache[0] = -1
            ver += 1
            past = _discard_piece_end(log, k, n, halves)
            r = remove_range_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                     dfree, dst, sp, loc, root, dev, vb, _row_end(log, past - 1), halves, res)
            if r == -3:
                r = -1
            removed += res[1]
            # a removal can take a level off the subtree without allocating
            # (its root's only child, already shadowed, becomes the root):
            # _sub finds the root and height again
            sh[2] = -1
        if r < 0:
            # the operation itself failed part-way: a real metadata failure
            return _leave(m64, m32, kbuf, vbuf, act, nact, out, root, k, added, removed, -2, keep)
        root = res[0]
    return _leave(m64, m32, kbuf, vbuf, act, nact, out, root, n, added, removed, 0, keep)

"""numba kernels for dm's two-level mapping tree (8-byte values everywhere).

Private.  The same operations as :mod:`thinp.pdata.btree_write` (which is
the reference: a test replays random operations through both and compares
the files byte for byte), for the trees dm-thin changes on every write:
the mapping tree, dev_id -> subtree root -> vblock -> ``pblock << 24 | time``.

Arrays (views of one metadata buffer, and the managers' state):

m64, m32   uint64[nb, 512], uint32[nb, 1024]  the blocks; a node's header
           words are m32[b, 1] flags, m32[b, 4] nr_entries, m32[b, 5]
           max_entries, m32[b, 6] value_size; keys m64[b, 4 + i], values
           m64[b, 4 + max_entries + i]
count, committed, free, txn, kind, fresh   the transaction manager's
           (see transaction.py; ``committed`` may carry the bitmaps'
           changed flags, as ``dcommitted``) and the block manager's ``fresh``
tst        int64 [cursor, allocations, shadows, nr metadata bitmaps, their
           blocks...]
dcount, dcommitted, dfree, dst   the data space map's (``dcommitted`` may
           carry one "changed" flag per bitmap after the counts; kernels set
           it wherever they change ``dcount``)

Kernels return >= 0, or -1 when metadata ran out (the transaction must be
abandoned, as dm aborts it).
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from .intrinsics import memmove, prefetch

INTERNAL = 1
LEAF = 2
HDR = 4  # header words (32 bytes)
MAX8 = 252  # calc_max_entries(8)
KIND_BTREE = 1
KIND_BITMAP = 2  # block.KIND_BITMAP
ST_BITMAPS = 4  # transaction.ST_BITMAPS
ST_NO_WRAP = 259  # transaction.ST_NO_WRAP: 1 when a free-block search stops at the end
THRESH = 8
SPACE_THRESHOLD = THRESH  # dm-btree.c's SPACE_THRESHOLD: a sibling takes a rebalance with this much room
ENTRIES_PER_BITMAP = 16320  # space_map.ENTRIES_PER_BITMAP


@njit(inline="always", refcount=False)
def _find_free(free, begin, wrap):
    """The first free block from ``begin``; then, when ``wrap`` (5.14+),
    from block 0 (space_map.find_free)."""
    n = free.shape[0]
    for i in range(begin, n):
        if free[i]:
            return i
    for i in range(0, min(begin, n) if wrap else 0):
        if free[i]:
            return i
    return -1


@njit(inline="always", refcount=False)
def _take(count, committed, free, txn, kind, fresh, tst, b, k):
    tst[0] = b + 1
    tst[1] += 1
    _dtouch(count, committed, b)
    _used(count, committed, 1)
    count[b] = 1
    free[b] = False
    txn[b] = 1
    kind[b] = k
    fresh[b] = 1


@njit(inline="always", refcount=False)
def _alloc(m64, count, committed, free, txn, kind, fresh, tst):
    b = _alloc_for_copy(m64, count, committed, free, txn, kind, fresh, tst)
    if b >= 0:
        for w in range(512):
            m64[b, w] = 0
    return b


@njit(inline="always", refcount=False)
def _alloc_for_copy(m64, count, committed, free, txn, kind, fresh, tst):
    """:func:`_alloc` for a caller that overwrites all 4 KiB of the block
    at once (a shadow's copy): the block is not zeroed first (3,750
    leaf shadows of a commit after CoW stored 15 MB of zeros for
    nothing)."""
    b = _find_free(free, tst[0], tst[ST_NO_WRAP] == 0)
    if b < 0:
        return -1
    _take(count, committed, free, txn, kind, fresh, tst, b, KIND_BTREE)
    # dm shadows the metadata bitmap holding b's count at the first change
    # of one of its counts in the transaction: its copy takes the next free
    # block (tst[3] bitmaps, their blocks from tst[4]; the commit writes it;
    # with no free block left the bitmap stays unshadowed, as before)
    _shadow_meta_bitmap_of(m64, count, committed, free, txn, kind, fresh, tst, b)
    return b


#: the data space map's ``dst`` (disk_space_map.DST_*): 1 when allocation
#: does not wrap (before 5.14), how many bitmap blocks it holds (0: the
#: commit shadows them), its index tree's root when each index entry is
#: saved at once (before 5.14; -1: cached), its ref-count tree's root when
#: counts of 3 and more change it as they move (-1: the commit does), 1
#: when that tree splits even halves, four words of scratch (its spine),
#: the tree's leaf the last count went to (-1: none), that leaf's key
#: bounds, what its path allows (RC_OWN, RC_DIRECT) and the index of the
#: last entry set or inserted there (see data_ref_count_step), the blocks
DST_NO_WRAP = 1
DST_NR = 2
DST_INDEX = 3
DST_RC = 4
DST_RC_HALVES = 5
DST_SP = 6
DST_RC_LEAF = 10
DST_RC_LO = 11
DST_RC_HI = 12
DST_RC_PATH = 13
DST_RC_AT = 14
DST_BITMAPS = 15
RC_OWN = 1  # every node on the kept leaf's path this transaction's and unshared
RC_DIRECT = 2  # and no internal node on it full: dm's insert only descends to the leaf
RC_NO_BOUND = np.int64(1) << 62  # DST_RC_HI when the kept leaf has no upper bound


@njit(inline="always", refcount=False)
def _copy_block(m64, count, committed, free, txn, kind, fresh, tst, old, k):
    """dm_tm_shadow_block of an unshared block with no children to count:
    a copy in the next free block, the original losing its reference."""
    nb = _alloc_for_copy(m64, count, committed, free, txn, kind, fresh, tst)
    if nb < 0:
        return -1
    kind[nb] = k
    _dec(count, committed, free, old)
    tst[2] += 1
    for w in range(512):
        m64[nb, w] = m64[old, w]
    return nb


@njit(refcount=False)
def shadow_data_bitmap(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p):
    """sm_ll_inc's shadow_bitmap when data block ``p`` is allocated: the
    first count change in its bitmap this transaction shadows the bitmap
    there and then (the commit writes its entries); before 5.14 its index
    entry is saved at once too: dm_btree_insert of entry ``i`` shadows the
    index tree's path from the root to the leaf holding it, top down, each
    node not yet this transaction's taking the next free block and its
    parent's pointer; a full node on the way is split as that insert
    splits it (even halves: the root beneath, others into a new right
    sibling).  A path with a shared internal node is left to the commit's
    insert.  0, or -1 when metadata ran out.  Not inlined: callers skip it
    while their data blocks stay in a bitmap already shadowed.  (pdplace2,
    pdwalk, #12)"""
    i = p // ENTRIES_PER_BITMAP
    if i >= dst[DST_NR]:
        return 0
    old = dst[DST_BITMAPS + i]
    if txn[old]:
        return 0
    nb = _copy_block(m64, count, committed, free, txn, kind, fresh, tst, old, KIND_BITMAP)
    if nb < 0:
        return -1
    dst[DST_BITMAPS + i] = nb
    r = dst[DST_INDEX]
    if r < 0 or not _index_path_shadowable(m64, m32, count, r, i):
        return 0
    parent = np.int64(-1)
    slot = np.int64(0)
    b = r
    while True:
        if txn[b] == 0 or count[b] > 1:
            c = _copy_block(m64, count, committed, free, txn, kind, fresh, tst, b, KIND_BTREE)
            if c < 0:
                return -1
            if parent < 0:
                dst[DST_INDEX] = c
            else:
                m64[parent, HDR + np.int64(m32[parent, 5]) + slot] = np.uint64(c)
            b = c
        if m32[b, 4] >= m32[b, 5]:
            if parent < 0:
                if _split_beneath(m64, m32, count, committed, free, txn, kind, fresh, tst, b) < 0:
                    return -1
            else:
                b = _split_one_into_two(m64, m32, count, committed, free, txn, kind, fresh, tst, parent, slot, b,
                                        np.uint64(i))
                if b < 0:
                    return -1
        if m32[b, 1] & LEAF:
            return 0
        slot = _index_child(m64, m32, b, i)
        parent = b
        b = np.int64(m64[b, HDR + np.int64(m32[b, 5]) + slot])


@njit(inline="always", refcount=False)
def _index_child(m64, m32, b, key):
    """The entry of internal node ``b`` whose subtree holds ``key``: the
    last key at or below it (dm's lower_bound), 0 when none is."""
    nr = np.int64(m32[b, 4])
    k = np.uint64(key)
    j = np.int64(0)
    while j + 1 < nr and m64[b, HDR + j + 1] <= k:
        j += 1
    return j


@njit(inline="always", refcount=False)
def _index_path_shadowable(m64, m32, count, r, key):
    """Whether the data space map's index path to ``key`` can be shadowed
    here: no internal node on it shared (its children would need a
    reference each), none empty, no deeper than 8 levels (a sane index;
    the commit's insert checks the rest)."""
    b = r
    for _ in range(8):
        if m32[b, 1] & LEAF:
            return True
        if count[b] > 1 or m32[b, 4] == 0:
            return False
        b = np.int64(m64[b, HDR + np.int64(m32[b, 5]) + _index_child(m64, m32, b, key)])
        if b <= 0 or b >= m64.shape[0]:
            return False
    return False


@njit(inline="always", refcount=False)
def _shadow_data_bitmap_of(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p):
    """:func:`shadow_data_bitmap` for a count change that is rarely the
    first in its bitmap (a mapping replaced or removed): the test that it
    is this transaction's already is inlined, the call made only when not
    (a call passing every array costs as much as a CoW's own work)."""
    i = p // ENTRIES_PER_BITMAP
    if i >= dst[DST_NR] or txn[dst[DST_BITMAPS + i]]:
        return 0
    return shadow_data_bitmap(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p)


@njit(inline="always", refcount=False)
def data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo):
    """Before data block ``p``'s count changes: its bitmap shadowed
    (:func:`shadow_data_bitmap`) unless ``p`` lies in the bitmap starting at
    block ``lo``, which the caller knows is this transaction's already
    (NO_BITMAP: none).  Returns the first block of ``p``'s bitmap, the
    caller's ``lo`` from then on, or -1 when metadata ran out."""
    if p >= lo and p < lo + ENTRIES_PER_BITMAP:
        return lo
    if _shadow_data_bitmap_of(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p) < 0:
        return np.int64(-1)
    return p - p % ENTRIES_PER_BITMAP


@njit(refcount=False)
def _data_bitmap_shadowed_call(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo):
    """:func:`data_bitmap_shadowed`, not inlined, for write_blocks' loop
    (entered only when a new data block leaves the bitmap last shadowed):
    inlined there behind that test, sequential provisioning ran at 19.6-23.5
    M/s by CPU time at load 0.4-0.7, called, 26.4-29.2 at load 1.7-4.6."""
    return data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo)


#: a data bitmap start no block lies in (data_bitmap_shadowed's ``lo`` for
#: none): not negative, as a negative ``lo`` returned means metadata ran out
NO_BITMAP = 1 << 62


@njit(inline="always", refcount=False)
def _dec(count, committed, free, b):
    _dtouch(count, committed, b)
    c = count[b]
    count[b] = c - 1
    if c == 1:
        _used(count, committed, -1)
        if committed[b] == 0:
            free[b] = True


@njit(inline="always", refcount=False)
def _dtouch(dcount, dcommitted, p):
    """Flag block ``p``'s bitmap as changed, when ``dcommitted`` carries
    one flag per bitmap after the counts (both space maps do; see
    space_map.RefCounts)."""
    n = dcount.shape[0]
    if dcommitted.shape[0] > n:
        dcommitted[n + p // ENTRIES_PER_BITMAP] = 1


@njit(inline="always", refcount=False)
def _used(dcount, dcommitted, delta):
    """Keep the running number of non-zero counts, the last word of
    ``dcommitted`` when it carries the flags (space_map.RefCounts)."""
    m = dcommitted.shape[0]
    if m > dcount.shape[0]:
        dcommitted[m - 1] = np.uint32(np.int64(dcommitted[m - 1]) + delta)


@njit(inline="always", refcount=False)
def _ddec(dcount, dcommitted, dfree, p):
    _dtouch(dcount, dcommitted, p)
    c = dcount[p]
    dcount[p] = c - 1
    if c == 1:
        _used(dcount, dcommitted, -1)
        if dcommitted[p] == 0:
            dfree[p] = True


@njit(inline="always", refcount=False)
def _dinc(dcount, dcommitted, dfree, p):
    _dtouch(dcount, dcommitted, p)
    if dcount[p] == 0:
        _used(dcount, dcommitted, 1)
    dcount[p] += 1
    dfree[p] = False


@njit(inline="always", refcount=False)
def _ref_count_dec(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, p):
    """Before data block ``p`` loses a reference: when its count is 3 or
    more, the ref-count tree's change dm's sm_ll_dec makes then (after the
    bitmap's shadow).  The test inlined, the change called.  0, or -1 when
    metadata ran out."""
    c = np.int64(dcount[p])
    if c >= 3:
        return data_ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                   dst, p, c, False)
    return 0


@njit(inline="always", refcount=False)
def nr_used(committed):
    """Blocks with a non-zero count now: the space map's running count,
    the last word of its ``committed`` array (space_map.RefCounts.nr_used)."""
    return np.int64(committed[committed.shape[0] - 1])


@njit(refcount=False)
def inc_data(dcount, dcommitted, dfree, p):
    """One more reference on data block ``p`` (dm_sm_inc_block), its
    bitmap flagged as changed.  For callers outside these kernels that
    take a data block's reference themselves."""
    _dinc(dcount, dcommitted, dfree, p)


@njit(refcount=False)
def _inc_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, b,
                  leaf_holds):
    """inc_children of a shadowed shared node ``b``.  leaf_holds: 0 =
    nothing (counts), 1 = metadata blocks (subtree roots), 2 = data
    block_time: each data block's bitmap is shadowed as its count first
    changes, in the leaf's order (data_block_inc, sm_ll_inc).  Returns 0,
    or -1 when metadata ran out."""
    nr = m32[b, 4]
    mx = m32[b, 5]
    if m32[b, 1] & INTERNAL or leaf_holds == 1:
        for i in range(nr):
            c = np.int64(m64[b, HDR + mx + i])
            _dtouch(count, committed, c)
            if count[c] == 0:
                _used(count, committed, 1)
            count[c] += 1
            free[c] = False
    elif leaf_holds == 2:
        if dst is None:
            # a space map's own tree (``dst`` None: _ref_count_step), whose
            # nodes hold no data blocks; numba drops the other branch for
            # it, so the ref-count steps below do not call themselves
            return 0
        else:
            # the bitmaps first, in the order the blocks reach them (a shadow
            # does not read the counts), then the counts in a loop with no call;
            # unless a count reaches 3 or more, which changes the ref-count tree
            # there and then (sm_ll_inc): then block by block, as dm does
            lo = np.int64(NO_BITMAP)
            over = False
            for i in range(nr):
                p = np.int64(m64[b, HDR + mx + i] >> np.uint64(24))
                if dcount[p] >= 2 and dst[DST_RC] >= 0:
                    over = True
                    break
                if p < lo or p >= lo + ENTRIES_PER_BITMAP:
                    lo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo)
                    if lo < 0:
                        return -1
            if over:
                return _inc_children_over(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                          dfree, dst, b)
            for i in range(nr):
                _dinc(dcount, dcommitted, dfree, np.int64(m64[b, HDR + mx + i] >> np.uint64(24)))
    return 0


@njit(refcount=False)
def _inc_children_over(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, b):
    """:func:`_inc_children` of a leaf of data blocks some of whose counts
    reach 3 or more: in the leaf's order (data_block_inc's runs, sm_ll_inc
    block by block), each block's bitmap shadowed as the block first
    reaches it, then its count, and its ref-count tree entry changed as
    the count moves from 2 or more (the tree's nodes shadowed, or split,
    between this leaf's copy and whatever the transaction shadows next).
    0, or -1 when metadata ran out."""
    nr = m32[b, 4]
    mx = m32[b, 5]
    lo = np.int64(NO_BITMAP)
    legacy = dst[DST_NO_WRAP] != 0
    halves = dst[DST_RC_HALVES] != 0
    for i in range(nr):
        p = np.int64(m64[b, HDR + mx + i] >> np.uint64(24))
        if p < lo or p >= lo + ENTRIES_PER_BITMAP:
            lo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo)
            if lo < 0:
                return -1
        c = np.int64(dcount[p])
        _dinc(dcount, dcommitted, dfree, p)
        if c < 2 or dst[DST_RC] < 0:
            continue
        # (a leaf's children are mostly consecutive blocks: the next key in
        # the kept ref-count leaf, tried here before the call)
        if (not _rc_set_next(m64, m32, dst, p, c + 1, c == 2 or legacy, halves)
                and data_ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                        dfree, dst, p, c, True) < 0):
            return -1
    return 0


@njit(inline="always", refcount=False)
def _rc_set_next(m64, m32, dst, p, new, insert, halves):
    """:func:`data_ref_count_step`'s commonest case: data block ``p`` is
    the key right after the last one set in the kept ref-count leaf
    (DST_RC_AT), within the leaf's bounds, and the leaf's path lets a count
    be set there (RC_DIRECT for a count entering the tree, ``insert``;
    RC_OWN for one already in it) -- unless dm's insert would split the
    full leaf first (``halves``, the pre-5.14 rule).  Sets it to ``new``
    and returns True, or changes nothing and returns False."""
    leaf = dst[DST_RC_LEAF]
    at = dst[DST_RC_AT] + 1
    if (leaf >= 0 and dst[DST_RC_LO] <= p < dst[DST_RC_HI] and dst[DST_RC_PATH] & (RC_DIRECT if insert else RC_OWN)
            and at < m32[leaf, 4] and m64[leaf, HDR + at] == np.uint64(p)
            and not (insert and halves and m32[leaf, 4] == m32[leaf, 5])):
        _set_val(m64, m32, leaf, at, np.uint64(new))
        dst[DST_RC_AT] = at
        return True
    return False


@njit(refcount=False)
def _shadow(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, b, leaf_holds):
    """dm_tm_shadow_block + inc_children; the block to write, or -1."""
    shared = count[b] > 1
    if txn[b] and not shared:
        return b
    nb = _alloc_for_copy(m64, count, committed, free, txn, kind, fresh, tst)
    if nb < 0:
        return -1
    _dec(count, committed, free, b)
    tst[2] += 1
    for w in range(512):
        m64[nb, w] = m64[b, w]
    if shared and _inc_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                dst, nb, leaf_holds) < 0:
        return -1
    return nb


@njit(inline="always", refcount=False)
def _lower_bound(m64, m32, b, key):
    """The index of the last key <= ``key`` in node ``b``, or -1 (dm's
    lower_bound).  Branch-free: each step's load address is known without
    predicting the comparison before it, so a random key costs no branch
    misses (keys are unique, so this equals dm's search, which stops on an
    equal key)."""
    n = np.int64(m32[b, 4])
    if n == 0:
        return -1
    base = np.int64(0)
    while n > 1:
        half = n >> 1
        base += half * np.int64(m64[b, HDR + base + half] <= key)
        n -= half
    return base - np.int64(m64[b, HDR + base] > key)


@njit(inline="always", refcount=False)
def _key(m64, b, i):
    return m64[b, HDR + i]


@njit(inline="always", refcount=False)
def _val(m64, m32, b, i):
    if m32[b, 6] == 4:
        return np.uint64(m32[b, 2 * HDR + 2 * m32[b, 5] + i])
    return m64[b, HDR + m32[b, 5] + i]


@njit(inline="always", refcount=False)
def _set_val(m64, m32, b, i, v):
    if m32[b, 6] == 4:
        m32[b, 2 * HDR + 2 * m32[b, 5] + i] = np.uint32(v)
    else:
        m64[b, HDR + m32[b, 5] + i] = v


@njit(refcount=False)
def _move(m64, m32, dst, doff, src, soff, count):
    """Copy ``count`` entries (overlap-safe) from src[soff:] to dst[doff:]."""
    if count <= 0:
        return
    dm = np.int64(m32[dst, 5])
    sm = np.int64(m32[src, 5])
    w = np.int64(m64.shape[1])
    memmove(m64, dst * w + HDR + doff, src * w + HDR + soff, count)  # keys
    if m32[dst, 6] == 8:
        memmove(m64, dst * w + HDR + dm + doff, src * w + HDR + sm + soff, count)
        return
    # other widths (the space maps' 4-byte counts, the details' 24 bytes):
    # the value words, also one memmove (element by element, a ref-count
    # leaf's insert took ~3x as long)
    vw = np.int64(m32[dst, 6]) // 4
    w32 = np.int64(m32.shape[1])
    memmove(m32, dst * w32 + 2 * HDR + 2 * dm + doff * vw, src * w32 + 2 * HDR + 2 * sm + soff * vw, count * vw)


@njit(refcount=False)
def _insert_at(m64, m32, b, i, key, v):
    nr = np.int64(m32[b, 4])
    _move(m64, m32, b, i + 1, b, i, nr - i)
    m64[b, HDR + i] = key
    _set_val(m64, m32, b, i, v)
    m32[b, 4] = nr + 1


@njit(refcount=False)
def _redistribute2(m64, m32, left, right):
    nl = np.int64(m32[left, 4])
    nr = np.int64(m32[right, 4])
    total = nl + nr
    tl = total // 2
    tr = total - tl
    if nl < tl:
        d = tl - nl
        _move(m64, m32, left, nl, right, 0, d)
        _move(m64, m32, right, 0, right, d, nr - d)
    elif nl > tl:
        d = nl - tl
        if nr:
            _move(m64, m32, right, d, right, 0, nr)
        _move(m64, m32, right, 0, left, tl, d)
    m32[left, 4] = tl
    m32[right, 4] = tr


@njit(refcount=False)
def _redistribute3(m64, m32, left, center, right):
    nl = np.int64(m32[left, 4])
    nr = np.int64(m32[right, 4])
    total = nl + nr
    tl = total // 3
    tc = (total - tl) // 2
    tr = total - tl - tc
    if nl < tl:
        short = tl - nl
        _move(m64, m32, left, nl, right, 0, short)
        _move(m64, m32, center, 0, right, short, tc)
        _move(m64, m32, right, 0, right, nr - tr, tr)
    elif nl < tl + tc:
        l2c = nl - tl
        _move(m64, m32, center, 0, left, tl, l2c)
        _move(m64, m32, center, l2c, right, 0, tc - l2c)
        _move(m64, m32, right, 0, right, nr - tr, tr)
    else:
        short = tr - nr
        _move(m64, m32, right, short, right, 0, nr)
        _move(m64, m32, right, 0, left, nl - short, short)
        _move(m64, m32, center, 0, left, tl, nl - tl)
    m32[left, 4] = tl
    m32[center, 4] = tc
    m32[right, 4] = tr


@njit(refcount=False)
def _new_sibling(m64, m32, count, committed, free, txn, kind, fresh, tst, like):
    """dm's new_block for a sibling of ``like``: its flags, max_entries and
    value size, no entries (mapping trees and the pre-5.14 data index alike)."""
    b = _alloc(m64, count, committed, free, txn, kind, fresh, tst)
    if b < 0:
        return -1
    m32[b, 1] = m32[like, 1]
    m32[b, 5] = m32[like, 5]
    m32[b, 6] = m32[like, 6]
    return b


# the spine: sp[0] parent, sp[1] current, sp[2] count, sp[3] root
@njit(refcount=False)
def _split_beneath(m64, m32, count, committed, free, txn, kind, fresh, tst, pn):
    """btree_split_beneath of the (shadowed) root ``pn``: its entries go to
    a new left and a new right node, even halves; ``pn`` becomes an
    internal node over the two.  Mapping trees and the pre-5.14 data
    space map's index alike (:func:`_move` copies any value width)."""
    nr = np.int64(m32[pn, 4])
    nl = nr // 2
    left = _new_sibling(m64, m32, count, committed, free, txn, kind, fresh, tst, pn)
    if left < 0:
        return -1
    right = _new_sibling(m64, m32, count, committed, free, txn, kind, fresh, tst, pn)
    if right < 0:
        return -1
    _move(m64, m32, left, 0, pn, 0, nl)
    m32[left, 4] = nl
    _move(m64, m32, right, 0, pn, nl, nr - nl)
    m32[right, 4] = nr - nl
    lk = m64[left, HDR]
    rk = m64[right, HDR]
    m32[pn, 1] = INTERNAL
    m32[pn, 4] = 2
    m32[pn, 5] = MAX8
    m32[pn, 6] = 8
    m64[pn, HDR] = lk
    m64[pn, HDR + 1] = rk
    m64[pn, HDR + MAX8] = np.uint64(left)
    m64[pn, HDR + MAX8 + 1] = np.uint64(right)
    return 0


@njit(refcount=False)
def _split_one_into_two(m64, m32, count, committed, free, txn, kind, fresh, tst, parent, pi, left, key):
    """btree_split_sibling of ``left``, entry ``pi`` of ``parent`` (not
    full): its upper half moves to a new right sibling entered in the parent
    after it.  The node that holds ``key`` now, or -1 when metadata ran out."""
    right = _new_sibling(m64, m32, count, committed, free, txn, kind, fresh, tst, left)
    if right < 0:
        return -1
    _redistribute2(m64, m32, left, right)
    _insert_at(m64, m32, parent, pi + 1, m64[right, HDR], np.uint64(right))
    if key >= m64[right, HDR]:
        return right
    return left


@njit(refcount=False)
def _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, parent, i,
                  leaf_holds):
    nb = _shadow(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                 np.int64(_val(m64, m32, parent, i)), leaf_holds)
    if nb >= 0:
        _set_val(m64, m32, parent, i, np.uint64(nb))
    return nb


@njit(refcount=False)
def _split_two_into_three(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                          pi, key,
                          leaf_holds):
    parent = sp[0]
    if pi == 0:
        mid_index = 1
        left = sp[1]
        right = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                              parent,
                              pi + 1, leaf_holds)
        if right < 0:
            return -1
    else:
        mid_index = pi
        right = sp[1]
        left = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                             parent,
                             pi - 1, leaf_holds)
        if left < 0:
            return -1
    middle = _new_sibling(m64, m32, count, committed, free, txn, kind, fresh, tst, left)
    if middle < 0:
        return -1
    _redistribute3(m64, m32, left, middle, right)
    m64[parent, HDR + mid_index] = m64[right, HDR]
    _insert_at(m64, m32, parent, mid_index, m64[middle, HDR], np.uint64(middle))
    if key < m64[middle, HDR]:
        sp[1] = left
    elif key < m64[right, HDR]:
        sp[1] = middle
    else:
        sp[1] = right
    return 0


@njit(refcount=False)
def _rebalance_or_split(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                        pi, key,
                        leaf_holds):
    parent = sp[0]
    nr_parent = np.int64(m32[parent, 4])
    left_shared = False
    right_shared = False
    if pi > 0:
        lb = np.int64(_val(m64, m32, parent, pi - 1))
        left_shared = count[lb] > 1
        if not left_shared and np.int64(m32[lb, 5]) - np.int64(m32[lb, 4]) >= THRESH:
            sib = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                dst, parent,
                                pi - 1, leaf_holds)
            if sib < 0:
                return -1
            _redistribute2(m64, m32, sib, sp[1])
            m64[parent, HDR + pi] = m64[sp[1], HDR]
            if key < m64[sp[1], HDR]:
                sp[1] = sib
            return 0
    if pi < nr_parent - 1:
        rb = np.int64(_val(m64, m32, parent, pi + 1))
        right_shared = count[rb] > 1
        if not right_shared and np.int64(m32[rb, 5]) - np.int64(m32[rb, 4]) >= THRESH:
            sib = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                dst, parent,
                                pi + 1, leaf_holds)
            if sib < 0:
                return -1
            _redistribute2(m64, m32, sp[1], sib)
            m64[parent, HDR + pi + 1] = m64[sib, HDR]
            if key >= m64[sib, HDR]:
                sp[1] = sib
            return 0
    if left_shared or right_shared or nr_parent <= 2 or pi == 0 or pi + 1 == nr_parent:
        b = _split_one_into_two(m64, m32, count, committed, free, txn, kind, fresh, tst, parent, pi, sp[1], key)
        if b < 0:
            return -1
        sp[1] = b
        return 0
    return _split_two_into_three(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                 dst, sp, pi,
                                 key, leaf_holds)


@njit(refcount=False)
def _has_space(m64, m32, b, key):
    if m32[b, 4] == m32[b, 5]:
        if m32[b, 1] & LEAF:
            i = _lower_bound(m64, m32, b, key)
            return i >= 0 and m64[b, HDR + i] == key
        return False
    return True


@njit(refcount=False)
def _shadow_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root, i,
                 leaf_holds):
    """dm's shadow_step, shared by insert and remove: shadow ``root`` onto
    the spine ``sp`` (parent, current, depth 0-2, top) and point entry ``i``
    of the parent at the copy.  Returns the copy, or -2 when metadata ran
    out."""
    if sp[2] == 2:
        sp[0] = sp[1]
        sp[2] = 1
    nb = _shadow(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root,
                 leaf_holds)
    if nb < 0:
        return -2
    if sp[2] == 0:
        sp[3] = nb
        sp[1] = nb
        sp[2] = 1
    else:
        sp[0] = sp[1]
        sp[1] = nb
        sp[2] = 2
        if i >= 0:
            _set_val(m64, m32, sp[0], i, np.uint64(nb))
    return nb


@njit(refcount=False)
def _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root,
                key, index,
                leaf_holds, halves):
    i = index
    top = True
    while True:
        if _shadow_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                        root, i,
                        leaf_holds) < 0:
            return -2
        b = sp[1]
        if halves:
            full = m32[b, 4] == m32[b, 5]
        else:
            full = not _has_space(m64, m32, b, key)
        if full:
            if top:
                r = _split_beneath(m64, m32, count, committed, free, txn, kind, fresh, tst, b)
            elif halves:
                r = _split_one_into_two(m64, m32, count, committed, free, txn, kind, fresh, tst, sp[0], i, b, key)
                if r >= 0:
                    sp[1] = r
            else:
                r = _rebalance_or_split(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                        dfree, dst, sp,
                                        i, key, leaf_holds)
            if r < 0:
                return -2
            b = sp[1]
        i = _lower_bound(m64, m32, b, key)
        if m32[b, 1] & LEAF:
            break
        if i < 0:
            m64[b, HDR] = key
            i = 0
        root = np.int64(_val(m64, m32, b, i))
        top = False
    if i < 0 or m64[b, HDR + i] != key:
        i += 1
    return i


@njit
def insert_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                   root, dev, vblock, value, halves, out):
    """dm_btree_insert_notify on the two-level mapping tree.  ``out`` gets
    (new root, inserted).  Returns 0, or -1 when metadata ran out."""
    key1 = np.uint64(vblock)
    # where dm's insert would only descend (_direct_leaf), the leaf is
    # changed in place, found in one descent with no shadow steps
    leaf, i, found = _direct_path(m64, m32, count, txn, root, dev, key1, halves)
    if leaf >= 0:
        if found:
            if _replace_value(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                              dst, leaf, i, value, NO_BITMAP) < 0:
                return -1
            out[1] = 0
        else:
            _insert_at(m64, m32, leaf, i + 1, key1, value)
            out[1] = 1
        out[0] = root
        return 0
    sp = np.zeros(4, dtype=np.int64)
    return _insert_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                           root,
                           dev, vblock, value, halves, sp, out)


@njit
def _direct_path(m64, m32, count, txn, root, dev, key, halves):
    """:func:`_direct_leaf` without its bounds: (leaf, lower-bound index,
    key found), leaf -1 when dm's insert would not just descend."""
    b = _subtree_root(m64, m32, count, txn, root, dev, halves)
    if b < 0:
        return -1, -1, False
    while True:
        if not txn[b] or count[b] != 1:
            return -1, -1, False
        full = m32[b, 4] == m32[b, 5]
        i = _lower_bound(m64, m32, b, key)
        if m32[b, 1] & LEAF:
            found = i >= 0 and m64[b, HDR + i] == key
            if full and (halves or not found):
                return -1, -1, False
            return b, i, found
        if full or i < 0:
            return -1, -1, False
        b = np.int64(_val(m64, m32, b, i))


@njit(inline="always", refcount=False)
def _replace_value(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, b, i,
                   value, lo):
    """Entry ``i`` of leaf ``b`` takes ``value`` (an insert of a key that is
    there): the data block it mapped loses a reference when it changes,
    its bitmap shadowed then (dm_btree_insert's dec, after the spine);
    ``lo`` as data_bitmap_shadowed's, and returned as it does (-1: metadata
    ran out, nothing changed)."""
    old = _val(m64, m32, b, i)
    if (old >> np.uint64(24)) != (value >> np.uint64(24)):
        p = np.int64(old >> np.uint64(24))
        if p < lo or p >= lo + ENTRIES_PER_BITMAP:  # (the helper on a miss only: see write_blocks)
            lo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p, lo)
            if lo < 0:
                return lo
        if _ref_count_dec(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, p) < 0:
            return np.int64(-1)
        _ddec(dcount, dcommitted, dfree, p)
    _set_val(m64, m32, b, i, value)
    return lo


@njit(refcount=False)
def _insert_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                    root, dev, vblock, value, halves, sp, out):
    """:func:`insert_mapping` past its direct path (write_blocks calls it
    when it knows the insert splits or rebalances), with the caller's
    spine array ``sp`` (int64[4], cleared here)."""
    for j in range(4):
        sp[j] = 0
    key0 = np.uint64(dev)
    idx = _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                      root, key0, -1,
                      1, halves)
    if idx < -1:
        return -1
    n = sp[1]
    if idx >= m32[n, 4] or m64[n, HDR + idx] != key0:
        # a new device: dm_btree_empty, and its root under the dev_id
        nt = _alloc(m64, count, committed, free, txn, kind, fresh, tst)
        if nt < 0:
            return -1
        m32[nt, 1] = LEAF
        m32[nt, 5] = MAX8
        m32[nt, 6] = 8
        _insert_at(m64, m32, n, idx, key0, np.uint64(nt))
    sub = np.int64(_val(m64, m32, n, idx))
    key1 = np.uint64(vblock)
    idx = _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                      sub, key1, idx,
                      2, halves)
    if idx < -1:
        return -1
    n = sp[1]
    if idx >= m32[n, 4] or m64[n, HDR + idx] != key1:
        _insert_at(m64, m32, n, idx, key1, value)
        out[1] = 1
    else:
        if _replace_value(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                          dst, n, idx, value, NO_BITMAP) < 0:
            return -1
        out[1] = 0
    out[0] = sp[3]
    return 0


@njit(refcount=False)
def lookup_mapping(m64, m32, root, dev, vblock):
    """The value under (dev, vblock), or 0 (a value is never 0 for a
    mapped block... except pblock 0 at time 0, so callers use lookup2)."""
    b = root
    for level in range(2):
        key = np.uint64(dev) if level == 0 else np.uint64(vblock)
        while True:
            i = _lower_bound(m64, m32, b, key)
            if i < 0 or i >= m32[b, 4]:
                return np.uint64(0), False
            if m32[b, 1] & LEAF:
                if m64[b, HDR + i] != key:
                    return np.uint64(0), False
                v = _val(m64, m32, b, i)
                if level == 0:
                    b = np.int64(v)
                    break
                return v, True
            b = np.int64(_val(m64, m32, b, i))
    return np.uint64(0), False


@njit(refcount=False)
def _direct_leaf(m64, m32, count, txn, root, dev, key, halves, res, hi):
    """Where an insert of (dev, key) lands when dm's insert would only
    descend: every node on the path already this transaction's and
    unshared, none full (a full leaf only when ``key`` is in it, in the
    current split rule) and no internal node's first key above ``key``.
    Returns False when the path is not so; else True with ``res`` = (leaf,
    lower-bound index, key found) and ``hi`` = (the leaf's upper key bound,
    exclusive; 1 when it has none)."""
    b = _subtree_root(m64, m32, count, txn, root, dev, halves)
    if b < 0:
        return False
    return _direct_descend(m64, m32, count, txn, b, key, halves, res, hi)


@njit
def _subtree_root(m64, m32, count, txn, root, dev, halves):
    """The top-level part of :func:`_direct_leaf`: ``dev``'s subtree root
    when dm's insert would only descend the top-level tree to it, else -1."""
    b = root
    k = np.uint64(dev)
    while True:
        if not txn[b] or count[b] != 1:
            return -1
        full = m32[b, 4] == m32[b, 5]
        leaf = m32[b, 1] & LEAF
        if full and (halves or not leaf):
            return -1
        i = _lower_bound(m64, m32, b, k)
        if i < 0:
            return -1
        if leaf:
            if m64[b, HDR + i] != k:
                return -1
            return np.int64(_val(m64, m32, b, i))
        b = np.int64(_val(m64, m32, b, i))


@njit(refcount=False)
def _direct_descend(m64, m32, count, txn, b, key, halves, res, hi):
    """The one-level part of :func:`_direct_leaf`, from node ``b``;
    ``hi[2]`` gets the leaf's lower key bound (the last internal key
    chosen on the way; 0 when the root is the leaf).  A ``res`` of five
    also gets the leaf's parent (-1 when the root is the leaf) and the
    leaf's index there."""
    hi[1] = 1
    hi[2] = 0
    p = np.int64(-1)
    pi = np.int64(-1)
    while True:
        if not txn[b] or count[b] != 1:
            return False
        nr = np.int64(m32[b, 4])
        full = nr == m32[b, 5]
        i = _lower_bound(m64, m32, b, key)
        if m32[b, 1] & LEAF:
            found = i >= 0 and m64[b, HDR + i] == key
            if full and (halves or not found):
                return False
            res[0] = b
            res[1] = i
            res[2] = 1 if found else 0
            if res.shape[0] >= 5:
                res[3] = p
                res[4] = pi
            return True
        if full or i < 0:
            return False
        hi[2] = m64[b, HDR + i]
        if i + 1 < nr:
            hi[0] = m64[b, HDR + i + 1]
            hi[1] = 0
        p = b
        pi = i
        b = np.int64(_val(m64, m32, b, i))


@njit
def _direct_rebalance(m64, m32, count, txn, parent, pi, b, key):
    """dm's rebalance of a full leaf ``b`` (entry ``pi`` of ``parent``)
    into a sibling before inserting ``key`` (absent), done in place when
    that sibling is already this transaction's: the leaf ``key`` goes to
    now, or -1 with nothing changed when dm's insert would shadow the
    sibling or split (:func:`_rebalance_or_split` then does it).  The
    caller knows the path above ``b`` is one dm's insert only descends."""
    nr_parent = np.int64(m32[parent, 4])
    if pi > 0:
        lb = np.int64(_val(m64, m32, parent, pi - 1))
        if count[lb] <= 1 and np.int64(m32[lb, 5]) - np.int64(m32[lb, 4]) >= THRESH:
            if not txn[lb]:
                return -1
            _redistribute2(m64, m32, lb, b)
            m64[parent, HDR + pi] = m64[b, HDR]
            return lb if key < m64[b, HDR] else b
    if pi < nr_parent - 1:
        rb = np.int64(_val(m64, m32, parent, pi + 1))
        if count[rb] <= 1 and np.int64(m32[rb, 5]) - np.int64(m32[rb, 4]) >= THRESH:
            if not txn[rb]:
                return -1
            _redistribute2(m64, m32, b, rb)
            m64[parent, HDR + pi + 1] = m64[rb, HDR]
            return rb if key >= m64[rb, HDR] else b
    return -1


@njit(inline="always", refcount=False)
def _leaf_insert(m64, m32, lb, i1, key, value):
    """_insert_at of (``key``, ``value``) at ``i1`` in leaf ``lb`` (8-byte
    values, room for one more), inlined: an append, or keys and values
    shifted by one with two memmoves."""
    nr = np.int64(m32[lb, 4])
    mx = np.int64(m32[lb, 5])
    if i1 < nr:
        base = lb * np.int64(m64.shape[1]) + HDR
        memmove(m64, base + i1 + 1, base + i1, nr - i1)
        memmove(m64, base + mx + i1 + 1, base + mx + i1, nr - i1)
    m64[lb, HDR + i1] = key
    m64[lb, HDR + mx + i1] = value
    m32[lb, 4] = nr + 1


@njit(inline="always", refcount=False)
def node_value(m64, m32, b, i):
    """The value at index ``i`` of node ``b`` (8-byte values: a child's
    block in an internal node)."""
    return _val(m64, m32, b, i)


@njit(refcount=False)
def leaf_merge(m64, m32, lb, keys, values, c):
    """Put ``c`` new keys (sorted, none in leaf ``lb`` already, nor twice;
    the leaf has room for them) with their ``values`` into leaf ``lb`` at
    once: the bytes ``c`` inserts write in any order (_insert_at), with one
    pass from the leaf's end down, each new key (largest first) moving the
    run of the leaf's entries above it up past it with two memmoves (its
    keys, its values).  Moving entry by entry, one compare each, the
    1 TiB random-provisioning log's merges cost apply_log 2-5% more CPU
    (a 65,536-row and an 8,192-row log alone, best of 21, load 8-9)."""
    nr = np.int64(m32[lb, 4])
    mx = np.int64(m32[lb, 5])
    kb = lb * np.int64(m64.shape[1]) + HDR
    vb = kb + mx
    i = nr - 1  # the leaf's last entry not yet moved
    for j in range(c - 1, -1, -1):
        kj = keys[j]
        e = i
        while e >= 0 and m64[lb, HDR + e] > kj:
            e -= 1
        if i > e:  # entries e+1..i go up j+1 places
            memmove(m64, kb + e + j + 2, kb + e + 1, i - e)
            memmove(m64, vb + e + j + 2, vb + e + 1, i - e)
        m64[lb, HDR + e + 1 + j] = kj
        m64[lb, HDR + mx + e + 1 + j] = values[j]
        i = e
    m32[lb, 4] = nr + c


@njit(inline="always")
def leaf_park(m64, m32, lb, c, key, value):
    """Keep a new ``key`` (with ``value``) in leaf ``lb``'s empty tail, after
    the ``c`` kept there already (the leaf has room for them all): its
    entries are unchanged, nothing reads the tail, and
    :func:`leaf_merge_parked` puts them in."""
    nr = np.int64(m32[lb, 4])
    m64[lb, HDR + nr + c] = key
    m64[lb, HDR + np.int64(m32[lb, 5]) + nr + c] = value


@njit(inline="always")
def fetch_parked(m64, m32, b, c):
    """Prefetch the lines :func:`leaf_park` writes next in leaf ``b``, ``c``
    kept there (its header has landed)."""
    base = b * np.int64(m64.shape[1]) + HDR + np.int64(m32[b, 4]) + c
    prefetch(m64, base)
    prefetch(m64, base + np.int64(m32[b, 5]))


@njit(inline="always")
def _sift(keys, values, root, end):
    """Heapsort's sift-down of entry ``root`` in ``keys[:end]`` (with its value)."""
    while True:
        ch = 2 * root + 1
        if ch >= end:
            return
        if ch + 1 < end and keys[ch] < keys[ch + 1]:
            ch += 1
        if keys[root] >= keys[ch]:
            return
        keys[root], keys[ch] = keys[ch], keys[root]
        values[root], values[ch] = values[ch], values[root]
        root = ch


@njit
def sort_pairs(keys, values, c):
    """Sort ``keys[:c]`` (distinct) with their ``values``: one pass when they
    are in order already, an insertion sort when few, else a heapsort (a
    leaf's parked keys from random writes number up to a leaf's room)."""
    i = 1
    while i < c and keys[i - 1] < keys[i]:
        i += 1
    if i >= c:
        return
    if c <= 16:
        for j in range(i, c):
            k = keys[j]
            v = values[j]
            e = j
            while e > 0 and keys[e - 1] > k:
                keys[e] = keys[e - 1]
                values[e] = values[e - 1]
                e -= 1
            keys[e] = k
            values[e] = v
        return
    for r in range(c // 2 - 1, -1, -1):
        _sift(keys, values, r, c)
    for end in range(c - 1, 0, -1):
        keys[0], keys[end] = keys[end], keys[0]
        values[0], values[end] = values[end], values[0]
        _sift(keys, values, 0, end)


@njit
def leaf_merge_parked(m64, m32, lb, c, keys, values):
    """Put the ``c`` keys :func:`leaf_park` kept in leaf ``lb``'s tail into
    it (:func:`leaf_merge`, sorted first in ``keys`` and ``values``, scratch
    of c entries or more): the bytes their inserts one by one write."""
    nr = np.int64(m32[lb, 4])
    mx = np.int64(m32[lb, 5])
    for j in range(c):
        keys[j] = m64[lb, HDR + nr + j]
        values[j] = m64[lb, HDR + mx + nr + j]
    sort_pairs(keys, values, c)
    leaf_merge(m64, m32, lb, keys, values, c)


@njit(refcount=False)
def insert_mapping_cached(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                          root, dev, vblock, value, halves, sp, cache, hi, res, out):
    """:func:`insert_mapping` for a caller that inserts many mappings in a
    row (scratch passed in, nothing allocated): where dm's insert would
    only descend (:func:`_direct_leaf`: every node on the path this
    transaction's and unshared, none in need of a split), the leaf is
    changed in place -- the same bytes dm's insert writes, without the
    spine's shadow steps.  That leaf is kept in ``cache`` (int64[4]: leaf
    or -1, its dev_id, its parent or -1 when not known, its index there;
    ``hi`` uint64[3] its key bounds, as _direct_leaf gives them) and
    answers every later key of the same device within its bounds with one
    search in the leaf, no descent: the leaf a CoW already shadowed takes
    the rest of its writes in place.  A full leaf lacking the key is
    rebalanced into a sibling in place when dm's insert would do just that
    to a sibling already this transaction's (:func:`_direct_rebalance`,
    its parent known); that and any other insert through dm's insert
    empty the cache (keys moved between leaves, or a split or shadow moved
    nodes); so must the caller, after any other change to the trees.
    ``sp`` int64[4] and ``res`` int64[5] are scratch; ``out`` as
    insert_mapping's.  Returns 0, or -1 when metadata ran out."""
    key = np.uint64(vblock)
    direct = False
    known = False
    leaf = cache[0]
    if leaf >= 0 and cache[1] == dev and key >= hi[2] and (hi[1] or key < hi[0]):
        nr = np.int64(m32[leaf, 4])
        g = np.int64(key - hi[2])
        if g < nr and m64[leaf, HDR + g] == key:
            # a leaf whose keys run without gaps from its lower bound has
            # the key there (a CoW of a fully mapped range): no search
            i = g
            found = True
        elif nr > 0 and key > m64[leaf, HDR + nr - 1]:
            i = nr - 1
            found = False
        else:
            i = _lower_bound(m64, m32, leaf, key)
            found = i >= 0 and m64[leaf, HDR + i] == key
        if nr < m32[leaf, 5] or (found and not halves):
            direct = True
            res[0] = leaf
            res[1] = i
            res[2] = 1 if found else 0
        else:
            known = True
    elif _direct_leaf(m64, m32, count, txn, root, dev, key, halves, res, hi):
        direct = True
        cache[0] = res[0]
        cache[1] = dev
        cache[2] = res[3]
        cache[3] = res[4]
    if not direct:
        cache[0] = -1
        if known and not halves and cache[2] >= 0:
            # the leaf is full and lacks the key: dm rebalances it into a
            # sibling (or splits it); the first, in place when the sibling
            # is this transaction's
            t = _direct_rebalance(m64, m32, count, txn, cache[2], cache[3], leaf, key)
            if t >= 0:
                _leaf_insert(m64, m32, t, _lower_bound(m64, m32, t, key) + 1, key, value)
                out[0] = root
                out[1] = 1
                return 0
        return _insert_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                               root, dev, vblock, value, halves, sp, out)
    lb = res[0]
    if res[2]:
        if _replace_value(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                          dst, lb, res[1], value, NO_BITMAP) < 0:
            return -1
        out[1] = 0
    else:
        _leaf_insert(m64, m32, lb, res[1] + 1, key, value)
        out[1] = 1
    out[0] = root
    return 0


#: requests ahead whose leaf a caller of :func:`locate_leaf` fetches
#: (apply_log does): random provisioning of a large thin misses the cache on
#: each leaf (and the TLB on its page); a fetch started this many requests
#: early has landed when its turn comes
PREFETCH_AHEAD = 16

# write_blocks' look-ahead for requests that leave the current leaf (random
# ones), in three stages.  At request k:
#   - request k + LOCATE_AHEAD is located: a descent over the internal nodes
#     (few, and hot) from the device's subtree root finds its leaf, whose
#     path (its index in each internal node, a byte a level) goes into a ring
#     and whose first line (its header) is fetched;
#   - for request k + FILL_AHEAD, whose leaf's header has landed, the lines
#     holding the leaf's entries are fetched (not the empty tail);
#   - request k itself descends again along its recorded path: at each
#     level the recorded index is checked against the node as it is now
#     (its key at most the request's, the next one above it) and searched
#     for only when it moved.  So the descent is always the one dm's insert
#     makes, whatever splits, shadows and rebalances came between, and no
#     located leaf is thrown away when the tree changes.
# Both descents take their first guess from a small table of the paths
# last taken, by key range (HINT_BITS slots of the batch's key space): a
# guess that holds costs two loads a level instead of a binary search.
LOCATE_AHEAD = 24
FILL_AHEAD = 12
RING = 32  # a power of two above LOCATE_AHEAD
HINT_BITS = 14
HINT_LEVELS = 4  # levels a path records (a byte each, in a uint32; max_entries < 256)


@njit(refcount=False)
def locate_leaf(m64, m32, count, txn, root, dev, vblock, halves, bounds, loc):
    """Descend to the leaf where ``vblock`` of ``dev`` is or would go,
    reading only the internal nodes (few, and hot).  ``loc`` (int64[2])
    gets (that leaf or -1, 1 when dm's insert would only descend the
    internal nodes to it: :func:`_direct_leaf`'s test less the leaf's own
    fullness, whose header is not read) and ``bounds`` its key bounds as
    _direct_leaf sets ``hi``.  Read only.  Call it some requests ahead of
    a random insert and fetch the leaf with :func:`fetch_leaf` (apply_log
    does, PREFETCH_AHEAD ahead); while no insert has gone through dm's
    insert since (no node moved), a leaf located with 1 is the one
    :func:`insert_mapping_cached` can be handed in its ``cache``."""
    loc[0] = -1
    loc[1] = 0
    b = root
    k = np.uint64(dev)
    direct = True
    while True:  # the top-level tree, dev_id -> subtree root
        if not txn[b] or count[b] != 1:
            direct = False
        leaf = m32[b, 1] & LEAF
        if m32[b, 4] == m32[b, 5] and (halves or not leaf):
            direct = False
        i = _lower_bound(m64, m32, b, k)
        if i < 0:
            return
        if leaf:
            if m64[b, HDR + i] != k:
                return
            b = np.int64(_val(m64, m32, b, i))
            break
        b = np.int64(_val(m64, m32, b, i))
    key = np.uint64(vblock)
    bounds[1] = 1
    bounds[2] = 0
    while not m32[b, 1] & LEAF:
        if not txn[b] or count[b] != 1:
            direct = False
        nr = np.int64(m32[b, 4])
        if nr == m32[b, 5]:
            direct = False
        i = _lower_bound(m64, m32, b, key)
        if i < 0:
            direct = False
            i = 0
        bounds[2] = m64[b, HDR + i]
        if i + 1 < nr:
            bounds[0] = m64[b, HDR + i + 1]
            bounds[1] = 0
        b = np.int64(_val(m64, m32, b, i))
    loc[0] = b
    loc[1] = 1 if direct and txn[b] and count[b] == 1 else 0


@njit(inline="always", refcount=False)
def fetch_leaf(m64, m32, b, vblock, lo, hi, hi_open, stage):
    """Prefetch what an insert of ``vblock`` into leaf ``b`` (key bounds
    ``lo`` <= key < ``hi``, no upper bound when ``hi_open``: as
    :func:`locate_leaf` gives them in ``bounds[2]``, ``[0]``, ``[1]``)
    will read, in two stages some requests apart.  Stage 0: the leaf's
    header and, were its keys a gapless run from ``lo`` (a fully mapped
    range; possible only when its bounds span at most MAX8 keys), the lines
    of the entry ``vblock`` would be (its key and its value).  Stage 1,
    once the header has landed: unless stage 0 found it such a run, the
    lines of all its entries (an insert's search and shift read them; not
    the empty tail).  Stage -1: the whole block (it is to be copied)."""
    w = np.int64(m64.shape[1])
    base = b * w
    g = np.int64(np.uint64(vblock) - lo)
    # a leaf can be a gapless run only when its bounds span at most MAX8 keys
    run = hi_open == 0 and np.int64(hi - lo) <= MAX8
    if stage < 0:
        for j in range(0, w, 8):  # one 64-byte line each
            prefetch(m64, base + j)
        return
    if stage == 0:
        prefetch(m64, base)
        if run and g < MAX8:
            prefetch(m64, base + HDR + g)
            prefetch(m64, base + HDR + MAX8 + g)
        return
    nr = np.int64(m32[b, 4])
    if not run or np.int64(hi - lo) != nr or g >= nr or m32[b, 5] != MAX8:
        _fill(m64, m32, b)


@njit
def _height(m64, m32, b):
    """Internal levels above the leaves of the tree at ``b`` (its leftmost path)."""
    h = 0
    while not m32[b, 1] & LEAF:
        b = np.int64(_val(m64, m32, b, 0))
        h += 1
    return h


@njit(inline="always", refcount=False)
def descend_hinted(m64, m32, count, txn, sub, height, key, path):
    """The descent of :func:`locate_leaf` over the ``height`` internal
    levels below a subtree root ``sub``, trying at each level the index
    ``path`` records (byte l for level l; see LOCATE_AHEAD) before a
    search: read only.  Returns (leaf, 1 when dm's insert would only
    descend to it (every node on the way this transaction's and unshared,
    no internal node full or with its first key above ``key``), its path,
    its parent or -1, its index there, its lower key bound, its upper
    bound, 1 when it has none)."""
    b = sub
    direct = np.int64(1)
    p = np.int64(-1)
    pi = np.int64(-1)
    lo = np.uint64(0)
    hi = np.uint64(0)
    hi_open = np.uint64(1)
    got = np.int64(0)
    for lv in range(height):
        if not txn[b] or count[b] != 1:
            direct = 0
        nr = np.int64(m32[b, 4])
        if nr == m32[b, 5]:
            direct = 0
        i = (path >> np.int64(8 * lv)) & 0xFF if lv < HINT_LEVELS else np.int64(255)
        if not (i < nr and m64[b, HDR + i] <= key and (i + 1 >= nr or m64[b, HDR + i + 1] > key)):
            i = _lower_bound(m64, m32, b, key)
            if i < 0:
                direct = 0
                i = 0
        if lv < HINT_LEVELS:
            got |= i << np.int64(8 * lv)
        lo = m64[b, HDR + i]
        if i + 1 < nr:
            hi = m64[b, HDR + i + 1]
            hi_open = np.uint64(0)
        p = b
        pi = i
        b = np.int64(_val(m64, m32, b, i))
    if not txn[b] or count[b] != 1:
        direct = 0
    return b, direct, got, p, pi, lo, hi, hi_open


@njit
def subtree_height(m64, m32, count, txn, root, dev, halves, sh):
    """``sh`` (int64[2]) gets ``dev``'s subtree root when dm's insert would
    only descend the top-level tree to it (else -1) and the internal
    levels below it, for :func:`descend_hinted`."""
    sub = _subtree_root(m64, m32, count, txn, root, dev, halves)
    sh[0] = sub
    sh[1] = _height(m64, m32, sub) if sub >= 0 else 0


@njit(inline="always")
def _fill(m64, m32, b):
    """Stage two: fetch the lines of leaf ``b`` that hold its keys and
    values (its header is in cache by now)."""
    nr = np.int64(m32[b, 4])
    w = np.int64(m64.shape[1])
    base = b * w
    for j in range(0, HDR + nr + 1, 8):
        prefetch(m64, base + j)
    v0 = HDR + np.int64(m32[b, 5])
    for j in range(v0 & ~7, min(v0 + nr + 1, w), 8):
        prefetch(m64, base + j)


@njit(inline="always", refcount=False)
def _fill_near(m64, m32, b, key, lo, hi, hi_open):
    """Stage two for an insert of ``key`` into leaf ``b`` (key bounds
    ``lo`` <= key < ``hi``, none above when ``hi_open``; its header in cache
    by now): fetch the lines its search and its shift will read, not the
    whole leaf.  Keys are placed by interpolation between the bounds (a
    random key's index lands within a few entries of it): the keys from 24
    entries below that guess and the values from 8 below, to the last
    entry (the shift moves every later one), and the search's first three
    probes (the middle and the quarters)."""
    nr = np.int64(m32[b, 4])
    base = b * np.int64(m64.shape[1])
    g = np.int64(0)
    if hi_open == 0 and hi > lo:
        g = np.int64(np.float64(key - lo) / np.float64(hi - lo) * np.float64(nr))
        prefetch(m64, base + HDR + (nr >> 1))
        prefetch(m64, base + HDR + (nr >> 2))
        prefetch(m64, base + HDR + nr - (nr >> 2))
    for j in range((HDR + max(g - 24, 0)) & ~7, HDR + nr + 1, 8):
        prefetch(m64, base + j)
    v0 = HDR + np.int64(m32[b, 5])
    for j in range((v0 + max(g - 8, 0)) & ~7, v0 + nr + 1, 8):
        prefetch(m64, base + j)


@njit
def write_blocks(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                 root, dev, snap_time, time, vblocks, halves, out):
    """dm-thin's write path for each of ``vblocks`` of device ``dev``: a
    mapped block not shared (its time is at or after ``snap_time``) needs
    nothing; otherwise a new data block (lowest free now and at the last
    commit, from the cursor ``dst[0]``) is mapped, which drops the shared
    block's reference.  ``out`` gets (new root, blocks done, mappings
    added, data blocks allocated).  Returns 0, -1 out of metadata, -2 out of data space (``out[1]``
    says how far it got)."""
    added = 0
    allocs = 0
    # Where dm's insert would only descend (_direct_leaf), the leaf is
    # changed in place, found in one descent.  That leaf stays the target
    # while the keys fall within its bounds (hi[2] <= key < hi[0]): such a
    # key is in it or absent from the tree, so one binary search in the leaf
    # answers the lookup, with no descent -- a sequential run appends.  A key
    # outside them descends again along the path the look-ahead found for
    # it (see LOCATE_AHEAD).  When the leaf is full (or split on
    # any insert, in the halves rule), dm's insert would split or rebalance:
    # that goes through insert_mapping, without a second lookup, as the
    # search already told found or not.
    leaf = -1
    lp = np.int64(-1)  # the target leaf's parent (-1: none known) and its index there
    lpi = np.int64(-1)
    hi = np.zeros(3, dtype=np.uint64)
    res = np.zeros(5, dtype=np.int64)
    sp = np.zeros(4, dtype=np.int64)
    n = vblocks.shape[0]
    ahead = n > 2 * LOCATE_AHEAD
    ri = np.full((RING, 2), -1, dtype=np.int64)  # (leaf or -1, its path)
    rk = np.zeros((RING, 3), dtype=np.uint64)  # its (lower, upper key bound, 1 when none above)
    hints = np.zeros(1 << HINT_BITS if ahead else 1, dtype=np.uint32)
    hmask = np.uint64(hints.shape[0] - 1)
    hshift = np.uint64(0)
    if ahead:
        top = np.uint64(0)
        for k in range(n):
            top = max(top, np.uint64(vblocks[k]))
        while (top >> hshift) >> np.uint64(HINT_BITS):
            hshift += np.uint64(1)
    w = np.int64(m64.shape[1])
    sub = np.int64(-1)
    height = 0
    sub_ver = np.int64(-1)
    dbm_lo = np.int64(NO_BITMAP)  # the data bitmap known shadowed (data_bitmap_shadowed)
    olo = np.int64(NO_BITMAP)  # the same for the blocks CoW releases
    for k in range(n):
        if ahead:
            ver = tst[1] + tst[2]  # a block allocated or shadowed: the subtree's root may have moved
            if sub_ver != ver:
                sub = _subtree_root(m64, m32, count, txn, root, dev, halves)
                height = _height(m64, m32, sub) if sub >= 0 else 0
                sub_ver = ver
            j = k + LOCATE_AHEAD
            if j < n:
                s = j & (RING - 1)
                kj = np.uint64(vblocks[j])
                ri[s, 0] = -1
                if not (leaf >= 0 and kj >= hi[2] and (hi[1] or kj < hi[0])) and sub >= 0:
                    # (a key in the current leaf's bounds: a run, hot)
                    h = np.int64((kj >> hshift) & hmask)
                    b, dr, got, _p, _pi, blo, bhi, bho = descend_hinted(m64, m32, count, txn, sub, height, kj,
                                                                        np.int64(hints[h]))
                    if dr:
                        ri[s, 0] = b
                        ri[s, 1] = got
                        rk[s, 0] = blo
                        rk[s, 1] = bhi
                        rk[s, 2] = bho
                        hints[h] = np.uint32(got)
                        prefetch(m64, b * w)
            j = k + FILL_AHEAD
            if j < n:
                s = j & (RING - 1)
                b = ri[s, 0]
                if b >= 0:
                    _fill_near(m64, m32, b, np.uint64(vblocks[j]), rk[s, 0], rk[s, 1], rk[s, 2])
        vb = vblocks[k]
        key = np.uint64(vb)
        direct = False
        known = False
        if ahead and sub >= 0 and not (leaf >= 0 and key >= hi[2] and (hi[1] or key < hi[0])):
            s = k & (RING - 1)
            h = np.int64((key >> hshift) & hmask)
            path = ri[s, 1] if ri[s, 0] >= 0 else np.int64(hints[h])
            b, dr, got, bp, bpi, blo, bhi, bho = descend_hinted(m64, m32, count, txn, sub, height, key, path)
            if dr:
                leaf = b
                lp = bp
                lpi = bpi
                hi[2] = blo
                hi[0] = bhi
                hi[1] = bho
                hints[h] = np.uint32(got)
        if leaf >= 0 and key >= hi[2] and (hi[1] or key < hi[0]):
            nr = np.int64(m32[leaf, 4])
            if nr > 0 and key > m64[leaf, HDR + nr - 1]:
                i = nr - 1  # past the leaf's last key: an append
                found = False
            else:
                i = _lower_bound(m64, m32, leaf, key)
                found = i >= 0 and m64[leaf, HDR + i] == key
            if found and np.int64(_val(m64, m32, leaf, i) & np.uint64(0xFFFFFF)) >= snap_time:
                continue
            if nr < m32[leaf, 5] or (found and not halves):
                direct = True
                res[0] = leaf
                res[1] = i
                res[2] = 1 if found else 0
            else:
                known = True
        if not direct and not known:
            direct = _direct_leaf(m64, m32, count, txn, root, dev, key, halves, res, hi)
            if direct:
                leaf = res[0]
                lp = res[3]
                lpi = res[4]
                if res[2] and np.int64(_val(m64, m32, res[0], res[1]) & np.uint64(0xFFFFFF)) >= snap_time:
                    continue
            else:
                leaf = -1
                v, found = lookup_mapping(m64, m32, root, dev, vb)
                if found and np.int64(v & np.uint64(0xFFFFFF)) >= snap_time:
                    continue
        p = _find_free(dfree, dst[0], dst[DST_NO_WRAP] == 0)
        if p < 0:
            out[0] = root
            out[1] = k
            out[2] = added
            out[3] = allocs
            return -2
        if p < dbm_lo or p >= dbm_lo + ENTRIES_PER_BITMAP:
            # (the test repeated outside the helper: the loop runs at half
            # speed when the helper is entered for every block)
            dbm_lo = _data_bitmap_shadowed_call(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p,
                                                dbm_lo)
            if dbm_lo < 0:
                out[0] = root
                out[1] = k
                out[2] = added
                out[3] = allocs
                return -1
        dst[0] = p + 1
        _dtouch(dcount, dcommitted, p)
        _used(dcount, dcommitted, 1)
        dcount[p] = 1
        dfree[p] = False
        value = (np.uint64(p) << np.uint64(24)) | np.uint64(time & 0xFFFFFF)
        if direct:
            lb = res[0]
            if res[2]:
                # _replace_value, the blocks known to differ (p is new): the
                # old one's bitmap shadowed (after the spine: none here), then
                # its reference dropped
                po = np.int64(_val(m64, m32, lb, res[1]) >> np.uint64(24))
                if po < olo or po >= olo + ENTRIES_PER_BITMAP:
                    olo = data_bitmap_shadowed(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, po, olo)
                    if olo < 0:
                        out[0] = root
                        out[1] = k
                        out[2] = added
                        out[3] = allocs
                        return -1
                if _ref_count_dec(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, po) < 0:
                    out[0] = root
                    out[1] = k
                    out[2] = added
                    out[3] = allocs
                    return -1
                _ddec(dcount, dcommitted, dfree, po)
                _set_val(m64, m32, lb, res[1], value)
            else:
                _leaf_insert(m64, m32, lb, res[1] + 1, key, value)
                added += 1
            allocs += 1
            continue
        if known and not halves and lp >= 0:
            # the target leaf is full and lacks the key: dm rebalances it
            # into a sibling (or splits it); the first, in place when the
            # sibling is this transaction's
            t = _direct_rebalance(m64, m32, count, txn, lp, lpi, leaf, key)
            if t >= 0:
                i = _lower_bound(m64, m32, t, key)
                _insert_at(m64, m32, t, i + 1, key, value)
                added += 1
                allocs += 1
                leaf = -1  # the parent's keys moved: the bounds are stale
                continue
        r = _insert_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                            root, dev, vb, value, halves, sp, out)
        if r < 0:
            out[0] = root
            out[1] = k
            out[2] = added
            out[3] = allocs
            return -1
        root = out[0]
        added += out[1]
        allocs += 1
        leaf = -1
        if k + 1 < n and _direct_leaf(m64, m32, count, txn, root, dev, np.uint64(vblocks[k + 1]), halves, res, hi):
            leaf = res[0]
            lp = res[3]
            lpi = res[4]
    out[0] = root
    out[1] = vblocks.shape[0]
    out[2] = added
    out[3] = allocs
    return 0


# ------------------------------------------------------------------ removal
@njit(refcount=False)
def _delete_at(m64, m32, b, i):
    nr = np.int64(m32[b, 4])
    _move(m64, m32, b, i, b, i + 1, nr - i - 1)
    m32[b, 4] = nr - 1


@njit(refcount=False)
def _rm_shift(m64, m32, left, right, count):
    nl = np.int64(m32[left, 4])
    nr = np.int64(m32[right, 4])
    if count == 0:
        return
    if count > 0:
        _move(m64, m32, right, count, right, 0, nr)
        _move(m64, m32, right, 0, left, nl - count, count)
    else:
        c = -count
        _move(m64, m32, left, nl, right, 0, c)
        _move(m64, m32, right, 0, right, c, nr - c)
    m32[left, 4] = nl - count
    m32[right, 4] = nr + count


@njit(refcount=False)
def _rebalance2_nodes(m64, m32, count, committed, free, parent, left, right, r_index):
    nl = np.int64(m32[left, 4])
    nr = np.int64(m32[right, 4])
    if nl + nr < 2 * (np.int64(m32[left, 5]) // 3) + 1:
        _move(m64, m32, left, nl, right, 0, nr)
        m32[left, 4] = nl + nr
        _delete_at(m64, m32, parent, r_index)
        _dec(count, committed, free, right)
    else:
        target_left = (nl + nr) // 2
        _rm_shift(m64, m32, left, right, nl - target_left)
        m64[parent, HDR + r_index] = m64[right, HDR]


@njit(refcount=False)
def _rebalance_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, cur,
                        key,
                        leaf_holds):
    """Returns 1 done, 0 key absent, -1 out of metadata."""
    if m32[cur, 4] == 1:
        b = np.int64(_val(m64, m32, cur, 0))
        if count[b] > 1:
            if _inc_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, b,
                             leaf_holds) < 0:
                return -1
        for w in range(512):
            m64[cur, w] = m64[b, w]
        _dec(count, committed, free, b)
        return 1
    i = _lower_bound(m64, m32, cur, key)
    if i < 0:
        return 0
    nr = np.int64(m32[cur, 4])
    if i == 0 or i == nr - 1:
        li = i if i == 0 else i - 1
        left = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                             cur, li,
                             leaf_holds)
        if left < 0:
            return -1
        right = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                              cur, li + 1,
                              leaf_holds)
        if right < 0:
            return -1
        _rebalance2_nodes(m64, m32, count, committed, free, cur, left, right, li + 1)
        return 1
    li = i - 1
    left = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, cur,
                         li,
                         leaf_holds)
    if left < 0:
        return -1
    center = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                           cur, li + 1,
                           leaf_holds)
    if center < 0:
        return -1
    right = _shadow_child(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                          cur, li + 2,
                          leaf_holds)
    if right < 0:
        return -1
    nl = np.int64(m32[left, 4])
    nc = np.int64(m32[center, 4])
    nr = np.int64(m32[right, 4])
    mt = np.int64(m32[left, 5]) // 3
    c_index = li + 1
    r_index = li + 2
    if nl + nc + nr < mt * 4 + 1:
        # delete the center node into its neighbours, then rebalance the two
        mx = np.int64(m32[left, 5])
        sh = min(mx - nl, nc)
        _move(m64, m32, left, nl, center, 0, sh)
        m32[left, 4] = nl + sh
        if sh != nc:
            rest = nc - sh
            _move(m64, m32, right, rest, right, 0, nr)
            _move(m64, m32, right, 0, center, sh, rest)
            m32[right, 4] = nr + rest
        m64[cur, HDR + r_index] = m64[right, HDR]
        _delete_at(m64, m32, cur, c_index)
        r_index -= 1
        _dec(count, committed, free, center)
        _rebalance2_nodes(m64, m32, count, committed, free, cur, left, right, r_index)
        return 1
    total = nl + nc + nr
    target_right = total // 3
    remainder = 1 if target_right * 3 != total else 0
    target_left = target_right + remainder
    if nl < nr:
        s = nl - target_left
        if s < 0 and nc < -s:
            _rm_shift(m64, m32, left, center, -nc)
            s += nc
            _rm_shift(m64, m32, left, right, s)
            nr += s
        else:
            _rm_shift(m64, m32, left, center, s)
        _rm_shift(m64, m32, center, right, target_right - nr)
    else:
        s = target_right - nr
        if s > 0 and nc < s:
            _rm_shift(m64, m32, center, right, nc)
            s -= nc
            _rm_shift(m64, m32, left, right, s)
            nl -= s
        else:
            _rm_shift(m64, m32, center, right, s)
        _rm_shift(m64, m32, left, center, nl - target_left)
    m64[cur, HDR + c_index] = m64[center, HDR]
    m64[cur, HDR + r_index] = m64[right, HDR]
    return 1


@njit(refcount=False)
def _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root,
                key, index,
                leaf_holds):
    """The index of ``key`` in the leaf now current, -1 absent, -2 out of metadata."""
    i = index
    while True:
        if _shadow_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                        root, i,
                        leaf_holds) < 0:
            return -2
        b = sp[1]
        if not (m32[b, 1] & LEAF):
            r = _rebalance_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted,
                                    dfree, dst, b, key,
                                    leaf_holds)
            if r < 0:
                return -2
            if r == 0:
                return -1
        if m32[b, 1] & LEAF:
            j = _lower_bound(m64, m32, b, key)
            if j < 0 or j >= m32[b, 4] or m64[b, HDR + j] != key:
                return -1
            return j
        i = _lower_bound(m64, m32, b, key)
        root = np.int64(_val(m64, m32, b, i))


@njit(refcount=False)
def remove_mapping_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                    root, dev, vblock, sp, out):
    """dm_btree_remove of (dev, vblock): ``out`` gets (new root, removed).
    Returns 0, or -1 when metadata ran out.  ``sp`` is scratch (int64[4])."""
    for j in range(4):
        sp[j] = 0
    idx = _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root,
                      np.uint64(dev), 0, 1)
    if idx == -2:
        return -1
    if idx == -1:
        out[0] = sp[3]
        out[1] = 0
        return 0
    sub = np.int64(_val(m64, m32, sp[1], idx))
    idx = _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, sub,
                      np.uint64(vblock), idx, 2)
    if idx == -2:
        return -1
    out[0] = sp[3]
    if idx == -1:
        out[1] = 0
        return 0
    n = sp[1]
    p = np.int64(_val(m64, m32, n, idx) >> np.uint64(24))
    # dm_btree_remove's dec, after the spine: the bitmap shadowed then
    if _shadow_data_bitmap_of(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p) < 0:
        return -1
    if _ref_count_dec(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, p) < 0:
        return -1
    _ddec(dcount, dcommitted, dfree, p)
    _delete_at(m64, m32, n, idx)
    out[1] = 1
    return 0


@njit
def remove_mapping(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                   root, dev, vblock, out):
    """dm_btree_remove of (dev, vblock): ``out`` gets (new root, removed).
    Returns 0, or -1 when metadata ran out."""
    sp = np.zeros(4, dtype=np.int64)
    return remove_mapping_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                  dst,
                           root, dev, vblock, sp, out)


# ------------------------------------------------------- range removal
@njit(refcount=False)
def _lookup_next(m64, m32, root, key):
    """dm_btree_lookup_next on a one-level tree: (True, the least key >=
    ``key``) or (False, 0).  Read-only (each internal level remembers its
    next child, where dm retries after a failed descent)."""
    b = root
    cand = np.int64(-1)
    for _ in range(64):
        nr = np.int64(m32[b, 4])
        i = _lower_bound(m64, m32, b, key)
        if m32[b, 1] & LEAF:
            if i < 0 or m64[b, HDR + i] != key:
                i += 1
            if i < nr:
                return True, m64[b, HDR + i]
            if cand < 0:
                return False, np.uint64(0)
            b = cand
            cand = -1
            continue
        if i < 0:
            i = 0
        if i >= nr:
            return False, np.uint64(0)
        if i + 1 < nr:
            cand = np.int64(_val(m64, m32, b, i + 1))
        b = np.int64(_val(m64, m32, b, i))
    return False, np.uint64(0)


@njit(refcount=False)
def _remove_nearest(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root,
                    key):
    """dm's remove_nearest down a device's subtree: the spine shadowed and
    rebalanced for ``key``; the leaf index of the last key <= ``key`` (-1
    when none), -3 when an internal node has no child for it (-ENODATA:
    what was rebalanced stays), -2 when metadata ran out."""
    i = np.int64(0)
    while True:
        if _shadow_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                        root, i, 2) < 0:
            return -2
        b = sp[1]
        if m32[b, 1] & LEAF:
            return _lower_bound(m64, m32, b, key)
        r = _rebalance_children(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                dst, b, key, 2)
        if r < 0:
            return -2
        if r == 0:
            return -3
        if m32[b, 1] & LEAF:
            return _lower_bound(m64, m32, b, key)
        i = _lower_bound(m64, m32, b, key)
        root = np.int64(_val(m64, m32, b, i))


@njit(refcount=False)
def _remove_one(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, root,
                begin, end, res):
    """dm's remove_one: the nearest entry at or before ``begin`` (the
    leaf's first when none) is removed when its key lies in [begin, end).
    ``res`` gets (new root, the key removed).  Returns 1 removed, 0 not
    (-ENODATA: the descent's shadows and rebalancing stay), -1 when
    metadata ran out."""
    for j in range(4):
        sp[j] = 0
    idx = _remove_nearest(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                          sp, root, begin)
    if idx == -2:
        return -1
    res[0] = sp[3]
    if idx == -3:
        return 0
    n = sp[1]
    if idx < 0:
        idx = 0
    if idx >= m32[n, 4]:
        return 0
    k = m64[n, HDR + idx]
    if k < begin or k >= end:
        return 0
    p = np.int64(_val(m64, m32, n, idx) >> np.uint64(24))
    # block_dec (dm_sm_dec_block), then delete_at
    if _shadow_data_bitmap_of(m64, m32, count, committed, free, txn, kind, fresh, tst, dst, p) < 0:
        return -1
    if _ref_count_dec(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, p) < 0:
        return -1
    _ddec(dcount, dcommitted, dfree, p)
    _delete_at(m64, m32, n, idx)
    res[1] = np.int64(k)
    return 1


@njit(refcount=False)
def _remove_leaves(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, res,
                   root, begin, end, out):
    """The loop of dm's __remove_range over one device's subtree at
    ``root`` (its top-level entry already taken out): dm_btree_lookup_next
    finds the next mapped vblock in [begin, end), dm_btree_remove_leaves
    removes from there with one remove_one each (its own descent and
    rebalancing), stopping at the first that finds nothing in range (that
    one's descent still shadows and rebalances).  ``out`` gets (new root,
    mappings removed).  Returns 0, or -1 when metadata ran out.  ``sp``
    (int64[4]) and ``res`` (int64[2]) are scratch."""
    b = np.uint64(begin)
    e = np.uint64(end)
    total = 0
    out[0] = root
    while b < e:
        found, k = _lookup_next(m64, m32, root, b)
        if not found or k >= e:
            break
        b = k
        while True:
            res[0] = root
            r = _remove_one(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                            sp, root, b, e, res)
            if r < 0:
                out[0] = root
                out[1] = total
                return -1
            root = res[0]
            if r == 0:
                break
            total += 1
            b = np.uint64(res[1]) + np.uint64(1)
    out[0] = root
    out[1] = total
    return 0


@njit
def remove_leaves_range(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root,
                        begin, end, out):
    """:func:`_remove_leaves` with its own scratch."""
    sp = np.zeros(4, dtype=np.int64)
    res = np.zeros(2, dtype=np.int64)
    return _remove_leaves(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                          res, root, begin, end, out)


@njit(inline="always", refcount=False)
def _shadow_meta_bitmap_of(m64, count, committed, free, txn, kind, fresh, tst, b):
    """sm_ll_inc/sm_ll_dec's shadow of the metadata bitmap holding block
    ``b``'s count, at the first change of one of its counts in the
    transaction: the copy takes the next free block.  Returns 0, or -1
    when metadata ran out."""
    i = b // ENTRIES_PER_BITMAP
    if i >= tst[3]:
        return 0
    old = tst[ST_BITMAPS + i]
    if txn[old]:
        return 0
    nb = _find_free(free, tst[0], tst[ST_NO_WRAP] == 0)
    if nb < 0:
        return -1
    _take(count, committed, free, txn, kind, fresh, tst, nb, KIND_BITMAP)
    for w in range(512):
        m64[nb, w] = m64[old, w]
    tst[2] += 1
    tst[ST_BITMAPS + i] = nb
    _dec(count, committed, free, old)
    return 0


@njit(refcount=False)
def remove_range_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                         sp, res, root, dev, begin, end, halves, out):
    """dm's __remove_range (dm_thin_remove_range) of [begin, end) of device
    ``dev`` under the mapping tree at ``root``.  dm looks up the device's
    subtree root and takes a reference on it (dm_tm_inc: the first change
    of its count in the transaction shadows its metadata bitmap there), then
    removes the device's top-level entry (the spine shadowed and
    rebalanced; the value's dec, dm_btree_del of a root counted more than
    once, drops that reference again), removes the range from the subtree
    (:func:`_remove_leaves`) and inserts the top-level entry back.
    ``sp`` (int64[4]) and ``res`` (int64[2]) are scratch.  A
    snapshot-shared root is counted 3 for a moment, which dm puts in the
    metadata ref-count tree and takes out again; like every count of 3 or
    more here, that is left to the commit, which finds it as it was.
    ``out`` gets (new root, mappings removed).  Returns 0, -1 when metadata
    ran out, -3 when ``dev`` has no entry (nothing done)."""
    key0 = np.uint64(dev)
    b = root
    sub = np.int64(-1)
    for _ in range(64):
        i = _lower_bound(m64, m32, b, key0)
        if i < 0 or i >= m32[b, 4]:
            return -3
        if m32[b, 1] & LEAF:
            if m64[b, HDR + i] != key0:
                return -3
            sub = np.int64(_val(m64, m32, b, i))
            break
        b = np.int64(_val(m64, m32, b, i))
    if sub < 0:
        return -3
    out[0] = root
    out[1] = 0
    if _shadow_meta_bitmap_of(m64, count, committed, free, txn, kind, fresh, tst, sub) < 0:
        return -1
    _dtouch(count, committed, sub)
    count[sub] += 1
    for j in range(4):
        sp[j] = 0
    idx = _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                      root, key0, 0, 1)
    if idx == -2:
        return -1
    root = sp[3]
    _dec(count, committed, free, sub)
    _delete_at(m64, m32, sp[1], idx)
    if _remove_leaves(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp, res,
                      sub, begin, end, out) < 0:
        return -1
    sub = out[0]
    for j in range(4):
        sp[j] = 0
    idx = _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, sp,
                      root, key0, -1, 1, halves)
    if idx < -1:
        return -1
    _insert_at(m64, m32, sp[1], idx, key0, np.uint64(sub))
    out[0] = sp[3]
    return 0


@njit
def remove_range(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, root, dev,
                 begin, end, halves, out):
    """:func:`remove_range_scratch` with its own scratch."""
    sp = np.zeros(4, dtype=np.int64)
    res = np.zeros(2, dtype=np.int64)
    return remove_range_scratch(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                                dst, sp, res, root, dev, begin, end, halves, out)


# --------------------------------------------------------- ref-count trees
@njit(refcount=False)
def _merge_run(m64, m32, leaf, blocks, counts, k, n, hi, halves):
    """The longest run ``blocks[k:e]`` (counts >= 3, keys within the leaf's
    bounds ``hi``) that dm's inserts, one after another, would each make in
    place in ``leaf`` (this transaction's, unshared): no insert meets the
    leaf full, nor, in the halves rule, does an overwrite.  Merges it into
    the leaf in one backward pass (the bytes the inserts one by one would
    leave: keys and 4-byte values moved up, slots past the new count
    untouched) and returns ``e``; ``k`` when not even ``blocks[k]`` fits."""
    nr = np.int64(m32[leaf, 4])
    mx = np.int64(m32[leaf, 5])
    cap = mx - nr - (1 if halves else 0)  # new keys the leaf takes in place
    if cap < 0:
        return k
    vbase = 2 * HDR + 2 * mx
    # forward: how far the run goes, and how many of its keys are new
    a = _lower_bound(m64, m32, leaf, np.uint64(blocks[k]))
    if a < 0:
        a = 0
    new = 0
    e = k
    while e < n and counts[e] >= 3:
        key = np.uint64(blocks[e])
        if not hi[1] and key >= hi[0]:
            break
        while a < nr and m64[leaf, HDR + a] < key:
            a += 1
        if a >= nr or m64[leaf, HDR + a] != key:
            if new == cap:
                break
            new += 1
        else:
            m32[leaf, vbase + a] = np.uint32(counts[e])  # (the merge below keeps it)
        e += 1
    if e == k or new == 0:
        return e
    # backward: entries above the run's keys move up by the new ones below them
    w = nr + new - 1
    a = nr - 1
    u = e - 1
    while u >= k:
        key = np.uint64(blocks[u])
        if a >= 0 and m64[leaf, HDR + a] > key:
            m64[leaf, HDR + w] = m64[leaf, HDR + a]
            m32[leaf, vbase + w] = m32[leaf, vbase + a]
            a -= 1
        else:
            if a >= 0 and m64[leaf, HDR + a] == key:
                a -= 1
            m64[leaf, HDR + w] = key
            m32[leaf, vbase + w] = np.uint32(counts[u])
            u -= 1
        w -= 1
    m32[leaf, 4] = nr + new
    return e


@njit
def update_ref_counts(m64, m32, count, committed, free, txn, kind, fresh, tst, root, blocks, counts, halves,
                      out):
    """A space map's ref-count btree (4-byte values, one level) after, in
    order, each ``blocks[k]`` is set to ``counts[k]`` when that is >= 3
    (dm_btree_insert) or removed when it is below 3 (dm_btree_remove).
    ``out[0]`` gets the new root.  Returns 0, or -1 when metadata ran out."""
    dcount = np.zeros(1, dtype=np.uint32)
    dfree = np.zeros(1, dtype=np.bool_)
    dcommitted = np.zeros(1, dtype=np.uint32)
    dst = np.zeros(DST_BITMAPS, dtype=np.int64)  # no data bitmaps: nothing to shadow
    dst[DST_RC] = -1
    sp = np.zeros(4, dtype=np.int64)
    hi = np.zeros(3, dtype=np.uint64)
    res = np.zeros(3, dtype=np.int64)
    return _update_ref_counts(m64, m32, count, committed, free, txn, kind, fresh, tst, root, blocks, counts, halves,
                              out, dcount, dcommitted, dfree, dst, sp, hi, res)


@njit(refcount=False)
def _update_ref_counts(m64, m32, count, committed, free, txn, kind, fresh, tst, root, blocks, counts, halves,
                       out, dcount, dcommitted, dfree, dst, sp, hi, res):
    # as write_blocks: a leaf an insert would only descend to is changed in
    # place, and stays the target while the keys stay within its bounds;
    # the blocks come in ascending order, so each run of them that the
    # leaf takes in place is merged into it in one pass (_merge_run)
    leaf = -1
    n = blocks.shape[0]
    k = 0
    while k < n:
        key = np.uint64(blocks[k])
        c = counts[k]
        if c >= 3:
            if leaf < 0 or key < hi[2] or (not hi[1] and key >= hi[0]):
                leaf = -1
                if _direct_descend(m64, m32, count, txn, root, key, halves, res, hi):
                    leaf = res[0]
            if leaf >= 0:
                e = _merge_run(m64, m32, leaf, blocks, counts, k, n, hi, halves)
                if e > k:
                    k = e
                    continue
                leaf = -1
        else:
            leaf = -1
        for j in range(4):
            sp[j] = 0
        if c >= 3:
            idx = _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                              sp, root,
                              key, -1, 0, halves)
            if idx < -1:
                out[0] = root
                return -1
            nd = sp[1]
            if idx >= m32[nd, 4] or m64[nd, HDR + idx] != key:
                _insert_at(m64, m32, nd, idx, key, np.uint64(c))
            else:
                _set_val(m64, m32, nd, idx, np.uint64(c))
        else:
            idx = _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst,
                              sp, root,
                              key, 0, 0)
            if idx == -2:
                out[0] = root
                return -1
            if idx >= 0:
                _delete_at(m64, m32, sp[1], idx)
        root = sp[3]
        k += 1
    out[0] = root
    return 0


@njit
def ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, root, key, old, up, halves, legacy):
    """:func:`_ref_count_step` for Python callers (the data space map's
    own inc and dec): the new root, -1 when metadata ran out, -2 when the
    tree lacks the entry a count above 3 needs (corrupt)."""
    sp = np.zeros(4, dtype=np.int64)
    return _ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, sp, np.int64(root),
                           np.int64(key), np.int64(old), up, halves, legacy)


@njit(refcount=False)
def _ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, sp, root, key, old, up, halves,
                    legacy):
    """A space map's ref-count tree (4-byte values) as block ``key``'s
    count moves by one from ``old`` (up from 2 or more, or down from 3 or
    more), changed there and then as dm's sm_ll_inc/sm_ll_dec change it:
    since 5.14 a count reaching 3 is inserted (dm_btree_insert); one
    moving above 3 is set in its leaf once btree_get_overwrite_leaf has
    shadowed the path to it, top down, with no split or rebalance
    (sm_ll_inc_overflow, sm_ll_dec_overflow); one leaving 3 is removed
    (dm_btree_remove) after that same shadow.  Before 5.14 (``legacy``:
    sm_ll_mutate) every new count of 3 or more is inserted, and one
    leaving 3 removed.  The btree's steps get None for ``dst`` (the
    tree's nodes hold no data blocks: see _inc_children), and the
    metadata's own arrays in place of the data space map's, never read;
    ``sp`` is the spine's scratch (int64[4]).  Returns the new root, -1
    when metadata ran out, -2 when the tree lacks the entry a count above
    3 needs (corrupt)."""
    new = old + 1 if up else old - 1
    k = np.uint64(key)
    # (no literal arguments to the btree's steps: numba resolves these calls
    # as recursive ones, the mapping trees' steps being on the stack, and
    # finds them by their plain types only)
    none = np.int64(-1)
    zero = np.int64(0)
    dcount, dcommitted, dfree = committed, committed, free
    for w in range(4):
        sp[w] = 0
    if new >= 3 and (old == 2 or legacy):
        # where dm's insert would only descend (every node on the way this
        # transaction's, none full but a leaf that holds the key under the
        # current rule), the leaf is changed in place: no shadow step
        b = np.int64(root)
        while True:
            if not txn[b] or count[b] != 1:
                break
            full = m32[b, 4] == m32[b, 5]
            i = _lower_bound(m64, m32, b, k)
            if m32[b, 1] & LEAF:
                found = i >= 0 and m64[b, HDR + i] == k
                if full and (halves or not found):
                    break
                if found:
                    _set_val(m64, m32, b, i, np.uint64(new))
                else:
                    _insert_at(m64, m32, b, i + 1, k, np.uint64(new))
                return np.int64(root)
            if full or i < 0:
                break
            b = np.int64(_val(m64, m32, b, i))
        idx = _insert_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, None,
                          sp, root, k, none, zero, halves)
        if idx < -1:
            return np.int64(-1)
        nd = sp[1]
        if idx >= m32[nd, 4] or m64[nd, HDR + idx] != k:
            _insert_at(m64, m32, nd, idx, k, np.uint64(new))
        else:
            _set_val(m64, m32, nd, idx, np.uint64(new))
        return sp[3]
    if not legacy:
        i = np.int64(-1)
        b = np.int64(root)
        while True:
            nb = _shadow_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree,
                              None, sp, b, i, zero)
            if nb < 0:
                return np.int64(-1)
            j = _lower_bound(m64, m32, nb, k)
            if j < 0 or j >= m32[nb, 4]:
                return np.int64(-2)
            if m32[nb, 1] & LEAF:
                if m64[nb, HDR + j] != k:
                    return np.int64(-2)
                break
            i = j
            b = np.int64(_val(m64, m32, nb, j))
        if new >= 3:
            _set_val(m64, m32, nb, j, np.uint64(new))
            return sp[3]
        root = sp[3]
        for w in range(4):
            sp[w] = 0
    idx = _remove_raw(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, None, sp,
                      root, k, zero, zero)
    if idx == -2:
        return np.int64(-1)
    if idx >= 0:
        _delete_at(m64, m32, sp[1], idx)
    return sp[3]


@njit(inline="always", refcount=False)
def _rc_locate(m64, m32, count, txn, root, k, dst):
    """A read-only descent of the data space map's ref-count tree (root
    ``root``) to the leaf where key ``k`` is or would go, kept in ``dst``
    (DST_RC_LEAF, its key bounds DST_RC_LO <= key < DST_RC_HI, DST_RC_PATH
    and DST_RC_AT: see data_ref_count_step); the leaf, or -1 (nothing
    kept) when ``k`` is below an internal node's first key (dm's insert
    changes that key)."""
    b = np.int64(root)
    lo = np.int64(0)
    hi = RC_NO_BOUND
    path = np.int64(RC_OWN | RC_DIRECT)
    while True:
        if not txn[b] or count[b] != 1:
            path = 0
        if m32[b, 1] & LEAF:
            break
        nr = np.int64(m32[b, 4])
        if nr == m32[b, 5]:
            path &= RC_OWN
        i = _lower_bound(m64, m32, b, k)
        if i < 0:
            dst[DST_RC_LEAF] = -1
            return np.int64(-1)
        lo = max(lo, np.int64(m64[b, HDR + i]))
        if i + 1 < nr:
            hi = min(hi, np.int64(m64[b, HDR + i + 1]))
        b = np.int64(_val(m64, m32, b, i))
    dst[DST_RC_LEAF] = b
    dst[DST_RC_LO] = lo
    dst[DST_RC_HI] = hi
    dst[DST_RC_PATH] = path
    dst[DST_RC_AT] = 0
    return b


@njit(refcount=False)
def data_ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dcount, dcommitted, dfree, dst, p,
                        old, up):
    """:func:`_ref_count_step` on the data space map's ref-count tree,
    whose root ``dst[DST_RC]`` holds (it takes the new one; its spine in
    ``dst[DST_SP:]``), for data block ``p`` whose count moves by one from
    ``old``; nothing when that slot is -1 (the commit updates the tree:
    the userspace tools' way).  Called only where a count of 2 or more
    goes up or one of 3 or more goes down, which most transactions never
    see.  0, or -1 when metadata ran out or the tree lacks the entry (the
    transaction is abandoned either way).

    The leaf the last key went to is kept (DST_RC_LEAF, found again by a
    read-only descent when a key falls outside its bounds; none kept past
    any other change of the tree, nor from one kernel call to the next,
    as the space map's own inc/dec change the tree between them), with
    what its path allows (DST_RC_PATH): RC_OWN, every node on it this
    transaction's and unshared, so the overwrite's shadow steps down to
    it change nothing and a count above 3 is set in the leaf; RC_DIRECT
    too, no internal node full either, so where dm's insert would only
    descend (the leaf not full, or holding the key under the current
    rule) the count is inserted or set there.  A leaf's children's
    counts are mostly consecutive blocks (~900 K of them after CoW into
    a snapshot of a snapshot), so the key is looked for first beside the
    last one (DST_RC_AT).  The bytes are those of the steps from the
    root."""
    if dst[DST_RC] < 0:
        return 0
    legacy = dst[DST_NO_WRAP] != 0
    halves = dst[DST_RC_HALVES] != 0
    new = old + 1 if up else old - 1
    insert = new >= 3 and (old == 2 or legacy)
    if new >= 3:
        if _rc_set_next(m64, m32, dst, p, new, insert, halves):
            return 0
        leaf = dst[DST_RC_LEAF]
        if leaf < 0 or p < dst[DST_RC_LO] or p >= dst[DST_RC_HI]:
            leaf = _rc_locate(m64, m32, count, txn, dst[DST_RC], np.uint64(p), dst)
        if leaf >= 0 and dst[DST_RC_PATH] & (RC_DIRECT if insert else RC_OWN):
            k = np.uint64(p)
            nr = np.int64(m32[leaf, 4])
            at = dst[DST_RC_AT]
            if at + 1 < nr and m64[leaf, HDR + at + 1] == k:
                j = at + 1
            elif at < nr and m64[leaf, HDR + at] < k and (at + 1 >= nr or m64[leaf, HDR + at + 1] > k):
                j = at
            else:
                j = _lower_bound(m64, m32, leaf, k)
            found = j >= 0 and m64[leaf, HDR + j] == k
            if found:
                if insert and halves and nr == m32[leaf, 5]:
                    j = -2  # (dm's insert splits a full leaf before 5.14)
                else:
                    _set_val(m64, m32, leaf, j, np.uint64(new))
                    dst[DST_RC_AT] = j
                    return 0
            elif insert and nr < m32[leaf, 5]:
                _insert_at(m64, m32, leaf, j + 1, k, np.uint64(new))
                dst[DST_RC_AT] = j + 1
                return 0
    dst[DST_RC_LEAF] = -1  # the step below may move entries and nodes
    r = _ref_count_step(m64, m32, count, committed, free, txn, kind, fresh, tst, dst[DST_SP:DST_SP + 4],
                        dst[DST_RC], np.int64(p), np.int64(old), up, halves, legacy)
    if r < 0:
        return -1
    dst[DST_RC] = r
    return 0


@njit(refcount=False)
def collect_ref_count_changes(count, committed, bitmaps, blocks_out, counts_out, has_diff):
    """A space map's commit, first part: over the bitmaps ``bitmaps`` (the
    flagged ones), each block whose count moved from its committed value
    and is or was >= 3 goes to ``blocks_out``/``counts_out`` (ascending;
    the ref-count tree's updates), and ``has_diff[j]`` says whether any
    count of bitmap ``bitmaps[j]`` moved.  Returns how many blocks."""
    n = count.shape[0]
    k = 0
    for j in range(bitmaps.shape[0]):
        lo = bitmaps[j] * ENTRIES_PER_BITMAP
        k, has_diff[j] = _collect_range(count, committed, lo, min(n, lo + ENTRIES_PER_BITMAP), blocks_out,
                                        counts_out, k)
    return k


@njit(inline="always", refcount=False)
def _collect_range(count, committed, lo, hi, blocks_out, counts_out, k):
    """:func:`collect_ref_count_changes` over blocks ``lo..hi``, appending
    at ``k``: returns (the new ``k``, 1 when any count there moved)."""
    d = 0
    for b in range(lo, hi):
        c = count[b]
        o = committed[b]
        if c != o:
            d = 1
            if c >= 3 or o >= 3:
                blocks_out[k] = b
                counts_out[k] = c
                k += 1
    return k, d


@njit(refcount=False)
def write_bitmap(m64, b, count, committed, lo, hi, nfb, out):
    """A space map's bitmap commit for blocks ``lo..hi`` (one bitmap's
    worth, the last one maybe short): block ``b``'s 2-bit entries (from
    byte 16, entry j of each 64-bit word in bits 2j (high) and 2j+1 (low);
    3 = in the ref-count tree) for the counts now, and ``out`` = (nr_free,
    none_free_before) of its index entry after a transaction that moved the
    counts from ``committed``: nr_free of all 16,320 entries, the hint
    lowered to the first freed entry and stepped past entries newly in use
    from it (dm's lazy hint)."""
    n = hi - lo
    used = 0
    # the words: no branch on the counts (a zero count is a zero entry)
    for w in range(ENTRIES_PER_BITMAP // 32):
        word = np.uint64(0)
        base = lo + w * 32
        for j in range(max(0, min(32, n - w * 32))):
            c = count[base + j]
            used += np.int64(c != 0)
            v = np.uint64(min(c, np.uint32(3)))
            word |= ((v >> np.uint64(1)) << np.uint64(2 * j)) | ((v & np.uint64(1)) << np.uint64(2 * j + 1))
        m64[b, 2 + w] = word
    # the hint: only an entry freed below it lowers it, so the search for
    # the first freed entry stops there
    for e in range(min(nfb, n)):
        if count[lo + e] == 0 and committed[lo + e] != 0:
            nfb = e
            break
    while nfb < n and committed[lo + nfb] == 0 and count[lo + nfb] != 0:
        nfb += 1
    out[0] = ENTRIES_PER_BITMAP - used
    out[1] = nfb


@njit(refcount=False)
def write_bitmaps(m64, count, committed, nr_blocks, bitmaps, ie64, out):
    """:func:`write_bitmap` for each bitmap of ``bitmaps``, into the block
    its index entry names: ``ie64`` is the space map's index entries as
    uint64 pairs (blocknr; nr_free | none_free_before << 32), whose second
    word gets the new nr_free and hint.  ``out`` is scratch (2 int64)."""
    for j in range(bitmaps.shape[0]):
        i = bitmaps[j]
        lo = i * ENTRIES_PER_BITMAP
        hi = min(nr_blocks, lo + ENTRIES_PER_BITMAP)
        w = ie64[i, 1]
        write_bitmap(m64, np.int64(ie64[i, 0]), count, committed, lo, hi, np.int64(w >> np.uint64(32)), out)
        ie64[i, 1] = np.uint64(out[0]) | (np.uint64(out[1]) << np.uint64(32))


@njit(refcount=False)
def overwrite_entries_in_place(m64, m32, count, txn, root, keys, ie64, halves, k):
    """btree_write.overwrite_in_place for ``keys[k:]`` in order, in a
    one-level tree of 16-byte values (a space map's index: key i gets
    ``ie64[i]``'s two words), as long as each is a write in place: every
    node on the path this transaction's and unshared, no internal node
    full, the key in the leaf (and in the halves rule the leaf not full).
    Returns the position of the first key that is not (its insert is the
    caller's), or ``keys.shape[0]``."""
    n = keys.shape[0]
    while k < n:
        key = np.uint64(keys[k])
        b = root
        while True:
            if txn[b] == 0 or count[b] != 1:
                return k
            nr = np.int64(m32[b, 4])
            mx = np.int64(m32[b, 5])
            i = _lower_bound(m64, m32, b, key)
            if m32[b, 1] & LEAF:
                if i < 0 or m64[b, HDR + i] != key or (halves and nr == mx):
                    return k
                m64[b, HDR + mx + 2 * i] = ie64[keys[k], 0]
                m64[b, HDR + mx + 2 * i + 1] = ie64[keys[k], 1]
                break
            if nr == mx or i < 0:
                return k
            b = np.int64(m64[b, HDR + mx + i])
        k += 1
    return k


# ------------------------------------------- a space map's flagged bitmaps
@njit(refcount=False)
def sealable(txn, kind, count, bitmaps, out):
    """The blocks of the flagged ``bitmaps`` written in this transaction
    (``txn``), with a validator (``kind``) and still in use (``count``),
    ascending, into ``out``; returns how many (a commit's dirty blocks:
    every one was allocated, so its bitmap is flagged)."""
    n = count.shape[0]
    k = 0
    for j in range(bitmaps.shape[0]):
        lo = bitmaps[j] * ENTRIES_PER_BITMAP
        for b in range(lo, min(n, lo + ENTRIES_PER_BITMAP)):
            if txn[b] != 0 and kind[b] != 0 and count[b] != 0:
                out[k] = b
                k += 1
    return k


@njit(refcount=False)
def settle_bitmaps(count, committed, free, bitmaps):
    """A space map's commit, last part: over the flagged ``bitmaps`` the
    counts now become the committed ones and ``free`` says which are 0."""
    n = count.shape[0]
    for j in range(bitmaps.shape[0]):
        lo = bitmaps[j] * ENTRIES_PER_BITMAP
        _settle_range(count, committed, free, lo, min(n, lo + ENTRIES_PER_BITMAP))


@njit(inline="always", refcount=False)
def _settle_range(count, committed, free, lo, hi):
    """Blocks ``lo..hi``: their counts become the committed ones, ``free``
    says which are 0."""
    for b in range(lo, hi):
        c = count[b]
        committed[b] = c
        free[b] = c == 0


@njit(inline="always", refcount=False)
def _any_moved(count, committed, lo, hi):
    """1 when a count of blocks ``lo..hi`` moved from its committed value
    (the scan stops at the first that did), else 0."""
    for b in range(lo, hi):
        if count[b] != committed[b]:
            return 1
    return 0


@njit(refcount=False)
def commit_ready_bitmaps(m64, count, committed, free, bitmaps, ready, ie64, blocks_out, counts_out, has_diff, out,
                         collect):
    """The data space map's commit, first pass, over its flagged
    ``bitmaps``: :func:`collect_ref_count_changes` (with ``collect``
    False, only ``has_diff``, each bitmap's scan stopping at its first
    moved count: the ref-count tree is current already, and the pass
    after CoW of a snapshot would append ~900 K blocks nobody reads), and
    for each bitmap
    whose block this transaction has shadowed already (``ready[j]`` 1; 2:
    only when one of its counts moved) the rest of its commit while its
    counts are in cache: :func:`write_bitmaps`' writing of its block and
    index entry, then :func:`settle_bitmaps` (``ready[j]`` is set to 3
    when done).  Nothing here allocates, so the bitmaps are written as
    they would be after the ref-count tree's update.  Returns how many
    blocks went to ``blocks_out``."""
    n = count.shape[0]
    k = 0
    for j in range(bitmaps.shape[0]):
        i = bitmaps[j]
        lo = i * ENTRIES_PER_BITMAP
        hi = min(n, lo + ENTRIES_PER_BITMAP)
        if collect:
            k, d = _collect_range(count, committed, lo, hi, blocks_out, counts_out, k)
        else:
            d = _any_moved(count, committed, lo, hi)
        has_diff[j] = d
        if ready[j] == 1 or (ready[j] == 2 and d):
            w = ie64[i, 1]
            write_bitmap(m64, np.int64(ie64[i, 0]), count, committed, lo, hi, np.int64(w >> np.uint64(32)), out)
            ie64[i, 1] = np.uint64(out[0]) | (np.uint64(out[1]) << np.uint64(32))
            _settle_range(count, committed, free, lo, hi)
            ready[j] = 3
    return k


def _compile_ref_count_step() -> None:
    """Compile :func:`_ref_count_step` before any kernel that calls it.

    Its btree steps are the mapping trees' own (_insert_raw, _remove_raw),
    which reach it back through inc_children (a shared leaf's data counts)
    and the decs: compiled from inside them, numba would take that for a
    recursive call and leave it an unresolved symbol, which a cached
    caller loaded in a later process calls as a null pointer.  Compiled
    first, with ``dst`` None (so the data branch of _inc_children is
    dropped), it is a plain callee that every caller links in."""
    from numba.core import types as T

    u64_2, u32_2 = T.Array(T.uint64, 2, "C"), T.Array(T.uint32, 2, "C")
    u32, b1, u8, i64 = (T.Array(t, 1, "C") for t in (T.uint32, T.boolean, T.uint8, T.int64))
    _ref_count_step.compile((u64_2, u32_2, u32, u32, b1, u8, u8, u8, i64, i64, T.int64, T.int64, T.int64,
                             T.boolean, T.boolean, T.boolean))


_compile_ref_count_step()

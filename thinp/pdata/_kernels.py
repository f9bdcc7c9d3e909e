"""Refcounted copy-on-write radix trees over 4 KiB metadata blocks (numba).

This is the one CoW mechanism in thinp.  dm-thin's mapping trees use it, and
so will the btrfs and zfs driver models at their own granularity.  The
kernels here are private: they take the arrays of a :class:`Space` and
scalars, return values or status codes, and never raise.  Callers check
arguments first (numba does not bounds-check).

Arrays of a Space (all plain ndarrays; the metadata one is an mmap view)
-----------------------------------------------------------------------
meta    uint64[nr_meta_blocks, 512]  the metadata file.  A tree node is one
        block of 512 entries.  Interior entry: ``crc32 << 32 | child`` with
        child a metadata block number (0 = no child; block 0 is a superblock,
        never a node).  Leaf entry: an opaque non-zero value (dm-thin stores
        ``(pblock + 1) << 24 | time``); 0 = unmapped.  Every node's checksum
        lives in the entry that points to it (the root's in its owner's
        record), so a node is a pure power-of-two radix node.
mrc     uint32[nr_meta_blocks]  references to each metadata block (parents
        plus roots held by devices).  0 = free.
mbits   uint64[ceil(nr_meta_blocks/64)]  allocation bitmap, bit set = not
        allocatable (in use, freed this transaction, or past the end).
mnew    uint8[nr_meta_blocks]  1 = allocated in this transaction, so a node
        with ``mrc == 1`` may be changed in place (already shadowed).
mpend   uint32[nr_meta_blocks]  metadata blocks freed this transaction; they
        stay unallocatable until commit (the committed state still uses them).
mdirty  uint8[nr_meta_pages]  space-map pages of ``mrc`` changed this
        transaction (``SM_PAGE_ENTRIES`` entries a page).
drc, dbits, dpend, ddirty: the same four for data blocks.  A data block's
        count is the number of leaf nodes that map it, as in dm-thin.
dpass   uint32[nr_data_blocks]  data blocks freed by a discard with passdown
        on, for the caller to punch out of the data file.
scal    int64[NR_SCALARS]  cursors, counts, options and counters; the S_* and
        C_* names below index it.
events  int64[EV_CAPACITY, 3]  (op index, event kind, value) rows.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..config import njit

NODE_SHIFT = 9
NODE_ENTRIES = 1 << NODE_SHIFT
NODE_MASK = NODE_ENTRIES - 1
CHILD_MASK = 0xFFFFFFFF
#: Refcounts per space-map page on disk: 510 words after a 16-byte header,
#: four uint16 counts a word.  uint16 is enough: a block's count is at most
#: one per device tree plus one per held metadata snapshot's, and thinp
#: holds at most 31,752 devices (the commit refuses a count above 65,535).
SM_PAGE_ENTRIES = 2040
SM_MAX_COUNT = 65535
ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

# --- scal indices: state -------------------------------------------------------
S_TIME = 0  # pool time, bumped by every snapshot (dm's pmd->time)
S_DCURSOR = 1  # next-fit cursor, data blocks
S_MCURSOR = 2  # next-fit cursor, metadata blocks
S_DUSED = 3  # data blocks with drc > 0
S_MUSED = 4  # metadata blocks with mrc > 0
S_DNPEND = 5  # entries in dpend
S_MNPEND = 6  # entries in mpend
S_NR_DATA = 7
S_NR_META = 8
S_META_RESERVE = 9  # metadata blocks only metadata-critical paths may use
S_LWM = 10  # low water mark, data blocks
S_LWM_ARMED = 11
S_NEV = 12  # rows used in events
S_OPS_SINCE_COMMIT = 13
S_COMMIT_INTERVAL = 14  # 0 = never ask for a commit
S_BLOCK_SIZE = 15  # data block size, bytes
S_ZERO = 16  # zero_new_blocks
S_ERROR_IF_NO_SPACE = 17
S_PAYLOAD = 18
S_PASSDOWN = 19
S_DNPASS = 20  # entries in dpass
S_META_LWM = 21  # metadata low water mark, blocks
S_META_LWM_ARMED = 22
S_DROPPED_EVENTS = 23
NR_STATE = 32

# --- scal indices: counters (cumulative since the pool was opened) ----------------
C_PROVISIONED = 32  # data blocks provisioned by first writes
C_COW = 33  # CoW breaks of sharing (allocations for a shared block)
C_BYTES_COPIED = 34  # bytes copied by CoW
C_ZEROED = 35  # new blocks zeroed (each costs a block write)
C_DISCARDED = 36  # mappings removed by discard
C_FREED = 37  # data blocks whose count fell to zero
C_READS = 38  # per-block reads
C_WRITES = 39  # per-block writes
C_READ_UNMAPPED = 40  # per-block reads of unmapped blocks (zeros)
C_ENOSPC = 41  # per-block writes failed with ENOSPC
C_SHADOWS = 42  # metadata blocks shadowed (copied on write)
C_META_ALLOCS = 43  # metadata blocks allocated
C_OPS = 44  # requests processed
C_BYTES_WRITTEN = 45
C_BYTES_READ = 46
C_BYTES_DISCARD = 47
C_OVERWRITES = 48  # first writes that covered the block, so skipped zeroing
C_COW_OVERWRITES = 49  # shared-block writes that covered the block, no copy
C_PASSDOWN = 50  # freed data blocks passed down to the data device
C_EIO = 51  # per-block writes failed with EIO (dm-thin: a read-only pool's writes needing a new block)
C_FAILED_OPS = 52  # requests completed with an error (EIO or ENOSPC) on at least one block
NR_SCALARS = 64
COUNTER_NAMES = {
    C_PROVISIONED: "nr_provisioned",
    C_COW: "nr_cow_copies",
    C_BYTES_COPIED: "bytes_copied",
    C_ZEROED: "nr_zeroed",
    C_DISCARDED: "nr_discarded",
    C_FREED: "nr_freed",
    C_READS: "nr_block_reads",
    C_WRITES: "nr_block_writes",
    C_READ_UNMAPPED: "nr_unmapped_reads",
    C_ENOSPC: "nr_enospc",
    C_SHADOWS: "nr_metadata_shadows",
    C_META_ALLOCS: "nr_metadata_allocs",
    C_OPS: "nr_requests",
    C_BYTES_WRITTEN: "bytes_written",
    C_BYTES_READ: "bytes_read",
    C_BYTES_DISCARD: "bytes_discarded",
    C_OVERWRITES: "nr_overwrites",
    C_COW_OVERWRITES: "nr_cow_overwrites",
    C_PASSDOWN: "nr_passdown",
    C_EIO: "nr_eio",
    C_FAILED_OPS: "nr_failed_requests",
}

def checksums_np(blocks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """:func:`block_checksum` of many blocks at once, in numpy (no JIT):
    ``blocks`` is ``uint64[n, 512]``, ``seeds`` the block numbers."""
    k = np.uint64(0xFF51AFD7ED558CCD)
    h = np.uint64(0x9E3779B97F4A7C15) ^ seeds.astype(np.uint64)
    with np.errstate(over="ignore"):
        for i in range(blocks.shape[1]):
            h = (h ^ blocks[:, i]) * k
            h ^= h >> np.uint64(29)
    h ^= h >> np.uint64(32)
    c = h & np.uint64(0xFFFFFFFF)
    c[c == 0] = 1
    return c


# --- events ---------------------------------------------------------------------
EV_CAPACITY = 4096
EV_LOW_WATER = 1  # free data blocks fell to the low water mark
EV_OUT_OF_DATA = 2  # a write needed a block and none was free
EV_META_LOW_WATER = 3  # free metadata blocks fell to the metadata low water mark
EV_OUT_OF_META = 4
EVENT_NAMES = {
    EV_LOW_WATER: "low_water_mark",
    EV_OUT_OF_DATA: "out_of_data_space",
    EV_META_LOW_WATER: "metadata_low_water_mark",
    EV_OUT_OF_META: "out_of_metadata_space",
}


class Space(NamedTuple):
    """The arrays of one refcounted block space (see the module docstring)."""

    meta: np.ndarray
    mrc: np.ndarray
    mbits: np.ndarray
    mnew: np.ndarray
    mpend: np.ndarray
    mdirty: np.ndarray
    drc: np.ndarray
    dbits: np.ndarray
    dpend: np.ndarray
    ddirty: np.ndarray
    dpass: np.ndarray
    scal: np.ndarray
    events: np.ndarray


def bitmap_words(nr_bits: int) -> int:
    return (nr_bits + 63) // 64


def make_bitmap(in_use: np.ndarray, nr_bits: int) -> np.ndarray:
    """Allocation bitmap from a bool array; bits past ``nr_bits`` are set."""
    nwords = bitmap_words(nr_bits)
    padded = np.ones(nwords * 64, dtype=bool)
    padded[:nr_bits] = in_use
    return np.packbits(padded.reshape(-1, 8), axis=1, bitorder="little").reshape(-1).view(np.uint64).copy()


# --- intrinsics -------------------------------------------------------------------
@intrinsic
def _cttz(typingctx, x):
    """Count trailing zeros of a uint64 (undefined for 0; callers never pass 0)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


# --- checksums ----------------------------------------------------------------------
@njit(refcount=False)
def words_checksum(words, seed):
    """A multiply-xorshift hash of a uint64 array folded to 32 bits, never 0.
    :func:`checksums_np` is the same hash in numpy, for opens that must not JIT."""
    h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(seed)
    k = np.uint64(0xFF51AFD7ED558CCD)
    for i in range(words.shape[0]):
        h = (h ^ words[i]) * k
        h ^= h >> np.uint64(29)
    h ^= h >> np.uint64(32)
    c = np.uint64(h & np.uint64(0xFFFFFFFF))
    if c == 0:
        c = np.uint64(1)
    return c


@njit(refcount=False)
def block_checksum(meta, b):
    """32-bit checksum of one metadata block: :func:`words_checksum` of its
    512 words, seeded with the block number so a block copied to the wrong
    place does not verify.  Never 0, so 0 can mean "no checksum yet"."""
    return words_checksum(meta[b], b)


def checksums_np(blocks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """:func:`block_checksum` of many blocks at once, in numpy (no JIT):
    ``blocks`` is ``uint64[n, 512]``, ``seeds`` the block numbers."""
    k = np.uint64(0xFF51AFD7ED558CCD)
    h = np.uint64(0x9E3779B97F4A7C15) ^ seeds.astype(np.uint64)
    with np.errstate(over="ignore"):
        for i in range(blocks.shape[1]):
            h = (h ^ blocks[:, i]) * k
            h ^= h >> np.uint64(29)
    h ^= h >> np.uint64(32)
    c = h & np.uint64(0xFFFFFFFF)
    c[c == 0] = 1
    return c


# --- events -----------------------------------------------------------------------
@njit(inline="always", refcount=False)
def _event(sp, op_index, kind, value):
    n = sp.scal[S_NEV]
    if n < sp.events.shape[0]:
        sp.events[n, 0] = op_index
        sp.events[n, 1] = kind
        sp.events[n, 2] = value
        sp.scal[S_NEV] = n + 1
    else:
        sp.scal[S_DROPPED_EVENTS] += 1


#: public name (thin's replay kernels log events too)
event = _event


# --- bitmaps and next-fit allocation -------------------------------------------------
@njit(inline="always", refcount=False)
def _bit_set(bits, b):
    bits[b >> 6] |= np.uint64(1) << np.uint64(b & 63)


@njit(inline="always", refcount=False)
def _bit_clear(bits, b):
    bits[b >> 6] &= ~(np.uint64(1) << np.uint64(b & 63))


@njit(inline="always", refcount=False)
def find_free(bits, cursor):
    """Next clear bit at or after ``cursor``, wrapping once; -1 if none."""
    nwords = bits.shape[0]
    if nwords == 0:
        return -1
    w = cursor >> 6
    if w >= nwords:
        w = 0
        cursor = 0
    below = (np.uint64(1) << np.uint64(cursor & 63)) - np.uint64(1)
    word = bits[w] | below
    for _ in range(nwords + 1):
        if word != ALL_ONES:
            return (w << 6) + np.int64(_cttz(~word))
        w += 1
        if w == nwords:
            w = 0
        word = bits[w]
    return -1


@njit(inline="always", refcount=False)
def alloc_data(sp):
    """Allocate one data block next-fit from the cursor, count 1.  Returns the
    block, or -1 when none is free, or -2 when the only free ones were freed
    in this transaction (a commit would make them usable)."""
    # Nothing allocatable: answer without scanning the bitmap (a full pool
    # took a whole-bitmap scan per failed write, ~10 us at 262k blocks).
    # Blocks freed this transaction stay at count 0 until the commit.
    if sp.scal[S_NR_DATA] - sp.scal[S_DUSED] - sp.scal[S_DNPEND] <= 0:
        return -2 if sp.scal[S_DNPEND] > 0 else -1
    b = find_free(sp.dbits, sp.scal[S_DCURSOR])
    if b < 0:
        return -2 if sp.scal[S_DNPEND] > 0 else -1
    _bit_set(sp.dbits, b)
    sp.drc[b] = 1
    sp.ddirty[b // SM_PAGE_ENTRIES] = 1
    sp.scal[S_DUSED] += 1
    nxt = b + 1
    if nxt >= sp.scal[S_NR_DATA]:
        nxt = 0
    sp.scal[S_DCURSOR] = nxt
    return b


@njit(inline="always", refcount=False)
def unalloc_data(sp, p):
    """Give back a block :func:`alloc_data` just returned, unused (nothing
    references it, so it is allocatable again at once)."""
    sp.drc[p] = 0
    sp.ddirty[p // SM_PAGE_ENTRIES] = 1
    _bit_clear(sp.dbits, p)
    sp.scal[S_DUSED] -= 1
    sp.scal[S_DCURSOR] = p  # next-fit finds it again first, as if never taken


@njit(inline="always", refcount=False)
def alloc_meta(sp, use_reserve):
    """Allocate one metadata block, zero-filled, count 1, marked new.
    -1 if none is free (outside the reserve unless ``use_reserve``), -2 if
    a commit would free some."""
    free = sp.scal[S_NR_META] - sp.scal[S_MUSED]
    if not use_reserve and free <= sp.scal[S_META_RESERVE]:
        return -2 if sp.scal[S_MNPEND] > 0 else -1
    return _alloc_meta_block(sp)


@njit(refcount=False)
def _alloc_meta_block(sp):
    """:func:`alloc_meta` past the reserve check.  Not inlined: it runs once
    per new node (its zero-fill dwarfs the call), and each inlined copy cost
    seconds of compile time in every kernel that writes a tree.  It takes no
    flag, so callers passing a constant do not compile a second copy."""
    b = find_free(sp.mbits, sp.scal[S_MCURSOR])
    if b < 0:
        return -2 if sp.scal[S_MNPEND] > 0 else -1
    _bit_set(sp.mbits, b)
    sp.mrc[b] = 1
    sp.mnew[b] = 1
    sp.mdirty[b // SM_PAGE_ENTRIES] = 1
    sp.scal[S_MUSED] += 1
    sp.scal[C_META_ALLOCS] += 1
    for i in range(NODE_ENTRIES):
        sp.meta[b, i] = 0
    nxt = b + 1
    if nxt >= sp.scal[S_NR_META]:
        nxt = 0
    sp.scal[S_MCURSOR] = nxt
    free = sp.scal[S_NR_META] - sp.scal[S_MUSED]
    if sp.scal[S_META_LWM_ARMED] and free <= sp.scal[S_META_LWM]:
        sp.scal[S_META_LWM_ARMED] = 0
        _event(sp, -1, EV_META_LOW_WATER, free)
    return b


# --- reference counts ----------------------------------------------------------------
@njit(inline="always", refcount=False)
def inc_data(sp, p):
    sp.drc[p] += 1
    sp.ddirty[p // SM_PAGE_ENTRIES] = 1


@njit(inline="always", refcount=False)
def dec_data(sp, p, passdown):
    """Drop one reference to data block ``p``; a block reaching 0 is free
    again after the next commit.  Returns True when it reached 0."""
    c = sp.drc[p] - 1
    sp.drc[p] = c
    sp.ddirty[p // SM_PAGE_ENTRIES] = 1
    if c == 0:
        sp.dpend[sp.scal[S_DNPEND]] = p
        sp.scal[S_DNPEND] += 1
        sp.scal[S_DUSED] -= 1
        sp.scal[C_FREED] += 1
        if passdown:
            sp.dpass[sp.scal[S_DNPASS]] = p
            sp.scal[S_DNPASS] += 1
            sp.scal[C_PASSDOWN] += 1
        if (not sp.scal[S_LWM_ARMED]) and (sp.scal[S_NR_DATA] - sp.scal[S_DUSED]) > sp.scal[S_LWM]:
            sp.scal[S_LWM_ARMED] = 1
        return True
    return False


@njit(inline="always", refcount=False)
def inc_meta(sp, b):
    sp.mrc[b] += 1
    sp.mdirty[b // SM_PAGE_ENTRIES] = 1


@njit(inline="always", refcount=False)
def _release_meta(sp, b):
    """mrc[b] reached 0: free after commit."""
    sp.mpend[sp.scal[S_MNPEND]] = b
    sp.scal[S_MNPEND] += 1
    sp.scal[S_MUSED] -= 1
    if (not sp.scal[S_META_LWM_ARMED]) and (sp.scal[S_NR_META] - sp.scal[S_MUSED]) > sp.scal[S_META_LWM]:
        sp.scal[S_META_LWM_ARMED] = 1


#: public name (thin's replay kernels release metadata blocks too)
release_meta = _release_meta


@njit(refcount=False)
def leaf_value_block(v):
    """Data block of a dm-thin leaf value ``(pblock + 1) << 24 | time``."""
    return np.int64(v >> np.uint64(24)) - 1


@njit
def dec_tree(sp, root, levels, passdown):
    """Drop one reference to the subtree at ``root`` (``levels`` deep, 1 = a
    leaf).  Nodes that reach 0 drop their children in turn; leaves drop their
    data blocks.  Iterative, with an explicit stack: depth <= 8."""
    stack_b = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    top = 0
    stack_b[0] = root
    stack_l[0] = levels
    top = 1
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        c = sp.mrc[b] - 1
        sp.mrc[b] = c
        sp.mdirty[b // SM_PAGE_ENTRIES] = 1
        if c != 0:
            continue
        _release_meta(sp, b)
        if lv == 1:
            for i in range(NODE_ENTRIES):
                v = sp.meta[b, i]
                if v != 0:
                    dec_data(sp, leaf_value_block(v), passdown)
        else:
            for i in range(NODE_ENTRIES):
                e = sp.meta[b, i]
                if e != 0:
                    stack_b[top] = np.int64(e & np.uint64(CHILD_MASK))
                    stack_l[top] = lv - 1
                    top += 1
    return 0


@njit(inline="always", refcount=False)
def shadow(sp, b, is_leaf):
    """Make block ``b`` writable in this transaction.  Returns ``b`` itself
    when it was already shadowed and is not shared, else a new copy (the
    caller re-points the parent), or -1/-2 as :func:`alloc_meta` when no
    metadata block is free.  A copy of a shared node takes a reference on
    each of its children, as dm_tm_shadow_block does."""
    if sp.mnew[b] and sp.mrc[b] == 1:
        return b
    return _shadow_copy(sp, b, is_leaf)


@njit(refcount=False)
def _shadow_copy(sp, b, is_leaf):
    """:func:`shadow` of a block not yet writable: copy it.  Not inlined (it
    runs once per node per transaction and copies a whole node), which
    keeps the tree-writing kernels' compile time down."""
    n = alloc_meta(sp, False)
    if n < 0:
        return n
    sp.scal[C_SHADOWS] += 1
    for i in range(NODE_ENTRIES):
        sp.meta[n, i] = sp.meta[b, i]
    if sp.mrc[b] > 1:
        if is_leaf:
            for i in range(NODE_ENTRIES):
                v = sp.meta[b, i]
                if v != 0:
                    inc_data(sp, leaf_value_block(v))
        else:
            for i in range(NODE_ENTRIES):
                e = sp.meta[b, i]
                if e != 0:
                    inc_meta(sp, np.int64(e & np.uint64(CHILD_MASK)))
        sp.mrc[b] -= 1
        sp.mdirty[b // SM_PAGE_ENTRIES] = 1
    else:
        # the only reference moves to the copy; the old block is freed after commit
        sp.mrc[b] = 0
        sp.mdirty[b // SM_PAGE_ENTRIES] = 1
        _release_meta(sp, b)
    return n


@njit(inline="always", refcount=False)
def lookup(meta, root, levels, key):
    """Leaf value for ``key`` in the tree at ``root`` (0 if absent)."""
    if root == 0:
        return np.uint64(0)
    node = root
    for lv in range(levels - 1, 0, -1):
        e = meta[node, (key >> (NODE_SHIFT * lv)) & NODE_MASK]
        if e == 0:
            return np.uint64(0)
        node = np.int64(e & np.uint64(CHILD_MASK))
    return meta[node, key & NODE_MASK]


@njit(inline="always", refcount=False)
def leaf_for_write(sp, roots, slot, levels, key):
    """Shadow the path to ``key``'s leaf in the tree whose root is
    ``roots[slot]``, creating missing nodes, and return the leaf block
    (writable in place), or -1/-2 when metadata ran out.

    One loop with one call each of ``alloc_meta`` and ``shadow`` (the root
    is the first step, its parent entry ``roots[slot]``): this function is
    inlined into every caller, and each extra call site of those two
    multiplied the compile time of ``replay``."""
    lv = levels
    parent = np.int64(-1)
    idx = np.int64(0)
    while True:
        if parent < 0:
            empty = roots[slot] == 0
            e = np.int64(roots[slot])
        else:
            raw = sp.meta[parent, idx]
            empty = raw == 0
            e = np.int64(raw & np.uint64(CHILD_MASK))
        if empty:
            node = alloc_meta(sp, False)
        else:
            node = shadow(sp, e, lv == 1)
        if node < 0:
            return node
        if parent < 0:
            roots[slot] = node
        else:
            sp.meta[parent, idx] = np.uint64(node)
        if lv <= 1:
            return node
        lv -= 1
        idx = (key >> (NODE_SHIFT * lv)) & NODE_MASK
        parent = node


@njit
def seal_tree(sp, root, levels):
    """Checksum every node of this transaction under ``root`` bottom-up,
    storing each child's checksum in its parent entry.  Returns the root's
    checksum (the caller stores it with the root).  Committed nodes are not
    visited: their checksums are already in their parents."""
    if root == 0:
        return np.uint64(0)
    if not sp.mnew[root]:
        return block_checksum(sp.meta, root)
    # explicit DFS; a node is sealed after its children (post-order)
    stack_b = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_i = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    top = 1
    stack_b[0] = root
    stack_l[0] = levels
    stack_i[0] = 0
    while top > 0:
        b = stack_b[top - 1]
        lv = stack_l[top - 1]
        if lv == 1:
            top -= 1
            continue
        i = stack_i[top - 1]
        pushed = False
        while i < NODE_ENTRIES:
            e = sp.meta[b, i]
            i += 1
            if e != 0:
                child = np.int64(e & np.uint64(CHILD_MASK))
                if sp.mnew[child] and lv - 1 > 1:
                    stack_i[top - 1] = i
                    stack_b[top] = child
                    stack_l[top] = lv - 1
                    stack_i[top] = 0
                    top += 1
                    pushed = True
                    break
                if sp.mnew[child]:
                    crc = block_checksum(sp.meta, child)
                    sp.meta[b, i - 1] = (crc << np.uint64(32)) | np.uint64(child)
        if pushed:
            continue
        # all children of b are sealed: seal b's own entry in its parent
        top -= 1
        if top > 0:
            parent = stack_b[top - 1]
            pi = stack_i[top - 1] - 1
            crc = block_checksum(sp.meta, b)
            sp.meta[parent, pi] = (crc << np.uint64(32)) | np.uint64(b)
    return block_checksum(sp.meta, root)


@njit(refcount=False)
def release_pending(sp):
    """After a commit: blocks freed in the transaction become allocatable."""
    for k in range(sp.scal[S_DNPEND]):
        p = sp.dpend[k]
        if sp.drc[p] == 0:
            _bit_clear(sp.dbits, p)
    sp.scal[S_DNPEND] = 0
    for k in range(sp.scal[S_MNPEND]):
        b = sp.mpend[k]
        if sp.mrc[b] == 0:
            _bit_clear(sp.mbits, b)
    sp.scal[S_MNPEND] = 0


@njit
def walk_tree(meta, root, levels, nr_meta, visited, mrc_count, drc_count, nr_data, max_time, err):
    """Validate and count one tree for open/check.

    Visits each node once (``visited``), checking every child's checksum
    against its parent entry and every pointer and leaf value against the
    bounds.  Adds one reference per edge to ``mrc_count`` and one per leaf
    entry of a first-visited leaf to ``drc_count``.  On the first problem,
    fills ``err`` = (code, block, entry, value) and returns the code:
    1 bad child pointer, 2 checksum mismatch, 3 data block out of range,
    4 time in the future, 5 tree deeper than allowed, 6 node reached at two
    different depths.  Returns the number of leaf entries seen (>= 0) or the
    negated code."""
    stack_b = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    if levels < 1 or levels > 7:
        err[0] = 5
        err[1] = root
        return -5
    mrc_count[root] += 1
    if visited[root] != 0:
        if visited[root] != levels:
            err[0] = 6
            err[1] = root
            return -6
        return 0
    visited[root] = levels
    stack_b[0] = root
    stack_l[0] = levels
    top = 1
    nentries = 0
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        if lv == 1:
            for i in range(NODE_ENTRIES):
                v = meta[b, i]
                if v != 0:
                    p = leaf_value_block(v)
                    if p < 0 or p >= nr_data:
                        err[0] = 3
                        err[1] = b
                        err[2] = i
                        err[3] = p
                        return -3
                    t = np.int64(v & np.uint64(0xFFFFFF))
                    if t > max_time:
                        err[0] = 4
                        err[1] = b
                        err[2] = i
                        err[3] = t
                        return -4
                    drc_count[p] += 1
                    nentries += 1
            continue
        for i in range(NODE_ENTRIES):
            e = meta[b, i]
            if e == 0:
                continue
            child = np.int64(e & np.uint64(CHILD_MASK))
            if child < 2 or child >= nr_meta:
                err[0] = 1
                err[1] = b
                err[2] = i
                err[3] = child
                return -1
            mrc_count[child] += 1
            if visited[child] != 0:
                if visited[child] != lv - 1:
                    err[0] = 6
                    err[1] = child
                    return -6
                continue
            crc = np.uint64(e >> np.uint64(32))
            if crc != block_checksum(meta, child):
                err[0] = 2
                err[1] = child
                err[2] = b
                err[3] = i
                return -2
            visited[child] = lv - 1
            stack_b[top] = child
            stack_l[top] = lv - 1
            top += 1
    return nentries

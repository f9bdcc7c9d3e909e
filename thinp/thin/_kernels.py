"""dm-thin's block rules as numba kernels over a :class:`~thinp.pdata.radix.Space`.

Private: the Python layer (:mod:`thinp.thin.pool`) validates every argument
(device slots, offsets inside the device, op codes) before calling in.

Device table (arrays of a :class:`Devices`, indexed by slot)
-------------------------------------------------------------
dev_id       int64   the 24-bit thin id, -1 for a free slot
root         int64   metadata block of the mapping tree root, 0 = empty
levels       int64   tree depth, 1 = the root is a leaf; fixed by nr_blocks
nr_blocks    int64   virtual size in data blocks
mapped       int64   mapped blocks (dm's mapped_blocks)
create_time  int64   pool time when the device was created
snap_time    int64   pool time of its last snapshot (dm's snapshotted_time)
txn          int64   transaction id when the device last changed
root_crc     uint64  checksum of the root node, set at commit
changed      uint8   1 = the record changed in this transaction
size_sectors int64   virtual size in 512-byte sectors (nr_blocks rounds it up)

A leaf value is ``(pblock + 1) << 24 | time`` (dm's block_time with the block
offset by one so that 0 means unmapped).  A block is shared when
``snap_time[slot] > time``: dm-thin's test.  It is imprecise on purpose:
after one side breaks sharing, the other side still sees an old time and
copies once more even though its block is now exclusive.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import njit
from ..pdata import mapping_tree as MT
from ..pdata.intrinsics import prefetch
from ..pdata.radix import (
    C_BYTES_COPIED,
    C_BYTES_DISCARD,
    C_BYTES_READ,
    C_BYTES_WRITTEN,
    C_COW,
    C_COW_OVERWRITES,
    C_DISCARDED,
    C_EIO,
    C_ENOSPC,
    C_FAILED_OPS,
    C_OPS,
    C_OVERWRITES,
    C_PROVISIONED,
    C_READ_UNMAPPED,
    C_READS,
    C_WRITES,
    C_ZEROED,
    CHILD_MASK,
    EV_LOW_WATER,
    EV_OUT_OF_DATA,
    EV_OUT_OF_META,
    NODE_ENTRIES,
    NODE_MASK,
    NODE_SHIFT,
    S_BLOCK_SIZE,
    S_COMMIT_INTERVAL,
    S_DUSED,
    S_ERROR_IF_NO_SPACE,
    S_LWM,
    S_LWM_ARMED,
    S_NR_DATA,
    S_OPS_SINCE_COMMIT,
    S_PASSDOWN,
    S_PAYLOAD,
    S_TIME,
    S_ZERO,
    SM_PAGE_ENTRIES,  # frozen into the kernels below: 2040 uint16 counts a page since metadata v2
    event as _event,
    release_meta as _release_meta,
    alloc_data,
    dec_data,
    leaf_for_write,
    leaf_value_block,
    lookup,
    unalloc_data,
)

READ = 0
WRITE = 1
DISCARD = 2

# replay status codes
R_DONE = 0
R_NEED_COMMIT = 1  # commit interval reached, or only just-freed blocks are free
R_NO_DATA = 2  # out of data space in queue mode: the rest waits
R_NO_META = 3  # out of metadata space: the transaction must be aborted
R_FLUSH = 4  # the mapping-change log is full: apply it to the dm btree, then resume

# scal slot (beyond the pdata ones) for the out-of-data-space flag
S_OODS = 24
S_IGNORE_DISCARD = 25
#: 1 = dm-thin's read-only I/O rules (PM_OUT_OF_METADATA_SPACE): no mapping
#: may change, so a write block needing a new one fails with EIO, discards
#: succeed and unmap nothing; reads and writes into provisioned, unshared
#: blocks run as usual
S_READ_ONLY = 26

# bits of the ``failed`` array the replay kernel fills, one byte a request
FAILED_ENOSPC = 1  # a block of the request failed for want of data space
FAILED_EIO = 2  # a block of the request needed a mapping change in read-only mode


class Devices(NamedTuple):
    dev_id: np.ndarray
    root: np.ndarray
    levels: np.ndarray
    nr_blocks: np.ndarray
    mapped: np.ndarray
    create_time: np.ndarray
    snap_time: np.ndarray
    txn: np.ndarray
    root_crc: np.ndarray
    changed: np.ndarray
    size_sectors: np.ndarray


def make_devices(capacity: int) -> Devices:
    i64 = lambda: np.zeros(capacity, dtype=np.int64)  # noqa: E731
    dv = Devices(i64(), i64(), i64(), i64(), i64(), i64(), i64(), i64(),
                 np.zeros(capacity, dtype=np.uint64), np.zeros(capacity, dtype=np.uint8), i64())
    dv.dev_id[:] = -1
    return dv


#: requests ahead whose leaf entry the replay kernel prefetches: random
#: overwrites of a large thin miss the cache once each, and a miss that
#: starts this far ahead has landed by the time its request runs
PREFETCH_AHEAD = 16


def levels_for(nr_blocks: int) -> int:
    """Radix depth for a device of ``nr_blocks`` virtual blocks."""
    levels = 1
    span = NODE_ENTRIES
    while span < nr_blocks:
        span <<= NODE_SHIFT
        levels += 1
    return levels


@njit(inline="always", refcount=False)
def _mkvalue(p, t):
    return (np.uint64(p + 1) << np.uint64(24)) | np.uint64(t & 0xFFFFFF)


@njit(inline="always", refcount=False)
def _alloc_block(sp, op_index):
    p = alloc_data(sp)
    if p >= 0:
        free = sp.scal[S_NR_DATA] - sp.scal[S_DUSED]
        if sp.scal[S_LWM_ARMED] and free <= sp.scal[S_LWM]:
            sp.scal[S_LWM_ARMED] = 0
            _event(sp, op_index, EV_LOW_WATER, free)
    return p


@njit(refcount=False)
def _copy_block(data, src_p, dst_p, bs):
    s = src_p * bs
    d = dst_p * bs
    for k in range(bs):
        data[d + k] = data[s + k]


@njit(refcount=False)
def _zero_block(data, p, bs):
    d = p * bs
    for k in range(bs):
        data[d + k] = 0


@njit(refcount=False)
def _put_bytes(data, p, bs, in_block, src, src_pos, n):
    d = p * bs + in_block
    for k in range(n):
        data[d + k] = src[src_pos + k]


#: an unmap's log value is ``-1 - (pblock << UNMAP_BLOCK_SHIFT | flags)``:
#: the data block it held, whether dm counts it shared (the device's last
#: snapshot is newer than the block) and whether the pool passes discards
#: down, from which dm-thin's discard cuts its dm_thin_remove_range calls.
#: With UNMAP_EMPTY the row is a piece of a discard without passdown that
#: held no mapping (dm still calls dm_thin_remove_range on it), and the
#: block field is the piece's length in blocks from the row's vblock.
UNMAP_SHARED = 1
UNMAP_PASSDOWN = 2
#: a row's op index (column 3) carries this bit when the row maps a vblock
#: that was unmapped (a provision: a new key in dm's btree, not a
#: replacement), which _mirror.apply_log may then defer within its leaf;
#: LOG_OP masks the op index out
LOG_NEW_KEY = 1 << 62
LOG_OP = LOG_NEW_KEY - 1
UNMAP_EMPTY = 4
UNMAP_BLOCK_SHIFT = 3
#: dm-thin's bio prison range (BIO_PRISON_MAX_RANGE, Linux 6.5 and later):
#: a discard is cut at multiples of it, virtual blocks without passdown,
#: data blocks with
PRISON_RANGE_SHIFT = 10


@njit(inline="always", refcount=False)
def _log(log, out, dev, vb, value, op_index):
    """Record one mapping change for the dm btree: ``value`` is dm's
    ``pblock << 24 | time``, or negative for an unmap (UNMAP_*);
    ``op_index`` carries LOG_NEW_KEY on a provision's row.  ``out[3]``
    counts rows."""
    k = out[3]
    log[k, 0] = dev
    log[k, 1] = vb
    log[k, 2] = value
    log[k, 3] = op_index
    out[3] = k + 1


@njit(inline="always", refcount=False)
def _stop(out, status, i, vb):
    """End a replay run with ``status`` before block ``vb`` of request ``i``."""
    out[0] = status
    out[1] = i
    out[2] = vb
    return status


@njit(inline="always", refcount=False)
def _fail_block(sp, failed, i, bit):
    """Count request ``i`` as failed once (``failed`` holds one byte a request)."""
    if failed[i] == 0:
        sp.scal[C_FAILED_OPS] += 1
    failed[i] |= bit


@njit(inline="always", refcount=False)
def _write_block(sp, dv, slot, vb, in_block, n, op_index, data, src, src_pos, log, out, read_only, leaf):
    """One per-block write.  Returns (0, or -1 no data space, -2 only
    just-freed data space, -3 no metadata space, -4 a mapping change
    refused in read-only mode (EIO), -5 a mapping change with the log full
    (nothing done); the leaf it wrote, -1 if none).

    ``leaf``, unless -1, is ``vb``'s index leaf, writable in this
    transaction: a block in the leaf the last mapping change wrote is
    looked up and changed there, with no walk from the root (see
    :func:`replay`)."""
    bs = sp.scal[S_BLOCK_SIZE]
    full = in_block == 0 and n == bs
    payload = sp.scal[S_PAYLOAD] != 0 and data.shape[0] > 0
    if leaf >= 0:
        v = sp.meta[leaf, vb & NODE_MASK]
    else:
        v = lookup(sp.meta, dv.root[slot], dv.levels[slot], vb)
    shared = False
    p = np.int64(-1)
    if v != 0:
        p = leaf_value_block(v)
        t = np.int64(v & np.uint64(0xFFFFFF))
        if dv.snap_time[slot] <= t:
            # mapped and not shared: plain data I/O, no metadata change
            if payload and src.shape[0] > 0:
                _put_bytes(data, p, bs, in_block, src, src_pos, n)
            return 0, np.int64(-1)
        shared = True
    if read_only:
        return -4, np.int64(-1)
    if sp.scal[S_OODS] != 0:
        # dm's PM_OUT_OF_DATA_SPACE: process_bio_read_only tries no
        # allocation (not even blocks freed since the last commit, which
        # only its commit's check_for_data_space brings back); the bio
        # waits, or fails under error_if_no_space
        return -1, np.int64(-1)
    if out[3] >= log.shape[0]:
        return -5, np.int64(-1)
    # shared: break sharing (copy-on-write); unmapped: provision.  The data
    # block first, so a full pool fails the write without touching the tree.
    # One call site per helper: each inlined copy costs compile time.
    p2 = _alloc_block(sp, op_index)
    if p2 < 0:
        return p2, np.int64(-1)
    if leaf < 0:
        leaf = leaf_for_write(sp, dv.root, slot, dv.levels[slot], vb)
        if leaf < 0:
            unalloc_data(sp, p2)
            return (-2 if leaf == -2 else -3), np.int64(-1)
    if shared:
        if full:
            sp.scal[C_COW_OVERWRITES] += 1
        else:
            sp.scal[C_COW] += 1
            sp.scal[C_BYTES_COPIED] += bs
            if payload:
                _copy_block(data, p, p2, bs)
    elif full:
        sp.scal[C_OVERWRITES] += 1
    elif sp.scal[S_ZERO]:
        sp.scal[C_ZEROED] += 1
        if payload:
            _zero_block(data, p2, bs)
    sp.meta[leaf, vb & NODE_MASK] = _mkvalue(p2, sp.scal[S_TIME])
    _log(log, out, dv.dev_id[slot], vb, (p2 << 24) | (sp.scal[S_TIME] & 0xFFFFFF),
         op_index if shared else op_index | LOG_NEW_KEY)
    if shared:
        dec_data(sp, p, False)
    else:
        sp.scal[C_PROVISIONED] += 1
        dv.mapped[slot] += 1
    dv.changed[slot] = 1
    if payload and src.shape[0] > 0:
        _put_bytes(data, p2, bs, in_block, src, src_pos, n)
    return 0, leaf


@njit(refcount=False)
def _node_at(meta, root, vb, levels, lv):
    """The node at level ``lv`` (0 = leaf) on ``vb``'s path."""
    node = root
    for k in range(levels - 1, lv, -1):
        node = np.int64(meta[node, (vb >> (NODE_SHIFT * k)) & NODE_MASK] & np.uint64(CHILD_MASK))
    return node


@njit(refcount=False)
def _prune(sp, dv, slot, vb):
    """After unmapping ``vb``: free nodes on its path that became empty,
    bottom-up (the path is already shadowed, so nodes are private)."""
    levels = dv.levels[slot]
    root = dv.root[slot]
    for lv in range(0, levels):
        b = _node_at(sp.meta, root, vb, levels, lv)
        for i in range(NODE_ENTRIES):
            if sp.meta[b, i] != 0:
                return
        # empty: drop it and clear its entry in the parent
        sp.mrc[b] = 0
        sp.mdirty[b // SM_PAGE_ENTRIES] = 1
        _release_meta(sp, b)
        if lv == levels - 1:
            dv.root[slot] = 0
        else:
            parent = _node_at(sp.meta, root, vb, levels, lv + 1)
            sp.meta[parent, (vb >> (NODE_SHIFT * (lv + 1))) & NODE_MASK] = 0


@njit(refcount=False)
def _discard_block(sp, dv, slot, vb, op_index, log, out):
    """Unmap one whole block.  Returns 0, -3 (no metadata space) or -5
    (mapped, and the log is full: nothing done)."""
    v = lookup(sp.meta, dv.root[slot], dv.levels[slot], vb)
    if v == 0:
        return 0
    if out[3] >= log.shape[0]:
        return -5
    leaf = leaf_for_write(sp, dv.root, slot, dv.levels[slot], vb)
    if leaf < 0:
        return -2 if leaf == -2 else -3
    sp.meta[leaf, vb & NODE_MASK] = 0
    p = leaf_value_block(v)
    passdown = sp.scal[S_PASSDOWN] != 0
    shared = dv.snap_time[slot] > np.int64(v & np.uint64(0xFFFFFF))
    # the unmap's row: what dm-thin's discard needs to cut its ranges (the
    # data block, dm's shared test, passdown), see UNMAP_* and _mirror
    _log(log, out, dv.dev_id[slot], vb, -1 - ((p << UNMAP_BLOCK_SHIFT) | (UNMAP_SHARED if shared else 0)
                                              | (UNMAP_PASSDOWN if passdown else 0)), op_index)
    dec_data(sp, p, passdown)
    dv.mapped[slot] -= 1
    dv.changed[slot] = 1
    sp.scal[C_DISCARDED] += 1
    _prune(sp, dv, slot, vb)
    return 0


@njit(inline="always", refcount=False)
def _prefetch_leaf(meta, dv, slot, vb):
    """Start fetching the leaf entry of ``vb`` (the internal nodes above it
    are few and stay cached; an unmapped path prefetches nothing)."""
    node = dv.root[slot]
    if node == 0:
        return
    for lv in range(dv.levels[slot] - 1, 0, -1):
        e = meta[node, (vb >> (NODE_SHIFT * lv)) & NODE_MASK]
        if e == 0:
            return
        node = np.int64(e & np.uint64(CHILD_MASK))
    prefetch(meta, node * NODE_ENTRIES + (vb & NODE_MASK))


@njit(refcount=False)
def replay(sp, dv, slots, ops, offsets, lengths, start_op, start_vb, data, src, src_base, out, log, failed):
    """Run requests ``start_op..`` of a trace (``slots`` are device slots the
    caller resolved and checked).  Splits each request per data block as
    dm-thin splits bios.  ``out`` receives (status, op index, vblock to resume
    at, rows used in ``log``).  ``src`` holds the bytes of a single write
    (empty otherwise), with ``src_base`` the device offset of its first byte.

    ``slots`` of one entry, for a trace of more, names every request's slot.

    Every mapping change (provision, break of sharing, unmap) is appended to
    ``log`` (int64[cap, 4]: dev_id, vblock, dm value or an UNMAP_* value, op index) in
    request order; a full log stops the run with R_FLUSH right before the
    block whose change did not fit, so the caller can apply the log to the
    dm btree and resume there (a log of capacity 0 stops before the first
    block needing a change).

    A block that fails is counted (``nr_enospc`` or ``nr_eio``) and the
    request goes on with its next block, as each block of a request is its
    own bio in dm-thin; ``failed`` (uint8, one a request) gets the
    request's FAILED_* bits, and ``nr_failed_requests`` counts each failed
    request once.  With ``S_READ_ONLY`` set, a write block needing a new
    mapping fails with EIO and discards change nothing."""
    bs = sp.scal[S_BLOCK_SIZE]
    # a power-of-two block size (the usual case) divides by a shift: a
    # 64-bit division costs more than the rest of an overwrite's arithmetic
    shift = -1
    if bs & (bs - 1) == 0:
        shift = 0
        while (np.int64(1) << shift) < bs:
            shift += 1
    n = ops.shape[0]
    # (0: every request is on slots[0])
    slot_step = 1 if slots.shape[0] > 1 else 0
    error_mode = sp.scal[S_ERROR_IF_NO_SPACE] != 0
    read_only = sp.scal[S_READ_ONLY] != 0
    interval = sp.scal[S_COMMIT_INTERVAL]
    resume_vb = start_vb
    # the leaf the last mapping change wrote: its device slot (-1 none),
    # key (vblock >> NODE_SHIFT) and index node.  Its path stays this
    # transaction's and unshared until the kernel returns (no commit or
    # snapshot runs inside it) unless a discard prunes nodes, and a
    # discard forgets it; so the next blocks of a sequential run are
    # looked up and mapped there, with no walk from the root
    w_slot = np.int64(-1)
    w_key = np.int64(-1)
    w_leaf = np.int64(-1)
    for i in range(start_op, n):
        if interval > 0 and sp.scal[S_OPS_SINCE_COMMIT] >= interval and resume_vb < 0:
            return _stop(out, R_NEED_COMMIT, i, -1)
        ahead = i + PREFETCH_AHEAD
        if ahead < n and ops[ahead] != DISCARD:
            a_off = np.int64(offsets[ahead])
            a_vb = (a_off >> shift) if shift >= 0 else a_off // bs
            a_slot = slots[ahead * slot_step]
            if a_slot != w_slot or a_vb >> NODE_SHIFT != w_key:
                # (in the last written leaf it is cached already: a
                # sequential run walks from the root once a leaf)
                _prefetch_leaf(sp.meta, dv, a_slot, a_vb)
        slot = slots[i * slot_step]
        op = np.int64(ops[i])
        off = np.int64(offsets[i])
        ln = np.int64(lengths[i])
        if ln <= 0:
            resume_vb = -1
            continue
        if shift >= 0:
            b0 = off >> shift
            b1 = (off + ln - 1) >> shift
        else:
            b0 = off // bs
            b1 = (off + ln - 1) // bs
        resuming = resume_vb >= 0
        if resuming:
            b0 = resume_vb
        else:
            sp.scal[C_OPS] += 1
            sp.scal[S_OPS_SINCE_COMMIT] += 1
            if op == WRITE:
                sp.scal[C_BYTES_WRITTEN] += ln
            elif op == READ:
                sp.scal[C_BYTES_READ] += ln
            else:
                sp.scal[C_BYTES_DISCARD] += ln
        resume_vb = -1
        if op == WRITE:
            for vb in range(b0, b1 + 1):
                lo = max(off, vb * bs)
                hi = min(off + ln, (vb + 1) * bs)
                leaf = np.int64(-1)
                if slot == w_slot and vb >> NODE_SHIFT == w_key:
                    leaf = w_leaf
                r, wrote = _write_block(sp, dv, slot, vb, lo - vb * bs, hi - lo, i, data, src, lo - src_base, log,
                                        out, read_only, leaf)
                if wrote >= 0:
                    w_slot, w_key, w_leaf = slot, vb >> NODE_SHIFT, wrote
                if r == 0:
                    sp.scal[C_WRITES] += 1
                    continue
                if r == -4:
                    sp.scal[C_EIO] += 1
                    _fail_block(sp, failed, i, FAILED_EIO)
                    continue
                if r == -5:
                    return _stop(out, R_FLUSH, i, vb)
                if r == -2:
                    return _stop(out, R_NEED_COMMIT, i, vb)
                if r == -3:
                    _event(sp, i, EV_OUT_OF_META, vb)
                    return _stop(out, R_NO_META, i, vb)
                # no data space
                if sp.scal[S_OODS] == 0:
                    sp.scal[S_OODS] = 1
                    _event(sp, i, EV_OUT_OF_DATA, vb)
                if error_mode:
                    sp.scal[C_ENOSPC] += 1
                    _fail_block(sp, failed, i, FAILED_ENOSPC)
                    continue
                return _stop(out, R_NO_DATA, i, vb)
        elif op == READ:
            root = dv.root[slot]
            levels = dv.levels[slot]
            for vb in range(b0, b1 + 1):
                sp.scal[C_READS] += 1
                if lookup(sp.meta, root, levels, vb) == 0:
                    sp.scal[C_READ_UNMAPPED] += 1
        else:
            # discard: whole blocks inside the range only
            w_slot = -1  # (it may prune the last written leaf)
            first = (off + bs - 1) // bs
            if resuming and b0 > first:
                first = b0
            end = (off + ln) // bs
            if sp.scal[S_IGNORE_DISCARD] or read_only:
                # read-only: dm's process_bio_success, done and nothing unmapped
                end = first
            if out[3] > 0 and 0 < log.shape[0] - out[3] < min(end - first, log.shape[0]):
                # a discard's unmaps go to the dm btree together, as the
                # range removals dm-thin cuts them into: start it in an
                # empty log unless it fits (a full log stops it at its
                # first mapped block anyway, as the near-reserve runs'
                # one-row logs do)
                return _stop(out, R_FLUSH, i, first)
            # dm-thin cuts the discard into bios at 1,024-block virtual
            # boundaries; without passdown each one is a
            # dm_thin_remove_range of its whole range, mapped or not: a
            # piece that unmapped nothing gets an UNMAP_EMPTY row (the
            # mirror joins the pieces again for kernels before 6.5)
            empty_rows = sp.scal[S_PASSDOWN] == 0
            lo = first
            while lo < end:
                hi = min(end, ((lo >> PRISON_RANGE_SHIFT) + 1) << PRISON_RANGE_SHIFT)
                rows = out[3]
                for vb in range(lo, hi):
                    r = _discard_block(sp, dv, slot, vb, i, log, out)
                    if r == -5:
                        return _stop(out, R_FLUSH, i, vb)
                    if r == -2:
                        return _stop(out, R_NEED_COMMIT, i, vb)
                    if r != 0:
                        _event(sp, i, EV_OUT_OF_META, vb)
                        return _stop(out, R_NO_META, i, vb)
                if empty_rows and out[3] == rows:
                    if out[3] >= log.shape[0]:
                        return _stop(out, R_FLUSH, i, lo)
                    _log(log, out, dv.dev_id[slot], lo, -1 - (((hi - lo) << UNMAP_BLOCK_SHIFT) | UNMAP_EMPTY), i)
                    dv.changed[slot] = 1  # (__remove_range: td->changed)
                lo = hi
    return _stop(out, R_DONE, n, -1)


@njit(inline="always", refcount=False)
def _map_entry(sp, dv, slot, leaf, vb, p, t):
    """Map ``vb`` to data block ``p`` stamped ``t`` in index leaf ``leaf``."""
    if sp.meta[leaf, vb & NODE_MASK] == 0:
        dv.mapped[slot] += 1
    sp.meta[leaf, vb & NODE_MASK] = _mkvalue(p, t)


@njit(refcount=False)
def _load_entry(sp, dv, slot, leaf, vb, p, t):
    """Map ``vb`` to data block ``p`` stamped ``t`` in index leaf ``leaf``
    and take a reference on ``p``: one mapping of a rebuild."""
    _map_entry(sp, dv, slot, leaf, vb, p, t)
    if sp.drc[p] == 0:
        sp.scal[S_DUSED] += 1
        sp.dbits[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
    sp.drc[p] += 1


@njit(refcount=False)
def load_mappings(sp, dv, slot, vblocks, pblocks, times):
    """Rebuild one device's index tree from its dm leaves: map each vblock,
    take a reference on its data block.  Returns 0, or -3 when the index
    has no node left."""
    for k in range(vblocks.shape[0]):
        vb = vblocks[k]
        p = pblocks[k]
        leaf = leaf_for_write(sp, dv.root, slot, dv.levels[slot], vb)
        if leaf < 0:
            return -3
        _load_entry(sp, dv, slot, leaf, vb, p, times[k])
    return 0


# load_tree status codes (a walk's own are < 0, MT.WALK_*)
L_OK = 0
L_RANGE = 1     # an entry past the device's size or the data device: w.bad = (vblock, value)
L_NO_INDEX = 2  # the index has no node left


@njit(refcount=False)
def load_tree(sp, dv, slot, w, root, data_refs, nr_shared):
    """Map every entry of the dm subtree at ``root`` into device ``slot``'s
    index tree, reading dm's leaves in place with the walk ``w`` (no copy
    of the mappings is made).

    ``w`` (:func:`thinp.pdata.mapping_tree.new_walk`) walks each device's
    whole tree (W_REVISIT).  When it keeps ``seen`` and ``under`` and has
    W_VERIFY, the fill is also thin_check's walk of the subtrees: each node
    is checked when first reached.  Data references: the entries of a fresh
    leaf are tallied in ``data_refs`` (uint32, one per leaf mapping the
    block: dm's count, which the check compares with the data space map);
    the entries of a leaf read again (shared with a device loaded before)
    count straight in ``sp.drc`` and in ``nr_shared[0]``.  The caller then
    adds the tallies in (or, with nothing shared, takes ``data_refs`` as
    the index's counts) and calls :func:`settle_data_bits`: the index
    counts every device's mappings.  Without ``seen`` every leaf is fresh,
    and ``data_refs`` may be ``sp.drc`` itself.  Returns
    L_OK, L_RANGE, L_NO_INDEX or the walk's code (< 0, ``w.bad[0]`` the
    block)."""
    if root <= 0:
        return L_OK
    nr_blocks = dv.nr_blocks[slot]
    nr_data = data_refs.shape[0]
    m64 = w.m64
    m32 = w.m32
    drc = sp.drc
    r = MT.start(w, root)
    if r < 0:
        return r
    # dm's leaves come in key order, so runs of entries share one index
    # leaf: find it (shadowing it into this transaction) once a run
    leaf_key = np.int64(-1)
    leaf = np.int64(-1)
    while True:
        b = MT.next_leaf(w)
        if b <= 0:
            return b
        fresh = MT.leaf_fresh(w)
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        for i in range(nr):
            vb = np.int64(m64[b, 4 + i])
            v = m64[b, 4 + mx + i]
            p = np.int64(v >> np.uint64(24))
            if vb < 0 or vb >= nr_blocks or p >= nr_data:
                w.bad[0] = vb
                w.bad[1] = np.int64(v)
                return L_RANGE
            if vb >> NODE_SHIFT != leaf_key:
                leaf = leaf_for_write(sp, dv.root, slot, dv.levels[slot], vb)
                if leaf < 0:
                    return L_NO_INDEX
                leaf_key = vb >> NODE_SHIFT
            _map_entry(sp, dv, slot, leaf, vb, p, np.int64(v & np.uint64(0xFFFFFF)))
            if fresh:
                data_refs[p] += 1
            else:
                drc[p] += 1
                nr_shared[0] += 1


@njit(refcount=False)
def settle_data_bits(sp):
    """After :func:`load_tree`: the data space's used count and allocation
    bits from its reference counts."""
    drc = sp.drc
    dbits = sp.dbits
    used = np.int64(0)
    for p in range(drc.shape[0]):
        if drc[p] != 0:
            used += 1
            dbits[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
    sp.scal[S_DUSED] = used


# prepare_trace error codes
T_OK = 0
T_BAD_OP = 1
T_NO_DEVICE = 2
T_PAST_END = 3
#: not an error: the trace reaches a second device at row ``err[1]``
#: (``slots_out`` was empty: the caller makes one and goes on from there)
T_MANY = 4


@njit(refcount=False)
def prepare_trace(dev_ids, ops, offsets, lengths, lut_ids, lut_slots, slot_size, start, slots_out, err):
    """Check requests ``start..`` of an untrusted trace and resolve their
    device slots.  ``lut_ids`` is sorted; ``slot_size`` is each slot's size
    in bytes.  On the first bad row, ``err`` = (code, row) and the function
    returns the code.

    With an empty ``slots_out`` (the first call, ``start`` 0) no slot is
    written: the trace is taken to be on one device, and the first request
    on another stops the check with T_MANY, ``err[1]`` its row and
    ``err[3]`` the first device's slot.  The caller then fills a
    ``slots_out`` as long as the trace with that slot up to the row and
    calls again from it, so each row is checked once (a trace on one
    device is checked in one pass and needs no per-request array).

    On T_OK, ``err[2]`` is the number of requests that are not reads (from
    row 0: the count goes on across the two calls; a separate
    ``(ops != READ).any()`` read the ops again and made a temporary as long
    as the trace), and ``err[3]`` is the slot of every row when the call
    had an empty ``slots_out``, else -1."""
    n = dev_ids.shape[0]
    nl = lut_ids.shape[0]
    write = slots_out.shape[0] > 0
    last_id = np.int64(-1)
    last_slot = np.int64(-1)
    if start == 0:
        err[2] = 0
    err[3] = -1
    for i in range(start, n):
        d = np.int64(dev_ids[i])
        if d != last_id:
            if last_id >= 0 and not write:
                err[0] = T_MANY
                err[1] = i
                err[3] = last_slot
                return T_MANY
            lo = 0
            hi = nl
            while lo < hi:
                mid = (lo + hi) >> 1
                if lut_ids[mid] < d:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= nl or lut_ids[lo] != d:
                err[0] = T_NO_DEVICE
                err[1] = i
                return T_NO_DEVICE
            last_id = d
            last_slot = lut_slots[lo]
        if ops[i] > 2:
            err[0] = T_BAD_OP
            err[1] = i
            return T_BAD_OP
        size = np.uint64(slot_size[last_slot])
        if lengths[i] > size or offsets[i] > size - lengths[i]:
            err[0] = T_PAST_END
            err[1] = i
            return T_PAST_END
        if write:
            slots_out[i] = last_slot
        if ops[i] != READ:
            err[2] += 1
    if not write:
        err[3] = last_slot
    err[0] = T_OK
    return T_OK


@njit(refcount=False)
def map_range(meta, root, levels, vb0, count, out_pblock, out_time):
    """pblock (-1 unmapped) and time of ``count`` blocks from ``vb0``."""
    for k in range(count):
        v = lookup(meta, root, levels, vb0 + k)
        if v == 0:
            out_pblock[k] = -1
            out_time[k] = 0
        else:
            out_pblock[k] = leaf_value_block(v)
            out_time[k] = np.int64(v & np.uint64(0xFFFFFF))


@njit
def collect_mappings(meta, root, levels, out_v, out_p, out_t):
    """All mappings of a tree in vblock order; returns how many."""
    if root == 0:
        return 0
    stack_b = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_k = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_b[0] = root
    stack_l[0] = levels
    stack_k[0] = 0
    top = 1
    n = 0
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        base = stack_k[top]
        if lv == 1:
            for i in range(NODE_ENTRIES):
                v = meta[b, i]
                if v != 0:
                    if n >= out_v.shape[0]:
                        return n
                    out_v[n] = base + i
                    out_p[n] = leaf_value_block(v)
                    out_t[n] = np.int64(v & np.uint64(0xFFFFFF))
                    n += 1
            continue
        # push children in reverse so they pop in ascending order
        for i in range(NODE_ENTRIES - 1, -1, -1):
            e = meta[b, i]
            if e != 0:
                stack_b[top] = np.int64(e & np.uint64(CHILD_MASK))
                stack_l[top] = lv - 1
                stack_k[top] = base + (i << (NODE_SHIFT * (lv - 1)))
                top += 1
    return n


@njit
def highest_mapped(meta, root, levels):
    """Highest mapped vblock of a tree, -1 if none."""
    if root == 0:
        return -1
    # depth-first from the right
    stack_b = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_k = np.empty(8 * NODE_ENTRIES + 8, dtype=np.int64)
    stack_b[0] = root
    stack_l[0] = levels
    stack_k[0] = 0
    top = 1
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        base = stack_k[top]
        if lv == 1:
            for i in range(NODE_ENTRIES - 1, -1, -1):
                if meta[b, i] != 0:
                    return base + i
            continue
        for i in range(NODE_ENTRIES):
            e = meta[b, i]
            if e != 0:
                stack_b[top] = np.int64(e & np.uint64(CHILD_MASK))
                stack_l[top] = lv - 1
                stack_k[top] = base + (i << (NODE_SHIFT * (lv - 1)))
                top += 1
    return -1

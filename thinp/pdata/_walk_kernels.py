"""dm's btree walk, written once: every reader of the mapping trees steps it.

Private (the public names are in :mod:`thinp.pdata.mapping_tree`).  A walk
is a :class:`Walk` of plain arrays.  :func:`start` puts it at a tree's root
and each :func:`next_leaf` moves it to the next leaf in key order, so a
reader -- thin_check's tallies, the pool's index rebuild, thin_dump's and
thin_ls's copy of the mappings, thin_rmap's first-reach view -- is a loop
over leaves that does only its own work on each leaf's entries, as
thin-provisioning-tools' visitors do over its one ``btree_walker``.

Walk arrays (``nb`` metadata blocks):

blocks, m64, m32  uint8[nb, 4096], uint64[nb, 512], uint32[nb, 1024]: views
          of the metadata; a node's header words are m32[b, 1] flags,
          m32[b, 4] nr_entries, m32[b, 5] max_entries, m32[b, 6]
          value_size; keys m64[b, 4 + i], 8-byte values
          m64[b, 4 + max_entries + i]
t8        uint32[8, 256]   crc32c tables (for W_VERIFY)
seen      int32[nb]   references to each node found so far, one per parent
          entry (the top level's entry for a root), or int32[0]: not kept
under     int64[nb]   entries in the leaves below each node walked (-1 while
          it is being walked), or int64[0]: not kept
frame     int64[MAX_DEPTH, 4]  per level: block, next child (-1 before the
          node is entered), entries counted below it so far, F_* flags
bound     uint64[MAX_DEPTH, 2] per level: the node's keys lie in
          [low, high) (no high bound with F_OPEN_END)
st        int64[6]    depth (-1: done), leaf value size, W_* options, 1 when
          the leaf last returned is fresh, damaged nodes recorded (W_TOLERANT),
          the depth of the leaf last returned
bad       int64[2]    bad[0]: the block a WALK_* code is about
dmg       uint64[k, 5] with W_TOLERANT: per damaged node (the order met)
          its block, the low and high keys its parent entry gives, its
          depth, and 1 when it has no high bound

A node is *fresh* when it is reached through its first reference: with
``seen`` kept, the first parent entry found pointing at it; without, always.
A fresh node is checked when entered, as thin_check checks it: a sane header
(one of internal or leaf, nr_entries <= max_entries, max_entries dm's rule
for the value size, internal nodes non-empty with 8-byte values), keys
ascending within the range its parent entry gives, children on the device,
and with W_VERIFY its checksum (dm's btree salt) and own block number.  A
node that is not fresh was walked whole before: it is skipped, or with
W_REVISIT walked again without checks or counts (a reader that needs each
device's whole tree, such as the per-device index).  ``under`` then gives a
device's mapped count as ``under[root]`` whichever device reached it first.

With W_TOLERANT (thin_repair's walk) a node that fails its checks, a
child outside the device and a node deeper than TOLERANT_DEPTH are not
errors: each is recorded in ``dmg`` and skipped with everything below it,
and the walk goes on with the next sibling.

Functions return >= 0, or a WALK_* code (< 0) with ``bad[0]`` the block.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import njit
from .crc32c import HAS_CRC32_INSTRUCTION, TABLE8, block_crc_hw, crc32c_update8

MAX_DEPTH = 64

W_VERIFY = 1    # check each fresh node's checksum and block number too
W_REVISIT = 2   # walk nodes reached before again (else skip them)
W_TOLERANT = 4  # record damaged nodes in ``dmg`` and walk on (thin_repair)
TOLERANT_DEPTH = 16

WALK_BAD_BLOCK = -1  # a child (or root) outside the device
WALK_BAD_NODE = -2   # a header that is not a btree node of the expected value size
WALK_BAD_ORDER = -3  # keys not ascending, or outside the parent's range
WALK_TOO_DEEP = -4
WALK_TOO_MANY = -5   # more entries than the output holds
WALK_BAD_CSUM = -6   # wrong checksum or block number (W_VERIFY)
WALK_LOOP = -7       # a node reached again while it is being walked

F_FRESH = 1
F_OPEN_END = 2
ST_DEPTH = 0
ST_VALUE_SIZE = 1
ST_OPTIONS = 2
ST_FRESH = 3
ST_NR_DMG = 4
ST_LEAF_DEPTH = 5

_INTERNAL = 1
_LEAF = 2
_HDR = 4  # header words (32 bytes)
_BTREE_CSUM_XOR = 121107


class Walk(NamedTuple):
    blocks: np.ndarray
    m64: np.ndarray
    m32: np.ndarray
    t8: np.ndarray
    seen: np.ndarray
    under: np.ndarray
    frame: np.ndarray
    bound: np.ndarray
    st: np.ndarray
    bad: np.ndarray
    dmg: np.ndarray


_NO_SEEN = np.zeros(0, dtype=np.int32)
_NO_UNDER = np.zeros(0, dtype=np.int64)
_NO_DMG = np.zeros((0, 5), dtype=np.uint64)


def new_walk(blocks: np.ndarray, value_size: int = 8, options: int = 0, seen: np.ndarray | None = None,
             under: np.ndarray | None = None, max_damaged: int = 0) -> Walk:
    """A walk over the metadata ``blocks`` (uint8[nb, 4096]) of trees whose
    leaves hold ``value_size``-byte values.  ``seen`` (int32[nb]) and
    ``under`` (int64[nb]), zeroed by the caller, may be shared by several
    walks (thin_check's reference count over every tree).  With W_TOLERANT,
    up to ``max_damaged`` damaged nodes are recorded (one more is
    WALK_TOO_MANY)."""
    st = np.zeros(6, dtype=np.int64)
    st[ST_DEPTH] = -1
    st[ST_VALUE_SIZE] = value_size
    st[ST_OPTIONS] = options
    return Walk(blocks, blocks.view(np.uint64), blocks.view(np.uint32), TABLE8,
                _NO_SEEN if seen is None else seen, _NO_UNDER if under is None else under,
                np.zeros((MAX_DEPTH, 4), dtype=np.int64), np.zeros((MAX_DEPTH, 2), dtype=np.uint64), st,
                np.zeros(2, dtype=np.int64),
                np.zeros((max_damaged, 5), dtype=np.uint64) if max_damaged else _NO_DMG)


def damaged(w: Walk) -> np.ndarray:
    """The damaged nodes a W_TOLERANT walk recorded: uint64[n, 5] (block,
    low key, high key, depth, 1 when unbounded above)."""
    return w.dmg[:int(w.st[ST_NR_DMG])]


if HAS_CRC32_INSTRUCTION:
    @njit(inline="always")
    def _node_crc(w, b):
        """The raw crc32c register over bytes 4.. of block ``b``: the CPU's
        instruction (four times the tables' speed: the checksums are most
        of a checked walk's time)."""
        return block_crc_hw(w.m64, w.m32, b)
else:
    @njit(inline="always")
    def _node_crc(w, b):
        return crc32c_update8(w.t8, np.uint32(0xFFFFFFFF), w.blocks[b], 4, w.blocks.shape[1])


@njit(inline="always")
def _max_entries(value_size):
    return 3 * (((4096 - 32) // (8 + value_size)) // 3)


@njit(inline="always")
def _damage(w, b, lo, hi, depth, open_end):
    """Record a damaged node (W_TOLERANT); WALK_TOO_MANY when ``dmg`` is full."""
    k = w.st[ST_NR_DMG]
    if k >= w.dmg.shape[0]:
        w.bad[0] = b
        return WALK_TOO_MANY
    w.dmg[k, 0] = np.uint64(b)
    w.dmg[k, 1] = lo
    w.dmg[k, 2] = hi
    w.dmg[k, 3] = np.uint64(depth)
    w.dmg[k, 4] = np.uint64(1 if open_end else 0)
    w.st[ST_NR_DMG] = k + 1
    return 0


@njit(refcount=False)
def start(w, root):
    """Put ``w`` at the root of a tree (one reference more to it when
    ``seen`` is kept).  Returns 0, or WALK_BAD_BLOCK / WALK_LOOP (with
    W_TOLERANT a root outside the device is recorded, and the walk is
    empty)."""
    st = w.st
    st[ST_DEPTH] = -1
    st[ST_LEAF_DEPTH] = -1
    if root <= 0 or root >= w.m64.shape[0]:
        if st[ST_OPTIONS] & W_TOLERANT:
            return _damage(w, root, np.uint64(0), np.uint64(0), 0, True)
        w.bad[0] = root
        return WALK_BAD_BLOCK
    fresh = True
    if w.seen.shape[0] > 0:
        w.seen[root] += 1
        fresh = w.seen[root] == 1
        if not fresh and w.under.shape[0] > 0 and w.under[root] < 0:
            w.bad[0] = root
            return WALK_LOOP
    w.frame[0, 0] = root
    w.frame[0, 1] = -1
    w.frame[0, 2] = 0
    w.frame[0, 3] = (F_FRESH if fresh else 0) | F_OPEN_END
    w.bound[0, 0] = np.uint64(0)
    w.bound[0, 1] = np.uint64(0)
    if fresh or st[ST_OPTIONS] & W_REVISIT:
        st[ST_DEPTH] = 0
    return 0


@njit(inline="always")
def _check_node(w, b, depth, nr, mx, flags, vs, opts):
    m64 = w.m64
    m32 = w.m32
    if (flags & (_INTERNAL | _LEAF)) == 0 or (flags & _INTERNAL and flags & _LEAF) or nr > mx:
        return WALK_BAD_NODE
    if flags & _LEAF:
        if np.int64(m32[b, 6]) != vs or mx != _max_entries(vs):
            return WALK_BAD_NODE
    elif m32[b, 6] != 8 or mx != _max_entries(8) or nr == 0:
        return WALK_BAD_NODE
    if opts & W_VERIFY:
        if m64[b, 1] != np.uint64(b):
            return WALK_BAD_CSUM
        if (_node_crc(w, b) ^ np.uint32(_BTREE_CSUM_XOR)) != m32[b, 0]:
            return WALK_BAD_CSUM
    lo = w.bound[depth, 0]
    hi = w.bound[depth, 1]
    open_end = (w.frame[depth, 3] & F_OPEN_END) != 0
    prev = lo
    for i in range(nr):
        k = m64[b, _HDR + i]
        if (i > 0 and k <= prev) or k < lo or (not open_end and k >= hi):
            return WALK_BAD_ORDER
        prev = k
    return 0


@njit(refcount=False)
def next_leaf(w):
    """The next leaf of the walk in key order (a block > 0; ``leaf_fresh``
    says whether it is fresh), 0 when the walk is done, or a WALK_* code."""
    m64 = w.m64
    m32 = w.m32
    frame = w.frame
    bound = w.bound
    st = w.st
    nb = m64.shape[0]
    vs = st[ST_VALUE_SIZE]
    opts = st[ST_OPTIONS]
    counting = w.seen.shape[0] > 0
    keep_under = w.under.shape[0] > 0
    depth = st[ST_DEPTH]
    while depth >= 0:
        b = frame[depth, 0]
        fresh = (frame[depth, 3] & F_FRESH) != 0
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        if frame[depth, 1] < 0:  # entering the node
            flags = m32[b, 1]
            if fresh:
                r = _check_node(w, b, depth, nr, mx, flags, vs, opts)
                if r < 0:
                    if opts & W_TOLERANT:
                        r = _damage(w, b, bound[depth, 0], bound[depth, 1], depth,
                                    (frame[depth, 3] & F_OPEN_END) != 0)
                        if r == 0:
                            depth -= 1
                            continue
                    w.bad[0] = b
                    st[ST_DEPTH] = -1
                    return r
            if flags & _LEAF:
                if fresh:
                    if keep_under:
                        w.under[b] = nr
                    if depth > 0:
                        frame[depth - 1, 2] += nr
                st[ST_DEPTH] = depth - 1
                st[ST_FRESH] = 1 if fresh else 0
                st[ST_LEAF_DEPTH] = depth
                return b
            if fresh and keep_under:
                w.under[b] = -1
            frame[depth, 1] = 0
            frame[depth, 2] = 0
        i = frame[depth, 1]
        if i >= nr:  # done with the node
            if fresh:
                if keep_under:
                    w.under[b] = frame[depth, 2]
                if depth > 0:
                    frame[depth - 1, 2] += frame[depth, 2]
            depth -= 1
            continue
        frame[depth, 1] = i + 1
        c = np.int64(m64[b, _HDR + mx + i])
        child_fresh = fresh
        tolerant_deep = (opts & W_TOLERANT) != 0 and depth + 1 > TOLERANT_DEPTH
        if fresh and (c <= 0 or c >= nb or tolerant_deep):
            if opts & W_TOLERANT:
                last = i + 1 >= nr
                r = _damage(w, c, m64[b, _HDR + i], bound[depth, 1] if last else m64[b, _HDR + i + 1], depth + 1,
                            last and (frame[depth, 3] & F_OPEN_END) != 0)
                if r == 0:
                    continue
                st[ST_DEPTH] = -1
                return r
            w.bad[0] = b
            st[ST_DEPTH] = -1
            return WALK_BAD_BLOCK
        if fresh:
            if counting:
                w.seen[c] += 1
                if w.seen[c] > 1:
                    child_fresh = False
                    if keep_under:
                        if w.under[c] < 0:
                            w.bad[0] = c
                            st[ST_DEPTH] = -1
                            return WALK_LOOP
                        frame[depth, 2] += w.under[c]
                    if (opts & W_REVISIT) == 0:
                        continue
        if depth + 1 >= MAX_DEPTH:
            w.bad[0] = c
            st[ST_DEPTH] = -1
            return WALK_TOO_DEEP
        d = depth + 1
        frame[d, 0] = c
        frame[d, 1] = -1
        frame[d, 2] = 0
        fl = F_FRESH if child_fresh else 0
        bound[d, 0] = m64[b, _HDR + i]
        if i + 1 < nr:
            bound[d, 1] = m64[b, _HDR + i + 1]
        else:
            bound[d, 1] = bound[depth, 1]
            fl |= frame[depth, 3] & F_OPEN_END
        frame[d, 3] = fl
        depth = d
    st[ST_DEPTH] = -1
    return 0


@njit(inline="always")
def leaf_fresh(w):
    """Whether the leaf :func:`next_leaf` returned last is fresh."""
    return w.st[ST_FRESH] != 0


@njit(refcount=False)
def collect_trees(w, roots, begin, keys_out, vals_out):
    """The 8-byte-value leaf entries of the trees at ``roots`` (0: no tree)
    in turn, each in key order.  With ``keys_out`` empty, counts: ``begin``
    (int64[len(roots) + 1]) gets each tree's offset; else fills
    ``keys_out``/``vals_out`` (uint64) at those offsets.  Only fresh leaves
    count unless the walk has W_REVISIT.  Returns the total, or a WALK_*
    code with ``bad[1]`` the index of the tree."""
    m64 = w.m64
    m32 = w.m32
    fill = keys_out.shape[0] > 0
    pos = np.int64(0)
    for j in range(roots.shape[0]):
        begin[j] = pos
        if roots[j] == 0:
            continue
        r = start(w, roots[j])
        while r >= 0:
            b = next_leaf(w)
            if b <= 0:
                r = b
                break
            nr = np.int64(m32[b, 4])
            if fill:
                if pos + nr > keys_out.shape[0]:
                    w.bad[0] = b
                    r = WALK_TOO_MANY
                    break
                mx = np.int64(m32[b, 5])
                for i in range(nr):
                    keys_out[pos + i] = m64[b, _HDR + i]
                    vals_out[pos + i] = m64[b, _HDR + mx + i]
            pos += nr
        if r < 0:
            w.bad[1] = j
            return r
    begin[roots.shape[0]] = pos
    return pos


@njit(refcount=False)
def leaf_blocks(w, root, out):
    """The leaves of the tree at ``root`` in key order, into ``out``
    (int64): for readers of leaves of any value size.  Returns how many,
    or a WALK_* code (WALK_TOO_MANY when ``out`` is too short)."""
    r = start(w, root)
    if r < 0:
        return r
    n = 0
    while True:
        b = next_leaf(w)
        if b <= 0:
            return n if b == 0 else b
        if n >= out.shape[0]:
            w.bad[0] = b
            return WALK_TOO_MANY
        out[n] = b
        n += 1


# ---------------------------------------------------------------- repair's scan
#
# thin_repair finds lost roots and leaves by looking at every block.  ``kind``
# (int8[nb]) is the scan's result: 1 internal node, 2 leaf, 0 anything else.


@njit(refcount=False)
def scan_nodes(w, kind):
    """Mark in ``kind`` every block that is a valid btree node as
    :func:`thinp.pdata.btree.read_node` checks one (its checksum with dm's
    btree salt and its own block number, flags one of internal or leaf,
    max_entries a multiple of 3 that fits the block, nr_entries <=
    max_entries, 8-byte values in internal nodes).  Returns how many."""
    m64 = w.m64
    m32 = w.m32
    nb = m64.shape[0]
    n = 0
    for b in range(1, nb):
        kind[b] = 0
        if m64[b, 0] == 0 and m64[b, 1] == 0:
            continue
        if m64[b, 1] != np.uint64(b):
            continue
        flags = m32[b, 1]
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        vs = np.int64(m32[b, 6])
        if flags != _INTERNAL and flags != _LEAF:
            continue
        if mx % 3 != 0 or vs > 4096 or 32 + mx * (8 + vs) > 4096 or nr > mx:
            continue
        if flags == _INTERNAL and vs != 8:
            continue
        if (_node_crc(w, b) ^ np.uint32(_BTREE_CSUM_XOR)) != m32[b, 0]:
            continue
        kind[b] = flags
        n += 1
    return n


@njit(refcount=False)
def mark_children(w, kind, referenced):
    """``referenced[c] = 1`` for every child ``c`` (on the device) of a
    scanned internal node."""
    m64 = w.m64
    m32 = w.m32
    nb = m64.shape[0]
    for b in range(nb):
        if kind[b] != _INTERNAL:
            continue
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        for i in range(nr):
            c = np.int64(m64[b, _HDR + mx + i])
            if 0 <= c < nb:
                referenced[c] = 1


@njit(refcount=False)
def _first_leaf_vs(w, kind, r, stack):
    """The value size of the first leaf a descent from ``r`` through
    scanned nodes meets (children last to first), 0 when none."""
    m64 = w.m64
    m32 = w.m32
    nb = m64.shape[0]
    top = 0
    stack[0] = r
    top = 1
    pushes = 0
    while top > 0:
        top -= 1
        b = stack[top]
        if b < 0 or b >= nb or kind[b] == 0:
            continue
        if kind[b] == _LEAF:
            return np.int64(m32[b, 6])
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        for i in range(nr):
            if top >= stack.shape[0] or pushes >= nb:
                return 0
            stack[top] = np.int64(m64[b, _HDR + mx + i])
            top += 1
            pushes += 1
    return 0


@njit(refcount=False)
def score_roots(w, kind, roots, out, stamp, stack, stack2):
    """For each candidate root (a scanned node no scanned internal node
    points at), what thin_repair's choice of roots weighs, into
    ``out[j]``: the value size of its leaves, the entries in them, whether
    every key is below 2**24 and every value below 2**32 (a top level's
    dev_ids and block numbers), and how many of the values are scanned
    nodes other than the root whose leaves hold 8-byte values (subtree
    roots).  Each node counts once per root (``stamp``, int64[nb] of -1).
    ``stack``, ``stack2``: int64[nb + 1] scratch."""
    m64 = w.m64
    m32 = w.m32
    nb = m64.shape[0]
    for j in range(roots.shape[0]):
        r = roots[j]
        out[j, 0] = _first_leaf_vs(w, kind, r, stack2)
        entries = 0
        small = 1
        subtrees = 0
        top = 1
        stack[0] = r
        stamp[r] = j
        while top > 0:
            top -= 1
            b = stack[top]
            nr = np.int64(m32[b, 4])
            mx = np.int64(m32[b, 5])
            if kind[b] == _LEAF:
                entries += nr
                if np.int64(m32[b, 6]) == 8 and out[j, 0] == 8:
                    for i in range(nr):
                        k = m64[b, _HDR + i]
                        v = m64[b, _HDR + mx + i]
                        if k >= np.uint64(1 << 24) or v >= np.uint64(1 << 32):
                            small = 0
                        elif np.int64(v) != r and np.int64(v) < nb and kind[np.int64(v)] != 0 and \
                                _first_leaf_vs(w, kind, np.int64(v), stack2) == 8:
                            subtrees += 1
                continue
            for i in range(nr):
                c = np.int64(m64[b, _HDR + mx + i])
                if 0 <= c < nb and kind[c] != 0 and stamp[c] != j:
                    stamp[c] = j
                    stack[top] = c
                    top += 1
        out[j, 1] = entries
        out[j, 2] = small
        out[j, 3] = subtrees


@njit(refcount=False)
def gather_leaves(w, leaves, keys_out, vals_out):
    """The 8-byte-value entries of ``leaves`` (walked, so checked) in turn
    into ``keys_out``/``vals_out`` (uint64, sized by the caller: the sum
    of their nr_entries).  Returns how many."""
    m64 = w.m64
    m32 = w.m32
    pos = 0
    for j in range(leaves.shape[0]):
        b = leaves[j]
        nr = np.int64(m32[b, 4])
        mx = np.int64(m32[b, 5])
        for i in range(nr):
            keys_out[pos + i] = m64[b, _HDR + i]
            vals_out[pos + i] = m64[b, _HDR + mx + i]
        pos += nr
    return pos

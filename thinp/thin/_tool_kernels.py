"""Bulk kernels for the metadata tools (restore, ls, delta).

Private, like every ``_kernels`` module: arrays and scalars in, values or
status codes out, never an exception.  Callers validate first.
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ..pdata.crc32c import crc32c_update8
from ..pdata.radix import CHILD_MASK, NODE_MASK, NODE_SHIFT, alloc_meta


@njit
def build_tree(sp, levels, vblocks, values):
    """Build a new mapping tree from ``vblocks`` (int64, strictly
    increasing, each < 512**levels) and their leaf ``values`` (uint64,
    non-zero).  Nodes come from :func:`alloc_meta` (reserve allowed: the
    caller sized the metadata), so they are new in this transaction and the
    next commit seals their checksums.  Returns the root, 0 for no mappings,
    or -1 when metadata ran out."""
    n = vblocks.shape[0]
    if n == 0:
        return 0
    root = alloc_meta(sp, True)
    if root < 0:
        return -1
    meta = sp.meta
    for j in range(n):
        vb = vblocks[j]
        node = root
        for lv in range(levels - 1, 0, -1):
            idx = (vb >> (NODE_SHIFT * lv)) & NODE_MASK
            e = meta[node, idx]
            if e == 0:
                child = alloc_meta(sp, True)
                if child < 0:
                    return -1
                meta[node, idx] = np.uint64(child)
            else:
                child = np.int64(e & np.uint64(CHILD_MASK))
            node = child
        meta[node, vb & NODE_MASK] = values[j]
    return root


@njit
def count_nodes(vblocks, levels):
    """Tree nodes a sorted ``vblocks`` array needs (root included)."""
    n = vblocks.shape[0]
    if n == 0:
        return 0
    total = 1
    for lv in range(1, levels):
        shift = NODE_SHIFT * lv
        prev = -1
        for j in range(n):
            k = vblocks[j] >> shift
            if k != prev:
                total += 1
                prev = k
    return total


@njit(refcount=False)
def parse_mapping_tags(raw, starts, ends, parts, part_offsets, out):
    """Parse tags laid out exactly as ``parts[k]`` + ``"digits"`` + ... +
    the last part (thin_dump's mapping elements).  ``starts``/``ends`` are
    each tag's ``<`` and ``>`` positions in ``raw`` (uint8); values go to
    ``out[i, k]`` (at most 18 digits each).  Returns -1, or the first tag
    that does not follow the layout (the caller falls back to a real XML
    parser for it)."""
    nv = part_offsets.shape[0] - 2
    n = raw.shape[0]
    for i in range(starts.shape[0]):
        pos = starts[i]
        for k in range(nv + 1):
            for j in range(part_offsets[k], part_offsets[k + 1]):
                if pos >= n or raw[pos] != parts[j]:
                    return i
                pos += 1
            if k == nv:
                break
            if pos >= n or raw[pos] != 34:
                return i
            pos += 1
            v = np.int64(0)
            nd = 0
            while pos < n and raw[pos] >= 48 and raw[pos] <= 57:
                v = v * 10 + np.int64(raw[pos] - 48)
                nd += 1
                pos += 1
                if nd > 18:
                    return i
            if nd == 0 or pos >= n or raw[pos] != 34:
                return i
            pos += 1
            out[i, k] = v
        if pos != ends[i] + 1:
            return i
    return -1


# dm's btree node header (dm-btree-internal.h): csum, flags, blocknr, then
# nr_entries, max_entries, value_size as __le32 words 4..6; keys from byte 32
_NODE_INTERNAL = 1
_NODE_LEAF = 2
_NODE_HDR_WORDS = 4  # 32 bytes of header, in uint64 words
_MAX_ENTRIES_8 = 252  # (4096 - 32) // (8 + 8)
_BTREE_CSUM_XOR = 121107
_MAX_DEPTH = 16


@njit
def check_subtrees(blocks, m64, m32, t8, roots, nr_data_blocks, seen, under, data_refs, bad):
    """thin_check's walk of the mapping subtrees at ``roots``, in one pass.

    Every node reached counts one reference in ``seen`` (int32[nr_blocks],
    shared across calls); a node seen before is counted but not walked
    again (shared subtrees).  A node walked for the first time has its
    checksum (dm's btree salt), its own block number, header, key order and
    its keys' range under its parent checked; ``under[b]`` becomes the
    number of mappings below it (so a device's mapped count is
    ``under[root]``), and each leaf adds one reference per entry to
    ``data_refs`` (uint32[nr_data_blocks]).  Returns 0, or -1 with
    ``bad[0]`` the first block found wrong (the caller's slow walk then
    says what is wrong with it)."""
    nb = m64.shape[0]
    sb = np.empty(_MAX_DEPTH, dtype=np.int64)
    si = np.empty(_MAX_DEPTH, dtype=np.int64)
    acc = np.empty(_MAX_DEPTH, dtype=np.int64)
    lo = np.empty(_MAX_DEPTH, dtype=np.uint64)
    hi = np.empty(_MAX_DEPTH, dtype=np.uint64)
    hi_open = np.empty(_MAX_DEPTH, dtype=np.bool_)
    for j in range(roots.shape[0]):
        root = roots[j]
        if root <= 0 or root >= nb:
            bad[0] = root
            return -1
        seen[root] += 1
        if seen[root] > 1:
            if under[root] < 0:
                bad[0] = root
                return -1
            continue
        depth = 0
        sb[0] = root
        si[0] = -1
        lo[0] = np.uint64(0)
        hi[0] = np.uint64(0)
        hi_open[0] = True
        while depth >= 0:
            b = sb[depth]
            nr = np.int64(m32[b, 4])
            mx = np.int64(m32[b, 5])
            if si[depth] < 0:
                flags = m32[b, 1]
                if (m64[b, 1] != np.uint64(b) or mx != _MAX_ENTRIES_8 or m32[b, 6] != 8 or nr > mx
                        or (flags & (_NODE_INTERNAL | _NODE_LEAF)) == 0
                        or (flags & _NODE_INTERNAL and flags & _NODE_LEAF)
                        or (flags & _NODE_INTERNAL and nr == 0)):
                    bad[0] = b
                    return -1
                c = crc32c_update8(t8, np.uint32(0xFFFFFFFF), blocks[b], 4, blocks.shape[1])
                if (c ^ np.uint32(_BTREE_CSUM_XOR)) != m32[b, 0]:
                    bad[0] = b
                    return -1
                prev = lo[depth]
                for i in range(nr):
                    k = m64[b, _NODE_HDR_WORDS + i]
                    if (i > 0 and k <= prev) or k < lo[depth] or (not hi_open[depth] and k >= hi[depth]):
                        bad[0] = b
                        return -1
                    prev = k
                under[b] = -1  # being walked
                if flags & _NODE_LEAF:
                    for i in range(nr):
                        p = np.int64(m64[b, _NODE_HDR_WORDS + mx + i] >> np.uint64(24))
                        if p >= nr_data_blocks:
                            bad[0] = b
                            return -1
                        data_refs[p] += 1
                    under[b] = nr
                    depth -= 1
                    if depth >= 0:
                        acc[depth] += nr
                    continue
                si[depth] = 0
                acc[depth] = 0
            i = si[depth]
            if i >= nr:
                under[b] = acc[depth]
                depth -= 1
                if depth >= 0:
                    acc[depth] += under[b]
                continue
            si[depth] = i + 1
            c = np.int64(m64[b, _NODE_HDR_WORDS + mx + i])
            if c <= 0 or c >= nb:
                bad[0] = b
                return -1
            seen[c] += 1
            if seen[c] > 1:
                if under[c] < 0:
                    bad[0] = c
                    return -1
                acc[depth] += under[c]
                continue
            if depth + 1 >= _MAX_DEPTH:
                bad[0] = c
                return -1
            d = depth + 1
            sb[d] = c
            si[d] = -1
            lo[d] = m64[b, _NODE_HDR_WORDS + i]
            if i + 1 < nr:
                hi[d] = m64[b, _NODE_HDR_WORDS + i + 1]
                hi_open[d] = False
            else:
                hi[d] = hi[depth]
                hi_open[d] = hi_open[depth]
            depth = d
    return 0

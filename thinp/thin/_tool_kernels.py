"""Bulk kernels for the metadata tools (restore, check).

Private, like every ``_kernels`` module: arrays and scalars in, values or
status codes out, never an exception.  Callers validate first.
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ..pdata import mapping_tree as MT
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


@njit(refcount=False)
def check_subtrees(w, roots, nr_data_blocks, data_refs):
    """thin_check's walk of the mapping subtrees at ``roots``, in one pass.

    ``w`` is a walk (:func:`thinp.pdata.mapping_tree.new_walk`) with
    W_VERIFY, without W_REVISIT, keeping ``seen`` and ``under`` (shared
    across calls): every node reached counts one reference, a node seen
    before is not walked again (shared subtrees), each node walked is
    checked, and ``under[root]`` becomes a device's mapped count.  Each
    leaf walked adds one reference per entry to ``data_refs``
    (uint32[nr_data_blocks]): dm's data reference count.  Returns 0, or
    < 0 with ``w.bad[0]`` the first block found wrong and ``w.bad[1]``
    the index of its tree in ``roots`` (the caller's slow walk then says
    what is wrong with it); -100: a leaf maps a block past the data device."""
    m64 = w.m64
    m32 = w.m32
    for j in range(roots.shape[0]):
        w.bad[1] = j
        r = MT.start(w, roots[j])
        if r < 0:
            return r
        while True:
            b = MT.next_leaf(w)
            if b == 0:
                break
            if b < 0:
                return b
            nr = np.int64(m32[b, 4])
            mx = np.int64(m32[b, 5])
            for i in range(nr):
                p = np.int64(m64[b, 4 + mx + i] >> np.uint64(24))
                if p >= nr_data_blocks:
                    w.bad[0] = b
                    return -100
                data_refs[p] += 1
    return 0

"""What thin_repair reads of damaged btrees, in numba: tolerant walks and the scan.

The public side of the repair kernels of :mod:`thinp.pdata._walk_kernels`
(the one leaf walk every tool steps, run with ``W_TOLERANT``, and the block
scan beside it).  Arrays:

kind      int8[nb]    what the scan found at each block: 1 a valid internal
                      node, 2 a valid leaf, 0 anything else (a node is valid
                      as :func:`thinp.pdata.btree.read_node` checks it)
refs      int32[nb]   references to each node from the readable parts of
                      the trees walked, a shared node's children counted once
Damage    list of (block, low key, high key, depth): a node a tolerant walk
          skipped, with the key range its parent entry gives it (high key
          ``1 << 64`` when unbounded) and its depth (the root's is 0)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _walk_kernels as WK
from .block import BlockManager, corrupt

_OPTS = WK.W_VERIFY | WK.W_TOLERANT


class Salvaged(NamedTuple):
    """A tolerant walk's result: the leaves' entries in key order."""

    keys: np.ndarray     # uint64[n]
    values: np.ndarray   # uint8[n, value_size]
    damaged: list        # Damage records (see the module docstring)
    leaf_depth: int | None  # the depth of its leaves (None: no leaf read)


def _damage_list(w) -> list:
    out = []
    for b, lo, hi, depth, open_end in WK.damaged(w).tolist():
        out.append((int(b), int(lo), (1 << 64) if open_end else int(hi), int(depth)))
    return out


def _entries(bm: BlockManager, leaves: np.ndarray, value_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, value bytes) of the ``leaves`` (checked nodes), in order."""
    m64, m32 = bm.blocks.view(np.uint64), bm.blocks.view(np.uint32)
    nr = m32[leaves, 4].astype(np.int64)
    total = int(nr.sum())
    if total == 0:
        return np.zeros(0, np.uint64), np.zeros((0, value_size), np.uint8)
    if value_size == 8:
        keys = np.empty(total, dtype=np.uint64)
        vals = np.empty(total, dtype=np.uint64)
        WK.gather_leaves(WK.new_walk(bm.blocks, 8, 0), leaves, keys, vals)
        return keys, vals.view(np.uint8).reshape(total, 8)
    mx = m32[leaves, 5].astype(np.int64)
    rows = np.repeat(leaves, nr)
    first = np.repeat(np.cumsum(nr) - nr, nr)
    i = np.arange(total, dtype=np.int64) - first
    keys = m64[rows, 4 + i]
    base = 32 + 8 * np.repeat(mx, nr) + value_size * i
    vals = bm.blocks[rows[:, None], base[:, None] + np.arange(value_size)]
    return keys, vals


def tolerant_collect(bm: BlockManager, root: int, value_size: int) -> Salvaged:
    """Every entry of the readable leaves of the one-level tree at ``root``,
    in key order, as thin_repair reads a damaged tree: a node failing its
    checks (checksum and block number, header, key order within the range
    its parent gives), a child outside the device, or a node deeper than
    16 levels is recorded and skipped with everything below it."""
    nb = bm.blocks.shape[0]
    out = np.empty(nb, dtype=np.int64)
    for max_damaged in (256, nb):  # (a record per damaged node: few, or a retry)
        w = WK.new_walk(bm.blocks, value_size, _OPTS, max_damaged=max_damaged)
        n = WK.leaf_blocks(w, np.int64(root), out)
        if n >= 0:
            break
    else:
        raise corrupt(f"btree at {root}: more damaged nodes or leaves than the {nb}-block device holds "
                      f"(a loop through node {int(w.bad[0])})")
    keys, vals = _entries(bm, out[:n], value_size)
    depth = int(w.st[WK.ST_LEAF_DEPTH])
    return Salvaged(keys, vals, _damage_list(w), depth if n else None)


def count_refs(bm: BlockManager, roots: list) -> np.ndarray:
    """refs (int32[nb]): the references to each node found walking the
    trees at ``roots`` ((root block, leaf value size) pairs) tolerantly:
    each root once, each child once per parent entry, a node reached
    before not walked again."""
    nb = bm.blocks.shape[0]
    refs = np.zeros(nb, dtype=np.int32)
    out = np.empty(nb, dtype=np.int64)
    walks: dict = {}
    for root, value_size in roots:
        if not 0 < root < nb:
            continue
        w = walks.get(value_size)
        if w is None:
            w = walks[value_size] = WK.new_walk(bm.blocks, value_size, _OPTS, seen=refs, max_damaged=nb)
        w.st[WK.ST_NR_DMG] = 0  # the damage is not kept here: room for the next tree's
        if WK.leaf_blocks(w, np.int64(root), out) < 0:
            raise corrupt(f"btree at {root}: more damaged nodes or leaves than the {nb}-block device holds")
    return refs


def scan(bm: BlockManager) -> np.ndarray:
    """kind (int8[nb]): every block checked as a btree node."""
    kind = np.zeros(bm.blocks.shape[0], dtype=np.int8)
    WK.scan_nodes(WK.new_walk(bm.blocks, 8, 0), kind)
    return kind


def find_roots(bm: BlockManager, kind: np.ndarray, details_value_size: int) -> tuple[int, int]:
    """(mapping root, details root), 0 when none, among the scanned nodes
    no scanned internal node points at: the details root is the one whose
    leaves hold ``details_value_size``-byte values and the most entries; the
    mapping root the one whose 8-byte leaves (keys below 2**24, values
    below 2**32) point at the most scanned trees of 8-byte leaves (the
    first by block number on ties)."""
    w = WK.new_walk(bm.blocks, 8, 0)
    referenced = np.zeros(kind.shape[0], dtype=np.uint8)
    WK.mark_children(w, kind, referenced)
    roots = np.flatnonzero((kind != 0) & (referenced == 0)).astype(np.int64)
    score = np.zeros((len(roots), 4), dtype=np.int64)
    nb = kind.shape[0]
    WK.score_roots(w, kind, roots, score, np.full(nb, -1, dtype=np.int64), np.empty(nb + 1, dtype=np.int64),
                   np.empty(nb + 1, dtype=np.int64))
    best_map = best_map_score = best_det = best_det_score = 0
    for r, (leaf_vs, entries, small, subtrees) in zip(roots.tolist(), score.tolist()):
        if leaf_vs == details_value_size:
            if entries > best_det_score:
                best_det, best_det_score = r, entries
        elif leaf_vs == 8 and small and subtrees > best_map_score:
            best_map, best_map_score = r, subtrees
    return best_map, best_det


def live_leaves(bm: BlockManager, kind: np.ndarray, value_size: int) -> np.ndarray:
    """The scanned leaves holding ``value_size``-byte values and at least
    one entry, by block number (int64)."""
    m32 = bm.blocks.view(np.uint32)
    return np.flatnonzero((kind == 2) & (m32[:, 6] == value_size) & (m32[:, 4] > 0)).astype(np.int64)


def key_ranges(bm: BlockManager, leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first key, last key) of each of ``leaves`` (scanned, non-empty)."""
    m64, m32 = bm.blocks.view(np.uint64), bm.blocks.view(np.uint32)
    nr = m32[leaves, 4].astype(np.int64)
    return m64[leaves, 4], m64[leaves, 3 + nr]


def leaf_entries(bm: BlockManager, leaf: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, 8-byte values) of one scanned leaf, copies."""
    k, v = _entries(bm, np.array([leaf], dtype=np.int64), 8)
    return k.copy(), v.reshape(-1).view("<u8").copy()

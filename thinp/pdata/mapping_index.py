"""Every mapping of dm-thin's two-level mapping tree, read in one numba walk.

This is the leaf walk that rebuilds a pool's volatile RAM index on open:
``dev_id -> subtree root`` at the top level, then each subtree's leaves in
key order.  The result is a :class:`MappingIndex` of plain arrays, grouped
by device (CSR style):

devs    uint64[k]      the thin ids, ascending
roots   int64[k]       each device's subtree root block
begin   int64[k + 1]   device j's mappings are ``[begin[j], begin[j + 1])``
vblock  uint64[n]      virtual blocks, ascending within each device
value   uint64[n]      the leaf values, dm-thin's ``pblock << 24 | time``
                       (:func:`thinp.thin.format.unpack_block_time` splits
                       them)

Shared subtrees (snapshots) are read once per device that maps them, as
each device's index needs them.  The walk (:mod:`thinp.pdata._walk_kernels`,
the one every tool steps) checks node headers, key order and block numbers
(a corrupt tree is a MetadataCorruptError naming the block); checksums too
when asked (``W_VERIFY``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _walk_kernels as WK
from .block import BlockManager, corrupt

W_VERIFY = WK.W_VERIFY   # a walk option: check each node's checksum as it is read

_PROBLEM = {WK.WALK_BAD_BLOCK: "points outside the metadata device",
            WK.WALK_BAD_NODE: "is not a btree node of 8-byte values",
            WK.WALK_BAD_ORDER: "has keys out of order or outside its parent's range",
            WK.WALK_TOO_DEEP: f"is deeper than {WK.MAX_DEPTH} levels",
            WK.WALK_TOO_MANY: "changed during the walk",
            WK.WALK_BAD_CSUM: "has a bad checksum or block number",
            WK.WALK_LOOP: "is its own descendant"}


class MappingIndex(NamedTuple):
    devs: np.ndarray
    roots: np.ndarray
    begin: np.ndarray
    vblock: np.ndarray
    value: np.ndarray

    def device(self, dev: int) -> tuple[np.ndarray, np.ndarray]:
        """(vblock, value) of one device (empty when it has no tree)."""
        j = int(np.searchsorted(self.devs, np.uint64(dev)))
        if j == len(self.devs) or int(self.devs[j]) != dev:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
        a, b = int(self.begin[j]), int(self.begin[j + 1])
        return self.vblock[a:b], self.value[a:b]


def _raise(code: int, bad: np.ndarray, what: str) -> None:
    raise corrupt(f"{what}: btree node {int(bad[0])} {_PROBLEM.get(code, f'walk status {code}')}")


def collect(bm: BlockManager, roots: np.ndarray, *, options: int = 0, first_reach: bool = False,
            what=lambda j: "mapping tree") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(begin int64[k + 1], vblock uint64[n], value uint64[n]): the leaf
    entries of the trees at ``roots`` (int64, 0 for none) in turn, CSR
    style, in one numba walk each for counting and for copying.
    ``options``: the walk's (:data:`W_VERIFY` checks checksums too).
    ``first_reach``: a node shared by several trees is read only under
    the first that reaches it (thin_rmap's view).  ``what(j)`` names tree
    ``j`` in the MetadataCorruptError a damaged tree raises."""
    roots = np.ascontiguousarray(roots, dtype=np.int64)
    nb = bm.blocks.shape[0]

    def walk(count_opts):
        seen = np.zeros(nb, dtype=np.int32) if first_reach else None
        return WK.new_walk(bm.blocks, 8, count_opts, seen=seen)

    begin = np.zeros(len(roots) + 1, dtype=np.int64)
    empty = np.zeros(0, dtype=np.uint64)
    w = walk(options)
    total = WK.collect_trees(w, roots, begin, empty, empty)
    if total < 0:
        _raise(total, w.bad, what(int(w.bad[1])))
    vblock = np.empty(total, dtype=np.uint64)
    value = np.empty(total, dtype=np.uint64)
    if total:
        # the nodes were checked by the count: the copy trusts them
        w = walk(0)
        r = WK.collect_trees(w, roots, np.zeros_like(begin), vblock, value)
        if r != total:
            _raise(r if r < 0 else WK.WALK_TOO_MANY, w.bad, what(int(w.bad[1])))
    return begin, vblock, value


def mapping_index(bm: BlockManager, mapping_root: int) -> MappingIndex:
    """Read every (dev, vblock) -> value of the mapping tree at ``mapping_root``."""
    _, devs, roots = collect(bm, np.array([mapping_root]))
    roots = roots.astype(np.int64)
    begin, vblock, value = collect(bm, roots, what=lambda j: f"thin device {int(devs[j])}'s mapping tree")
    return MappingIndex(devs, roots, begin, vblock, value)


def device_mappings(bm: BlockManager, subtree_root: int, *, verify: bool = False,
                    what: str = "mapping tree") -> tuple[np.ndarray, np.ndarray]:
    """(vblock uint64[n], value uint64[n]) of one device's tree, in key
    order: the same as ``btree.collect(bm, subtree_root, 8)`` in one numba
    walk (node headers, key order and block numbers checked; checksums
    too with ``verify``)."""
    if subtree_root <= 0:
        _raise(WK.WALK_BAD_BLOCK, np.array([subtree_root]), what)
    _, keys, vals = collect(bm, np.array([subtree_root]), options=WK.W_VERIFY if verify else 0,
                            what=lambda j: what)
    return keys, vals


def tree_nodes(bm: BlockManager, roots: np.ndarray, *, verify: bool = True) -> np.ndarray:
    """The nodes (int64, by block number) of the 8-byte-value trees at
    ``roots``, a node shared by several trees once: the leaf walk with a
    reference count, each node checked as thin_check checks it (checksums
    too with ``verify``).  A damaged tree is a MetadataCorruptError naming
    the block (:func:`thinp.pdata.btree.walk` says more about it)."""
    roots = np.ascontiguousarray(roots, dtype=np.int64)
    nb = bm.blocks.shape[0]
    seen = np.zeros(nb, dtype=np.int32)
    w = WK.new_walk(bm.blocks, 8, WK.W_VERIFY if verify else 0, seen=seen)
    out = np.empty(nb, dtype=np.int64)
    for j in range(len(roots)):
        if roots[j] == 0:
            continue
        r = WK.leaf_blocks(w, roots[j], out)
        if r < 0:
            _raise(r, w.bad, f"mapping tree {int(roots[j])}")
    return np.flatnonzero(seen)

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
each device's index needs them.  The walk checks node headers, key order
and block numbers (a corrupt tree is a MetadataCorruptError naming the
block); checksums are thin_check's job (:mod:`thinp.pdata.btree`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _btree_kernels as BK
from .block import BlockManager, corrupt

_PROBLEM = {BK.WALK_BAD_BLOCK: "points outside the metadata device",
            BK.WALK_BAD_NODE: "is not a btree node of 8-byte values",
            BK.WALK_BAD_ORDER: "has keys out of order or outside its parent's range",
            BK.WALK_TOO_DEEP: f"is deeper than {BK.MAX_DEPTH} levels",
            BK.WALK_TOO_MANY: "changed during the walk"}


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


def mapping_index(bm: BlockManager, mapping_root: int) -> MappingIndex:
    """Read every (dev, vblock) -> value of the mapping tree at ``mapping_root``."""
    blocks = bm.blocks
    m64, m32 = blocks.view(np.uint64), blocks.view(np.uint32)
    bad = np.zeros(2, dtype=np.int64)
    empty = np.zeros(0, dtype=np.uint64)
    n = BK.walk_leaves(m64, m32, np.int64(mapping_root), empty, empty, np.int64(0), False, bad)
    if n < 0:
        _raise(n, bad, "mapping tree")
    devs = np.empty(n, dtype=np.uint64)
    roots = np.empty(n, dtype=np.uint64)
    BK.walk_leaves(m64, m32, np.int64(mapping_root), devs, roots, np.int64(0), True, bad)
    roots = roots.astype(np.int64)
    begin = np.zeros(n + 1, dtype=np.int64)
    total = BK.walk_mapping_tree(m64, m32, devs, roots, begin, empty, empty, bad)
    if total < 0:
        _raise(total, bad, f"thin device {int(devs[bad[1]])}'s mapping tree")
    vblock = np.empty(total, dtype=np.uint64)
    value = np.empty(total, dtype=np.uint64)
    if total:
        r = BK.walk_mapping_tree(m64, m32, devs, roots, begin, vblock, value, bad)
        if r != total:
            _raise(r if r < 0 else BK.WALK_TOO_MANY, bad, f"thin device {int(devs[bad[1]])}'s mapping tree")
    return MappingIndex(devs, roots, begin, vblock, value)

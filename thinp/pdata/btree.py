"""dm's btree: node layout, lookup, and the reference walk in Python.

A node is one 4 KiB block (little-endian)::

    offset  0  __le32 csum         } the block header (see block.py), salt
    offset  4  __le32 flags        } BTREE_CSUM_XOR; flags 1 = internal,
    offset  8  __le64 blocknr      } 2 = leaf
    offset 16  __le32 nr_entries
    offset 20  __le32 max_entries  calc_max_entries: (4064 // (8 + value_size))
                                   rounded down to a multiple of 3: 252 for
                                   8-byte values, 126 for 24-byte ones
    offset 24  __le32 value_size   8 in internal nodes (a child block number)
    offset 28  __le32 padding
    offset 32  __le64 keys[max_entries], ascending
    then       values[max_entries] of value_size bytes

An internal node's key i is the lowest key under child i.  A tree of
``levels`` levels (dm-thin's mapping tree has 2: dev_id, then vblock) keeps,
in the leaves of every level but the last, the root of the next level's tree.

Writing (shadowing, insert, remove) lives in :mod:`thinp.pdata.btree_write`.
The walk every tool steps over the mapping trees is the numba one of
:mod:`thinp.pdata.mapping_tree` (``new_walk``/``next_leaf``); :func:`walk`
here serves the small trees of other value sizes (device details,
space-map indexes and ref counts), names the node a failed fast walk
stopped at, and is the reference the numba walk is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .block import BLOCK_SIZE, BTREE_NODE, BlockManager, corrupt

HEADER_SIZE = 32
INTERNAL_NODE = 1
LEAF_NODE = 2


def calc_max_entries(value_size: int, block_size: int = BLOCK_SIZE) -> int:
    """dm's rule: as many (key, value) pairs as fit, rounded down to 3n."""
    total = (block_size - HEADER_SIZE) // (8 + value_size)
    return 3 * (total // 3)


class Node:
    """Views of one btree node's fields over its block bytes."""

    __slots__ = ("blk", "b", "h32", "_keys", "_vals")

    def __init__(self, blk: np.ndarray, b: int):
        self.blk = blk
        self.b = b
        self.h32 = blk[:HEADER_SIZE].view("<u4")
        self._keys = None
        self._vals = None

    @property
    def flags(self) -> int:
        return int(self.h32[1])

    @property
    def is_leaf(self) -> bool:
        return bool(self.h32[1] & LEAF_NODE)

    @property
    def nr_entries(self) -> int:
        return int(self.h32[4])

    @nr_entries.setter
    def nr_entries(self, n: int) -> None:
        self.h32[4] = n

    @property
    def max_entries(self) -> int:
        return int(self.h32[5])

    @property
    def value_size(self) -> int:
        return int(self.h32[6])

    def keys(self) -> np.ndarray:
        """All ``max_entries`` key slots (the first ``nr_entries`` are live)."""
        if self._keys is None:
            self._keys = self.blk[HEADER_SIZE:HEADER_SIZE + 8 * int(self.h32[5])].view("<u8")
        return self._keys

    def values_raw(self) -> np.ndarray:
        """``uint8[max_entries, value_size]`` value slots."""
        if self._vals is None:
            m, vs = int(self.h32[5]), int(self.h32[6])
            base = HEADER_SIZE + 8 * m
            self._vals = self.blk[base:base + m * vs].reshape(m, vs)
        return self._vals

    def values64(self) -> np.ndarray:
        m = int(self.h32[5])
        base = HEADER_SIZE + 8 * m
        return self.blk[base:base + 8 * m].view("<u8")

    def reset_views(self) -> None:
        """Forget cached views after the header's shape fields change."""
        self._keys = None
        self._vals = None


def init_node(blk: np.ndarray, flags: int, value_size: int) -> Node:
    """Zero ``blk`` and make it an empty node (dm_btree_empty's header)."""
    blk[:] = 0
    h = blk[:HEADER_SIZE].view("<u4")
    h[1] = flags
    h[5] = calc_max_entries(value_size)
    h[6] = value_size
    return Node(blk, -1)


def read_node(bm: BlockManager, b: int, value_size: int | None = None, who: str = "") -> Node:
    """Block ``b`` as a btree node, checked as dm's node validator and
    thin_check do: checksum, location, and a sane header."""
    pre = f"{who}: " if who else ""
    try:
        blk = bm.read(b, BTREE_NODE)
    except Exception as e:  # MetadataCorruptError: add who
        if who:
            raise corrupt(f"{who}: {str(e).removeprefix('metadata corrupt: ')}") from None
        raise
    n = Node(blk, b)
    flags, nr, mx, vs = n.flags, n.nr_entries, n.max_entries, n.value_size
    if flags not in (INTERNAL_NODE, LEAF_NODE):
        raise corrupt(f"{pre}btree node {b}: flags {flags} are neither internal nor leaf")
    if HEADER_SIZE + mx * (8 + vs) > BLOCK_SIZE or mx % 3:
        raise corrupt(f"{pre}btree node {b}: max_entries {mx} with value size {vs} does not fit a block")
    if nr > mx:
        raise corrupt(f"{pre}btree node {b}: nr_entries {nr} > max_entries {mx}")
    if flags == INTERNAL_NODE and vs != 8:
        raise corrupt(f"{pre}btree node {b}: internal node with value size {vs}")
    if flags == LEAF_NODE and value_size is not None and vs != value_size:
        raise corrupt(f"{pre}btree node {b}: value size {vs}, expected {value_size}")
    return n


def lookup(bm: BlockManager, root: int, key: int, value_size: int) -> np.ndarray | None:
    """The value bytes stored under ``key`` in the one-level tree at
    ``root``, or None (dm's -ENODATA)."""
    b = root
    while True:
        n = read_node(bm, b, value_size)
        nr = n.nr_entries
        keys = n.keys()[:nr]
        i = int(np.searchsorted(keys, np.uint64(key), side="right")) - 1
        if i < 0:
            return None
        if n.is_leaf:
            return n.values_raw()[i] if int(keys[i]) == key else None
        b = int(n.values64()[i])


@dataclass
class TreeShape:
    """Node counts of a walk: leaves and internal nodes, first visits only."""

    nr_leaves: int = 0
    nr_internal: int = 0
    nr_entries: int = 0
    blocks: list = field(default_factory=list, repr=False)


def walk(bm: BlockManager, root: int, value_size: int, visit_leaf, *, who: str = "",
         seen: dict | None = None, shape: TreeShape | None = None) -> None:
    """Visit every leaf of the one-level tree at ``root`` in key order.

    ``visit_leaf(node, keys, values_raw)`` gets the live keys (uint64) and
    value bytes of each leaf.  Checks what thin_check checks on the way:
    each node valid, keys ascending, every key of a child at or above its
    parent entry's key and below the next one.  ``seen`` (block -> count of
    references found), when given, records every node reached, and a node
    already in it is counted again but not descended twice (shared
    subtrees), as thin_check's reference counting walk does.  ``shape``
    accumulates the node counts of first visits.
    """
    stack = [(root, 0, 1 << 64, 0)]  # block, low key, high key (exclusive), depth
    while stack:
        b, lo, hi, depth = stack.pop()
        if depth > 16:
            raise corrupt(f"{who + ': ' if who else ''}btree at {root} is deeper than 16 levels")
        if seen is not None:
            c = seen.get(b, 0)
            seen[b] = c + 1
            if c:
                continue
        n = read_node(bm, b, value_size, who)
        nr = n.nr_entries
        keys = n.keys()[:nr]
        if nr > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            raise corrupt(f"{who + ': ' if who else ''}btree node {b}: keys out of order")
        if nr and (int(keys[0]) < lo or int(keys[-1]) >= hi):
            raise corrupt(f"{who + ': ' if who else ''}btree node {b}: keys outside the range its parent gives")
        if shape is not None:
            shape.blocks.append(b)
            if n.is_leaf:
                shape.nr_leaves += 1
                shape.nr_entries += nr
            else:
                shape.nr_internal += 1
        if n.is_leaf:
            if nr:
                visit_leaf(n, keys, n.values_raw()[:nr])
            continue
        if nr == 0:
            raise corrupt(f"{who + ': ' if who else ''}btree node {b}: internal node with no entries")
        children = n.values64()[:nr]
        bounds = [int(k) for k in keys] + [hi]
        for i in range(nr - 1, -1, -1):
            stack.append((int(children[i]), bounds[i], bounds[i + 1], depth + 1))


def collect(bm: BlockManager, root: int, value_size: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(keys uint64[n], values uint8[n, value_size]) of a one-level tree."""
    ks, vs = [], []

    def visit(_n, keys, values):
        ks.append(keys.copy())
        vs.append(values.copy())

    walk(bm, root, value_size, visit, **kw)
    if not ks:
        return np.zeros(0, dtype=np.uint64), np.zeros((0, value_size), dtype=np.uint8)
    return np.concatenate(ks), np.concatenate(vs)

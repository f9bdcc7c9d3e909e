"""dm's disk space map (data blocks), counts in RAM, written at commit.

``count`` (uint32[nr_blocks]) holds every data block's reference count now.
``committed`` (uint32[nr_blocks + nr_bitmaps]) holds the counts as of the
last commit, then one "changed since the commit" flag per bitmap: every
change of ``count`` (here and in the numba kernels, which get ``committed``
as ``dcommitted``) sets its bitmap's flag, so a commit visits only the
flagged bitmaps and costs nothing for the rest of the device.
(The counts, cursor and allocation are :class:`~thinp.pdata.space_map.RefCounts`,
shared with the metadata space map.)  On disk (dm-space-map-disk.c): one
bitmap block per 16,320 blocks, their index entries in a btree keyed by
bitmap number (16-byte values), and a ref-count btree for counts >= 3.
"""
from __future__ import annotations

import numpy as np

from .. import errors
from . import btree_write as bw
from .block import BITMAP
from .space_map import ENTRIES_PER_BITMAP, INDEX_ENTRY_DTYPE, RefCounts, SmRoot, nr_bitmaps
from .transaction import TransactionManager, write_bitmap_entry

INDEX_VALUE = bw.ValueType(16)
COUNT_VALUE = bw.ValueType(4)


class DiskSpaceMap(RefCounts):
    """The data space map: counts, allocation, and its commit."""

    def __init__(self, tm: TransactionManager, count: np.ndarray):
        super().__init__(count, 2, extra=nr_bitmaps(len(count)))
        self.tm = tm
        #: blocks with a non-zero count as of the last commit
        self.nr_allocated = int(np.count_nonzero(self.count))
        self.bitmap_root = 0
        self.ref_count_root = 0
        self.index_entries = np.zeros(0, dtype=INDEX_ENTRY_DTYPE)
        #: ref counts through the numba kernel (False: the Python btree)
        self.fast = True

    @property
    def changed(self) -> np.ndarray:
        """uint32[nr_bitmaps]: the bitmaps' changed flags (a view)."""
        return self.committed[self.nr_blocks:]

    @classmethod
    def format(cls, tm: TransactionManager, nr_blocks: int) -> "DiskSpaceMap":
        """sm_ll_new_disk + extend: empty ref-count and index trees, and a
        zeroed bitmap for every 16,320 blocks."""
        sm = cls(tm, np.zeros(nr_blocks, dtype=np.uint32))
        sm.ref_count_root = bw.empty(tm, 4)
        sm.bitmap_root = bw.empty(tm, 16)
        sm.index_entries = np.zeros(0, dtype=INDEX_ENTRY_DTYPE)
        sm._extend_bitmaps(nr_bitmaps(nr_blocks))
        return sm

    def _extend_bitmaps(self, n: int) -> None:
        old = len(self.index_entries)
        ies = np.zeros(n, dtype=INDEX_ENTRY_DTYPE)
        ies[:old] = self.index_entries
        for i in range(old, n):
            b, _ = self.tm.new_block(BITMAP)
            ies[i] = (b, ENTRIES_PER_BITMAP, 0)
            self.bitmap_root, _ = bw.insert(self.tm, self.bitmap_root, [i], ies[i:i + 1].view(np.uint8).copy(),
                                            INDEX_VALUE)
        self.index_entries = ies

    @classmethod
    def load(cls, tm: TransactionManager, root: SmRoot, count: np.ndarray, index: list) -> "DiskSpaceMap":
        sm = cls(tm, count)
        sm.bitmap_root = root.bitmap_root
        sm.ref_count_root = root.ref_count_root
        sm.index_entries = np.array(index, dtype=INDEX_ENTRY_DTYPE)
        return sm

    def extend(self, nr_blocks: int) -> None:
        """Grow to ``nr_blocks`` (dm_sm_extend)."""
        if nr_blocks < self.nr_blocks:
            raise ValueError(f"a space map cannot shrink ({self.nr_blocks} -> {nr_blocks} blocks)")
        n = self.nr_blocks
        grow = nr_blocks - n
        committed = np.zeros(nr_blocks + nr_bitmaps(nr_blocks), dtype=np.uint32)
        committed[:n] = self.committed[:n]
        committed[nr_blocks:nr_blocks + len(self.changed)] = self.changed
        self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.uint32)])
        self.committed = committed
        self.free = np.concatenate([self.free, np.ones(grow, dtype=bool)])
        self._extend_bitmaps(nr_bitmaps(nr_blocks))

    # ------------------------------------------------------------- counts
    def alloc(self) -> int | None:
        """dm_sm_new_block: the lowest block free now and at the last
        commit from the cursor (wrapping once), count 1; None when full."""
        b = self.take_free()
        if b >= 0:
            self.changed[b // ENTRIES_PER_BITMAP] = 1
            return b
        return None

    def inc(self, blocks) -> None:
        b = np.asarray(blocks, dtype=np.int64)
        np.add.at(self.count, b, 1)
        self.free[b] = False
        self.changed[b // ENTRIES_PER_BITMAP] = 1

    def dec(self, blocks) -> None:
        b = np.asarray(blocks, dtype=np.int64)
        if np.any(self.count[b] == 0):
            bad = int(b[np.flatnonzero(self.count[b] == 0)[0]])
            raise errors.MetadataCorruptError(f"metadata corrupt: data block {bad} released with count 0")
        np.subtract.at(self.count, b, 1)
        self.changed[b // ENTRIES_PER_BITMAP] = 1
        back = b[(self.count[b] == 0) & (self.committed[b] == 0)]
        self.free[back] = True  # allocated and released in this transaction

    # ------------------------------------------------------------- commit
    def commit(self) -> SmRoot:
        """sm_disk_commit: write changed bitmaps, index entries and
        ref counts; returns the root for the superblock."""
        tm = self.tm
        n = self.nr_blocks
        flagged = np.flatnonzero(self.changed).tolist()
        parts = []
        touched = []  # bitmaps with a count that really changed
        for i in flagged:
            lo, hi = i * ENTRIES_PER_BITMAP, min(n, (i + 1) * ENTRIES_PER_BITMAP)
            parts.append(lo + np.flatnonzero(self.count[lo:hi] != self.committed[lo:hi]))
            if len(parts[-1]):
                touched.append(i)
        changed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        rc = changed[(self.count[changed] >= 3) | (self.committed[changed] >= 3)]
        if self.fast:
            self.ref_count_root = tm.update_ref_counts(self.ref_count_root, rc, self.count[rc], False)
        else:
            for b in rc.tolist():
                c = int(self.count[b])
                if c >= 3:
                    self.ref_count_root, _ = bw.insert(tm, self.ref_count_root, [b],
                                                       np.array([c], dtype="<u4").view(np.uint8), COUNT_VALUE)
                else:
                    self.ref_count_root, _ = bw.remove(tm, self.ref_count_root, [b], COUNT_VALUE)
        for i in touched:
            lo = i * ENTRIES_PER_BITMAP
            nb, blk, _ = tm.shadow(int(self.index_entries[i]["blocknr"]), BITMAP)
            write_bitmap_entry(blk, self.index_entries[i:i + 1], self.count[lo:lo + ENTRIES_PER_BITMAP],
                               self.committed[lo:min(n, lo + ENTRIES_PER_BITMAP)], nb)
            self.bitmap_root, _ = bw.insert(tm, self.bitmap_root, [i], self.index_entries[i:i + 1].view(np.uint8).copy(),
                                            INDEX_VALUE)
        for i in flagged:
            lo, hi = i * ENTRIES_PER_BITMAP, min(n, (i + 1) * ENTRIES_PER_BITMAP)
            cur = self.count[lo:hi]
            self.nr_allocated += int(np.count_nonzero(cur)) - int(np.count_nonzero(self.committed[lo:hi]))
            self.committed[lo:hi] = cur
            self.free[lo:hi] = cur == 0
        self.changed[:] = 0
        self.begin = 0
        return SmRoot(n, self.nr_allocated, self.bitmap_root, self.ref_count_root)

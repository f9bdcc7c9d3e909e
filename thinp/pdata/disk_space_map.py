"""dm's disk space map (data blocks), counts in RAM, written at commit.

``count`` (uint32[nr_blocks]) holds every data block's reference count now.
``committed`` holds the counts as of the last commit, then the bitmaps'
changed flags (the kernels get it as ``dcommitted``).  The counts, flags,
cursor and allocation are :class:`~thinp.pdata.space_map.RefCounts`,
shared with the metadata space map.  On disk (dm-space-map-disk.c): one
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
#: ``st`` (the kernels' ``dst``): 0 the allocation cursor; DST_NO_WRAP 1
#: when allocation does not wrap (before 5.14); DST_NR how many bitmap
#: blocks follow from DST_BITMAPS; DST_INDEX the index tree's root when
#: entries are saved at once (before 5.14), else -1; DST_RC the ref-count
#: tree's root when the kernels change it as counts of 3 and more move
#: (dm's way), -1 when the commit does; DST_RC_HALVES 1 when that tree
#: splits even halves; DST_SP four words of the kernels' scratch;
#: DST_RC_LEAF the tree's leaf the kernels' last count went to (-1: none;
#: reset for each kernel call, as inc/dec change the tree between them),
#: then four words about it (the kernels' data_ref_count_step)
DST_NO_WRAP, DST_NR, DST_INDEX, DST_RC, DST_RC_HALVES, DST_SP, DST_RC_LEAF, DST_BITMAPS = 1, 2, 3, 4, 5, 6, 10, 15
IE_CACHE_SIZE = 64
COUNT_VALUE = bw.ValueType(4)


class DiskSpaceMap(RefCounts):
    """The data space map: counts, allocation, and its commit."""

    def __init__(self, tm: TransactionManager, count: np.ndarray, split: str = "current"):
        super().__init__(count, DST_BITMAPS + nr_bitmaps(count.shape[0]))
        self.tm = tm
        #: the btree split rule of its index and ref-count trees: the same
        #: as the mapping trees' (dm-btree.c's insert serves every tree;
        #: kernels before 5.15 and thin_restore 0.9.0 split even halves)
        self.split = split
        self.bitmap_root = 0
        self.ref_count_root = 0
        self.index_entries = np.zeros(0, dtype=INDEX_ENTRY_DTYPE)
        #: ref counts through the numba kernel (False: the Python btree)
        self.fast = True
        #: dm's index-entry cache: slot -> bitmap whose entry waits for the commit
        self._ie_cache: dict[int, int] = {}
        #: the ref-count tree waits for the commit this transaction: a
        #: count changed the userspace tools' way (``shadow=False``), which
        #: leaves the tree to the commit as it leaves the bitmaps.  Else
        #: every count of 3 or more changes the tree as it moves, as dm's
        #: sm_ll_inc/sm_ll_dec do, and the commit finds it current.
        self._rc_deferred = False
        #: bitmaps shadowed since the commit by :meth:`shadow_bitmaps`: the
        #: commit writes them and their entries even when their counts came
        #: back to the committed ones (the index must name the copy)
        self._shadowed: set[int] = set()

    @classmethod
    def format(cls, tm: TransactionManager, nr_blocks: int, split: str = "current") -> "DiskSpaceMap":
        """sm_ll_new_disk + extend: empty index and ref-count trees (in
        that order), and a zeroed bitmap for every 16,320 blocks."""
        sm = cls(tm, np.zeros(nr_blocks, dtype=np.uint32), split)
        sm.bitmap_root = bw.empty(tm, 16)
        sm.ref_count_root = bw.empty(tm, 4)
        sm.index_entries = np.zeros(0, dtype=INDEX_ENTRY_DTYPE)
        sm._extend_bitmaps(nr_bitmaps(nr_blocks))
        return sm

    def _extend_bitmaps(self, n: int) -> None:
        old = len(self.index_entries)
        ies = np.zeros(n, dtype=INDEX_ENTRY_DTYPE)
        ies[:old] = self.index_entries
        self.index_entries = ies
        for i in range(old, n):
            b, _ = self.tm.new_block(BITMAP)
            ies[i] = (b, ENTRIES_PER_BITMAP, 0)
            if self.tm.index_cache:
                # dm since 5.14 keeps index entries in a 64-slot cache
                # (slot i * 4294967291 mod 64) and writes them at the commit,
                # or when another entry needs the slot
                slot = (i * 4294967291) & (IE_CACHE_SIZE - 1)
                held = self._ie_cache.get(slot)
                if held is not None and held != i:
                    self._save_ie(held)
                self._ie_cache[slot] = i
            else:
                self._save_ie(i)  # older kernels insert it at once

    @property
    def wrap(self) -> bool:
        """As the metadata's: both space maps changed together in 5.14."""
        return self.tm.rolling_cursor

    def kernel_state(self, shadow: bool = True) -> np.ndarray:
        """``st`` holding the bitmaps' blocks (and, before 5.14, the index
        root), for a kernel that allocates data blocks and shadows their
        bitmaps as dm does (mapping_tree.shadow_data_bitmap); :meth:`from_kernel`
        after it.  ``shadow=False``: none are shadowed (the tools' way, as
        in :meth:`inc`)."""
        n = len(self.index_entries)
        if self.st.shape[0] < DST_BITMAPS + n:
            st = np.zeros(DST_BITMAPS + n, dtype=np.int64)
            st[:DST_BITMAPS] = self.st[:DST_BITMAPS]
            self.st = st
        self.st[DST_NO_WRAP] = 0 if self.wrap else 1
        self.st[DST_NR] = n if shadow else 0
        self.st[DST_INDEX] = -1 if self.tm.index_cache else self.bitmap_root
        if not shadow:
            self._rc_deferred = True
        self.st[DST_RC] = -1 if self._rc_deferred else self.ref_count_root
        self.st[DST_RC_HALVES] = 1 if self.split == "halves" else 0
        self.st[DST_RC_LEAF] = -1
        self.st[DST_BITMAPS:DST_BITMAPS + n] = self.index_entries["blocknr"]
        return self.st

    def from_kernel(self) -> None:
        """Take the bitmaps the kernel shadowed (see :meth:`kernel_state`)."""
        n = int(self.st[DST_NR])
        now = self.st[DST_BITMAPS:DST_BITMAPS + n]
        moved = np.flatnonzero(now != self.index_entries["blocknr"][:n])
        if len(moved):
            self.index_entries["blocknr"][moved] = now[moved]
            self._shadowed.update(moved.tolist())
        if not self.tm.index_cache:
            self.bitmap_root = int(self.st[DST_INDEX])
        if self.st[DST_RC] >= 0:
            self.ref_count_root = int(self.st[DST_RC])

    def _write_bitmap(self, i: int) -> None:
        """Bitmap ``i``'s commit: shadowed (a no-op when this transaction
        has already), its entries and index entry written, the entry saved
        in the index tree (in place where dm's insert would only descend)."""
        tm = self.tm
        lo = i * ENTRIES_PER_BITMAP
        ie = self.index_entries[i:i + 1]
        nb, blk, _ = tm.shadow(int(ie["blocknr"][0]), BITMAP)
        write_bitmap_entry(blk, ie, self.count[lo:lo + ENTRIES_PER_BITMAP],
                           self.committed[lo:min(self.nr_blocks, lo + ENTRIES_PER_BITMAP)], nb)
        v = ie.view(np.uint8).copy()
        if not bw.overwrite_in_place(tm, self.bitmap_root, i, v, split=self.split):
            self.bitmap_root, _ = bw.insert(tm, self.bitmap_root, [i], v, INDEX_VALUE, split=self.split)

    def _write_bitmaps(self, bitmaps: np.ndarray, written=None) -> None:
        """:meth:`_write_bitmap` for each of ``bitmaps`` (ascending), the
        same allocations in the same order, in few kernel calls: a bitmap
        this transaction has shadowed already is shadowed again as itself
        (nothing allocated), so over a run of those the bitmaps are written
        first, in one pass, then their index entries, in place up to the
        first that needs dm's insert (which may allocate: it goes through
        the btree module, then the kernel goes on).  Writing the bitmaps
        before the entries changes no allocation: neither allocates, and
        the inserts change only metadata counts, not these blocks'.
        ``written``: bitmaps whose blocks and entries :meth:`_first_pass`
        wrote already (their index entries are still saved here)."""
        from ._btree_kernels import overwrite_entries_in_place, write_bitmaps

        if not len(bitmaps):
            return
        tm = self.tm
        blk = tm.bm.blocks
        m64, m32 = blk.view(np.uint64), blk.view(np.uint32)
        ie64 = self.index_entries.view(np.uint64).reshape(-1, 2)
        old = self.index_entries["blocknr"][bitmaps].astype(np.int64)
        ready = (tm.txn[old] != 0) & (tm.count[old] == 1)
        out = np.zeros(2, dtype=np.int64)
        halves = self.split == "halves"
        n = len(bitmaps)
        j = 0
        while j < n:
            if not ready[j]:
                self._write_bitmap(int(bitmaps[j]))  # its shadow allocates
                j += 1
                continue
            e = j + int(np.argmin(ready[j:])) if not ready[j:].all() else n
            run = bitmaps[j:e]
            todo = run if written is None or not len(written) else run[~np.isin(run, written)]
            if len(todo):
                write_bitmaps(m64, self.count, self.committed, self.nr_blocks, todo, ie64, out)
            k = 0
            while k < len(run):
                k = overwrite_entries_in_place(m64, m32, tm.count, tm.txn, self.bitmap_root, run, ie64, halves, k)
                if k < len(run):
                    i = int(run[k])
                    v = self.index_entries[i:i + 1].view(np.uint8).copy()
                    self.bitmap_root, _ = bw.insert(tm, self.bitmap_root, [i], v, INDEX_VALUE, split=self.split)
                    k += 1
            j = e

    def _save_ie(self, i: int) -> None:
        ie = self.index_entries[i:i + 1].view(np.uint8).copy()
        self.bitmap_root, _ = bw.insert(self.tm, self.bitmap_root, [i], ie, INDEX_VALUE, split=self.split)

    @classmethod
    def load(cls, tm: TransactionManager, root: SmRoot, count: np.ndarray, index: list,
             split: str = "current") -> "DiskSpaceMap":
        sm = cls(tm, count, split)
        sm.bitmap_root = root.bitmap_root
        sm.ref_count_root = root.ref_count_root
        sm.index_entries = np.array(index, dtype=INDEX_ENTRY_DTYPE)
        return sm

    def extend(self, nr_blocks: int) -> None:
        """Grow to ``nr_blocks`` (dm_sm_extend)."""
        if nr_blocks < self.nr_blocks:
            raise ValueError(f"a space map cannot shrink ({self.nr_blocks} -> {nr_blocks} blocks)")
        self.grow(nr_blocks)
        self._extend_bitmaps(nr_bitmaps(nr_blocks))

    # ------------------------------------------------------------- counts
    def alloc(self) -> int | None:
        """dm_sm_new_block: the lowest block free now and at the last
        commit from the cursor (wrapping once), count 1; None when full."""
        b = self.take_free()
        if b < 0:
            return None
        self.shadow_bitmaps(np.array([b]))
        return b

    def shadow_bitmaps(self, blocks) -> None:
        """sm_ll_mutate's shadow_bitmap: the first change of a data count
        in a transaction shadows its bitmap there and then, so the copy
        takes the metadata block the allocator hands out at that moment
        (before the btree nodes of the mapping that needed the data block).
        Before 5.14 the index entry is saved at once too (the index tree's
        path is shadowed then); since, it waits in the cache for the commit.
        Done at every change of a count, as dm's sm_ll_inc/sm_ll_dec do:
        where a data block is allocated, where a mapping's block is
        replaced or removed, where a shared leaf's blocks gain a reference
        (here, and in the mapping kernels through ``dst``).  The bitmaps
        are shadowed in the order ``blocks`` first reach them."""
        bm = np.asarray(blocks, dtype=np.int64) // ENTRIES_PER_BITMAP
        u, first = np.unique(bm, return_index=True)
        for i in u[np.argsort(first)].tolist():
            old = int(self.index_entries["blocknr"][i])
            if self.tm.txn[old]:
                continue  # this transaction's already
            nb, _, _ = self.tm.shadow(old, BITMAP)
            self.index_entries["blocknr"][i] = nb
            self._shadowed.add(i)
            if not self.tm.index_cache:
                self._save_ie(i)

    def inc(self, blocks, shadow: bool = True) -> None:
        """One more reference on each of ``blocks``; ``shadow=False`` leaves
        the bitmaps to the commit, as the userspace tools (thin_restore,
        thin_repair) that build a whole image in one transaction do."""
        b = np.asarray(blocks, dtype=np.int64)
        if not shadow:
            self._rc_deferred = True
        elif not self._rc_deferred and np.any(self.count[b] >= 2):
            self._step_each(b, 1)
            return
        u = np.unique(b)
        before = int(np.count_nonzero(self.count[u]))
        np.add.at(self.count, b, 1)
        self._add_used(len(u) - before)
        self.free[b] = False
        self.touch(b)
        if shadow:
            self.shadow_bitmaps(b)

    def _step_each(self, blocks: np.ndarray, delta: int) -> None:
        """:meth:`inc` (``delta`` 1) or :meth:`dec` (-1) block by block, as
        dm's sm_ll_inc/sm_ll_dec go when a count of 3 or more moves: each
        block's bitmap shadowed, its count changed, and its ref-count tree
        entry changed there and then (:meth:`TransactionManager.ref_count_step`),
        so the tree's nodes are shadowed between the callers' blocks."""
        legacy = not self.tm.rolling_cursor
        for p in blocks.tolist():
            self.shadow_bitmaps(np.array([p]))
            c = int(self.count[p])
            if delta > 0:
                if c == 0:
                    self._add_used(1)
                self.count[p] = c + 1
                self.free[p] = False
            else:
                self.count[p] = c - 1
                if c == 1:
                    self._add_used(-1)
                    if self.committed[p] == 0:
                        self.free[p] = True
            self.touch(np.array([p]))
            if c >= (2 if delta > 0 else 3):
                self.ref_count_root = self.tm.ref_count_step(self.ref_count_root, p, c, delta > 0,
                                                             self.split == "halves", legacy)

    def uncount(self, block: int) -> None:
        """Drop one reference on ``block`` without touching its bitmap, for
        a block whose next :meth:`inc` in this transaction restores it
        (thinp.thin.pool's model of dm's data block counted before the
        reserve commit and mapped after it: the pair leaves the bitmap as
        the mapping alone leaves it)."""
        if self.count[block] == 0:
            raise errors.MetadataCorruptError(f"metadata corrupt: data block {block} released with count 0")
        self.count[block] -= 1
        if self.count[block] == 0:
            self._add_used(-1)

    def dec(self, blocks) -> None:
        b = np.asarray(blocks, dtype=np.int64)
        if np.any(self.count[b] == 0):
            bad = int(b[np.flatnonzero(self.count[b] == 0)[0]])
            raise errors.MetadataCorruptError(f"metadata corrupt: data block {bad} released with count 0")
        if not self._rc_deferred and np.any(self.count[b] >= 3):
            self._step_each(b, -1)
            return
        u = np.unique(b)
        np.subtract.at(self.count, b, 1)
        self._add_used(-int(np.count_nonzero(self.count[u] == 0)))
        self.touch(b)
        self.shadow_bitmaps(b)
        back = b[(self.count[b] == 0) & (self.committed[b] == 0)]
        self.free[back] = True  # allocated and released in this transaction

    # ------------------------------------------------------------- commit
    def _first_pass(self):
        """:meth:`ref_count_changes` in one pass with the whole commit of
        every flagged bitmap already shadowed in this transaction (its
        block and index entry written, its counts settled: the counts are
        read once, not three times; after CoW of a snapshot, 62 bitmaps of
        16,320 counts).  Returns (blocks, counts, bitmaps whose counts
        moved, the bitmaps done here); the blocks and counts are collected
        only when the transaction left the ref-count tree to this commit
        (else they come back empty: the tree is current)."""
        from ._btree_kernels import commit_ready_bitmaps

        flagged = self.flagged_bitmaps()
        blocks, counts = self.scratch_for(len(flagged))
        if not len(flagged):
            return blocks[:0], counts[:0], [], flagged
        tm = self.tm
        old = self.index_entries["blocknr"][flagged].astype(np.int64)
        ready = ((tm.txn[old] != 0) & (tm.count[old] == 1)).astype(np.uint8)
        if self._shadowed:
            ready[ready != 0] = [1 if i in self._shadowed else 2 for i in flagged[ready != 0].tolist()]
        else:
            ready[ready != 0] = 2
        has_diff = np.zeros(len(flagged), dtype=np.uint8)
        k = commit_ready_bitmaps(tm.bm.blocks.view(np.uint64), self.count, self.committed, self.free, flagged, ready,
                                 self.index_entries.view(np.uint64).reshape(-1, 2), blocks, counts, has_diff,
                                 np.zeros(2, dtype=np.int64), bool(self._rc_deferred))
        return blocks[:k], counts[:k], flagged[has_diff != 0].tolist(), flagged[ready == 3]

    def commit(self) -> SmRoot:
        """sm_disk_commit: write changed bitmaps and index entries; returns
        the root for the superblock.

        The ref-count tree is current already: dm's sm_ll_inc/sm_ll_dec
        change it as each count reaches 3 or moves above it (inside
        inc_children of the leaf that raised the counts, or at the dec of
        a replaced mapping), and so do thinp's kernels (``dst[DST_RC]``)
        and :meth:`inc`/:meth:`dec`.  Only a transaction that changed
        counts the tools' way (``shadow=False``) leaves the tree to this
        commit, in block order."""
        tm = self.tm
        n = self.nr_blocks
        for slot in sorted(self._ie_cache):  # disk_ll_commit: the cache's entries, by slot
            self._save_ie(self._ie_cache[slot])
        self._ie_cache.clear()
        done = None
        if self.fast:
            blocks, counts, bitmaps, done = self._first_pass()
            if self._shadowed:
                bitmaps = sorted(set(bitmaps) | self._shadowed)
            if self._rc_deferred:
                self.ref_count_root = tm.update_ref_counts(self.ref_count_root, blocks, counts,
                                                           self.split == "halves")
        else:
            changed, bitmaps = self.changed_blocks()
            if self._shadowed:
                bitmaps = sorted(set(bitmaps) | self._shadowed)
            rc = changed[(self.count[changed] >= 3) | (self.committed[changed] >= 3)]
            if not self._rc_deferred:
                rc = rc[:0]  # the tree changed as the counts moved
            for b in rc.tolist():
                c = int(self.count[b])
                if c >= 3:
                    self.ref_count_root, _ = bw.insert(tm, self.ref_count_root, [b],
                                                       np.array([c], dtype="<u4").view(np.uint8), COUNT_VALUE,
                                                       split=self.split)
                else:
                    self.ref_count_root, _ = bw.remove(tm, self.ref_count_root, [b], COUNT_VALUE)
        if self.fast:
            self._write_bitmaps(np.asarray(bitmaps, dtype=np.int64), done)
        else:
            for i in bitmaps:
                self._write_bitmap(i)
        self._shadowed.clear()
        self._rc_deferred = False
        cursor = self.begin
        self.settle(done)
        if self.tm.rolling_cursor:
            self.begin = cursor  # 5.14+: sm_disk_commit no longer restarts it at 0
        return SmRoot(n, self.nr_allocated, self.bitmap_root, self.ref_count_root)

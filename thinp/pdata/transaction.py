"""dm's transaction manager with its metadata space map, in RAM between commits.

Promise (as dm-transaction-manager.h's): nothing the last commit references
is ever written in place.  A block is changed only after :meth:`shadow`
gives a private copy (or the block itself when it was allocated or shadowed
in this transaction and nobody else references it); a block freed in this
transaction is not handed out again before the commit.  So a process killed
at any instant leaves the file at its last commit.

State (plain ndarrays; count, committed, free and st as in
:class:`~thinp.pdata.space_map.RefCounts`, st[1] allocations, st[2] shadows,
st[3] the number of metadata bitmaps, st[4 + i] the block of bitmap i,
st[ST_NO_WRAP] 1 when allocation does not wrap, before 5.14):

txn        uint8[nr_blocks]  1 = allocated or shadowed in this transaction
kind       uint8[nr_blocks]  the validator of such a block (block.KIND_*),
           sealed (location + checksum) at commit

On disk the metadata space map is dm's (see :mod:`thinp.pdata.space_map`):
bitmap blocks listed by a single index block, and a ref-count btree for
counts >= 3.  :meth:`commit_space_map` writes it; its own blocks are shadowed
like any others, which changes counts, so it runs to a fixed point.

Placement follows dm-space-map-metadata.c: a metadata bitmap is shadowed
at the first change of one of its counts in a transaction (the copy is
allocated right after the block whose count changed), a count reaching 3
or leaving it updates the ref-count tree at once, and the index block is
shadowed at the commit when a count changed.  The allocation cursor starts
at block 0 when the device is opened; ``rolling_cursor`` keeps it across
commits, wrapping at the end (Linux 5.14 and later: "don't reset space map
allocation cursor when committing"); without it every commit restarts it
at 0 and a search for a free block ends at the last block, as older
kernels' sm_ll_find_free_block did: a block released in the transaction is
behind the cursor, so it is not handed out again before the commit.
"""
from __future__ import annotations

import numpy as np

from .. import errors
from .block import BITMAP, BTREE_NODE, INDEX, KIND_OF, BlockManager, Validator
from .space_map import ENTRIES_PER_BITMAP, INDEX_ENTRY_DTYPE, MAX_METADATA_BITMAPS, RefCounts, SmRoot, nr_bitmaps

#: where the metadata bitmaps' blocks start in ``st``
ST_BITMAPS = 4
#: the ``st`` slot after the bitmaps': 1 when allocation does not wrap
#: (the kernels read it as _btree_kernels.ST_NO_WRAP)
ST_NO_WRAP = ST_BITMAPS + MAX_METADATA_BITMAPS
#: :meth:`TransactionManager.zero_ahead`: at least this many blocks past
#: the cursor are kept zeroed (4 MiB); the window is at most this many
#: (64 MiB), so the file's allocated size runs at most 128 MiB past the
#: cursor (a sparse file's ``du`` grows by that much, never its bytes)
ZERO_AHEAD_MIN = 1024
ZERO_AHEAD_MAX = 1 << 14


class TransactionManager(RefCounts):
    """Shadowing, allocation and reference counts of metadata blocks."""

    NO_WRAP_SLOT = ST_NO_WRAP

    def __init__(self, bm: BlockManager, count: np.ndarray):
        self.bm = bm  # (first: ``free`` below asks it)
        #: st: 0 allocation cursor, 1 allocations, 2 shadows, 3 bitmaps,
        #: 4.. their blocks (the kernels shadow a bitmap from here), then
        #: the no-wrap flag
        super().__init__(count, ST_NO_WRAP + 1)
        self.txn = np.zeros(self.count.shape[0], dtype=np.uint8)
        self.kind = np.zeros(self.count.shape[0], dtype=np.uint8)
        # the metadata space map's on-disk structure
        self.bitmap_blocks = []
        self.index_block = 0
        self.ref_count_root = 0
        self.index_entries = np.zeros(0, dtype=INDEX_ENTRY_DTYPE)
        #: ref-count trees through the numba kernel (False: the Python btree,
        #: the reference the kernel is tested against)
        self.fast = True
        self.rolling_cursor = True
        #: the data space map keeps index entries in dm's 64-slot cache until
        #: the commit (5.14 and later); False: each is written at once
        self.index_cache = True
        #: the ref-count tree's split rule when it changes between commits
        self.halves = False
        #: block -> the count the ref-count tree holds for it now, for the
        #: blocks updated at once in this transaction (absent: as committed)
        self.rc_held: dict[int, int] = {}
        self._in_rc = False
        self._bm_busy: set[int] = set()
        #: set while the Python btree stands in for the mapping kernels:
        #: those shadow a bitmap only when they allocate from it and leave
        #: ref-count entries to the commit, and so does this manager then
        self.as_kernels = False
        #: allocations (st[1]) when the open transaction began
        self.allocs_at_begin = 0
        #: blocks the last commit's own part allocated (its shadows: details,
        #: space maps, ref counts left to it), from :meth:`zero_for_commit`
        #: to :meth:`end_transaction`; what the next one zeroes ahead for
        self.commit_allocs = 0
        self._commit_from: int | None = None

    @property
    def rolling_cursor(self) -> bool:
        """The allocation cursor survives commits and a search wraps at the
        end (dm since 5.14); False: every commit restarts the cursor at
        block 0 and a search stops at the end, as older kernels do (for
        the data space map too: DiskSpaceMap reads it here)."""
        return self.wrap

    @rolling_cursor.setter
    def rolling_cursor(self, on: bool) -> None:
        self.wrap = on

    @property
    def free(self) -> np.ndarray:
        """bool[nr_blocks], as :class:`RefCounts` has it.  Whoever asks
        for it may allocate or free a block, so the zeroing of holes ahead
        of the cursor that a commit left running
        (:meth:`zero_ahead` with ``behind=True``) is waited for first:
        this is the ordering that makes the zeroing safe."""
        self.bm.wait_zeroing()  # (returns at once when none runs)
        return self._free

    @free.setter
    def free(self, a: np.ndarray) -> None:
        self._free = a

    @property
    def bitmap_blocks(self) -> np.ndarray:
        """The metadata bitmaps' blocks (a view of ``st``)."""
        return self.st[ST_BITMAPS:ST_BITMAPS + int(self.st[3])]

    @bitmap_blocks.setter
    def bitmap_blocks(self, blocks) -> None:
        n = len(blocks)
        self.st[ST_BITMAPS:ST_BITMAPS + n] = np.asarray(blocks, dtype=np.int64)
        self.st[3] = n

    def grow(self, nr_blocks: int) -> None:
        """The metadata device grew to ``nr_blocks`` (new blocks free)."""
        n = self.nr_blocks
        super().grow(nr_blocks)
        self.txn = np.concatenate([self.txn, np.zeros(nr_blocks - n, dtype=np.uint8)])
        self.kind = np.concatenate([self.kind, np.zeros(nr_blocks - n, dtype=np.uint8)])

    @property
    def nr_allocs(self) -> int:
        return int(self.st[1])

    @property
    def nr_shadows(self) -> int:
        return int(self.st[2])

    # ------------------------------------------------------------ counts
    def inc(self, b: int, n: int = 1) -> None:
        if not self.as_kernels:
            self._shadow_bitmap_of(b)
        c = int(self.count[b])
        if c == 0 and n:
            self._add_used(1)
        self.count[b] += n
        self.free[b] = False
        self.changed[b // ENTRIES_PER_BITMAP] = 1
        if c + n >= 3 and not self.as_kernels:
            self._ref_count_now(b, c + n)

    def dec(self, b: int) -> int:
        """Drop one reference; returns the new count."""
        c = int(self.count[b])
        if c == 0:
            raise errors.MetadataCorruptError(f"metadata corrupt: block {b} released with count 0")
        if not self.as_kernels:
            self._shadow_bitmap_of(b)
        self.count[b] = c - 1
        self.changed[b // ENTRIES_PER_BITMAP] = 1
        if c == 1:
            self._add_used(-1)
            if self.committed[b] == 0:
                self.free[b] = True  # allocated and released in this transaction
        if c >= 3 and not self.as_kernels:
            self._ref_count_now(b, c - 1)
        return c - 1

    def _shadow_bitmap_of(self, b: int) -> None:
        """sm_ll_mutate's shadow_bitmap: the first change of a count in a
        transaction shadows that count's bitmap (a block of this
        transaction is written in place), taking the next free block."""
        i = b // ENTRIES_PER_BITMAP
        if i >= int(self.st[3]):
            return  # formatting: the bitmaps are not made yet
        old = int(self.st[ST_BITMAPS + i])
        if self.txn[old] or i in self._bm_busy:
            return  # this transaction's already, or being shadowed now
        self._bm_busy.add(i)
        try:
            nb = self.alloc()
        finally:
            self._bm_busy.discard(i)
        if nb is None:
            return  # full: the commit finds it unshadowed and fails there
        self.bm.raw(nb)[:] = self.bm.raw(old)  # a shadow is a copy (the commit rewrites the entries)
        self.txn[nb] = 1
        self.kind[nb] = KIND_OF[BITMAP.name]
        self.bm.forget(nb)
        self.st[ST_BITMAPS + i] = nb
        self.st[2] += 1
        self.dec(old)

    def _ref_count_now(self, b: int, c: int) -> None:
        """A count of 3 or more lives in the ref-count tree: dm updates the
        tree as the count changes (inserting, updating, or removing the
        entry when it falls below 3), so its nodes are shadowed then."""
        if self._in_rc or int(self.st[3]) == 0:
            return  # the tree's own blocks (never shared): the commit settles them
        want = c if c >= 3 else 0
        if self.rc_held.get(b, -1 if self.committed[b] >= 3 else 0) == want:
            return
        self._in_rc = True
        try:
            if self.fast:
                self.ref_count_root = self.update_ref_counts(self.ref_count_root, np.array([b]), np.array([want]),
                                                             self.halves)
            else:
                from . import btree_write as bw

                cv = bw.ValueType(4)
                if want:
                    self.ref_count_root, _ = bw.insert(self, self.ref_count_root, [b],
                                                       np.array([want], dtype="<u4").view(np.uint8), cv,
                                                       split="halves" if self.halves else "current")
                else:
                    self.ref_count_root, _ = bw.remove(self, self.ref_count_root, [b], cv)
        finally:
            self._in_rc = False
        self.rc_held[b] = want

    def is_shared(self, b: int) -> bool:
        return int(self.count[b]) > 1

    # -------------------------------------------------------- allocation
    def alloc(self) -> int | None:
        """A free block (count 1), or None when the device is full."""
        b = self.take_free()
        if b >= 0:
            self.st[1] += 1
            self._shadow_bitmap_of(b)
            return b
        return None

    def _alloc_or_raise(self) -> int:
        b = self.alloc()
        if b is None:
            raise errors.NoSpaceError(f"out of metadata space: all {self.nr_blocks} metadata blocks are in use")
        return b

    def new_block(self, v: Validator = BTREE_NODE) -> tuple[int, np.ndarray]:
        """dm_tm_new_block: a zeroed block of this transaction."""
        b = self._alloc_or_raise()
        blk = self.bm.raw(b)
        blk[:] = 0
        self.txn[b] = 1
        self.kind[b] = KIND_OF[v.name]
        self.bm.forget(b)
        return b, blk

    def bootstrap_block(self, v: Validator) -> int:
        """sm_bootstrap_new_block, as sm_metadata_extend uses it: the block
        at the cursor (the new area is free), zeroed, this transaction's;
        no bitmap is shadowed for it here (the bootstrap allocator defers
        the count: :meth:`shadow_bitmap_of` when it goes in)."""
        b = self.take_free()
        if b < 0:
            raise errors.NoSpaceError(f"out of metadata space: all {self.nr_blocks} metadata blocks are in use")
        self.st[1] += 1
        self.bm.raw(b)[:] = 0
        self.txn[b] = 1
        self.kind[b] = KIND_OF[v.name]
        self.bm.forget(b)
        return b

    def shadow_bitmap_of(self, b: int) -> None:
        """The shadow of the bitmap holding block ``b``'s count, as the
        first change of one of its counts in a transaction makes it."""
        self._shadow_bitmap_of(b)

    def shadow(self, b: int, v: Validator = BTREE_NODE) -> tuple[int, np.ndarray, bool]:
        """dm_tm_shadow_block: (block, its bytes, inc_children).  The block
        itself when it is this transaction's and not shared; else a copy,
        the original losing one reference.  ``inc_children`` says the
        original was shared, so the caller must take a reference on
        everything the copy points to."""
        shared = int(self.count[b]) > 1
        if self.txn[b] and not shared:
            return b, self.bm.raw(b), False
        self.bm.read(b, v)  # validate what is copied
        nb = self._alloc_or_raise()
        self.dec(b)
        self.st[2] += 1
        blk = self.bm.raw(nb)
        blk[:] = self.bm.raw(b)
        self.txn[nb] = 1
        self.kind[nb] = KIND_OF[v.name]
        self.bm.forget(nb)
        return nb, blk, shared

    def write_block(self, b: int) -> np.ndarray:
        """Bytes of a block of this transaction (already shadowed)."""
        return self.bm.raw(b)

    def zero_ahead(self, nr_blocks: int, behind: bool = False, sync: bool = True) -> int:
        """Have the block manager zero the free holes past the allocation
        cursor (wrapping at the end), so the blocks the coming allocations
        take are in the page cache and backed on disk before anything is
        written to them (:meth:`BlockManager.zero_holes`: cheaper than
        faulting on holes); returns the number of blocks zeroed.
        ``behind``: in a thread (:meth:`BlockManager.zero_holes_behind`),
        returning 0 at once; the next use of :attr:`free` waits for it
        (``sync``: whether that thread fdatasyncs its zeros).

        Nothing happens while the ``nr_blocks`` blocks from the cursor on
        hold no hole; once they do, ``2 * nr_blocks`` are zeroed, so a
        run of small transactions finds its blocks ready and only one in
        many pays (with its fdatasync allocating them in the filesystem).
        Only free blocks are written (free now and at the last commit),
        and only where the file is a hole, so neither the committed state
        nor any byte read changes."""
        n = self.nr_blocks
        nr = min(max(0, int(nr_blocks)), ZERO_AHEAD_MAX, n)
        b = min(self.begin, n)

        def spans(k):
            return [(lo, hi) for lo, hi in ((b, min(n, b + k)), (0, max(0, b + k - n))) if lo < hi]

        free = self.free  # (waits for any zeroing still running)
        if not any(self.bm.may_have_holes(lo, hi, free[lo:hi]) for lo, hi in spans(nr)):
            return 0
        if behind:
            self.bm.zero_holes_behind([(lo, hi, free[lo:hi]) for lo, hi in spans(min(2 * nr, n))], sync)
            return 0
        return sum(self.bm.zero_holes(lo, hi, free[lo:hi]) for lo, hi in spans(min(2 * nr, n)))

    def zero_for_commit(self) -> int:
        """At a commit's start: :meth:`zero_ahead` for the blocks the
        commit itself will allocate, in the foreground.  The transaction's
        writes' allocations are behind the cursor already (and were zeroed
        ahead by the last commit's zeroing behind), so they are not asked
        for again; the commit's own shadows are taken to be as many as the
        last commit's own (:attr:`commit_allocs`, measured: 2-7 blocks for
        a create_snap or a commit after 10,000 CoW writes), and the
        hysteresis zeroes twice that where any is a hole.  Returns the
        number of blocks zeroed."""
        self._commit_from = self.nr_allocs
        return self.zero_ahead(self.commit_allocs)

    @property
    def allocs_this_transaction(self) -> int:
        return self.nr_allocs - self.allocs_at_begin

    # ------------------------------------------------------------ commit
    def seal_dirty(self) -> np.ndarray:
        """Stamp location and checksum on every block written this
        transaction that is still in use; returns them (int64, ascending)."""
        from ._btree_kernels import sealable

        # a block of this transaction was allocated, so its bitmap is flagged
        flagged = self.flagged_bitmaps()
        out = np.empty(len(flagged) * ENTRIES_PER_BITMAP, dtype=np.int64)
        out = out[:sealable(self.txn, self.kind, self.count, flagged, out)]
        self.bm.seal_many(out, self.kind[out])
        return out

    def end_transaction(self) -> None:
        cursor = self.begin
        n = self.nr_blocks
        for i in self.settle().tolist():
            lo, hi = i * ENTRIES_PER_BITMAP, min(n, (i + 1) * ENTRIES_PER_BITMAP)
            self.bm.fresh[lo:hi] = 0
            self.txn[lo:hi] = 0
            self.kind[lo:hi] = 0
        self.rc_held.clear()
        if self.rolling_cursor:
            self.begin = cursor
        if self._commit_from is not None:
            self.commit_allocs = self.nr_allocs - self._commit_from
            self._commit_from = None
        self.allocs_at_begin = self.nr_allocs

    # --------------------------------------------- metadata space map
    def format_space_map(self, btree_empty) -> None:
        """Allocate the metadata space map of a new device, in dm's order
        (sm_ll_new_metadata + extend): the index block, the ref-count
        btree, then the bitmaps."""
        self.index_block, _ = self.new_block(INDEX)
        self.ref_count_root = btree_empty(self, 4)
        n = nr_bitmaps(self.nr_blocks)
        if n > MAX_METADATA_BITMAPS:
            raise ValueError(f"metadata device of {self.nr_blocks} blocks needs {n} bitmaps; "
                             f"dm's metadata space map holds at most {MAX_METADATA_BITMAPS}")
        self.index_entries = np.zeros(n, dtype=INDEX_ENTRY_DTYPE)
        self.index_entries["nr_free"] = ENTRIES_PER_BITMAP
        blocks = []
        for _ in range(n):
            b, _ = self.new_block(BITMAP)
            blocks.append(b)
        self.bitmap_blocks = blocks
        self.index_entries["blocknr"] = blocks

    def load_space_map(self, root: SmRoot, index: list) -> None:
        self.index_block = root.bitmap_root
        self.ref_count_root = root.ref_count_root
        self.bitmap_blocks = [b for b, _, _ in index]
        self.index_entries = np.array(index, dtype=INDEX_ENTRY_DTYPE)

    def update_ref_counts(self, root: int, blocks: np.ndarray, counts: np.ndarray, halves: bool) -> int:
        """The numba kernel over a ref-count tree at ``root``: each block of
        ``blocks`` in order set to its count (>= 3) or removed (< 3);
        returns the new root.  NoSpaceError when metadata ran out."""
        from . import _btree_kernels as BK

        if not len(blocks):
            return root
        blk = self.bm.blocks
        out = np.zeros(1, dtype=np.int64)
        r = BK.update_ref_counts(blk.view(np.uint64), blk.view(np.uint32), self.count, self.committed, self.free,
                                 self.txn, self.kind, self.bm.fresh, self.st, np.int64(root),
                                 _kernel_array(blocks, np.int64), _kernel_array(counts, np.int64), bool(halves), out)
        if r < 0:
            raise errors.NoSpaceError(f"out of metadata space: all {self.nr_blocks} metadata blocks are in use")
        return int(out[0])

    def ref_count_step(self, root: int, block: int, old: int, up: bool, halves: bool, legacy: bool) -> int:
        """A ref-count tree at ``root`` as ``block``'s count moves by one
        from ``old`` (up from 2 or more, down from 3 or more), changed as
        dm's sm_ll_inc/sm_ll_dec change it there and then (the numba
        kernel ``ref_count_step``; ``legacy``: before 5.14); returns the
        new root.  NoSpaceError when metadata ran out."""
        from . import _btree_kernels as BK

        blk = self.bm.blocks
        r = BK.ref_count_step(blk.view(np.uint64), blk.view(np.uint32), self.count, self.committed, self.free,
                              self.txn, self.kind, self.bm.fresh, self.st, np.int64(root), np.int64(block),
                              np.int64(old), bool(up), bool(halves), bool(legacy))
        if r == -2:
            raise errors.MetadataCorruptError(f"metadata corrupt: block {block} has count {old} but no entry in "
                                              f"the ref-count tree")
        if r < 0:
            raise errors.NoSpaceError(f"out of metadata space: all {self.nr_blocks} metadata blocks are in use")
        return int(r)

    def commit_space_map(self, rc_tree=None, *, split: str = "current") -> SmRoot:
        """Write the metadata space map for the counts as they are now.

        The ref-count btree is updated by the numba kernel (split rule
        ``split``), or, when :attr:`fast` is off, through ``rc_tree``:
        (set_fn, remove_fn), the btree module's insert/remove bound to this
        manager, returning new roots.  Bitmaps whose counts changed are
        shadowed, the ref-count tree updated, and the index block shadowed,
        until nothing moves."""
        # block -> what the ref-count tree holds for it now (absent: as committed)
        done_rc: dict[int, int] = dict(self.rc_held)
        # dm shadows the index block at the commit when a count changed
        any_change = bool(self.changed.any())
        while True:
            # counts >= 3 (or that were) go to the ref-count tree
            cand, _, bitmaps = self.ref_count_changes()
            moved = False
            todo_b, todo_c = [], []
            if done_rc:  # entries set at once, whose counts may have moved back since
                cand = np.union1d(cand, np.fromiter(done_rc, dtype=np.int64))
            for b in cand.tolist():
                c = int(self.count[b])
                want = c if c >= 3 else 0
                if done_rc.get(b, 0 if self.committed[b] < 3 else -1) == want:
                    continue
                done_rc[b] = want
                todo_b.append(b)
                todo_c.append(want)
            if todo_b:
                moved = True
                if self.fast:
                    self.ref_count_root = self.update_ref_counts(self.ref_count_root, np.array(todo_b),
                                                                 np.array(todo_c), split == "halves")
                else:
                    set_rc, remove_rc = rc_tree
                    for b, want in zip(todo_b, todo_c):
                        if want:
                            self.ref_count_root = set_rc(self.ref_count_root, b, want)
                        else:
                            self.ref_count_root = remove_rc(self.ref_count_root, b)
            for i in bitmaps:
                if not self.txn[self.bitmap_blocks[i]]:
                    # changed where nothing shadowed it yet (a kernel's
                    # inc or dec in another bitmap than its allocations')
                    self._shadow_bitmap_of(i * ENTRIES_PER_BITMAP)
                    moved = True
            if not self.txn[self.index_block] and (any_change or self.changed.any()):
                nb, _, _ = self.shadow(self.index_block, INDEX)
                self.index_block = nb
                moved = True
            if not moved:
                break
        # now write them: bitmaps and index entries from the final counts
        # (the last pass moved nothing, so its bitmaps are the final ones),
        # in one kernel call
        from ._btree_kernels import write_bitmaps

        blocks = self.bitmap_blocks
        todo = np.array(sorted(set(bitmaps).union(np.flatnonzero(self.txn[blocks]).tolist())), dtype=np.int64)
        if len(todo):
            self.index_entries["blocknr"][todo] = blocks[todo]
            write_bitmaps(self.bm.blocks.view(np.uint64), self.count, self.committed, self.nr_blocks, todo,
                          self.index_entries.view(np.uint64).reshape(-1, 2), np.zeros(2, dtype=np.int64))
        idx = self.bm.raw(self.index_block)
        idx[16:] = 0
        idx[16:16 + 16 * len(self.index_entries)] = self.index_entries.view(np.uint8)
        return SmRoot(self.nr_blocks, self.nr_used, self.index_block, self.ref_count_root)


def _kernel_array(a, dtype) -> np.ndarray:
    """``a`` as a contiguous array of ``dtype``, or of uint32 when it is
    one already (:meth:`RefCounts.ref_count_changes`' half-width blocks
    and counts: one more compiled signature, no copy)."""
    if isinstance(a, np.ndarray) and a.dtype == np.uint32:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=dtype)


def write_bitmap_entry(blk: np.ndarray, ie: np.ndarray, cur: np.ndarray, old: np.ndarray, b: int) -> None:
    """One bitmap's commit, shared by both space maps: its block ``b``
    (bytes ``blk``) gets the entries for counts ``cur`` and its index entry
    ``ie`` (a 1-element view) the location, nr_free and the hint after a
    transaction that moved the counts from ``old`` (one numba pass)."""
    from ._btree_kernels import write_bitmap as _write_bitmap

    out = np.zeros(2, dtype=np.int64)
    cur = np.ascontiguousarray(cur[:len(old)], dtype=np.uint32)
    _write_bitmap(blk.view(np.uint64).reshape(1, -1), 0, cur, np.ascontiguousarray(old, dtype=np.uint32), 0, len(cur),
                  int(ie["none_free_before"][0]), out)
    ie["nr_free"] = int(out[0])
    ie["none_free_before"] = int(out[1])
    ie["blocknr"] = b

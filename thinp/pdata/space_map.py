"""dm's space maps: reference counts of data and metadata blocks on disk.

Both kinds share one low-level layout (dm-space-map-common.h):

* **bitmap blocks** (salt BITMAP_CSUM_XOR): a 16-byte header (csum,
  not_used, blocknr) and 4080 bytes of 2-bit entries, 16,320 a block.  In
  each little-endian 64-bit word, entry j (0..31) is bits 2j (high) and
  2j+1 (low): 0 free, 1 and 2 the count, 3 "look in the ref-count tree".
* **index entries** (16 bytes): ``__le64 blocknr; __le32 nr_free;
  __le32 none_free_before`` for each bitmap.
* a **ref-count btree** (uint32 values) holds every count >= 3.
* the root (``disk_sm_root``, 32 bytes in the superblock): nr_blocks,
  nr_allocated, bitmap_root, ref_count_root.

The data ("disk") space map keeps its index entries in a btree (16-byte
values, keyed by bitmap number).  The metadata space map keeps them in one
index block (salt INDEX_CSUM_XOR: csum, padding, blocknr, then 255 entries),
so the metadata device holds at most 255 * 16,320 blocks (about 15.9 GiB).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import memory
from .block import BITMAP, INDEX, BlockManager, corrupt
from .btree import collect

ENTRIES_PER_BITMAP = (4096 - 16) * 4  # 16,320
MAX_METADATA_BITMAPS = 255
INDEX_ENTRY_DTYPE = np.dtype([("blocknr", "<u8"), ("nr_free", "<u4"), ("none_free_before", "<u4")])
SM_ROOT_DTYPE = np.dtype([("nr_blocks", "<u8"), ("nr_allocated", "<u8"),
                          ("bitmap_root", "<u8"), ("ref_count_root", "<u8")])


@dataclass
class SmRoot:
    nr_blocks: int
    nr_allocated: int
    bitmap_root: int
    ref_count_root: int

    @classmethod
    def unpack(cls, raw: np.ndarray) -> "SmRoot":
        r = raw[:32].view(SM_ROOT_DTYPE)[0]
        return cls(int(r["nr_blocks"]), int(r["nr_allocated"]), int(r["bitmap_root"]), int(r["ref_count_root"]))

    def pack(self, out: np.ndarray) -> None:
        out[:] = 0
        r = out[:32].view(SM_ROOT_DTYPE)
        r["nr_blocks"], r["nr_allocated"] = self.nr_blocks, self.nr_allocated
        r["bitmap_root"], r["ref_count_root"] = self.bitmap_root, self.ref_count_root


class RefCounts:
    """Both space maps' counts in RAM, between commits (dm keeps them in
    its bitmaps and ref-count tree; thinp reads them once on open):

    count      uint32[nr_blocks]  every block's reference count now
    committed  uint32[nr_blocks + nr_bitmaps + 1]  the counts as of the
               last commit, then one "changed since the commit" flag per
               bitmap of 16,320 blocks, then the running number of blocks
               whose count is non-zero now (:attr:`nr_used`).  Every change
               of ``count`` sets its flag and keeps the number (here, and in
               the numba kernels, which get this array as
               ``committed``/``dcommitted``; they read the number as
               ``committed[committed.shape[0] - 1]``), so a commit visits
               only the flagged bitmaps and costs nothing for the rest of
               the device, and the used count costs nothing at all.
    free       bool[nr_blocks]  free now and at the last commit: what
               allocation may hand out
    st         int64[nr_scalars]  scalars the kernels share; st[0] is the
               allocation cursor, restarted at 0 by every commit
    nr_allocated  blocks with a non-zero count as of the last commit

    Allocation is dm's: the lowest block free both now and at the last
    commit, from the cursor, wrapping once (sm_ll_find_common_free_block);
    without :attr:`wrap` (kernels before 5.14) the search ends at the last
    block, so a block allocated and released in the transaction (behind
    the cursor, which restarts at 0 at each commit) is not handed out
    again before the commit.
    """

    #: the ``st`` slot holding 1 when allocation must not wrap (see :attr:`wrap`)
    NO_WRAP_SLOT = 1

    def __init__(self, count: np.ndarray, nr_scalars: int):
        self.count = memory.copy(count, np.uint32)
        n = self.count.shape[0]
        self.committed = memory.zeros(n + nr_bitmaps(n) + 1, np.uint32)
        self.committed[:n] = self.count
        self.free = np.equal(self.count, 0, out=memory.zeros(n, np.bool_))
        self.st = np.zeros(nr_scalars, dtype=np.int64)
        self.nr_allocated = int(np.count_nonzero(self.count))
        self.committed[-1] = self.nr_allocated
        #: the blocks and counts scratch of :meth:`ref_count_changes`, kept
        #: between commits (fresh pages cost more than the pass over them)
        self._scratch = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32))

    @property
    def nr_blocks(self) -> int:
        return self.count.shape[0]

    @property
    def begin(self) -> int:
        return int(self.st[0])

    @begin.setter
    def begin(self, b: int) -> None:
        self.st[0] = b

    @property
    def wrap(self) -> bool:
        """Whether a search for a free block that reaches the end goes on
        from block 0 (Linux 5.14 and later); before, sm_ll_find_free_block
        searched from the cursor to the end only and failed there."""
        return not self.st[self.NO_WRAP_SLOT]

    @wrap.setter
    def wrap(self, on: bool) -> None:
        self.st[self.NO_WRAP_SLOT] = 0 if on else 1

    @property
    def nr_used(self) -> int:
        """Blocks with a non-zero count now: a running count, kept by every
        change of ``count`` (no scan)."""
        return int(self.committed[-1])

    @property
    def nr_free(self) -> int:
        return self.nr_blocks - self.nr_used

    def _add_used(self, delta: int) -> None:
        self.committed[-1] = int(self.committed[-1]) + delta

    @property
    def changed(self) -> np.ndarray:
        """uint32[nr_bitmaps]: the bitmaps' changed flags (a view)."""
        return self.committed[self.nr_blocks:-1]

    def touch(self, blocks) -> None:
        """Flag the bitmaps of these blocks as changed."""
        self.changed[np.asarray(blocks, dtype=np.int64) // ENTRIES_PER_BITMAP] = 1

    def flagged(self) -> list[tuple[int, int, int]]:
        """(bitmap, first block, one past the last) of each flagged bitmap."""
        n = self.nr_blocks
        return [(i, i * ENTRIES_PER_BITMAP, min(n, (i + 1) * ENTRIES_PER_BITMAP))
                for i in np.flatnonzero(self.changed).tolist()]

    def flagged_bitmaps(self) -> np.ndarray:
        """int64[]: the flagged bitmaps, ascending."""
        return np.flatnonzero(self.changed).astype(np.int64)

    def changed_blocks(self) -> tuple[np.ndarray, list[int]]:
        """The blocks whose count differs from the committed one
        (ascending), and the bitmaps that hold them."""
        parts, bitmaps = [], []
        for i, lo, hi in self.flagged():
            d = np.flatnonzero(self.count[lo:hi] != self.committed[lo:hi])
            if len(d):
                parts.append(lo + d)
                bitmaps.append(i)
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), bitmaps

    def ref_count_changes(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """What a commit's ref-count tree needs, in one pass over the
        flagged bitmaps (a numba kernel): the blocks whose count moved and
        is or was 3 or more (ascending), their counts now, and the bitmaps
        where any count moved (:meth:`changed_blocks`' second part).
        The blocks are uint32 where every block number fits (int64 past
        2**32 blocks) and the counts uint32, as ``count`` holds them: the
        commit after CoW of a snapshot streams ~900 K of each through the
        pass and the ref-count tree's update, half the bytes of int64s."""
        from ._btree_kernels import collect_ref_count_changes

        flagged = self.flagged_bitmaps()
        blocks, counts = self.scratch_for(len(flagged))
        if not len(flagged):
            return blocks[:0], counts[:0], []
        has_diff = np.zeros(len(flagged), dtype=np.uint8)
        k = collect_ref_count_changes(self.count, self.committed, flagged, blocks, counts, has_diff)
        return blocks[:k], counts[:k], flagged[has_diff != 0].tolist()

    def scratch_for(self, nr_bitmaps: int) -> tuple[np.ndarray, np.ndarray]:
        """The blocks and counts scratch of :meth:`ref_count_changes`, with
        room for every count of ``nr_bitmaps`` bitmaps (kept between
        commits, grown when short): blocks uint32 where every block number
        fits, else int64; counts uint32."""
        room = nr_bitmaps * ENTRIES_PER_BITMAP
        if len(self._scratch[0]) < room:
            kind = np.uint32 if self.nr_blocks <= 1 << 32 else np.int64
            self._scratch = (np.empty(room, dtype=kind), np.empty(room, dtype=np.uint32))
        return self._scratch

    def settle(self, done=None) -> np.ndarray:
        """The counts as they are now become the committed ones; returns
        the bitmaps that were flagged (their flags are cleared).  ``done``:
        those of them settled already (their numbers)."""
        from ._btree_kernels import settle_bitmaps

        flagged = self.flagged_bitmaps()
        self.nr_allocated = self.nr_used
        if len(flagged):
            todo = flagged if done is None or not len(done) else flagged[~np.isin(flagged, done)]
            settle_bitmaps(self.count, self.committed, self.free, todo)
            self.changed[:] = 0
        self.begin = 0
        return flagged

    def grow(self, nr_blocks: int) -> None:
        """Grow to ``nr_blocks`` blocks (new ones free), keeping the flags."""
        n = self.nr_blocks
        if nr_blocks < n:
            raise ValueError(f"a space map cannot shrink ({n} -> {nr_blocks} blocks)")
        committed = np.zeros(nr_blocks + nr_bitmaps(nr_blocks) + 1, dtype=np.uint32)
        committed[:n] = self.committed[:n]
        committed[nr_blocks:nr_blocks + len(self.changed)] = self.changed
        committed[-1] = self.committed[-1]
        self.count = np.concatenate([self.count, np.zeros(nr_blocks - n, dtype=np.uint32)])
        self.committed = committed
        self.free = np.concatenate([self.free, np.ones(nr_blocks - n, dtype=bool)])

    def take_free(self) -> int:
        """Allocate the next free block (count 1); -1 when there is none."""
        b = find_free(self.free, self.begin, self.wrap)
        if b >= 0:
            self.begin = b + 1
            self.count[b] = 1
            self.free[b] = False
            self.changed[b // ENTRIES_PER_BITMAP] = 1
            self._add_used(1)
        return b


def find_free(free: np.ndarray, begin: int, wrap: bool = True) -> int:
    """The first True of ``free`` at or after ``begin``, wrapping once to 0
    when ``wrap``; -1 if none (dm's find-free-from-cursor, searched in
    windows)."""
    n = len(free)
    for lo, hi in ((begin, n), (0, min(begin, n)) if wrap else (0, 0)):
        pos = lo
        step = 4096
        while pos < hi:
            end = min(hi, pos + step)
            i = int(np.argmax(free[pos:end]))
            if free[pos + i]:
                return pos + i
            pos = end
            step = min(step * 4, 1 << 20)
    return -1


def nr_bitmaps(nr_blocks: int) -> int:
    return -(-nr_blocks // ENTRIES_PER_BITMAP)


def unpack_bitmap(blk: np.ndarray) -> np.ndarray:
    """The 16,320 2-bit entries of one bitmap block, uint8."""
    bits = np.unpackbits(blk[16:], bitorder="little").reshape(-1, 2)
    return (bits[:, 0] << 1) | bits[:, 1]


def pack_bitmap(entries: np.ndarray, blk: np.ndarray) -> None:
    """Write up to 16,320 entries (each 0..3) into ``blk``'s bitmap area."""
    e = np.zeros(ENTRIES_PER_BITMAP, dtype=np.uint8)
    e[:len(entries)] = entries
    bits = np.empty((ENTRIES_PER_BITMAP, 2), dtype=np.uint8)
    bits[:, 0] = e >> 1
    bits[:, 1] = e & 1
    blk[16:] = np.packbits(bits.reshape(-1), bitorder="little")


def read_counts(bm: BlockManager, root: SmRoot, *, metadata: bool, what: str) -> tuple[np.ndarray, list]:
    """Every block's reference count (uint32[nr_blocks]) from a space map,
    and the index entries as (bitmap block, nr_free, none_free_before)."""
    n = root.nr_blocks
    nbm = nr_bitmaps(n)
    if metadata:
        if nbm > MAX_METADATA_BITMAPS:
            raise corrupt(f"{what} space map: {n} blocks need {nbm} bitmaps, more than {MAX_METADATA_BITMAPS}")
        idx = bm.read(root.bitmap_root, INDEX)
        entries = idx[16:16 + 16 * MAX_METADATA_BITMAPS].view(INDEX_ENTRY_DTYPE)[:nbm]
    else:
        keys, vals = collect(bm, root.bitmap_root, 16, who=f"{what} space map index")
        if len(keys) != nbm or not np.array_equal(keys, np.arange(nbm, dtype=np.uint64)):
            raise corrupt(f"{what} space map index: {len(keys)} bitmaps for {n} blocks (need {nbm})")
        entries = vals.reshape(-1).view(INDEX_ENTRY_DTYPE)
    counts = memory.zeros(nbm * ENTRIES_PER_BITMAP, np.uint32)
    index = []
    for i, ie in enumerate(entries):
        b = int(ie["blocknr"])
        try:
            blk = bm.read(b, BITMAP)
        except Exception as e:
            raise corrupt(f"{what} space map bitmap {i}: {str(e).removeprefix('metadata corrupt: ')}") from None
        counts[i * ENTRIES_PER_BITMAP:(i + 1) * ENTRIES_PER_BITMAP] = unpack_bitmap(blk)
        index.append((b, int(ie["nr_free"]), int(ie["none_free_before"])))
    counts = counts[:n]
    if root.ref_count_root:
        keys, vals = collect(bm, root.ref_count_root, 4, who=f"{what} space map ref counts")
        rc = vals.reshape(-1).view("<u4")
        if len(keys) and int(keys[-1]) >= n:
            raise corrupt(f"{what} space map ref counts: block {int(keys[-1])} beyond {n} blocks")
        k = keys.astype(np.int64)
        if np.any(counts[k] != 3):
            bad = int(k[np.flatnonzero(counts[k] != 3)[0]])
            raise corrupt(f"{what} space map: block {bad} is in the ref-count tree but its bitmap entry is not 3")
        if np.any(rc < 3):
            raise corrupt(f"{what} space map ref counts: block {int(k[np.flatnonzero(rc < 3)[0]])} has count < 3")
        in_tree = np.zeros(n, dtype=bool)
        in_tree[k] = True
        counts[k] = rc
    else:
        in_tree = np.zeros(n, dtype=bool)
    over = np.flatnonzero((counts == 3) & ~in_tree)
    if len(over):
        raise corrupt(f"{what} space map: block {int(over[0])} has bitmap entry 3 but no ref count")
    return counts, index

"""File data for btrfs and zfs on the one refcounted CoW mechanism of :mod:`thinp.pdata`.

A :class:`CowStore` is one in-memory :class:`~thinp.pdata.radix.Space`:

* its *metadata blocks* are radix-tree nodes: one tree per file per
  subvolume/dataset, keyed by file block (btrfs: 4 KiB block; zfs: record
  index).  A snapshot shares a file's tree by taking a reference on its root,
  and the first write after it shadows the path (``leaf_for_write``), as
  dm-thin does;
* its *data blocks* are **extent ids**, not disk blocks: a leaf value is
  ``(extent + 1) << 24 | offset_in_extent`` and ``drc[extent]`` counts the
  leaf entries that reference any part of the extent.  An extent is freed
  only when the count reaches 0 -- btrfs's bookending: overwriting 4 KiB of a
  1 MiB extent leaves the whole 1 MiB allocated while any other block of it
  is referenced;
* extent placement on the disk is a separate bitmap allocator of
  ``unit_bytes`` units (4 KiB for btrfs, the ashift sector for zfs), using the
  file layer's free-run kernels.

Arrays (besides the Space's, documented in :mod:`thinp.pdata.radix`):

ext_start  int64[cap]  first disk unit of extent e
ext_len    int64[cap]  disk units of extent e (0 = free id)
ext_owner  int64[cap]  subvolume/dataset id that wrote it (zfs "birth")
disk       uint8[nr_units]  1 = disk unit in use
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ..fs import extent_alloc as FK
from ..pdata import radix as K

NODE = K.NODE_ENTRIES


@njit(refcount=False)
def _write_keys(sp, roots, levels, k0, k1, ext, off0, fresh):
    """Map keys [k0, k1) to extent ``ext`` at offsets off0.. ; returns the
    number of keys that were mapped before (their extents lose a reference),
    or -1 when metadata ran out.  ``fresh``: ``ext`` was just allocated and
    its first reference is the allocation's (else every key takes one)."""
    replaced = 0
    for k in range(k0, k1):
        leaf = K.leaf_for_write(sp, roots, 0, levels, k)
        if leaf < 0:
            return -1
        i = k & K.NODE_MASK
        old = sp.meta[leaf, i]
        if old != 0:
            K.dec_data(sp, K.leaf_value_block(old), False)
            replaced += 1
        sp.meta[leaf, i] = (np.uint64(ext + 1) << np.uint64(24)) | np.uint64(off0 + k - k0)
        if k > k0 or not fresh:
            K.inc_data(sp, ext)
    return replaced


@njit(refcount=False)
def _unmap_keys(sp, roots, levels, k0, k1):
    """Unmap keys [k0, k1); returns how many were mapped, or -1."""
    n = 0
    for k in range(k0, k1):
        if K.lookup(sp.meta, roots[0], levels, k) == 0:
            continue
        leaf = K.leaf_for_write(sp, roots, 0, levels, k)
        if leaf < 0:
            return -1
        i = k & K.NODE_MASK
        K.dec_data(sp, K.leaf_value_block(sp.meta[leaf, i]), False)
        sp.meta[leaf, i] = 0
        n += 1
    return n


@njit(refcount=False)
def _lookup_keys(meta, root, levels, k0, k1, out):
    for k in range(k0, k1):
        out[k - k0] = K.lookup(meta, root, levels, k)


@njit(refcount=False)
def _inc_roots(sp, roots):
    for i in range(roots.shape[0]):
        if roots[i] != 0:
            K.inc_meta(sp, roots[i])


@njit
def _collect_extents(meta, root, levels, mark):
    """mark[extent] = 1 for every extent the tree at ``root`` references."""
    if root == 0:
        return 0
    stack_b = np.empty(8 * NODE + 8, dtype=np.int64)
    stack_l = np.empty(8 * NODE + 8, dtype=np.int64)
    stack_b[0] = root
    stack_l[0] = levels
    top = 1
    n = 0
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        for i in range(NODE):
            e = meta[b, i]
            if e == 0:
                continue
            if lv == 1:
                mark[K.leaf_value_block(e)] = 1
                n += 1
            else:
                stack_b[top] = np.int64(e & np.uint64(K.CHILD_MASK))
                stack_l[top] = lv - 1
                top += 1
    return n


class FileTree:
    """The root and depth of one file's mapping tree.  ``owner`` is the layer
    allowed to change it in place; a snapshot shares the object and the
    other side replaces it with its own copy before its first change."""

    __slots__ = ("root", "levels", "owner")

    def __init__(self, root: int = 0, levels: int = 1, owner: int = -1):
        self.root, self.levels, self.owner = root, levels, owner

    def copy(self, owner: int = -1) -> "FileTree":
        return FileTree(self.root, self.levels, owner)


class CowStore:
    def __init__(self, nr_units: int, unit_bytes: int, *, meta_capacity: int = 1024,
                 extent_capacity: int = 4096):
        self.unit_bytes = int(unit_bytes)
        self.nr_units = int(nr_units)
        self.disk = np.zeros(self.nr_units, dtype=np.uint8)
        self._zone = 1 << 15
        nz = (self.nr_units + self._zone - 1) // self._zone
        self._first_free = np.arange(nz, dtype=np.int64) * self._zone
        self._zone_used = np.zeros(nz, dtype=np.int64)
        self._cursor = 0
        self.ext_start = np.zeros(extent_capacity, dtype=np.int64)
        self.ext_len = np.zeros(extent_capacity, dtype=np.int64)
        self.ext_owner = np.zeros(extent_capacity, dtype=np.int64)
        self.sp = self._space(meta_capacity, extent_capacity)
        self._seen = 0
        self.units_used = 0
        self.counters = {"extents_allocated": 0, "extents_freed": 0, "units_written": 0}
        self._roots1 = np.zeros(1, dtype=np.int64)
        self.on_free = None      # callback(extent id) when an extent is freed

    # ---------------------------------------------------------------- space
    @staticmethod
    def _space(nm: int, nd: int, old=None) -> K.Space:
        meta = np.zeros((nm, NODE), dtype=np.uint64)
        mrc = np.zeros(nm, dtype=np.uint32)
        drc = np.zeros(nd, dtype=np.uint32)
        scal = np.zeros(K.NR_SCALARS, dtype=np.int64)
        if old is not None:
            onm, ond = old.mrc.shape[0], old.drc.shape[0]
            meta[:onm] = old.meta
            mrc[:onm] = old.mrc
            drc[:ond] = old.drc
            scal[:] = old.scal
        mrc[0] = 1   # block 0 is never a node (0 means "no child")
        sp = K.Space(
            meta=meta, mrc=mrc, mbits=K.make_bitmap(mrc > 0, nm),
            mnew=np.zeros(nm, dtype=np.uint8), mpend=np.zeros(nm, dtype=np.uint32),
            mdirty=np.zeros(nm // K.SM_PAGE_ENTRIES + 1, dtype=np.uint8),
            drc=drc, dbits=K.make_bitmap(drc > 0, nd), dpend=np.zeros(nd, dtype=np.uint32),
            ddirty=np.zeros(nd // K.SM_PAGE_ENTRIES + 1, dtype=np.uint8),
            dpass=np.zeros(nd, dtype=np.uint32), scal=scal,
            events=np.zeros((16, 3), dtype=np.int64))
        if old is not None:
            sp.mnew[:onm] = old.mnew
            sp.mpend[:onm] = old.mpend
            sp.dpend[:ond] = old.dpend
            # ids freed in this transaction stay unallocatable until commit
            for arr, n, bits in ((old.mpend, old.scal[K.S_MNPEND], sp.mbits),
                                 (old.dpend, old.scal[K.S_DNPEND], sp.dbits)):
                for b in arr[:n]:
                    bits[int(b) >> 6] |= np.uint64(1) << np.uint64(int(b) & 63)
        else:
            scal[K.S_MUSED] = 1
        scal[K.S_NR_META] = nm
        scal[K.S_NR_DATA] = nd
        scal[K.S_META_RESERVE] = 0
        scal[K.S_LWM] = -1
        return sp

    def _ensure(self, meta_needed: int, extents_needed: int) -> None:
        sp = self.sp
        nm, nd = sp.mrc.shape[0], sp.drc.shape[0]
        free_m = nm - int(sp.scal[K.S_MUSED]) - int(sp.scal[K.S_MNPEND])
        free_d = nd - int(sp.scal[K.S_DUSED]) - int(sp.scal[K.S_DNPEND])
        if free_m >= meta_needed and free_d >= extents_needed:
            return
        new_nm = nm * 2 if free_m < meta_needed else nm
        while new_nm - nm + free_m < meta_needed:
            new_nm *= 2
        new_nd = nd * 2 if free_d < extents_needed else nd
        while new_nd - nd + free_d < extents_needed:
            new_nd *= 2
        self.sp = self._space(new_nm, new_nd, old=sp)
        if new_nd > nd:
            for name in ("ext_start", "ext_len", "ext_owner"):
                a = getattr(self, name)
                b = np.zeros(new_nd, dtype=a.dtype)
                b[:nd] = a
                setattr(self, name, b)

    # ---------------------------------------------------------------- disk
    def _alloc_units(self, n: int) -> int:
        r = FK.find_extent(self.disk, self._first_free, self._zone, self._cursor, self.nr_units, n, 1, n)
        if r < 0:
            r = FK.find_extent(self.disk, self._first_free, self._zone, 0, self.nr_units, n, 1, n)
        if r < 0:
            import errno
            import os
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        start = int(r // 4294967296)
        FK.set_range(self.disk, self._first_free, self._zone_used, self._zone, start, n, 1)
        self._cursor = start + n
        self.units_used += n
        return start

    def _free_units(self, start: int, n: int) -> None:
        FK.set_range(self.disk, self._first_free, self._zone_used, self._zone, start, n, 0)
        self.units_used -= n

    def new_extent(self, units: int, owner: int) -> int:
        """Allocate an extent of ``units`` disk units (count 1 once mapped)."""
        self._ensure(8, 1)
        e = int(K.alloc_data(self.sp))
        if e < 0:   # only ids freed this transaction are left
            self._ensure(8, self.sp.drc.shape[0])
            e = int(K.alloc_data(self.sp))
        start = self._alloc_units(units)
        self.ext_start[e], self.ext_len[e], self.ext_owner[e] = start, units, owner
        self.counters["extents_allocated"] += 1
        self.counters["units_written"] += units
        return e

    def try_extend(self, e: int, units: int) -> bool:
        """Grow extent ``e`` in place by ``units`` if the disk after it is free
        (delayed allocation merging an append into the open extent)."""
        end = int(self.ext_start[e] + self.ext_len[e])
        if end + units > self.nr_units or FK.count_free(self.disk, end, end + units) != units:
            return False
        FK.set_range(self.disk, self._first_free, self._zone_used, self._zone, end, units, 1)
        self.ext_len[e] += units
        self.units_used += units
        self.counters["units_written"] += units
        return True

    def _reap(self) -> None:
        """Free the disk space of extents whose count reached 0."""
        sp = self.sp
        n = int(sp.scal[K.S_DNPEND])
        for k in range(self._seen, n):
            e = int(sp.dpend[k])
            if sp.drc[e] == 0 and self.ext_len[e]:
                self._free_units(int(self.ext_start[e]), int(self.ext_len[e]))
                self.ext_len[e] = 0
                self.counters["extents_freed"] += 1
                if self.on_free is not None:
                    self.on_free(e)
        self._seen = n

    # ---------------------------------------------------------------- trees
    def _grow(self, t: FileTree, key_end: int) -> None:
        while key_end > NODE ** t.levels:
            if t.root:
                self._ensure(1, 0)
                nb = int(K.alloc_meta(self.sp, True))
                self.sp.meta[nb, 0] = np.uint64(t.root)
                t.root = nb
            t.levels += 1

    def map(self, t: FileTree, k0: int, k1: int, ext: int, off0: int, fresh: bool = True) -> int:
        """Point keys [k0, k1) of ``t`` at ``ext`` from offset ``off0``; returns
        how many keys were mapped before.  ``fresh=False`` when ``ext`` is
        already referenced (an append merged into the open extent)."""
        if k1 <= k0:
            return 0
        self._grow(t, k1)
        self._ensure(t.levels * (2 + (k1 - k0) // NODE), 0)
        r = self._roots1
        r[0] = t.root
        n = _write_keys(self.sp, r, t.levels, k0, k1, ext, off0, bool(fresh))
        t.root = int(r[0])
        if n < 0:
            raise MemoryError("cow store metadata exhausted")
        self._reap()
        return int(n)

    def unmap(self, t: FileTree, k0: int, k1: int) -> int:
        if k1 <= k0 or t.root == 0:
            return 0
        k1 = min(k1, NODE ** t.levels)
        self._ensure(t.levels * (2 + (k1 - k0) // NODE), 0)
        r = self._roots1
        r[0] = t.root
        n = _unmap_keys(self.sp, r, t.levels, k0, k1)
        t.root = int(r[0])
        self._reap()
        return int(n)

    def lookup(self, t: FileTree, k0: int, k1: int) -> np.ndarray:
        """Leaf values of keys [k0, k1) (0 = unmapped)."""
        out = np.zeros(max(k1 - k0, 0), dtype=np.uint64)
        if t.root and k1 > k0:
            k1c = min(k1, NODE ** t.levels)
            if k1c > k0:
                _lookup_keys(self.sp.meta, t.root, t.levels, k0, k1c, out)
        return out

    def release(self, t: FileTree) -> None:
        """Drop one reference to ``t``'s tree (the caller forgets ``t``)."""
        if t.root:
            K.dec_tree(self.sp, t.root, t.levels, False)
            self._reap()

    def share(self, trees) -> None:
        """Take one more reference on each tree (a snapshot now holds them)."""
        roots = np.fromiter((t.root for t in trees), dtype=np.int64)
        if len(roots):
            _inc_roots(self.sp, roots)

    def commit(self) -> None:
        """End the transaction: freed ids become reusable, nothing is 'new'."""
        self._reap()
        K.release_pending(self.sp)
        self.sp.mnew[:] = 0
        self._seen = 0

    def referenced(self, trees) -> np.ndarray:
        """uint8 mark per extent id: 1 if any of ``trees`` references it."""
        mark = np.zeros(self.sp.drc.shape[0], dtype=np.uint8)
        for t in trees:
            if t.root:
                _collect_extents(self.sp.meta, t.root, t.levels, mark)
        return mark

    @staticmethod
    def extent_of(v) -> int:
        return int(v >> np.uint64(24)) - 1

    @staticmethod
    def offset_of(v) -> int:
        return int(v & np.uint64(0xFFFFFF))

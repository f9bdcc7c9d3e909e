"""dm-thin's pool metadata, written as the kernel writes it (dm-thin-metadata.c).

:class:`PoolMetadata` is dm's ``dm_pool_metadata``: it formats or opens a
metadata device image and offers the operations the pool target calls --
create_thin, create_snap, delete, insert/remove a mapping, allocate a data
block, reserve/release a metadata snapshot, set the transaction id, resize,
commit -- each one dm's btree and space-map operations in dm's order, so
tree shapes and metadata use are the kernel's.

Between commits the device details live in RAM (dm's ``dm_thin_device``
list) and are written to the details tree at commit.  A commit writes, in
order: the changed details, the data space map, the metadata space map,
every other block changed in the transaction (sealed with its checksum),
then the superblock (:mod:`thinp.thin.format`).  Nothing the last commit
references is written before the superblock, so a process killed at any
instant leaves the previous commit intact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..config import METADATA_BLOCK_SIZE
from ..pdata import btree_write as bw
from ..pdata.block import KIND_BITMAP, KIND_INDEX, SUPERBLOCK, BlockManager
from ..pdata.btree import lookup as bt_lookup
from ..pdata.disk_space_map import DiskSpaceMap
from ..pdata.space_map import ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS, read_counts
from ..pdata.transaction import ZERO_AHEAD_MIN, TransactionManager
from .dm_metadata import DmMetadata
from .format import (DETAILS_DTYPE, DETAILS_SIZE, SUPERBLOCK_LOCATION, THIN_VERSION, Superblock,
                     pack_block_time, read_superblock, unpack_block_time)

#: dm's largest metadata device: one index block of 255 bitmaps.
MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP
MAX_DEV_ID = (1 << 24) - 1


def kernel_5_14(split: str) -> bool:
    """Whether the kernel a split rule comes from is Linux 5.14 or later.
    The btree residency change came in 5.14 with the space-map changes
    beside it: the metadata allocation cursor survives commits, and the data
    space map's index entries wait in a cache until the commit.  Kernels
    before (the ``"halves"`` rule) restart the cursor at block 0 at every
    commit and write each index entry at once.  The same operations then
    place metadata blocks where that kernel does (tests/thin/
    test_dm_placement.py replays kernel images of both kinds)."""
    return split != "halves"


@dataclass
class Details:
    """A thin device's record (dm's dm_thin_device)."""

    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int
    changed: bool = False

    def pack(self) -> np.ndarray:
        a = np.zeros(1, dtype=DETAILS_DTYPE)
        a[0] = (self.mapped_blocks, self.transaction_id, self.creation_time, self.snapshotted_time)
        return a.view(np.uint8)


class PoolMetadata:
    """One dm-thin metadata device, open read-write."""

    def __init__(self, bm: BlockManager, sb: Superblock, tm: TransactionManager, data_sm: DiskSpaceMap,
                 split: str):
        if split not in bw.SPLIT_RULES:
            raise ValueError(f"split rule {split!r}: choose one of {', '.join(bw.SPLIT_RULES)}")
        self.bm = bm
        self.sb = sb
        self.tm = tm
        self.data_sm = data_sm
        self.split = split
        # past the highest block in use the file is holes (see advise_holes)
        in_use = np.flatnonzero(tm.count)
        bm.advise_holes(int(in_use[-1]) + 1 if len(in_use) else 0)
        self.devices: dict[int, Details] = {}
        #: dm's ``pmd->thin_devices`` list: the devices opened since the pool
        #: was (an active thin target holds its device open; a message opens
        #: and closes it), newest first, each with its open count.  A commit
        #: writes the changed details in this order (__write_changed_details)
        #: and drops the closed ones it wrote, so where the details tree's
        #: nodes are shadowed follows it.
        self.thin_devices: dict[int, int] = {}
        self.sync = True
        #: mapping inserts and lookups through the numba kernels (the Python
        #: btree is the reference they are tested against)
        self.fast = True
        dsm = data_sm

        def data_inc(values):
            dsm.inc((bw.u64_values(values) >> np.uint64(24)).astype(np.int64))

        def data_dec(values):
            dsm.dec((bw.u64_values(values) >> np.uint64(24)).astype(np.int64))

        def data_equal(a: bytes, b: bytes) -> bool:
            return (int.from_bytes(a, "little") >> 24) == (int.from_bytes(b, "little") >> 24)

        def subtree_dec(values):
            for root in bw.u64_values(values).tolist():
                bw.delete(tm, root, 1, self.data_vt)

        self.data_vt = bw.ValueType(8, data_inc, data_dec, data_equal)
        self.subtree_vt = bw.ValueType(8, bw.block_ref_type(tm).inc, subtree_dec)
        self.details_vt = bw.ValueType(DETAILS_SIZE)

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def format(cls, path, *, nr_metadata_blocks: int, nr_data_blocks: int, data_block_sectors: int,
               split: str = "current", uuid: bytes | None = None) -> "PoolMetadata":
        """Write a new, empty metadata device to ``path`` (must not exist)."""
        path = os.fspath(path)
        if not 16 <= nr_metadata_blocks <= MAX_METADATA_BLOCKS:
            raise ValueError(f"metadata device of {nr_metadata_blocks} blocks: dm-thin needs 16.."
                             f"{MAX_METADATA_BLOCKS} ({MAX_METADATA_BLOCKS * METADATA_BLOCK_SIZE} bytes)")
        if split not in bw.SPLIT_RULES:
            raise ValueError(f"split rule {split!r}: choose one of {', '.join(bw.SPLIT_RULES)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, nr_metadata_blocks * METADATA_BLOCK_SIZE)
        finally:
            os.close(fd)
        try:
            bm = BlockManager.open_file(path, writable=True)
            tm = TransactionManager(bm, np.zeros(nr_metadata_blocks, dtype=np.uint32))
            tm.rolling_cursor = tm.index_cache = kernel_5_14(split)
            tm.halves = split == "halves"
            tm.inc(SUPERBLOCK_LOCATION)
            tm.begin = SUPERBLOCK_LOCATION + 1
            # __format_metadata: the metadata space map, an empty data space
            # map, the mapping and details roots, committed; then the pool
            # binds its data device and grows the data space map to it
            # (pool_preresume), committed again
            tm.format_space_map(bw.empty)
            data_sm = DiskSpaceMap.format(tm, 0, split)
            sb = Superblock(uuid=uuid if uuid is not None else b"", version=THIN_VERSION,
                            data_block_size=data_block_sectors, metadata_nr_blocks=nr_metadata_blocks)
            md = cls(bm, sb, tm, data_sm, split)
            sb.data_mapping_root = bw.empty(tm, 8)
            sb.device_details_root = bw.empty(tm, DETAILS_SIZE)
            md.commit()
            if nr_data_blocks:
                md.resize_data(nr_data_blocks)
                md.commit()
            return md
        except BaseException:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def open(cls, path, split: str = "current", *, writable: bool = True, check: bool = True,
             defer_subtrees: bool = False) -> "PoolMetadata":
        """Open an existing image read-write (validated as thin_check does
        unless ``check`` is false).  ``writable=False`` maps it privately:
        nothing done to it reaches the file (never commit it).

        ``defer_subtrees`` leaves the check's walk of the device subtrees
        to the caller, who reads every leaf anyway (the pool's index fill):
        it walks them into :attr:`pending_check` and then calls
        :meth:`finish_check`, which raises what the check found.  Until
        then the trees are not to be trusted."""
        path = os.fspath(path)
        if check:
            # the file must exist and hold the blocks its superblock names
            DmMetadata.open(path).close()
        bm = BlockManager.open_file(path, writable=writable)
        pending = None
        try:
            sb = read_superblock(bm)
            if check and defer_subtrees:
                pending = DmMetadata(bm, sb).check_begin()
                mcount, mindex, dcount, dindex = pending.res.space_maps
            elif check:
                # checked through this mapping: the check's space-map counts
                # are the ones to load (the file is locked against writers)
                res = DmMetadata(bm, sb).check()
                if res.problems:
                    raise errors.MetadataCorruptError(f"metadata corrupt: {path}: {res.problems[0]}")
                mcount, mindex, dcount, dindex = res.space_maps
            else:
                mcount, mindex = read_counts(bm, sb.metadata_sm_root, metadata=True, what="metadata")
                dcount, dindex = read_counts(bm, sb.data_sm_root, metadata=False, what="data")
            tm = TransactionManager(bm, mcount)
            tm.rolling_cursor = tm.index_cache = kernel_5_14(split)
            tm.halves = split == "halves"
            tm.load_space_map(sb.metadata_sm_root, mindex)
            data_sm = DiskSpaceMap.load(tm, sb.data_sm_root, dcount, dindex, split)
            md = cls(bm, sb, tm, data_sm, split)
            md.path = path
            md.pending_check = pending
            view = DmMetadata(bm, sb)
            for d in view.devices():
                md.devices[d.dev_id] = Details(d.mapped_blocks, d.transaction_id, d.creation_time,
                                               d.snapshotted_time)
        except BaseException:
            bm.close()
            raise
        return md

    #: a check begun by ``open(defer_subtrees=True)``, its subtrees unwalked
    pending_check = None
    #: what the last finished check found (its non-fatal ``notes`` and
    #: ``leaked_data_blocks`` included)
    check_result = None
    path = None

    def finish_check(self, walked: bool = True) -> None:
        """End the deferred check: ``walked`` says the caller's walk of the
        subtrees into :attr:`pending_check` went through (False: it stopped
        on something, and the whole check runs again to name it).  Raises
        MetadataCorruptError with the first problem found."""
        pc, self.pending_check = self.pending_check, None
        if pc is None:
            return
        view = DmMetadata(self.bm, self.sb)
        res = view.check_end(pc) if walked else None
        if res is None:
            res = view.check()
        self.check_result = res
        if res.problems:
            raise errors.MetadataCorruptError(f"metadata corrupt: {self.path}: {res.problems[0]}")

    def complete_check(self) -> None:
        """Run the deferred check's own subtree walk and end it (for a caller
        that must know the metadata sound before its fill)."""
        pc = self.pending_check
        if pc is not None:
            self.finish_check(DmMetadata(self.bm, self.sb).walk_subtrees(pc))

    def close(self, commit: bool = True) -> None:
        if self.bm.mm is not None and commit:
            self.commit()
        self.bm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(commit=exc[0] is None)

    # ------------------------------------------------------------ devices
    def _check_dev(self, dev: int) -> None:
        if isinstance(dev, bool) or not isinstance(dev, (int, np.integer)) or not 0 <= dev <= MAX_DEV_ID:
            raise ValueError(f"thin id {dev!r} is not a 24-bit device id")

    def details(self, dev: int) -> Details:
        """The device's record; DeviceNotFoundError when there is none."""
        d = self.devices.get(dev)
        if d is None:
            raise errors.DeviceNotFoundError(f"thin device {dev} does not exist")
        return d

    def _open_device(self, dev: int) -> None:
        """__open_device: one more opener; a device not on the list goes to
        its head (list_add), one on it keeps its place."""
        if dev in self.thin_devices:
            self.thin_devices[dev] += 1
        else:
            self.thin_devices = {dev: 1, **self.thin_devices}

    def _close_device(self, dev: int) -> None:
        """__close_device: one opener fewer (the entry stays on the list)."""
        if self.thin_devices.get(dev, 0) > 0:
            self.thin_devices[dev] -= 1

    def open_device(self, dev: int) -> None:
        """dm_pool_open_thin_device, as a thin target's constructor calls
        it when the device is activated."""
        self.details(dev)
        self._open_device(dev)

    def close_device(self, dev: int) -> None:
        """dm_pool_close_thin_device (the thin target's destructor)."""
        self.details(dev)
        self._close_device(dev)

    def activate(self, dev: int) -> None:
        """Open ``dev`` unless it is open already: a device is written
        through its active thin target, so a mapping change opens one
        that is not."""
        if not self.thin_devices.get(dev, 0):
            self.open_device(dev)

    def create_thin(self, dev: int) -> None:
        """__create_thin: an empty mapping tree under ``dev``."""
        self._check_dev(dev)
        if dev in self.devices:
            raise errors.DeviceExistsError(f"thin device {dev} already exists")
        root = bw.empty(self.tm, 8)
        self.sb.data_mapping_root, _ = bw.insert(self.tm, self.sb.data_mapping_root, [dev],
                                                 np.array([root], dtype="<u8").view(np.uint8), self.subtree_vt,
                                                 split=self.split)
        self.devices[dev] = Details(0, self.sb.trans_id, self.sb.time, self.sb.time, changed=True)
        self._open_device(dev)
        self._close_device(dev)

    def create_snap(self, dev: int, origin: int) -> None:
        """__create_snap: share the origin's tree (one more reference on
        its root), bump the pool time, stamp both devices."""
        self._check_dev(dev)
        if dev in self.devices:
            raise errors.DeviceExistsError(f"thin device {dev} already exists")
        o = self.details(origin)
        origin_root = self.subtree_root(origin)
        self.tm.inc(origin_root)
        self.sb.data_mapping_root, _ = bw.insert(self.tm, self.sb.data_mapping_root, [dev],
                                                 np.array([origin_root], dtype="<u8").view(np.uint8),
                                                 self.subtree_vt, split=self.split)
        self.sb.time += 1
        t = self.sb.time
        self.devices[dev] = Details(o.mapped_blocks, self.sb.trans_id, t, t, changed=True)
        # __open_device(dev), then __set_snapshot_details opens the origin
        # (to the list's head unless it is there), and both are closed
        self._open_device(dev)
        self._open_device(origin)
        o.snapshotted_time = t
        o.changed = True
        self._close_device(origin)
        self._close_device(dev)

    def delete(self, dev: int) -> None:
        """__delete_device: remove the details and the mapping subtree
        (dropping a reference; shared nodes survive)."""
        self.details(dev)
        del self.devices[dev]
        self.thin_devices.pop(dev, None)
        self.sb.device_details_root, _ = bw.remove(self.tm, self.sb.device_details_root, [dev], self.details_vt)
        self.sb.data_mapping_root, _ = bw.remove(self.tm, self.sb.data_mapping_root, [dev], self.subtree_vt)

    def subtree_root(self, dev: int) -> int:
        """The root block of the device's mapping tree."""
        v = bt_lookup(self.bm, self.sb.data_mapping_root, dev, 8)
        if v is None:
            raise errors.MetadataCorruptError(f"metadata corrupt: device {dev} has no mapping tree")
        return int(v.view("<u8")[0])

    # ------------------------------------------------------------ mappings
    def _kernel_views(self):
        blocks = self.bm.blocks
        return blocks.view(np.uint64), blocks.view(np.uint32)

    def _insert_value(self, dev: int, vblock: int, value: int, shadow: bool = True) -> bool:
        """Insert the mapping; a replaced value's data block loses its
        reference, its bitmap shadowed then unless ``shadow`` is off (the
        tools' way, see DiskSpaceMap.inc)."""
        if not self.fast:
            v = np.array([value], dtype="<u8").view(np.uint8)
            self.tm.as_kernels = True
            try:
                self.sb.data_mapping_root, inserted = bw.insert(self.tm, self.sb.data_mapping_root, [dev, vblock], v,
                                                                self.data_vt, level_types=[self.subtree_vt],
                                                                split=self.split)
            finally:
                self.tm.as_kernels = False
            return inserted
        from ..pdata import mapping_tree as BK

        m64, m32 = self._kernel_views()
        tm, dsm = self.tm, self.data_sm
        out = np.zeros(2, dtype=np.int64)
        r = BK.insert_mapping(m64, m32, tm.count, tm.committed, tm.free, tm.txn, tm.kind, self.bm.fresh, tm.st,
                              dsm.count, dsm.committed, dsm.free, dsm.kernel_state(shadow),
                              np.int64(self.sb.data_mapping_root), np.int64(dev), np.int64(vblock), np.uint64(value),
                              self.split == "halves", out)
        dsm.from_kernel()
        if r < 0:
            raise errors.NoSpaceError(f"out of metadata space: all {tm.nr_blocks} metadata blocks are in use")
        self.sb.data_mapping_root = int(out[0])
        return bool(out[1])

    def lookup(self, dev: int, vblock: int) -> tuple[int, int] | None:
        """(pblock, time) or None."""
        if self.fast:
            from ..pdata import mapping_tree as BK

            self.details(dev)
            m64, m32 = self._kernel_views()
            v, found = BK.lookup_mapping(m64, m32, np.int64(self.sb.data_mapping_root), np.int64(dev),
                                         np.int64(vblock))
            return unpack_block_time(int(v)) if found else None
        root = self.subtree_root(dev)
        v = bt_lookup(self.bm, root, vblock, 8)
        return None if v is None else unpack_block_time(int(v.view("<u8")[0]))

    def insert(self, dev: int, vblock: int, pblock: int) -> bool:
        """__insert: map ``vblock`` to ``pblock`` stamped with the pool time
        (the data block's reference is the caller's, from :meth:`alloc_data`);
        True when the mapping is new."""
        d = self.details(dev)
        self.activate(dev)
        inserted = self._insert_value(dev, vblock, pack_block_time(pblock, self.sb.time))
        d.changed = True
        if inserted:
            d.mapped_blocks += 1
        return inserted

    def insert_block_time(self, dev: int, vblock: int, pblock: int, time: int, *, kernel: bool = False) -> bool:
        """Map ``vblock`` to ``pblock`` with a given time, taking a reference
        on the data block (restore and repair rebuild mappings this way, and
        leave the data bitmaps to the commit as the tools do; ``kernel``:
        shadow its bitmap at once, as dm-thin's allocation of it does)."""
        d = self.details(dev)
        if not 0 <= pblock < self.data_sm.nr_blocks:
            raise ValueError(f"data block {pblock} outside the {self.data_sm.nr_blocks} data blocks")
        if kernel:
            self.activate(dev)
        self.data_sm.inc([pblock], shadow=kernel)
        inserted = self._insert_value(dev, vblock, pack_block_time(pblock, time), shadow=kernel)
        d.changed = True
        if inserted:
            d.mapped_blocks += 1
        return inserted

    def insert_block_times(self, dev: int, vblocks: np.ndarray, pblocks: np.ndarray, times: np.ndarray, *,
                           kernel: bool = False) -> int:
        """:meth:`insert_block_time` for many mappings of ``dev`` in order,
        in one kernel call (the pool's log applier); the same image as the
        loop (``kernel``: as with ``kernel=True`` there, each data bitmap
        shadowed at its first change).  Returns how many were new."""
        from . import _mirror as MIR

        d = self.details(dev)
        vb = np.ascontiguousarray(vblocks, dtype=np.int64)
        pb = np.ascontiguousarray(pblocks, dtype=np.int64)
        tm_ = np.ascontiguousarray(times, dtype=np.int64)
        if not (len(vb) == len(pb) == len(tm_)):
            raise ValueError(f"{len(vb)} vblocks, {len(pb)} pblocks and {len(tm_)} times")
        if len(pb) and (int(pb.min()) < 0 or int(pb.max()) >= self.data_sm.nr_blocks):
            bad = int(pb.max()) if int(pb.max()) >= self.data_sm.nr_blocks else int(pb.min())
            raise ValueError(f"data block {bad} outside the {self.data_sm.nr_blocks} data blocks")
        if len(vb) == 0:
            return 0
        if kernel:
            self.activate(dev)
        if not self.fast:
            return sum(self.insert_block_time(dev, v, p, t, kernel=kernel)
                       for v, p, t in zip(vb.tolist(), pb.tolist(), tm_.tolist()))
        m64, m32 = self._kernel_views()
        tm, dsm = self.tm, self.data_sm
        res = np.zeros(6, dtype=np.int64)
        never = np.int64(-(1 << 62))
        added = 0
        # the log in slices: the applier's rows are 32 bytes each
        log = np.empty((min(len(vb), 1 << 20), 4), dtype=np.int64)
        log[:, 3] = 0
        for lo in range(0, len(vb), len(log)):
            n = min(len(log), len(vb) - lo)
            log[:n, 0] = dev
            log[:n, 1] = vb[lo:lo + n]
            log[:n, 2] = (pb[lo:lo + n] << 24) | (tm_[lo:lo + n] & 0xFFFFFF)
            r = MIR.apply_log(m64, m32, tm.count, tm.committed, tm.free, tm.txn, tm.kind, self.bm.fresh, tm.st,
                              dsm.count, dsm.committed, dsm.free, dsm.kernel_state(kernel),
                              np.int64(self.sb.data_mapping_root), log, np.int64(n), self.split == "halves",
                              never, never, False, np.int64(0), np.int64(tm.st[1]), res)
            dsm.from_kernel()
            self.sb.data_mapping_root = int(res[0])
            d.mapped_blocks += int(res[4])
            added += int(res[4])
            d.changed = True
            if r < 0:
                raise errors.NoSpaceError(f"out of metadata space: all {tm.nr_blocks} metadata blocks are in use")
        return added

    def write_blocks(self, dev: int, vblocks) -> int:
        """dm-thin's write path for these vblocks of ``dev`` (provision
        unmapped ones, break sharing of ones older than the device's last
        snapshot), in order, in one kernel call; returns how many needed a
        new data block.  Raises NoSpaceError when data or metadata ran out
        (the blocks before the failing one are done)."""
        from ..pdata import mapping_tree as BK

        d = self.details(dev)
        self.activate(dev)
        vb = np.ascontiguousarray(vblocks, dtype=np.int64)
        m64, m32 = self._kernel_views()
        tm, dsm = self.tm, self.data_sm
        out = np.zeros(4, dtype=np.int64)
        r = BK.write_blocks(m64, m32, tm.count, tm.committed, tm.free, tm.txn, tm.kind, self.bm.fresh, tm.st,
                            dsm.count, dsm.committed, dsm.free, dsm.kernel_state(), np.int64(self.sb.data_mapping_root),
                            np.int64(dev), np.int64(d.snapshotted_time), np.int64(self.sb.time), vb,
                            self.split == "halves", out)
        dsm.from_kernel()
        self.sb.data_mapping_root = int(out[0])
        d.mapped_blocks += int(out[2])
        d.changed = True
        if r == -1:
            raise errors.NoSpaceError(f"out of metadata space: all {tm.nr_blocks} metadata blocks are in use")
        if r == -2:
            raise errors.NoSpaceError(f"thin device {dev}: no free data block ({dsm.nr_blocks} blocks)")
        return int(out[3])

    def remove(self, dev: int, vblock: int) -> bool:
        """__remove: unmap ``vblock`` (its data block loses a reference).

        This is dm_thin_remove_block.  dm-thin's discards go through
        dm_thin_remove_range instead: :meth:`remove_range`."""
        d = self.details(dev)
        self.activate(dev)
        if self.fast:
            from ..pdata import mapping_tree as BK

            m64, m32 = self._kernel_views()
            tm, dsm = self.tm, self.data_sm
            out = np.zeros(2, dtype=np.int64)
            r = BK.remove_mapping(m64, m32, tm.count, tm.committed, tm.free, tm.txn, tm.kind, self.bm.fresh, tm.st,
                                  dsm.count, dsm.committed, dsm.free, dsm.kernel_state(),
                                  np.int64(self.sb.data_mapping_root), np.int64(dev), np.int64(vblock), out)
            dsm.from_kernel()
            if r < 0:
                raise errors.NoSpaceError(f"out of metadata space: all {tm.nr_blocks} metadata blocks are in use")
            self.sb.data_mapping_root, removed = int(out[0]), bool(out[1])
        else:
            self.tm.as_kernels = True
            try:
                self.sb.data_mapping_root, removed = bw.remove(self.tm, self.sb.data_mapping_root, [dev, vblock],
                                                               self.data_vt, level_types=[self.subtree_vt])
            finally:
                self.tm.as_kernels = False
        if removed:
            d.mapped_blocks -= 1
            d.changed = True
        return removed

    def remove_range(self, dev: int, begin: int, end: int) -> int:
        """dm_thin_remove_range (__remove_range): unmap every mapped vblock
        of ``dev`` in [begin, end), as dm-thin's discards do; returns how
        many were unmapped.

        dm takes a reference on the device's subtree root (its metadata
        bitmap shadowed then), removes the device's top-level entry (whose
        dec drops that reference again), removes the range from the subtree
        (dm_btree_lookup_next, then dm_btree_remove_leaves: one descent per
        key), then inserts the top-level entry back
        (:func:`thinp.pdata.mapping_tree.remove_range`).  A snapshot-shared
        root is counted 3 for a moment, an entry dm puts in the metadata
        ref-count tree and takes out again; that is left to the commit, as
        every count of 3 or more the kernels make (not yet dm's)."""
        if begin < 0 or end < begin:
            raise ValueError(f"range [{begin}, {end}) of thin device {dev}")
        d = self.details(dev)
        self.activate(dev)
        tm = self.tm
        if self.fast:
            from ..pdata import mapping_tree as BK

            m64, m32 = self._kernel_views()
            dsm = self.data_sm
            out = np.zeros(2, dtype=np.int64)
            r = BK.remove_range(m64, m32, tm.count, tm.committed, tm.free, tm.txn, tm.kind, self.bm.fresh, tm.st,
                                dsm.count, dsm.committed, dsm.free, dsm.kernel_state(),
                                np.int64(self.sb.data_mapping_root), np.int64(dev), np.int64(begin), np.int64(end),
                                self.split == "halves", out)
            dsm.from_kernel()
            if r == -3:
                raise errors.MetadataCorruptError(f"metadata corrupt: device {dev} has no mapping tree")
            if r < 0:
                raise errors.NoSpaceError(f"out of metadata space: all {tm.nr_blocks} metadata blocks are in use")
            self.sb.data_mapping_root, removed = int(out[0]), int(out[1])
        else:
            root = self.subtree_root(dev)
            tm.shadow_bitmap_of(root)
            tm.as_kernels = True
            try:
                tm.inc(root)
                self.sb.data_mapping_root, _ = bw.remove(tm, self.sb.data_mapping_root, [dev], self.subtree_vt)
                root, removed = bw.remove_leaves_range(tm, root, begin, end, self.data_vt)
                self.sb.data_mapping_root, _ = bw.insert(tm, self.sb.data_mapping_root, [dev],
                                                         np.array([root], dtype="<u8").view(np.uint8),
                                                         self.subtree_vt, split=self.split)
            finally:
                tm.as_kernels = False
        d.mapped_blocks -= removed
        d.changed = True
        return removed

    def alloc_data(self) -> int | None:
        return self.data_sm.alloc()

    def is_shared(self, dev: int, block_time: tuple[int, int]) -> bool:
        """dm's test: the block predates the device's last snapshot."""
        return self.details(dev).snapshotted_time > block_time[1]

    # ------------------------------------------------------------ pool
    def set_transaction_id(self, old: int, new: int) -> None:
        if self.sb.trans_id != old:
            raise errors.TransactionIdMismatchError(
                f"set_transaction_id: current id is {self.sb.trans_id}, not {old}")
        self.sb.trans_id = new

    def reserve_metadata_snap(self) -> int:
        """Commit, then copy the superblock to a new block that holds one
        more reference on the mapping and details roots."""
        self.commit()
        if self.sb.held_root:
            raise errors.PoolBusyError("a metadata snapshot is already held: release it first")
        tm = self.tm
        tm.inc(SUPERBLOCK_LOCATION)
        held, blk, _ = tm.shadow(SUPERBLOCK_LOCATION, SUPERBLOCK)
        blk[64:320] = 0  # the copy's space-map roots are not published
        tm.inc(self.sb.data_mapping_root)
        tm.inc(self.sb.device_details_root)
        self.sb.held_root = held
        return held

    def release_metadata_snap(self) -> None:
        held = self.sb.held_root
        if not held:
            raise errors.ThinpError("no metadata snapshot is held")
        copy = read_superblock(self.bm, held, what="held metadata snapshot")
        self.sb.held_root = 0
        bw.delete(self.tm, copy.data_mapping_root, 2, self.data_vt)
        bw.delete(self.tm, copy.device_details_root, 1, self.details_vt)
        self.tm.dec(held)

    def resize_data(self, nr_blocks: int) -> None:
        self.data_sm.extend(nr_blocks)

    def resize_metadata(self, nr_blocks: int) -> None:
        """dm_pool_resize_metadata_dev: the device grows to ``nr_blocks``
        (call right after a commit, as dm-thin's resize runs after the
        suspend's commit); the metadata space map gains the new entries,
        and a bitmap block (allocated from the new space) for each 16,320
        of them past the last one."""
        from ..pdata.block import BITMAP, INDEX
        from ..pdata.space_map import INDEX_ENTRY_DTYPE, nr_bitmaps
        import mmap as _mmap

        tm, bm = self.tm, self.bm
        old = tm.nr_blocks
        if nr_blocks <= old:
            return
        if nr_blocks > MAX_METADATA_BLOCKS:
            raise ValueError(f"metadata device of {nr_blocks} blocks: dm-thin's limit is {MAX_METADATA_BLOCKS}")
        bm.wait_zeroing()  # (before the file and its mapping change)
        os.ftruncate(bm.fd, nr_blocks * METADATA_BLOCK_SIZE)
        old_mm = bm.mm
        bm.mm = _mmap.mmap(bm.fd, nr_blocks * METADATA_BLOCK_SIZE, _mmap.MAP_SHARED,
                           _mmap.PROT_READ | _mmap.PROT_WRITE)
        bm.blocks = np.frombuffer(bm.mm, dtype=np.uint8).reshape(nr_blocks, METADATA_BLOCK_SIZE)
        grow = nr_blocks - old

        def ext(a):
            return np.concatenate([a, np.zeros(grow, dtype=a.dtype)])

        bm.fresh = ext(bm.fresh)
        tm.grow(nr_blocks)
        try:
            old_mm.close()
        except BufferError:
            pass  # a view of the old mapping is still alive; it goes with it
        # sm_metadata_extend: the cursor moves to the old end, always (a
        # 5.14+ kernel's next transaction allocates from there on), and its
        # bootstrap allocator hands out the new area in order: first a
        # bitmap for each 16,320 blocks past the last one (sm_ll_extend),
        # then -- their counts going in -- the copy of the old bitmap that
        # holds them, then, the index having changed, the index block's
        # shadow (sm_ll_commit).  With no new bitmap nothing is written.
        tm.begin = old
        new = []
        for _ in range(len(tm.bitmap_blocks), nr_bitmaps(nr_blocks)):
            b = tm.bootstrap_block(BITMAP)
            new.append(b)
            tm.bitmap_blocks = [*tm.bitmap_blocks.tolist(), b]
            e = np.zeros(1, dtype=INDEX_ENTRY_DTYPE)
            e["nr_free"] = ENTRIES_PER_BITMAP
            e["blocknr"] = b
            tm.index_entries = np.concatenate([tm.index_entries, e])
        if new:
            for b in new:
                tm.shadow_bitmap_of(b)
            tm.index_block, _, _ = tm.shadow(tm.index_block, INDEX)
        self.sb.metadata_nr_blocks = nr_blocks

    @property
    def nr_free_metadata_blocks(self) -> int:
        return self.tm.nr_free

    @property
    def nr_used_metadata_blocks(self) -> int:
        """Metadata blocks in use now (the space map's running count)."""
        return self.tm.nr_used

    # ------------------------------------------------------------ commit
    def wait_durable(self) -> None:
        """Return once the last commit is durable: its superblock's flush,
        which ``commit(durable_later=True)`` leaves running, is over."""
        self.bm.wait_flush()

    def commit(self, before_superblock=None, before_flush=None, durable_later: bool = False) -> None:
        """__commit_transaction: details, data space map, metadata space
        map, the other dirty blocks, then the superblock.
        ``before_superblock()``, when given, runs once everything but the
        superblock is written and ``self.sb`` holds the new roots (a caller
        ties its own state to this commit there; it must not change
        ``self.sb``, packed already while the flushes ran).
        ``before_flush()`` runs earlier, once the roots are final and
        before the flush that puts the other blocks on disk; it may return
        a wait, called after that flush and before the superblock (a
        caller's own flush overlaps dm's; every flush runs on a flush
        thread, :class:`~thinp.pdata.block.FlushBehind`, this thread
        waiting).  ``durable_later``: the superblock's flush (sync on) runs
        behind (:meth:`BlockManager.flush_behind`) while this commit's
        bookkeeping and the caller's go on; the caller calls
        :meth:`wait_durable` before anything that needs the commit durable,
        and before it returns."""
        tm = self.tm
        # the commit's own shadows (details, space maps, the tools' batch of
        # ref counts) come from the cursor on: zero the holes there first,
        # for as many blocks as the last commit's own part took (a no-op
        # when the last commit's zeroing ahead covers them; the
        # transaction's own allocations are behind the cursor already, and
        # zeros written here are more pages for barrier 1 to write back)
        tm.zero_for_commit()
        # __write_changed_details: in the list's order (newest opened
        # first); a closed device written leaves the list.  Devices changed
        # without being opened here (restore and repair build pools as the
        # tools do) follow in ascending order.
        order = [dev for dev in self.thin_devices if dev in self.devices]
        listed = set(order)
        order += sorted(dev for dev, d in self.devices.items() if d.changed and dev not in listed)
        for dev in order:
            d = self.devices[dev]
            if d.changed:
                self.sb.device_details_root, _ = bw.insert(tm, self.sb.device_details_root, [dev], d.pack(),
                                                           self.details_vt, split=self.split)
                d.changed = False
                if not self.thin_devices.get(dev, 1):
                    del self.thin_devices[dev]
        self.sb.data_sm_root = self.data_sm.commit()
        cv = bw.ValueType(4)

        def set_rc(root, b, c):
            return bw.insert(tm, root, [b], np.array([c], dtype="<u4").view(np.uint8), cv, split=self.split)[0]

        def remove_rc(root, b):
            return bw.remove(tm, root, [b], cv)[0]

        self.sb.metadata_sm_root = tm.commit_space_map((set_rc, remove_rc), split=self.split)
        bitmap_blocks = tm.bitmap_blocks
        tm.kind[bitmap_blocks[tm.txn[bitmap_blocks] != 0]] = KIND_BITMAP
        tm.kind[tm.index_block] = KIND_INDEX
        written = tm.seal_dirty()
        wait = before_flush() if before_flush is not None else None
        on_file = self.bm.fd >= 0 and self.bm.mm is not None
        flushing = self.sync and on_file and len(written)
        if flushing:
            # barrier 1: every block the new superblock references is on
            # disk before it.  One fdatasync writes back all the file's dirty
            # pages, those dirtied through the shared mapping included (on
            # Linux msync(MS_SYNC) is the same vfs_fsync_range over a range;
            # one msync per run of blocks was one device flush per run).
            # It runs on a flush thread, as the caller's (the sidecar's)
            # does, and this thread waits for both, woken by a flush thread
            # rather than by the disk's completion: measured on this VM at
            # load 8, a 4 KiB pwrite and fdatasync took 3.2-4.0 ms median
            # called from the main thread against 0.17 ms waited for on a
            # flush thread (why is not established)
            self.bm.flush_behind(handoff=False)
        try:
            # the superblock goes out last, whole, in one write: a process
            # killed at any instant leaves either the old or the new one
            # (packed while the flushes run)
            buf = np.zeros(METADATA_BLOCK_SIZE, dtype=np.uint8)
            self.sb.pack(buf)
            SUPERBLOCK.prepare(buf, SUPERBLOCK_LOCATION)
            if wait is not None:
                wait()
        finally:
            if flushing:
                self.bm.wait_flush()
        if before_superblock is not None:
            before_superblock()
        if self.bm.fd >= 0 and self.bm.mm is not None:
            os.pwrite(self.bm.fd, buf.tobytes(), 0)
            if self.sync and durable_later:
                self.bm.flush_behind()  # barrier 2, behind: wait_durable waits
            elif self.sync:
                # barrier 2: the commit is durable (on a flush thread, as
                # barrier 1)
                self.bm.flush_behind(handoff=False)
                self.bm.wait_flush()
        else:
            self.bm.raw(SUPERBLOCK_LOCATION)[:] = buf
        self.bm.forget(SUPERBLOCK_LOCATION)
        self.bm.fresh[SUPERBLOCK_LOCATION] = 0
        allocs = tm.allocs_this_transaction
        tm.end_transaction()
        # ahead of the next transaction, as many blocks as this one took,
        # in a thread: the commit is over (durable) and does not wait for
        # it; the next allocation does, if it is still running
        tm.zero_ahead(ZERO_AHEAD_MIN + allocs, behind=True, sync=self.sync)

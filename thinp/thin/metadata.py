"""The metadata file of a thin pool: layout, commit and validation.

The file is an array of 4 KiB blocks, mmap'd and viewed as
``uint64[nr_metadata_blocks, 512]``.  Nothing committed is ever written in
place (shadow paging), so a commit is atomic: the last thing it writes is one
superblock slot.

Blocks
------
0, 1      superblock slots.  Generation ``g`` lives in slot ``g % 2``; open
          takes the valid slot with the highest generation, so a torn
          superblock write falls back to the previous commit.  Words:
          see the ``SB_*`` names below.  Word ``SB_CSUM`` holds the
          checksum of the other words.
msm       metadata space map: ``msm_nr_pages`` pages, each in two copies at
          ``msm_start + 2*page + copy``.  Commit ``g`` writes copy ``g % 2`` of
          every page changed in transaction ``g`` or ``g - 1``, so copy
          ``g % 2`` is complete for generation ``g`` and copy ``(g-1) % 2``
          is untouched while ``g`` is being written.
          Page words: 0 = checksum of words 1.., 1 = ``SM_MAGIC << 32 |
          page``, 2..511 = 2040 uint16 reference counts, four a word
          (low half-word first).  (Version 1 held 1020 uint32 counts.)
dsm       data space map, the same form (``dsm_start``, ``dsm_nr_pages``).
devdir    device directory: word 0 magic, 1 number of table blocks, 2
          number of devices, 3 checksum of the block, then from word 8 one
          ``crc32 << 32 | block`` per device-table block.
table     device-table blocks: word 0 magic, 1 table index, 2 checksum, then
          63 records of 8 words at ``8 + 8*i``: dev_id (or 2**64-1 free),
          root, ``root_crc << 32 | levels``, size in sectors, mapped_blocks,
          creation_time, snapshotted_time, transaction_id.
held      a held metadata snapshot (``reserve_metadata_snap``): a devdir
          copy that takes a reference on its table blocks and on every
          device root it names.
nodes     mapping-tree nodes, see :mod:`thinp.pdata.radix`.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import uuid as _uuid
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray

from .. import errors
from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from ..pdata import memory
from ..pdata import radix as K
from . import _kernels as TK

MAGIC = 0x7468696E70534231  # "thinpSB1"
VERSION = 2
SM_MAGIC = 0x534D5047  # "SMPG"
DEVDIR_MAGIC = 0x7468696E70444952  # "thinpDIR"
TABLE_MAGIC = 0x7468696E70544142  # "thinpTAB"
FREE_RECORD = np.uint64(0xFFFFFFFFFFFFFFFF)
RECORDS_PER_TABLE = 63
DEVDIR_FIRST = 8
MAX_TABLE_BLOCKS = 512 - DEVDIR_FIRST
MAX_DEVICES = RECORDS_PER_TABLE * MAX_TABLE_BLOCKS

# superblock words
SB_MAGIC, SB_VERSION, SB_CSUM, SB_GEN, SB_TXN, SB_TIME = 0, 1, 2, 3, 4, 5
SB_DBS_SECTORS, SB_NR_DATA, SB_NR_META, SB_FLAGS, SB_HELD = 6, 7, 8, 9, 10
SB_DEVDIR, SB_DEVDIR_CSUM, SB_DSM_START, SB_DSM_PAGES, SB_MSM_START, SB_MSM_PAGES = 11, 12, 13, 14, 15, 16
SB_DCURSOR, SB_MCURSOR, SB_OPTIONS, SB_LWM, SB_UUID_HI, SB_UUID_LO = 17, 18, 19, 20, 21, 22
SB_NR_DEVICES, SB_COMMIT_INTERVAL, SB_HELD_CSUM = 23, 24, 25
SB_NR_WORDS = 32

FLAG_NEEDS_CHECK = 1

OPT_ZERO = 1
OPT_PASSDOWN = 2
OPT_ERROR_IF_NO_SPACE = 4
OPT_PAYLOAD = 8
OPT_IGNORE_DISCARD = 16
OPT_SYNC = 32


def sm_pages(nr_entries: int) -> int:
    return max(1, -(-nr_entries // K.SM_PAGE_ENTRIES))


@dataclass
class Superblock:
    generation: int
    transaction_id: int
    time: int
    data_block_size: int  # bytes
    nr_data_blocks: int
    nr_metadata_blocks: int
    flags: int
    held_root: int
    devdir: int
    devdir_csum: int
    dsm_start: int
    dsm_pages: int
    msm_start: int
    msm_pages: int
    dcursor: int
    mcursor: int
    options: int
    low_water_mark: int
    uuid: str
    nr_devices: int
    commit_interval: int
    held_csum: int


def _corrupt(msg: str) -> errors.MetadataCorruptError:
    return errors.MetadataCorruptError(f"metadata corrupt: {msg}")


class Metadata:
    """One open metadata file: the mmap, the Space and Devices arrays, commit."""

    def __init__(self):
        self.path = None
        self.fd = -1
        self.mm = None
        self.meta = None
        self.sp: K.Space | None = None
        self.dv: TK.Devices | None = None
        self.sb: Superblock | None = None
        self.read_only = False
        self.slot_of: dict[int, int] = {}
        self.table_blocks: list[int] = []
        self.devdir = 0
        self.mdirty_prev = None
        self.ddirty_prev = None

    # ------------------------------------------------------------------ files
    @staticmethod
    def lock_file(fd: int, read_only: bool, path: str) -> None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.PoolBusyError(f"{path}: pool is open read-write by another process") from None

    def _map(self, nr_blocks: int) -> None:
        # Read-only opens map privately but writable: the kernels are compiled
        # for writable arrays (numba cannot type a store into a readonly one),
        # and a private mapping can never reach the file.
        flags = mmap.MAP_PRIVATE if self.read_only else mmap.MAP_SHARED
        self.mm = mmap.mmap(self.fd, nr_blocks * METADATA_BLOCK_SIZE, flags, mmap.PROT_READ | mmap.PROT_WRITE)
        arr = np.frombuffer(self.mm, dtype=np.uint64)
        self.meta = arr.reshape(nr_blocks, K.NODE_ENTRIES)

    def close(self) -> None:
        self.meta = None
        self.sp = None
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes with it
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str, *, nr_meta_blocks: int, nr_data_blocks: int, block_size: int,
               options: int, low_water_mark: int, commit_interval: int) -> "Metadata":
        md = cls()
        md.path = path
        md.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        cls.lock_file(md.fd, False, path)
        os.ftruncate(md.fd, nr_meta_blocks * METADATA_BLOCK_SIZE)
        md._map(nr_meta_blocks)
        msm_pages = sm_pages(nr_meta_blocks)
        dsm_pages = sm_pages(nr_data_blocks)
        fixed = 2 + 2 * msm_pages + 2 * dsm_pages
        if fixed + 4 > nr_meta_blocks:
            md.close()
            os.unlink(path)
            raise ValueError(
                f"metadata_size {nr_meta_blocks * METADATA_BLOCK_SIZE} bytes is too small for "
                f"{nr_data_blocks} data blocks: the space maps alone need {fixed + 4} blocks"
            )
        u = _uuid.uuid4().int
        md.sb = Superblock(
            generation=0, transaction_id=0, time=0, data_block_size=block_size,
            nr_data_blocks=nr_data_blocks, nr_metadata_blocks=nr_meta_blocks, flags=0,
            held_root=0, devdir=0, devdir_csum=0,
            msm_start=2, msm_pages=msm_pages, dsm_start=2 + 2 * msm_pages, dsm_pages=dsm_pages,
            dcursor=0, mcursor=fixed, options=options, low_water_mark=low_water_mark,
            uuid=str(_uuid.UUID(int=u)), nr_devices=0, commit_interval=commit_interval, held_csum=0,
        )
        mrc = np.zeros(nr_meta_blocks, dtype=np.uint32)
        mrc[:fixed] = 1
        drc = np.zeros(nr_data_blocks, dtype=np.uint32)
        md.build_space(mrc, drc)
        md.dv = TK.make_devices(RECORDS_PER_TABLE * 4)
        md.table_blocks = []
        # generation 0 writes every page to both copies
        md.mdirty_prev = np.ones_like(md.sp.mdirty)
        md.ddirty_prev = np.ones_like(md.sp.ddirty)
        md.sp.mdirty[:] = 1
        md.sp.ddirty[:] = 1
        md.commit(first=True)
        return md

    def build_space(self, mrc: np.ndarray, drc: np.ndarray, drc_zero: bool = False) -> None:
        """The Space over ``mrc`` and ``drc``; ``drc_zero``: the data counts
        are known to be all zero (a fresh index's, whose pages nothing has
        touched yet: reading them here would map the zero page over all of
        them, and each first write later would fault again to replace it)."""
        sb = self.sb
        nm, nd = sb.nr_metadata_blocks, sb.nr_data_blocks
        scal = np.zeros(K.NR_SCALARS, dtype=np.int64)
        scal[K.S_TIME] = sb.time
        scal[K.S_DCURSOR] = sb.dcursor if sb.dcursor < nd else 0
        scal[K.S_MCURSOR] = sb.mcursor if sb.mcursor < nm else 0
        scal[K.S_DUSED] = 0 if drc_zero else int(np.count_nonzero(drc))
        scal[K.S_MUSED] = int(np.count_nonzero(mrc))
        scal[K.S_NR_DATA] = nd
        scal[K.S_NR_META] = nm
        scal[K.S_META_RESERVE] = min(4096, nm // 10)
        scal[K.S_LWM] = sb.low_water_mark
        scal[K.S_LWM_ARMED] = 1 if (nd - scal[K.S_DUSED]) > sb.low_water_mark else 0
        scal[K.S_COMMIT_INTERVAL] = sb.commit_interval
        scal[K.S_BLOCK_SIZE] = sb.data_block_size
        scal[K.S_ZERO] = 1 if sb.options & OPT_ZERO else 0
        scal[K.S_ERROR_IF_NO_SPACE] = 1 if sb.options & OPT_ERROR_IF_NO_SPACE else 0
        scal[K.S_PAYLOAD] = 1 if sb.options & OPT_PAYLOAD else 0
        scal[K.S_PASSDOWN] = 1 if sb.options & OPT_PASSDOWN else 0
        scal[TK.S_IGNORE_DISCARD] = 1 if sb.options & OPT_IGNORE_DISCARD else 0
        scal[K.S_META_LWM] = min(1024, nm // 4)
        scal[K.S_META_LWM_ARMED] = 1 if (nm - scal[K.S_MUSED]) > scal[K.S_META_LWM] else 0
        self.sp = K.Space(
            meta=self.meta,
            mrc=mrc,
            mbits=K.make_bitmap(mrc > 0, nm),
            mnew=memory.zeros(nm, np.uint8),
            mpend=memory.zeros(nm, np.uint32),
            mdirty=np.zeros(sm_pages(nm), dtype=np.uint8),
            drc=drc,
            dbits=_free_bitmap(nd) if drc_zero else K.make_bitmap(drc > 0, nd),
            dpend=memory.zeros(nd, np.uint32),
            ddirty=np.zeros(sm_pages(nd), dtype=np.uint8),
            dpass=memory.zeros(nd, np.uint32),
            scal=scal,
            events=np.zeros((K.EV_CAPACITY, 3), dtype=np.int64),
        )

    def data_bitarray(self) -> bitarray:
        """The data allocation bitmap as a bitarray over the same memory
        (bit set = in use or freed this transaction)."""
        return bitarray(buffer=self.sp.dbits, endian="little")

    def meta_bitarray(self) -> bitarray:
        return bitarray(buffer=self.sp.mbits, endian="little")

    # ------------------------------------------------------------- devices
    def free_slot(self) -> int:
        dv = self.dv
        free = np.flatnonzero(dv.dev_id < 0)
        if len(free):
            return int(free[0])
        cap = len(dv.dev_id)
        if cap >= MAX_DEVICES:
            raise errors.ThinpError(f"device table full: thinp holds at most {MAX_DEVICES} thin devices")
        new_cap = min(cap * 2, MAX_DEVICES)
        grown = TK.make_devices(new_cap)
        for a, b in zip(grown, dv):
            a[:cap] = b
        self.dv = grown
        return cap

    # --------------------------------------------------------------- resize
    def resize_data(self, nr: int) -> None:
        """Grow the data space map to ``nr`` blocks (call right after a
        commit).  A bigger map moves to a new region of metadata blocks."""
        sb, sp = self.sb, self.sp
        old_nr = sb.nr_data_blocks
        new_pages = sm_pages(nr)
        if new_pages > sb.dsm_pages:
            need = 2 * new_pages
            bits = self.meta_bitarray()
            pos = bits.find(bitarray("0" * need, endian="little"))
            if pos < 0 or pos + need > sb.nr_metadata_blocks:
                raise errors.NoSpaceError(
                    f"metadata has no run of {need} free blocks for a data space map of {nr} blocks; "
                    "grow the metadata device first")
            bits[pos:pos + need] = 1
            sp.mrc[pos:pos + need] = 1
            sp.scal[K.S_MUSED] += need
            for b in range(sb.dsm_start, sb.dsm_start + 2 * sb.dsm_pages):
                self._dec_meta(b)
            sp.mdirty[pos // K.SM_PAGE_ENTRIES:(pos + need) // K.SM_PAGE_ENTRIES + 1] = 1
            sp.mdirty[sb.dsm_start // K.SM_PAGE_ENTRIES:(sb.dsm_start + 2 * sb.dsm_pages) // K.SM_PAGE_ENTRIES + 1] = 1
            sb.dsm_start, sb.dsm_pages = pos, new_pages
        drc = np.zeros(nr, dtype=np.uint32)
        drc[:old_nr] = sp.drc
        in_use = drc > 0
        in_use[sp.dpend[:sp.scal[K.S_DNPEND]]] = True
        self.sp = sp._replace(
            drc=drc,
            dbits=K.make_bitmap(in_use, nr),
            dpend=np.concatenate([sp.dpend, np.zeros(nr - old_nr, dtype=np.uint32)]),
            ddirty=np.ones(new_pages, dtype=np.uint8),
            dpass=np.concatenate([sp.dpass, np.zeros(nr - old_nr, dtype=np.uint32)]),
        )
        self.ddirty_prev = np.ones(new_pages, dtype=np.uint8)
        sb.nr_data_blocks = nr
        scal = self.sp.scal
        scal[K.S_NR_DATA] = nr
        if (nr - scal[K.S_DUSED]) > scal[K.S_LWM]:
            scal[K.S_LWM_ARMED] = 1

    def resize_metadata(self, nr: int) -> None:
        """Grow the metadata file to ``nr`` blocks (call right after a
        commit).  The file and mapping grow; the metadata space map moves
        to a new run of blocks when it needs more pages; the reserve and the
        low water mark follow the new size."""
        sb, sp = self.sb, self.sp
        old_nr = sb.nr_metadata_blocks
        os.ftruncate(self.fd, nr * METADATA_BLOCK_SIZE)
        old_mm = self.mm
        self.mm = mmap.mmap(self.fd, nr * METADATA_BLOCK_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.meta = np.frombuffer(self.mm, dtype=np.uint64).reshape(nr, K.NODE_ENTRIES)
        mrc = np.zeros(nr, dtype=np.uint32)
        mrc[:old_nr] = sp.mrc
        sb.nr_metadata_blocks = nr
        # after a commit nothing is new or pending, so these start empty
        self.sp = sp = sp._replace(
            meta=self.meta, mrc=mrc, mbits=K.make_bitmap(mrc > 0, nr),
            mnew=np.zeros(nr, dtype=np.uint8), mpend=np.zeros(nr, dtype=np.uint32),
            mdirty=np.ones(sm_pages(nr), dtype=np.uint8))
        scal = sp.scal
        scal[K.S_NR_META] = nr
        scal[K.S_META_RESERVE] = min(4096, nr // 10)
        scal[K.S_META_LWM] = min(1024, nr // 4)
        scal[K.S_META_LWM_ARMED] = 1 if (nr - scal[K.S_MUSED]) > scal[K.S_META_LWM] else 0
        new_pages = sm_pages(nr)
        if new_pages > sb.msm_pages:
            need = 2 * new_pages
            bits = self.meta_bitarray()
            pos = bits.find(bitarray("0" * need, endian="little"))
            if pos < 0 or pos + need > nr:
                raise errors.NoSpaceError(f"metadata has no run of {need} free blocks for its own space map")
            bits[pos:pos + need] = 1
            sp.mrc[pos:pos + need] = 1
            sp.scal[K.S_MUSED] += need
            for b in range(sb.msm_start, sb.msm_start + 2 * sb.msm_pages):
                self._dec_meta(b)
            sb.msm_start, sb.msm_pages = pos, new_pages
        sp.mdirty[:] = 1
        self.mdirty_prev = np.ones_like(sp.mdirty)
        try:
            old_mm.close()
        except BufferError:
            pass  # a view of the old mapping is still alive; it goes with it

    # --------------------------------------------------------------- commit
    def commit(self, first: bool = False) -> None:
        """Make everything since the last commit durable, atomically."""
        sp, dv, sb = self.sp, self.dv, self.sb
        # 0. the on-disk counts are uint16: refuse before anything is written
        # (steps 1-2 only add blocks of count 1 and drop counts)
        for name, rc, pages in (("metadata", sp.mrc, np.flatnonzero(sp.mdirty | self.mdirty_prev)),
                                ("data", sp.drc, np.flatnonzero(sp.ddirty | self.ddirty_prev))):
            over = _sm_overflow(rc, pages)
            if over >= 0:
                raise errors.ThinpError(
                    f"{name} block {over} has {int(rc[over])} references, more than the space map's "
                    f"{K.SM_MAX_COUNT}; the commit was not made")
        # 1. seal changed trees: checksums bottom-up into parents and records
        for slot in np.flatnonzero(dv.dev_id >= 0):
            root = int(dv.root[slot])
            if root and sp.mnew[root]:
                dv.root_crc[slot] = K.seal_tree(sp, root, int(dv.levels[slot]))
                dv.changed[slot] = 1
            elif root == 0 and dv.root_crc[slot] != 0:
                dv.root_crc[slot] = 0
                dv.changed[slot] = 1
        # 2. device table blocks that hold a changed record, then the devdir
        live = np.flatnonzero(dv.dev_id >= 0)
        nr_tables = int(live[-1]) // RECORDS_PER_TABLE + 1 if len(live) else 0
        for s in np.flatnonzero(dv.changed):
            dv.txn[s] = sb.transaction_id if dv.dev_id[s] >= 0 else 0
        dirty_tables = set(int(s) // RECORDS_PER_TABLE for s in np.flatnonzero(dv.changed))
        new_tables = list(self.table_blocks[:nr_tables])
        for k in range(nr_tables):
            if k < len(self.table_blocks) and k not in dirty_tables:
                continue
            b = self._alloc_meta_block()
            self._write_table(b, k)
            if k < len(self.table_blocks):
                self._dec_meta(self.table_blocks[k])
            if k < len(new_tables):
                new_tables[k] = b
            else:
                new_tables.append(b)
        for old in self.table_blocks[nr_tables:]:
            self._dec_meta(old)
        if new_tables != self.table_blocks or self.devdir == 0 or first:
            d = self._alloc_meta_block()
            m = self.meta
            m[d, 0] = DEVDIR_MAGIC
            m[d, 1] = len(new_tables)
            m[d, 2] = int(np.count_nonzero(dv.dev_id >= 0))
            for k, b in enumerate(new_tables):
                m[d, DEVDIR_FIRST + k] = (int(K.block_checksum(m, b)) << 32) | b
            m[d, 3] = 0
            m[d, 3] = K.block_checksum(m, d)
            if self.devdir:
                self._dec_meta(self.devdir)
            self.devdir = d
            self.table_blocks = new_tables
        dv.changed[:] = 0
        # 3. space-map pages changed in this or the previous transaction
        gen = sb.generation + (0 if first else 1)
        copy = gen % 2
        mpages = np.flatnonzero(sp.mdirty | self.mdirty_prev)
        dpages = np.flatnonzero(sp.ddirty | self.ddirty_prev)
        _write_sm_pages(self.meta, sp.mrc, mpages, sb.msm_start, copy)
        _write_sm_pages(self.meta, sp.drc, dpages, sb.dsm_start, copy)
        if first:
            _write_sm_pages(self.meta, sp.mrc, mpages, sb.msm_start, 1 - copy)
            _write_sm_pages(self.meta, sp.drc, dpages, sb.dsm_start, 1 - copy)
        # 4. flush everything but the superblock, then the superblock
        sync = bool(sb.options & OPT_SYNC)
        if sync:
            written = np.flatnonzero(sp.mnew)
            sm_blocks = np.concatenate([sb.msm_start + 2 * mpages + copy, sb.dsm_start + 2 * dpages + copy])
            if first:
                sm_blocks = np.concatenate([sm_blocks, sm_blocks + 1 - 2 * copy])
            self._flush_blocks(np.union1d(written, sm_blocks))
        sb.generation = gen
        sb.time = int(sp.scal[K.S_TIME])
        sb.dcursor = int(sp.scal[K.S_DCURSOR])
        sb.mcursor = int(sp.scal[K.S_MCURSOR])
        sb.devdir = self.devdir
        sb.devdir_csum = int(self.meta[self.devdir, 3])
        sb.nr_devices = int(np.count_nonzero(dv.dev_id >= 0))
        sb.commit_interval = int(sp.scal[K.S_COMMIT_INTERVAL])
        sb.low_water_mark = int(sp.scal[K.S_LWM])
        self._write_superblock(copy)
        if sync:
            self.mm.flush(copy * METADATA_BLOCK_SIZE, METADATA_BLOCK_SIZE)
        # 5. the new transaction
        K.release_pending(sp)
        sp.mnew[:] = 0
        self.mdirty_prev = sp.mdirty.copy()
        self.ddirty_prev = sp.ddirty.copy()
        sp.mdirty[:] = 0
        sp.ddirty[:] = 0
        sp.scal[K.S_OPS_SINCE_COMMIT] = 0

    def _flush_blocks(self, blocks: np.ndarray, gap: int = 64) -> None:
        """msync the given blocks (sorted), as runs merged across small gaps."""
        if len(blocks) == 0:
            return
        breaks = np.flatnonzero(np.diff(blocks) > gap)
        starts = np.concatenate([[blocks[0]], blocks[breaks + 1]])
        ends = np.concatenate([blocks[breaks], [blocks[-1]]]) + 1
        for a, b in zip(starts.tolist(), ends.tolist()):
            self.mm.flush(a * METADATA_BLOCK_SIZE, (b - a) * METADATA_BLOCK_SIZE)

    def _alloc_meta_block(self) -> int:
        b = int(K.alloc_meta(self.sp, True))
        if b < 0:
            raise errors.ReadOnlyPoolError("out of metadata space: no block left for the device table")
        return b

    def _dec_meta(self, b: int) -> None:
        sp = self.sp
        sp.mrc[b] -= 1
        sp.mdirty[b // K.SM_PAGE_ENTRIES] = 1
        if sp.mrc[b] == 0:
            K.release_meta(sp, b)

    def _write_table(self, b: int, k: int) -> None:
        m = self.meta
        dv = self.dv
        m[b, :] = 0
        m[b, 0] = TABLE_MAGIC
        m[b, 1] = k
        base = k * RECORDS_PER_TABLE
        for i in range(RECORDS_PER_TABLE):
            s = base + i
            w = DEVDIR_FIRST + 8 * i
            if s >= len(dv.dev_id) or dv.dev_id[s] < 0:
                m[b, w] = FREE_RECORD
                continue
            m[b, w] = dv.dev_id[s]
            m[b, w + 1] = dv.root[s]
            m[b, w + 2] = (int(dv.root_crc[s]) << 32) | int(dv.levels[s])
            m[b, w + 3] = dv.size_sectors[s]
            m[b, w + 4] = dv.mapped[s]
            m[b, w + 5] = dv.create_time[s]
            m[b, w + 6] = dv.snap_time[s]
            m[b, w + 7] = dv.txn[s]
        m[b, 2] = 0
        m[b, 2] = K.block_checksum(m, b)

    def _write_superblock(self, slot: int) -> None:
        sb = self.sb
        w = np.zeros(K.NODE_ENTRIES, dtype=np.uint64)
        u = _uuid.UUID(sb.uuid).int
        vals = {
            SB_MAGIC: MAGIC, SB_VERSION: VERSION, SB_GEN: sb.generation, SB_TXN: sb.transaction_id,
            SB_TIME: sb.time, SB_DBS_SECTORS: sb.data_block_size // SECTOR_SIZE,
            SB_NR_DATA: sb.nr_data_blocks, SB_NR_META: sb.nr_metadata_blocks, SB_FLAGS: sb.flags,
            SB_HELD: sb.held_root, SB_DEVDIR: sb.devdir, SB_DEVDIR_CSUM: sb.devdir_csum,
            SB_DSM_START: sb.dsm_start, SB_DSM_PAGES: sb.dsm_pages, SB_MSM_START: sb.msm_start,
            SB_MSM_PAGES: sb.msm_pages, SB_DCURSOR: sb.dcursor, SB_MCURSOR: sb.mcursor,
            SB_OPTIONS: sb.options, SB_LWM: sb.low_water_mark, SB_UUID_HI: u >> 64,
            SB_UUID_LO: u & ((1 << 64) - 1), SB_NR_DEVICES: sb.nr_devices,
            SB_COMMIT_INTERVAL: sb.commit_interval, SB_HELD_CSUM: sb.held_csum,
        }
        for k, v in vals.items():
            w[k] = v
        w[SB_CSUM] = K.words_checksum(w, slot)
        self.meta[slot, :] = w

    # ------------------------------------------------------------------ open
    @classmethod
    def open(cls, path: str, read_only: bool = False, check_trees: bool = True) -> "Metadata":
        """Open and validate.  The superblock, space maps and device table are
        always checked (checksums, magic, bounds) in numpy.  ``check_trees``
        also walks every mapping tree, verifying each node's checksum and
        recounting every reference (what open for writing always does);
        without it nothing may run a kernel over the trees."""
        md = cls()
        md.path = path
        md.read_only = read_only
        try:
            md.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no metadata file (is this a thin pool directory?)") from None
        cls.lock_file(md.fd, read_only, path)
        try:
            md.load(check_trees=check_trees or not read_only)
        except BaseException:
            md.close()
            raise
        return md

    def load(self, check_trees: bool = True) -> None:
        fsize = os.fstat(self.fd).st_size
        if fsize < 2 * METADATA_BLOCK_SIZE:
            raise _corrupt(f"{self.path}: file is {fsize} bytes, shorter than the two superblocks")
        head = np.frombuffer(os.pread(self.fd, 2 * METADATA_BLOCK_SIZE, 0), dtype=np.uint64).reshape(2, -1)
        from .format import THIN_SUPERBLOCK_MAGIC

        if int(head[0, 4]) == THIN_SUPERBLOCK_MAGIC and int(head[0, SB_MAGIC]) != MAGIC:
            raise errors.NotSupportedError(
                f"{self.path} is a dm-thin metadata image: open its pool with thinp.thin.dm_pool.DmPool, "
                "or read it with thinp check/dump/ls/delta/rmap")
        best = None
        reasons = []
        for slot in (0, 1):
            w = head[slot].copy()
            if int(w[SB_MAGIC]) != MAGIC:
                reasons.append(f"superblock {slot}: bad magic {int(w[SB_MAGIC]):#x}")
                continue
            stored = int(w[SB_CSUM])
            w[SB_CSUM] = 0
            if int(K.checksums_np(w[None, :], np.array([slot]))[0]) != stored:
                reasons.append(f"superblock {slot}: checksum mismatch")
                continue
            if int(w[SB_VERSION]) != VERSION:
                reasons.append(f"superblock {slot}: unsupported version {int(w[SB_VERSION])}")
                continue
            if int(w[SB_GEN]) % 2 != slot:
                reasons.append(f"superblock {slot}: generation {int(w[SB_GEN])} in the wrong slot")
                continue
            if best is None or int(w[SB_GEN]) > int(best[SB_GEN]):
                best = w
        if best is None:
            raise _corrupt(f"{self.path}: no valid superblock ({'; '.join(reasons)})")
        w = best
        u = (int(w[SB_UUID_HI]) << 64) | int(w[SB_UUID_LO])
        sb = Superblock(
            generation=int(w[SB_GEN]), transaction_id=int(w[SB_TXN]), time=int(w[SB_TIME]),
            data_block_size=int(w[SB_DBS_SECTORS]) * SECTOR_SIZE, nr_data_blocks=int(w[SB_NR_DATA]),
            nr_metadata_blocks=int(w[SB_NR_META]), flags=int(w[SB_FLAGS]), held_root=int(w[SB_HELD]),
            devdir=int(w[SB_DEVDIR]), devdir_csum=int(w[SB_DEVDIR_CSUM]), dsm_start=int(w[SB_DSM_START]),
            dsm_pages=int(w[SB_DSM_PAGES]), msm_start=int(w[SB_MSM_START]), msm_pages=int(w[SB_MSM_PAGES]),
            dcursor=int(w[SB_DCURSOR]), mcursor=int(w[SB_MCURSOR]), options=int(w[SB_OPTIONS]),
            low_water_mark=int(w[SB_LWM]), uuid=str(_uuid.UUID(int=u & ((1 << 128) - 1))),
            nr_devices=int(w[SB_NR_DEVICES]), commit_interval=int(w[SB_COMMIT_INTERVAL]),
            held_csum=int(w[SB_HELD_CSUM]),
        )
        self.sb = sb
        nm, nd = sb.nr_metadata_blocks, sb.nr_data_blocks
        bs = sb.data_block_size
        if bs < 65536 or bs > (1 << 30) or bs % 65536:
            raise _corrupt(f"superblock: data block size {bs} bytes is outside 64KiB..1GiB")
        if nm < 8 or nm > (1 << 32) or nd < 1 or nd >= (1 << 40):
            raise _corrupt(f"superblock: sizes out of range (metadata blocks {nm}, data blocks {nd})")
        if fsize < nm * METADATA_BLOCK_SIZE:
            raise _corrupt(f"{self.path}: file is {fsize} bytes but the superblock says {nm} blocks "
                           f"({nm * METADATA_BLOCK_SIZE} bytes): truncated")
        if sb.msm_pages != sm_pages(nm) or sb.dsm_pages != sm_pages(nd):
            raise _corrupt("superblock: space-map page counts do not match the sizes")
        for name, start, pages in (("metadata", sb.msm_start, sb.msm_pages), ("data", sb.dsm_start, sb.dsm_pages)):
            if start < 2 or start + 2 * pages > nm:
                raise _corrupt(f"superblock: {name} space map at {start}+{2 * pages} lies outside the file")
        if not (2 <= sb.devdir < nm):
            raise _corrupt(f"superblock: device directory block {sb.devdir} out of range")
        if sb.held_root and not (2 <= sb.held_root < nm):
            raise _corrupt(f"superblock: held root {sb.held_root} out of range")
        self._map(nm)
        m = self.meta
        copy = sb.generation % 2
        mrc = np.zeros(nm, dtype=np.uint32)
        drc = np.zeros(nd, dtype=np.uint32)
        for name, arr, start, pages in (("metadata", mrc, sb.msm_start, sb.msm_pages), ("data", drc, sb.dsm_start, sb.dsm_pages)):
            bad = _read_sm_pages_np(m, arr, start, pages, copy)
            if bad >= 0:
                raise _corrupt(f"{name} space map page {bad} (block {start + 2 * bad + copy}) failed its checksum")
        # device directory and tables
        self._check_block(sb.devdir, sb.devdir_csum, "device directory", csum_word=3, magic=DEVDIR_MAGIC)
        nr_tables = int(m[sb.devdir, 1])
        if nr_tables > MAX_TABLE_BLOCKS:
            raise _corrupt(f"device directory: {nr_tables} table blocks, more than {MAX_TABLE_BLOCKS}")
        self.devdir = sb.devdir
        self.table_blocks = []
        for k in range(nr_tables):
            e = int(m[sb.devdir, DEVDIR_FIRST + k])
            b, crc = e & 0xFFFFFFFF, e >> 32
            if not (2 <= b < nm):
                raise _corrupt(f"device directory entry {k}: table block {b} out of range")
            if int(K.checksums_np(m[b][None, :], np.array([b]))[0]) != crc:
                raise _corrupt(f"device table block {b} failed its checksum")
            if int(m[b, 0]) != TABLE_MAGIC or int(m[b, 1]) != k:
                raise _corrupt(f"device table block {b}: bad magic or index")
            self.table_blocks.append(b)
        cap = max(RECORDS_PER_TABLE * 4, RECORDS_PER_TABLE * nr_tables)
        dv = TK.make_devices(cap)
        self.slot_of = {}
        for k, b in enumerate(self.table_blocks):
            for i in range(RECORDS_PER_TABLE):
                w0 = DEVDIR_FIRST + 8 * i
                if m[b, w0] == FREE_RECORD:
                    continue
                s = k * RECORDS_PER_TABLE + i
                rec = [int(x) for x in m[b, w0:w0 + 8]]
                dev_id, root, lv_crc, size_sectors, mapped, ctime, stime, txn = rec
                levels = lv_crc & 0xFFFFFFFF
                nrb = -(-size_sectors * SECTOR_SIZE // bs)
                problem = None
                if dev_id >= (1 << 24):
                    problem = f"dev_id {dev_id} is not 24-bit"
                elif dev_id in self.slot_of:
                    problem = f"dev_id {dev_id} appears twice"
                elif root != 0 and not (2 <= root < nm):
                    problem = f"root {root} out of range"
                elif not (1 <= nrb < (1 << 40)) or levels != TK.levels_for(nrb):
                    problem = f"size {nrb} blocks / depth {levels} inconsistent"
                elif mapped > nrb or ctime > sb.time or stime > sb.time:
                    problem = "counters out of range"
                if problem:
                    raise _corrupt(f"device table block {b} record {i}: {problem}")
                self.slot_of[dev_id] = s
                dv.dev_id[s], dv.root[s], dv.levels[s], dv.nr_blocks[s] = dev_id, root, levels, nrb
                dv.mapped[s], dv.create_time[s], dv.snap_time[s], dv.txn[s] = mapped, ctime, stime, txn
                dv.size_sectors[s] = size_sectors
                dv.root_crc[s] = lv_crc >> 32
        self.dv = dv
        self.sb.flags = sb.flags
        if check_trees:
            self._validate_trees(mrc, drc)
        self.build_space(mrc, drc)
        # The first commit writes the other copy, which is stale wherever the
        # last committed transaction changed a page: mark those as changed.
        self.mdirty_prev = _pages_out_of_step(self.meta, sb.msm_start, sb.msm_pages)
        self.ddirty_prev = _pages_out_of_step(self.meta, sb.dsm_start, sb.dsm_pages)

    def _check_block(self, b: int, crc: int, what: str, csum_word: int, magic: int) -> None:
        m = self.meta
        if int(m[b, 0]) != magic:
            raise _corrupt(f"{what} block {b}: bad magic {int(m[b, 0]):#x}")
        w = m[b].copy()
        stored = int(w[csum_word])
        w[csum_word] = 0
        if stored != crc or int(K.checksums_np(w[None, :], np.array([b]))[0]) != stored:
            raise _corrupt(f"{what} block {b} failed its checksum")

    def held_roots(self) -> list[tuple[int, int]]:
        """(root, levels) of every tree a held metadata snapshot pins."""
        sb = self.sb
        if not sb.held_root:
            return []
        m = self.meta
        self._check_block(sb.held_root, sb.held_csum, "held metadata snapshot", csum_word=3, magic=DEVDIR_MAGIC)
        out = []
        for k in range(int(m[sb.held_root, 1])):
            b = int(m[sb.held_root, DEVDIR_FIRST + k]) & 0xFFFFFFFF
            if not (2 <= b < sb.nr_metadata_blocks) or int(m[b, 0]) != TABLE_MAGIC:
                raise _corrupt(f"held metadata snapshot: table block {b} invalid")
            for i in range(RECORDS_PER_TABLE):
                w0 = DEVDIR_FIRST + 8 * i
                if m[b, w0] == FREE_RECORD:
                    continue
                root = int(m[b, w0 + 1])
                levels = int(m[b, w0 + 2]) & 0xFFFFFFFF
                if root:
                    out.append((root, levels))
        return out

    def held_tables(self) -> list[int]:
        sb = self.sb
        if not sb.held_root:
            return []
        m = self.meta
        return [int(m[sb.held_root, DEVDIR_FIRST + k]) & 0xFFFFFFFF for k in range(int(m[sb.held_root, 1]))]

    def count_references(self):
        """Walk every reachable tree; return (mrc_count, drc_count, nr_mappings)
        or raise MetadataCorruptError naming the first bad block."""
        sb = self.sb
        nm, nd = sb.nr_metadata_blocks, sb.nr_data_blocks
        m = self.meta
        visited = np.zeros(nm, dtype=np.uint8)
        mrc_count = np.zeros(nm, dtype=np.uint32)
        drc_count = np.zeros(nd, dtype=np.uint32)
        err = np.zeros(4, dtype=np.int64)
        total = 0
        dv = self.dv
        roots = [(int(dv.root[s]), int(dv.levels[s]), int(dv.root_crc[s]), int(dv.dev_id[s]))
                 for s in np.flatnonzero(dv.dev_id >= 0) if dv.root[s]]
        held = [(r, lv, None, None) for r, lv in self.held_roots()]
        for root, levels, crc, dev in roots + held:
            if crc is not None and visited[root] == 0 and int(K.block_checksum(m, root)) != crc:
                raise _corrupt(f"mapping root block {root} of device {dev} failed its checksum")
            r = K.walk_tree(m, root, levels, nm, visited, mrc_count, drc_count, nd, sb.time, err)
            if r < 0:
                raise _corrupt(_walk_error(err, dev))
            total += r
        # fixed blocks: superblocks, space-map regions, devdir, tables, held
        mrc_count[0:2] += 1
        mrc_count[sb.msm_start:sb.msm_start + 2 * sb.msm_pages] += 1
        mrc_count[sb.dsm_start:sb.dsm_start + 2 * sb.dsm_pages] += 1
        mrc_count[self.devdir] += 1
        for b in self.table_blocks:
            mrc_count[b] += 1
        if sb.held_root:
            mrc_count[sb.held_root] += 1
            for b in self.held_tables():
                mrc_count[b] += 1
        return mrc_count, drc_count, total

    def _validate_trees(self, mrc: np.ndarray, drc: np.ndarray) -> None:
        mrc_count, drc_count, _ = self.count_references()
        bad = np.flatnonzero(mrc_count != mrc)
        if len(bad):
            b = int(bad[0])
            raise _corrupt(f"metadata space map: block {b} has count {int(mrc[b])}, "
                           f"but {int(mrc_count[b])} references were found ({len(bad)} blocks disagree)")
        bad = np.flatnonzero(drc_count != drc)
        if len(bad):
            p = int(bad[0])
            raise _corrupt(f"data space map: block {p} has count {int(drc[p])}, "
                           f"but {int(drc_count[p])} mappings were found ({len(bad)} blocks disagree)")
        # device mapped counts
        dv = self.dv
        for s in np.flatnonzero(dv.dev_id >= 0):
            root = int(dv.root[s])
            n = count_mapped(m=self.meta, root=root, levels=int(dv.levels[s]))
            if n != int(dv.mapped[s]):
                raise _corrupt(f"device {int(dv.dev_id[s])}: record says {int(dv.mapped[s])} mapped blocks, tree has {n}")


def _pages_out_of_step(meta: np.ndarray, start: int, pages: int) -> np.ndarray:
    """1 for each space-map page whose two copies differ (ignoring word 0,
    the checksum, which is seeded with the block number)."""
    out = np.zeros(pages, dtype=np.uint8)
    for lo in range(0, pages, 1024):
        hi = min(pages, lo + 1024)
        copy0 = meta[start + 2 * lo:start + 2 * hi:2, 1:]
        copy1 = meta[start + 2 * lo + 1:start + 2 * hi:2, 1:]
        out[lo:hi] = (copy0 != copy1).any(axis=1)
    return out


def count_mapped(m, root, levels):
    if root == 0:
        return 0
    return int(_count_tree(m, root, levels))


from ..config import njit  # noqa: E402


@njit
def _count_tree(meta, root, levels):
    stack_b = np.empty(8 * K.NODE_ENTRIES + 8, dtype=np.int64)
    stack_l = np.empty(8 * K.NODE_ENTRIES + 8, dtype=np.int64)
    stack_b[0] = root
    stack_l[0] = levels
    top = 1
    n = 0
    while top > 0:
        top -= 1
        b = stack_b[top]
        lv = stack_l[top]
        for i in range(K.NODE_ENTRIES):
            e = meta[b, i]
            if e == 0:
                continue
            if lv == 1:
                n += 1
            else:
                stack_b[top] = np.int64(e & np.uint64(K.CHILD_MASK))
                stack_l[top] = lv - 1
                top += 1
    return n


@njit
def _sm_overflow(rc, pages):
    """The first entry of these space-map pages whose count does not fit in
    a uint16, or -1."""
    n = rc.shape[0]
    for k in range(pages.shape[0]):
        base = pages[k] * K.SM_PAGE_ENTRIES
        for i in range(base, min(base + K.SM_PAGE_ENTRIES, n)):
            if rc[i] > K.SM_MAX_COUNT:
                return i
    return -1


@njit
def _write_sm_pages(meta, rc, pages, start, copy):
    n = rc.shape[0]
    for k in range(pages.shape[0]):
        pg = pages[k]
        b = start + 2 * pg + copy
        base = pg * K.SM_PAGE_ENTRIES
        meta[b, 1] = (np.uint64(SM_MAGIC) << np.uint64(32)) | np.uint64(pg)
        for j in range(2, K.NODE_ENTRIES):
            w = np.uint64(0)
            i0 = base + 4 * (j - 2)
            for q in range(4):
                if i0 + q < n:
                    w |= np.uint64(rc[i0 + q] & 0xFFFF) << np.uint64(16 * q)
            meta[b, j] = w
        meta[b, 0] = 0
        meta[b, 0] = K.block_checksum(meta, b)


def _read_sm_pages_np(meta, rc, start, npages, copy):
    """Fill ``rc`` from the pages (numpy); return the first bad page or -1."""
    blocks = np.arange(npages, dtype=np.int64) * 2 + start + copy
    pages = meta[blocks]
    zeroed = pages.copy()
    zeroed[:, 0] = 0
    ok = K.checksums_np(zeroed, blocks) == pages[:, 0]
    ok &= pages[:, 1] == ((np.uint64(SM_MAGIC) << np.uint64(32)) | np.arange(npages, dtype=np.uint64))
    if not ok.all():
        return int(np.flatnonzero(~ok)[0])
    words = pages[:, 2:]
    counts = np.stack([(words >> np.uint64(16 * q)) & np.uint64(0xFFFF) for q in range(4)], axis=-1)
    rc[:] = counts.reshape(-1)[: rc.shape[0]]
    return -1


def _walk_error(err: np.ndarray, dev) -> str:
    code, b, i, v = (int(x) for x in err)
    who = f"device {dev}" if dev is not None else "held metadata snapshot"
    return {
        1: f"{who}: node {b} entry {i} points to block {v}, outside the metadata device",
        2: f"{who}: node {b} failed its checksum (parent {i}, entry {v})",
        3: f"{who}: leaf {b} entry {i} maps data block {v}, outside the data device",
        4: f"{who}: leaf {b} entry {i} has time {v}, later than the pool's time",
        5: f"{who}: tree at {b} has an impossible depth",
        6: f"{who}: node {b} is reached at two different depths",
    }.get(code, f"{who}: unknown error {code} at block {b}")


def highest_mapped_py(meta, root: int, levels: int, nr_meta: int) -> int:
    """Highest mapped vblock by a bounds-checked walk in Python (for pools
    opened without the tree check); -1 if none."""
    def walk(node, lv, base):
        if not 2 <= node < nr_meta:
            raise _corrupt(f"mapping node pointer {node} out of range")
        idx = np.flatnonzero(meta[node])
        for i in idx[::-1]:
            i = int(i)
            if lv == 1:
                return base + i
            child = int(meta[node, i]) & 0xFFFFFFFF
            r = walk(child, lv - 1, base + (i << (K.NODE_SHIFT * (lv - 1))))
            if r >= 0:
                return r
        return -1

    if root == 0:
        return -1
    if not 1 <= levels <= 7:
        raise _corrupt(f"tree depth {levels} impossible")
    return walk(root, levels, 0)


def _free_bitmap(nr_bits: int) -> np.ndarray:
    """``K.make_bitmap`` of ``nr_bits`` free blocks (bits past them set)."""
    bits = np.zeros(K.bitmap_words(nr_bits), dtype=np.uint64)
    if nr_bits & 63:
        bits[-1] = ~np.uint64((1 << (nr_bits & 63)) - 1)
    return bits

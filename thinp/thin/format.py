"""dm-thin's on-disk records: the superblock, device details and block_time.

Superblock (block 0, salt SUPERBLOCK_CSUM_XOR, checksum over bytes 4..4095)::

    0   __le32 csum             4   __le32 flags (1 = needs_check)
    8   __le64 blocknr (0)      16  __u8 uuid[16]
    32  __le64 magic 27022010   40  __le32 version (1 or 2)
    44  __le32 time             48  __le64 trans_id
    56  __le64 held_root        64  __u8 data_space_map_root[128]
    192 __u8 metadata_space_map_root[128]
    320 __le64 data_mapping_root    328 __le64 device_details_root
    336 __le32 data_block_size (sectors)   340 __le32 metadata_block_size (8)
    344 __le64 metadata_nr_blocks   352 __le32 compat_flags
    356 __le32 compat_ro_flags      360 __le32 incompat_flags

A held metadata snapshot (``reserve_metadata_snap``) is a copy of the
superblock in another block, ``held_root``, whose mapping and details roots
each carry one more reference.

Device details (values of the details btree, keyed by dev_id, 24 bytes)::

    __le64 mapped_blocks; __le64 transaction_id;
    __le32 creation_time; __le32 snapshotted_time

A mapping leaf value is ``pblock << 24 | time`` (:func:`pack_block_time`,
the only place that packs or unpacks it).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..pdata.block import SUPERBLOCK, BlockManager, corrupt
from ..pdata.space_map import SmRoot

THIN_SUPERBLOCK_MAGIC = 27022010
THIN_VERSION = 2
THIN_MIN_VERSION = 1
SUPERBLOCK_LOCATION = 0
METADATA_BLOCK_SECTORS = 8
FLAG_NEEDS_CHECK = 1
DETAILS_SIZE = 24
DETAILS_DTYPE = np.dtype([("mapped_blocks", "<u8"), ("transaction_id", "<u8"),
                          ("creation_time", "<u4"), ("snapshotted_time", "<u4")])
TIME_BITS = 24
TIME_MASK = (1 << TIME_BITS) - 1


def pack_block_time(pblock, time):
    """``pblock << 24 | time`` (works on ints and uint64 arrays)."""
    if isinstance(pblock, np.ndarray):
        return (pblock.astype(np.uint64) << np.uint64(TIME_BITS)) | (np.asarray(time).astype(np.uint64) & np.uint64(TIME_MASK))
    return (int(pblock) << TIME_BITS) | (int(time) & TIME_MASK)


def unpack_block_time(v):
    """(pblock, time) from ``pblock << 24 | time`` (ints or uint64 arrays)."""
    if isinstance(v, np.ndarray):
        return (v >> np.uint64(TIME_BITS)).astype(np.int64), (v & np.uint64(TIME_MASK)).astype(np.int64)
    return int(v) >> TIME_BITS, int(v) & TIME_MASK


#: the superblock's fields (see the layout above): bytes 4..63, the two
#: space-map roots (32 bytes each, at 64 and 192), bytes 320..363
_SB_HEAD = struct.Struct("<4xI8x16sQIIQQ")
_SM_ROOTS = struct.Struct("<4Q96x4Q")
_SB_TAIL = struct.Struct("<QQIIQIII")


@dataclass
class Superblock:
    flags: int = 0
    uuid: bytes = b"\0" * 16
    version: int = THIN_VERSION
    time: int = 0
    trans_id: int = 0
    held_root: int = 0
    data_sm_root: SmRoot = field(default_factory=lambda: SmRoot(0, 0, 0, 0))
    metadata_sm_root: SmRoot = field(default_factory=lambda: SmRoot(0, 0, 0, 0))
    data_mapping_root: int = 0
    device_details_root: int = 0
    data_block_size: int = 128  # sectors
    metadata_block_size: int = METADATA_BLOCK_SECTORS
    metadata_nr_blocks: int = 0
    compat_flags: int = 0
    compat_ro_flags: int = 0
    incompat_flags: int = 0

    @classmethod
    def unpack(cls, blk: np.ndarray) -> "Superblock":
        u32 = lambda o: int(blk[o:o + 4].view("<u4")[0])  # noqa: E731
        u64 = lambda o: int(blk[o:o + 8].view("<u8")[0])  # noqa: E731
        return cls(flags=u32(4), uuid=bytes(blk[16:32]), version=u32(40), time=u32(44), trans_id=u64(48),
                   held_root=u64(56), data_sm_root=SmRoot.unpack(blk[64:192]),
                   metadata_sm_root=SmRoot.unpack(blk[192:320]), data_mapping_root=u64(320),
                   device_details_root=u64(328), data_block_size=u32(336), metadata_block_size=u32(340),
                   metadata_nr_blocks=u64(344), compat_flags=u32(352), compat_ro_flags=u32(356),
                   incompat_flags=u32(360))

    def pack(self, blk: np.ndarray) -> None:
        """Write every field into ``blk`` (zeroed first); the caller seals it.
        Three ``struct`` calls (a numpy view per field cost ~15 us, twice a
        commit)."""
        blk[:] = 0
        d, m = self.data_sm_root, self.metadata_sm_root
        _SB_HEAD.pack_into(blk, 0, self.flags, self.uuid, THIN_SUPERBLOCK_MAGIC, self.version, self.time,
                           self.trans_id, self.held_root)
        _SM_ROOTS.pack_into(blk, 64, d.nr_blocks, d.nr_allocated, d.bitmap_root, d.ref_count_root,
                            m.nr_blocks, m.nr_allocated, m.bitmap_root, m.ref_count_root)
        _SB_TAIL.pack_into(blk, 320, self.data_mapping_root, self.device_details_root, self.data_block_size,
                           self.metadata_block_size, self.metadata_nr_blocks, self.compat_flags,
                           self.compat_ro_flags, self.incompat_flags)

    @property
    def nr_data_blocks(self) -> int:
        return self.data_sm_root.nr_blocks


def read_superblock(bm: BlockManager, b: int = SUPERBLOCK_LOCATION, what: str = "superblock") -> Superblock:
    """The superblock at block ``b``, checked as dm's sb validator does."""
    if not 0 <= b < bm.nr_blocks:
        raise corrupt(f"{what}: block {b} is outside the metadata device ({bm.nr_blocks} blocks)")
    blk = bm.blocks[b]
    magic = int(blk[32:40].view("<u8")[0])
    if magic != THIN_SUPERBLOCK_MAGIC:
        raise corrupt(f"{what} (block {b}): magic {magic}, not dm-thin's {THIN_SUPERBLOCK_MAGIC}")
    problem = None if bm.fresh[b] else SUPERBLOCK.check(blk, b)
    if problem:
        raise corrupt(problem if what == "superblock" else f"{what}: {problem}")
    sb = Superblock.unpack(blk)
    if not THIN_MIN_VERSION <= sb.version <= THIN_VERSION:
        raise corrupt(f"{what}: version {sb.version} is not one dm-thin reads ({THIN_MIN_VERSION}..{THIN_VERSION})")
    if sb.metadata_block_size != METADATA_BLOCK_SECTORS:
        raise corrupt(f"{what}: metadata block size {sb.metadata_block_size} sectors, not {METADATA_BLOCK_SECTORS}")
    if sb.data_block_size < 128 or sb.data_block_size > 2097152 or sb.data_block_size % 128:
        raise corrupt(f"{what}: data block size {sb.data_block_size} sectors is not 64 KiB..1 GiB in 64 KiB steps")
    return sb

"""An xfs-like filesystem: mkfs.xfs 6.1's geometry and the kernel's allocators.

Geometry (4 KiB blocks, 512-byte inodes, crc/finobt/reflink/sparse on):

* ``agcount`` allocation groups (default 4, more when an AG would pass
  1 TiB); each AG starts with a block of sector headers (sb, AGF, AGI, AGFL)
  and the roots of the by-block and by-count free-space btrees, the inode and
  free-inode btrees and the refcount btree (blocks 1-5), then the AGFL's four
  reserved blocks;
* the internal log (64 MiB up to 128 GiB, then 1/2048 of the fs, at most
  2 GiB) right after the headers of the middle AG (``agcount // 2``);
* inodes in chunks of 64 (8 blocks, 8-block aligned); the root chunk is the
  first aligned chunk of AG 0 (blocks 16-23).

What mkfs writes (measured with FIEMAP): 128 KiB of zeroes at the start of
the device then AG 0's headers, the 6 header blocks of every other AG, the
zeroed log, and 128 KiB of zeroes at the end.
"""
from __future__ import annotations

import errno

from .core import BLOCK, Filesystem, Inode, os_error

INODE_SIZE = 512
CHUNK_INODES = 64
CHUNK_BLOCKS = CHUNK_INODES * INODE_SIZE // BLOCK   # 8
HEADER_BLOCKS = 6
AGFL_BLOCKS = 4
WHACK_BLOCKS = 32                                   # 128 KiB
LITERAL_BYTES = INODE_SIZE - 176                    # v3 inode core
MIN_FS_BYTES = 300 << 20                    # mkfs.xfs: "must be larger than 300MB"


def default_log_blocks(nr_blocks: int) -> int:
    """Internal log size: 64 MiB, or 1/2048 of the fs when that is more, at most 2 GiB."""
    return int(min(max(16384, nr_blocks // 2048), 524288))


def default_agcount(nr_blocks: int) -> int:
    size = nr_blocks * BLOCK
    n = 4
    while -(-size // n) > (1 << 40):
        n *= 2
    while n > 1 and nr_blocks // n < 4096:   # AGs of at least 16 MiB
        n //= 2
    return n


class _Chunk:
    __slots__ = ("start", "used", "ag")

    def __init__(self, start: int, ag: int):
        self.start = start
        self.used = 0      # bitmask of the 64 inodes
        self.ag = ag

    def __deepcopy__(self, memo):   # Filesystem.clone copies ~100 of these per snapshot
        c = _Chunk(self.start, self.ag)
        c.used = self.used
        memo[id(self)] = c
        return c


class Xfs(Filesystem):
    """xfs with AG rotor for directories, inode chunks and near-inode data."""

    fstype = "xfs"
    max_extent_len = 1 << 21
    ROOT_INO = 128

    def __init__(self, device, *, agcount: int | None = None, log_size=None, discard: bool = False,
                 nodiscard: bool = False, seed: int = 0):
        from ..units import parse_size

        nr_blocks = device.size // BLOCK
        if device.size < MIN_FS_BYTES:
            raise ValueError(f"device of {device.size} bytes is too small for xfs: "
                             "mkfs.xfs 6.1 wants a filesystem larger than 300MB")
        agcount = default_agcount(nr_blocks) if agcount is None else int(agcount)
        if agcount < 1:
            raise ValueError(f"agcount {agcount} must be >= 1")
        agblocks = -(-nr_blocks // agcount)
        if agblocks < 4096:
            raise ValueError(f"agcount {agcount} makes AGs of {agblocks} blocks (< 16 MiB)")
        agcount = -(-nr_blocks // agblocks)
        self.agcount, self.agblocks = agcount, agblocks
        self.log_blocks = (parse_size(log_size, what="log_size") // BLOCK) if log_size else default_log_blocks(nr_blocks)
        self.log_blocks = min(self.log_blocks, agblocks - 64)
        self.options = dict(agcount=agcount, log_size=log_size)
        self._init_common(device, nr_blocks, agblocks, discard_mount=discard, journal=True, seed=seed)
        self.max_inodes = nr_blocks * BLOCK // INODE_SIZE // 4    # imaxpct=25
        self._chunks: dict[int, _Chunk] = {}          # chunk start block -> chunk
        self._ag_chunks: list[list[_Chunk]] = [[] for _ in range(agcount)]
        self._ag_free: list[dict[int, _Chunk]] = [{} for _ in range(agcount)]   # the finobt: chunks with a free inode
        self._ag_newino = [0] * agcount
        self._ino_of: dict[int, tuple] = {}
        self._rotor = 0
        self._mkfs(nodiscard)

    def _ag_start(self, ag: int) -> int:
        return ag * self.agblocks

    def _ag_end(self, ag: int) -> int:
        return min(self.nr_blocks, (ag + 1) * self.agblocks)

    def _mkfs(self, nodiscard):
        dev = self.device
        if not nodiscard:
            dev.discard(0, dev.size)
        log_ag = self.agcount // 2
        for ag in range(self.agcount):
            s = self._ag_start(ag)
            self._reserve_static(s, HEADER_BLOCKS)
            if ag == log_ag:
                self.log_start = s + HEADER_BLOCKS
                self._reserve_static(self.log_start, self.log_blocks)
                self._reserve_static(self.log_start + self.log_blocks, AGFL_BLOCKS)
            else:
                self._reserve_static(s + HEADER_BLOCKS, AGFL_BLOCKS)
        root = Inode(self.ROOT_INO, 0o040755)
        root.entries, root.nlink, root.parent, root.dir_bytes = {}, 2, self.ROOT_INO, self._empty_dir_bytes()
        ino, loc, ag = self._alloc_inode_in(0, reserve=3)    # root, rt bitmap, rt summary
        root.loc, root.zone = loc, 0
        self.inodes[root.ino] = root
        self._jpos = 1
        # what mkfs.xfs writes
        self._dev_zero_run(0, WHACK_BLOCKS)
        for ag in range(1, self.agcount):
            self._dev_write_run(self._ag_start(ag), HEADER_BLOCKS)
        self._dev_write_run(self.log_start, 1)
        self._dev_zero_run(self.log_start + 1, self.log_blocks - 1)
        self._dev_zero_run(self.nr_blocks - WHACK_BLOCKS, WHACK_BLOCKS)
        self._dirty = set()

    # -- inodes ------------------------------------------------------------------
    def _new_chunk(self, ag: int) -> _Chunk | None:
        lo, hi = self._ag_start(ag), self._ag_end(ag)
        goal = self._ag_newino[ag] or lo
        got = self._find(goal, CHUNK_BLOCKS, align=CHUNK_BLOCKS, min_len=CHUNK_BLOCKS, end=hi)
        if got is None or got[0] < lo:
            got = self._find(lo, CHUNK_BLOCKS, align=CHUNK_BLOCKS, min_len=CHUNK_BLOCKS, end=hi)
        if got is None or got[0] < lo or got[0] >= hi:
            return None
        s = got[0]
        self._mark(s, CHUNK_BLOCKS, 1)
        self._dirty_alloc(s, CHUNK_BLOCKS)
        self._dirty.update(range(s, s + CHUNK_BLOCKS))   # new clusters: ordered buffers, written via the AIL
        c = _Chunk(s, ag)
        self._chunks[s] = c
        self._ag_chunks[ag].append(c)
        self._ag_newino[ag] = s + CHUNK_BLOCKS
        base = self._ag_start(ag)
        self._dirty.update((base, base + 3, base + 4))   # AGI, inobt, finobt
        return c

    def _alloc_inode_in(self, ag: int, reserve: int = 1):
        free = self._ag_free[ag]
        if free:
            c = free[next(iter(free))]
        else:
            c = self._new_chunk(ag)
            if c is None:
                return None
            free[c.start] = c
        idx = 0
        while c.used >> idx & 1:
            idx += 1
        for k in range(reserve):
            c.used |= 1 << (idx + k)
        if c.used == (1 << CHUNK_INODES) - 1:
            del free[c.start]
        ino = (c.start << 6) | idx      # unique; like xfs, derived from the inode's location
        base = self._ag_start(ag)
        self._dirty.update((base, base + 4))
        return ino, c.start + idx * INODE_SIZE // BLOCK, ag

    def _alloc_inode(self, parent: Inode, is_dir: bool):
        if is_dir:
            self._rotor = (self._rotor + 1) % self.agcount
            first = self._rotor
        else:
            first = parent.zone
        for i in range(self.agcount):
            r = self._alloc_inode_in((first + i) % self.agcount)
            if r is not None:
                return r
        raise os_error(errno.ENOSPC, "")

    def _free_inode(self, node: Inode) -> None:
        start = node.ino >> 6
        c = self._chunks[start]
        c.used &= ~(1 << (node.ino & 63))
        self._ag_free[c.ag][c.start] = c
        base = self._ag_start(c.ag)
        self._dirty.update((base, base + 3, base + 4, node.loc))
        if c.used == 0:
            del self._chunks[start]
            del self._ag_free[c.ag][start]
            self._ag_chunks[c.ag].remove(c)
            self._free_run(c.start, CHUNK_BLOCKS)

    def _dirty_alloc(self, start: int, n: int) -> None:
        for ag in range(start // self.agblocks, (start + n - 1) // self.agblocks + 1):
            base = self._ag_start(ag)
            self._dirty.update((base, base + 1, base + 2))   # AGF, bnobt, cntbt

    # -- data ------------------------------------------------------------------------
    def _data_goal(self, node: Inode, lblk: int) -> int:
        prev = None
        for e in node.extents:
            if e[0] > lblk:
                break
            prev = e
        if prev is not None:
            return min(prev[1] + (lblk - prev[0]), self.nr_blocks - 1)
        return node.loc

    def _alloc_data(self, node: Inode, lblk: int, n: int, new_size: int):
        goal = self._data_goal(node, lblk)
        ag = goal // self.agblocks
        out = []
        left = n
        while left:
            got = self._find(goal, left, min_len=left, end=self._ag_end(ag))
            if got is None:
                got = self._find(self._ag_start(ag), left, min_len=1, end=self._ag_end(ag))
            if got is None:
                s, k = self._alloc_run(goal, left)
            else:
                s, k = got
                self._mark(s, k, 1)
                self._dirty_alloc(s, k)
            out.append((s, k))
            left -= k
            goal = s + k
        return out

    # -- directories -------------------------------------------------------------
    def _empty_dir_bytes(self) -> int:
        return 6

    def _dirent_size(self, name: str) -> int:
        return 8 + len(name.encode())

    def _dir_capacity_blocks(self, node: Inode) -> int:
        if node.dir_bytes <= LITERAL_BYTES - (self._xattr_bytes(node) if node.xattrs else 0):
            return len(node.meta_blocks)    # shortform, in the inode (xfs keeps blocks once grown)
        nent = len(node.entries)
        data_bytes = node.dir_bytes + 8 * nent + 8 * nent   # data entries are bigger than sf ones
        if data_bytes + 8 * nent + 64 <= BLOCK:
            need = 1
        else:
            data = -(-data_bytes // (BLOCK - 64))
            leaves = -(-(8 * nent) // (BLOCK - 64))
            need = data + leaves + (1 if leaves > 1 else 0)
        return max(need, len(node.meta_blocks))

    def _inline_limit(self) -> int:
        return LITERAL_BYTES

    def _xattr_inline_bytes(self) -> int:
        return LITERAL_BYTES // 2

    # -- log ---------------------------------------------------------------------
    def _journal_write(self, n: int) -> None:
        total = n + 1
        left = total
        while left:
            k = min(left, self.log_blocks - self._jpos)
            self._dev_write_run(self.log_start + self._jpos, k)
            self._jpos += k
            left -= k
            if self._jpos >= self.log_blocks:
                self._jpos = 1
        self.counters["journal_blocks_written"] += total

    checkpoint_on_commit = False

    def fstrim(self, minlen: int = 0) -> int:
        super().fstrim(minlen)
        return self.nr_blocks * BLOCK      # xfs reports the range it examined (fstrim -v)

    def _ail_limit(self) -> int:
        return self.log_blocks // 4

    def _on_umount(self) -> None:
        self._journal_write(0)      # the unmount record
        self._dev_write_run(0, 1)

    def check(self) -> dict:
        extra = [(c.start, CHUNK_BLOCKS) for c in self._chunks.values()]
        self.static_runs.extend(extra)
        try:
            return super().check()
        finally:
            del self.static_runs[len(self.static_runs) - len(extra):]

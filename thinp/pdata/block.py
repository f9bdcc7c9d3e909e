"""dm's block manager: 4 KiB metadata blocks with a checksum and a self-location.

Every metadata block dm writes begins with a little-endian header::

    offset 0  __le32 csum      dm_bm_checksum of bytes 4..4095, xor a salt
    offset 4  __le32 flags     (superblock flags; btree node flags; unused)
    offset 8  __le64 blocknr   the block's own number

The salt (xor) differs per block type, so a bitmap can never pass as a btree
node.  A :class:`Validator` names one type and checks/prepares its blocks.
The block device itself is ``uint8[nr_blocks, 4096]`` (an mmap of the file,
or an in-memory array); :class:`BlockManager` wraps it and raises
:class:`~thinp.errors.MetadataCorruptError` naming the block and the type.
"""
from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..config import METADATA_BLOCK_SIZE
from .crc32c import TABLE, TABLE8, crc32c_update, hw_kernels, seal_blocks

BLOCK_SIZE = METADATA_BLOCK_SIZE
#: dm's per-type checksum salts (dm-thin-metadata.c, dm-btree-spine.c,
#: dm-space-map-common.c).
SUPERBLOCK_CSUM_XOR = 160774
BTREE_CSUM_XOR = 121107
BITMAP_CSUM_XOR = 240779
INDEX_CSUM_XOR = 160478


@dataclass(frozen=True)
class Validator:
    """One block type: its name (for messages) and checksum salt."""

    name: str
    xor: int

    def checksum(self, blk: np.ndarray) -> int:
        hw = hw_kernels()
        if hw is not None and blk.shape == (BLOCK_SIZE,) and blk.flags.c_contiguous:
            row = blk.reshape(1, BLOCK_SIZE)
            return int(hw[0](row.view(np.uint64), row.view(np.uint32), 0)) ^ self.xor
        return int(crc32c_update(TABLE, np.uint32(0xFFFFFFFF), blk[4:])) ^ self.xor

    def check(self, blk: np.ndarray, b: int) -> str | None:
        """None when block ``b``'s bytes ``blk`` are valid, else what is wrong."""
        hdr = blk[:16]
        stored_loc = int(hdr[8:16].view("<u8")[0])
        if stored_loc != b:
            return f"{self.name} block {b}: it says it is block {stored_loc}"
        stored = int(hdr[0:4].view("<u4")[0])
        if stored != self.checksum(blk):
            return f"{self.name} block {b}: bad checksum"
        return None

    def prepare(self, blk: np.ndarray, b: int) -> None:
        """Stamp the location and checksum into ``blk`` before it is written."""
        blk[8:16].view("<u8")[0] = b
        blk[0:4].view("<u4")[0] = self.checksum(blk)


SUPERBLOCK = Validator("superblock", SUPERBLOCK_CSUM_XOR)
BTREE_NODE = Validator("btree node", BTREE_CSUM_XOR)
BITMAP = Validator("space map bitmap", BITMAP_CSUM_XOR)
INDEX = Validator("space map index", INDEX_CSUM_XOR)
#: small codes for the validators, for per-block arrays (0 = none)
KIND_BTREE_NODE, KIND_BITMAP, KIND_INDEX, KIND_SUPERBLOCK = 1, 2, 3, 4
VALIDATORS = {KIND_BTREE_NODE: BTREE_NODE, KIND_BITMAP: BITMAP, KIND_INDEX: INDEX, KIND_SUPERBLOCK: SUPERBLOCK}
KIND_OF = {v.name: k for k, v in VALIDATORS.items()}
#: blocks written by one pwrite of :meth:`BlockManager.zero_holes`: 1 MiB.
#: 64 KiB calls cost more (the loop of bench_pdata.py commit_after_cow, load ~8:
#: the commit took 31 ms of CPU with 1 MiB calls, 43-44 with 64 KiB), and create_snap's
#: small commits did not tell them apart (their flushes' noise, 9-12 ms)
ZERO_CHUNK_BLOCKS = 256
_ZEROS = bytes(ZERO_CHUNK_BLOCKS * BLOCK_SIZE)


class _FlushThread:
    """One flush thread: it sleeps on ``go``, fdatasyncs ``fd``, keeps an
    OSError in ``error`` and releases ``done``.  Two plain locks hand the
    work over and back (an executor's submit and its future's condition
    were ~30 us of CPU a flush more, measured beside it on this VM)."""

    def __init__(self):
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.fd = -1
        self.error: OSError | None = None
        threading.Thread(target=self._run, name="thinp-flush", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.go.acquire()
            try:
                _fdatasync(self.fd)
            except OSError as e:
                self.error = e
            self.done.release()


#: the process's idle flush threads (a flush takes one and gives it back
#: when waited for; made again in a forked child, where the parent's
#: threads do not exist)
_idle: list[_FlushThread] = []
_idle_pid = -1


def _take_flush_thread() -> _FlushThread:
    global _idle, _idle_pid
    if _idle_pid != os.getpid():
        _idle, _idle_pid = [], os.getpid()
    try:
        return _idle.pop()  # (atomic under the GIL: pools on several threads)
    except IndexError:
        return _FlushThread()


class FlushBehind:
    """An fdatasync that runs while the caller goes on, on one of the
    process's flush threads (``os.fdatasync`` releases the GIL), at most
    one at a time per object: :meth:`start` begins it, :meth:`wait`
    returns once it is over (raising its OSError if it failed),
    :meth:`close` waits for whatever still runs.  The one mechanism behind
    a synced commit's flushes: dm's two barriers
    (:meth:`BlockManager.flush_behind`; the second behind the commit's
    bookkeeping) and the sidecar slot's.

    A thread, not Linux AIO's ``IOCB_CMD_FDSYNC`` (raw x86_64 syscalls,
    used before): alternated in fresh processes on this VM (2 vCPUs,
    load 4.8-5.0 from other work, 2026-12-07, three rounds each), a
    create_snap commit with sync on took 2.66 / 1.32 / 1.22 ms median wall
    on the thread against 4.00 / 3.97 / 4.23 with AIO, CPU (all threads)
    1.04 / 0.99 / 0.97 ms against 1.04 / 1.28 / 0.98; a commit after CoW
    with the superblock's flush behind 52.9 / 50.7 / 52.4 ms wall against
    46.5 / 50.1 / 44.0, CPU 13.9 / 14.9 / 13.8 against 13.2 / 24.2 / 12.5.
    No CPU cost to tell apart, and the wall split either way."""

    def __init__(self):
        self._thread: _FlushThread | None = None

    def start(self, fd: int, handoff: bool = True) -> None:
        """Begin an fdatasync of ``fd`` (a flush still running is waited
        for first, and its error raised).  ``handoff``: the caller goes on
        with Python (else it blocks at once, in a wait or a syscall, and
        the flush thread gets the GIL then)."""
        self.wait()
        t = _take_flush_thread()
        t.fd = fd
        self._thread = t
        t.go.release()
        if handoff:
            # the flush thread needs the GIL to call os.fdatasync, and a
            # caller going on with Python holds it until it waits (or the
            # 5 ms switch interval): handed over here, the flush begins now
            # (measured on this VM, load 9.8: 12 us after the submit
            # instead of 523 with 0.5 ms of the caller's CPU after it)
            time.sleep(0)

    def wait(self) -> None:
        """Return once the flush :meth:`start` began is over (at once when
        there is none); OSError if it failed."""
        t, self._thread = self._thread, None
        if t is None:
            return
        t.done.acquire()
        err, t.error = t.error, None
        if _idle_pid == os.getpid():
            _idle.append(t)
        if err is not None:
            raise err

    def close(self) -> None:
        self.wait()


def _fdatasync(fd: int) -> None:
    os.fdatasync(fd)  # (looked up at the call: tests record the flushes)


def corrupt(msg: str) -> errors.MetadataCorruptError:
    return errors.MetadataCorruptError(f"metadata corrupt: {msg}")


class BlockManager:
    """The blocks of one metadata device.

    ``blocks`` is ``uint8[nr_blocks, 4096]``.  :meth:`read` validates a block
    (once per open; a block that passed is remembered until it is written).
    """

    def __init__(self, blocks: np.ndarray, path: str | None = None, mm=None, fd: int = -1):
        self.blocks = blocks
        self.path = path
        self.mm = mm
        self.fd = fd
        #: uint8[nr_blocks]: the KIND_* code of the validator a block last
        #: passed (or was sealed as) since it was written; 0 = unchecked
        self._valid = np.zeros(blocks.shape[0], dtype=np.uint8)
        #: uint8[nr_blocks]: 1 = written in the open transaction, not sealed
        #: yet (trusted as it is; the kernels set it too)
        self.fresh = np.zeros(blocks.shape[0], dtype=np.uint8)
        #: uint8[nr_blocks] of a file mapping: 1 = may still be a hole of
        #: the sparse file (never written); :meth:`zero_holes` clears it
        self.maybe_hole = np.ones(blocks.shape[0] if fd >= 0 else 0, dtype=np.uint8)
        #: the file is open for writing (set by :meth:`open_file`)
        self.writable = False
        #: the thread of :meth:`zero_holes_behind` while it may still run
        self._zeroing: threading.Thread | None = None
        #: what the zeroing behind did: [blocks written, seconds it ran,
        #: seconds callers waited for it in :meth:`wait_zeroing`]
        self.zero_stats = [0, 0.0, 0.0]
        #: the flush :meth:`flush_behind` began (waited for in :meth:`wait_flush`)
        self._flush_behind: FlushBehind | None = None

    @property
    def nr_blocks(self) -> int:
        return self.blocks.shape[0]

    # ---------------------------------------------------------------- files
    @classmethod
    def open_file(cls, path: str, writable: bool = False) -> "BlockManager":
        """Map a metadata file.  A read-only open maps privately (writes to
        the array never reach the file)."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        size = os.fstat(fd).st_size
        if size < BLOCK_SIZE:
            os.close(fd)
            raise corrupt(f"{path}: {size} bytes, smaller than one {BLOCK_SIZE}-byte block")
        nr = size // BLOCK_SIZE
        if writable:
            mm = mmap.mmap(fd, nr * BLOCK_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        else:
            mm = mmap.mmap(fd, nr * BLOCK_SIZE, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        arr = np.frombuffer(mm, dtype=np.uint8).reshape(nr, BLOCK_SIZE)
        bm = cls(arr, path=path, mm=mm, fd=fd)
        bm.writable = writable
        return bm

    @classmethod
    def in_memory(cls, nr_blocks: int) -> "BlockManager":
        return cls(np.zeros((nr_blocks, BLOCK_SIZE), dtype=np.uint8))

    def flush_behind(self, handoff: bool = True) -> None:
        """Begin an fdatasync of the file that runs while the caller goes
        on; :meth:`wait_flush` returns once it is over (``handoff``:
        :meth:`FlushBehind.start`'s)."""
        if self._flush_behind is None:
            self._flush_behind = FlushBehind()
        self._flush_behind.start(self.fd, handoff)

    def wait_flush(self) -> None:
        """Return once the flush :meth:`flush_behind` began is over (at
        once when there is none); OSError if it failed."""
        if self._flush_behind is not None:
            self._flush_behind.wait()

    def close(self) -> None:
        self.wait_zeroing()
        fb, self._flush_behind = self._flush_behind, None
        try:
            if fb is not None:
                fb.close()  # (OSError when its flush failed, after the rest)
        finally:
            self._close()

    def _close(self) -> None:
        self.blocks = np.zeros((0, BLOCK_SIZE), dtype=np.uint8)
        self.fresh = np.zeros(0, dtype=np.uint8)
        self._valid = np.zeros(0, dtype=np.uint8)
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def advise_holes(self, begin: int) -> None:
        """Blocks ``begin`` onwards of a file mapping are, for now, holes the
        allocator will write in no useful order: no readahead there
        (``MADV_RANDOM``).  Without the advice each write fault on a hole
        of the sparse file zero-fills a whole readahead window of page
        cache: on ext4 (kernel 6.18), provisioning 4 M blocks in order
        (18,044 new metadata blocks) spent 190-600 ms of system time in
        those faults, 83-107 ms with the advice.  A hint: ignored where the
        mapping or the kernel refuses it."""
        if self.mm is None or not 0 <= begin < self.nr_blocks:
            return
        try:
            self.mm.madvise(mmap.MADV_RANDOM, begin * BLOCK_SIZE, (self.nr_blocks - begin) * BLOCK_SIZE)
        except (AttributeError, OSError, ValueError):
            pass

    def may_have_holes(self, begin: int, end: int, free: np.ndarray) -> bool:
        """Whether :meth:`zero_holes` over the same range could write
        anything (a free block there not yet known to be backed)."""
        if self.fd < 0 or self.mm is None or not self.writable:
            return False
        hint = self.maybe_hole[begin:end]
        return bool(len(hint) < len(free) or ((hint != 0) & free[:len(hint)]).any())

    def zero_holes(self, begin: int, end: int, free: np.ndarray) -> int:
        """Write zeros, by ``pwrite``, into the blocks of ``begin, end`` that
        are free (``free``, bool per block of the range) and still holes of
        the sparse file, so that they are in the page cache, and allocated
        by the filesystem, before the allocator hands them out; returns the
        number of blocks written.

        A hole reads as zeros, so its bytes do not change, nor does any
        block in use (only free holes are written; ``SEEK_DATA`` says what
        is a hole, blocks dirtied through the mapping and not yet written
        back included).  The point is the cost of a block's first write
        (ext4, kernel 6.18, 7,500 blocks): a write fault on a hole of the
        mapping allocates, zeroes and reserves the page, ~4 us of CPU and
        ~12 us wall each, and the fdatasync after it allocates the disk
        blocks (92 + 34 ms for 7,500); a pwrite of zeros ahead does the
        same work in 1 MiB calls (~1 us CPU a block), the fault on the
        cached page is then ~0.2 us, and a block zeroed by an earlier
        commit is an overwrite for the next one's fdatasync (16 + 1.7 +
        18 ms for the same 7,500).  dm's metadata device has every block
        allocated: a block zeroed here has only become what it is there."""
        if self.fd < 0 or self.mm is None or not self.writable:
            return 0
        n = self.nr_blocks
        if len(self.maybe_hole) < n:  # the device grew
            self.maybe_hole = np.concatenate([self.maybe_hole, np.ones(n - len(self.maybe_hole), dtype=np.uint8)])
        begin, end = max(0, begin), min(n, end)
        if begin >= end:
            return 0
        hint = self.maybe_hole[begin:end]
        cand = (hint != 0) & free
        if not cand.any():
            return 0
        idx = np.flatnonzero(cand)
        starts = np.flatnonzero(np.diff(idx, prepend=idx[0] - 2) != 1)
        ends = np.append(starts[1:], len(idx))
        written = 0
        for a, z in zip((idx[starts] + begin).tolist(), (idx[ends - 1] + begin + 1).tolist()):
            pos = a
            while pos < z:
                try:
                    data = os.lseek(self.fd, pos * BLOCK_SIZE, os.SEEK_DATA) // BLOCK_SIZE
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        return written  # no SEEK_DATA here: leave the file alone
                    data = n  # nothing but holes from pos on
                stop = min(data, z)
                while pos < stop:
                    k = min(stop - pos, ZERO_CHUNK_BLOCKS)
                    os.pwrite(self.fd, _ZEROS[:k * BLOCK_SIZE] if k < ZERO_CHUNK_BLOCKS else _ZEROS, pos * BLOCK_SIZE)
                    written += k
                    pos += k
                if data >= z:
                    break
                hole = os.lseek(self.fd, data * BLOCK_SIZE, os.SEEK_HOLE)
                pos = max(pos, -(-hole // BLOCK_SIZE))
        hint[cand] = 0
        return written

    def zero_holes_behind(self, spans: list[tuple[int, int, np.ndarray]], sync: bool = True) -> bool:
        """:meth:`zero_holes` over each ``(begin, end, free)`` of ``spans``
        in a thread of its own, so that a caller that has nothing to
        allocate for now (a commit that has written its superblock) does
        not wait for it; True when the thread started.

        The ordering that keeps it safe is the caller's: nothing may
        allocate, write or free a block of ``spans`` before
        :meth:`wait_zeroing` returns (the transaction manager waits
        whenever its ``free`` array is asked for, which every allocation
        does, and :meth:`close` waits).  The thread only writes zeros over
        holes of free blocks with ``pwrite`` (which runs without the GIL),
        so until then no byte anyone reads changes.  The thread then
        fdatasyncs the file, so that the zeros are written back (and the
        filesystem's allocation of their blocks journalled) before the next
        commit, whose first barrier would otherwise write them beside its
        own blocks: twice the pages of the commit after CoW (9,500 zeroed
        a commit there, 7,500 its own).  The flush orders nothing and
        breaks no order (any block may be written back at any time; only
        the superblock's place in the commit matters); ``sync=False`` (a
        pool with sync off, whose commits flush nothing) leaves it out.  An error there (a
        full filesystem) ends the zeroing early; the blocks stay holes, as
        they were."""
        self.wait_zeroing()
        if self.fd < 0 or self.mm is None or not self.writable or not spans:
            return False
        spans = [(lo, hi, np.array(free, dtype=bool)) for lo, hi, free in spans]  # the caller's array moves on

        def run():
            t0 = time.perf_counter()
            n = 0
            try:
                for lo, hi, free in spans:
                    n += self.zero_holes(lo, hi, free)
                if n and sync:
                    # written back here, not by the next commit's barrier
                    os.fdatasync(self.fd)
            except OSError:
                pass
            self.zero_stats[0] += n
            self.zero_stats[1] += time.perf_counter() - t0

        self._zeroing = threading.Thread(target=run, name="thinp-zero-ahead", daemon=True)
        self._zeroing.start()
        return True

    def wait_zeroing(self) -> None:
        """Return once the zeroing :meth:`zero_holes_behind` started is
        over (at once when there is none)."""
        t = self._zeroing
        if t is None:
            return
        t0 = time.perf_counter()
        t.join()
        self._zeroing = None
        self.zero_stats[2] += time.perf_counter() - t0

    def flush(self, blocks) -> int:
        """msync these blocks of a file-backed device, one call per run of
        adjacent blocks; returns the number of calls."""
        if self.mm is None:
            return 0
        bs = np.unique(np.asarray(blocks, dtype=np.int64))
        if not len(bs):
            return 0
        starts = np.flatnonzero(np.diff(bs, prepend=bs[0] - 2) != 1)
        ends = np.append(starts[1:], len(bs))
        for a, z in zip(bs[starts].tolist(), (bs[ends - 1] + 1).tolist()):
            self.mm.flush(a * BLOCK_SIZE, (z - a) * BLOCK_SIZE)
        return len(starts)

    # ---------------------------------------------------------------- blocks
    def read(self, b: int, v: Validator) -> np.ndarray:
        """Block ``b`` (a view), checked by ``v``; MetadataCorruptError if not."""
        if not 0 <= b < self.blocks.shape[0]:
            raise corrupt(f"{v.name} block {b} is outside the metadata device ({self.blocks.shape[0]} blocks)")
        blk = self.blocks[b]
        if self.fresh[b]:
            return blk
        k = KIND_OF.get(v.name, 0)
        valid = self._valid_codes()
        if not k or valid[b] != k or VALIDATORS[k] is not v:
            problem = v.check(blk, b)
            if problem:
                raise corrupt(problem)
            valid[b] = k
        return blk

    def _valid_codes(self) -> np.ndarray:
        """``_valid``, as long as the device (which may have grown)."""
        if len(self._valid) < self.blocks.shape[0]:
            self._valid = np.concatenate([self._valid,
                                          np.zeros(self.blocks.shape[0] - len(self._valid), dtype=np.uint8)])
        return self._valid

    def raw(self, b: int) -> np.ndarray:
        """Block ``b`` unchecked (for writers that own it in this transaction)."""
        return self.blocks[b]

    def forget(self, b: int) -> None:
        """Block ``b`` is being rewritten in this transaction."""
        self._valid_codes()[b] = 0
        self.fresh[b] = 1

    def seal_many(self, bs: np.ndarray, kinds: np.ndarray) -> None:
        """:meth:`seal` for blocks ``bs`` of the validators ``kinds``
        (KIND_* codes), in one kernel call."""
        if not len(bs):
            return
        xors = np.zeros(len(VALIDATORS) + 1, dtype=np.int64)
        for k, v in VALIDATORS.items():
            xors[k] = v.xor
        bs64 = np.ascontiguousarray(bs, dtype=np.int64)
        hw = hw_kernels()
        if hw is not None and self.blocks.flags.c_contiguous:
            hw[1](self.blocks.view(np.uint64), self.blocks.view(np.uint32), bs64, xors[kinds])
        else:
            seal_blocks(TABLE8, self.blocks, bs64, xors[kinds])
        self.fresh[bs] = 0
        self._valid_codes()[bs] = kinds

    def seal(self, b: int, v: Validator) -> None:
        """Stamp block ``b`` as a ``v`` block (location, checksum)."""
        v.prepare(self.blocks[b], b)
        self._valid_codes()[b] = KIND_OF.get(v.name, 0)
        self.fresh[b] = 0

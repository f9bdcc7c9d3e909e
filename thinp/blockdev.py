"""The block-device protocol every storage layer ends at.

A :class:`BlockDevice` is byte-addressed, like a Linux block device seen
through ``pread``/``pwrite``/``BLKDISCARD``.  Two implementations exist:

* :class:`thinp.thin.ThinDevice`, a thin volume in a :class:`~thinp.ThinPool`;
* :class:`PlainDevice`, a thick device over a sparse file or memory, standing
  for a real disk or a loop file.

``write(offset, data)`` takes ``bytes``-like data, or an ``int`` length on a
device in accounting mode (no payload stored: content is not kept, only which
blocks were written).  Every device counts its I/O in :class:`IOStats`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable


@dataclass
class IOStats:
    """Bytes and requests a device has served."""

    nr_reads: int = 0
    nr_writes: int = 0
    nr_discards: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_discarded: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@runtime_checkable
class BlockDevice(Protocol):
    """What a filesystem needs of the device below it."""

    @property
    def size(self) -> int:
        """Device size in bytes."""

    @property
    def block_size(self) -> int:
        """Discard granularity in bytes (a thin device's data block size)."""

    @property
    def payload(self) -> bool:
        """True when written bytes are stored and read back."""

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...


# ---------------------------------------------------------------------------
# PlainDevice
# ---------------------------------------------------------------------------
#
# State, all in units of ``PHYS_BLOCK`` (4 KiB) device blocks:
#
# * ``_allocated``: bitarray, one bit per 4 KiB block of the device; 1 when the
#   block holds data (written, or zeroed by a write-zeroes), 0 when it was
#   never written or was discarded since.  It is what ``du`` of a loop file's
#   backing file counts, and what a thin pool would provision.
# * ``_mem``: payload mode over memory only: dict block number -> bytes of
#   length 4096 (absent = reads as zeros).
# * ``_fd``: the backing sparse file, when the device has a path.  Payload
#   bytes are written there; in accounting mode a write ``fallocate``s the
#   range and a discard punches it, so ``du`` of the file matches.

import errno as _errno_mod
import os as _os

from .config import PAGE_SIZE
from .trace import DISCARD as _DISCARD, READ as _READ, WRITE as _WRITE

PHYS_BLOCK = PAGE_SIZE
_ZERO_BLOCK = bytes(PHYS_BLOCK)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc_fallocate = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """Linux fallocate(2) through libc (os.posix_fallocate cannot punch)."""
    global _libc_fallocate
    if _libc_fallocate is None:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        fn.restype = ctypes.c_int
        _libc_fallocate = (fn, ctypes)
    fn, ctypes = _libc_fallocate
    if fn(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, _os.strerror(e))


class PlainDevice:
    """A thick block device over memory or a sparse file.

    ``PlainDevice(size)`` is a memory device in accounting mode: writes take an
    ``int`` length (or bytes, which are not kept) and only which 4 KiB blocks
    hold data is tracked.  ``payload=True`` keeps the bytes.  ``path=...``
    backs the device with a sparse file created (or truncated) to ``size``.

    ``discard_block_size`` is the discard granularity reported as
    :attr:`block_size` (4 KiB, a loop file's).  Discards are honoured for the
    whole 4 KiB blocks they cover, as hole punching does.
    """

    def __init__(self, size, *, path=None, payload: bool = False, discard_block_size: int = PHYS_BLOCK,
                 trace=None):
        from bitarray import bitarray

        from .units import parse_size

        size = parse_size(size, what="size")
        if size <= 0 or size % PHYS_BLOCK:
            raise ValueError(f"size {size} is not a positive multiple of {PHYS_BLOCK}")
        self._size = size
        self._payload = bool(payload)
        self._block_size = int(discard_block_size)
        self.stats = IOStats()
        self.trace = trace
        self.path = None if path is None else _os.fspath(path)
        self._allocated = bitarray(size // PHYS_BLOCK)
        self._allocated.setall(0)
        self._mem = {} if self._payload and self.path is None else None
        self._fd = None
        if self.path is not None:
            self._fd = _os.open(self.path, _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC, 0o644)
            _os.ftruncate(self._fd, size)

    # -- protocol ---------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def payload(self) -> bool:
        return self._payload

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OSError(_errno_mod.EIO, f"I/O at {offset}+{length} beyond device size {self._size}")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        self.stats.nr_reads += 1
        self.stats.bytes_read += length
        if self.trace is not None:
            self.trace.record(_READ, offset, length)
        if not self._payload:
            return bytes(length)
        if self._fd is not None:
            return _os.pread(self._fd, length, offset).ljust(length, b"\0")
        out = bytearray(length)
        end = offset + length
        b = offset // PHYS_BLOCK
        while b * PHYS_BLOCK < end:
            blk = self._mem.get(b)
            bstart = b * PHYS_BLOCK
            lo, hi = max(offset, bstart), min(end, bstart + PHYS_BLOCK)
            if blk is not None:
                out[lo - offset:hi - offset] = blk[lo - bstart:hi - bstart]
            b += 1
        return bytes(out)

    def write(self, offset: int, data) -> None:
        if isinstance(data, int) and not isinstance(data, bool):
            length = data
            if self._payload:
                raise ValueError("a payload device needs bytes, not a length")
            buf = None
        else:
            buf = memoryview(data).cast("B")
            length = len(buf)
        self._check(offset, length)
        self.stats.nr_writes += 1
        self.stats.bytes_written += length
        if self.trace is not None:
            self.trace.record(_WRITE, offset, length)
        if length == 0:
            return
        b0, b1 = offset // PHYS_BLOCK, (offset + length + PHYS_BLOCK - 1) // PHYS_BLOCK
        self._allocated[b0:b1] = 1
        if self._fd is not None:
            if buf is not None and self._payload:
                _os.pwrite(self._fd, buf, offset)
            else:
                _fallocate(self._fd, _FALLOC_FL_KEEP_SIZE, b0 * PHYS_BLOCK, (b1 - b0) * PHYS_BLOCK)
        elif self._payload:
            pos = 0
            end = offset + length
            b = b0
            while b < b1:
                bstart = b * PHYS_BLOCK
                lo, hi = max(offset, bstart), min(end, bstart + PHYS_BLOCK)
                if lo == bstart and hi == bstart + PHYS_BLOCK:
                    blk = buf[pos:pos + PHYS_BLOCK]
                    if blk == _ZERO_BLOCK:      # allocated, reads as zeros: keep no copy
                        self._mem.pop(b, None)
                    else:
                        self._mem[b] = bytes(blk)
                else:
                    blk = bytearray(self._mem.get(b, bytes(PHYS_BLOCK)))
                    blk[lo - bstart:hi - bstart] = buf[pos:pos + hi - lo]
                    self._mem[b] = bytes(blk)
                pos += hi - lo
                b += 1

    def write_runs(self, runs) -> None:
        """``write(start * PHYS_BLOCK, n * PHYS_BLOCK)`` for each ``(start, n)``
        of ``runs``, in order, with lengths only (accounting mode): the same
        statistics, trace and allocation as those calls, in one call."""
        if self._payload or self._fd is not None or self.trace is not None:
            for start, n in runs:
                self.write(start * PHYS_BLOCK, n * PHYS_BLOCK)
            return
        nblocks = self._size // PHYS_BLOCK
        alloc = self._allocated
        count = total = 0
        try:
            for start, n in runs:
                if start < 0 or n < 0 or start + n > nblocks:
                    self.write(start * PHYS_BLOCK, n * PHYS_BLOCK)     # raises as it would have
                count += 1
                if n:
                    total += n
                    alloc[start:start + n] = 1
        finally:
            self.stats.nr_writes += count
            self.stats.bytes_written += total * PHYS_BLOCK

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)
        self.stats.nr_discards += 1
        self.stats.bytes_discarded += length
        if self.trace is not None:
            self.trace.record(_DISCARD, offset, length)
        b0 = (offset + PHYS_BLOCK - 1) // PHYS_BLOCK
        b1 = (offset + length) // PHYS_BLOCK
        if b1 <= b0:
            return
        self._allocated[b0:b1] = 0
        if self._fd is not None:
            _fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, b0 * PHYS_BLOCK, (b1 - b0) * PHYS_BLOCK)
        elif self._mem is not None:
            for b in range(b0, b1):
                self._mem.pop(b, None)

    # -- physical allocation ----------------------------------------------
    def allocated_blocks(self):
        """A copy of the bitarray of 4 KiB blocks that hold data."""
        return self._allocated.copy()

    @property
    def physical_bytes(self) -> int:
        """Bytes that hold data: what ``du`` of the backing file reports."""
        return self._allocated.count(1) * PHYS_BLOCK

    def chunks_touched(self, chunk_bytes: int) -> int:
        """How many ``chunk_bytes`` chunks hold any data: a thin pool's provisioned blocks."""
        return count_chunks(self._allocated, chunk_bytes)

    def close(self) -> None:
        if self._fd is not None:
            _os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        where = self.path or "memory"
        mode = "payload" if self._payload else "accounting"
        return f"PlainDevice({self._size} bytes, {where}, {mode})"


def count_chunks(allocated, chunk_bytes: int) -> int:
    """Number of ``chunk_bytes`` chunks with at least one set bit in a 4 KiB-block bitarray."""
    import numpy as np

    if chunk_bytes % PHYS_BLOCK:
        raise ValueError(f"chunk_bytes {chunk_bytes} is not a multiple of {PHYS_BLOCK}")
    per = chunk_bytes // PHYS_BLOCK
    n = len(allocated)
    arr = np.unpackbits(np.frombuffer(allocated.tobytes(), dtype=np.uint8), bitorder="big" if (allocated.endian if isinstance(allocated.endian, str) else allocated.endian()) == "big" else "little")[:n]
    pad = (-n) % per
    if pad:
        arr = np.concatenate([arr, np.zeros(pad, dtype=np.uint8)])
    return int(arr.reshape(-1, per).any(axis=1).sum())

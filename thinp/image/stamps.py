"""Accounting-mode file content: version stamps, expanded to bytes only when read.

In accounting mode a file's content is one ``uint64`` version stamp per 4 KiB
block (0 = zeros or a hole; see :mod:`thinp.fs`).  A layer tar must still
carry bytes, so each stamp stands for 4 KiB of bytes (:func:`stamp_block`):
the stamp's 8 little-endian bytes, then a blake2b expansion of them.
:func:`decode_stamps` inverts it, so a layer taken in accounting mode and
applied again keeps every block's version.

:class:`StampedContent` is such a file held as its stamps -- ``size`` bytes,
``stamps`` a ``uint64`` array of ``ceil(size / 4096)`` entries -- so a 1 GiB
file costs 2 MiB, not 1 GiB.  :meth:`StampedContent.reader` streams its bytes
in chunks of :data:`CHUNK_BLOCKS` blocks for whoever needs them (the tar
writer, a hash); an apply that understands stamps takes ``stamps`` directly.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from ..config import PAGE_SIZE

__all__ = ["BLOCK", "stamp_block", "decode_stamps", "expand", "StampedContent", "StampReader"]

BLOCK = PAGE_SIZE
#: blocks expanded at a time by a reader (1 MiB)
CHUNK_BLOCKS = 256


def stamp_block(stamp: int) -> bytes:
    """The 4 KiB of bytes standing for version stamp ``stamp`` (0: zeros)."""
    if not stamp:
        return bytes(BLOCK)
    head = int(stamp).to_bytes(8, "little")
    return head + (hashlib.blake2b(head, digest_size=64).digest() * 64)[: BLOCK - 8]


def decode_stamps(data) -> "np.ndarray | None":
    """The version stamps behind bytes made by :func:`expand`, or None when
    ``data`` is not such bytes (real content).  A final partial block
    shorter than 8 bytes cannot carry its stamp, so a file ending in one
    does not decode (payload mode keeps real bytes and always round-trips)."""
    n = len(data)
    nb = (n + BLOCK - 1) // BLOCK
    out = np.zeros(max(nb, 1), dtype=np.uint64)
    mv = memoryview(data)
    cache: dict = {}
    for i in range(nb):
        blk = mv[i * BLOCK:(i + 1) * BLOCK]
        if len(blk) < 8:
            return None
        s = int.from_bytes(blk[:8], "little")
        if s == 0:
            if any(blk):
                return None
            continue
        full = cache.get(s)
        if full is None:
            full = cache[s] = stamp_block(s)
        if full[: len(blk)] != blk:
            return None
        out[i] = s
    return out


def expand(stamps: np.ndarray, begin_block: int, end_block: int) -> bytes:
    """The bytes of blocks ``[begin_block, end_block)`` of ``stamps`` (a block
    past the array's end is zeros): :func:`stamp_block` of each, built with
    numpy from one blake2b per distinct stamp."""
    n = end_block - begin_block
    if n <= 0:
        return b""
    seg = np.zeros(n, dtype=np.uint64)
    k = min(end_block, len(stamps)) - begin_block
    if k > 0:
        seg[:k] = stamps[begin_block:begin_block + k]
    uniq, inverse = np.unique(seg, return_inverse=True)
    digests = np.zeros((len(uniq), _DIGEST), dtype=np.uint8)
    for j, s in enumerate(uniq.tolist()):
        if s:
            digests[j] = np.frombuffer(
                hashlib.blake2b(s.to_bytes(8, "little"), digest_size=_DIGEST).digest(), dtype=np.uint8)
    out = np.empty((n, BLOCK), dtype=np.uint8)
    out[:, :8] = seg.astype("<u8").view(np.uint8).reshape(n, 8)
    d = digests[inverse.reshape(-1)]
    body = out[:, 8:]
    reps = (BLOCK - 8) // _DIGEST
    body[:, : reps * _DIGEST].reshape(n, reps, _DIGEST)[:] = d[:, None, :]
    body[:, reps * _DIGEST:] = d[:, : (BLOCK - 8) - reps * _DIGEST]
    return out.tobytes()


_DIGEST = 64


class StampedContent:
    """A regular file's accounting-mode content: ``size`` bytes whose 4 KiB
    blocks are the version stamps ``stamps`` (uint64; missing trailing
    entries are zeros).  Immutable by convention: callers hand over a copy."""

    __slots__ = ("size", "stamps")

    def __init__(self, size: int, stamps):
        if size < 0:
            raise ValueError(f"size {size} < 0")
        self.size = int(size)
        self.stamps = np.ascontiguousarray(stamps, dtype=np.uint64)

    @property
    def nr_blocks(self) -> int:
        return (self.size + BLOCK - 1) // BLOCK

    def reader(self) -> "StampReader":
        return StampReader(self)

    def to_bytes(self) -> bytes:
        """Every byte at once (for small files and tests)."""
        return expand(self.stamps, 0, self.nr_blocks)[: self.size]

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other) -> bool:
        if not isinstance(other, StampedContent) or other.size != self.size:
            return NotImplemented if not isinstance(other, StampedContent) else False
        n = self.nr_blocks
        a = np.zeros(n, dtype=np.uint64)
        b = np.zeros(n, dtype=np.uint64)
        a[:min(n, len(self.stamps))] = self.stamps[:n]
        b[:min(n, len(other.stamps))] = other.stamps[:n]
        return bool(np.array_equal(a, b))

    __hash__ = None

    def __repr__(self) -> str:
        return f"StampedContent(size={self.size}, {len(np.unique(self.stamps))} distinct stamps)"


class StampReader(io.RawIOBase):
    """A readable stream of a :class:`StampedContent`'s bytes, expanded
    :data:`CHUNK_BLOCKS` blocks at a time.  ``content`` is the stamps, for a
    consumer that can take them without the bytes."""

    def __init__(self, content: StampedContent):
        self.content = content
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        size = self.content.size
        if self.pos >= size:
            return 0
        rel = self.pos - self._buf_at
        if not 0 <= rel < len(self._buf):
            blk = self.pos // BLOCK
            self._buf_at = blk * BLOCK
            self._buf = expand(self.content.stamps, blk, min(blk + CHUNK_BLOCKS, self.content.nr_blocks))
            rel = self.pos - self._buf_at
        n = min(len(b), len(self._buf) - rel, size - self.pos)
        b[:n] = self._buf[rel:rel + n]
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.content.size - self.pos
        out = bytearray(max(0, min(n, self.content.size - self.pos)))
        view = memoryview(out)
        got = 0
        while got < len(out):
            k = self.readinto(view[got:])
            if not k:
                break
            got += k
        return bytes(out[:got])

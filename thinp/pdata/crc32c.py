"""crc32c (Castagnoli), table-driven, as dm-persistent-data checksums blocks.

dm's ``dm_bm_checksum(data, len, xor)`` is ``crc32c(~0, data, len) ^ xor``:
the kernel's ``crc32c()`` takes the running value and returns it without the
final inversion, so the stored value is the *raw* register, i.e. the bitwise
complement of the standard CRC-32C of the bytes, xor-ed with a salt that
differs per block type (see :mod:`thinp.pdata.block`).

:func:`crc32c` is the standard CRC-32C (``crc32c(b"123456789") ==
0xE3069283``); :func:`dm_checksum` is dm's form.
"""
from __future__ import annotations

import numpy as np

from ..config import njit

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> np.ndarray:
    t = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t[n] = c
    return t


#: The byte-at-a-time lookup table (uint32[256]); passed to the kernel, not
#: read as a global (numba would freeze it, which is fine, but explicit is clearer).
TABLE = _make_table()


@njit(refcount=False)
def crc32c_update(table, crc, buf):
    """Run the raw CRC register ``crc`` (uint32) over the bytes ``buf``
    (uint8 array) and return the new register (no inversion)."""
    c = np.uint32(crc)
    for i in range(buf.shape[0]):
        c = table[(c ^ np.uint32(buf[i])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return c


def crc32c(data, crc: int = 0) -> int:
    """The standard CRC-32C of ``data`` (bytes-like or uint8 array),
    continuing from a previous standard value ``crc``."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return int(crc32c_update(TABLE, np.uint32(crc ^ 0xFFFFFFFF), buf)) ^ 0xFFFFFFFF


def dm_checksum(data, xor: int) -> int:
    """dm_bm_checksum: ``crc32c(~0, data) ^ xor`` in the kernel's raw form."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return int(crc32c_update(TABLE, np.uint32(0xFFFFFFFF), buf)) ^ (xor & 0xFFFFFFFF)


def _make_table8() -> np.ndarray:
    """Slicing-by-8 tables: t8[k][n] is the register after byte n then k
    zero bytes."""
    t8 = np.zeros((8, 256), dtype=np.uint32)
    t8[0] = TABLE
    for k in range(1, 8):
        prev = t8[k - 1]
        t8[k] = (prev >> np.uint32(8)) ^ TABLE[prev & np.uint32(0xFF)]
    return t8


#: uint32[8, 256] for :func:`crc32c_update8`
TABLE8 = _make_table8()


@njit(refcount=False)
def crc32c_update8(t8, crc, buf, begin, end):
    """:func:`crc32c_update` over ``buf[begin:end]``, eight bytes a step."""
    c = np.uint32(crc)
    i = begin
    while i + 8 <= end:
        lo = c ^ (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << np.uint32(8))
                  | (np.uint32(buf[i + 2]) << np.uint32(16)) | (np.uint32(buf[i + 3]) << np.uint32(24)))
        c = (t8[7, lo & np.uint32(0xFF)] ^ t8[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
             ^ t8[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ t8[4, lo >> np.uint32(24)]
             ^ t8[3, buf[i + 4]] ^ t8[2, buf[i + 5]] ^ t8[1, buf[i + 6]] ^ t8[0, buf[i + 7]])
        i += 8
    while i < end:
        c = t8[0, (c ^ np.uint32(buf[i])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
        i += 1
    return c


@njit(refcount=False)
def seal_blocks(t8, blocks, bs, xors):
    """dm's block header for each block ``bs[k]`` of ``blocks`` (uint8[nb,
    4096]): its own number at bytes 8..15, then at 0..3 the checksum of
    bytes 4.. xor ``xors[k]`` (little-endian)."""
    for k in range(bs.shape[0]):
        b = bs[k]
        blk = blocks[b]
        v = np.uint64(b)
        for j in range(8):
            blk[8 + j] = np.uint8((v >> np.uint64(8 * j)) & np.uint64(0xFF))
        c = crc32c_update8(t8, np.uint32(0xFFFFFFFF), blk, 4, blk.shape[0]) ^ np.uint32(xors[k])
        for j in range(4):
            blk[j] = np.uint8((c >> np.uint32(8 * j)) & np.uint32(0xFF))

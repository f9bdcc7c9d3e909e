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

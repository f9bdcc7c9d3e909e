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


# ------------------------------------------------ the CPU's crc32c instruction
# x86's SSE4.2 ``crc32`` instruction computes this very CRC (Castagnoli,
# reflected, no final inversion), eight bytes an instruction: sealing and
# checking 4 KiB blocks runs several times faster than the tables.  Used
# when the CPU has it; the table kernels above are the fallback and the
# reference the tests compare it with.
def _cpu_has_sse42() -> bool:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " sse4_2" in line
    except OSError:
        pass
    return False


HAS_CRC32_INSTRUCTION = _cpu_has_sse42()


def _crc_intrinsic(width):
    """llvm's x86 crc32 intrinsic on ``width``-bit words, for numba."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    name = f"llvm.x86.sse42.crc32.{'64.64' if width == 64 else '32.32'}"

    def crc(typingctx, c, v):
        ty = types.uint64 if width == 64 else types.uint32

        def codegen(context, builder, signature, args):
            it = ir.IntType(width)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(it, [it, it]), name)
            return builder.call(fn, list(args))
        return ty(ty, ty), codegen

    crc.__name__ = f"_crc32_u{width}"
    return intrinsic(crc)


# typed and compiled only when a kernel below is first called, which
# hw_kernels() allows only on a CPU with the instruction
_crc32_u64 = _crc_intrinsic(64)
_crc32_u32 = _crc_intrinsic(32)


@njit(refcount=False)
def block_crc_hw(m64, m32, b):
    """The raw register over bytes 4..4095 of block ``b`` (m64/m32 are
    uint64/uint32 views of uint8[nb, 4096])."""
    c = np.uint64(_crc32_u32(np.uint32(0xFFFFFFFF), m32[b, 1]))
    for w in range(1, m64.shape[1]):
        c = _crc32_u64(c, m64[b, w])
    return np.uint32(c)


@njit(refcount=False)
def seal_blocks_hw(m64, m32, bs, xors):
    """:func:`seal_blocks` over the views m64/m32 of the same blocks.

    The instruction's result feeds the next one (3 cycles of latency, one
    issued a cycle), so one block at a time leaves two thirds of the unit
    idle: blocks go four at a time, four independent registers in one loop."""
    n = bs.shape[0]
    k = 0
    while k + 4 <= n:
        b0 = bs[k]
        b1 = bs[k + 1]
        b2 = bs[k + 2]
        b3 = bs[k + 3]
        m64[b0, 1] = np.uint64(b0)
        m64[b1, 1] = np.uint64(b1)
        m64[b2, 1] = np.uint64(b2)
        m64[b3, 1] = np.uint64(b3)
        c0 = np.uint64(_crc32_u32(np.uint32(0xFFFFFFFF), m32[b0, 1]))
        c1 = np.uint64(_crc32_u32(np.uint32(0xFFFFFFFF), m32[b1, 1]))
        c2 = np.uint64(_crc32_u32(np.uint32(0xFFFFFFFF), m32[b2, 1]))
        c3 = np.uint64(_crc32_u32(np.uint32(0xFFFFFFFF), m32[b3, 1]))
        for w in range(1, m64.shape[1]):
            c0 = _crc32_u64(c0, m64[b0, w])
            c1 = _crc32_u64(c1, m64[b1, w])
            c2 = _crc32_u64(c2, m64[b2, w])
            c3 = _crc32_u64(c3, m64[b3, w])
        m32[b0, 0] = np.uint32(c0) ^ np.uint32(xors[k])
        m32[b1, 0] = np.uint32(c1) ^ np.uint32(xors[k + 1])
        m32[b2, 0] = np.uint32(c2) ^ np.uint32(xors[k + 2])
        m32[b3, 0] = np.uint32(c3) ^ np.uint32(xors[k + 3])
        k += 4
    while k < n:
        b = bs[k]
        m64[b, 1] = np.uint64(b)
        m32[b, 0] = block_crc_hw(m64, m32, b) ^ np.uint32(xors[k])
        k += 1


def hw_kernels():
    """(block_crc_hw, seal_blocks_hw) where the CPU has the crc32c
    instruction, else None (use the table kernels)."""
    return (block_crc_hw, seal_blocks_hw) if HAS_CRC32_INSTRUCTION else None

"""``thinp pack`` / ``thinp unpack``: thin_metadata_pack's archive format.

The format (thin-provisioning-tools' ``src/pack``, version 3), all
little-endian::

    header   u64 magic 0xa537a0aa6309ef77, u64 version 3,
             u64 block size 4096, u64 number of blocks of the device
    chunks   u64 length, then that many bytes: one zlib stream holding
             records of (u64 block number, a program for the block's VM)

Only blocks whose checksum verifies under one of dm's salts are stored;
the rest unpack as zeros.  The VM writes little-endian u64s from a running
``base`` and raw bytes; each instruction is a tag nibble and an operand
nibble: Set (base = operand of width 1/2/4/8), Pos/Neg (base += / -= the
nibble), PosW/NegW (the same with a wide operand), Const/Const8 (emit base
n times), Count/Count8 (run the next instruction n times), Lit/LitW (n raw
bytes), ShiftedRun (n values rebuilt from a program of high parts and one
of low 24-bit parts: dm's block_time).

:func:`unpack` runs any such program, so archives from the Rust tools
open.  :func:`pack` writes each block as one literal, which the Rust
``thin_metadata_unpack`` reads (zlib does the compressing).
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from .. import errors
from ..pdata.crc32c import TABLE, crc32c_update

MAGIC = 0xA537A0AA6309EF77
PACK_VERSION = 3
BLOCK_SIZE = 4096
BLOCKS_PER_CHUNK = 1024
#: every checksum salt thin_metadata_pack recognises (thin, cache and era
#: superblocks, btree nodes, bitmaps, index blocks, arrays)
SALTS = frozenset({160774, 9031977, 146538381, 121107, 240779, 160478, 595846735})

SET, POS, POSW, NEG, NEGW, CONST, CONST8, COUNT, COUNT8, LIT, LITW, SHIFTED_RUN = range(12)


def is_metadata_block(blk: np.ndarray) -> bool:
    """thin_metadata_pack's test: the stored checksum is the block's crc32c
    xor one of dm's salts."""
    if not blk[:16].any():
        return False
    stored = int(blk[:4].view("<u4")[0])
    csum = int(crc32c_update(TABLE, np.uint32(0xFFFFFFFF), blk[4:]))
    return (csum ^ stored) in SALTS


def pack(src, dst) -> int:
    """Archive the metadata image ``src`` into ``dst``; returns the number
    of blocks stored."""
    src, dst = os.fspath(src), os.fspath(dst)
    size = os.path.getsize(src)
    nr_blocks = size // BLOCK_SIZE
    if nr_blocks == 0:
        raise errors.ImageFormatError(f"{src}: {size} bytes, not a metadata device")
    stored = 0
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        with open(src, "rb") as f, open(tmp, "wb") as out:
            out.write(struct.pack("<4Q", MAGIC, PACK_VERSION, BLOCK_SIZE, nr_blocks))
            records = []

            def flush():
                if records:
                    z = zlib.compress(b"".join(records), 6)
                    out.write(struct.pack("<Q", len(z)))
                    out.write(z)
                    records.clear()

            for base in range(0, nr_blocks, 4096):
                raw = f.read(min(4096, nr_blocks - base) * BLOCK_SIZE)
                arr = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BLOCK_SIZE)
                for i in range(arr.shape[0]):
                    if is_metadata_block(arr[i]):
                        records.append(struct.pack("<QBH", base + i, (LITW << 4) | 2, BLOCK_SIZE) + arr[i].tobytes())
                        stored += 1
                        if len(records) == BLOCKS_PER_CHUNK:
                            flush()
            flush()
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return stored


class _VM:
    """thin_metadata_pack's block VM over one decompressed chunk."""

    def __init__(self, buf: bytes, pack_name: str):
        self.buf = buf
        self.pos = 0
        self.base = 0
        self.name = pack_name

    def _bad(self, what: str):
        return errors.ImageFormatError(f"{self.name}: bad pack program at byte {self.pos}: {what}")

    def _u(self, width: int) -> int:
        if width not in (1, 2, 4, 8):
            raise self._bad(f"operand width {width}")
        if self.pos + width > len(self.buf):
            raise self._bad("truncated operand")
        v = int.from_bytes(self.buf[self.pos:self.pos + width], "little")
        self.pos += width
        return v

    def _emit_base(self, out: list, n: int) -> None:
        out.append(struct.pack("<Q", self.base & 0xFFFFFFFFFFFFFFFF) * n)

    def instr(self, out: list, count: int) -> None:
        if self.pos >= len(self.buf):
            raise self._bad("program ends early")
        b = self.buf[self.pos]
        self.pos += 1
        tag, nib = b >> 4, b & 15
        if tag == SET:
            self.base = self._u(nib)
            self._emit_base(out, count)
        elif tag in (POS, POSW, NEG, NEGW):
            delta = nib if tag in (POS, NEG) else self._u(nib)
            sign = 1 if tag in (POS, POSW) else -1
            for _ in range(count):
                self.base = (self.base + sign * delta) & 0xFFFFFFFFFFFFFFFF
                self._emit_base(out, 1)
        elif tag == CONST:
            self._emit_base(out, nib)
        elif tag == CONST8:
            self._emit_base(out, (nib << 8) | self._u(1))
        elif tag == COUNT:
            self.instr(out, nib)
        elif tag == COUNT8:
            self.instr(out, (nib << 8) | self._u(1))
        elif tag in (LIT, LITW):
            n = nib if tag == LIT else self._u(nib)
            if self.pos + n > len(self.buf):
                raise self._bad("truncated literal")
            out.append(self.buf[self.pos:self.pos + n])
            self.pos += n
        elif tag == SHIFTED_RUN:
            n = (nib << 8) | self._u(1)
            high = np.frombuffer(self.run(8 * n), dtype="<u8")
            low = np.frombuffer(self.run(8 * n), dtype="<u8")
            vals = (high << np.uint64(24)) | (low & np.uint64((1 << 24) - 1))
            out.append(vals.astype("<u8").tobytes())
        else:
            raise self._bad(f"unknown tag {tag}")

    def run(self, nbytes: int) -> bytes:
        """Run instructions until at least ``nbytes`` were emitted."""
        out: list = []
        got = 0
        while got < nbytes:
            before = len(out)
            self.instr(out, 1)
            got += sum(len(x) for x in out[before:])
        data = b"".join(out)
        if len(data) != nbytes:
            raise self._bad(f"a block program emitted {len(data)} bytes, not {nbytes}")
        return data


def unpack(src, dst) -> int:
    """Restore the metadata image archived in ``src`` to ``dst`` (a new
    file); returns the number of blocks written."""
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst):
        raise errors.DeviceExistsError(f"{dst}: exists; thinp unpack writes a new metadata file")
    with open(src, "rb") as f:
        head = f.read(32)
        if len(head) < 32:
            raise errors.ImageFormatError(f"{src}: not a thin_metadata_pack archive (too short)")
        magic, version, bsize, nr_blocks = struct.unpack("<4Q", head)
        if magic != MAGIC:
            raise errors.ImageFormatError(f"{src}: not a thin_metadata_pack archive (magic {magic:#x})")
        if version != PACK_VERSION:
            raise errors.ImageFormatError(f"{src}: pack version {version}; thinp reads version {PACK_VERSION}")
        if bsize != BLOCK_SIZE:
            raise errors.ImageFormatError(f"{src}: block size {bsize}, not {BLOCK_SIZE}")
        written = 0
        tmp = f"{dst}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as out:
                out.truncate(nr_blocks * BLOCK_SIZE)
                while True:
                    lb = f.read(8)
                    if not lb:
                        break
                    if len(lb) < 8:
                        raise errors.ImageFormatError(f"{src}: truncated chunk header")
                    (n,) = struct.unpack("<Q", lb)
                    z = f.read(n)
                    if len(z) != n:
                        raise errors.ImageFormatError(f"{src}: truncated chunk ({len(z)} of {n} bytes)")
                    try:
                        buf = zlib.decompress(z)
                    except zlib.error as e:
                        raise errors.ImageFormatError(f"{src}: a chunk does not decompress ({e})") from None
                    vm = _VM(buf, src)
                    while vm.pos < len(buf):
                        b = vm._u(8)
                        if b >= nr_blocks:
                            raise errors.ImageFormatError(f"{src}: block {b} beyond the {nr_blocks} blocks")
                        vm.base = 0
                        data = vm.run(BLOCK_SIZE)
                        out.seek(b * BLOCK_SIZE)
                        out.write(data)
                        written += 1
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return written

"""A fast, equally strict tar header scanner for uncompressed tars.

``tarstream.iter_tar`` is the reference reader: it reads a stream, checks
everything, and costs a few microseconds of Python per header.  A layer that
is already on disk uncompressed (a layer in the store, a member of an
uncompressed ``docker save``) or in memory can be listed far faster: one
numba kernel walks the headers, reading a file through a 4 KiB ``pread``
window and seeking over the data, as ``tar -t`` does (a mapping was tried:
its page faults cost more than the whole kernel).

``iter_headers(src, name)`` yields exactly the ``TarHeader`` objects that
``iter_tar`` yields for the same bytes, and raises exactly the same
``ImageFormatError`` after yielding the same headers.  It gets there by being
*optimistic and deferring*:

* the kernel (``_scan``) takes a header only when everything about it is
  plain and valid: 512 bytes present, not all zero, plain octal numeric
  fields (leading/trailing spaces or NULs only), a checksum that matches
  (unsigned or signed, as the reference allows), a supported entry type,
  data and padding inside the file, a name with no ``..``
  (normalised in the kernel, byte-wise: ``/`` and ``.`` never occur inside a
  UTF-8 sequence or a surrogate-escaped byte), a non-empty normalised name
  unless a directory, a ``..``-free non-empty hardlink target and a
  non-empty symlink target;
* anything else (an extended header ``x g L K``, base-256 or odd numbers, a
  bad checksum, a hostile name, truncation, ...) stops the kernel *before*
  that header, and the reference reader is resumed right there with the
  same state (members seen, PAX globals).  It yields that one member (or
  raises what it would have raised), after which the kernel takes over again
  past its data.  Past a PAX global header the reference reads the rest.

The kernel reads only inside its window (every offset is checked against
the bytes the window holds before use; ``pread`` never asks for more than
the window or past the tar's end) and writes only inside its fixed-size
output buffers, so
memory does not grow with the layer: headers come out in batches of
``BATCH`` and names are decoded per batch, with one ``decode`` and one
``split`` for the whole batch.
"""
from __future__ import annotations

import io
import os
import stat
import threading
from itertools import repeat
from typing import Iterator

import numpy as np

from numba import types as _nbtypes

from ..config import njit
from . import tarstream as ts

__all__ = ["iter_headers", "iter_batches", "TarSource", "BATCH", "scan_batch", "ST_FULL", "ST_EOA", "ST_SLOW"]

BATCH = 2048
#: bytes one member can add to the names buffer: prefix/name (256) + NUL +
#: link (100) + NUL, rounded up
NAME_ROOM = 512
NAMES_BYTES = BATCH * 384 + NAME_ROOM
NR_FIELDS = 8
F_TYPE, F_MODE, F_UID, F_GID, F_MTIME, F_SIZE, F_DMAJ, F_DMIN = range(NR_FIELDS)

ST_BADARG = -1   # the kernel's arguments are inconsistent; nothing was read
ST_FULL = 0      # an output buffer is full: call again from the returned position
ST_EOA = 1       # the end-of-archive zero block is at the returned position
ST_SLOW = 2      # the header (group) at the returned position needs the reference reader

_BLOCK = 512
#: read window of the file-backed kernel: one ``pread`` covers several small members
WINDOW_BYTES = 4096
# libc's pread, linked by symbol name (so the kernel stays cacheable)
_pread = _nbtypes.ExternalFunction(
    "pread", _nbtypes.int64(_nbtypes.int32, _nbtypes.uintp, _nbtypes.uintp, _nbtypes.int64))
_SLASH, _DOT, _NUL, _SPACE = 47, 46, 0, 32


@njit(inline="always")
def _octal(buf, start, length):
    """A plain octal field: [ NUL/space ]* digits* [ NUL/space ]*, else -1.

    Exactly the fields ``int(f.strip(b" \\0") or b"0", 8)`` reads; anything
    Python's ``int`` would also accept (signs, underscores, tabs, an ``0o``
    prefix) or reject goes to the reference reader."""
    i = start
    end = start + length
    while i < end and (buf[i] == _SPACE or buf[i] == _NUL):
        i += 1
    v = 0
    while i < end and buf[i] >= 48 and buf[i] <= 55:
        v = v * 8 + (np.int64(buf[i]) - 48)
        i += 1
    while i < end:
        if buf[i] != _SPACE and buf[i] != _NUL:
            return -1
        i += 1
    return v


@njit(inline="always")
def _cstrlen(buf, start, maxlen):
    n = 0
    while n < maxlen and buf[start + n] != _NUL:
        n += 1
    return n


@njit(inline="always")
def _normalize(src, length, names, out):
    """Write ``normalize_member_name(src[:length])`` at ``names[out:]``.

    Returns the end offset, or -1 for a ``..`` component (which the
    reference resolves or refuses), -2 for an empty ``src``.  A leading
    ``/`` goes, like every empty component.  The caller guarantees room for
    ``length`` bytes.
    """
    if length == 0:
        return -2
    first = True
    i = 0
    while i < length:
        j = i
        while j < length and src[j] != _SLASH:
            j += 1
        clen = j - i
        if clen == 0 or (clen == 1 and src[i] == _DOT):
            pass
        elif clen == 2 and src[i] == _DOT and src[i + 1] == _DOT:
            return -1
        else:
            if not first:
                names[out] = _SLASH
                out += 1
            for k in range(i, j):
                names[out] = src[k]
                out += 1
            first = False
        i = j + 1
    return out


@njit
def _scan(fd, base, n, win, pos, rec, names, scratch):
    """Walk plain headers of the ``n``-byte tar from ``pos``; see the module docstring.

    With ``fd < 0`` the tar is ``win`` itself (``n == len(win)``); else it is
    bytes ``base .. base + n`` of file ``fd``, read through ``win`` with
    ``pread``, a window of a few KiB refilled at a header outside it (one
    ``pread`` covers the headers of all small files in it, as ``tar``'s
    records do; large data is skipped without being read).

    Returns ``(status, pos, nr_records, names_end)``: ``pos`` is where the
    next call (or the reference reader) starts; records ``0..nr_records-1``
    of ``rec`` (one column each) and ``names[:names_end]`` (``name NUL link
    NUL`` per record) are filled.  Every read of ``win`` is at
    ``o .. o + 511`` with ``o + 512 <= wlen <= len(win)``.
    """
    cap = rec.shape[1]
    nr = 0
    npos = 0
    if pos < 0 or pos > n or rec.shape[0] != NR_FIELDS or scratch.shape[0] < 2 * _BLOCK \
            or names.shape[0] < NAME_ROOM or (fd >= 0 and win.shape[0] < _BLOCK):
        return ST_BADARG, pos, 0, 0
    if fd < 0:
        if n != win.shape[0]:
            return ST_BADARG, pos, 0, 0
        wstart = 0
        wlen = n
    else:
        wstart = 0
        wlen = 0
    while True:
        if nr >= cap or npos + NAME_ROOM > names.shape[0]:
            return ST_FULL, pos, nr, npos
        h = pos
        if n - h < _BLOCK:
            return ST_SLOW, pos, nr, npos           # truncated: the reference says how
        if h < wstart or h + _BLOCK > wstart + wlen:
            if fd < 0:
                return ST_BADARG, pos, nr, npos     # cannot happen: the window is the tar
            want = min(win.shape[0], n - h)
            got = _pread(np.int32(fd), win.ctypes.data, want, base + h)
            if got < _BLOCK or got > want:
                return ST_SLOW, pos, nr, npos       # a read error or a file that shrank
            wstart = h
            wlen = got
        o = h - wstart
        # one branch-free pass: the byte sum (zero only for a zero block) and
        # the count of bytes > 127, which the signed checksum subtracts 256 for
        total = 0
        high = 0
        for i in range(_BLOCK):
            b = np.int64(win[o + i])
            total += b
            high += b >> 7
        if total == 0:
            return ST_EOA, pos, nr, npos
        stored = _octal(win, o + 148, 8)
        size = _octal(win, o + 124, 12)
        if stored < 0 or size < 0:
            return ST_SLOW, pos, nr, npos
        for i in range(148, 156):
            b = np.int64(win[o + i])
            total -= b
            high -= b >> 7
        unsigned = total + 256
        signed = unsigned - 256 * high
        if stored != unsigned and stored != signed:
            return ST_SLOW, pos, nr, npos
        t = win[o + 156]
        if not (t == 0 or (t >= 48 and t <= 55)):   # x g L K, and unsupported types
            return ST_SLOW, pos, nr, npos
        mode = _octal(win, o + 100, 8)
        uid = _octal(win, o + 108, 8)
        gid = _octal(win, o + 116, 8)
        mtime = _octal(win, o + 136, 12)
        if mode < 0 or uid < 0 or gid < 0 or mtime < 0:
            return ST_SLOW, pos, nr, npos
        dmaj = 0
        dmin = 0
        if t == 51 or t == 52:                       # char, block
            dmaj = _octal(win, o + 329, 8)
            dmin = _octal(win, o + 337, 8)
            if dmaj < 0 or dmin < 0:
                return ST_SLOW, pos, nr, npos
        pad = (_BLOCK - size % _BLOCK) % _BLOCK
        if size + pad > n - h - _BLOCK:
            return ST_SLOW, pos, nr, npos           # data or padding runs past the end
        # raw name: [prefix "/"] name, each up to its first NUL
        ustar = win[o + 257] == 117 and win[o + 258] == 115 and win[o + 259] == 116 \
            and win[o + 260] == 97 and win[o + 261] == 114 and win[o + 262] == 0
        rl = 0
        if ustar and win[o + 345] != 0:
            pl = _cstrlen(win, o + 345, 155)
            for i in range(pl):
                scratch[rl] = win[o + 345 + i]
                rl += 1
            scratch[rl] = _SLASH
            rl += 1
        nl = _cstrlen(win, o, 100)
        for i in range(nl):
            scratch[rl] = win[o + i]
            rl += 1
        if t == 0 and rl > 0 and scratch[rl - 1] == _SLASH:
            t = 53                                   # a v7 directory: its trailing slash alone
        end = _normalize(scratch, rl, names, npos)
        if end < 0 or (end == npos and t != 53):    # hostile, empty, or a non-directory root
            return ST_SLOW, pos, nr, npos
        names[end] = _NUL
        lpos = end + 1
        if t == 49 or t == 50:                       # hardlink, symlink: target from the header
            ll = _cstrlen(win, o + 157, 100)
            if ll == 0:
                return ST_SLOW, pos, nr, npos
            if t == 49:
                for i in range(ll):
                    scratch[i] = win[o + 157 + i]
                lend = _normalize(scratch, ll, names, lpos)
                if lend <= lpos:                     # '..', or the root
                    return ST_SLOW, pos, nr, npos
            else:
                for i in range(ll):
                    names[lpos + i] = win[o + 157 + i]
                lend = lpos + ll
        else:
            lend = lpos
        names[lend] = _NUL
        npos = lend + 1
        is_file = t == 0 or t == 48 or t == 55
        rec[F_TYPE, nr] = t
        rec[F_MODE, nr] = mode & 0o7777
        rec[F_UID, nr] = uid
        rec[F_GID, nr] = gid
        rec[F_MTIME, nr] = mtime
        rec[F_SIZE, nr] = size if is_file else 0
        rec[F_DMAJ, nr] = dmaj
        rec[F_DMIN, nr] = dmin
        nr += 1
        pos = h + _BLOCK + size + pad


class Scratch:
    """The fixed-size buffers one scan uses (a few hundred KiB, whatever the layer)."""

    __slots__ = ("rec", "names", "scratch")

    def __init__(self, batch: int = BATCH):
        self.rec = np.zeros((NR_FIELDS, batch), dtype=np.int64)
        self.names = np.zeros(batch * 384 + NAME_ROOM, dtype=np.uint8)
        self.scratch = np.zeros(2 * _BLOCK, dtype=np.uint8)


class TarSource:
    """An uncompressed tar for the kernel: bytes in memory, or a byte range
    of a file read by ``pread`` through a small window."""

    def __init__(self, n: int, *, buf: np.ndarray | None = None, fd: int = -1, base: int = 0,
                 path: str | None = None, stamp: tuple | None = None):
        self.n, self.buf, self.fd, self.base, self.path = n, buf, fd, base, path
        self.stamp = stamp
        self.win = buf if buf is not None else np.zeros(WINDOW_BYTES, dtype=np.uint8)

    @classmethod
    def from_bytes(cls, data) -> "TarSource":
        buf = np.frombuffer(data, dtype=np.uint8)
        return cls(buf.shape[0], buf=buf)

    @classmethod
    def open(cls, path: str, offset: int, length: int | None) -> "TarSource":
        """Bytes ``offset .. offset + length`` (to the end if None) of the
        regular file ``path``; ``ValueError`` if it is not one or too short."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{path} is not a regular file")
            if length is None:
                length = st.st_size - offset
            if offset < 0 or length < 0 or offset + length > st.st_size:
                raise ValueError(f"{path}: bytes {offset}+{length} are not all in the file")
        except BaseException:
            os.close(fd)
            raise
        return cls(length, fd=fd, base=offset, path=path, stamp=_stamp(st))

    def changed(self) -> bool:
        """Whether the file was written (or replaced in place) since it was
        opened: any write moves its ctime, which no user can set back."""
        return self.fd >= 0 and _stamp(os.fstat(self.fd)) != self.stamp

    def head(self, k: int) -> bytes:
        if self.buf is not None:
            return self.buf[:k].tobytes()
        return os.pread(self.fd, min(k, self.n), self.base)

    def reader_at(self, pos: int) -> io.RawIOBase:
        """A raw reader of the tar's bytes from ``pos`` to its end."""
        if self.buf is not None:
            return _ArrayReader(self.buf, pos)
        return _FdReader(self.fd, self.base, self.n, pos)

    def close(self) -> None:
        self.buf = self.win = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _stamp(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan_batch(src: TarSource, pos: int, s: Scratch) -> tuple[int, int, int, int]:
    """One kernel call, with its arguments checked first."""
    win = src.win
    if not (isinstance(win, np.ndarray) and win.dtype == np.uint8 and win.ndim == 1
            and win.flags.c_contiguous):
        raise TypeError("the scan window must be a contiguous 1-D uint8 array")
    if src.fd < 0 and win.shape[0] != src.n:
        raise ValueError("an in-memory tar source must be its own window")
    if not 0 <= pos <= src.n:
        raise ValueError(f"position {pos} outside a tar of {src.n} bytes")
    status, pos, nr, npos = _scan(src.fd, src.base, src.n, win, pos, s.rec, s.names, s.scratch)
    if status == ST_BADARG:
        raise ValueError("fast tar scan: inconsistent scratch buffers")
    return status, pos, nr, npos


class _ArrayReader(io.RawIOBase):
    """A reader over ``buf[pos:]`` for the reference reader to resume on."""

    def __init__(self, buf: np.ndarray, pos: int):
        self.buf, self.pos = buf, pos

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = self.buf.shape[0] if n is None or n < 0 else min(self.pos + n, self.buf.shape[0])
        out = self.buf[self.pos:end].tobytes()
        self.pos = max(end, self.pos)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, n: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_CUR:
            raise io.UnsupportedOperation("only relative seeks")
        self.pos = min(self.pos + n, self.buf.shape[0])
        return self.pos


class _FdReader(_ArrayReader):
    """The same over bytes ``base + pos .. base + n`` of a file."""

    def __init__(self, fd: int, base: int, n: int, pos: int):
        self.fd, self.base, self.n, self.pos = fd, base, n, pos

    def read(self, k: int = -1) -> bytes:
        k = self.n - self.pos if k is None or k < 0 else min(k, self.n - self.pos)
        out = os.pread(self.fd, k, self.base + self.pos) if k > 0 else b""
        self.pos += len(out)
        return out

    def seek(self, k: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_CUR:
            raise io.UnsupportedOperation("only relative seeks")
        self.pos = min(self.pos + k, self.n)
        return self.pos


_FILE, _DIR = ts.FILE, ts.DIR
_KIND = [None] * 256
for _flag, _kind in ts.TYPEFLAGS.items():
    _KIND[_flag[0]] = _kind
del _flag, _kind


def iter_headers(src, name: str, *, seek_mode: bool) -> Iterator[ts.TarHeader]:
    """Yield the headers ``iter_tar`` yields for the tar ``src`` (a
    ``TarSource``, or bytes / a uint8 array holding the tar).

    ``seek_mode`` picks which reference reader is resumed on anything
    unusual: the one that seeks over data (``True``, as an unverified walk of
    a file reads) or the one that reads through it (as a hashing walk does);
    they word a truncated entry's error differently.
    """
    Entry = ts.Entry
    for rows, _ in iter_batches(src, name, seek_mode=seek_mode):
        for row in rows:
            yield Entry(*row) if row[10] is not None else Entry(*row[:10])


def header_row(h: ts.TarHeader) -> tuple:
    """A header as a row: its fields in order, as ``iter_batches`` yields them."""
    return (h.path, h.kind, h.mode, h.uid, h.gid, h.mtime, h.size, h.linkname,
            h.devmajor, h.devminor, h.xattrs)


def iter_batches(src, name: str, *, seek_mode: bool) -> Iterator[tuple[list[tuple], bool]]:
    """``iter_headers`` in batches of rows: ``(rows, maybe_whiteouts)``.

    A row is a header's fields in ``Entry`` order, ``(path, kind, mode, uid,
    gid, mtime, size, linkname, devmajor, devminor, xattrs)``, with ``xattrs``
    None when there are none: building the tuples costs a fraction of
    building ``Entry`` objects.  ``maybe_whiteouts`` is False when no path
    in the batch contains ``.wh.``, so that a caller can skip whiteout
    classification.
    """
    if not isinstance(src, TarSource):
        src = TarSource.from_bytes(src)
    n = src.n
    s = _take_scratch()
    try:
        rec, names = s.rec, s.names
        pos = 0
        index = 0
        global_pax: dict[str, bytes] = {}
        kinds = _KIND
        while True:
            status, pos, nr, npos = scan_batch(src, pos, s)
            if nr:
                cols = rec[:, :nr].tolist()
                joined = names[:npos].tobytes().decode("utf-8", "surrogateescape")
                strs = joined.split("\x00")
                batch = list(zip(strs[0:2 * nr:2], map(kinds.__getitem__, cols[F_TYPE]),
                                 cols[F_MODE], cols[F_UID], cols[F_GID], cols[F_MTIME], cols[F_SIZE],
                                 strs[1:2 * nr:2], cols[F_DMAJ], cols[F_DMIN], repeat(None, nr)))
                index += nr
                yield batch, ".wh." in joined
            if status == ST_FULL:
                continue
            if status == ST_EOA:
                return
            # ST_SLOW: the reference reader takes the header group at ``pos``.
            inp = ts.HashingInput(src.reader_at(pos), name, hash_data=False,
                                  size_bytes=(n - pos) if seek_mode else None)
            inp.chunk_bytes = ts.SEEK_CHUNK_BYTES
            gen = ts.iter_tar(inp, index=index, global_pax=global_pax)
            try:
                th, _stream = next(gen)
            except StopIteration:
                return
            index += 1
            after_header = pos + inp.nr_bytes - (len(inp.buf) - inp.pos)
            nxt = after_header + (th.size + (-th.size % _BLOCK) if th.kind == _FILE else 0)
            if global_pax or nxt > n:
                # PAX globals apply to every later member, and a member whose data
                # runs past the end fails as the reference fails: let it read on.
                yield [header_row(th)], True
                for th, _stream in gen:
                    yield [header_row(th)], True
                return
            gen.close()
            yield [header_row(th)], True
            pos = nxt
    finally:
        _give_scratch(s)


_scratch_pool: list[Scratch] = []
_scratch_lock = threading.Lock()


def _take_scratch() -> Scratch:
    with _scratch_lock:
        if _scratch_pool:
            return _scratch_pool.pop()
    return Scratch()


def _give_scratch(s: Scratch) -> None:
    with _scratch_lock:
        if len(_scratch_pool) < 4:
            _scratch_pool.append(s)

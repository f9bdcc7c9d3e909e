"""A streaming, hostile-input-safe tar reader for layer blobs.

Layer tars come from strangers.  ``tarfile`` is lenient where we must be
strict (it silently stops at a truncated header and accepts a missing
end-of-archive marker), so this module parses the format itself:

* ustar / GNU / PAX headers, GNU long names (``L``/``K``), PAX extended
  (``x``) and global (``g``) headers, base-256 numeric fields;
* every header checksum is verified, every size is bounds-checked, the
  archive must end with an end-of-archive zero block;
* names are cleaned as Docker cleans them (a leading ``/`` or ``./``
  stripped, ``a/../b`` is ``b``) and refused when a ``..`` climbs out of
  the root; hardlink targets likewise;
* every byte read passes through a sha256 (the DiffID) and a byte counter,
  so a layer is verified in the same single pass that lists it.

Memory does not grow with layer size: input is read in ``CHUNK_BYTES``
chunks and entry data is handed out as bounded streams.

``open_blob(raw, name)`` sniffs gzip / zstd / plain and returns a reader of
the uncompressed bytes that refuses to expand past ``max_ratio`` times the
compressed size (a decompression bomb).  ``iter_tar(reader, name)`` yields
``(TarHeader, DataStream)`` pairs.  Every malformed input raises
``ImageFormatError`` naming the blob.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..errors import ImageFormatError

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_MAX_RATIO",
    "BOMB_FLOOR_BYTES",
    "TarHeader",
    "Entry",
    "DataStream",
    "HashingInput",
    "open_blob",
    "iter_tar",
    "normalize_member_name",
    "sniff_compression",
]

CHUNK_BYTES = 1 << 20
SEEK_CHUNK_BYTES = 16 << 10
BLOCK = 512
# A layer may expand at most this many times its compressed size ...
DEFAULT_MAX_RATIO = 200
# ... once it has produced more than this many bytes (tiny layers, such as an
# empty tar, legitimately compress by several hundred times).
BOMB_FLOOR_BYTES = 32 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCKDEV, FIFO = (
    "file", "dir", "symlink", "hardlink", "char", "block", "fifo")
TYPEFLAGS = {
    b"0": FILE, b"\x00": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK,
    b"3": CHAR, b"4": BLOCKDEV, b"5": DIR, b"6": FIFO,
}


def sniff_compression(head: bytes) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` from the first bytes of a blob."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


class _CountingRaw(io.RawIOBase):
    """Counts (and optionally hashes) the compressed bytes read from ``raw``."""

    def __init__(self, raw: BinaryIO, hasher=None):
        self.raw = raw
        self.nr_bytes = 0
        self.hasher = hasher

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.nr_bytes += n
        if self.hasher is not None and n:
            self.hasher.update(data)
        return n


class _Decompressed(io.RawIOBase):
    """Uncompressed view of a compressed stream, with a bomb check."""

    def __init__(self, inner, counter: _CountingRaw, name: str, max_ratio: float):
        self.inner = inner
        self.counter = counter
        self.name = name
        self.max_ratio = max_ratio
        self.nr_out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.inner.read(len(b))
        except ImageFormatError:
            raise
        except (OSError, EOFError, zlib.error, ValueError) as e:
            raise ImageFormatError(f"{self.name}: corrupt compressed data: {e}") from None
        except Exception as e:  # zstandard.ZstdError and friends
            raise ImageFormatError(f"{self.name}: corrupt compressed data: {e}") from None
        n = len(data)
        b[:n] = data
        self.nr_out += n
        if self.nr_out > BOMB_FLOOR_BYTES and self.max_ratio:
            limit = self.max_ratio * max(self.counter.nr_bytes, 1)
            if self.nr_out > limit:
                raise ImageFormatError(
                    f"{self.name}: decompression bomb: {self.nr_out} bytes expanded from "
                    f"{self.counter.nr_bytes} compressed bytes, over the "
                    f"{self.max_ratio}x expansion-ratio cap")
        return n


def open_blob(raw: BinaryIO, name: str, *, max_ratio: float = DEFAULT_MAX_RATIO,
              blob_hasher=None) -> tuple[BinaryIO, _CountingRaw]:
    """Return ``(uncompressed_reader, counter)`` for a gzip, zstd or plain blob.

    ``counter.nr_bytes`` is the number of blob (compressed) bytes consumed so
    far; ``blob_hasher``, if given, is fed those bytes (the blob digest).
    """
    counter = _CountingRaw(raw, blob_hasher)
    buffered = io.BufferedReader(counter, CHUNK_BYTES)
    head = buffered.peek(4)[:4]
    kind = sniff_compression(head)
    if kind == "none":
        return buffered, counter
    if kind == "gzip":
        inner = gzip.GzipFile(fileobj=buffered, mode="rb")
    else:
        import zstandard
        inner = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    return _Decompressed(inner, counter, name, max_ratio), counter


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self.head, self.raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(b))
        b[:len(data)] = data
        return len(data)


def _read_head(raw: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        more = raw.read(n - len(head))
        if not more:
            break
        head += more
    return head


def open_input(raw: BinaryIO, name: str, *, hash_data: bool, max_ratio: float = DEFAULT_MAX_RATIO,
               blob_hasher=None) -> tuple["HashingInput", "_CountingRaw | None"]:
    """A ``HashingInput`` over the uncompressed tar in ``raw``.

    For a plain tar the blob *is* the tar: no wrapper, no second hash (the
    blob digest equals the DiffID) and the second item is ``None``.  For
    gzip/zstd the second item counts (and ``blob_hasher`` hashes) the
    compressed bytes.
    """
    head = _read_head(raw, 4)
    if sniff_compression(head) == "none":
        inp = HashingInput(raw, name, hash_data=hash_data or blob_hasher is not None)
        inp.prime(head)
        return inp, None
    reader, counter = open_blob(_Prefixed(head, raw), name, max_ratio=max_ratio,
                                blob_hasher=blob_hasher)
    return HashingInput(reader, name, hash_data=hash_data), counter


class HashingInput:
    """Chunked reader over the uncompressed tar that hashes every byte once.

    With ``hash_data=False`` and a seekable ``raw`` whose size is known
    (``size_bytes``), skipped entry data is seeked over, as ``tar -t`` does.
    """

    def __init__(self, raw: BinaryIO, name: str, hash_data: bool = True,
                 size_bytes: int | None = None):
        self.raw = raw
        self.name = name
        self.hasher = hashlib.sha256() if hash_data else None
        self.seek_ok = not hash_data and size_bytes is not None
        self.size_bytes = size_bytes
        # when seeking over data, small reads touch little more than the headers
        self.chunk_bytes = SEEK_CHUNK_BYTES if self.seek_ok else CHUNK_BYTES
        self.buf = b""
        self.pos = 0
        self.nr_bytes = 0   # bytes consumed from raw so far
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.raw.read(self.chunk_bytes)
        if not chunk:
            self.eof = True
            return False
        if self.hasher is not None:
            self.hasher.update(chunk)
        self.nr_bytes += len(chunk)
        rest = self.buf[self.pos:]
        self.buf = rest + chunk if rest else chunk
        self.pos = 0
        return True

    def prime(self, head: bytes) -> None:
        """Feed bytes already read from ``raw`` (a sniffed header)."""
        if head:
            if self.hasher is not None:
                self.hasher.update(head)
            self.nr_bytes += len(head)
            self.buf = self.buf[self.pos:] + head
            self.pos = 0

    def read_exact(self, n: int, what: str) -> bytes:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                raise ImageFormatError(
                    f"{self.name}: truncated tar: {what} needs {n} bytes, "
                    f"only {len(self.buf) - self.pos} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least 1 unless at EOF)."""
        if self.pos >= len(self.buf):
            if not self._fill():
                return b""
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int, what: str) -> None:
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return
        if self.seek_ok:
            jump = n - avail
            if self.nr_bytes + jump > self.size_bytes:
                raise ImageFormatError(
                    f"{self.name}: truncated tar: {what} declares {n} bytes, more than the file has")
            self.raw.seek(jump, os.SEEK_CUR)
            self.nr_bytes += jump
            self.buf, self.pos = b"", 0
            return
        while n > 0:
            avail = len(self.buf) - self.pos
            if avail == 0:
                if not self._fill():
                    raise ImageFormatError(
                        f"{self.name}: truncated tar: {what} declares {n} more bytes than the file has")
                continue
            step = min(avail, n)
            self.pos += step
            n -= step

    def drain(self) -> None:
        """Consume (and hash) everything up to EOF."""
        self.buf, self.pos = b"", 0
        while self._fill():
            self.buf, self.pos = b"", 0

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def close(self) -> None:
        pass


class DataStream:
    """The content of one regular-file entry; valid until the next entry.

    A minimal binary reader (``read``, ``readinto``, ``readable``, ``close``):
    a plain object, because an ``io`` subclass costs more to create and
    destroy than parsing the header it belongs to.
    """

    __slots__ = ("_inp", "remaining", "entry_name")

    def __init__(self, inp: HashingInput, size: int, name: str):
        self._inp = inp
        self.remaining = size
        self.entry_name = name

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "DataStream":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        if n is None or n < 0:
            parts = []
            while self.remaining:
                parts.append(self.read(CHUNK_BYTES))
            return b"".join(parts)
        n = min(n, self.remaining)
        out = self._inp.read_some(n)
        if len(out) < n and out:
            parts = [out]
            got = len(out)
            while got < n:
                more = self._inp.read_some(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            out = b"".join(parts)
        if len(out) < n:
            raise ImageFormatError(
                f"{self._inp.name}: truncated tar: {self.entry_name} declares "
                f"{self.remaining - len(out)} more content bytes than the file has")
        self.remaining -= len(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _finish(self) -> None:
        if self.remaining:
            self._inp.skip(self.remaining, self.entry_name)
            self.remaining = 0


@dataclass(slots=True)
class Entry:
    """One change in a layer; see ``thinp.image.layer`` for the kinds."""

    path: str                 # normalised: no leading "./" or "/", no trailing "/"; root is ""
    kind: str                 # file dir symlink hardlink char block fifo (whiteout opaque)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    size: int = 0             # content bytes (regular files only, else 0)
    linkname: str = ""        # symlink target verbatim; hardlink target normalised
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict = field(default_factory=dict)   # name -> bytes


TarHeader = Entry   # what iter_tar yields, before whiteout names are interpreted

_HDR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12x")


PATH_MAX = 4096   # Linux's limit; no real layer has a longer name or link target


def normalize_member_name(raw: str, blob: str, what: str = "entry", *, rooted_dotdot: bool = True) -> str:
    """A member name as Docker's ``Unpack`` takes it: cleaned lexically
    (``filepath.Clean``), so a leading ``/`` or ``./`` and empty or ``.``
    components go and ``a/../b`` is ``b``; ``/``, ``./`` and ``.`` name the
    root (``""``).  A ``..`` that climbs above the root is refused, except
    that a rooted name's ``/..`` stays at the root (Clean's rule) when
    ``rooted_dotdot``; a hardlink target (joined to the root by Docker, so
    ``/..`` leaves it) passes ``rooted_dotdot=False``."""
    if len(raw) > PATH_MAX:
        raise ImageFormatError(f"{blob}: {what} name of {len(raw)} characters is longer than PATH_MAX")
    if "\x00" in raw:
        raise ImageFormatError(f"{blob}: {what} name {raw!r} contains NUL")
    core = raw.strip("/")
    if core and "//" not in core and "/./" not in core and ".." not in core \
            and not core.startswith("./") and not core.endswith("/.") and core != ".":
        return core
    rooted = raw.startswith("/")
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
                continue
            if rooted and rooted_dotdot:
                continue
            raise ImageFormatError(f"{blob}: {what} {raw!r} has a '..' component that leaves the root")
        parts.append(part)
    return "/".join(parts)


def _num(field_bytes: bytes, blob: str, what: str) -> int:
    if not field_bytes[0] & 0x80:
        try:
            value = int(field_bytes.strip(b" \x00") or b"0", 8)
            if value >= 0:
                return value
        except ValueError:
            pass
        return _num_slow(field_bytes, blob, what)
    return _num_slow(field_bytes, blob, what)


def _num_slow(field_bytes: bytes, blob: str, what: str) -> int:
    if field_bytes and field_bytes[0] & 0x80:   # base-256
        value = int.from_bytes(field_bytes[1:], "big")
        if field_bytes[0] == 0xFF:
            raise ImageFormatError(f"{blob}: negative {what} in tar header")
        return value | ((field_bytes[0] & 0x3F) << (8 * (len(field_bytes) - 1)))
    s = field_bytes.split(b"\x00", 1)[0].strip(b" ")
    if not s:
        return 0
    if not s.isdigit():
        raise ImageFormatError(f"{blob}: bad octal {what} {s!r} in tar header")
    try:
        return int(s, 8)
    except ValueError:
        raise ImageFormatError(f"{blob}: bad octal {what} {s!r} in tar header") from None


def _bytesum(b: bytes) -> int:
    """Sum of 512 bytes.  adler32's low half is 1 + sum mod 65521, and 256
    bytes sum to at most 65280, so two halves give the exact sum, fast."""
    mv = memoryview(b)
    return (zlib.adler32(mv[:256]) & 0xFFFF) + (zlib.adler32(mv[256:]) & 0xFFFF) - 2


def _str(field_bytes: bytes) -> str:
    return field_bytes.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes, blob: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:   # trailing NUL padding
            break
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0:
            raise ImageFormatError(f"{blob}: malformed PAX record at offset {pos}")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ImageFormatError(f"{blob}: malformed PAX record length at offset {pos}") from None
        end = pos + length
        if length <= sp - pos + 1 or end > n or data[end - 1:end] != b"\n":
            raise ImageFormatError(f"{blob}: PAX record length {length} does not fit at offset {pos}")
        rec = data[sp + 1:end - 1]
        eq = rec.find(b"=")
        if eq <= 0:
            raise ImageFormatError(f"{blob}: PAX record without key=value at offset {pos}")
        key = rec[:eq].decode("utf-8", "surrogateescape")
        out[key] = rec[eq + 1:]
        pos = end
    return out


def _pax_int(v: bytes, blob: str, key: str) -> int:
    try:
        value = int(v.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ImageFormatError(f"{blob}: bad PAX {key} {v!r}") from None
    if value < 0:
        raise ImageFormatError(f"{blob}: negative PAX {key} {value}")
    return value


def _pax_float(v: bytes, blob: str, key: str) -> float:
    try:
        value = float(v.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ImageFormatError(f"{blob}: bad PAX {key} {v!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ImageFormatError(f"{blob}: bad PAX {key} {v!r}")
    return value


_MAX_META_BYTES = 1 << 20   # a long name or PAX header larger than this is hostile


def iter_tar(inp: HashingInput, *, index: int = 0,
             global_pax: dict[str, bytes] | None = None) -> Iterator[tuple[TarHeader, DataStream | None]]:
    """Yield each member of the tar read from ``inp`` with its content stream.

    The stream (regular files only, else ``None``) must be consumed before
    advancing; whatever is left unread is skipped (and still hashed).  After
    the last member the rest of the input is drained so that ``inp``'s digest
    covers the whole blob.

    ``index`` and ``global_pax`` resume a reading begun elsewhere (the fast
    scanner of ``thinp.image.fastscan`` hands a header group over at ``inp``'s
    position): the number of members already yielded, and the PAX global
    header seen so far, which is updated in place.
    """
    blob = inp.name
    if global_pax is None:
        global_pax = {}
    pax: dict[str, bytes] = {}
    longname: bytes | None = None
    longlink: bytes | None = None
    stream: DataStream | None = None
    while True:
        if stream is not None:
            stream._finish()
            stream = None
        if len(inp.buf) - inp.pos < BLOCK and not inp._fill() and len(inp.buf) == inp.pos:
            raise ImageFormatError(f"{blob}: truncated tar: no end-of-archive marker after {index} entries")
        hdr = inp.read_exact(BLOCK, "a header")
        if hdr.count(0) == BLOCK:
            # End of archive.  A second zero block normally follows; the
            # rest (record padding) is drained for the digest.
            if pax or longname is not None or longlink is not None:
                raise ImageFormatError(f"{blob}: extended header with no entry before end of archive")
            inp.drain()
            return
        (name_b, mode_b, uid_b, gid_b, size_b, mtime_b, chk_b, typeflag, link_b, magic,
         _version, _uname, _gname, dmaj_b, dmin_b, prefix_b) = _HDR.unpack(hdr)
        try:   # fast path: plain octal fields; anything else takes _num's careful path
            stored = int(chk_b.strip(b" \x00"), 8)
            size = int(size_b.strip(b" \x00") or b"0", 8)
            if stored < 0 or size < 0:
                raise ValueError
        except ValueError:
            stored = _num(chk_b, blob, "checksum")
            size = _num(size_b, blob, "size")
        unsigned = _bytesum(hdr) - sum(chk_b) + 256
        if stored != unsigned:
            signed = sum(b - 256 if b > 127 else b for b in hdr[:148]) + 256 + \
                sum(b - 256 if b > 127 else b for b in hdr[156:])
            if stored != signed:
                raise ImageFormatError(
                    f"{blob}: bad tar header checksum at entry {index} (stored {stored}, computed {unsigned})")
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > _MAX_META_BYTES:
                raise ImageFormatError(f"{blob}: extended header of {size} bytes at entry {index} is too large")
            data = inp.read_exact(size, f"extended header of entry {index}")
            pad = -size % BLOCK
            if pad:
                inp.skip(pad, f"extended header of entry {index}")
            if typeflag == b"x":
                pax.update(_parse_pax(data, blob))
            elif typeflag == b"g":
                global_pax.update(_parse_pax(data, blob))
            elif typeflag == b"L":
                longname = data.split(b"\x00", 1)[0]
            else:
                longlink = data.split(b"\x00", 1)[0]
            continue
        kind = TYPEFLAGS.get(typeflag)
        if kind is None:
            raise ImageFormatError(
                f"{blob}: unsupported tar entry type {typeflag!r} at entry {index}")
        ext = {**global_pax, **pax} if global_pax else pax
        if longname is not None:
            raw_name = longname.decode("utf-8", "surrogateescape")
        elif "path" in ext:
            raw_name = ext["path"].decode("utf-8", "surrogateescape")
        else:
            raw_name = _str(name_b)
            if magic == b"ustar\x00" and prefix_b[0] != 0:
                raw_name = _str(prefix_b) + "/" + raw_name
        if longlink is not None:
            linkname = longlink.decode("utf-8", "surrogateescape")
        elif "linkpath" in ext:
            linkname = ext["linkpath"].decode("utf-8", "surrogateescape")
        elif typeflag == b"1" or typeflag == b"2":
            linkname = _str(link_b)
        else:
            linkname = ""
        if "size" in ext:
            size = _pax_int(ext["size"], blob, "size")
        if ext and any(k.startswith("GNU.sparse") for k in ext):
            raise ImageFormatError(f"{blob}: sparse tar entries are not supported ({raw_name!r})")
        try:
            mode = int(mode_b.strip(b" \x00") or b"0", 8)
            uid = int(uid_b.strip(b" \x00") or b"0", 8)
            gid = int(gid_b.strip(b" \x00") or b"0", 8)
            mtime = int(mtime_b.strip(b" \x00") or b"0", 8)
            if mode < 0 or uid < 0 or gid < 0 or mtime < 0:
                raise ValueError
        except ValueError:
            mode = _num(mode_b, blob, "mode")
            uid = _num(uid_b, blob, "uid")
            gid = _num(gid_b, blob, "gid")
            mtime = _num(mtime_b, blob, "mtime")
        if ext:
            if "uid" in ext:
                uid = _pax_int(ext["uid"], blob, "uid")
            if "gid" in ext:
                gid = _pax_int(ext["gid"], blob, "gid")
            if "mtime" in ext:
                mtime = _pax_float(ext["mtime"], blob, "mtime")
        xattrs = {}
        if ext:
            for k, v in ext.items():
                if k.startswith("SCHILY.xattr."):
                    xattrs[k[len("SCHILY.xattr."):]] = v
        if not raw_name:
            raise ImageFormatError(f"{blob}: entry {index} has an empty name")
        if typeflag == b"\x00" and raw_name.endswith("/"):
            kind = DIR   # old (v7) archives mark a directory by its trailing slash alone
        name = normalize_member_name(raw_name, blob)
        if not name and kind != DIR:
            raise ImageFormatError(f"{blob}: entry {index} ({raw_name!r}) is the root but not a directory")
        if kind == HARDLINK:
            linkname = normalize_member_name(linkname, blob, f"hardlink {name!r} -> target",
                                             rooted_dotdot=False)
            if not linkname:
                raise ImageFormatError(f"{blob}: hardlink {name!r} points at the root")
        elif kind == SYMLINK:
            if not linkname:
                raise ImageFormatError(f"{blob}: symlink {name!r} has an empty target")
            if "\x00" in linkname:
                raise ImageFormatError(f"{blob}: symlink {name!r} target contains NUL")
            if len(linkname) > PATH_MAX:
                raise ImageFormatError(f"{blob}: symlink {name!r} target is longer than PATH_MAX")
        if kind == CHAR or kind == BLOCKDEV:
            th = Entry(name, kind, mode & 0o7777, uid, gid, mtime, 0, "",
                       _num(dmaj_b, blob, "devmajor"), _num(dmin_b, blob, "devminor"), xattrs)
        else:
            th = Entry(name, kind, mode & 0o7777, uid, gid, mtime, size if kind == FILE else 0,
                       linkname, 0, 0, xattrs)
        if pax:
            pax = {}
        longname = longlink = None
        index += 1
        if kind == FILE:
            stream = DataStream(inp, size, name)
            yield th, stream
            stream._finish()
            pad = -size % BLOCK
            if pad:
                inp.skip(pad, "padding")
            stream = None
        else:
            # Non-file members may still declare data (e.g. hardlinks in some
            # writers); skip it rather than misparse it as headers.
            if size:
                inp.skip(size + (-size % BLOCK), "data of a non-file entry")
            yield th, None

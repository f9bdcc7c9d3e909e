"""Layers: a tar diff with OCI whiteouts, read as a stream of ``Entry``.

An ``Entry`` is one change of a changeset:

====================  ==============================================================
``kind``              meaning
====================  ==============================================================
``file``              regular file; ``size`` content bytes, stream from ``walk()``
``dir``               directory (metadata; children are separate entries)
``symlink``           ``linkname`` is the target, verbatim
``hardlink``          ``linkname`` is the normalised path of the linked entry
``char`` / ``block``  device, ``devmajor``/``devminor``
``fifo``              named pipe
``whiteout``          ``.wh.<name>``: delete ``path`` from the lower layers
``opaque``            ``<dir>/.wh..wh..opq``: hide every lower child of ``path``
====================  ==============================================================

Paths are relative to the rootfs, ``/``-separated, with no ``./`` prefix; the
root itself is ``""``.  Whiteout and opaque entries act on lower layers only,
never on entries of their own layer, wherever they sit in the tar: a
consumer that applies entries in tar order must spare the paths this layer
already wrote (Docker's ``applyLayer`` keeps ``unpackedPaths`` for this, and
``RootFS.apply`` does the same).  An overlay-style driver can simply record
them (char 0/0, ``trusted.overlay.opaque=y``) in the layer's own directory.

``Layer`` wraps a blob (plain, gzip or zstd tar) and exposes ``walk()``
(entries with content streams), ``entries()`` (metadata only), ``diff_id``
(sha256 of the uncompressed tar), ``chain_id`` (sha256 of
``parent.chain_id + " " + diff_id``), ``size`` (content bytes, as Docker's
``docker history`` SIZE) and ``tar_size``/``blob_size``.

A driver's diff in accounting mode builds its layer from
:class:`~thinp.image.stamps.StampedContent` (one uint64 version stamp per
4 KiB block): an :class:`EntriesSource` generates the tar when it is read,
so a layer holding a 1 GiB file costs 2 MiB of stamps, and an apply takes
the stamps without expanding the bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import weakref
from itertools import chain
from typing import BinaryIO, Iterable, Iterator

from ..errors import ImageFormatError
from . import tarstream as ts
from .stamps import StampedContent

__all__ = [
    "Entry", "Layer", "BlobSource", "FileSource", "BytesSource", "EntriesSource", "StampedContent",
    "chain_id", "chain_ids", "write_tar", "EMPTY_TAR_DIFF_ID",
    "WHITEOUT_PREFIX", "OPAQUE_MARKER",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
META_PREFIX = ".wh..wh."   # AUFS bookkeeping (.wh..wh.plnk, ...): ignored like Docker

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCKDEV, FIFO = (
    ts.FILE, ts.DIR, ts.SYMLINK, ts.HARDLINK, ts.CHAR, ts.BLOCKDEV, ts.FIFO)
WHITEOUT, OPAQUE = "whiteout", "opaque"
KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCKDEV, FIFO, WHITEOUT, OPAQUE)


Entry = ts.Entry


def _classify(h: Entry, blob: str) -> "Entry | None":
    """Turn ``.wh.`` names into whiteout/opaque entries; None for AUFS metadata."""
    path = h.path
    if ".wh." not in path:
        return h
    if path.startswith(META_PREFIX) and path != OPAQUE_MARKER:
        # AUFS bookkeeping at the root (.wh..wh.plnk/..., .wh..wh.aufs): skipped
        # like Docker's applyLayer.  (Hardlinks into .wh..wh.plnk are not resolved.)
        return None
    parent, _, base = path.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX):
        return h
    if base == OPAQUE_MARKER:
        return Entry(parent, OPAQUE, mtime=h.mtime)
    if base.startswith(META_PREFIX):
        return None
    target = base[len(WHITEOUT_PREFIX):]
    if target in ("", ".", ".."):
        raise ImageFormatError(f"{blob}: whiteout {path!r} names no file")
    return Entry(f"{parent}/{target}" if parent else target, WHITEOUT, 0, mtime=h.mtime)


# ----------------------------------------------------------------- sources
class TempHolder:
    """Owns a temp dir for as long as any layer source refers to it."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="thinp-load-")
        self._fin = weakref.finalize(self, shutil.rmtree, self.path, True)

    def cleanup(self) -> None:
        self._fin()


class BlobSource:
    """Where a layer blob's bytes live.  ``open()`` returns a fresh reader."""

    name = "blob"

    def open(self) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError


class _Window(io.RawIOBase):
    """``length`` bytes of ``f`` starting at ``offset``."""

    def __init__(self, f, offset: int, length: int):
        self.f = f
        f.seek(offset)
        self.remaining = length

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.remaining <= 0:
            return 0
        n = min(len(b), self.remaining)
        data = self.f.read(n)
        b[:len(data)] = data
        self.remaining -= len(data)
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, n: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_CUR:
            raise io.UnsupportedOperation("only relative seeks")
        n = min(n, self.remaining)
        self.f.seek(n, io.SEEK_CUR)
        self.remaining -= n
        return 0

    def close(self) -> None:
        self.f.close()
        super().close()


class FileSource(BlobSource):
    """A file, or a byte range of one (a member of an uncompressed outer tar)."""

    def __init__(self, path: str | os.PathLike, offset: int = 0, length: int | None = None,
                 name: str | None = None, keepalive=None):
        self.path = os.fspath(path)
        self.offset = offset
        self.length = length
        self.name = name or self.path
        self._keepalive = keepalive   # e.g. the temp dir holding a decompressed archive

    def open(self) -> BinaryIO:
        f = open(self.path, "rb")
        if self.offset == 0 and self.length is None:
            return f
        length = self.length if self.length is not None else os.fstat(f.fileno()).st_size - self.offset
        return _Window(f, self.offset, length)

    def open_seekable(self) -> tuple[BinaryIO, int]:
        """``(reader, size_bytes)`` supporting relative ``seek``."""
        f = open(self.path, "rb")
        size = os.fstat(f.fileno()).st_size
        if self.offset == 0 and self.length is None:
            return f, size
        length = self.length if self.length is not None else size - self.offset
        return _Window(f, self.offset, length), length


class BytesSource(BlobSource):
    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = bytes(data)
        self.name = name

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of ``bytes`` chunks."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf, self._pos = nxt, 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n


class EntriesSource(BlobSource):
    """A layer tar made on demand from ``(Entry, content)`` pairs, never held
    whole: a driver's diff in accounting mode, whose file content is
    :class:`~thinp.image.stamps.StampedContent` (2 MiB of stamps for a 1 GiB
    file).  ``open()`` streams the same bytes :func:`write_tar` writes.

    ``parsed`` is filled by the layer's first full read (``Layer.scan``):
    each item's entry as a reader of the tar sees it (None for a member the
    reader skips), so an unverified ``Layer.walk`` yields those entries with
    the content itself -- a stamped file as a
    :class:`~thinp.image.stamps.StampReader`, whose ``content`` an apply
    takes without expanding a byte."""

    def __init__(self, items, name: str = "<entries>"):
        self.items = []
        for entry, content in items:
            if entry.kind == FILE:
                if content is None:
                    if entry.size:
                        raise ValueError(f"no content given for {entry.path!r} ({entry.size} bytes)")
                    content = b""
                elif isinstance(content, (bytearray, memoryview)):
                    content = bytes(content)
                elif not isinstance(content, (bytes, StampedContent)):
                    raise TypeError(f"{entry.path!r}: content must be bytes or StampedContent")
            self.items.append((entry, content))
        self.name = name
        self.parsed: list | None = None
        self.diff_id: str | None = None     # the DiffID the first full read computed

    def chunks(self) -> Iterator[bytes]:
        """The tar's bytes, in pieces of at most a header or a content chunk."""
        offset = 0
        for entry, content in self.items:
            ti = _tarinfo(entry)
            if entry.kind == FILE:
                ti.size = len(content)
            buf = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            yield buf
            offset += len(buf)
            if entry.kind != FILE or not ti.size:
                continue
            if isinstance(content, StampedContent):
                reader = content.reader()
                while True:
                    piece = reader.read(_HASH_CHUNK * 4)
                    if not piece:
                        break
                    yield piece
            else:
                yield content
            blocks, remainder = divmod(ti.size, tarfile.BLOCKSIZE)
            if remainder:
                yield bytes(tarfile.BLOCKSIZE - remainder)
                blocks += 1
            offset += blocks * tarfile.BLOCKSIZE
        yield bytes(2 * tarfile.BLOCKSIZE)
        offset += 2 * tarfile.BLOCKSIZE
        remainder = offset % tarfile.RECORDSIZE
        if remainder:
            yield bytes(tarfile.RECORDSIZE - remainder)

    def open(self) -> BinaryIO:
        return io.BufferedReader(_ChunkReader(self.chunks()), buffer_size=1 << 20)

    def walk_parsed(self) -> Iterator[tuple[Entry, BinaryIO | None]]:
        for entry, (item, content) in zip(self.parsed, self.items):
            if entry is None:
                continue
            stream = None
            if item.kind == FILE:
                stream = content.reader() if isinstance(content, StampedContent) else io.BytesIO(content)
            elif item.kind in (WHITEOUT, OPAQUE):     # empty regular files in the tar
                stream = io.BytesIO(b"")
            yield dataclasses.replace(entry, xattrs=dict(entry.xattrs)), stream


# ----------------------------------------------------------------- fast path
#: hash in chunks this large (hashlib drops the GIL for each)
_HASH_CHUNK = 256 << 10
#: below this many bytes the digest is computed inline, not in a thread
_THREAD_MIN_BYTES = 4 << 20


def _plain_source(source: BlobSource):
    """A ``fastscan.TarSource`` for an uncompressed tar source, or None
    (compressed, empty, not a regular file, ...: the streaming reader
    handles those)."""
    from .fastscan import TarSource
    if isinstance(source, BytesSource):
        data = source.data
        if not data or ts.sniff_compression(data[:4]) != "none":
            return None
        return TarSource.from_bytes(data)
    if type(source) is not FileSource or not hasattr(os, "pread"):   # the kernel links libc's pread
        return None
    try:
        src = TarSource.open(source.path, source.offset, source.length)
    except (OSError, ValueError):
        return None
    try:
        plain = src.n > 0 and ts.sniff_compression(src.head(4)) == "none"
    except OSError:
        plain = False
    if not plain:
        src.close()
        return None
    return src


class _ChunkHasher:
    """sha256 of a ``TarSource``, in a thread beside the scan (hashlib drops
    the GIL for each chunk).

    A file is hashed from ``read``s into one reused buffer (a mapping costs
    more in page faults than the copy, and memory stays one buffer).
    """

    def __init__(self, src):
        self.src = src
        self.n = src.n
        self.buf = src.buf
        self.path, self.offset = src.path, src.base
        self.h = hashlib.sha256()
        self._halt = False
        self._error: BaseException | None = None
        self._thread = None
        if self.n >= _THREAD_MIN_BYTES:
            self._thread = threading.Thread(target=self._run, name="thinp-layer-hash", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            n = self.n
            if self.buf is not None:
                mv = memoryview(self.buf)
                try:
                    for start in range(0, n, _HASH_CHUNK):
                        if self._halt:
                            return
                        self.h.update(mv[start:start + _HASH_CHUNK])
                finally:
                    mv.release()
                return
            # the scanner's own descriptor, at explicit offsets: the very file
            # it lists, whatever happens to the path meanwhile
            chunk = bytearray(min(_HASH_CHUNK, n))
            view = memoryview(chunk)
            fd = self.src.fd
            done = 0
            while done < n and not self._halt:
                got = os.preadv(fd, [view[:min(n - done, len(chunk))]], self.offset + done)
                if not got:
                    raise ImageFormatError(f"{self.path}: file shrank while it was read")
                self.h.update(view[:got])
                done += got
        except BaseException as e:   # surfaced by hexdigest()
            self._error = e

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self.h.hexdigest()

    def stop(self) -> None:
        self._halt = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None


# ----------------------------------------------------------------- ids
def chain_id(parent_chain_id: str | None, diff_id: str) -> str:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    if parent_chain_id is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent_chain_id} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    parent = None
    for d in diff_ids:
        parent = chain_id(parent, d)
        out.append(parent)
    return out


EMPTY_TAR_DIFF_ID = "sha256:" + hashlib.sha256(b"\0" * 1024).hexdigest()


# ----------------------------------------------------------------- layer
class Layer:
    """A layer blob plus its identities.

    ``diff_id`` may be given (from an image config) or computed by ``scan()``;
    either way ``walk(verify=True)`` checks it.  ``blob_digest`` and
    ``blob_size`` (from an OCI descriptor) are checked too when given.
    """

    def __init__(self, source: BlobSource, *, diff_id: str | None = None,
                 parent: "Layer | None" = None, blob_digest: str | None = None,
                 blob_size: int | None = None, media_type: str | None = None,
                 max_ratio: float = ts.DEFAULT_MAX_RATIO):
        self.source = source
        self._diff_id = diff_id
        self.parent = parent
        self.blob_digest = blob_digest
        self.blob_size = blob_size
        self.media_type = media_type
        self.max_ratio = max_ratio
        self.size: int | None = None        # content bytes of regular files
        self.tar_size: int | None = None    # uncompressed tar bytes
        self.nr_entries: int | None = None
        self.compression: str | None = None

    # constructors -------------------------------------------------------
    @classmethod
    def from_path(cls, path, **kw) -> "Layer":
        return cls(FileSource(path), **kw)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>", **kw) -> "Layer":
        return cls(BytesSource(data, name), **kw)

    @classmethod
    def from_entries(cls, items: Iterable[tuple[Entry, bytes | BinaryIO | None]],
                     path: str | os.PathLike | None = None, **kw) -> "Layer":
        """Build a layer from ``(Entry, content)`` pairs (a driver's diff).

        In memory, or streamed to the file ``path`` (written under a temporary
        name and renamed, so a failure leaves no partial layer).  In memory,
        items whose content is all bytes or
        :class:`~thinp.image.stamps.StampedContent` (some of it stamped) make
        an :class:`EntriesSource`: the tar is generated when read, so memory
        holds stamps, not the file bytes they stand for.
        """
        if path is None:
            items = list(items)
            if any(isinstance(c, StampedContent) for _, c in items) and all(
                    c is None or isinstance(c, (bytes, bytearray, memoryview, StampedContent))
                    for _, c in items):
                return cls(EntriesSource(items, kw.pop("name", "<entries>")), **kw).scan()
            buf = io.BytesIO()
            write_tar(items, buf)
            return cls.from_bytes(buf.getvalue(), **kw).scan()
        path = os.fspath(path)
        tmp = path + ".partial"
        try:
            with open(tmp, "wb") as f:
                write_tar(items, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return cls.from_path(path, **kw).scan()

    # identities ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.name

    @property
    def diff_id(self) -> str:
        if self._diff_id is None:
            self.scan()
        return self._diff_id

    @property
    def chain_id(self) -> str:
        return chain_id(self.parent.chain_id if self.parent is not None else None, self.diff_id)

    def with_parent(self, parent: "Layer | None") -> "Layer":
        """The same blob stacked on another parent (a different ChainID)."""
        other = Layer(self.source, diff_id=self._diff_id, parent=parent,
                      blob_digest=self.blob_digest, blob_size=self.blob_size,
                      media_type=self.media_type, max_ratio=self.max_ratio)
        other.size, other.tar_size, other.nr_entries, other.compression = (
            self.size, self.tar_size, self.nr_entries, self.compression)
        return other

    # reading -----------------------------------------------------------------
    def walk(self, verify: bool = True) -> Iterator[tuple[Entry, BinaryIO | None]]:
        """Yield ``(Entry, content)``; ``content`` is a stream for files, else None.

        A content stream is only valid until the next item.  With ``verify``
        the DiffID (and blob digest/size when known) are checked after the
        last entry: a mismatch raises ``ImageFormatError`` naming the blob.
        """
        if not verify and self._diff_id is not None and isinstance(self.source, FileSource):
            yield from self._walk_seeking()
            return
        src = self.source
        if not verify and isinstance(src, EntriesSource) and src.parsed is not None:
            yield from src.walk_parsed()
            return
        record = [] if isinstance(src, EntriesSource) and src.parsed is None else None
        raw = self.source.open()
        inp = None
        try:
            blob_hasher = hashlib.sha256() if (verify and self.blob_digest) else None
            inp, counter = ts.open_input(raw, self.name, hash_data=verify or self._diff_id is None,
                                         max_ratio=self.max_ratio, blob_hasher=blob_hasher)
            size = 0
            nr = 0
            for header, stream in ts.iter_tar(inp):
                entry = _classify(header, self.name)
                nr += 1
                if record is not None:
                    record.append(entry)
                if entry is None:
                    continue
                if entry.kind == FILE:
                    size += entry.size
                yield entry, stream
            if counter is not None:
                # drain any compressed trailer so blob digest/size cover the blob
                while counter.read(ts.CHUNK_BYTES):
                    pass
                compressed = counter.nr_bytes
                self.compression = "compressed"
            else:
                compressed = inp.nr_bytes
                self.compression = "none"
            got = "sha256:" + inp.hexdigest() if inp.hasher is not None else None
            if got is not None:
                if self._diff_id is None:
                    self._diff_id = got
                elif got != self._diff_id:
                    raise ImageFormatError(
                        f"{self.name}: DiffID mismatch: config says {self._diff_id}, "
                        f"uncompressed tar hashes to {got}")
            if verify and self.blob_size is not None and compressed != self.blob_size:
                raise ImageFormatError(
                    f"{self.name}: declared size {self.blob_size} does not match "
                    f"blob size {compressed}")
            if blob_hasher is not None:
                # a plain tar's blob digest is its DiffID
                blob_got = "sha256:" + blob_hasher.hexdigest() if counter is not None else got
                if blob_got != self.blob_digest:
                    raise ImageFormatError(
                        f"{self.name}: digest mismatch: expected {self.blob_digest}, got {blob_got}")
            self.size, self.tar_size, self.nr_entries = size, inp.nr_bytes, nr
            if self.blob_size is None:
                self.blob_size = compressed
            if record is not None and len(record) == len(src.items):
                src.parsed, src.diff_id = record, self._diff_id
        finally:
            if inp is not None:
                inp.close()
            raw.close()

    def _walk_seeking(self) -> Iterator[tuple[Entry, BinaryIO | None]]:
        """Unverified walk of an uncompressed file: seek over data like ``tar -t``."""
        raw, size_bytes = self.source.open_seekable()
        try:
            head = raw.read(4)
            if ts.sniff_compression(head) != "none":
                raw.close()
                raw = None
                # compressed: no seeking possible; the plain path (unhashed)
                inner = self.source.open()
                try:
                    reader, _ = ts.open_blob(inner, self.name, max_ratio=self.max_ratio)
                    inp = ts.HashingInput(reader, self.name, hash_data=False)
                    for header, stream in ts.iter_tar(inp):
                        entry = _classify(header, self.name)
                        if entry is not None:
                            yield entry, stream
                finally:
                    inner.close()
                return
            inp = ts.HashingInput(raw, self.name, hash_data=False, size_bytes=size_bytes)
            inp.buf, inp.nr_bytes = head, len(head)
            for header, stream in ts.iter_tar(inp):
                entry = _classify(header, self.name)
                if entry is not None:
                    yield entry, stream
        finally:
            if raw is not None:
                raw.close()

    def entries(self, verify: bool = True) -> Iterator[Entry]:
        """The entries of ``walk(verify)``, without content streams.

        An uncompressed layer in a file or in memory is listed by the fast
        header scanner (``thinp.image.fastscan``), hashing it (when the DiffID
        is to be checked or computed) in a second thread; it yields the same entries and raises the same errors as
        ``walk``.  Anything else goes through ``walk``.
        """
        src = _plain_source(self.source)
        if src is None:
            for entry, _ in self.walk(verify):
                yield entry
            return
        for batch in self._batches_fast(src, verify):
            for row in batch:
                yield Entry(*row) if row[10] is not None else Entry(*row[:10])

    def rows(self, verify: bool = True) -> Iterator[tuple]:
        """``entries()`` as tuples in ``Entry`` field order (``xattrs`` None
        for none), as ``RootFS.apply_rows`` takes them: the fast path builds
        no ``Entry`` objects at all, and hands its batches on whole."""
        return chain.from_iterable(self._row_batches(verify))

    def _row_batches(self, verify: bool) -> Iterator[Iterable[tuple]]:
        src = _plain_source(self.source)
        if src is None:
            yield ((e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname,
                    e.devmajor, e.devminor, e.xattrs) for e, _ in self.walk(verify))
            return
        yield from self._batches_fast(src, verify)

    def _batches_fast(self, src, verify: bool) -> Iterator[list[tuple]]:
        """Batches of ``rows()`` of the uncompressed tar ``src`` (a
        ``fastscan.TarSource``); the checks of ``walk`` follow the last."""
        from . import fastscan
        seek_mode = not verify and self._diff_id is not None and isinstance(self.source, FileSource)
        # as walk(): hash to check the DiffID, or to learn it
        hasher = _ChunkHasher(src) if verify or self._diff_id is None else None
        batches = fastscan.iter_batches(src, self.name, seek_mode=seek_mode)
        try:
            size = 0
            nr = 0
            name = self.name
            for batch, maybe_whiteouts in batches:
                nr += len(batch)
                if maybe_whiteouts:
                    kept = []
                    for row in batch:
                        header = Entry(*row) if row[10] is not None else Entry(*row[:10])
                        entry = _classify(header, name)
                        if entry is not None:
                            kept.append(row if entry is header else fastscan.header_row(entry))
                    batch = kept
                    size += sum(r[6] for r in batch if r[1] == FILE)
                else:
                    size += sum([r[6] for r in batch])   # non-file rows have size 0
                yield batch
            tar_size = src.n
            got = "sha256:" + hasher.hexdigest() if hasher is not None else None
            if src.changed():
                # the digest and the listing come from two reads of the file:
                # they are one file's only if nobody wrote it in between
                raise ImageFormatError(f"{self.name}: layer file changed while it was read")
        finally:
            batches.close()
            if hasher is not None:
                hasher.stop()
            src.close()
        self.compression = "none"
        if got is not None:
            if self._diff_id is None:
                self._diff_id = got
            elif got != self._diff_id:
                raise ImageFormatError(
                    f"{self.name}: DiffID mismatch: config says {self._diff_id}, "
                    f"uncompressed tar hashes to {got}")
        if verify and self.blob_size is not None and tar_size != self.blob_size:
            raise ImageFormatError(
                f"{self.name}: declared size {self.blob_size} does not match "
                f"blob size {tar_size}")
        if verify and self.blob_digest and got != self.blob_digest:
            raise ImageFormatError(
                f"{self.name}: digest mismatch: expected {self.blob_digest}, got {got}")
        self.size, self.tar_size, self.nr_entries = size, tar_size, nr
        if self.blob_size is None:
            self.blob_size = tar_size

    def scan(self) -> "Layer":
        """Read the whole blob once: verify it and fill in the sizes.  A tar
        this process generated (:class:`EntriesSource`) and already read
        whole is not read again: its bytes cannot have changed."""
        src = self.source
        if (isinstance(src, EntriesSource) and src.parsed is not None and src.diff_id == self._diff_id
                and self.size is not None):
            return self
        for _ in self.walk(verify=True):
            pass
        return self

    def open_uncompressed(self) -> BinaryIO:
        """A reader of the uncompressed tar bytes (for ``save``/``export``)."""
        raw = self.source.open()
        reader, _ = ts.open_blob(raw, self.name, max_ratio=self.max_ratio)
        return reader

    def read_file(self, path: str) -> bytes:
        """Content of the regular file ``path`` in this layer (last one wins)."""
        found = None
        for e, stream in self.walk(verify=False):
            if e.path == path and e.kind == FILE:
                found = stream.read()
        if found is None:
            raise KeyError(path)
        return found

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, diff_id={self._diff_id!r})"


# ----------------------------------------------------------------- writing
def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    if entry.kind == WHITEOUT:
        # an empty regular file, mode 000 (the kernel's whiteout is a char
        # 0/0 of mode 000; moby's ExportChanges writes no mode either)
        parent, _, base = entry.path.rpartition("/")
        ti = tarfile.TarInfo((parent + "/" if parent else "") + WHITEOUT_PREFIX + base)
        ti.type, ti.mode = tarfile.REGTYPE, 0
    elif entry.kind == OPAQUE:
        ti = tarfile.TarInfo((entry.path + "/" if entry.path else "") + OPAQUE_MARKER)
        ti.type, ti.mode = tarfile.REGTYPE, 0o644
    else:
        name = entry.path or "."
        ti = tarfile.TarInfo(name + "/" if entry.kind == DIR and name != "." else name)
        ti.type = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
                   HARDLINK: tarfile.LNKTYPE, CHAR: tarfile.CHRTYPE,
                   BLOCKDEV: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}[entry.kind]
        ti.mode = entry.mode & 0o7777
        ti.uid, ti.gid = entry.uid, entry.gid
        ti.linkname = entry.linkname
        ti.devmajor, ti.devminor = entry.devmajor, entry.devminor
        ti.size = entry.size if entry.kind == FILE else 0
        if entry.xattrs:
            ti.pax_headers = {
                "SCHILY.xattr." + k: (v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v)
                for k, v in entry.xattrs.items()}
    ti.mtime = entry.mtime
    ti.uname = ti.gname = ""
    return ti


def write_tar(items: Iterable[tuple[Entry, bytes | BinaryIO | None]], out: BinaryIO) -> None:
    """Write ``(Entry, content)`` pairs as a PAX tar to ``out`` (not closed).

    ``content`` is bytes, :class:`~thinp.image.stamps.StampedContent`
    (expanded as it is written) or a readable stream for files
    (``entry.size`` bytes are copied), ``None`` otherwise.  Whiteouts and opaque markers are
    written in their ``.wh.`` form.
    """
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry, content in items:
            ti = _tarinfo(entry)
            if entry.kind == FILE:
                if isinstance(content, (bytes, bytearray, memoryview)):
                    ti.size = len(content)
                    content = io.BytesIO(content)
                elif isinstance(content, StampedContent):
                    ti.size = content.size
                    content = content.reader()
                elif content is None:
                    if entry.size:
                        raise ValueError(f"no content given for {entry.path!r} ({entry.size} bytes)")
                    content = io.BytesIO(b"")
                tf.addfile(ti, content)
            else:
                tf.addfile(ti)

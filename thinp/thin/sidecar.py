"""The pool directory's sidecar, ``pool.json``: what dm-thin's metadata does
not hold (thin sizes, table-line options, payload or accounting mode, the
commit interval), tied to one commit of the metadata as LVM ties its VG
metadata to the pool's transaction id.

Layout (version 2).  The file is two slots of ``slot_size`` bytes each
(a power of two, at least 4096), at offsets 0 and ``slot_size``.  A slot
holds one JSON object, space-padded, ending in a newline::

    {"crc32": "1a2b3c4d",
    "commit": [..], "devices": {..}, "seq": 7, "transaction_id": 3, ...}

``crc32`` is zlib's crc32 of the bytes after its own field up to the
object's closing brace, so a slot torn by a crash or a power cut fails its
check and is ignored.  ``seq`` grows by one with each slot written; the
newest valid slot is the sidecar, the other one its ``previous``.

A commit writes its sidecar in place into the slot that does not hold the
last commit's, before the superblock (as LVM writes its VG metadata with
the pending change before it messages the kernel): if the superblock never
makes it, the other slot still belongs to the metadata's commit, and the
open picks the slot whose tie matches the superblock.  Its flush (sync
on) runs behind (:class:`~thinp.pdata.block.FlushBehind`), alongside the
metadata's own pre-superblock flush (:meth:`SidecarFile.write` returns the
wait).  Only a sidecar that outgrows its slot is written whole again (a
temporary file, fsync, rename, directory fsync), with both slots.

A version 1 sidecar (one JSON object, written by earlier thinp, by
``thinp convert`` or by hand) is still read; the next commit rewrites it
in slots.
"""
from __future__ import annotations

import json
import os
import zlib

from .. import errors
from ..pdata.block import FlushBehind

SIDECAR = "pool.json"
SIDECAR_VERSION = 1
#: the slot layout's version (a version 1 file is one JSON object)
SLOTS_VERSION = 2
MIN_SLOT = 4096
_PREFIX = b'{"crc32": "'
_PREFIX_LEN = len(_PREFIX) + 8 + 2  # the prefix, eight hex digits, '",'


def sidecar_text(side: dict) -> str:
    """The sidecar as JSON, one top-level key a line in key order: json's
    C encoder does each value (``indent`` would take the pure-Python one,
    0.24 ms of CPU against 0.07 for a sidecar of 200 thins, a fifth of a
    ``create_snap`` commit's).  Plain keys and the scalar values most keys
    hold are spelled here, as json spells them, without a call into json
    each (two calls a key were 30 a commit)."""
    return "{\n" + ",\n".join(f"{_key(k)}: {_value(side[k])}" for k in sorted(side)) + "\n}\n"


def _key(k) -> str:
    if type(k) is str and k.isascii() and k.isidentifier():
        return f'"{k}"'  # letters, digits and _ only: nothing json would escape
    return json.dumps(k)


def _value(v) -> str:
    t = type(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    return json.dumps(v, sort_keys=True)


def encode_slot(side: dict) -> bytes:
    """One slot's bytes, unpadded: the crc field, then the object."""
    body = sidecar_text({k: v for k, v in side.items() if k != "previous"}).encode()[1:].rstrip()
    return _PREFIX + b"%08x" % zlib.crc32(body) + b'",' + body + b"\n"


def decode_slot(raw: bytes) -> dict | None:
    """A slot's object, or None when the slot is empty or fails its crc."""
    if not raw.startswith(_PREFIX):
        return None
    body = raw[_PREFIX_LEN:].rstrip()
    try:
        crc = int(raw[len(_PREFIX):len(_PREFIX) + 8], 16)
    except ValueError:
        return None
    if raw[len(_PREFIX) + 8:_PREFIX_LEN] != b'",' or zlib.crc32(body) != crc:
        return None
    try:
        side = json.loads(raw[:_PREFIX_LEN] + body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(side, dict) or not isinstance(side.get("devices", {}), dict):
        return None
    side.pop("crc32", None)
    return side


def slot_size_for(nbytes: int) -> int:
    size = MIN_SLOT
    while size < nbytes + 1:
        size *= 2
    return size


def read_slots(pool_dir: str) -> tuple[list, int] | None:
    """``([slot 0, slot 1], slot_size)`` of a slotted sidecar (a slot is a
    dict, or None when torn or empty); ``([side], 0)`` for a version 1
    file; None when there is none."""
    side_path = os.path.join(pool_dir, SIDECAR)
    try:
        with open(side_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    if raw.startswith(_PREFIX):
        half = len(raw) // 2
        if half < MIN_SLOT or len(raw) != 2 * half:
            slots = [decode_slot(raw), None]
        else:
            slots = [decode_slot(raw[:half]), decode_slot(raw[half:])]
        if slots[0] is None and slots[1] is None:
            raise errors.MetadataCorruptError(f"{side_path}: neither slot of the sidecar passes its checksum")
        return slots, (half if len(raw) == 2 * half else 0)
    try:
        side = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.MetadataCorruptError(f"{side_path}: not JSON ({e})") from None
    if not isinstance(side, dict) or not isinstance(side.get("devices", {}), dict):
        raise errors.MetadataCorruptError(f"{side_path}: not a thinp pool sidecar")
    return [side], 0


def read_sidecar(pool_dir: str) -> dict | None:
    """The pool directory's sidecar (its newest valid slot, with the other
    slot as ``previous``), or None when it has none."""
    got = read_slots(pool_dir)
    if got is None:
        return None
    slots = [s for s in got[0] if s is not None]
    if len(slots) == 1:
        return slots[0]
    new, old = sorted(slots, key=lambda s: int(s.get("seq", 0)), reverse=True)
    return {**new, "previous": old}


def _fsync_dir(pool_dir: str) -> None:
    fd = os.open(pool_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sidecar(pool_dir: str, side: dict, sync: bool = False) -> None:
    """Replace the sidecar whole, atomically (a temporary file, renamed):
    ``side`` in one slot, its ``previous`` (if any) in the other.  ``sync``
    makes it durable before returning (the file's fsync, then the
    directory's for the rename)."""
    cur = {k: v for k, v in side.items() if k != "previous"}
    prev = side.get("previous")
    seq = int(cur.get("seq", 1))
    cur["seq"] = seq
    a = encode_slot(cur)
    b = encode_slot({**prev, "seq": seq - 1}) if prev else b""
    _write_whole(pool_dir, a, b, sync)


def _write_whole(pool_dir: str, slot0: bytes, slot1: bytes, sync: bool) -> int:
    size = slot_size_for(max(len(slot0), len(slot1)))
    p = os.path.join(pool_dir, SIDECAR)
    tmp = f"{p}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(slot0.ljust(size - 1) + b"\n" + (slot1.ljust(size - 1) + b"\n" if slot1 else b" " * (size - 1) + b"\n"))
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, p)
    if sync:
        _fsync_dir(pool_dir)
    return size


def sidecar_disagreement(side: dict, trans_id: int, dev_ids) -> str | None:
    """What differs between a sidecar and the metadata it should belong
    to (transaction id, device ids), or None when they agree."""
    have = {int(k) for k in side.get("devices", {})}
    want = set(int(d) for d in dev_ids)
    diff = []
    if side.get("transaction_id") != trans_id:
        diff.append(f"transaction id {side.get('transaction_id')} in {SIDECAR}, {trans_id} in the metadata")
    if have != want:
        diff.append(f"devices {sorted(have)} in {SIDECAR}, {sorted(want)} in the metadata")
    return "; ".join(diff) or None


class SidecarFile:
    """The sidecar as one pool keeps writing it: which slot holds the last
    commit's (``live``), what it holds, and the next ``seq``."""

    def __init__(self, pool_dir: str, live_side: dict, live: int, slot_size: int, seq: int):
        self.pool_dir = pool_dir
        self.live_side = {k: v for k, v in live_side.items() if k != "previous"}
        self.live = live
        self.slot_size = slot_size
        self.seq = seq
        self._fd = -1
        #: the slot's fdatasync behind (:meth:`write`'s wait)
        self._flush = FlushBehind()
        self._pending: int | None = None
        #: flushes issued (a test and benchmark figure): (in place, whole)
        self.nr_writes = [0, 0]

    @classmethod
    def open(cls, pool_dir: str, settled: dict) -> "SidecarFile":
        """The sidecar file of a pool whose last commit's sidecar is
        ``settled`` (as the open chose it): the slot holding it is live,
        the other one takes the next commit's.  A version 1 file, or one
        whose slots do not hold ``settled``, is rewritten whole at the
        next write."""
        got = read_slots(pool_dir)
        live, size, seq = 0, 0, int(settled.get("seq", 0))
        if got is not None:
            slots, sz = got
            seqs = [int(s.get("seq", 0)) for s in slots if s is not None]
            seq = max(seqs + [seq])
            key = ("commit", "transaction_id", "devices")
            match = [i for i, s in enumerate(slots)
                     if sz and s is not None and all(s.get(k) == settled.get(k) for k in key)]
            if match:
                # (both match when a commit changed only an option: the newer)
                live, size = max(match, key=lambda i: int(slots[i].get("seq", 0))), sz
        return cls(pool_dir, settled, live, size, seq)

    def _open_fd(self) -> int:
        if self._fd < 0:
            self._fd = os.open(os.path.join(self.pool_dir, SIDECAR), os.O_WRONLY)
        return self._fd

    def close(self) -> None:
        try:
            self._flush.close()  # (OSError when the slot's flush failed, after the fd is closed)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def write(self, side: dict, sync: bool):
        """Write the next commit's sidecar, before its superblock.  Returns
        None, or (with ``sync``) a wait to call before the superblock goes
        out: the slot's fdatasync runs behind meanwhile
        (:class:`~thinp.pdata.block.FlushBehind`, as the metadata's
        superblock flush does)."""
        body = encode_slot({**side, "seq": self.seq + 1})
        if self.slot_size and len(body) < self.slot_size:
            target = 1 - self.live
            fd = self._open_fd()
            off, size = target * self.slot_size, self.slot_size
            os.pwrite(fd, body.ljust(size - 1) + b"\n", off)
            self._pending = target
            self.nr_writes[0] += 1
            if not sync:
                return None
            # (no hand-over: the commit blocks at once, in its own barrier)
            self._flush.start(fd, handoff=False)
            return self._flush.wait
        # first write after a version 1 file, or outgrown: both slots, whole
        old = encode_slot({**self.live_side, "seq": self.seq})
        self.close()
        self.slot_size = _write_whole(self.pool_dir, old, body, sync)
        self.live, self._pending = 0, 1
        self.nr_writes[1] += 1
        return None

    def committed(self, side: dict) -> None:
        """The superblock the last write went with is out: its slot is live."""
        if self._pending is not None:
            self.live, self._pending = self._pending, None
            self.seq += 1
        self.live_side = {k: v for k, v in side.items() if k != "previous"}

    def aborted(self) -> None:
        """The commit failed before its superblock: the live slot stays."""
        self._pending = None

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

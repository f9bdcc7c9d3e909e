"""The file layer: ext4- and xfs-like filesystems on any block device.

``mkfs(device, "ext4" | "xfs", **options)`` formats ``device`` (anything with
the :class:`~thinp.blockdev.BlockDevice` protocol) the way mke2fs 1.47 /
mkfs.xfs 6.1 do, and returns the mounted :class:`Filesystem`.

Options are mkfs's own:

* ext4: ``lazy_itable_init`` (default True), ``lazy_journal_init`` (False),
  ``nodiscard`` (False), ``inode_ratio`` (16384), ``journal_size`` (bytes or
  a size string; default by fs size);
* xfs: ``agcount`` (default 4), ``nodiscard``.

and the mount's: ``discard`` (pass frees down as they commit), ``journal``
(ext4 only; False is a journal-less ext4), ``seed`` (the Orlov spreader's
random start, fixed so runs repeat).
"""
from __future__ import annotations

from .core import Filesystem, StatResult
from .ext4 import Ext4, Ext4Geometry
from .xfs import Xfs

__all__ = ["mkfs", "Filesystem", "Ext4", "Xfs", "Ext4Geometry", "StatResult", "FS_TYPES"]

FS_TYPES = {"ext4": Ext4, "xfs": Xfs}


def mkfs(device, fstype: str = "ext4", **options) -> Filesystem:
    """Format ``device`` with ``fstype`` and return it mounted."""
    try:
        cls = FS_TYPES[fstype]
    except KeyError:
        raise ValueError(f"fstype {fstype!r} is not one of {sorted(FS_TYPES)}") from None
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "device"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"{fstype} mkfs does not take option(s) {bad}; it takes {sorted(allowed)}")
    return cls(device, **options)

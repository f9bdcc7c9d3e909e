"""A thin pool whose ``metadata`` file is a dm-thin metadata device image.

:class:`DmPool` runs dm-thin's block rules (provision on first write, break
sharing when the block predates the device's last snapshot, unmap whole
blocks on discard) straight on :class:`~thinp.thin.pool_metadata.PoolMetadata`,
eagerly and in request order, so the metadata file is always what the
kernel would have written, and the real tools read it.  It keeps counts,
not bytes (accounting mode: the ``data`` file stays sparse).

What dm-thin's metadata does not hold lives in a sidecar, ``pool.json`` --
the thin devices' sizes and the table-line options -- as LVM keeps them in
its VG metadata.  The sidecar records the transaction id and the device
ids of the commit it belongs to; an open that finds them disagreeing with
the superblock refuses with :class:`~thinp.errors.TransactionIdMismatchError`
saying what differs, and ``DmPool.open(path, reconcile=True)`` adopts the
metadata's view (sizes of devices the sidecar lacks come from their
highest mapped block).

This is the write path the issue asks of :class:`~thinp.thin.pool.ThinPool`,
in Python: correct but slow (thousands of mappings a second).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from .. import errors
from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from ..units import check_block_size, parse_size
from .dm_metadata import DmMetadata
from .metadata_size import metadata_size as default_metadata_size
from .pool_metadata import MAX_METADATA_BLOCKS, PoolMetadata

from .sidecar import (  # noqa: F401 - the sidecar's names, as callers import them from here
    SIDECAR,
    SIDECAR_VERSION,
    read_sidecar,
    sidecar_disagreement,
    sidecar_text,
    write_sidecar,
)


class DmPool:
    """A pool directory: ``metadata`` (a dm image), ``data`` (sparse) and
    ``pool.json``."""

    def __init__(self, path: str, md: PoolMetadata, side: dict):
        self.path = path
        self.md = md
        self.side = side

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path, data_size, block_size="64KiB", metadata_size=None, *, max_thins: int = 1000,
               split: str = "current", low_water_mark: int = 0, error_if_no_space: bool = True) -> "DmPool":
        bs = check_block_size(block_size)
        nr_data = parse_size(data_size, what="data_size") // bs
        if nr_data < 1:
            raise ValueError(f"data_size {data_size!r} is smaller than one block")
        msize = (default_metadata_size(nr_data * bs, bs, max_thins) if metadata_size is None
                 else parse_size(metadata_size, what="metadata_size"))
        nr_meta = min(msize // METADATA_BLOCK_SIZE, MAX_METADATA_BLOCKS)
        path = os.fspath(path)
        if os.path.exists(os.path.join(path, "metadata")):
            raise errors.DeviceExistsError(f"{path}: a pool already exists here")
        made = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        try:
            with open(os.path.join(path, "data"), "xb") as f:
                f.truncate(nr_data * bs)
            md = PoolMetadata.format(os.path.join(path, "metadata"), nr_metadata_blocks=nr_meta,
                                     nr_data_blocks=nr_data, data_block_sectors=bs // SECTOR_SIZE, split=split)
        except BaseException:
            for name in ("data", "metadata"):
                if os.path.exists(os.path.join(path, name)):
                    os.unlink(os.path.join(path, name))
            if made:
                shutil.rmtree(path, ignore_errors=True)
            raise
        side = {"version": SIDECAR_VERSION, "transaction_id": 0, "devices": {}, "split": split,
                "low_water_mark": low_water_mark, "error_if_no_space": error_if_no_space}
        pool = cls(path, md, side)
        pool._write_sidecar()
        return pool

    @classmethod
    def import_image(cls, path, image, data_size=None, sizes: dict | None = None) -> "DmPool":
        """A new pool directory around a copy of the metadata image
        ``image`` (e.g. an LVM ``_tmeta`` copy).  Thin sizes are ``sizes``
        (dev_id -> bytes) or each device's highest mapped block."""
        path = os.fspath(path)
        if os.path.exists(os.path.join(path, "metadata")):
            raise errors.DeviceExistsError(f"{path}: a pool already exists here")
        with DmMetadata.open(image) as src:
            res = src.check()
            if res.problems:
                raise errors.MetadataCorruptError(f"metadata corrupt: {image}: {res.problems[0]}")
            bs = src.sb.data_block_size * SECTOR_SIZE
            nr_data = src.sb.nr_data_blocks
        want = nr_data * bs if data_size is None else parse_size(data_size, what="data_size")
        if want < nr_data * bs:
            raise ValueError(f"data_size {want} bytes is smaller than the image's {nr_data} blocks of {bs} bytes")
        os.makedirs(path, exist_ok=True)
        shutil.copyfile(image, os.path.join(path, "metadata"))
        with open(os.path.join(path, "data"), "wb") as f:
            f.truncate(want)
        md = PoolMetadata.open(os.path.join(path, "metadata"))
        side = {"version": SIDECAR_VERSION, "transaction_id": md.sb.trans_id, "devices": {}, "split": "current",
                "low_water_mark": 0, "error_if_no_space": True}
        pool = cls(path, md, side)
        pool._adopt_devices(sizes or {})
        if want // bs > nr_data:
            md.resize_data(want // bs)
            md.commit()
        pool._write_sidecar()
        return pool

    @classmethod
    def open(cls, path, reconcile: bool = False) -> "DmPool":
        path = os.fspath(path)
        side = read_sidecar(path)
        if side is None:
            raise FileNotFoundError(f"{path}: no {SIDECAR} (is this a dm-format pool directory?)")
        md = PoolMetadata.open(os.path.join(path, "metadata"), split=side.get("split", "current"))
        pool = cls(path, md, side)
        trans = md.sb.trans_id
        diff = sidecar_disagreement(side, trans, md.devices)
        if diff:
            if not reconcile:
                md.close(commit=False)
                raise errors.TransactionIdMismatchError(
                    f"{path}: the sidecar does not belong to this metadata ({diff}); "
                    "open with reconcile=True to adopt the metadata's view")
            pool._adopt_devices({})
            pool.side["transaction_id"] = trans
            pool._write_sidecar()
        return pool

    def _adopt_devices(self, sizes: dict) -> None:
        bs = self.block_size
        devs = {}
        for dev in sorted(self.md.devices):
            if dev in sizes:
                devs[str(dev)] = parse_size(sizes[dev], what=f"size of device {dev}") // SECTOR_SIZE
            elif str(dev) in self.side.get("devices", {}):
                devs[str(dev)] = self.side["devices"][str(dev)]
            else:
                devs[str(dev)] = (self._highest(dev) + 1) * bs // SECTOR_SIZE
        self.side["devices"] = devs

    def _highest(self, dev: int) -> int:
        from ..pdata.mapping_index import device_mappings

        k, _ = device_mappings(self.md.bm, self.md.subtree_root(dev))
        return int(k[-1]) if len(k) else 0

    def _write_sidecar(self) -> None:
        self.side["transaction_id"] = self.md.sb.trans_id
        # the commit this sidecar belongs to, as ThinPool ties its own
        self.side["commit"] = [int(self.md.sb.data_mapping_root), int(self.md.sb.device_details_root)]
        write_sidecar(self.path, self.side)

    def commit(self) -> None:
        self.md.commit()
        self._write_sidecar()

    def close(self) -> None:
        if self.md.bm.mm is not None:
            self.commit()
            self.md.close(commit=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.md.close(commit=False)

    # ------------------------------------------------------------ devices
    @property
    def block_size(self) -> int:
        return self.md.sb.data_block_size * SECTOR_SIZE

    def size(self, dev: int) -> int:
        try:
            return self.side["devices"][str(dev)] * SECTOR_SIZE
        except KeyError:
            raise errors.DeviceNotFoundError(f"thin device {dev} does not exist") from None

    def create_thin(self, dev: int, size) -> None:
        nbytes = parse_size(size, what="size")
        self.md.create_thin(dev)
        self.side["devices"][str(dev)] = -(-nbytes // SECTOR_SIZE)

    def create_snap(self, dev: int, origin: int) -> None:
        osize = self.size(origin)
        self.md.create_snap(dev, origin)
        self.side["devices"][str(dev)] = osize // SECTOR_SIZE

    def delete(self, dev: int) -> None:
        self.md.delete(dev)
        self.side["devices"].pop(str(dev), None)

    def set_transaction_id(self, old: int, new: int) -> None:
        self.md.set_transaction_id(old, new)

    def reserve_metadata_snap(self) -> None:
        self.md.reserve_metadata_snap()
        self._write_sidecar()

    def release_metadata_snap(self) -> None:
        self.md.release_metadata_snap()

    # ------------------------------------------------------------ I/O
    def _blocks(self, dev: int, offset: int, length: int) -> tuple[int, int]:
        size = self.size(dev)
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(f"{length} bytes at offset {offset} run past the end of thin device {dev} ({size} bytes)")
        bs = self.block_size
        return offset // bs, (offset + length + bs - 1) // bs

    def write(self, dev: int, offset: int, length: int) -> int:
        """dm-thin's write path for each block of the range; returns the
        number of blocks that needed a new data block."""
        b0, b1 = self._blocks(dev, offset, length)
        md = self.md
        if md.fast:
            return md.write_blocks(dev, np.arange(b0, b1, dtype=np.int64))
        d = md.details(dev)
        new = 0
        for vb in range(b0, b1):
            cur = md.lookup(dev, vb)
            if cur is not None and d.snapshotted_time <= cur[1]:
                continue  # mapped and not shared: data I/O only
            p = md.alloc_data()
            if p is None:
                raise errors.NoSpaceError(f"thin device {dev}: no free data block in {self.path}")
            md.insert(dev, vb, p)  # an overwrite drops the shared block's reference
            new += 1
        return new

    def discard(self, dev: int, offset: int, length: int) -> int:
        """Unmap the whole blocks inside the range; returns how many."""
        bs = self.block_size
        self._blocks(dev, offset, length)
        first, end = -(-offset // bs), (offset + length) // bs
        return sum(1 for vb in range(first, end) if self.md.remove(dev, vb))

    def status(self) -> dict:
        md = self.md
        nm = md.tm.nr_blocks
        reserve = min(4096, nm // 10)
        return {"transaction_id": md.sb.trans_id, "used_metadata_blocks": min(nm, md.nr_used_metadata_blocks + reserve),
                "total_metadata_blocks": nm, "used_data_blocks": md.data_sm.nr_blocks - md.data_sm.nr_free,
                "total_data_blocks": md.data_sm.nr_blocks, "held_root": md.sb.held_root or None}

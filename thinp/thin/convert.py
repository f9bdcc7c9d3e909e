"""``thinp convert``: a pool in thinp's own metadata layout -> a pool whose
metadata is a dm-thin image (:class:`~thinp.thin.dm_pool.DmPool`).

Every device's mappings (block and time) are inserted through dm's btree in
vblock order, devices in dev_id order; the superblock's time and
transaction id, and each device's details, are carried over; device sizes
go to the sidecar.  Devices share no metadata nodes afterwards (as after
thin_restore), so a pool with snapshots uses more metadata than the kernel
would after the same history.  The data file is copied as it is (holes
stay holes).
"""
from __future__ import annotations

import json
import os


from .. import errors
from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from .dm_pool import SIDECAR, SIDECAR_VERSION
from .pool_metadata import MAX_METADATA_BLOCKS, PoolMetadata


def _copy_sparse(src: str, dst: str, size: int) -> None:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.truncate(size)
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # no more data
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            f.seek(data_at)
            g.seek(data_at)
            left = min(hole_at, size) - data_at
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    break
                g.write(chunk)
                left -= len(chunk)
            pos = hole_at


def convert_pool(src_dir, dst_dir, *, split: str = "current", metadata_size=None) -> int:
    """Write ``dst_dir`` (new) from the thinp-format pool ``src_dir``;
    returns the number of mappings."""
    from .pool import ThinPool

    src_dir, dst_dir = os.fspath(src_dir), os.fspath(dst_dir)
    if os.path.exists(os.path.join(dst_dir, "metadata")):
        raise errors.DeviceExistsError(f"{dst_dir}: a pool already exists here")
    with ThinPool.open(src_dir, read_only=True) as pool:
        nm = pool.nr_metadata_blocks if metadata_size is None else int(metadata_size) // METADATA_BLOCK_SIZE
        nm = min(max(nm, 64), MAX_METADATA_BLOCKS)
        devs = []
        for dev_id in pool.devices():
            d = pool.device(dev_id)
            v, p, t = d.mapping()
            devs.append((dev_id, d.size, d.creation_time, d.snapshotted_time, v, p, t))
        time_, trans = pool.time, pool.transaction_id
        bs, nd, payload = pool.block_size, pool.nr_data_blocks, pool.payload
        txns = {dev_id: pool.device(dev_id).transaction_id for dev_id, *_ in devs}
    os.makedirs(dst_dir, exist_ok=True)
    made = []
    try:
        md = PoolMetadata.format(os.path.join(dst_dir, "metadata"), nr_metadata_blocks=nm, nr_data_blocks=nd,
                                 data_block_sectors=bs // SECTOR_SIZE, split=split)
        made.append("metadata")
        md.sync = False
        md.sb.time, md.sb.trans_id = time_, trans
        n = 0
        sizes = {}
        for dev_id, size, ctime, stime, v, p, t in devs:
            md.create_thin(dev_id)
            for vb, pb, tm in zip(v.tolist(), p.tolist(), t.tolist()):
                md.insert_block_time(dev_id, vb, pb, tm)
            det = md.devices[dev_id]
            det.creation_time, det.snapshotted_time, det.transaction_id = ctime, stime, txns[dev_id]
            sizes[str(dev_id)] = size // SECTOR_SIZE
            n += len(v)
        md.sync = True
        md.close()
        if payload:
            _copy_sparse(os.path.join(src_dir, "data"), os.path.join(dst_dir, "data"), nd * bs)
        else:
            with open(os.path.join(dst_dir, "data"), "wb") as f:
                f.truncate(nd * bs)
        made.append("data")
        side = {"version": SIDECAR_VERSION, "transaction_id": trans, "devices": sizes, "split": split,
                "low_water_mark": 0, "error_if_no_space": True, "payload": payload}
        with open(os.path.join(dst_dir, SIDECAR), "w") as f:
            json.dump(side, f, indent=1, sort_keys=True)
    except BaseException:
        for name in made + [SIDECAR]:
            try:
                os.unlink(os.path.join(dst_dir, name))
            except FileNotFoundError:
                pass
        raise
    return n




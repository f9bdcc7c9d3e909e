"""``thinp convert``: a pool in thinp's own metadata layout -> a pool whose
metadata is a dm-thin image, as :class:`~thinp.thin.pool.ThinPool` (and
:class:`~thinp.thin.dm_pool.DmPool`) open.

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

import numpy as np

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
    from . import _kernels as TK
    from .metadata import (OPT_ERROR_IF_NO_SPACE, OPT_IGNORE_DISCARD, OPT_PASSDOWN, OPT_PAYLOAD, OPT_SYNC,
                           OPT_ZERO, Metadata)

    src_dir, dst_dir = os.fspath(src_dir), os.fspath(dst_dir)
    if os.path.exists(os.path.join(dst_dir, "metadata")):
        raise errors.DeviceExistsError(f"{dst_dir}: a pool already exists here")
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"{src_dir}: no such pool directory")
    old = Metadata.open(os.path.join(src_dir, "metadata"), read_only=True, check_trees=True)
    try:
        sb, dv = old.sb, old.dv
        nm = sb.nr_metadata_blocks if metadata_size is None else int(metadata_size) // METADATA_BLOCK_SIZE
        nm = min(max(nm, 64), MAX_METADATA_BLOCKS)
        devs = []
        txns = {}
        for dev_id in sorted(old.slot_of):
            s = old.slot_of[dev_id]
            n = int(dv.mapped[s])
            v = np.empty(n, dtype=np.int64)
            p = np.empty(n, dtype=np.int64)
            t = np.empty(n, dtype=np.int64)
            got = TK.collect_mappings(old.meta, int(dv.root[s]), int(dv.levels[s]), v, p, t)
            devs.append((dev_id, int(dv.size_sectors[s]) * SECTOR_SIZE, int(dv.create_time[s]),
                         int(dv.snap_time[s]), v[:got], p[:got], t[:got]))
            txns[dev_id] = int(dv.txn[s])
        time_, trans = int(old.sp.scal[0]), sb.transaction_id
        bs, nd, opts = sb.data_block_size, sb.nr_data_blocks, sb.options
        payload = bool(opts & OPT_PAYLOAD)
        extra = {"zero_new_blocks": bool(opts & OPT_ZERO), "discard_passdown": bool(opts & OPT_PASSDOWN),
                 "ignore_discard": bool(opts & OPT_IGNORE_DISCARD), "sync": bool(opts & OPT_SYNC),
                 "error_if_no_space": bool(opts & OPT_ERROR_IF_NO_SPACE), "low_water_mark": sb.low_water_mark,
                 "commit_interval": sb.commit_interval}
    finally:
        old.close()
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
        tie = [int(md.sb.data_mapping_root), int(md.sb.device_details_root)]  # as ThinPool ties its sidecar
        side = {"version": SIDECAR_VERSION, "transaction_id": trans, "devices": sizes, "split": split,
                "payload": payload, "commit": tie, **extra}
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




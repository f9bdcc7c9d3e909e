"""``thinp dump``: a pool's metadata as thin_dump's XML.

The XML is the format of thin-provisioning-tools' ``thin_dump`` (0.9.0,
``--format xml``)::

    <superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
      <device dev_id="0" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
        <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
        <single_mapping origin_block="10" data_block="7" time="0"/>
      </device>
    </superblock>

``data_block_size`` is in 512-byte sectors; ``version`` is dm-thin's
metadata version (2), not thinp's on-disk version, so the real
``thin_restore`` accepts it.  A ``range_mapping`` is a run contiguous in both
origin and data blocks with one time; anything else is a ``single_mapping``,
as thin_dump's mapping emitter does.  Devices come in ascending ``dev_id``.

:func:`load_pool_view` is the read side the other tools share (ls, delta):
the superblock fields and every device's mappings as arrays, from the live
metadata or from the held metadata snapshot.
"""
from __future__ import annotations

import io
import os
import numpy as np

from .. import errors
from ..config import SECTOR_SIZE
from . import _kernels as TK
from .view import DeviceView, PoolView  # noqa: F401  (re-exported: ls, delta, rmap use them)
from .metadata import DEVDIR_FIRST, FREE_RECORD, RECORDS_PER_TABLE, TABLE_MAGIC, Metadata

#: dm-thin's metadata format version, written to the XML for the real tools.
DM_METADATA_VERSION = 2


def _records(m, table_blocks):
    """Device records of the given table blocks: (dev_id, root, levels,
    size_sectors, mapped, ctime, stime, txn) tuples."""
    out = []
    for b in table_blocks:
        for i in range(RECORDS_PER_TABLE):
            w0 = DEVDIR_FIRST + 8 * i
            if m[b, w0] == FREE_RECORD:
                continue
            dev_id, root, lv_crc, size_sectors, mapped, ctime, stime, txn = (int(x) for x in m[b, w0:w0 + 8])
            out.append((dev_id, root, lv_crc & 0xFFFFFFFF, size_sectors, mapped, ctime, stime, txn))
    return out


def _view_from_metadata(md: Metadata, metadata_snap: bool) -> PoolView:
    sb = md.sb
    m = md.meta
    bs = sb.data_block_size
    if metadata_snap:
        if not sb.held_root:
            raise errors.ThinpError(f"{md.path}: no metadata snapshot is held (reserve_metadata_snap)")
        tables = md.held_tables()
        for b in tables:
            if int(m[b, 0]) != TABLE_MAGIC:
                raise errors.MetadataCorruptError(f"metadata corrupt: held device table block {b}: bad magic")
        recs = _records(m, tables)
    else:
        recs = _records(m, md.table_blocks)
    devices = []
    for dev_id, root, levels, size_sectors, mapped, ctime, stime, txn in sorted(recs):
        v = np.empty(mapped, dtype=np.int64)
        p = np.empty(mapped, dtype=np.int64)
        t = np.empty(mapped, dtype=np.int64)
        got = int(TK.collect_mappings(m, root, levels, v, p, t)) if root else 0
        if got != mapped:
            raise errors.MetadataCorruptError(
                f"metadata corrupt: device {dev_id}: record says {mapped} mapped blocks, tree has {got} or more")
        nrb = -(-size_sectors * SECTOR_SIZE // bs)
        devices.append(DeviceView(dev_id, mapped, txn, ctime, stime, nrb, v, p, t))
    return PoolView(uuid=sb.uuid, time=sb.time, transaction=sb.transaction_id, flags=sb.flags,
                    data_block_size=bs, nr_data_blocks=sb.nr_data_blocks, devices=devices,
                    held_root=sb.held_root)


def dm_image_path(pool_dir) -> str | None:
    """The dm-thin metadata image ``pool_dir`` names -- the file itself (a
    ``_tmeta`` copied off an LVM pool, a kernel-written device image), or a
    pool directory whose ``metadata`` is one -- or None."""
    from .format import THIN_SUPERBLOCK_MAGIC

    p = os.fspath(pool_dir)
    if os.path.isdir(p):
        p = os.path.join(p, "metadata")
    try:
        with open(p, "rb") as f:
            head = f.read(40)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if len(head) == 40 and int.from_bytes(head[32:40], "little") == THIN_SUPERBLOCK_MAGIC:
        return p
    return None


def load_pool_view(pool_dir, metadata_snap: bool = False) -> PoolView:
    """Open ``pool_dir``'s metadata read-only (validating every tree), and
    return its superblock fields and devices.  ``metadata_snap`` reads the
    held metadata snapshot instead of the live metadata, like ``-m``.
    ``pool_dir`` may also be a dm-thin metadata image (see
    :func:`dm_image_path`)."""
    image = dm_image_path(pool_dir)
    if image is not None:
        from .dm_metadata import DmMetadata

        lock_fd = -1
        if os.path.isdir(os.fspath(pool_dir)):
            from .pool import lock_metadata

            lock_fd = lock_metadata(image, read_only=True)  # not while a writer has the pool open
        try:
            with DmMetadata.open(image) as md:
                if metadata_snap and not md.sb.held_root:
                    raise errors.ThinpError(f"{image}: no metadata snapshot is held (reserve_metadata_snap)")
                return md.pool_view(held=metadata_snap)
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)
    path = os.path.join(os.fspath(pool_dir), "metadata")
    if not os.path.isdir(os.fspath(pool_dir)):
        raise FileNotFoundError(f"{pool_dir}: no such pool directory or dm-thin metadata image")
    md = Metadata.open(path, read_only=True, check_trees=True)
    try:
        return _view_from_metadata(md, metadata_snap)
    finally:
        md.close()


def runs(v: np.ndarray, p: np.ndarray, t: np.ndarray):
    """Split sorted mappings into thin_dump's runs: (begin index, length)
    arrays, a run being contiguous in origin and data with one time."""
    n = len(v)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    brk = (np.diff(v) != 1) | (np.diff(p) != 1) | (np.diff(t) != 0)
    starts = np.concatenate([[0], np.flatnonzero(brk) + 1])
    lengths = np.diff(np.concatenate([starts, [n]]))
    return starts, lengths


def _device_xml(out, d: DeviceView) -> None:
    out.write(f'  <device dev_id="{d.dev_id}" mapped_blocks="{d.mapped_blocks}" transaction="{d.transaction}" '
              f'creation_time="{d.creation_time}" snap_time="{d.snap_time}">\n')
    starts, lengths = runs(d.vblocks, d.pblocks, d.times)
    if len(starts):
        vs = d.vblocks[starts].tolist()
        ps = d.pblocks[starts].tolist()
        ts = d.times[starts].tolist()
        ls = lengths.tolist()
        out.write("".join(
            f'    <single_mapping origin_block="{v}" data_block="{p}" time="{t}"/>\n' if n == 1 else
            f'    <range_mapping origin_begin="{v}" data_begin="{p}" length="{n}" time="{t}"/>\n'
            for v, p, n, t in zip(vs, ps, ls, ts)))
    out.write("  </device>\n")


def dump_xml(view: PoolView, out) -> None:
    """Write ``view`` as thin_dump XML to the text stream ``out``."""
    out.write(f'<superblock uuid="{view.uuid}" time="{view.time}" transaction="{view.transaction}" '
              f'flags="{view.flags}" version="{DM_METADATA_VERSION}" data_block_size="{view.data_block_sectors}" '
              f'nr_data_blocks="{view.nr_data_blocks}">\n')
    for d in view.devices:
        _device_xml(out, d)
    out.write("</superblock>\n")


def dump(pool_dir, output=None, metadata_snap: bool = False) -> str | None:
    """Dump a pool as thin_dump XML: to the file ``output``, or returned
    as a string when ``output`` is None."""
    view = load_pool_view(pool_dir, metadata_snap=metadata_snap)
    if output is None:
        buf = io.StringIO()
        dump_xml(view, buf)
        return buf.getvalue()
    output = os.fspath(output)
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{output}: directory {parent} does not exist")
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", buffering=1 << 20) as f:
            dump_xml(view, f)
        os.replace(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return None

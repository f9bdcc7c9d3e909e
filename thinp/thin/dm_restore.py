"""thin_restore into dm's format: thin_dump XML -> a dm-thin metadata image.

Each device's tree is built by inserting its mappings in order through
dm's btree (:class:`~thinp.thin.pool_metadata.PoolMetadata`), as
thin_restore does; devices share nothing.  ``split="halves"`` is the
default because thin_restore 0.9.0's btree splits full nodes into even
halves; ``"current"`` builds what a 2021+ kernel would.
"""
from __future__ import annotations

import os

from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from .metadata_size import metadata_size
from .pool_metadata import MAX_METADATA_BLOCKS, PoolMetadata
from .restore import parse


def restore_image(xml_path, out_path, *, nr_metadata_blocks: int | None = None, split: str = "halves") -> int:
    """Write the pool described by ``xml_path`` as a new metadata image;
    returns the number of mappings."""
    sb, devices = parse(xml_path)
    bs = sb["block_size"]
    nd = sb["nr_data_blocks"]
    if nr_metadata_blocks is None:
        nr_metadata_blocks = min(MAX_METADATA_BLOCKS,
                                 max(1024, metadata_size(nd * bs, bs, max(1, len(devices))) // METADATA_BLOCK_SIZE))
    md = PoolMetadata.format(out_path, nr_metadata_blocks=nr_metadata_blocks, nr_data_blocks=nd,
                             data_block_sectors=bs // SECTOR_SIZE, split=split)
    try:
        md.sync = False
        md.sb.time = sb["time"]
        md.sb.trans_id = sb["transaction"]
        n = 0
        for attrs, o, d, t in devices:
            dev = attrs["dev_id"]
            md.create_thin(dev)
            for vb, pb, tm in zip(o.tolist(), d.tolist(), t.tolist()):
                md.insert_block_time(dev, vb, pb, tm)
            det = md.devices[dev]
            det.transaction_id = attrs["transaction"]
            det.creation_time = attrs["creation_time"]
            det.snapshotted_time = attrs["snap_time"]
            n += len(o)
        md.sync = True
        md.close()
    except BaseException:
        md.close(commit=False)
        os.unlink(out_path)
        raise
    return n


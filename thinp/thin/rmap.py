"""``thinp rmap``: thin_rmap's reverse map, data blocks -> (thin, vblocks).

For every data-block region ``begin..end`` (one past the end) asked for,
each run of mappings of one device that is contiguous in both data and
virtual blocks becomes one line::

    data 6..14 -> thin(8) 15440..15448

Lines come by data block.  thin_rmap 0.9.0 orders lines that start at the
same data block in no stable order; compare them as a set.

thin_rmap walks the mapping trees as a btree walk does, visiting a node
shared between devices once: a leaf shared by a snapshot and its origin is
reported under the lowest dev_id that reaches it.  On a dm-thin metadata
image :func:`rmap` does the same (:func:`leaf_views`); on thinp's own
format it reports every device's mappings.
"""
from __future__ import annotations

import re

import numpy as np

from .dump import PoolView, load_pool_view

_REGION = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


def parse_region(text: str) -> tuple[int, int]:
    m = _REGION.match(text)
    if not m or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--region {text!r}: want BEGIN..END with BEGIN < END, e.g. 5..45")
    return int(m.group(1)), int(m.group(2))


def rmap_runs(view: PoolView, regions) -> list[tuple[int, int, int, int]]:
    """(data begin, data end, dev_id, vblock begin) runs, by data block."""
    out = []
    for d in view.devices:
        v, p = d.vblocks, d.pblocks
        for begin, end in regions:
            sel = (p >= begin) & (p < end)
            if not sel.any():
                continue
            vv, pp = v[sel], p[sel]
            brk = (np.diff(vv) != 1) | (np.diff(pp) != 1)
            starts = np.concatenate([[0], np.flatnonzero(brk) + 1])
            ends = np.concatenate([starts[1:], [len(vv)]])
            for s, e in zip(starts.tolist(), ends.tolist()):
                out.append((int(pp[s]), int(pp[s]) + (e - s), d.dev_id, int(vv[s])))
    out.sort(key=lambda r: (r[0], r[2], r[3]))
    return out


def leaf_views(image: str, metadata_snap: bool = False) -> PoolView:
    """A PoolView of a dm-thin image in which each device holds only the
    mappings of leaves first reached through it (dev_id order)."""
    from .. import errors
    from ..pdata.mapping_index import W_VERIFY, collect
    from .dm_metadata import DmMetadata
    from .format import unpack_block_time
    from .view import DeviceView

    with DmMetadata.open(image) as md:
        view = md.pool_view(held=metadata_snap, mappings=False)
        devs = md.devices(held=metadata_snap)
        try:    # one read of every node, checksums included
            begin, v, raw = collect(md.bm, np.array([d.root for d in devs], dtype=np.int64), first_reach=True,
                                    options=W_VERIFY, what=lambda j: f"device {devs[j].dev_id}")
        except errors.MetadataCorruptError:
            md.pool_view(held=metadata_snap)   # the node-by-node reading names the damage as dump does
            raise
        p, t = unpack_block_time(raw)
        v = v.astype(np.int64)
        devices = []
        for j, d in enumerate(devs):
            a, b = int(begin[j]), int(begin[j + 1])
            devices.append(DeviceView(d.dev_id, b - a, d.transaction_id, d.creation_time, d.snapshotted_time,
                                      0, v[a:b], p[a:b], t[a:b]))
        view.devices = devices
        return view


def rmap(pool_dir, regions, metadata_snap: bool = False) -> str:
    """thin_rmap's lines for ``regions`` [(begin, end)] of data blocks."""
    from .dump import dm_image_path

    image = dm_image_path(pool_dir)
    view = leaf_views(image, metadata_snap) if image else load_pool_view(pool_dir, metadata_snap=metadata_snap)
    return "".join(f"data {a}..{b} -> thin({dev}) {v}..{v + (b - a)}\n" for a, b, dev, v in rmap_runs(view, regions))

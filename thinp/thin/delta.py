"""``thinp delta``: thin_delta's XML diff of two thin devices.

Every virtual block mapped by either device is one of ``same`` (both map
the same data block), ``different`` (both map, different blocks),
``left_only`` or ``right_only``.  Runs of consecutive virtual blocks of one
kind make one element, as thin_delta 0.9.0's (non-verbose) emitter merges
them.  ``verbose`` gives its other form, with data blocks, where a range
also needs contiguous data blocks.
"""
from __future__ import annotations

import io

import numpy as np

from .. import errors
from .dump import PoolView, load_pool_view

SAME, DIFFERENT, LEFT_ONLY, RIGHT_ONLY = 0, 1, 2, 3
KIND_NAMES = ("same", "different", "left_only", "right_only")


def classify(lv, lp, rv, rp):
    """(vblock, kind, left pblock, right pblock) arrays over the union of
    mapped vblocks, sorted."""
    v = np.union1d(lv, rv)
    li = np.searchsorted(lv, v)
    ri = np.searchsorted(rv, v)
    in_l = (li < len(lv)) & (lv[np.minimum(li, len(lv) - 1)] == v) if len(lv) else np.zeros(len(v), bool)
    in_r = (ri < len(rv)) & (rv[np.minimum(ri, len(rv) - 1)] == v) if len(rv) else np.zeros(len(v), bool)
    lpb = np.where(in_l, lp[np.minimum(li, max(len(lp) - 1, 0))] if len(lp) else -1, -1)
    rpb = np.where(in_r, rp[np.minimum(ri, max(len(rp) - 1, 0))] if len(rp) else -1, -1)
    kind = np.where(in_l & in_r, np.where(lpb == rpb, SAME, DIFFERENT), np.where(in_l, LEFT_ONLY, RIGHT_ONLY))
    return v, kind, lpb, rpb


def delta_runs(v, kind, lpb, rpb, verbose: bool = False):
    """(begin index, length) of runs: consecutive vblocks of one kind (and,
    when verbose, contiguous data blocks)."""
    n = len(v)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    brk = (np.diff(v) != 1) | (np.diff(kind) != 0)
    if verbose:
        brk |= ((np.diff(lpb) != 1) & (kind[1:] != RIGHT_ONLY)) | ((np.diff(rpb) != 1) & (kind[1:] != LEFT_ONLY))
    starts = np.concatenate([[0], np.flatnonzero(brk) + 1])
    return starts, np.diff(np.concatenate([starts, [n]]))


def delta_xml(view: PoolView, snap1: int, snap2: int, verbose: bool = False, metadata_snap: bool = False) -> str:
    """thin_delta's XML.  Reading the live metadata while a metadata
    snapshot is held, thin_delta 0.9.0 names the snapshot's block in the
    superblock element (``metadata_snap="N"``); reading the snapshot
    (``metadata_snap``) it does not."""
    devs = {d.dev_id: d for d in view.devices}
    for s in (snap1, snap2):
        if s not in devs:
            raise errors.DeviceNotFoundError(f"thin device {s} does not exist")
    a, b = devs[snap1], devs[snap2]
    v, kind, lpb, rpb = classify(a.vblocks, a.pblocks, b.vblocks, b.pblocks)
    starts, lengths = delta_runs(v, kind, lpb, rpb, verbose)
    out = io.StringIO()
    out.write(f'<superblock uuid="{view.uuid}" time="{view.time}" transaction="{view.transaction}" '
              f'data_block_size="{view.data_block_sectors}" nr_data_blocks="{view.nr_data_blocks}"'
              + (f' metadata_snap="{view.held_root}"' if view.held_root and not metadata_snap else "") + ">\n")
    out.write(f'  <diff left="{snap1}" right="{snap2}">\n')
    open_kind = -1
    for st, n in zip(starts.tolist(), lengths.tolist()):
        k = int(kind[st])
        name = KIND_NAMES[k]
        if not verbose:
            out.write(f'    <{name} begin="{int(v[st])}" length="{n}"/>\n')
            continue
        if k != open_kind:  # consecutive ranges of one kind share a wrapper
            if open_kind >= 0:
                out.write(f"    </{KIND_NAMES[open_kind]}>\n")
            out.write(f"    <{name}>\n")
            open_kind = k
        if k == DIFFERENT:
            out.write(f'      <range begin="{int(v[st])}" left_data_begin="{int(lpb[st])}" '
                      f'right_data_begin="{int(rpb[st])}" length="{n}"/>\n')
        else:
            p = lpb[st] if k != RIGHT_ONLY else rpb[st]
            out.write(f'      <range begin="{int(v[st])}" data_begin="{int(p)}" length="{n}"/>\n')
    if open_kind >= 0:
        out.write(f"    </{KIND_NAMES[open_kind]}>\n")
    out.write("  </diff>\n</superblock>\n")
    return out.getvalue()


def delta(pool_dir, snap1: int, snap2: int, verbose: bool = False, metadata_snap: bool = False) -> str:
    return delta_xml(load_pool_view(pool_dir, metadata_snap=metadata_snap), snap1, snap2, verbose, metadata_snap)

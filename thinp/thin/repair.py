"""``thinp repair``: thin_repair's salvage of a damaged dm-thin metadata image.

What survives is written to a new image (the damaged one is only read):

1. The superblock gives the geometry and the roots.  A superblock that does
   not verify is replaced by what the caller states (data block size, data
   blocks) and the roots are found by scanning, as below.
2. Every tree is walked tolerantly (the one numba leaf walk with
   W_TOLERANT, :mod:`thinp.pdata.salvage`): a node that fails its checks
   (checksum and block number, header, key order within its parent's
   range) is skipped with what it would have held, and its key range is
   remembered.
3. Lost roots and lost subtrees are looked for by scanning every block for
   valid btree nodes (checksum, location, sane header), in numba.  A mapping tree's top
   level is a tree whose leaves point at 8-byte-value trees; a device's lost
   leaves are the valid, unreachable leaves whose keys fall in the range of
   one of its damaged nodes.  When the metadata space map still verifies,
   only blocks it counts as in use are adopted, so stale copies left by
   shadowing are not resurrected; otherwise the first leaf (by block
   number) for each key range wins.
4. Device details come from the details tree; a device whose details are
   lost gets mapped_blocks from its mappings and times 0.

The new image is built by :class:`~thinp.thin.pool_metadata.PoolMetadata`
(each device its own tree, as thin_restore builds them), and passes
thin_check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import errors
from ..pdata import btree, salvage
from ..pdata.block import BlockManager
from ..pdata.space_map import read_counts
from .format import DETAILS_DTYPE, DETAILS_SIZE, Superblock, read_superblock, unpack_block_time
from .pool_metadata import PoolMetadata


@dataclass
class RepairReport:
    nr_devices: int = 0
    nr_mappings: int = 0
    damaged: list = field(default_factory=list)  # what was skipped, in words
    adopted_leaves: int = 0
    roots_found_by_scan: bool = False


def _valid_node(bm: BlockManager, b: int) -> btree.Node | None:
    try:
        return btree.read_node(bm, b)
    except errors.MetadataCorruptError:
        return None


def _tolerant_walk(bm, root, value_size, who, damaged, leaf_depth=None):
    """(keys, values) of every readable leaf under ``root`` (one numba walk,
    :func:`thinp.pdata.salvage.tolerant_collect`); damaged nodes are
    recorded as (who, block, lo, hi, depth); ``leaf_depth`` (a dict)
    receives the depth of ``who``'s leaves."""
    got = salvage.tolerant_collect(bm, root, value_size)
    damaged.extend((who, b, lo, hi, depth) for b, lo, hi, depth in got.damaged)
    if leaf_depth is not None and got.leaf_depth is not None:
        leaf_depth[who] = got.leaf_depth
    return got.keys, got.values


def repair(src, dst, *, data_block_sectors: int | None = None, nr_data_blocks: int | None = None,
           split: str = "current") -> RepairReport:
    """Salvage ``src`` (a damaged dm-thin metadata image) into a new image
    ``dst`` of the same size.  ``data_block_sectors``/``nr_data_blocks`` are
    needed only when the superblock itself is lost."""
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst):
        raise errors.DeviceExistsError(f"{dst}: exists; thinp repair writes a new metadata file")
    rep = RepairReport()
    bm = BlockManager.open_file(src)
    try:
        try:
            sb = read_superblock(bm)
        except errors.MetadataCorruptError as e:
            if data_block_sectors is None or nr_data_blocks is None:
                raise errors.MetadataCorruptError(
                    f"{src}: {e}; give the data block size and the number of data blocks to rebuild it") from None
            rep.damaged.append(str(e))
            sb = Superblock(data_block_size=data_block_sectors, metadata_nr_blocks=bm.nr_blocks)
            sb.data_sm_root.nr_blocks = nr_data_blocks
        nd = nr_data_blocks or sb.nr_data_blocks
        dbs = data_block_sectors or sb.data_block_size
        try:
            mcount = read_counts(bm, sb.metadata_sm_root, metadata=True, what="metadata")[0]
        except errors.MetadataCorruptError as e:
            rep.damaged.append(f"metadata space map: {e}")
            mcount = None
        nodes = None
        damaged: list = []
        mroot, droot = sb.data_mapping_root, sb.device_details_root
        if _valid_node(bm, mroot) is None or _valid_node(bm, droot) is None:
            nodes = salvage.scan(bm)
            found_m, found_d = salvage.find_roots(bm, nodes, DETAILS_SIZE)
            if _valid_node(bm, mroot) is None:
                rep.damaged.append(f"mapping tree root {mroot}")
                mroot = found_m
            if _valid_node(bm, droot) is None:
                rep.damaged.append(f"device details root {droot}")
                droot = found_d
            rep.roots_found_by_scan = True
        details = {}
        if droot:
            k, v = _tolerant_walk(bm, droot, DETAILS_SIZE, "details", damaged)
            for key, d in zip(k.tolist(), v.reshape(-1).view(DETAILS_DTYPE) if len(k) else []):
                details[key] = d
        subtrees = {}
        if mroot:
            k, v = _tolerant_walk(bm, mroot, 8, "mapping tree", damaged)
            subtrees = dict(zip(k.tolist(), v.reshape(-1).view("<u8").tolist()))
        mappings = {}
        leaf_depth: dict = {}
        for dev, root in sorted(subtrees.items()):
            if dev >= (1 << 24):
                continue
            k, v = _tolerant_walk(bm, root, 8, dev, damaged, leaf_depth=leaf_depth)
            mappings[dev] = (k, v.reshape(-1).view("<u8") if len(k) else np.zeros(0, np.uint64))
        # lost leaves under damaged device nodes
        # (a damaged node at its tree's leaf depth was a leaf: nothing hangs below it)
        dev_damage = [(w, b, lo, hi) for w, b, lo, hi, depth in damaged
                      if isinstance(w, int) and depth < leaf_depth.get(w, 1 << 30)]
        if dev_damage:
            if nodes is None:
                nodes = salvage.scan(bm)
            other_roots = [(r, vs) for r, vs in ((mroot, 8), (droot, DETAILS_SIZE),
                                                 (sb.data_sm_root.bitmap_root, 16),
                                                 (sb.data_sm_root.ref_count_root, 4),
                                                 (sb.metadata_sm_root.ref_count_root, 4)) if r]
            refs = salvage.count_refs(bm, [(r, 8) for r in subtrees.values()] + other_roots)
            leaves = salvage.live_leaves(bm, nodes, 8)
            if mcount is not None:
                # a live leaf some damaged parent pointed at: the space
                # map counts more references than the intact trees hold
                inside = leaves < len(mcount)
                spare = np.where(inside, mcount[np.where(inside, leaves, 0)].astype(np.int64)
                                 - refs[leaves], 0)
            else:
                spare = (refs[leaves] == 0).astype(np.int64)
            leaves, spare = leaves[spare > 0], spare[spare > 0]
            first, last = salvage.key_ranges(bm, leaves)
            fits = np.zeros(len(leaves), dtype=bool)
            for _dev, _blk, lo, hi in dev_damage:
                fits |= (first >= np.uint64(lo)) & ((last < np.uint64(hi)) if hi < (1 << 64) else True)
            adopted: dict = {}
            for b, left in zip(leaves[fits].tolist(), spare[fits].tolist()):
                keys, vals = salvage.leaf_entries(bm, b)
                lo_k, hi_k = int(keys[0]), int(keys[-1])
                for dev, _blk, lo, hi in dev_damage:
                    if left <= 0:
                        break
                    if not (lo <= lo_k and hi_k < hi):
                        continue
                    k0 = mappings.get(dev, (np.zeros(0, np.uint64),))[0]
                    if any(_covers(k, lo_k, hi_k) for k in [k0] + [k for k, _ in adopted.get(dev, [])]):
                        continue  # the range is already covered (a stale copy)
                    adopted.setdefault(dev, []).append((keys, vals))
                    rep.adopted_leaves += 1
                    left -= 1
            for dev, more in adopted.items():
                k0, v0 = mappings.get(dev, (np.zeros(0, np.uint64), np.zeros(0, np.uint64)))
                k1 = np.concatenate([k0] + [k for k, _ in more])
                v1 = np.concatenate([v0] + [v for _, v in more])
                order = np.argsort(k1, kind="stable")
                mappings[dev] = (k1[order], v1[order])
        for w, b, lo, hi, _depth in damaged:
            what = f"device {w}" if isinstance(w, int) else w
            rep.damaged.append(f"{what}: node {b} (keys {lo}..{hi}) unreadable")
        nm = sb.metadata_nr_blocks or bm.nr_blocks
        trans, time_ = sb.trans_id, sb.time
    finally:
        bm.close()
    out = PoolMetadata.format(dst, nr_metadata_blocks=nm, nr_data_blocks=nd, data_block_sectors=dbs, split=split)
    try:
        out.sync = False
        out.sb.trans_id, out.sb.time = trans, time_
        for dev in sorted(set(mappings) | set(details)):
            out.create_thin(dev)
            k, v = mappings.get(dev, (np.zeros(0, np.uint64), np.zeros(0, np.uint64)))
            p, t = unpack_block_time(v) if len(v) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            ok = p < nd
            out.insert_block_times(dev, k[ok], p[ok], t[ok])
            d = out.devices[dev]
            if dev in details:
                dd = details[dev]
                d.transaction_id = int(dd["transaction_id"])
                d.creation_time = min(int(dd["creation_time"]), time_)
                d.snapshotted_time = min(int(dd["snapshotted_time"]), time_)
            rep.nr_mappings += d.mapped_blocks
        rep.nr_devices = len(out.devices)
        out.sync = True
        out.close()
    except BaseException:
        out.close(commit=False)
        os.unlink(dst)
        raise
    return rep


def _covers(keys: np.ndarray, lo: int, hi: int) -> bool:
    """Whether the sorted ``keys`` hold one in ``[lo, hi]``."""
    i = int(np.searchsorted(keys, np.uint64(lo)))
    return i < len(keys) and int(keys[i]) <= hi

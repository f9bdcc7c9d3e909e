"""``thinp repair``: thin_repair's salvage of a damaged dm-thin metadata image.

What survives is written to a new image (the damaged one is only read):

1. The superblock gives the geometry and the roots.  A superblock that does
   not verify is replaced by what the caller states (data block size, data
   blocks) and the roots are found by scanning, as below.
2. Every tree is walked tolerantly: a node that fails its checks is skipped
   with what it would have held, and its key range is remembered.
3. Lost roots and lost subtrees are looked for by scanning every block for
   valid btree nodes (checksum, location, sane header).  A mapping tree's top
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
from ..pdata import btree
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


def _tolerant_walk(bm, root, value_size, who, damaged, lo=0, hi=1 << 64, leaf_depth=None):
    """(keys, values) of every readable leaf under ``root``; damaged nodes
    are recorded as (who, block, lo, hi, depth); ``leaf_depth`` (a dict)
    receives the depth of ``who``'s leaves."""
    ks, vs = [], []
    stack = [(root, lo, hi, 0)]
    while stack:
        b, lo_, hi_, depth = stack.pop()
        n = _valid_node(bm, b) if 0 < b < bm.nr_blocks else None
        if n is None or depth > 16 or (n.is_leaf and n.value_size != value_size):
            damaged.append((who, b, lo_, hi_, depth))
            continue
        nr = n.nr_entries
        keys = n.keys()[:nr]
        if n.is_leaf:
            if leaf_depth is not None:
                leaf_depth[who] = depth
            sel = (keys >= np.uint64(lo_)) & (keys < np.uint64(min(hi_, (1 << 64) - 1)))
            ks.append(keys[sel].copy())
            vs.append(n.values_raw()[:nr][sel].copy())
            continue
        children = n.values64()[:nr]
        bounds = [int(k) for k in keys] + [hi_]
        for i in range(nr - 1, -1, -1):
            stack.append((int(children[i]), max(bounds[i], lo_), min(bounds[i + 1], hi_), depth + 1))
    if not ks:
        return np.zeros(0, np.uint64), np.zeros((0, value_size), np.uint8)
    k = np.concatenate(ks)
    v = np.concatenate(vs)
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    keep = np.concatenate([[True], k[1:] != k[:-1]]) if len(k) else np.zeros(0, bool)
    return k[keep], v[keep]


def _scan(bm: BlockManager) -> dict[int, btree.Node]:
    nodes = {}
    for b in range(1, bm.nr_blocks):
        blk = bm.blocks[b]
        if not blk[:16].any():
            continue
        n = _valid_node(bm, b)
        if n is not None:
            nodes[b] = n
    return nodes


def _find_roots(nodes: dict) -> tuple[int, int]:
    """(mapping root, details root) candidates among scanned nodes: nodes no
    other valid internal node points at; the mapping root is the one whose
    leaves point at the most 8-byte-value trees."""
    referenced = set()
    for n in nodes.values():
        if not n.is_leaf:
            referenced.update(int(c) for c in n.values64()[:n.nr_entries])
    roots = [b for b in nodes if b not in referenced]
    best_map, best_map_score, best_det, best_det_score = 0, 0, 0, 0
    for r in roots:
        n = nodes[r]
        leaf_vs = n.value_size if n.is_leaf else _leaf_value_size(nodes, r)
        if leaf_vs == DETAILS_SIZE:
            score = _count_entries(nodes, r)
            if score > best_det_score:
                best_det, best_det_score = r, score
        elif leaf_vs == 8:
            vals = _leaf_values(nodes, r)
            score = sum(1 for v in vals if v in nodes and _leaf_value_size(nodes, v) == 8
                        and v not in (r,)) if vals and all(v < (1 << 32) for v in vals) else 0
            if score > best_map_score and all(k < (1 << 24) for k in _leaf_keys(nodes, r)):
                best_map, best_map_score = r, score
    return best_map, best_det


def _descend(nodes, r):
    out, stack = [], [r]
    while stack:
        b = stack.pop()
        n = nodes.get(b)
        if n is None:
            continue
        if n.is_leaf:
            out.append(n)
        else:
            stack.extend(int(c) for c in n.values64()[:n.nr_entries])
    return out


def _leaf_value_size(nodes, r):
    leaves = _descend(nodes, r)
    return leaves[0].value_size if leaves else 0


def _count_entries(nodes, r):
    return sum(n.nr_entries for n in _descend(nodes, r))


def _leaf_values(nodes, r):
    return [int(v) for n in _descend(nodes, r) for v in n.values64()[:n.nr_entries]]


def _leaf_keys(nodes, r):
    return [int(k) for n in _descend(nodes, r) for k in n.keys()[:n.nr_entries]]


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
            nodes = _scan(bm)
            found_m, found_d = _find_roots(nodes)
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
                nodes = _scan(bm)
            other_roots = [r for r in (mroot, droot, sb.data_sm_root.bitmap_root, sb.data_sm_root.ref_count_root,
                                       sb.metadata_sm_root.ref_count_root) if r]
            refs = _count_refs(bm, list(subtrees.values()) + other_roots)
            for b, n in sorted(nodes.items()):
                if not n.is_leaf or n.value_size != 8 or n.nr_entries == 0:
                    continue
                if mcount is not None:
                    # a live leaf some damaged parent pointed at: the space
                    # map counts more references than the intact trees hold
                    spare = int(mcount[b]) - refs.get(b, 0) if b < len(mcount) else 0
                else:
                    spare = 1 if b not in refs else 0
                if spare <= 0:
                    continue
                keys = n.keys()[:n.nr_entries]
                lo_k, hi_k = int(keys[0]), int(keys[-1])
                for dev, _blk, lo, hi in dev_damage:
                    if spare <= 0:
                        break
                    if not (lo <= lo_k and hi_k < hi):
                        continue
                    k0, v0 = mappings.get(dev, (np.zeros(0, np.uint64), np.zeros(0, np.uint64)))
                    if len(k0) and np.any((k0 >= keys[0]) & (k0 <= keys[-1])):
                        continue  # the range is already covered (a stale copy)
                    k1 = np.concatenate([k0, keys.copy()])
                    v1 = np.concatenate([v0, n.values64()[:n.nr_entries].copy()])
                    order = np.argsort(k1, kind="stable")
                    mappings[dev] = (k1[order], v1[order])
                    rep.adopted_leaves += 1
                    spare -= 1
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
            for vb, pb, tm in zip(k[ok].tolist(), p[ok].tolist(), t[ok].tolist()):
                out.insert_block_time(dev, vb, pb, tm)
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


def _count_refs(bm, roots) -> dict:
    """References to each node from the readable parts of the device trees,
    a node's children counted once however many parents share it."""
    refs: dict = {}
    stack = list(roots)
    while stack:
        b = stack.pop()
        c = refs.get(b, 0)
        refs[b] = c + 1
        if c:
            continue
        n = _valid_node(bm, b) if 0 < b < bm.nr_blocks else None
        if n is not None and not n.is_leaf:
            stack.extend(int(x) for x in n.values64()[:n.nr_entries])
    return refs

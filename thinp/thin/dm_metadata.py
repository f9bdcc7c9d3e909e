"""A dm-thin metadata device image, read as the kernel and thin_check read it.

The image is dm's format byte for byte (:mod:`thinp.thin.format` for the
superblock and records, :mod:`thinp.pdata` for btrees and space maps):

* the **details tree** (one level, 24-byte values) maps dev_id to
  mapped_blocks, transaction_id, creation_time, snapshotted_time;
* the **mapping tree** (two levels, 8-byte values) maps dev_id to the root
  of that device's tree, which maps vblock to ``pblock << 24 | time``;
* the **data space map** counts, for each data block, the leaf nodes that
  map it; the **metadata space map** counts every reference to each
  metadata block (the superblock, a held snapshot, parents, device roots,
  the space maps' own blocks).

:class:`DmMetadata` opens an image and offers what the tools need: the devices
and their mappings (live or from the held metadata snapshot), a full
consistency check with thin_check's rules, and the node counts of each tree.
The device subtrees -- nearly every block of a big pool -- are read with the
one numba walk of :mod:`thinp.pdata.mapping_tree` (check, dump, ls, delta,
rmap, shapes and the pool's open all step it); the small trees (details,
top level, space-map indexes) and the node-by-node walk that names damage
(of the one damaged device tree, when the fast check finds some) use the
Python walk :func:`thinp.pdata.btree.walk`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import errors
from ..config import SECTOR_SIZE
from ..pdata import btree, memory
from ..pdata.block import BlockManager, corrupt
from ..pdata import mapping_tree as MT
from ..pdata.mapping_index import device_mappings, tree_nodes
from ..pdata.space_map import nr_bitmaps, read_counts
from . import _tool_kernels as TKT
from .view import DeviceView, PoolView
from .format import DETAILS_DTYPE, DETAILS_SIZE, FLAG_NEEDS_CHECK, Superblock, read_superblock, unpack_block_time


@dataclass
class DeviceRecord:
    dev_id: int
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int
    root: int  # mapping subtree root, 0 when the mapping tree has no entry


@dataclass
class CheckResult:
    """What :meth:`DmMetadata.check` found (``problems`` empty = clean)."""

    nr_devices: int = 0
    nr_mappings: int = 0
    nr_metadata_blocks_used: int = 0
    nr_data_blocks_used: int = 0
    problems: list = field(default_factory=list)
    #: non-fatal findings (the Rust thin_check's ``non_fatal``): data blocks
    #: counted more often than leaves map them, "leaked" -- what dm-thin's
    #: alloc_data_block leaves in the commit it makes at the metadata
    #: reserve (the new block counted, its mapping not yet inserted)
    notes: list = field(default_factory=list)
    #: those leaked data blocks, and by how much each is overcounted
    leaked_data_blocks: tuple | None = field(default=None, repr=False, compare=False)
    #: (metadata counts, metadata index, data counts, data index) as read
    #: from the space maps (:func:`thinp.pdata.space_map.read_counts`)
    space_maps: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class PendingCheck:
    """A fast check begun (:meth:`DmMetadata.check_begin`) whose device
    subtrees are still to walk, into ``fseen`` (int32[nb], references to
    each subtree node), ``under`` (int64[nb], mappings below each) and
    ``data_refs`` (uint32[nr_data_blocks], leaves mapping each block)."""

    res: CheckResult
    seen: dict
    dseen: dict
    mcount: np.ndarray
    #: per superblock (live, then held): (dev ids uint64, subtree roots int64)
    #: of the top-level leaves first reached from it (the subtrees its walk counts)
    tops: list
    #: the held superblock's devices, all of them, or None when none is held
    held_tops: tuple | None
    #: per superblock: its DeviceRecords
    devs: list
    fseen: np.ndarray
    under: np.ndarray
    data_refs: np.ndarray


@dataclass
class Shapes:
    """Nodes per tree (first visits), as the tree-shape tests compare them."""

    details: btree.TreeShape
    top: btree.TreeShape
    subtrees: btree.TreeShape


class DmMetadata:
    """One dm-thin metadata image, open for reading."""

    def __init__(self, bm: BlockManager, sb: Superblock):
        self.bm = bm
        self.sb = sb

    @classmethod
    def open(cls, path, writable: bool = False) -> "DmMetadata":
        path = os.fspath(path)
        try:
            bm = BlockManager.open_file(path, writable=writable)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such metadata file") from None
        try:
            sb = read_superblock(bm)
            if sb.metadata_nr_blocks > bm.nr_blocks:
                raise corrupt(f"superblock: {sb.metadata_nr_blocks} metadata blocks, but {path} holds "
                              f"only {bm.nr_blocks}: truncated")
        except BaseException:
            bm.close()
            raise
        return cls(bm, sb)

    def close(self) -> None:
        self.bm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- roots
    def held_superblock(self) -> Superblock:
        """The held metadata snapshot's superblock copy."""
        if not self.sb.held_root:
            raise errors.ThinpError("no metadata snapshot is held (reserve_metadata_snap)")
        return read_superblock(self.bm, self.sb.held_root, what="held metadata snapshot")

    def _roots(self, held: bool) -> tuple[int, int]:
        sb = self.held_superblock() if held else self.sb
        return sb.data_mapping_root, sb.device_details_root

    def devices(self, held: bool = False, *, seen: dict | None = None, shapes: Shapes | None = None) -> list:
        """Every device (details joined with its mapping root), by dev_id."""
        mroot, droot = self._roots(held)
        kd, vd = btree.collect(self.bm, droot, DETAILS_SIZE, who="device details tree", seen=seen,
                               shape=shapes.details if shapes else None)
        km, vm = btree.collect(self.bm, mroot, 8, who="mapping tree", seen=seen,
                               shape=shapes.top if shapes else None)
        det = vd.reshape(-1).view(DETAILS_DTYPE) if len(kd) else np.zeros(0, DETAILS_DTYPE)
        roots = dict(zip(km.tolist(), vm.reshape(-1).view("<u8").tolist()))
        only_mapping = sorted(set(roots) - set(kd.tolist()))
        if only_mapping:
            raise corrupt(f"mapping tree: device {only_mapping[0]} has mappings but no details")
        out = []
        for k, d in zip(kd.tolist(), det):
            out.append(DeviceRecord(k, int(d["mapped_blocks"]), int(d["transaction_id"]),
                                    int(d["creation_time"]), int(d["snapshotted_time"]), roots.get(k, 0)))
        return out

    def mappings(self, dev: DeviceRecord, *, seen: dict | None = None, shape=None):
        """(vblock int64, pblock int64, time int64) arrays of one device."""
        if not dev.root:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        if seen is None and shape is None:
            # the shared numba walk, checksums included; the node-by-node
            # walk below names what it finds wrong
            try:
                k, v = device_mappings(self.bm, dev.root, verify=True, what=f"device {dev.dev_id}")
            except errors.MetadataCorruptError as e:
                btree.collect(self.bm, dev.root, 8, who=f"device {dev.dev_id}")
                raise e
            p, t = unpack_block_time(v)
            return k.astype(np.int64), p, t
        k, v = btree.collect(self.bm, dev.root, 8, who=f"device {dev.dev_id}", seen=seen, shape=shape)
        p, t = unpack_block_time(v.reshape(-1).view("<u8"))
        return k.astype(np.int64), p, t

    # -------------------------------------------------------------- check
    def check(self, fast: bool = True) -> CheckResult:
        """thin_check's checks.  Structural damage (a bad node, key order,
        a pointer outside the device) raises MetadataCorruptError naming it;
        disagreeing counts are listed in ``problems``.

        The device subtrees (nearly every block of a big pool) are walked
        in one numba pass (:meth:`check_begin`, :meth:`walk_subtrees`,
        :meth:`check_end`); when it finds anything wrong the whole check
        runs again with the per-node Python walk (``fast=False``), which
        names the damage."""
        if fast:
            pc = self.check_begin()
            roots = self._subtree_roots(pc)
            w = self.subtree_walk(pc)
            r = TKT.check_subtrees(w, roots, self.sb.nr_data_blocks, pc.data_refs)
            if r == 0:
                res = self.check_end(pc)
                if res is not None:
                    return res
            else:
                self._name_damage(roots, r, w)
        return self._check_slow()

    @staticmethod
    def _subtree_roots(pc: PendingCheck) -> np.ndarray:
        return np.concatenate([r for _, r in pc.tops])

    def _name_damage(self, roots: np.ndarray, code: int, w: MT.Walk) -> None:
        """Raise what :meth:`_check_slow` would say of the damage the fast
        walk found (``code`` at block ``w.bad[0]`` of tree ``w.bad[1]``),
        walking in Python only that tree: the trees before it passed the
        same checks, and the slow walk meets them in the same order.
        Returns when that walk finds nothing (then the slow check runs)."""
        nd = self.sb.nr_data_blocks
        b = int(w.bad[0])
        if code == -100:
            p = self.bm.blocks.view(np.uint64)[b, 4 + int(self.bm.blocks.view(np.uint32)[b, 5]):]
            p = p[:int(self.bm.blocks.view(np.uint32)[b, 4])] >> np.uint64(24)
            raise corrupt(f"btree node {b}: maps data block {int(p.max())}, beyond the {nd} data blocks")

        def visit_leaf(n, _k, values):
            p = values.reshape(-1).view("<u8") >> np.uint64(24)
            if len(p) and int(p.max()) >= nd:
                raise corrupt(f"btree node {n.b}: maps data block {int(p.max())}, beyond the {nd} data blocks")

        j = int(w.bad[1])
        if 0 <= j < len(roots):
            btree.walk(self.bm, int(roots[j]), 8, visit_leaf, who="mapping subtree")

    def _space_map_blocks(self, mcount: np.ndarray):
        """Count the space maps' own blocks into ``mcount`` (the metadata
        index and bitmaps, the data index entries' bitmaps; the ref-count
        trees' nodes into the returned ``seen`` dict) and read both maps'
        counts: ``(seen, (mcounts, mindex, dcounts, dindex))``."""
        msm, dsm = self.sb.metadata_sm_root, self.sb.data_sm_root
        mcounts, mindex = read_counts(self.bm, msm, metadata=True, what="metadata")
        mcount[msm.bitmap_root] += 1
        for b, _, _ in mindex:
            mcount[b] += 1
        dseen: dict = {}
        dcounts, dindex = read_counts_seen(self.bm, dsm, dseen)
        for b, _, _ in dindex:
            mcount[b] += 1
        if msm.ref_count_root:
            btree.walk(self.bm, msm.ref_count_root, 4, lambda *a: None, seen=dseen)
        return dseen, (mcounts, mindex, dcounts, dindex)

    def _check_superblocks(self):
        """Both checks' start: a CheckResult with the superblock's own
        problem (a space map sized unlike the device), the metadata
        reference tally with the superblocks counted, and the
        ``(held, superblock)`` pairs to walk (live, then any held one)."""
        sb = self.sb
        res = CheckResult()
        nm = sb.metadata_nr_blocks
        if sb.metadata_sm_root.nr_blocks != nm:
            res.problems.append(f"metadata space map has {sb.metadata_sm_root.nr_blocks} blocks, "
                                f"superblock says {nm}")
        mcount = np.zeros(max(nm, 1), dtype=np.uint32)
        mcount[0] += 1  # the superblock
        sbs = [(False, sb)]
        if sb.held_root:
            mcount[sb.held_root] += 1
            sbs.append((True, self.held_superblock()))
        return res, mcount, sbs

    def check_begin(self) -> PendingCheck:
        """The fast check up to the device subtrees: the details and top
        level trees of the live and held superblocks, and the space maps
        (their counts read).  The subtrees' walk is the caller's, over the
        arrays of the result: :meth:`walk_subtrees`, or the pool's index
        fill, which reads each leaf once for both."""
        sb = self.sb
        res, mcount, sbs = self._check_superblocks()
        nm, nd = sb.metadata_nr_blocks, sb.nr_data_blocks
        seen: dict = {}
        tops, devs = [], []
        held_tops = None
        for held, s in sbs:
            btree.walk(self.bm, s.device_details_root, DETAILS_SIZE, lambda *a: None, seen=seen,
                       who="device details tree")
            ks, vs = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
            btree.walk(self.bm, s.data_mapping_root, 8,
                       lambda _n, k, v: (ks.append(k.copy()), vs.append(v.reshape(-1).view("<u8").copy())),
                       seen=seen, who="mapping tree")
            tops.append((np.concatenate(ks), np.concatenate(vs).astype(np.int64)))
            if held:
                # the held top level shares nodes with the live one (all of
                # them, right after reserve_metadata_snap): the counting walk
                # above skips what it saw, so ``tops[1]`` has only the devices
                # of held-only top-level leaves (the subtrees to count); the
                # index needs every held device
                k, v = device_mappings(self.bm, s.data_mapping_root, what="the held mapping tree")
                held_tops = (k, v.astype(np.int64))
            devs.append(self.devices(held))
        dseen, (mcounts, mindex, dcounts, dindex) = self._space_map_blocks(mcount)
        res.space_maps = (mcounts, mindex, dcounts, dindex)
        nb = self.bm.blocks.shape[0]
        return PendingCheck(res=res, seen=seen, dseen=dseen, mcount=mcount, tops=tops, held_tops=held_tops, devs=devs,
                            fseen=memory.zeros(nb, np.int32), under=memory.zeros(nb, np.int64),
                            data_refs=memory.zeros(nd, np.uint32))

    def subtree_walk(self, pc: PendingCheck, options: int = 0) -> MT.Walk:
        """A walk of the device subtrees counting into ``pc``'s arrays (with
        W_VERIFY added: every node it walks first is checked)."""
        return MT.new_walk(self.bm.blocks, 8, MT.W_VERIFY | options, seen=pc.fseen, under=pc.under)

    def walk_subtrees(self, pc: PendingCheck) -> bool:
        """thin_check's walk of every device subtree (live, then held) into
        ``pc``; False when it found something wrong."""
        roots = self._subtree_roots(pc)
        return TKT.check_subtrees(self.subtree_walk(pc), roots, self.sb.nr_data_blocks, pc.data_refs) == 0

    def check_end(self, pc: PendingCheck) -> CheckResult | None:
        """The check's verdict once the subtrees were walked into ``pc``;
        None when only the node-by-node check can say what is wrong."""
        sb, res = self.sb, pc.res
        nm, nd = sb.metadata_nr_blocks, sb.nr_data_blocks
        for d in pc.devs[0]:
            n = int(pc.under[d.root]) if d.root else 0
            res.nr_mappings += n
            if n != d.mapped_blocks:
                res.problems.append(f"device {d.dev_id}: mapped_blocks is {d.mapped_blocks}, its tree maps {n}")
            if d.creation_time > sb.time or d.snapshotted_time > sb.time:
                res.problems.append(f"device {d.dev_id}: times later than the pool's time {sb.time}")
        res.nr_devices = len(pc.devs[0])
        fseen, mcount = pc.fseen, pc.mcount
        if fseen[nm:].any():
            return None
        k = min(nm, len(fseen))
        mcount[:k] += fseen[:k].astype(np.uint32)
        for b, c in list(pc.seen.items()) + list(pc.dseen.items()):
            if b >= nm:
                raise corrupt(f"btree node {b} is outside the {nm}-block metadata device")
            mcount[b] += c
        mcounts, _, dcounts, _ = res.space_maps
        self._compare_counts(res, mcount, mcounts, pc.data_refs, dcounts)
        return res

    def _compare_counts(self, res, mcount, mcounts, data_refs, dcounts) -> None:
        sb = self.sb
        nm, nd = sb.metadata_nr_blocks, sb.nr_data_blocks
        bad = np.flatnonzero(mcount[:nm] != mcounts[:nm])
        if len(bad):
            b = int(bad[0])
            res.problems.append(f"metadata space map: {len(bad)} blocks have wrong counts (first: block {b} "
                                f"has count {int(mcounts[b])}, {int(mcount[b])} references found)")
        # a leak is a block counted once that no leaf maps (the block dm
        # allocates for a bio before a reserve commit that then fails):
        # non-fatal, as the Rust thin_check has it ("N data blocks have
        # leaked", only for a count of 1 where 0 is expected); any other
        # difference is fatal, as there ("Bad reference count"), and
        # thin_check 0.9.0 compares neither
        dc = dcounts[:nd].astype(np.int64)
        refs = np.asarray(data_refs).astype(np.int64)
        leak = (dc == 1) & (refs == 0)
        bad = np.flatnonzero((dc != refs) & ~leak)
        if len(bad):
            p = int(bad[0])
            res.problems.append(f"data space map: {len(bad)} blocks have wrong counts (first: block {p} "
                                f"has count {int(dcounts[p])}, {int(data_refs[p])} leaves map it)")
        leaked = np.flatnonzero(leak)
        if len(leaked):
            p = int(leaked[0])
            res.notes.append(f"data space map: {len(leaked)} blocks have leaked (first: block {p} has count "
                             f"{int(dcounts[p])}, {int(data_refs[p])} leaves map it)")
            res.leaked_data_blocks = (leaked, dc[leaked] - refs[leaked])
        # (the roots' nr_allocated are not checked: thin_restore 0.9.0 writes
        # one more than its bitmaps count, and thin_check accepts that)
        res.nr_metadata_blocks_used = int(np.count_nonzero(mcounts))
        res.nr_data_blocks_used = int(np.count_nonzero(dcounts))
        if sb.flags & FLAG_NEEDS_CHECK:
            res.problems.append("needs_check is set")

    def _check_slow(self) -> CheckResult:
        """The check with the per-node Python walk everywhere: slow, and it
        names the first damaged node."""
        sb = self.sb
        res, mcount, sbs = self._check_superblocks()
        nm, nd = sb.metadata_nr_blocks, sb.nr_data_blocks
        seen: dict = {}
        data_refs = memory.zeros(nd, np.uint32)
        for held, s in sbs:
            # reference counting: a node counts once per parent node that
            # points at it, so a shared node's children are walked once
            btree.walk(self.bm, s.device_details_root, DETAILS_SIZE, lambda *a: None, seen=seen,
                       who="device details tree")
            subtree_roots: list = []
            btree.walk(self.bm, s.data_mapping_root, 8,
                       lambda _n, _k, v: subtree_roots.extend(v.reshape(-1).view("<u8").tolist()),
                       seen=seen, who="mapping tree")

            def visit_leaf(_n, _k, values):
                p = (values.reshape(-1).view("<u8") >> np.uint64(24)).astype(np.int64)
                if len(p) and int(p.max()) >= nd:
                    raise corrupt(f"btree node {_n.b}: maps data block {int(p.max())}, beyond the {nd} data blocks")
                np.add.at(data_refs, p, 1)

            for r in subtree_roots:
                btree.walk(self.bm, r, 8, visit_leaf, seen=seen, who="mapping subtree")
            devs = self.devices(held)
            for d in devs:
                if not held:
                    n = self._count_mappings(d)
                    res.nr_mappings += n
                    if n != d.mapped_blocks:
                        res.problems.append(f"device {d.dev_id}: mapped_blocks is {d.mapped_blocks}, "
                                            f"its tree maps {n}")
                    if d.creation_time > sb.time or d.snapshotted_time > sb.time:
                        res.problems.append(f"device {d.dev_id}: times later than the pool's time {sb.time}")
            if not held:
                res.nr_devices = len(devs)
        dseen, (mcounts, mindex, dcounts, dindex) = self._space_map_blocks(mcount)
        for b, c in list(seen.items()) + list(dseen.items()):
            if b >= nm:
                raise corrupt(f"btree node {b} is outside the {nm}-block metadata device")
            mcount[b] += c
        res.space_maps = (mcounts, mindex, dcounts, dindex)
        self._compare_counts(res, mcount, mcounts, data_refs, dcounts)
        return res

    def _count_mappings(self, d: DeviceRecord) -> int:
        if not d.root:
            return 0
        n = [0]

        def visit(_n, keys, _v):
            n[0] += len(keys)

        btree.walk(self.bm, d.root, 8, visit, who=f"device {d.dev_id}")
        return n[0]

    def shapes(self) -> Shapes:
        """Leaves and internal nodes of the details tree, the mapping tree's
        top level, and all device subtrees together (shared nodes once).
        The subtrees (nearly every node of a big pool) are walked in numba;
        on damage the Python walk names it."""
        sh = Shapes(btree.TreeShape(), btree.TreeShape(), btree.TreeShape())
        seen: dict = {}
        devs = self.devices(seen=seen, shapes=sh)
        roots = np.array([d.root for d in devs if d.root], dtype=np.int64)
        try:
            nodes = tree_nodes(self.bm, roots)
        except errors.MetadataCorruptError:
            nodes = None
        if nodes is not None and not np.isin(np.array(list(seen), dtype=np.int64), nodes).any():
            m32 = self.bm.blocks.view(np.uint32)
            leaf = (m32[nodes, 1] & btree.LEAF_NODE) != 0
            sub = sh.subtrees
            sub.nr_leaves = int(np.count_nonzero(leaf))
            sub.nr_internal = len(nodes) - sub.nr_leaves
            sub.nr_entries = int(m32[nodes[leaf], 4].astype(np.int64).sum())
            sub.blocks = nodes.tolist()
            return sh
        for d in devs:
            if d.root:
                btree.walk(self.bm, d.root, 8, lambda *a: None, seen=seen, shape=sh.subtrees)
        return sh

    def metadata_counts(self) -> np.ndarray:
        return read_counts(self.bm, self.sb.metadata_sm_root, metadata=True, what="metadata")[0]

    def data_counts(self) -> np.ndarray:
        return read_counts(self.bm, self.sb.data_sm_root, metadata=False, what="data")[0]

    # -------------------------------------------------------------- views
    def pool_view(self, held: bool = False, mappings: bool = True):
        """The :class:`thinp.thin.dump.PoolView` thin_dump prints; with
        ``mappings=False`` its devices come without their mappings (not read)."""
        sb = self.held_superblock() if held else self.sb
        bs = sb.data_block_size * SECTOR_SIZE
        devices = []
        z = np.zeros(0, dtype=np.int64)
        for d in self.devices(held):
            v, p, t = self.mappings(d) if mappings else (z, z, z)
            nrb = int(v[-1]) + 1 if len(v) else 0
            devices.append(DeviceView(d.dev_id, d.mapped_blocks, d.transaction_id, d.creation_time,
                                      d.snapshotted_time, nrb, v, p, t))
        uuid = sb.uuid.rstrip(b"\0").decode("ascii", "replace")
        return PoolView(uuid=uuid, time=sb.time, transaction=sb.trans_id, flags=sb.flags,
                        data_block_size=bs, nr_data_blocks=sb.nr_data_blocks, devices=devices,
                        held_root=self.sb.held_root)


def read_counts_seen(bm: BlockManager, root, seen: dict):
    """The data space map's counts, recording its btree nodes in ``seen``."""
    btree.walk(bm, root.bitmap_root, 16, lambda *a: None, seen=seen, who="data space map index")
    if root.ref_count_root:
        btree.walk(bm, root.ref_count_root, 4, lambda *a: None, seen=seen, who="data space map ref counts")
    return read_counts(bm, root, metadata=False, what="data")


def nr_data_bitmaps(nr_blocks: int) -> int:
    return nr_bitmaps(nr_blocks)

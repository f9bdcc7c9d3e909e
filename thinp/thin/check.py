"""``thinp check``: thin_check's checks, and ``--repair``.

Checks, in thin_check's order:

1. the superblock (magic, checksum, version, sizes, pointers in range);
2. the space maps' pages and the device directory and tables (checksums,
   bounds, unique ids);
3. every mapping tree, live and held (each node's checksum against its
   parent entry, every pointer inside the metadata device, every mapping
   inside the data device, no time later than the pool's, one depth per
   node);
4. the reference counts: the metadata space map must equal the blocks
   reachable, the data space map the number of leaves mapping each block;
5. each device's ``mapped_blocks`` must equal its tree.

Problems of kind 1-3 are fatal: the trees cannot be trusted, and repair
refuses (thin_repair would salvage; thinp does not).  Problems of kind 4-5
are what ``--repair`` fixes: it rebuilds both space maps and the device
counts from the trees, clears ``needs_check`` and commits, as
``thin_check --clear-needs-check-flag`` after ``thin_repair`` would.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import errors
from .metadata import FLAG_NEEDS_CHECK, Metadata, count_mapped


@dataclass
class CheckReport:
    """What :func:`check` found.  ``ok`` means no inconsistency (a set
    ``needs_check`` flag alone is not an inconsistency)."""

    transaction_id: int = 0
    nr_devices: int = 0
    nr_mappings: int = 0
    metadata_free_blocks: int = 0
    needs_check: bool = False
    problems: list = field(default_factory=list)
    repaired: bool = False
    #: non-fatal findings (leaked data blocks), as the Rust thin_check's
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _open(path: str, writable: bool) -> Metadata:
    """Open without the tree walk that :meth:`Metadata.open` forces on
    writers, so a pool whose counts disagree can still be repaired."""
    md = Metadata()
    md.path = path
    md.read_only = not writable
    try:
        md.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no metadata file (is this a thin pool directory?)") from None
    Metadata.lock_file(md.fd, not writable, path)
    try:
        md.load(check_trees=False)
    except BaseException:
        md.close()
        raise
    return md


def check(pool_dir, repair: bool = False) -> CheckReport:
    """Check a pool's metadata; with ``repair``, fix the counts and clear
    ``needs_check``.  Raises :class:`~thinp.errors.MetadataCorruptError`
    for damage repair cannot fix (a bad superblock, table or tree)."""
    pool_dir = os.fspath(pool_dir)
    from .dump import dm_image_path

    image = dm_image_path(pool_dir)
    if image is not None:
        rep = _check_dm_image(image)
        if repair:
            if rep.problems:
                raise errors.MetadataCorruptError(
                    f"{image}: {rep.problems[0]}; salvage what it holds with 'thinp repair {image} NEW_FILE'")
            if rep.needs_check:
                _clear_needs_check(image)
                rep.needs_check = False
                rep.repaired = True
        return rep
    if not os.path.isdir(pool_dir):
        raise FileNotFoundError(f"{pool_dir}: no such pool directory or dm-thin metadata image")
    md = _open(os.path.join(pool_dir, "metadata"), writable=repair)
    try:
        return _check(md, repair)
    finally:
        md.close()


def _check(md: Metadata, repair: bool) -> CheckReport:
    sb, sp, dv = md.sb, md.sp, md.dv
    rep = CheckReport(transaction_id=sb.transaction_id, needs_check=bool(sb.flags & FLAG_NEEDS_CHECK))
    mrc_count, drc_count, nr_mappings = md.count_references()  # raises on a bad tree
    rep.nr_mappings = nr_mappings
    live = np.flatnonzero(dv.dev_id >= 0)
    rep.nr_devices = len(live)
    for name, disk, found in (("metadata", sp.mrc, mrc_count), ("data", sp.drc, drc_count)):
        bad = np.flatnonzero(disk != found)
        if len(bad):
            b = int(bad[0])
            rep.problems.append(f"{name} space map: {len(bad)} blocks have wrong counts "
                                f"(first: block {b} has {int(disk[b])}, {int(found[b])} references found)")
    wrong_mapped = []
    for s in live:
        n = count_mapped(md.meta, int(dv.root[s]), int(dv.levels[s]))
        if n != int(dv.mapped[s]):
            wrong_mapped.append((int(s), n))
            rep.problems.append(f"device {int(dv.dev_id[s])}: mapped_blocks is {int(dv.mapped[s])}, tree maps {n}")
    rep.metadata_free_blocks = int(sb.nr_metadata_blocks - np.count_nonzero(mrc_count))
    if repair and (rep.problems or rep.needs_check):
        if md.read_only:
            raise errors.ReadOnlyPoolError("repair needs the metadata open read-write")
        md.build_space(mrc_count, drc_count)
        for s, n in wrong_mapped:
            dv.mapped[s] = n
            dv.changed[s] = 1
        md.sb.flags &= ~FLAG_NEEDS_CHECK
        # rewrite every space-map page, in both this and the next commit
        md.sp.mdirty[:] = 1
        md.sp.ddirty[:] = 1
        md.mdirty_prev = np.ones_like(md.sp.mdirty)
        md.ddirty_prev = np.ones_like(md.sp.ddirty)
        md.commit()
        rep.repaired = True
        rep.needs_check = False
    return rep


def _clear_needs_check(path: str) -> None:
    """``thin_check --clear-needs-check-flag``: rewrite the superblock
    without the flag (only after a clean check)."""
    from ..pdata.block import SUPERBLOCK

    fd = os.open(path, os.O_RDWR)
    try:
        buf = np.frombuffer(bytearray(os.pread(fd, 4096, 0)), dtype=np.uint8)
        flags = int(buf[4:8].view("<u4")[0]) & ~FLAG_NEEDS_CHECK
        buf[4:8] = np.frombuffer(flags.to_bytes(4, "little"), dtype=np.uint8)
        SUPERBLOCK.prepare(buf, 0)
        os.pwrite(fd, buf.tobytes(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_dm_image(path: str) -> CheckReport:
    """thin_check's checks on a dm-thin metadata image; structural damage
    raises MetadataCorruptError naming the block."""
    from .dm_metadata import DmMetadata

    with DmMetadata.open(path) as md:
        res = md.check()
        nm = md.sb.metadata_nr_blocks
        return CheckReport(transaction_id=md.sb.trans_id, nr_devices=res.nr_devices, nr_mappings=res.nr_mappings,
                           metadata_free_blocks=nm - res.nr_metadata_blocks_used,
                           needs_check=bool(md.sb.flags & FLAG_NEEDS_CHECK),
                           problems=[p for p in res.problems if p != "needs_check is set"], notes=list(res.notes))

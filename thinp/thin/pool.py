"""ThinPool and ThinDevice: dm-thin's semantics behind a Python API.

A pool is a directory holding two sparse files, ``data`` and ``metadata``,
the layout Docker's loop-lvm used.  Every I/O path, single writes included,
runs the same numba kernels as :meth:`ThinPool.replay`.

Rules followed from dm-thin (drivers/md/dm-thin.c and its documentation):

* reads of unmapped blocks return zeros and allocate nothing;
* a first write provisions a block stamped with the pool time; a partial
  write zeroes the rest of the block when zeroing is on (counted), a write
  covering the whole block skips it;
* a write to a block with ``snapshotted_time > block time`` breaks sharing:
  a new block, and a copy of the old one unless the write covers it.  Like
  dm-thin, the test is by time, so after one side breaks sharing the other
  side copies once more (its block is exclusive by then, but its time still
  predates the snapshot);
* discard unmaps whole blocks inside the range only;
* allocation is next-fit from a cursor kept across commits; a block freed in
  a transaction is reused only after the commit;
* the low water mark fires once when free blocks fall to it and re-arms
  when space returns; like dm's table event it is delivered after the
  request that crossed it;
* with no data space left the pool is ``out_of_data_space``: a block
  needing a new data block (a write to an unmapped or shared block) fails
  with ENOSPC under ``error_if_no_space``, otherwise it is queued until
  :meth:`ThinPool.resize_data` or freed space lets it run; reads, writes
  into provisioned unshared blocks and discards still run, as dm's
  process_bio_read_only and process_discard_bio do in that mode (dm splits
  bios at block boundaries, so a request's other blocks run too);
  :meth:`ThinPool.expire_no_space_timeout` is dm's ``no_space_timeout``;
* when a new block's allocation finds free metadata down to the reserve,
  the pool commits what came before that block (dm's alloc_data_block);
  if the commit leaves it there, the pool is out of metadata space
  (PM_OUT_OF_METADATA_SPACE, ``ro`` without needs_check): each block
  needing a new mapping fails with EIO, bio by bio, the other blocks of
  the same request still run, discards do nothing, and pool messages are
  refused (EOPNOTSUPP) until :meth:`ThinPool.resize_metadata`; with
  ``skip_block_zeroing`` a provisioning write meeting that commit inserts
  its mapping at once into the now read-only metadata, which fails: the
  transaction is aborted, needs_check set, the pool ``ro`` (dm's
  schedule_zero -> process_prepared_mapping -> metadata_operation_failed);
* every request run is counted in ``nr_requests``, failed or not; those
  with a failed block also in ``nr_failed_requests``, the failed blocks in
  ``nr_enospc`` or ``nr_eio``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import re
import shutil
import uuid as _uuid
from dataclasses import dataclass, field

import numpy as np

from .. import errors
from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from ..pdata import radix as K
from ..pdata import btree as _btree
from ..pdata import mapping_tree as MT
from ..pdata import memory
from ..pdata.mapping_index import device_mappings
from ..pdata.space_map import ENTRIES_PER_BITMAP
from ..trace import DISCARD, READ, TRACE_DTYPE, WRITE
from ..units import check_block_size, format_size, parse_size
from . import _kernels as TK
from . import _mirror as MIR
from .sidecar import SIDECAR, SIDECAR_VERSION, SidecarFile, read_sidecar, sidecar_disagreement, write_sidecar
from .dm_metadata import DmMetadata
from .format import THIN_SUPERBLOCK_MAGIC
from .index import VolatileIndex
from .metadata import (
    MAGIC as OLD_MAGIC,
    OPT_ERROR_IF_NO_SPACE,
    OPT_IGNORE_DISCARD,
    OPT_PASSDOWN,
    OPT_PAYLOAD,
    OPT_SYNC,
    OPT_ZERO,
)
from .metadata_size import metadata_size
from .pool_metadata import MAX_METADATA_BLOCKS, PoolMetadata

FLAG_NEEDS_CHECK = 1  # dm's superblock flag

#: Operations between automatic commits.  dm-thin commits once a second; at
#: the ~100k-1M requests a second a fast SSD serves, a million requests is
#: about a second of work.
DEFAULT_COMMIT_INTERVAL = 1_000_000
#: dm_thin_pool's ``no_space_timeout`` module parameter (seconds): how long
#: a pool out of data space queues writes before it errors them
#: (:meth:`ThinPool.expire_no_space_timeout`); 0 = queue for ever
NO_SPACE_TIMEOUT_S = 60
MAX_THIN_ID = (1 << 24) - 1
_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_COUNTER_SLOTS = np.array(sorted(K.COUNTER_NAMES), dtype=np.int64)

_libc = None


def _upto(end: int, slots, *arrays) -> tuple:
    """The trace's per-request arrays cut before request ``end``."""
    return (_cut(slots, 0, end), *(a[:end] if end < len(a) else a for a in arrays))


def _cut(slots: np.ndarray, lo: int, hi: int | None = None) -> np.ndarray:
    """The device slots of requests ``lo..hi`` of a trace.  A trace on one
    device has one entry for all its requests, as the replay kernel takes
    it (no array as long as the trace, whose pages a 4 M-request trace
    faulted in for ~0.09 s of system time a replay); it stands for any
    stretch of them."""
    return slots if len(slots) == 1 else slots[lo:hi]


def _slot_at(slots: np.ndarray, i: int) -> int:
    """Request ``i``'s device slot (see :func:`_cut`)."""
    return int(slots[i if len(slots) > 1 else 0])


def punch_hole(fd: int, offset: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)


#: rows of the mapping-change log between the replay kernel and dm's btree
LOG_ROWS = 1 << 16
#: a full log goes into dm's btree on a second thread while the replay
#: kernel runs the trace's next stretch (ThinPool._apply_overlapped); False
#: runs them one after the other (the same result: tests compare the two)
OVERLAP_APPLY = True
#: requests in the first stretch the replay kernel runs after the pipeline
#: of _apply_overlapped drained (a run's start, a commit, a log applied
#: alone): the next stretch's apply waits for it, so it is short; each
#: overlapped stretch after it doubles, and stretches halve again towards
#: the next commit and the trace's end, whose last log is applied alone
#: (see ThinPool._stretch_end)
STRETCH_FIRST = 4096
#: how many leaves may have rows waiting for their merge across apply_log
#: calls (_mirror.apply_log_kept; 8 bytes each, their pages touched as used)
WAITING_LEAVES = 1 << 18
#: dm metadata blocks one mapping change may take at most, as the near-reserve
#: runs budget it: the shadowed path and a split (a new node) at each of the
#: two trees' levels.  Only the speed depends on it: a run that reaches the
#: reserve anyway is rolled back to the block where dm would have committed.
META_PER_CHANGE = 32


def lock_metadata(mpath: str, read_only: bool) -> int:
    """An fd of ``mpath`` holding flock: shared for readers, exclusive for
    the one writer (PoolBusyError when taken)."""
    fd = os.open(mpath, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.PoolBusyError(f"{mpath}: pool is open read-write by another process") from None
    return fd


def _commit_tie(dm: PoolMetadata) -> list:
    """What ties a sidecar to one commit of the metadata: the roots of the
    mapping and details trees its superblock names (shadow paging gives
    every commit that changes anything new ones).  A flag change alone
    (needs_check set or cleared) keeps them."""
    return [int(dm.sb.data_mapping_root), int(dm.sb.device_details_root)]


def _options(side: dict) -> int:
    return ((OPT_ZERO if side.get("zero_new_blocks", True) else 0)
            | (OPT_PASSDOWN if side.get("discard_passdown", True) else 0)
            | (OPT_ERROR_IF_NO_SPACE if side.get("error_if_no_space", False) else 0)
            | (OPT_PAYLOAD if side.get("payload", False) else 0)
            | (OPT_IGNORE_DISCARD if side.get("ignore_discard", False) else 0)
            | (OPT_SYNC if side.get("sync", True) else 0))


def _highest_vblock(dm: PoolMetadata, dev: int) -> int | None:
    """The highest block a device's dm subtree maps (the last key of its
    rightmost leaf: one node per level is read), or None when empty."""
    return _highest_key(dm.bm, dm.subtree_root(dev), f"device {dev}")


#: deeper than any dm tree of 2^64 keys
_MAX_TREE_DEPTH = 16


def _settle_sidecar(path: str, side: dict | None, dm: PoolMetadata, reconcile: bool) -> dict:
    """The sidecar of the metadata's last commit.  It is tied to that
    commit by the roots its superblock names (:func:`_commit_tie`); a
    sidecar written for the next commit (a crash before its superblock)
    carries this one as ``previous``.  Anything else refuses, or with
    ``reconcile`` adopts the metadata's devices (sizes from the sidecar,
    else the highest mapping)."""
    tie = _commit_tie(dm)
    devs = set(dm.devices)
    if side is not None:
        for cand in (side, side.get("previous")):
            if (cand and cand.get("commit") == tie
                    and {int(k) for k in cand.get("devices", {})} == devs
                    and cand.get("transaction_id") == dm.sb.trans_id):
                out = {k: v for k, v in side.items() if k != "previous"}
                out.update({k: v for k, v in cand.items() if k != "previous"})
                return out
    if not reconcile:
        if side is None:
            why = f"there is no {SIDECAR}"
        else:
            why = (sidecar_disagreement(side, dm.sb.trans_id, devs)
                   or "it was written for another commit of the metadata")
        raise errors.TransactionIdMismatchError(
            f"{path}: {SIDECAR} does not belong to this metadata ({why}); adopt the metadata's view with "
            f"'thinp pool status {path} --reconcile' (ThinPool.open(..., reconcile=True))")
    out = {"version": SIDECAR_VERSION, "split": "current", "low_water_mark": 0, "error_if_no_space": False,
           "commit_interval": DEFAULT_COMMIT_INTERVAL}
    # (an older sidecar's data_cursor is dropped: dm's cursor starts at 0 on open)
    out.update({k: v for k, v in (side or {}).items() if k not in ("previous", "data_cursor")})
    bs = dm.sb.data_block_size * SECTOR_SIZE
    old = out.get("devices", {})
    sizes = {}
    for dev in sorted(devs):
        if str(dev) in old:
            sizes[str(dev)] = old[str(dev)]
        else:
            h = _highest_vblock(dm, dev)
            sizes[str(dev)] = (h + 1 if h is not None else 1) * bs // SECTOR_SIZE
    out["devices"] = sizes
    out["transaction_id"] = dm.sb.trans_id
    out["commit"] = tie
    write_sidecar(path, out)
    return out


def _highest_key(bm, root: int, who: str) -> int | None:
    """The last key of the tree at ``root`` (its rightmost leaf's), or None."""
    b = root
    for _ in range(_MAX_TREE_DEPTH):
        n = _btree.read_node(bm, b, who=who)
        nr = n.nr_entries
        if n.is_leaf:
            return int(n.keys()[nr - 1]) if nr else None
        if nr == 0:
            raise errors.MetadataCorruptError(f"metadata corrupt: {who}: btree node {b}: internal node with no entries")
        b = int(n.values64()[nr - 1])
    raise errors.MetadataCorruptError(f"metadata corrupt: {who}: mapping tree is too deep")


def _build_index(dm: PoolMetadata, side: dict, load: bool = True, leaked=None) -> VolatileIndex:
    """The volatile index of the metadata's devices: the device table from
    the details and the sidecar, and (``load``) every mapping from the
    leaves, with its data reference.

    When ``dm`` was opened with its check's subtree walk deferred, the fill
    is that walk: one pass over the leaves checks each node when first
    reached, tallies dm's data references for the check and fills the
    index.  The check's verdict (:meth:`PoolMetadata.finish_check`) comes
    at the end, and its tallies then become the index's reference counts
    (plus the entries of leaves shared between devices).

    Data blocks dm counts more often than leaves map them (``leaked``,
    (blocks, by how much), else what the check found) keep those extra
    references in the index: dm never hands them out again, nor does the
    index (see :meth:`ThinPool._reserve_commit`)."""
    bs = dm.sb.data_block_size * SECTOR_SIZE
    md = VolatileIndex.build(nr_data_blocks=dm.data_sm.nr_blocks, block_size=bs, options=_options(side),
                             low_water_mark=int(side.get("low_water_mark", 0)),
                             commit_interval=int(side.get("commit_interval", DEFAULT_COMMIT_INTERVAL)),
                             time=dm.sb.time, dcursor=0)  # sm_disk_open: the cursor starts at 0
    pc = dm.pending_check if load else None
    if pc is not None and len(pc.data_refs) != len(md.sp.drc):
        dm.complete_check()  # (counts that cannot be shared: the check walks on its own)
        pc = None
    held_sb = DmMetadata(dm.bm, dm.sb).held_superblock() if load and dm.sb.held_root else None
    if pc is not None:
        # the check's walk of the top levels named the devices' subtree roots
        tops = pc.tops
        w = DmMetadata(dm.bm, dm.sb).subtree_walk(pc, MT.W_REVISIT)
        data_refs = pc.data_refs
    elif load:
        # every tree read whole, each leaf counting for each device reading it
        tops = [device_mappings(dm.bm, s.data_mapping_root) for s in [dm.sb] + ([held_sb] if held_sb else [])]
        tops = [(k, v.astype(np.int64)) for k, v in tops]
        w = MT.new_walk(dm.bm.blocks, 8, 0)
        data_refs = md.sp.drc
    nr_shared = np.zeros(1, dtype=np.int64)
    roots = dict(zip(tops[0][0].tolist(), tops[0][1].tolist())) if load else {}

    def fill(dv, s, dev, root, what, walk=None, nr_mapped=None):
        if walk is None:
            r = TK.load_tree(md.sp, dv, np.int64(s), w, np.int64(root), data_refs, nr_shared)
        else:       # a tree the check counted already, read again: its entries count in the index only
            r = TK.load_tree(md.sp, dv, np.int64(s), walk, np.int64(root), md.sp.drc, nr_shared)
            nr_shared[0] += 1
        if r == TK.L_OK:
            return
        # the check names any damage first (the walk stopped at it)
        dm.finish_check(walked=False)
        if r == TK.L_RANGE:
            vb, p = int(w.bad[0]), int(w.bad[1]) >> 24
            if p >= len(data_refs):
                raise errors.MetadataCorruptError(
                    f"metadata corrupt: {what} maps data block {p} of {dm.data_sm.nr_blocks}")
            raise errors.MetadataCorruptError(
                f"metadata corrupt: {what} maps block {vb}, past its size of {int(dv.size_sectors[s])} sectors "
                f"in {SIDECAR}")
        if r == TK.L_NO_INDEX:
            many = f" {nr_mapped:,}" if nr_mapped is not None else ""
            raise errors.ThinpError(f"the in-RAM index has no room for {what}'s{many} mappings")
        raise errors.MetadataCorruptError(f"metadata corrupt: {what}'s mapping tree: btree node {int(w.bad[0])} "
                                          f"is damaged (walk status {r})")

    for dev in sorted(dm.devices):
        d = dm.devices[dev]
        s = md.free_slot()
        dv = md.dv
        sectors = int(side["devices"][str(dev)])
        nr_blocks = -(-sectors * SECTOR_SIZE // bs)
        dv.dev_id[s] = dev
        dv.root[s] = 0
        dv.nr_blocks[s] = nr_blocks
        dv.size_sectors[s] = sectors
        dv.levels[s] = TK.levels_for(nr_blocks)
        dv.mapped[s] = 0 if load else d.mapped_blocks
        dv.create_time[s] = d.creation_time
        dv.snap_time[s] = d.snapshotted_time
        dv.txn[s] = d.transaction_id
        md.slot_of[dev] = s
        if load:
            fill(dv, s, dev, roots.get(dev, 0), f"device {dev}", nr_mapped=d.mapped_blocks)
    md.held = None
    if held_sb is not None:
        # the held metadata snapshot's trees, as index trees of their own:
        # their leaves keep references on the data blocks they map
        hdevs, hroots = tops[1] if pc is None else pc.held_tops
        # with the check's walk, a held device reached through a top-level
        # node the live tree shares was counted with the live devices
        counted = set(zip(*(t.tolist() for t in tops[1]))) if pc is not None else None
        md.held = TK.make_devices(max(1, len(hdevs)))
        hd = md.held
        for k, (dev, root) in enumerate(zip(hdevs.tolist(), hroots.tolist())):
            what = f"the held metadata snapshot's device {dev}"
            try:
                h = _highest_key(dm.bm, root, what)
            except errors.MetadataCorruptError:
                dm.finish_check(walked=False)  # the check names the damage first
                raise
            hd.dev_id[k] = dev
            hd.nr_blocks[k] = h + 1 if h is not None else 1
            hd.size_sectors[k] = hd.nr_blocks[k] * bs // SECTOR_SIZE
            hd.levels[k] = TK.levels_for(int(hd.nr_blocks[k]))
            again = None if counted is None or (dev, root) in counted else MT.new_walk(dm.bm.blocks, 8, 0)
            fill(hd, k, dev, root, what, again)
    if load:
        if data_refs is not md.sp.drc:
            # the check's tallies become the index's counts: the check
            # judges them first, then the shared leaves' counts join them
            dm.finish_check()
            if nr_shared[0]:
                data_refs += md.sp.drc
            md.sp = md.sp._replace(drc=data_refs)
        if leaked is None and dm.check_result is not None:
            leaked = dm.check_result.leaked_data_blocks
        if leaked is not None and len(leaked[0]):
            md.sp.drc[leaked[0]] += leaked[1].astype(md.sp.drc.dtype)
        TK.settle_data_bits(md.sp)
    md.settle_pages(collapse=False)  # (before the commit: the fill's nodes are left to khugepaged)
    md.commit()
    scal = md.sp.scal
    scal[K.S_LWM_ARMED] = 1 if (scal[K.S_NR_DATA] - scal[K.S_DUSED]) > scal[K.S_LWM] else 0
    return md


@dataclass
class PoolEvent:
    """A pool event: ``kind`` is low_water_mark, out_of_data_space,
    metadata_low_water_mark or out_of_metadata_space."""

    kind: str
    op_index: int
    value: int
    pool: "ThinPool" = field(repr=False, default=None)


@dataclass
class PoolStatus:
    """dm-thin's pool status; ``str()`` gives the status line."""

    transaction_id: int
    used_metadata_blocks: int
    total_metadata_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_root: int | None
    mode: str
    discard: str
    no_space: str
    needs_check: bool
    metadata_low_watermark: int
    data_block_size: int
    counters: dict = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return (
            f"{self.transaction_id} {self.used_metadata_blocks}/{self.total_metadata_blocks} "
            f"{self.used_data_blocks}/{self.total_data_blocks} "
            f"{self.held_root if self.held_root else '-'} {self.mode} {self.discard} {self.no_space} "
            f"{'needs_check' if self.needs_check else '-'} {self.metadata_low_watermark}"
        )

    @property
    def data_percent(self) -> float:
        """Data% as ``lvs`` shows it (two decimals)."""
        return round(100.0 * self.used_data_blocks / self.total_data_blocks, 2)

    @property
    def metadata_percent(self) -> float:
        """Meta% as ``lvs`` shows it (two decimals)."""
        return round(100.0 * self.used_metadata_blocks / self.total_metadata_blocks, 2)

    def __getattr__(self, name):
        counters = self.__dict__.get("counters", {})
        if name in counters:
            return counters[name]
        raise AttributeError(name)


@dataclass
class ThinStatus:
    """dm-thin's thin status: ``<mapped sectors> <highest mapped sector>``."""

    mapped_sectors: int
    highest_mapped_sector: int | None

    def __str__(self) -> str:
        hi = "-" if self.highest_mapped_sector is None else str(self.highest_mapped_sector)
        return f"{self.mapped_sectors} {hi}"


@dataclass
class ReplayResult:
    """What one :meth:`ThinPool.replay` did: counter deltas and events."""

    counters: dict
    events: list
    nr_queued: int = 0

    def __getitem__(self, key):
        return self.counters[key]


class ThinPool:
    """A dm-thin pool in a directory: ``metadata`` (a dm-thin metadata
    image, what thin_check and thin_dump read), ``data`` (sparse) and
    ``pool.json`` (the sidecar: what dm keeps outside its metadata)."""

    def __init__(self, path: str, md: VolatileIndex, dm: PoolMetadata, side: dict, read_only: bool,
                 lock_fd: int = -1):
        self.path = path
        self._md = md
        self._dm = dm
        self._side = side
        #: the sidecar file's content as this process last wrote it, less
        #: ``previous`` (None until the first commit writes it)
        self._side_written: dict | None = None
        #: data blocks dm counts and no leaf maps, and by how much:
        #: (int64 blocks, int64 extra counts), kept across index rebuilds
        self._leaked = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        #: the sidecar's two slots: which one holds the last commit's
        self._sidecar = None if read_only else SidecarFile.open(path, side)
        #: the superblock as the last commit packed it (None before one)
        self._sb_committed: np.ndarray | None = None
        self._lock_fd = lock_fd
        self.read_only = read_only
        self._closed = False
        self._callbacks = {name: [] for name in K.EVENT_NAMES.values()}
        self._queue: list = []
        #: the requests (queue keys) already counted in nr_failed_requests
        #: that still have blocks queued: a request counts as failed once
        self._failed_keys: set = set()
        self._failed = False
        self._fail_mode: str | None = None  # dm-thin's "fail" mode: the reason
        self._log = np.zeros((LOG_ROWS, 4), dtype=np.int64)
        #: the log the replay kernel fills while the last one goes into dm's btree (_apply_overlapped)
        self._log_alt = np.zeros((LOG_ROWS, 4), dtype=np.int64)
        #: the thread _apply_overlapped hands full logs to (made on first
        #: use, kept until close): with a thread started per log the caller
        #: waited in its start for the new thread to run (0.13-0.17 s a
        #: round over 93 logs, of 0.7-0.8 s, on 4 M sequential provisions)
        self._apply_thread = None
        self._apply_pid = -1
        #: the leaves with rows waiting for their merge across overlapped
        #: apply_log calls (_mirror.new_waiting; made on the first)
        self._waiting = None
        #: the replay-kernel runs since the last commit, each [slots, ops,
        #: offsets, lengths, start op, start vblock, ran to the end]: an
        #: abort re-runs them on the committed state to count what dm applied
        self._runs: list = []
        self._commit_gen = 0
        self._merge_at = 256
        #: the counters as the last commit left them (zero at open)
        self._commit_counters = np.zeros(len(K.COUNTER_NAMES), dtype=np.int64)
        nm = dm.tm.nr_blocks
        self._meta_reserve = min(4096, nm // 10)
        self._meta_lwm = min(1024, nm // 4)
        self._meta_lwm_armed = dm.nr_free_metadata_blocks > self._meta_lwm
        #: dm-thin's PM_OUT_OF_METADATA_SPACE: free metadata is down to the
        #: reserve, so no mapping may change; reported as ``ro``, no needs_check
        self._ooms = dm.nr_free_metadata_blocks <= self._meta_reserve
        #: metadata blocks in use and allocations made, at the last commit
        #: (dm counts blocks freed since as in use until the next commit)
        self._meta_mark = (dm.nr_used_metadata_blocks, dm.tm.nr_allocs)
        self._mirror_r = 0
        #: near the metadata reserve: replay one request at a time (set once
        #: the reserve is first reached, until the metadata grows)
        self._step = False
        self._data_fd = -1
        self._data_mm = None
        self._data = _EMPTY_U8
        self._open_data()

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path, data_size, block_size="64KiB", metadata_size=None, *, low_water_mark=0,
               zero_new_blocks=True, skip_block_zeroing=None, discard_passdown=True, ignore_discard=False,
               error_if_no_space=False, payload=False, max_thins=1000,
               commit_interval=DEFAULT_COMMIT_INTERVAL, sync=True, split="current") -> "ThinPool":
        """Make ``path/`` with sparse ``data``, a dm-thin ``metadata`` image
        and the ``pool.json`` sidecar.

        Sizes are bytes or strings such as ``"100G"``; ``block_size`` follows
        dm-thin (64 KiB to 1 GiB, a multiple of 64 KiB).  ``metadata_size``
        defaults to :func:`thinp.metadata_size` of the pool (thin_metadata_size's
        formula) for ``max_thins`` devices.  ``payload=False`` keeps only
        mappings and counters; ``payload=True`` stores bytes in ``data``.
        ``split`` is the btree split rule: ``"current"`` (the kernel's since
        2021) or ``"halves"`` (older kernels and thin_restore 0.9.0).

        ``commit_interval`` is how many requests run between automatic
        commits (0 = only explicit ones).  dm-thin commits once a second; the
        default, :data:`DEFAULT_COMMIT_INTERVAL` (1,000,000 requests), is
        about a second of work for a fast SSD.  Messages, ``close()`` and
        resizes commit too, as in dm-thin.

        ``sync=True`` makes each commit durable on disk (msync of the blocks
        it wrote, then of the superblock), like dm-thin's flush.  With
        ``sync=False`` a commit is still atomic and survives the process
        being killed at any instant (the page cache outlives it), but not a
        power cut; experiments use it, since a disk flush costs 0.2-5 ms here.
        """
        bs = check_block_size(block_size)
        dsize = parse_size(data_size, what="data_size")
        nr_data = dsize // bs
        if nr_data < 1:
            raise ValueError(f"data_size {dsize} bytes is smaller than one {format_size(bs)} block")
        if nr_data >= 1 << 40:
            raise ValueError(f"data_size {dsize} bytes is more than 2^40 blocks")
        if skip_block_zeroing is not None:
            zero_new_blocks = not skip_block_zeroing
        if isinstance(low_water_mark, bool) or not isinstance(low_water_mark, int) or low_water_mark < 0:
            raise ValueError(f"low_water_mark must be a block count >= 0, not {low_water_mark!r}")
        if not isinstance(commit_interval, int) or commit_interval < 0:
            raise ValueError(f"commit_interval must be an operation count >= 0, not {commit_interval!r}")
        if split not in ("current", "halves"):
            raise ValueError(f"split rule {split!r}: choose 'current' or 'halves'")
        if metadata_size is None:
            msize = globals()["metadata_size"](nr_data * bs, bs, max_thins)
        else:
            msize = parse_size(metadata_size, what="metadata_size")
        nr_meta = msize // METADATA_BLOCK_SIZE
        # the space maps of an empty pool: dm's metadata index and bitmaps,
        # the data space map's index and bitmaps, two roots, the superblock
        least = 16 + 2 * (-(-nr_data // ENTRIES_PER_BITMAP))
        if metadata_size is None:
            nr_meta = max(nr_meta, least, 2 * 1024 * 1024 // METADATA_BLOCK_SIZE)
        if nr_meta > MAX_METADATA_BLOCKS:
            if metadata_size is None:
                nr_meta = MAX_METADATA_BLOCKS
            else:
                raise ValueError(f"metadata_size {nr_meta * METADATA_BLOCK_SIZE} bytes exceeds dm-thin's limit "
                                 f"of {MAX_METADATA_BLOCKS * METADATA_BLOCK_SIZE} bytes")
        if nr_meta < least:
            raise ValueError(f"metadata_size {metadata_size}: too small for {nr_data} data blocks "
                             f"(at least {format_size(least * METADATA_BLOCK_SIZE)})")
        path = os.fspath(path)
        if os.path.exists(os.path.join(path, "metadata")) or os.path.exists(os.path.join(path, "data")):
            raise errors.DeviceExistsError(f"{path}: a pool already exists here")
        made_dir = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        side = {"version": SIDECAR_VERSION, "transaction_id": 0, "devices": {}, "split": split,
                "low_water_mark": low_water_mark, "error_if_no_space": bool(error_if_no_space),
                "zero_new_blocks": bool(zero_new_blocks), "discard_passdown": bool(discard_passdown),
                "ignore_discard": bool(ignore_discard), "payload": bool(payload), "sync": bool(sync),
                "commit_interval": commit_interval, "uuid": str(_uuid.uuid4())}
        dm = None
        lock_fd = -1
        try:
            with open(os.path.join(path, "data"), "xb") as f:
                f.truncate(nr_data * bs)
            dm = PoolMetadata.format(os.path.join(path, "metadata"), nr_metadata_blocks=nr_meta,
                                     nr_data_blocks=nr_data, data_block_sectors=bs // SECTOR_SIZE, split=split)
            dm.sync = bool(sync)
            side["commit"] = _commit_tie(dm)
            # (durable with sync: the commits after write its slots in place)
            write_sidecar(path, side, sync=bool(sync))
            lock_fd = lock_metadata(os.path.join(path, "metadata"), False)
        except BaseException:
            if dm is not None:
                dm.bm.close()
            for name in ("data", "metadata", SIDECAR):
                try:
                    os.unlink(os.path.join(path, name))
                except FileNotFoundError:
                    pass
            if made_dir:
                shutil.rmtree(path, ignore_errors=True)
            raise
        md = _build_index(dm, side)
        return cls(path, md, dm, side, read_only=False, lock_fd=lock_fd)

    @classmethod
    def open(cls, path, read_only: bool = False, check_trees: bool = True, reconcile: bool = False) -> "ThinPool":
        """Reopen a pool with every device, mapping and counter as last committed.

        Opening validates the metadata first, as thin_check does (checksums,
        btree order, reference counts), and raises
        :class:`~thinp.errors.MetadataCorruptError` naming the first problem;
        then it rebuilds the in-RAM index from the mapping leaves.  A
        read-only open may pass ``check_trees=False`` to skip both (status
        only; I/O then refuses).

        The sidecar (``pool.json``) must belong to the metadata's last
        commit; when it does not (a crash between the two, or files copied
        from elsewhere) the open refuses with
        :class:`~thinp.errors.TransactionIdMismatchError` saying what
        differs, and ``reconcile=True`` adopts the metadata's view (sizes of
        devices the sidecar lacks come from their highest mapped block).
        A pool in thinp's old metadata format is refused with the
        ``thinp convert`` command that converts it.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such pool directory")
        mpath = os.path.join(path, "metadata")
        try:
            with open(mpath, "rb") as f:
                head = f.read(40)
        except FileNotFoundError:
            raise FileNotFoundError(f"{mpath}: no metadata file (is this a thin pool directory?)") from None
        if len(head) >= 8 and int.from_bytes(head[:8], "little") == OLD_MAGIC:
            raise errors.NotSupportedError(
                f"{path}: metadata in thinp's old format; convert it with 'thinp convert {path} NEW_DIR'")
        if len(head) < 40 or int.from_bytes(head[32:40], "little") != THIN_SUPERBLOCK_MAGIC:
            raise errors.MetadataCorruptError(f"metadata corrupt: {mpath}: no dm-thin superblock (bad magic)")
        lock_fd = lock_metadata(mpath, read_only)
        try:
            side = read_sidecar(path)
            split = (side or {}).get("split", "current")
            # the check's walk of the device subtrees is the index fill's
            # (each leaf read once): _build_index walks, finish_check judges
            dm = PoolMetadata.open(mpath, split=split, writable=not read_only, check=check_trees or not read_only,
                                   defer_subtrees=True)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            if dm.sb.flags & 1 or (reconcile and not read_only):
                # what the check finds comes first, and a reconciled sidecar
                # is written only for sound metadata
                dm.complete_check()
            if dm.sb.flags & 1 and not read_only:
                raise errors.MetadataCorruptError(
                    f"{path}: needs_check is set; check it with 'thinp check {path}' and rebuild it with "
                    "'thinp repair'")
            try:
                side = _settle_sidecar(path, side, dm, reconcile and not read_only)
            except errors.TransactionIdMismatchError:
                dm.complete_check()
                raise
            md = _build_index(dm, side, load=check_trees or not read_only)
            dm.finish_check()
        except BaseException:
            dm.bm.close()
            os.close(lock_fd)
            raise
        pool = cls(path, md, dm, side, read_only=read_only, lock_fd=lock_fd)
        pool._trees_checked = check_trees or not read_only
        if dm.check_result is not None and dm.check_result.leaked_data_blocks is not None:
            pool._leaked = dm.check_result.leaked_data_blocks
        return pool

    _trees_checked = True

    def _open_data(self) -> None:
        sb = self._md.sb
        dpath = os.path.join(self.path, "data")
        try:
            self._data_fd = os.open(dpath, os.O_RDONLY if self.read_only else os.O_RDWR)
        except FileNotFoundError:
            self._release()
            raise FileNotFoundError(f"{dpath}: the pool's data file is missing") from None
        want = sb.nr_data_blocks * sb.data_block_size
        have = os.fstat(self._data_fd).st_size
        if have < want:
            os.close(self._data_fd)
            self._data_fd = -1
            self._release()
            raise errors.MetadataCorruptError(f"{dpath}: {have} bytes, but the pool has {want} bytes of data blocks")
        if self.payload:
            # private when read-only: the kernels want writable arrays
            flags = mmap.MAP_PRIVATE if self.read_only else mmap.MAP_SHARED
            self._data_mm = mmap.mmap(self._data_fd, want, flags, mmap.PROT_READ | mmap.PROT_WRITE)
            self._data = np.frombuffer(self._data_mm, dtype=np.uint8)

    def _release(self) -> None:
        if getattr(self, "_sidecar", None) is not None:
            self._sidecar.close()
        self._md.close()
        self._dm.bm.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        """Commit (unless read-only or failed) and release the files.

        Requests still queued for data space are dropped, as the bios of a
        pool torn down while out of space are errored; counters restart at
        zero on the next open (they are per-activation, as dm's are)."""
        if self._closed:
            return
        try:
            if not self.read_only and not self._failed and self._md.sp is not None:
                self._drained = False
                self.commit()
                while self._drained and not self._failed:
                    # the commit freed space and retried queued blocks:
                    # what they mapped is committed too
                    self._drained = False
                    self.commit()
                if self.payload and self._data_mm is not None:
                    self._data_mm.flush()
        finally:
            self._closed = True
            if self._apply_thread is not None:
                self._apply_thread.shutdown()
                self._apply_thread = None
            self._data = _EMPTY_U8
            if self._data_mm is not None:
                try:
                    self._data_mm.close()
                except BufferError:
                    pass
            if self._data_fd >= 0:
                os.close(self._data_fd)
                self._data_fd = -1
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else str(self.status())
        return f"<ThinPool {self.path!r}: {state}>"

    # ------------------------------------------------------------ properties
    @property
    def block_size(self) -> int:
        return self._md.sb.data_block_size

    @property
    def nr_data_blocks(self) -> int:
        return self._md.sb.nr_data_blocks

    @property
    def nr_metadata_blocks(self) -> int:
        return self._dm.tm.nr_blocks

    @property
    def payload(self) -> bool:
        return bool(self._md.sb.options & OPT_PAYLOAD)

    @property
    def zero_new_blocks(self) -> bool:
        """New blocks are zeroed (no ``skip_block_zeroing`` in the table line)."""
        return bool(self._md.sb.options & OPT_ZERO)

    @property
    def transaction_id(self) -> int:
        return self._dm.sb.trans_id

    @property
    def time(self) -> int:
        return int(self._md.sp.scal[K.S_TIME])

    @property
    def uuid(self) -> str:
        """thinp's name for the pool (in the sidecar; dm's superblock uuid
        is left zero, as LVM leaves it)."""
        return str(self._side.get("uuid", ""))

    @property
    def commit_interval(self) -> int:
        return int(self._md.sp.scal[K.S_COMMIT_INTERVAL])

    @property
    def low_water_mark(self) -> int:
        return int(self._md.sp.scal[K.S_LWM])

    @property
    def nr_used_data_blocks(self) -> int:
        """Data blocks in use: status()'s used_data_blocks."""
        return int(self._md.sp.scal[K.S_DUSED])

    @property
    def nr_free_data_blocks(self) -> int:
        sp = self._md.sp
        return int(sp.scal[K.S_NR_DATA] - sp.scal[K.S_DUSED])

    def data_bitmap(self):
        """The data allocation bitmap, a bitarray over the engine's memory
        (bit set = block in use or freed in the open transaction)."""
        return self._md.data_bitarray()

    def data_counts(self) -> np.ndarray:
        """A copy of dm's data space map counts as of now (the number of
        leaves mapping each data block, a held metadata snapshot's too)."""
        return self._dm.data_sm.count.copy()

    def refcounts(self) -> np.ndarray:
        """A copy of each data block's reference count."""
        return self._md.sp.drc.copy()

    # --------------------------------------------------------------- checks
    def _check_open(self) -> None:
        if self._closed:
            raise errors.ThinpError(f"{self.path}: pool is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise errors.ReadOnlyPoolError(f"{self.path}: pool is open read-only")
        if self._fail_mode:
            raise errors.PoolFailedError(f"{self.path}: pool is in fail mode ({self._fail_mode}); all I/O errors")
        if self._failed:
            raise errors.ReadOnlyPoolError(f"{self.path}: pool is in read-only mode after a metadata failure (needs_check)")

    def _check_message(self, name: str) -> None:
        """A pool message may run: dm-thin's pool_message refuses every one
        (EOPNOTSUPP) once the pool is out of metadata space, read-only or
        failed.  A pool this process opened read-only refuses it as its
        files do (EROFS)."""
        self._check_open()
        if self.read_only:
            raise errors.ReadOnlyPoolError(f"{self.path}: pool is open read-only")
        if self._fail_mode:
            why = f"in fail mode ({self._fail_mode})"
        elif self._failed:
            why = "read-only after a metadata failure (needs_check)"
        elif self._ooms:
            why = "out of metadata space (read-only until resize_metadata grows it)"
        else:
            return
        raise errors.MessageRefusedError(f"{self.path}: pool message {name} refused (EOPNOTSUPP): the pool is {why}")

    @staticmethod
    def _check_id(dev_id, what="dev_id") -> int:
        if isinstance(dev_id, bool) or not isinstance(dev_id, (int, np.integer)):
            raise ValueError(f"{what} must be an integer, not {dev_id!r}")
        dev_id = int(dev_id)
        if not 0 <= dev_id <= MAX_THIN_ID:
            raise ValueError(f"{what} {dev_id} is outside dm-thin's 24-bit range 0..{MAX_THIN_ID}")
        return dev_id

    def _slot(self, dev_id: int) -> int:
        try:
            return self._md.slot_of[dev_id]
        except KeyError:
            raise errors.DeviceNotFoundError(f"thin device {dev_id} does not exist") from None

    # -------------------------------------------------------------- devices
    def create_thin(self, dev_id: int, size) -> "ThinDevice":
        """New empty thin device of ``size`` bytes (a multiple of 512)."""
        self._check_message("create_thin")
        dev_id = self._check_id(dev_id)
        nbytes = parse_size(size, what="size")
        if nbytes <= 0 or nbytes % SECTOR_SIZE:
            raise ValueError(f"size {nbytes} bytes must be a positive multiple of 512")
        nr_blocks = -(-nbytes // self.block_size)
        if nr_blocks >= 1 << 40:
            raise ValueError(f"size {nbytes} bytes is more than 2^40 blocks")
        if dev_id in self._md.slot_of:
            raise errors.DeviceExistsError(f"thin device {dev_id} already exists")
        md = self._md
        self._dm_op(self._dm.create_thin, dev_id)
        s = md.free_slot()
        dv = md.dv
        dv.dev_id[s] = dev_id
        dv.root[s] = 0
        dv.nr_blocks[s] = nr_blocks
        dv.size_sectors[s] = nbytes // SECTOR_SIZE
        dv.levels[s] = TK.levels_for(nr_blocks)
        dv.mapped[s] = 0
        dv.create_time[s] = md.sp.scal[K.S_TIME]
        dv.snap_time[s] = md.sp.scal[K.S_TIME]
        dv.root_crc[s] = 0
        dv.changed[s] = 1
        md.slot_of[dev_id] = s
        self.commit()
        self._dm.activate(dev_id)  # its thin target, after the message's commit
        return ThinDevice(self, dev_id)

    def create_snap(self, dev_id: int, origin_id: int) -> "ThinDevice":
        """Snapshot ``origin_id`` as ``dev_id``: O(1), sharing the root."""
        self._check_message("create_snap")
        dev_id = self._check_id(dev_id)
        origin_id = self._check_id(origin_id, "origin_id")
        o = self._slot(origin_id)
        if dev_id in self._md.slot_of:
            raise errors.DeviceExistsError(f"thin device {dev_id} already exists")
        md = self._md
        self._dm_op(self._dm.create_snap, dev_id, origin_id)
        s = md.free_slot()
        dv, sp = md.dv, md.sp
        root = int(dv.root[o])
        if root:
            K.inc_meta(sp, root)
        sp.scal[K.S_TIME] += 1
        t = sp.scal[K.S_TIME]
        dv.dev_id[s] = dev_id
        dv.root[s] = root
        dv.nr_blocks[s] = dv.nr_blocks[o]
        dv.size_sectors[s] = dv.size_sectors[o]
        dv.levels[s] = dv.levels[o]
        dv.mapped[s] = dv.mapped[o]
        dv.create_time[s] = t
        dv.snap_time[s] = t
        dv.snap_time[o] = t
        dv.root_crc[s] = dv.root_crc[o]
        dv.changed[s] = 1
        dv.changed[o] = 1
        md.slot_of[dev_id] = s
        self.commit()
        self._dm.activate(dev_id)
        return ThinDevice(self, dev_id)

    def delete(self, dev_id: int) -> None:
        """Delete a device, dropping a reference on every block it maps."""
        self._check_message("delete")
        dev_id = self._check_id(dev_id)
        s = self._slot(dev_id)
        # Queued requests name device slots: deleting the device under them
        # would run them later against a free slot, or a new device reusing
        # it.  dm-thin refuses to delete an open device (EBUSY).
        waiting = sum(int(np.count_nonzero(q[0][q[4]:] == s)) for q in self._queue)
        if waiting:
            raise errors.PoolBusyError(f"thin device {dev_id} has {waiting} blocks queued for data space; "
                                       "grow the pool (resize_data) before deleting it")
        md = self._md
        self._dm_op(self._dm.delete, dev_id)
        dv = md.dv
        root = int(dv.root[s])
        if root:
            K.dec_tree(md.sp, root, int(dv.levels[s]), False)
        dv.dev_id[s] = -1
        dv.root[s] = 0
        dv.mapped[s] = 0
        dv.root_crc[s] = 0
        dv.changed[s] = 1
        del md.slot_of[dev_id]
        self.commit()

    def device(self, dev_id: int) -> "ThinDevice":
        self._check_open()
        dev_id = self._check_id(dev_id)
        self._slot(dev_id)
        # a device in use has its thin target loaded: open in dm's device
        # list from here on, where a commit writes the changed details
        self._dm.activate(dev_id)
        return ThinDevice(self, dev_id)

    def devices(self) -> list[int]:
        """Thin ids in ascending order."""
        return sorted(self._md.slot_of)

    def set_transaction_id(self, old: int, new: int) -> None:
        """Compare-and-swap the pool's transaction id, then commit."""
        self._check_message("set_transaction_id")
        for v in (old, new):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 1 << 64:
                raise ValueError(f"transaction id {v!r} must be a 64-bit unsigned integer")
        cur = self._dm.sb.trans_id
        if int(old) != cur:
            raise errors.TransactionIdMismatchError(f"set_transaction_id: mismatched transaction id, current is {cur}, not {old}")
        self._dm.sb.trans_id = int(new)
        self.commit()

    def reserve_metadata_snap(self) -> int:
        """Hold a frozen copy of the committed metadata for userspace tools
        (``thin_dump -m``); returns the block of its superblock copy."""
        self._check_message("reserve_metadata_snap")
        if self._dm.sb.held_root:
            raise errors.DeviceExistsError("a metadata snapshot is already held; release it first")
        self.commit()
        h = self._dm_op(self._dm.reserve_metadata_snap)
        # the index shares each device's tree with a held copy, as dm's
        # snapshot shares the mapping tree: breaking sharing of a leaf then
        # keeps a reference on its data blocks, as dm's shadowing does
        md = self._md
        live = np.flatnonzero(md.dv.dev_id >= 0)
        held = TK.make_devices(max(1, len(live)))
        for k, s in enumerate(live.tolist()):
            held.dev_id[k] = md.dv.dev_id[s]
            held.levels[k] = md.dv.levels[s]
            held.root[k] = md.dv.root[s]
            if held.root[k]:
                K.inc_meta(md.sp, int(held.root[k]))
        md.held = held
        self.commit()
        return h

    def release_metadata_snap(self) -> None:
        self._check_message("release_metadata_snap")
        if not self._dm.sb.held_root:
            raise errors.ThinpError("no metadata snapshot is held")
        self._dm_op(self._dm.release_metadata_snap)
        md = self._md
        if md.held is not None:
            for k in np.flatnonzero(md.held.root).tolist():
                K.dec_tree(md.sp, int(md.held.root[k]), int(md.held.levels[k]), False)
            md.held = None
        self.commit()

    def restore_devices(self, *, uuid, transaction_id: int, flags: int, time: int, devices) -> int:
        """Fill a new, empty pool as thin_restore does: the superblock's
        fields, then each device's dm tree by inserting its mappings in
        order (devices share nothing), and the index beside it, then
        commit.  ``devices`` holds tuples (dev_id, nr_blocks, size_bytes,
        transaction_id, creation_time, snapshotted_time, vblocks, pblocks,
        times), the last three int64 arrays with pblocks inside the pool.
        Returns the number of mappings."""
        md, dm = self._md, self._dm
        if uuid:
            self._side["uuid"] = uuid
        dm.sb.trans_id = transaction_id
        dm.sb.flags = flags
        dm.sb.time = time
        md.sp.scal[K.S_TIME] = time
        total = 0
        log = self._log
        for dev, nrb, dev_bytes, txn, ctime, stime, o64, d64, t64 in devices:
            self._dm_op(dm.create_thin, dev)
            for lo in range(0, len(o64), len(log)):
                hi = min(lo + len(log), len(o64))
                n = hi - lo
                log[:n, 0] = dev
                log[:n, 1] = o64[lo:hi]
                log[:n, 2] = (d64[lo:hi] << 24) | (t64[lo:hi] & 0xFFFFFF)
                log[:n, 3] = 0
                if not self._apply_log(n, tool=True):
                    raise errors.NoSpaceError("restore: metadata ran out while building trees (estimate too small)")
            det = dm.devices[dev]
            det.mapped_blocks = len(o64)
            det.transaction_id = txn
            det.creation_time = ctime
            det.snapshotted_time = stime
            det.changed = True
            s = md.free_slot()
            dv = md.dv
            dv.dev_id[s] = dev
            dv.root[s] = 0
            dv.levels[s] = TK.levels_for(nrb)
            dv.nr_blocks[s] = nrb
            dv.size_sectors[s] = dev_bytes // SECTOR_SIZE
            dv.mapped[s] = 0
            dv.create_time[s] = ctime
            dv.snap_time[s] = stime
            md.slot_of[dev] = s
            if TK.load_mappings(md.sp, dv, np.int64(s), o64, d64, t64) != 0:
                raise errors.ThinpError(f"restore: the in-RAM index has no room for device {dev}")
            dv.changed[s] = 0
            total += len(o64)
        sp = md.sp
        sp.scal[K.S_LWM_ARMED] = 1 if sp.scal[K.S_NR_DATA] - sp.scal[K.S_DUSED] > sp.scal[K.S_LWM] else 0
        self.commit()
        return total

    def _dm_op(self, fn, *args):
        """A dm metadata operation; running out of metadata space aborts the
        transaction and leaves the pool read-only, as in dm-thin."""
        try:
            return fn(*args)
        except errors.NoSpaceError:
            used = self._dm.nr_used_metadata_blocks
            self._metadata_failed()
            self._abort_transaction(None, 0)
            raise errors.ReadOnlyPoolError(
                f"{self.path}: out of metadata space ({used}/{self.nr_metadata_blocks} blocks); the transaction "
                "was aborted and the pool is read-only with needs_check set") from None

    _MESSAGES = {
        "create_thin": (1, 2),
        "create_snap": (2, 2),
        "delete": (1, 1),
        "set_transaction_id": (2, 2),
        "reserve_metadata_snap": (0, 0),
        "release_metadata_snap": (0, 0),
    }

    def message(self, text: str):
        """A dmsetup pool message, e.g. ``"create_snap 1 0"``.

        ``create_thin <id> [<size>]`` takes an optional size (a thinp
        extension: dm-thin devices get their size from the table); it
        defaults to the data device's size.
        """
        words = str(text).split()
        if not words:
            raise ValueError("empty pool message")
        name, args = words[0], words[1:]
        self._check_message(name)  # dm checks the mode before the message
        if name not in self._MESSAGES:
            raise ValueError(f"unknown pool message {name!r} (known: {', '.join(self._MESSAGES)})")
        lo, hi = self._MESSAGES[name]
        if not lo <= len(args) <= hi:
            raise ValueError(f"{name} takes {lo if lo == hi else f'{lo} or {hi}'} arguments, got {len(args)}: {text!r}")

        def num(s):
            if not re.fullmatch(r"[0-9]+", s):
                raise ValueError(f"{name}: {s!r} is not a non-negative integer")
            return int(s)

        if name == "create_thin":
            size = args[1] if len(args) > 1 else self.nr_data_blocks * self.block_size
            return self.create_thin(num(args[0]), size)
        if name == "create_snap":
            return self.create_snap(num(args[0]), num(args[1]))
        if name == "delete":
            return self.delete(num(args[0]))
        if name == "set_transaction_id":
            return self.set_transaction_id(num(args[0]), num(args[1]))
        if name == "reserve_metadata_snap":
            return self.reserve_metadata_snap()
        return self.release_metadata_snap()

    # --------------------------------------------------------------- commit
    def commit(self) -> None:
        """Make everything since the last commit durable, atomically: the
        data bytes (payload mode), then dm's commit (space maps, the other
        changed blocks, the superblock last), with the sidecar written
        just before the superblock and tied to it by its checksum."""
        self._commit(None, 0)

    def _commit(self, failed_ops, failed_op: int) -> None:
        """:meth:`commit`, made while request ``failed_op`` of the trace
        whose ops are ``failed_ops`` waits: should dm's commit fail, the
        abort counts the requests before it."""
        self._check_writable()
        self._apply_log(0)  # (rows an overlapped apply left waiting for their leaf's merge, if any)
        md, dm = self._md, self._dm
        sync = bool(md.sb.options & OPT_SYNC)
        if self.payload and self._data_mm is not None and sync:
            self._data_mm.flush()  # data before the metadata that points at it
        if self._ooms:
            # dm-thin's commit() refuses in this mode; no mapping changed
            md.sp.scal[K.S_OPS_SINCE_COMMIT] = 0
            return
        dv = md.dv
        for slot in np.flatnonzero(dv.changed).tolist():
            dev = int(dv.dev_id[slot])
            if dev >= 0 and dev in dm.devices:
                d = dm.devices[dev]
                d.mapped_blocks = int(dv.mapped[slot])
                d.changed = True
        dm.sync = sync
        side = self._next_sidecar()
        try:
            # the sidecar's slot is written before dm's pre-superblock
            # flush, and its own flush overlaps that one
            # the superblock's flush runs behind the bookkeeping below,
            # and is waited for before anything that needs it durable
            dm.commit(before_flush=lambda: self._write_sidecar(side, sync), durable_later=True)
        except errors.NoSpaceError:
            self._sidecar.aborted()
            self._metadata_failed()
            self._abort_transaction(failed_ops, failed_op)
            if failed_ops is not None:
                self._event(failed_op, K.EV_OUT_OF_META, -1)
                self._drain_events(None)
            raise errors.ReadOnlyPoolError(
                f"{self.path}: out of metadata space during commit; the transaction was aborted and the pool is "
                "read-only with needs_check set") from None
        try:
            self._sidecar.committed(self._side)
            self._reserve_block = None
            md.commit()
            if not dm.tm.rolling_cursor:
                # sm_disk_commit before 5.14 restarted the data cursor at 0
                md.sp.scal[K.S_DCURSOR] = 0
            self._runs.clear()
            self._merge_at = 256
            self._commit_gen += 1
            self._commit_counters = md.sp.scal[_COUNTER_SLOTS].copy()
            self._sb_committed = np.zeros(METADATA_BLOCK_SIZE, dtype=np.uint8)
            dm.sb.pack(self._sb_committed)
            if not self._meta_lwm_armed and dm.nr_free_metadata_blocks > self._meta_lwm:
                self._meta_lwm_armed = True
        finally:
            dm.wait_durable()  # discards passed down, events and the caller come after
        self._punch_passdown()
        self._meta_mark = (dm.nr_used_metadata_blocks, dm.tm.nr_allocs)
        # dm-thin's check_for_metadata_space after every commit
        if dm.nr_free_metadata_blocks <= self._meta_reserve:
            self._ooms = True
            # set_pool_mode's error_retry_list: the queued blocks fail, with
            # ENOSPC while the pool is still out of data space, else EIO
            self._error_queue(nospc=bool(md.sp.scal[TK.S_OODS]))
            return
        if md.sp.scal[TK.S_OODS] and self.nr_free_data_blocks > 0:
            self._data_space_back()

    def _nothing_to_commit(self) -> bool:
        """True when a commit now would write the same superblock and
        sidecar as the last one (no mapping, device, space-map or option
        change since), and payload bytes need no flush."""
        dm, md = self._dm, self._md
        if self._side_written is None or md.dv.changed.any() or any(d.changed for d in dm.devices.values()):
            return False
        if self.payload and md.sb.options & OPT_SYNC:
            return False
        buf = np.zeros(METADATA_BLOCK_SIZE, dtype=np.uint8)
        dm.sb.pack(buf)
        if self._sb_committed is None or not np.array_equal(buf, self._sb_committed):
            return False
        side = self._next_sidecar()
        side.pop("previous")
        side["commit"] = _commit_tie(dm)
        return side == self._side_written

    def _next_sidecar(self) -> dict:
        md, dm = self._md, self._dm
        sb, scal, dv = md.sb, md.sp.scal, md.dv
        side = dict(self._side)
        side.pop("previous", None)
        side.pop("seq", None)  # the slot's, given when written
        side.update({
            "version": SIDECAR_VERSION, "transaction_id": dm.sb.trans_id, "split": dm.split,
            "devices": self._sidecar_devices(),
            "low_water_mark": int(scal[K.S_LWM]), "commit_interval": int(scal[K.S_COMMIT_INTERVAL]),
            "zero_new_blocks": bool(sb.options & OPT_ZERO),
            "discard_passdown": bool(sb.options & OPT_PASSDOWN),
            "ignore_discard": bool(sb.options & OPT_IGNORE_DISCARD),
            "error_if_no_space": bool(sb.options & OPT_ERROR_IF_NO_SPACE),
            "payload": bool(sb.options & OPT_PAYLOAD), "sync": bool(sb.options & OPT_SYNC)})
        prev = {k: v for k, v in self._side.items() if k != "previous"}
        side["previous"] = prev
        return side

    def _sidecar_devices(self) -> dict:
        """The sidecar's ``devices``: thin id (a string, JSON's keys) to
        size in sectors, in slot order.  Built from whole columns (a Python
        loop over numpy scalars was 0.1 ms a commit at 300 thins)."""
        dv = self._md.dv
        live = dv.dev_id >= 0
        return dict(zip(map(str, dv.dev_id[live].tolist()), dv.size_sectors[live].tolist()))

    def _write_sidecar(self, side: dict, sync: bool):
        """Write the sidecar of the commit under way into the slot not
        holding the last commit's, unless the file already says the same:
        same devices, options and tie (the roots, so the commit
        changed no mapping and no device).  The live slot then belongs to
        this commit as much as to the last one, and a crash before the
        superblock finds it right for either.  Returns the wait for the
        slot's flush (sync on), which overlaps dm's own."""
        side["commit"] = _commit_tie(self._dm)
        now = {k: v for k, v in side.items() if k != "previous"}
        wait = None
        if now != self._side_written:
            wait = self._sidecar.write(now, sync)
            self._side_written = now
        self._side = now
        return wait

    def _metadata_failed(self) -> None:
        """A metadata operation failed: abort the transaction and go read-only
        with needs_check set in the last committed superblock, as dm-thin
        does.  If even that cannot be written, the pool goes to fail mode."""
        self._failed = True
        dm = self._dm
        dm.sb.flags |= FLAG_NEEDS_CHECK
        try:
            from ..pdata.block import SUPERBLOCK

            buf = np.frombuffer(bytearray(os.pread(dm.bm.fd, METADATA_BLOCK_SIZE, 0)), dtype=np.uint8)
            flags = int(buf[4:8].view("<u4")[0]) | FLAG_NEEDS_CHECK
            buf[4:8] = np.frombuffer(flags.to_bytes(4, "little"), dtype=np.uint8)
            SUPERBLOCK.prepare(buf, 0)
            os.pwrite(dm.bm.fd, buf.tobytes(), 0)
            os.fdatasync(dm.bm.fd)
        except Exception as e:  # noqa: BLE001 - any failure here means fail mode
            self.fail(f"could not set needs_check: {e}")

    def fail(self, reason: str = "metadata device error") -> None:
        """Put the pool in dm-thin's ``fail`` mode: every read and write
        errors with :class:`~thinp.errors.PoolFailedError` (EIO), nothing is
        committed again, status shows ``fail``.  dm-thin enters it when the
        metadata device itself fails; thinp's engine does so when it cannot
        record needs_check, and tests call this to model a dead device.
        The blocks queued for data space fail as set_pool_mode's
        error_retry_list fails them: with ENOSPC while the pool is out of
        data space (pool->out_of_data_space stays set), else EIO, each
        counted, and each request with a failed block once."""
        self._failed = True
        self._fail_mode = str(reason)
        md = self._md
        if md is not None and md.sp is not None:
            self._error_queue(nospc=bool(md.sp.scal[TK.S_OODS]))
        else:
            self._queue.clear()

    def _punch_passdown(self) -> None:
        sp = self._md.sp
        n = int(sp.scal[K.S_DNPASS])
        if n and self.payload and self._data_fd >= 0:
            bs = self.block_size
            dcount = self._dm.data_sm.count
            for p in np.sort(sp.dpass[:n]):
                if sp.drc[p] == 0 and dcount[p] == 0:
                    punch_hole(self._data_fd, int(p) * bs, bs)
        sp.scal[K.S_DNPASS] = 0

    # ------------------------------------------------------------------ I/O
    def on_low_water_mark(self, callback) -> None:
        """Call ``callback(event)`` when free data blocks fall to the mark."""
        self._callbacks["low_water_mark"].append(callback)

    def on_event(self, kind: str, callback) -> None:
        """Call ``callback(event)`` on any pool event kind."""
        if kind not in self._callbacks:
            raise ValueError(f"unknown event {kind!r} (known: {', '.join(self._callbacks)})")
        self._callbacks[kind].append(callback)

    def _drain_events(self, sink: list | None) -> None:
        sp = self._md.sp
        n = int(sp.scal[K.S_NEV])
        if not n:
            return
        rows = sp.events[:n].copy()
        sp.scal[K.S_NEV] = 0
        for op_index, kind, value in rows:
            ev = PoolEvent(K.EVENT_NAMES.get(int(kind), str(kind)), int(op_index), int(value), self)
            if sink is not None:
                sink.append(ev)
            for cb in self._callbacks.get(ev.kind, ()):
                cb(ev)

    def _validate_trace(self, trace: np.ndarray):
        """Check an untrusted trace before any kernel runs it; returns
        (slots, ops, offsets, lengths) as the replay kernel takes them, and
        how many of its requests are not reads."""
        if not isinstance(trace, np.ndarray) or trace.dtype.names is None:
            raise ValueError("trace must be a numpy structured array of thinp.TRACE_DTYPE")
        if trace.ndim != 1:
            raise ValueError("trace must be one-dimensional")
        if trace.dtype != TRACE_DTYPE:
            missing = [n for n in TRACE_DTYPE.names if n not in trace.dtype.names]
            if missing:
                raise ValueError(f"trace has no {missing[0]!r} field (want thinp.TRACE_DTYPE)")
            conv = np.zeros(len(trace), dtype=TRACE_DTYPE)
            for name in TRACE_DTYPE.names:
                col = trace[name]
                if np.issubdtype(col.dtype, np.signedinteger) and len(col) and col.min() < 0:
                    raise ValueError(f"trace field {name!r} has a negative value at row {int(np.argmin(col))}")
                if not np.issubdtype(col.dtype, np.integer):
                    raise ValueError(f"trace field {name!r} must be integers, not {col.dtype}")
                conv[name] = col
            trace = conv
        md = self._md
        dev, ops, off, ln = trace["dev_id"], trace["op"], trace["offset"], trace["length"]
        lut_ids = np.array(sorted(md.slot_of), dtype=np.int64)
        lut_slots = np.array([md.slot_of[int(i)] for i in lut_ids], dtype=np.int64)
        slot_size = md.dv.size_sectors * SECTOR_SIZE
        err = np.zeros(4, dtype=np.int64)
        code = TK.prepare_trace(dev, ops, off, ln, lut_ids, lut_slots, slot_size, 0, _EMPTY_I64, err)
        if code == TK.T_OK:
            slots = np.full(1, max(0, err[3]), dtype=np.int64)  # one device: its slot once (see _cut)
        elif code == TK.T_MANY:
            # a second device from row err[1] on: every row's slot, the
            # rows before it the first device's, the rest checked from there
            at = int(err[1])
            slots = np.empty(len(trace), dtype=np.int64)
            slots[:at] = err[3]
            code = TK.prepare_trace(dev, ops, off, ln, lut_ids, lut_slots, slot_size, at, slots, err)
        if code != TK.T_OK:
            r = int(err[1])
            if code == TK.T_NO_DEVICE:
                raise errors.DeviceNotFoundError(f"trace row {r} names thin device {int(dev[r])}, which does not exist")
            if code == TK.T_BAD_OP:
                raise ValueError(f"trace row {r}: op {int(ops[r])} is not READ, WRITE or DISCARD")
            s = md.slot_of[int(dev[r])]
            raise ValueError(f"trace row {r}: {OP_NAME.get(int(ops[r]), ops[r])} of {int(ln[r])} bytes at offset "
                             f"{int(off[r])} runs past the end of thin device {int(dev[r])} "
                             f"({int(slot_size[s])} bytes)")
        writes = int(err[2])
        if self.read_only and writes:
            raise errors.ReadOnlyPoolError(f"{self.path}: pool is open read-only")
        return slots, ops, off, ln, writes

    def replay(self, trace: np.ndarray) -> ReplayResult:
        """Run a whole trace (``thinp.TRACE_DTYPE``) in numba.

        Returns the counters this run changed and the events it raised.  In
        queue mode a run that fills the pool queues the blocks that need a
        new data block (``nr_queued``) and runs the rest; :meth:`resize_data`
        runs them.  Out of metadata
        space, every request still runs block by block; if a block needed
        a new mapping (EIO), :class:`~thinp.errors.OutOfMetadataSpaceError`
        is raised at the end, its ``failed`` naming those requests and its
        ``result`` holding what this method would have returned.
        """
        self._check_open()
        if not self._trees_checked:
            raise errors.ThinpError(f"{self.path}: opened with check_trees=False; reopen to replay")
        slots, ops, off, ln, writes = self._validate_trace(trace)
        if writes:
            self._check_writable()
        before = self._md.sp.scal.copy()
        events: list = []
        try:
            self._submit(slots, ops, off, ln, _EMPTY_U8, 0, events)
        except errors.OutOfMetadataSpaceError as e:
            e.result = self._result(before, events)
            raise
        self._settle_index_pages(before)
        return self._result(before, events)

    def _settle_index_pages(self, before: np.ndarray) -> None:
        """After a replay that served the index more lookups (reads, writes
        into provisioned unshared blocks) than mapping changes: move the
        index to huge pages if it is dense (VolatileIndex.settle_pages; a
        growing index stays in small pages, see thinp.thin.index)."""
        md = self._md
        if md.huge:
            return
        d = md.sp.scal - before
        changes = int(d[K.C_PROVISIONED] + d[K.C_COW] + d[K.C_COW_OVERWRITES])
        lookups = int(d[K.C_READS] + d[K.C_WRITES]) - changes
        if lookups > changes + int(d[K.C_DISCARDED]):
            md.settle_pages(collapse=True)

    def _result(self, before: np.ndarray, events: list) -> ReplayResult:
        after = self._md.sp.scal
        return ReplayResult({name: int(after[i] - before[i]) for i, name in K.COUNTER_NAMES.items()}, events,
                            self.nr_queued)

    def _submit(self, slots, ops, off, ln, src, src_base, events) -> None:
        """Run a trace.  Out of data space in queue mode, each block
        needing a new data block (a write to an unmapped or shared block)
        is queued on its own, as dm-thin's process_bio_read_only hands such
        a bio to retry_on_resume; reads, writes into provisioned unshared
        blocks and discards run, before and after it."""
        if self._fail_mode:
            raise errors.PoolFailedError(f"{self.path}: pool is in fail mode ({self._fail_mode}); all I/O errors")
        self._run(slots, ops, off, ln, 0, -1, src, src_base, events)

    def _queue_block(self, slots, ops, off, ln, src, src_base, i: int, vb: int, key) -> None:
        """Queue block ``vb`` of request ``i`` for data space, at once (dm's
        retry_on_resume list): one row, the block's part of the write (the
        bio dm-thin's split at block boundaries makes), with its bytes in
        payload mode.  ``key`` names the request it came from, to count
        failed requests if it errors.  The row resumes at ``vb`` (its
        request was counted when first submitted), so its retry counts no
        new request, no bytes and no step towards the commit interval,
        whenever a commit or an abort snapshots or re-runs it."""
        bs = self.block_size
        lo = max(int(off[i]), vb * bs)
        hi = min(int(off[i]) + int(ln[i]), (vb + 1) * bs)
        part = src[lo - src_base:hi - src_base].copy() if len(src) else src
        self._queue.append([_cut(slots, i, i + 1).copy(), np.full(1, WRITE, dtype=ops.dtype),
                            np.full(1, lo, dtype=off.dtype), np.full(1, hi - lo, dtype=ln.dtype), 0, int(vb), part,
                            lo, key])

    def _run(self, slots, ops, off, ln, start, start_vb, src, src_base, events, key=None):
        """Drive the replay kernel, applying its mapping changes to dm's
        btree after each stop and committing when it asks.  Out of data
        space in queue mode, each block needing a new data block is queued
        (:meth:`_queue_block`; ``key`` names the request of a retried one)
        and the run goes on.

        Near dm's metadata reserve the kernel runs with a log short enough
        that its changes cannot reach the reserve, and then one change at a
        time, so that the commit dm-thin's alloc_data_block makes before a
        new block would use the reserve comes exactly before that block.
        Out of metadata space, the kernel runs with dm's read-only rules:
        each block needing a new mapping fails with EIO, the rest of the
        request still runs.  Raises OutOfMetadataSpaceError naming the
        requests that had a block fail so, after the whole run."""
        out = np.zeros(4, dtype=np.int64)
        # (pages faulted in only where a request fails: one byte a request
        # is 4 MiB for 4 M requests, which np.zeros may take from recycled
        # heap memory and clear with a memset)
        failed = memory.zeros(len(ops), np.uint8)
        gen = -1
        at_change = False  # stopped right before a mapping change (R_FLUSH)
        ahead = None  # the next stretch's kernel run, made during the last _apply_overlapped
        ramp = STRETCH_FIRST  # requests in the next stretch (see _stretch_end)
        if key is None:
            self._nr_runs += 1
            #: the trace a request-level run is on, and its run number (an
            #: abort drops what it queued from the failing request on)
            self._main = (ops, self._nr_runs)
        run = self._nr_runs
        while True:
            md = self._md
            if gen != self._commit_gen:
                # (again after a commit, which ends the record)
                rec = self._record_run(slots, ops, off, ln, start, start_vb)
                gen = self._commit_gen
            log, reserve = self._log, self._meta_reserve
            if self._step and not self._ooms:
                spare = self._dm_free_metadata() - self._meta_reserve
                if at_change and spare <= 0 and ops[start] == WRITE:
                    # dm-thin's alloc_data_block: "Let's commit before we
                    # use up the metadata reserve"; the commit's
                    # check_for_metadata_space decides the mode
                    self._reserve_commit(ops, start)
                    if self._ooms:
                        self._event(start, K.EV_OUT_OF_META, start_vb)
                        self._drain_events(events)
                        self._unzeroed_insert_fails(ops, start, int(self._md.dv.dev_id[_slot_at(slots, start)]), start_vb)
                    continue
                if spare >= META_PER_CHANGE:
                    # no META_PER_CHANGE-bounded change of these can reach the reserve
                    log = self._log[:min(LOG_ROWS, spare // META_PER_CHANGE)]
                else:
                    # the next change alone (it passed the check above)
                    log, reserve = self._log[:1 if at_change else 0], -1
            md.sp.scal[TK.S_READ_ONLY] = 1 if self._ooms else 0
            if ahead is not None:
                # the kernel already ran this stretch, into the other log
                # (see _apply_overlapped): its log and its events are now
                # the current ones
                r, out, ahead_events, end = ahead
                ahead = None
                self._log, self._log_alt = self._log_alt, self._log
                nev = len(ahead_events)
                md.sp.events[:nev] = ahead_events
                md.sp.scal[K.S_NEV] = nev
            else:
                out[3] = 0
                end = self._stretch_end(len(ops), start, ramp)
                r = TK.replay(md.sp, md.dv, *_upto(end, slots, ops, off, ln), start, start_vb, self._data, src,
                              src_base, out, log, failed)
            if r == TK.R_DONE and end < len(ops):
                r = TK.R_FLUSH  # the stretch's end, not the trace's (out: request ``end``, from its start)
            if (OVERLAP_APPLY and r == TK.R_FLUSH and out[3] > 0 and not self._step and not self._ooms and reserve == self._meta_reserve
                    and int(md.sp.scal[K.S_NEV]) == 0):
                ramp *= 2
                ok, ahead = self._apply_overlapped(slots, ops, off, ln, out, src, src_base, failed, ramp)
            else:
                if out[3] > 0:
                    ramp = STRETCH_FIRST  # (applied alone: the pipeline starts again)
                ok = self._apply_log(int(out[3]), reserve)
            self._drain_events(events)
            if not ok:
                ahead = None  # (the rollbacks below rebuild the index from the last commit)
            if not ok and self._mirror_r == -1:
                # dm-thin's alloc_data_block: free metadata is down to the
                # reserve, so it commits what came before this block (the
                # request's earlier blocks are bios of their own); that
                # commit's check_for_metadata_space decides the mode
                k = int(self._mirror_out[1])
                failed_op, failed_vb = int(self._log[k, 3] & TK.LOG_OP), int(self._log[k, 1])
                # (a discard allocates nothing: dm lets it into the reserve)
                start, start_vb = self._commit_prefix(ops, failed_op, failed_vb, failed, ops[failed_op] != DISCARD)
                self._step, at_change, gen = True, start_vb >= 0, -1
                if self._ooms:
                    self._event(failed_op, K.EV_OUT_OF_META, failed_vb)
                    self._drain_events(events)
                    self._unzeroed_insert_fails(ops, failed_op, int(self._log[k, 0]), failed_vb)
                continue
            if not ok or r == TK.R_NO_META:
                # the request whose mapping change dm could not make, and
                # every one after it, never happened
                failed_op = int(self._log[int(self._mirror_out[1]), 3] & TK.LOG_OP) if not ok else int(out[1])
                used = self._dm.nr_used_metadata_blocks
                self._metadata_failed()
                self._abort_transaction(ops, failed_op)
                raise errors.ReadOnlyPoolError(
                    f"{self.path}: out of metadata space ({used}/{self._dm.tm.nr_blocks} blocks) at request "
                    f"{failed_op}; the transaction was aborted (the pool is back at its last commit) and the "
                    "pool is read-only with needs_check set")
            at_change = r == TK.R_FLUSH
            if r == TK.R_DONE:
                rec[6] = True
                if key is None and self._queue and failed.any():
                    # a request of this run that failed a block and queued
                    # another is counted failed already
                    for q in self._queue:
                        if q[8][0] == run and failed[q[8][1]]:
                            self._failed_keys.add(q[8])
                # Freed blocks are passed down (punched) only after the commit
                # that frees them, as dm-thin's discard pt2 runs after commit:
                # until then the last commit still maps them, and a crash must
                # find their bytes intact.
                self._raise_eio(failed)
                return None
            start, start_vb = int(out[1]), int(out[2])
            if r == TK.R_FLUSH:
                continue
            if r == TK.R_NEED_COMMIT:
                self._periodic_commit(ops, start, start_vb if start_vb >= 0 else int(off[start]) // self.block_size,
                                      events)
                ramp = STRETCH_FIRST
                continue
            # R_NO_DATA, queue mode: this block waits for data space (dm's
            # retry_on_resume); the request's other blocks and the rest of
            # the trace go on
            self._queue_block(slots, ops, off, ln, src, src_base, start, start_vb,
                              (run, start) if key is None else key)
            start_vb += 1

    def _stretch_end(self, n: int, start: int, ramp: int) -> int:
        """One past the last request of the replay kernel's next stretch
        from request ``start`` of a trace of ``n``: ``ramp`` requests, and at
        most half of those left before the next commit and the trace's end
        (while that is over 2 STRETCH_FIRST), so that the log applied alone
        before either is short; the whole trace when the logs are not
        overlapped.  Only where the kernel stops moves: the log's rows go
        into dm's btree in the same order, each discard's in one log as
        before (a stretch ends between requests)."""
        if n - start <= STRETCH_FIRST or not OVERLAP_APPLY or self._step or self._ooms:
            return n
        scal = self._md.sp.scal
        left = n - start
        interval = int(scal[K.S_COMMIT_INTERVAL])
        if interval > 0:
            left = min(left, interval - int(scal[K.S_OPS_SINCE_COMMIT]))
        if left > 2 * STRETCH_FIRST:
            ramp = min(ramp, left // 2)
        return min(n, start + max(1, ramp))

    def _apply_overlapped(self, slots, ops, off, ln, out, src, src_base, failed, ramp):
        """Apply the full log of a kernel run that stopped at ``out`` (R_FLUSH)
        to dm's btree on a second thread while the replay kernel runs the
        trace's next stretch into the other log (both kernels release the
        GIL; they share no array: dm's btree and space maps against the
        index's nodes, counts and the data file).  dm's btree is still
        changed row by row in request order, exactly as :meth:`_apply_log`
        does; only the index runs ahead, as it does already within a log.
        The next stretch is ``ramp`` requests at most (_stretch_end).
        Returns (ok, (r, out, events, its end) of the next stretch's run).  Its
        events are set aside (the caller raises this log's first) and, if
        this log's changes ran out of metadata, the caller's rollback
        rebuilds the index from the last commit and runs those requests
        again, as it does for the rows after the failing one in a log."""
        md = self._md
        n = int(out[3])
        res = np.zeros(6, dtype=np.int64)
        if self._apply_thread is None or self._apply_pid != os.getpid():
            # (a forked child has not its parent's thread: it makes its own)
            from concurrent.futures import ThreadPoolExecutor

            self._apply_thread = ThreadPoolExecutor(1, thread_name_prefix="thinp-apply-log")
            self._apply_pid = os.getpid()
        # (rows may wait for their leaf's merge past this call: the next
        # apply_log call, which comes before anything reads the btree,
        # merges them unless it keeps them too; _apply_log_kernel)
        job = self._apply_thread.submit(self._apply_log_kernel, self._log, n, None, False, res, True)
        out2 = np.zeros(4, dtype=np.int64)
        end = self._stretch_end(len(ops), int(out[1]), ramp)
        try:
            r2 = TK.replay(md.sp, md.dv, *_upto(end, slots, ops, off, ln), int(out[1]), int(out[2]), self._data, src,
                           src_base, out2, self._log_alt, failed)
        except BaseException:
            if job.exception() is None:  # (its changes taken, then the rows it left waiting merged)
                self._apply_log_done(job.result(), res)
                self._apply_log(0)
            raise
        finally:
            job.exception()  # (waits for it; the apply's own exception is raised just below)
        got = job.result()
        nev = int(md.sp.scal[K.S_NEV])
        ahead_events = md.sp.events[:nev].copy()
        md.sp.scal[K.S_NEV] = 0
        return self._apply_log_done(got, res), (r2, out2, ahead_events, end)

    def _periodic_commit(self, ops, start: int, vb: int, events) -> None:
        """The commit the commit interval asks for before request ``start``
        of the trace whose ops are ``ops`` (its block ``vb`` next)."""
        md = self._md
        if self.read_only:
            # only reads run here, so only the commit interval can
            # ask, and a read-only pool has nothing to commit
            md.sp.scal[K.S_OPS_SINCE_COMMIT] = 0
        elif self._nothing_to_commit():
            # dm-thin's periodic commit runs only when the
            # transaction changed the metadata
            # (dm_pool_changed_this_transaction): overwrites of
            # provisioned, unshared blocks change nothing
            md.sp.scal[K.S_OPS_SINCE_COMMIT] = 0
        else:
            was = self._ooms
            self._commit(ops, start)
            if self._ooms and not was:
                self._event(start, K.EV_OUT_OF_META, vb)
                self._drain_events(events)

    def _raise_eio(self, failed) -> None:
        """Raise OutOfMetadataSpaceError if a request of this run had a block
        fail with EIO (needing a new mapping out of metadata space)."""
        if not failed.any():
            return
        idx = np.flatnonzero(failed & TK.FAILED_EIO)
        if len(idx):
            raise errors.OutOfMetadataSpaceError(
                f"{self.path}: out of metadata space ({self._dm.nr_used_metadata_blocks}/{self._dm.tm.nr_blocks} "
                f"blocks in use, reserve {self._meta_reserve}): {len(idx)} request(s) had a block needing a new "
                f"mapping fail with EIO, the first at request {int(idx[0])} (their other blocks ran, as did the "
                "other requests); the pool is read-only (no needs_check) until resize_metadata grows it",
                idx.astype(np.int64))

    def _dm_free_metadata(self) -> int:
        """Free metadata blocks as dm's metadata space map counts them:
        blocks freed since the last commit are not free until the next."""
        dm = self._dm
        return dm.tm.nr_blocks - self._meta_mark[0] - (dm.tm.nr_allocs - self._meta_mark[1])

    def _apply_log(self, n: int, reserve: int | None = None, tool: bool = False) -> bool:
        """Apply ``n`` logged mapping changes to dm's btree, in order; raise
        the metadata events they cross.  False when metadata ran out.
        ``tool``: as thin_restore builds trees (data bitmaps left to the
        commit), not as dm-thin's allocations shadow them."""
        if n == 0 and (self._waiting is None or not self._waiting[1][0]):
            return True
        res = np.zeros(6, dtype=np.int64)
        return self._apply_log_done(self._apply_log_kernel(self._log, n, reserve, tool, res), res)

    def _apply_log_kernel(self, log: np.ndarray, n: int, reserve: int | None, tool: bool, res: np.ndarray,
                          keep: bool = False) -> int:
        """_apply_log's kernel call alone (no Python state touched after the
        arguments are gathered, so a thread may run it: the kernel releases
        the GIL); :meth:`_apply_log_done` then, with ``log`` as ``self._log``.
        ``keep``: rows may still wait for their leaf's merge when it returns
        (_mirror.apply_log_kept); the next call merges them (or keeps them
        too), and nothing may read the btree before it."""
        dm = self._dm
        tm, dsm = dm.tm, dm.data_sm
        blocks = dm.bm.blocks
        if self._waiting is None:
            self._waiting = MIR.new_waiting(WAITING_LEAVES)
        return int(MIR.apply_log_kept(blocks.view(np.uint64), blocks.view(np.uint32), tm.count, tm.committed, tm.free,
                                      tm.txn, tm.kind, dm.bm.fresh, tm.st, dsm.count, dsm.committed, dsm.free,
                                      dsm.kernel_state(not tool), np.int64(dm.sb.data_mapping_root), log, np.int64(n),
                                      dm.split == "halves", np.int64(self._meta_reserve if reserve is None else reserve),
                                      np.int64(self._meta_lwm), self._meta_lwm_armed, np.int64(self._meta_mark[0]),
                                      np.int64(self._meta_mark[1]), res, self._waiting, keep))

    def _apply_log_done(self, r: int, res: np.ndarray) -> bool:
        dm = self._dm
        dm.data_sm.from_kernel()
        dm.sb.data_mapping_root = int(res[0])
        self._mirror_out = res
        self._mirror_r = r
        if res[2] >= 0:
            self._meta_lwm_armed = False
            self._event(int(self._log[res[2], 3] & TK.LOG_OP), K.EV_META_LOW_WATER, int(res[3]))
        if r == -2:  # reaching the reserve (-1) is not yet running out: dm commits there
            k = int(res[1])
            self._event(int(self._log[k, 3] & TK.LOG_OP), K.EV_OUT_OF_META, int(self._log[k, 1]))
        return r == 0

    def _unzeroed_insert_fails(self, ops, op: int, dev: int, vblock: int) -> None:
        """The reserve commit of dm-thin's alloc_data_block has just left the
        pool out of metadata space, its metadata read-only
        (set_pool_mode -> dm_pool_metadata_read_only), for the new block
        of request ``op`` at (``dev``, ``vblock``).  A provisioning write
        without zeroing (``skip_block_zeroing``) does not wait for the
        pool's prepared-mapping list: schedule_zero calls
        process_prepared_mapping at once, whose dm_thin_insert_block then
        fails (the block manager refuses writes, -EPERM), and
        metadata_operation_failed aborts the transaction, sets needs_check
        and puts the pool in PM_READ_ONLY.  With zeroing, or for a write
        breaking sharing (copied through the prepared list), the mapping
        fails with EIO and the pool stays out of metadata space (nothing
        to do here).  (drivers/md/dm-thin.c: alloc_data_block,
        provision_block, schedule_zero, process_prepared_mapping,
        metadata_operation_failed.)"""
        if self.zero_new_blocks or vblock < 0 or ops[op] != WRITE:
            return
        try:
            mapped = self._dm.lookup(dev, vblock) is not None
        except errors.ThinpError:
            return
        if mapped:
            return
        self._metadata_failed()
        self._abort_transaction(ops, op)
        raise errors.ReadOnlyPoolError(
            f"{self.path}: out of metadata space at request {op}; without block zeroing dm-thin inserts the new "
            "block's mapping at once into the metadata it has just made read-only: the insert failed, the "
            "transaction was aborted and the pool is read-only with needs_check set")

    def _commit_prefix(self, failed_ops, failed_op: int, failed_vb: int, failed: np.ndarray,
                       commit: bool = True) -> tuple[int, int]:
        """Commit exactly what came before block ``failed_vb`` of request
        ``failed_op`` of the trace whose ops are ``failed_ops`` (and every
        earlier run since the last commit), as dm-thin commits before it
        would use its metadata reserve: the request's earlier blocks are
        bios of their own, already mapped.  The pool reloads its last
        commit, runs that prefix again without data bytes (the data file
        already holds them) and with its mapping changes made in dm's
        btree, then commits.  Returns (request, vblock) to resume the trace
        at (vblock -1: the request's start); ``failed`` (the trace's failed
        bits) is set to what the prefix had.  With ``commit=False`` the pool
        only goes back to that point, uncommitted."""
        old_dm, old_md = self._dm, self._md
        mpath = os.path.join(self.path, "metadata")
        try:
            dm = PoolMetadata.open(mpath, split=old_dm.split, writable=True, check=False)
            md = _build_index(dm, self._side, leaked=self._leaked)
            if self._reserve_block is not None:
                # the last commit was a reserve commit: back to the state
                # right after it (its block uncounted again, the cursor on it)
                dm.data_sm.uncount(self._reserve_block)
                md.sp.scal[K.S_DCURSOR] = self._reserve_block
        except Exception as e:  # noqa: BLE001 - cannot reload: dm-thin fails the pool
            self.fail(f"could not reload the last commit: {e}")
            raise errors.PoolFailedError(f"{self.path}: pool is in fail mode ({self._fail_mode})") from None
        old_dm.bm.close()
        old_md.close()
        self._dm, self._md = dm, md
        self._meta_mark = (dm.nr_used_metadata_blocks, dm.tm.nr_allocs)
        md.sp.scal[_COUNTER_SLOTS] = self._commit_counters
        self._meta_lwm_armed = dm.nr_free_metadata_blocks > self._meta_lwm
        if self._timed_out:
            md.sp.scal[K.S_ERROR_IF_NO_SPACE] = 1
        # (blocks queued for data space stay queued: they changed nothing)
        out = np.zeros(4, dtype=np.int64)
        runs = []
        resume = (failed_op, -1)
        rest = 0  # bytes of the failing request past its committed blocks
        mine = -1  # the failing trace's run
        for slots, ops, off, ln, start, start_vb, _ in self._runs:
            if ops is failed_ops:
                mine = len(runs)
                op = int(ops[failed_op])
                bs = self.block_size
                head = failed_vb * bs - int(off[failed_op])
                if head > 0 and op != READ:
                    # the blocks before failed_vb: the request cut there
                    slots, ops, off = _cut(slots, 0, failed_op + 1), ops[:failed_op + 1], off[:failed_op + 1]
                    ln = ln[:failed_op + 1].copy()
                    rest = int(ln[failed_op]) - head
                    ln[failed_op] = head
                    resume = (failed_op, failed_vb)
                else:
                    slots, ops, off, ln = _cut(slots, 0, failed_op), ops[:failed_op], off[:failed_op], ln[:failed_op]
            runs.append([slots, ops, off, ln, start, start_vb, True])
        # the record is now the prefix: should the commit below fail, the
        # abort counts exactly it
        self._runs = [list(r) for r in runs]
        for j, rec in enumerate(runs):
            for slots, ops, off, ln, start, start_vb in _units(*rec[:6]):
                mask = np.zeros(len(ops), dtype=np.uint8)
                if j == mine:
                    first = start
                    failed[first:] = 0  # what the rolled-back requests set is undone
                while start < len(ops):
                    out[3] = 0
                    r = TK.replay(md.sp, md.dv, slots, ops, off, ln, start, start_vb, _EMPTY_U8,
                                  _EMPTY_U8, 0, out, self._log, mask)
                    if not self._apply_log(int(out[3])):
                        raise errors.ThinpError("internal: the committed prefix no longer fits its metadata")
                    if r in (TK.R_FLUSH, TK.R_NEED_COMMIT):
                        if r == TK.R_NEED_COMMIT:
                            md.sp.scal[K.S_OPS_SINCE_COMMIT] = 0
                        start, start_vb = int(out[1]), int(out[2])
                        continue
                    if r == TK.R_NO_DATA:   # queued the first time too: skipped
                        start, start_vb = int(out[1]), int(out[2]) + 1
                        continue
                    break
                if j == mine:
                    failed[first:len(ops)] = mask[first:]
        if rest:
            # the rest of the cut request resumes at failed_vb, uncounted
            md.sp.scal[K.C_BYTES_DISCARD if failed_ops[failed_op] == DISCARD else K.C_BYTES_WRITTEN] += rest
        md.sp.scal[K.S_NEV] = 0  # their events were raised by the first run
        if commit:
            self._reserve_commit(failed_ops, failed_op)
        return resume

    def _reserve_commit(self, failed_ops, failed_op: int) -> None:
        """dm-thin's alloc_data_block at the metadata reserve: the bio's data
        block is allocated first (dm_pool_alloc_data_block), then "Let's
        commit before we use up the metadata reserve", so that commit holds
        the block counted and not yet mapped.  If the commit leaves the
        pool out of metadata space, the mapping is never inserted
        (process_prepared_mapping_fail) and the block stays counted for
        good, a leak the Rust thin_check reports as non-fatal (0.9.0 does
        not look); otherwise the block is the one the write then maps,
        which the kernel run does by allocating it again (next-fit from
        the cursor left at it)."""
        md, dm = self._md, self._dm
        p = int(K.alloc_data(md.sp))
        if p >= 0:
            dm.data_sm.inc(np.array([p], dtype=np.int64))
        try:
            self._commit(failed_ops, failed_op)
        finally:
            # (a failed commit reloaded the last one, which lacks the block)
            if p >= 0 and not self._failed:
                if self._ooms:
                    blocks, extra = self._leaked
                    self._leaked = (np.append(blocks, p), np.append(extra, 1))
                else:
                    K.unalloc_data(self._md.sp, p)
                    self._dm.data_sm.uncount(p)
                    self._reserve_block = p

    def _record_run(self, slots, ops, off, ln, start, start_vb) -> list:
        """Remember a kernel run until the next commit (see
        :meth:`_abort_transaction`).  Runs of small traces that finished
        (one per ThinDevice request) are merged into one copy now and then,
        so the record stays about 25 bytes a request."""
        runs = self._runs
        if len(runs) >= self._merge_at:
            # the oldest finished runs that started at a request's start:
            # merging them reorders nothing (an unfinished run, a trace
            # queued for data space, stays whole)
            # (a queued block's retry resumes inside its request: its runs
            # merge into one record of their own, resumed row by row, and
            # the runs after them merge as before)
            k = 0
            while k < len(runs) and runs[k][6]:
                k += 1
            k -= _merge_retries(runs, k)
            floor = max((i + 1 for i in range(k) if not isinstance(runs[i][5], int) or runs[i][5] >= 0), default=0)
            j = k  # ... that are small (merged ones are left alone, so each request is copied once)
            while j > floor and len(runs[j - 1][1]) - runs[j - 1][4] < 64:
                j -= 1
            if k - j > 1:
                done = runs[j:k]
                total = sum(len(r[1]) - r[4] for r in done)
                tr = np.empty(total, dtype=TRACE_DTYPE)
                sl = np.empty(total, dtype=np.int64)
                at = 0
                for r in done:
                    m = len(r[1]) - r[4]
                    sl[at:at + m] = _cut(r[0], r[4])  # (one entry: broadcast)
                    tr["op"][at:at + m] = r[1][r[4]:]
                    tr["offset"][at:at + m] = r[2][r[4]:]
                    tr["length"][at:at + m] = r[3][r[4]:]
                    at += m
                runs[j:k] = [[sl, tr["op"], tr["offset"], tr["length"], 0, -1, True]]
            self._merge_at = len(runs) + 256
        rec = [slots, ops, off, ln, int(start), int(start_vb), False]
        runs.append(rec)
        return rec

    def _abort_transaction(self, failed_ops, failed_op: int) -> None:
        """Roll back to the last commit, as dm-thin's abort_transaction
        reloads its metadata: dm's in-core state is reopened from the file,
        the index rebuilt from its leaves.  The counters become what dm
        would have counted: the last commit's, plus the requests of the
        kernel runs since then up to (not including) request ``failed_op``
        of the trace whose ops are ``failed_ops``.  They are counted by
        running those requests again, without data bytes, on an index
        rebuilt from the last commit (the same state they first ran on), so
        every counter comes out exactly as that prefix alone would give."""
        old_dm, old_md = self._dm, self._md
        oods = bool(old_md.sp.scal[TK.S_OODS])
        mpath = os.path.join(self.path, "metadata")
        try:
            dm = PoolMetadata.open(mpath, split=old_dm.split, writable=False, check=False)
            scratch = _build_index(dm, self._side, leaked=self._leaked)
            if self._reserve_block is not None:
                # the requests first ran right after a reserve commit
                scratch.sp.scal[K.S_DCURSOR] = self._reserve_block
        except Exception as e:  # noqa: BLE001 - cannot reload: dm-thin fails the pool
            self.fail(f"could not reload the last commit after aborting: {e}")
            return
        old_dm.bm.close()
        self._dm = dm
        idx = _COUNTER_SLOTS
        scratch.sp.scal[idx] = self._commit_counters
        out = np.zeros(4, dtype=np.int64)
        runs, self._runs = self._runs, []
        for rec in runs:
            for slots, ops, off, ln, start, start_vb in _units(*rec[:6]):
                if ops is failed_ops:
                    slots, ops, off, ln = _cut(slots, 0, failed_op), ops[:failed_op], off[:failed_op], ln[:failed_op]
                if start >= len(ops):
                    continue
                failed = np.zeros(len(ops), dtype=np.uint8)
                while True:
                    out[3] = 0
                    r = TK.replay(scratch.sp, scratch.dv, slots, ops, off, ln, start, start_vb,
                                  _EMPTY_U8, _EMPTY_U8, 0, out, self._log, failed)
                    if r in (TK.R_FLUSH, TK.R_NEED_COMMIT):
                        # a full log, or a commit the first run found nothing
                        # to write for (a real one would have ended the record)
                        if r == TK.R_NEED_COMMIT:
                            scratch.sp.scal[K.S_OPS_SINCE_COMMIT] = 0
                        start, start_vb = int(out[1]), int(out[2])
                        continue
                    if r == TK.R_NO_DATA:   # a block queued for data space: skipped
                        start, start_vb = int(out[1]), int(out[2]) + 1
                        continue
                    break
        counters = scratch.sp.scal[idx].copy()
        scratch.close()
        try:
            if self._reserve_block is not None:
                # the last commit holds a reserve commit's block counted and
                # unmapped: after dm's abort nothing will map it (a leak)
                blocks, extra = self._leaked
                self._leaked = (np.append(blocks, self._reserve_block), np.append(extra, 1))
                self._reserve_block = None
            md = _build_index(dm, self._side, leaked=self._leaked)
        except Exception as e:  # noqa: BLE001
            self.fail(f"could not reload the last commit after aborting: {e}")
            return
        md.sp.scal[idx] = counters
        old_md.close()
        self._md = md
        self._meta_mark = (dm.nr_used_metadata_blocks, dm.tm.nr_allocs)
        # the pool goes read-only (set_pool_mode's error_retry_list): the
        # queued blocks of requests that ran fail, with ENOSPC while the
        # pool is out of data space, else EIO; those the failing request
        # and the rest of its trace queued never happened
        main_ops, main_run = self._main
        if failed_ops is not None and failed_ops is main_ops:
            self._queue = [q for q in self._queue if not (q[8][0] == main_run and q[8][1] >= failed_op)]
        self._error_queue(nospc=oods)

    def _event(self, op_index: int, kind: int, value: int) -> None:
        sp = self._md.sp
        n = int(sp.scal[K.S_NEV])
        if n < sp.events.shape[0]:
            sp.events[n] = (op_index, kind, value)
            sp.scal[K.S_NEV] = n + 1
        else:
            sp.scal[K.S_DROPPED_EVENTS] += 1

    def _drain_stops(self, pending, k: int) -> bool:
        """Whether draining the queue stops before ``pending[k]``: the pool
        failed, or went out of metadata space, when the blocks not yet
        retried go back to the queue and fail as dm's error_retry_list
        fails them (ENOSPC while out of data space, else EIO)."""
        if self._fail_mode or self._failed or self._ooms:
            self._queue = pending[k:] + self._queue
            self._error_queue(nospc=bool(self._md.sp.scal[TK.S_OODS]))
            return True
        return False

    def _drain_queue(self) -> None:
        """Retry the queued blocks, in order, once the pool has data space
        again (dm's requeue on resume or on leaving out-of-data-space); a
        block still without space queues again.  Each was counted as part
        of its request when first submitted, and its row resumes inside
        that request (:meth:`_queue_block`), so its retry counts only what
        it does (a block written, provisioned...), not another request
        (it is a step towards the commit interval, as the pool's work); a
        request whose retried block fails is counted failed once, however
        many of its blocks fail.  Should a commit inside the retry leave
        the pool out of metadata space, the blocks not yet retried fail
        with EIO (dm's error_retry_list, and process_bio_read_only for
        those already on its deferred list)."""
        if self._draining:
            return
        self._draining = True
        try:
            # (a commit inside a retry may bring space back for blocks that
            # queued again meanwhile: go round while the pool has space)
            while self._queue and not self._md.sp.scal[TK.S_OODS]:
                pending, self._queue = self._queue, []
                for k, (slots, ops, off, ln, start, start_vb, src, src_base, key) in enumerate(pending):
                    if self._drain_stops(pending, k):
                        return
                    # a retried block is a step towards the commit interval
                    # (the work of the pool's time), though no new request
                    scal = self._md.sp.scal
                    if 0 < scal[K.S_COMMIT_INTERVAL] <= scal[K.S_OPS_SINCE_COMMIT]:
                        self._periodic_commit(ops, 0, start_vb, None)
                        if self._drain_stops(pending, k):
                            return
                    self._md.sp.scal[K.S_OPS_SINCE_COMMIT] += 1
                    nf = int(self._md.sp.scal[K.C_FAILED_OPS])
                    self._drained = True
                    try:
                        self._run(slots, ops, off, ln, start, start_vb, src, src_base, None, key=key)
                    except errors.OutOfMetadataSpaceError:
                        pass  # its block failed with EIO (counted): the request was told at submit time
                    except BaseException:
                        if not (self._fail_mode or self._failed):
                            self._queue = pending[k + 1:] + self._queue
                        else:
                            # an abort in this retry, or the pool failed: the
                            # blocks not retried yet, this one included, fail
                            # as the queue did
                            self._queue = pending[k:] + self._queue
                            self._error_queue(nospc=False)
                        raise
                    finally:
                        sp = self._md.sp
                        if int(sp.scal[K.C_FAILED_OPS]) > nf:
                            if key in self._failed_keys:
                                sp.scal[K.C_FAILED_OPS] = nf
                            else:
                                self._failed_keys.add(key)
        finally:
            self._draining = False
            if not self._queue:
                self._failed_keys.clear()

    def _error_queue(self, nospc: bool) -> int:
        """Fail every queued block (dm's error_retry_list): counted in
        ``nr_enospc`` (``nospc``) or ``nr_eio``, each request with a failed
        block once in ``nr_failed_requests``.  Returns the blocks failed."""
        sp = self._md.sp
        n = sum(len(q[0]) - q[4] for q in self._queue)
        sp.scal[K.C_ENOSPC if nospc else K.C_EIO] += n
        sp.scal[K.C_FAILED_OPS] += len({q[8] for q in self._queue} - self._failed_keys)
        self._queue.clear()
        if not self._draining:
            self._failed_keys.clear()
        return n

    _draining = False
    _drained = False
    _main: tuple = (None, -1)
    #: the data block the last commit, a reserve commit, holds counted and
    #: unmapped (the write it was for maps it next), or None
    _reserve_block = None
    _nr_runs = 0

    @property
    def nr_queued(self) -> int:
        """Blocks (the bios of a request, split at block boundaries as
        dm-thin splits them) waiting for data space (queue_if_no_space)."""
        return sum(len(q[0]) - q[4] for q in self._queue)

    def expire_no_space_timeout(self) -> int:
        """What dm-thin's ``no_space_timeout`` does when it fires (the
        dm_thin_pool module parameter, :data:`NO_SPACE_TIMEOUT_S` seconds
        after the pool went out of data space in queue mode): every queued
        block fails with ENOSPC (counted in ``nr_enospc``, its request in
        ``nr_failed_requests``), and the pool behaves as with
        ``error_if_no_space`` (the status line says so) until it has data
        space again.  thinp has no clock of its own: a caller that models
        time calls this when its clock passes the timeout.  Returns the
        number of blocks failed; 0 and no change unless the pool is out of
        data space in queue mode."""
        self._check_open()
        sp = self._md.sp
        if not sp.scal[TK.S_OODS] or sp.scal[K.S_ERROR_IF_NO_SPACE]:
            return 0
        sp.scal[K.S_ERROR_IF_NO_SPACE] = 1
        self._timed_out = True
        return self._error_queue(nospc=True)

    def _data_space_back(self) -> None:
        """The pool leaves out-of-data-space (dm's set_pool_mode(PM_WRITE)):
        the table's error_if_no_space comes back, queued blocks run."""
        md = self._md
        md.sp.scal[TK.S_OODS] = 0
        if self._timed_out:
            self._timed_out = False
            md.sp.scal[K.S_ERROR_IF_NO_SPACE] = 1 if md.sb.options & OPT_ERROR_IF_NO_SPACE else 0
        self._drain_queue()

    _timed_out = False

    def resize_data(self, data_size) -> None:
        """Grow the data device (never shrink); runs queued writes."""
        self._check_writable()
        md = self._md
        sb = md.sb
        bs = self.block_size
        nbytes = parse_size(data_size, what="data_size")
        nr = nbytes // bs
        if nr < sb.nr_data_blocks:
            raise ValueError(f"resize_data: {nbytes} bytes ({nr} blocks) would shrink the pool "
                             f"from {sb.nr_data_blocks} blocks; dm-thin only grows")
        if nr == sb.nr_data_blocks:
            return
        if self._ooms:
            raise errors.ReadOnlyPoolError(
                f"{self.path}: the pool is out of metadata space; grow the metadata (resize_metadata) first")
        self.commit()
        self._dm.resize_data(nr)
        md.resize_data(nr)
        # the data file grows with it
        if self._data_mm is not None:
            self._data = _EMPTY_U8
            try:
                self._data_mm.close()
            except BufferError:
                pass
            self._data_mm = None
        os.ftruncate(self._data_fd, nr * bs)
        if self.payload:
            self._data_mm = mmap.mmap(self._data_fd, nr * bs, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._data = np.frombuffer(self._data_mm, dtype=np.uint8)
        self.commit()
        self._data_space_back()

    def resize_metadata(self, metadata_size) -> None:
        """Grow the metadata device (never shrink), as ``lvextend
        --poolmetadatasize`` does: the metadata file grows, dm's metadata
        space map with it, and the reserve (min(4096 blocks, 10%)) and the
        metadata low water mark (min(1024 blocks, 25%)) are recomputed."""
        self._check_writable()
        nbytes = parse_size(metadata_size, what="metadata_size")
        nr = nbytes // METADATA_BLOCK_SIZE
        cur = self.nr_metadata_blocks
        if nr < cur:
            raise ValueError(f"resize_metadata: {nbytes} bytes ({nr} blocks) would shrink the metadata "
                             f"from {cur} blocks; dm-thin only grows")
        if nr > MAX_METADATA_BLOCKS:
            raise ValueError(f"metadata_size {nbytes} bytes exceeds dm-thin's limit of "
                             f"{MAX_METADATA_BLOCKS * METADATA_BLOCK_SIZE} bytes")
        if nr == cur:
            return
        self.commit()
        # dm-thin's maybe_resize_metadata_dev: growing it takes the pool out
        # of out-of-metadata-space mode (the commit below checks again)
        self._ooms = self._step = False
        self._dm_op(self._dm.resize_metadata, nr)
        self._meta_reserve = min(4096, nr // 10)
        self._meta_lwm = min(1024, nr // 4)
        self._meta_lwm_armed = self._dm.nr_free_metadata_blocks > self._meta_lwm
        self.commit()

    # --------------------------------------------------------------- status
    @property
    def out_of_metadata_space(self) -> bool:
        """True in dm-thin's out-of-metadata-space mode: free metadata is
        down to the reserve, so requests that need a new mapping fail (EIO)
        and pool messages are refused, while reads, discards and writes into
        provisioned unshared blocks go on.  ``status()`` shows ``ro`` without
        needs_check; :meth:`resize_metadata` returns the pool to ``rw``."""
        return self._ooms

    def counters(self) -> dict:
        """The pool's I/O counters (bytes written and copied, CoW copies,
        provisioned and discarded blocks...), as ``status().counters`` holds
        them, without counting metadata blocks: cheap enough to call after
        every request.  Failed I/O: ``nr_requests`` counts every request
        run, whether it failed or not (``bytes_written`` and the like count
        what the requests asked for); ``nr_failed_requests`` counts those
        with at least one failed block, ``nr_enospc`` the blocks failed for
        want of data space (``error_if_no_space``, or queued and failed by
        :meth:`expire_no_space_timeout`, or when the pool went read-only
        while out of data space) and ``nr_eio`` those failed out of
        metadata space (or queued when the pool went read-only after
        leaving it).  A queued
        block's retry counts no new request.  After a metadata failure (abort,
        needs_check) they are those of the requests before the failing
        one: that request and the rest of its trace did not run."""
        self._check_open()
        sp = self._md.sp
        return {name: int(sp.scal[i]) for i, name in K.COUNTER_NAMES.items()}

    def status(self, *, observer: bool = False) -> PoolStatus:
        """The pool's status.  A pool opened read-only reports ``ro``, as a dm
        pool with the ``read_only`` feature does; ``observer=True`` reports
        the mode the pool itself is in (what ``thinp pool status`` shows
        after opening read-only just to look)."""
        self._check_open()
        md, dm = self._md, self._dm
        sp, sb = md.sp, md.sb
        needs_check = bool(dm.sb.flags & FLAG_NEEDS_CHECK)
        if self._fail_mode:
            mode = "fail"
        elif self._failed or needs_check or self._ooms or (self.read_only and not observer):
            # dm reports PM_OUT_OF_METADATA_SPACE as read-only too
            mode = "ro"
        elif sp.scal[TK.S_OODS] or self._queue:
            mode = "out_of_data_space"
        else:
            mode = "rw"
        if sb.options & OPT_IGNORE_DISCARD:
            discard = "ignore_discard"
        elif sb.options & OPT_PASSDOWN:
            discard = "discard_passdown"
        else:
            discard = "no_discard_passdown"
        counters = self.counters()
        nm = dm.tm.nr_blocks
        return PoolStatus(
            transaction_id=dm.sb.trans_id,
            # dm-thin counts free metadata less its reserve (min(4096 blocks,
            # 10%), kept for commits), so status shows the reserve as used
            used_metadata_blocks=min(nm, dm.nr_used_metadata_blocks + self._meta_reserve),
            total_metadata_blocks=nm,
            used_data_blocks=self.nr_used_data_blocks,
            total_data_blocks=sb.nr_data_blocks,
            held_root=dm.sb.held_root or None,
            mode=mode,
            discard=discard,
            # (after no_space_timeout fired, dm's pool shows error_if_no_space
            # until it leaves out-of-data-space)
            no_space=("error_if_no_space" if sb.options & OPT_ERROR_IF_NO_SPACE or self._timed_out
                      else "queue_if_no_space"),
            needs_check=needs_check,
            metadata_low_watermark=self._meta_lwm,
            data_block_size=self.block_size,
            counters=counters,
        )


def _units(slots, ops, off, ln, start, start_vb):
    """The kernel calls that re-run one record of :attr:`ThinPool._runs`:
    the record itself, or, for merged retries of queued blocks
    (``start_vb`` an array: each row's block), each row resumed inside its
    request."""
    if isinstance(start_vb, np.ndarray):
        for i in range(len(ops)):
            yield _cut(slots, i, i + 1), ops[i:i + 1], off[i:i + 1], ln[i:i + 1], 0, int(start_vb[i])
    else:
        yield slots, ops, off, ln, start, start_vb


def _merge_retries(runs: list, k: int) -> int:
    """Merge each stretch of finished one-row retry runs (a queued block
    resumed inside its request, :meth:`ThinPool._queue_block`) among
    ``runs[:k]`` into one record whose ``start_vb`` is the array of the
    rows' blocks; returns by how much ``k`` shrank."""
    def retry(r):  # (a merged record joins again while small, so each row is copied about once)
        if isinstance(r[5], np.ndarray):
            return len(r[1]) < 64
        return r[5] >= 0 and len(r[1]) == 1 and r[4] == 0

    i, shrunk = 0, 0
    while i < k - shrunk:
        if not retry(runs[i]):
            i += 1
            continue
        e = i
        while e < k - shrunk and retry(runs[e]):
            e += 1
        if e - i > 1:
            part = runs[i:e]
            vbs = np.concatenate([np.atleast_1d(np.asarray(r[5], dtype=np.int64)) for r in part])
            runs[i:e] = [[np.concatenate([r[0] for r in part]), np.concatenate([r[1] for r in part]),
                          np.concatenate([r[2] for r in part]), np.concatenate([r[3] for r in part]), 0, vbs, True]]
            shrunk += e - i - 1
        i += 1
    return shrunk


OP_NAME = {READ: "read", WRITE: "write", DISCARD: "discard"}


class ThinDevice:
    """A thin volume: byte-granular I/O split per data block as dm-thin does.

    Implements the :class:`thinp.blockdev.BlockDevice` protocol.
    """

    def __init__(self, pool: ThinPool, dev_id: int):
        self.pool = pool
        self.dev_id = int(dev_id)

    def __repr__(self) -> str:
        return f"<ThinDevice {self.dev_id} of {self.pool.path!r}>"

    def __eq__(self, other):
        return isinstance(other, ThinDevice) and other.pool is self.pool and other.dev_id == self.dev_id

    def __hash__(self):
        return hash((id(self.pool), self.dev_id))

    @property
    def _s(self) -> int:
        self.pool._check_open()
        return self.pool._slot(self.dev_id)

    def _kernel_slot(self) -> int:
        """Slot for a kernel walk: refused on a pool opened without the tree check."""
        if not self.pool._trees_checked:
            raise errors.ThinpError(f"{self.pool.path}: opened with check_trees=False; reopen to read mappings")
        return self._s

    @property
    def size(self) -> int:
        return int(self.pool._md.dv.size_sectors[self._s]) * SECTOR_SIZE

    def resize(self, size) -> None:
        """Set the device's virtual size (``lvextend``/``lvreduce`` on a thin
        LV; dm-thin takes the size from the table line).  Shrinking refuses
        while a block past the new end is mapped: discard it first.  The
        mapping tree's depth follows the size, so a new size needing another
        level is refused (NotSupportedError) rather than rebuilt."""
        pool = self.pool
        pool._check_writable()
        s = self._s
        nbytes = parse_size(size, what="size")
        if nbytes <= 0 or nbytes % SECTOR_SIZE:
            raise ValueError(f"size {nbytes} bytes must be a positive multiple of 512")
        nr_blocks = -(-nbytes // pool.block_size)
        dv = pool._md.dv
        if TK.levels_for(nr_blocks) != int(dv.levels[s]):
            raise errors.NotSupportedError(
                f"thin device {self.dev_id}: {format_size(nbytes)} needs a mapping tree of another depth "
                f"than its {format_size(self.size)}; create a new device and copy")
        h = self.highest_mapped_block()
        if h is not None and h >= nr_blocks:
            raise ValueError(f"thin device {self.dev_id}: block {h} is mapped beyond the new size "
                             f"{format_size(nbytes)}; discard it first")
        dv.nr_blocks[s] = nr_blocks
        dv.size_sectors[s] = nbytes // SECTOR_SIZE
        dv.changed[s] = 1
        pool.commit()

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    @property
    def payload(self) -> bool:
        return self.pool.payload

    @property
    def mapped_blocks(self) -> int:
        return int(self.pool._md.dv.mapped[self._s])

    def _range(self, offset, length, what) -> tuple[int, int]:
        for name, v in (("offset", offset), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{what}: {name} must be a non-negative integer, not {v!r}")
        offset, length = int(offset), int(length)
        if offset + length > self.size:
            raise ValueError(f"{what} of {length} bytes at offset {offset} runs past the end of "
                             f"thin device {self.dev_id} ({self.size} bytes)")
        return offset, length

    def _one(self, op, offset, length, src=_EMPTY_U8, src_base=0) -> ReplayResult:
        pool = self.pool
        s = self._kernel_slot()
        row = np.zeros(1, dtype=TRACE_DTYPE)
        row[0] = (self.dev_id, op, offset, length)
        before = pool._md.sp.scal.copy()
        events: list = []
        try:
            pool._submit(np.array([s], dtype=np.int64), row["op"], row["offset"], row["length"], src, src_base,
                         events)
        except errors.OutOfMetadataSpaceError as e:
            e.result = pool._result(before, events)
            raise
        return pool._result(before, events)

    def write(self, offset: int, data) -> ReplayResult:
        """Write ``data`` (bytes-like; or an int length in accounting mode) at
        ``offset``.  Raises :class:`~thinp.errors.NoSpaceError` when the pool
        is out of data space in ``error_if_no_space`` mode, and
        :class:`~thinp.errors.OutOfMetadataSpaceError` (EIO) when a block
        needed a new mapping out of metadata space.  The write is split per
        block as dm-thin splits the bio, so every block that needs no new
        allocation is still written, before or after the failing one."""
        pool = self.pool
        pool._check_writable()
        if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
            if pool.payload:
                raise ValueError("a payload pool stores bytes: pass data, not a length")
            length = int(data)
            src = _EMPTY_U8
        else:
            try:
                src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
            except TypeError:
                raise ValueError(f"write data must be bytes-like or an int length, not {type(data).__name__}") from None
            length = len(src)
        offset, length = self._range(offset, length, "write")
        enospc = pool._md.sp.scal[K.C_ENOSPC]
        res = self._one(WRITE, offset, length, src if pool.payload else _EMPTY_U8, offset)
        if pool._md.sp.scal[K.C_ENOSPC] != enospc:
            raise errors.NoSpaceError(f"thin device {self.dev_id}: no free data block in pool {pool.path} "
                                      f"({pool.nr_data_blocks} blocks, error_if_no_space)")
        return res

    def discard(self, offset: int, length: int) -> ReplayResult:
        """Unmap the whole blocks inside ``[offset, offset + length)``."""
        self.pool._check_writable()
        offset, length = self._range(offset, length, "discard")
        return self._one(DISCARD, offset, length)

    def read(self, offset: int, length: int) -> bytes:
        """Read bytes; unmapped blocks read as zeros.  In accounting mode the
        bytes of mapped blocks are not stored, so they read as zeros too."""
        offset, length = self._range(offset, length, "read")
        pool = self.pool
        if length == 0:
            return b""
        self._one(READ, offset, length)
        if not pool.payload:
            return bytes(length)    # calloc'd: a big read touches no memory
        out = np.zeros(length, dtype=np.uint8)
        bs = pool.block_size
        b0 = offset // bs
        b1 = (offset + length - 1) // bs
        pblocks, _ = self._map(b0, b1 - b0 + 1)
        data = pool._data
        for k, p in enumerate(pblocks):
            if p < 0:
                continue
            vb = b0 + k
            lo = max(offset, vb * bs)
            hi = min(offset + length, (vb + 1) * bs)
            src = int(p) * bs + (lo - vb * bs)
            out[lo - offset:hi - offset] = data[src:src + (hi - lo)]
        return out.tobytes()

    def _map(self, vb0: int, count: int):
        md = self.pool._md
        s = self._kernel_slot()
        pb = np.empty(count, dtype=np.int64)
        tm = np.empty(count, dtype=np.int64)
        TK.map_range(md.meta, int(md.dv.root[s]), int(md.dv.levels[s]), vb0, count, pb, tm)
        return pb, tm

    def lookup(self, vblock: int) -> tuple[int, int] | None:
        """(pblock, time) of one virtual block, or None if unmapped."""
        nr = int(self.pool._md.dv.nr_blocks[self._s])
        if not 0 <= int(vblock) < nr:
            raise ValueError(f"vblock {vblock} outside 0..{nr - 1}")
        pb, tm = self._map(int(vblock), 1)
        return None if pb[0] < 0 else (int(pb[0]), int(tm[0]))

    def mapping(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vblock, pblock, time) arrays of every mapping, by vblock."""
        md = self.pool._md
        s = self._kernel_slot()
        n = int(md.dv.mapped[s])
        v = np.empty(n, dtype=np.int64)
        p = np.empty(n, dtype=np.int64)
        t = np.empty(n, dtype=np.int64)
        got = TK.collect_mappings(md.meta, int(md.dv.root[s]), int(md.dv.levels[s]), v, p, t)
        return v[:got], p[:got], t[:got]

    def highest_mapped_block(self) -> int | None:
        md = self.pool._md
        s = self._s
        if not self.pool._trees_checked:
            return _highest_vblock(self.pool._dm, self.dev_id)
        else:
            h = int(TK.highest_mapped(md.meta, int(md.dv.root[s]), int(md.dv.levels[s])))
        return None if h < 0 else h

    def status(self) -> ThinStatus:
        spb = self.pool.block_size // SECTOR_SIZE
        h = self.highest_mapped_block()
        return ThinStatus(self.mapped_blocks * spb, None if h is None else (h + 1) * spb - 1)

    @property
    def creation_time(self) -> int:
        return int(self.pool._md.dv.create_time[self._s])

    @property
    def snapshotted_time(self) -> int:
        return int(self.pool._md.dv.snap_time[self._s])

    @property
    def transaction_id(self) -> int:
        """The pool's transaction id when the device last changed (dm's details)."""
        self._s
        return int(self.pool._dm.details(self.dev_id).transaction_id)

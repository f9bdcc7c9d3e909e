"""A pure-Python model of dm-thin as thinp's [pool] issue states it.

This is the oracle the differential tests hold the numba engine to.  It is
written to be obviously correct, not fast: plain dicts and sets, one data
block at a time, no trees, no bitmaps, no sharing of anything.

State
-----
time                 pool time; every snapshot bumps it (dm's ``pmd->time``)
devices              dev_id -> :class:`Device`; a device's ``map`` is a plain
                     dict ``vblock -> (pblock, time)``
held                 the held metadata snapshot: dev_id -> {vblock: pblock} as
                     of ``reserve_metadata_snap``, or None
refs                 pblock -> number of mappings naming it (every device's,
                     plus the held snapshot's).  A block is in use iff it is
                     in ``refs``.  Note: this is NOT the engine's refcount,
                     which counts mapping-tree *leaves* (devices sharing a
                     leaf count once); both are zero at the same moments.
pending              blocks freed in the open transaction: not allocatable
                     until the next commit
cursor               next-fit allocation cursor (kept across commits, 0
                     when the pool is opened, as dm's sm_disk_open)
data                 pblock -> bytearray, the data file (payload pools only)
queue                blocks waiting for data space (queue_if_no_space): one
                     ``(dev_id, offset, length, data)`` row each, the block's
                     part of its write
oods                 the pool is out_of_data_space

Rules (each is a sentence of the issue):

* an unmapped block reads as zeros and allocates nothing;
* a first write provisions a block stamped with the pool time; a partial
  write zeroes the rest when zeroing is on (counted), a full-block write
  skips zeroing;
* a write to a block with ``snapshotted_time > mapping time`` allocates a new
  block and copies the old one first unless the write covers the block.  The
  test is by time alone, so after one side breaks sharing the other side
  copies once more (dm-thin's documented imprecision);
* discard unmaps only whole blocks inside the range;
* allocation is next-fit from the cursor; a block freed in a transaction is
  reused only after a commit.  When nothing is allocatable but some blocks
  are pending, the pool commits and retries (``ThinPool._run``);
* the engine commits after every message, every ``commit_interval``
  requests (checked before a request starts), on close, and around a resize;
* the low water mark fires once when free blocks fall to it and re-arms when
  a block is freed (or the pool grows) and free blocks are above it again;
* out of data space (dm's PM_OUT_OF_DATA_SPACE, until a commit finds free
  space or ``resize_data`` grows the pool) no allocation is tried: a block
  write needing a new block fails with ``error_if_no_space`` (counted in
  ``nr_enospc``; the request once in ``nr_failed_requests``), otherwise that
  block waits in the queue; either way the request goes on with its next
  block, and reads, writes into provisioned unshared blocks and discards
  run.  Leaving out-of-data-space retries the queue in order (a retried
  block counts toward the commit interval, not as a request); a block still
  without space waits again.  A device with queued blocks cannot be
  deleted (dm-thin: EBUSY for an open device).  Closing the pool drops the
  queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field

READ, WRITE, DISCARD = 0, 1, 2

#: The counters the model keeps, named as ``PoolStatus.counters`` names them.
#: (The engine also counts metadata shadows and allocations; the model has no
#: metadata, so those two are not compared.)
COUNTERS = (
    "nr_provisioned", "nr_cow_copies", "bytes_copied", "nr_zeroed", "nr_discarded", "nr_freed",
    "nr_block_reads", "nr_block_writes", "nr_unmapped_reads", "nr_enospc", "nr_requests",
    "bytes_written", "bytes_read", "bytes_discarded", "nr_overwrites", "nr_cow_overwrites",
    "nr_passdown", "nr_failed_requests",
)


class ModelError(Exception):
    """A call the engine must refuse; ``kind`` names the thinp.errors class."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class Device:
    dev_id: int
    size: int  # bytes
    nr_blocks: int
    creation_time: int
    snapshotted_time: int
    map: dict = field(default_factory=dict)  # vblock -> (pblock, time)


class ThinModel:
    def __init__(self, nr_data_blocks: int, block_size: int, *, zero_new_blocks: bool = True,
                 discard_passdown: bool = True, error_if_no_space: bool = False, payload: bool = False,
                 low_water_mark: int = 0, commit_interval: int = 0, ignore_discard: bool = False):
        self.nr_data_blocks = nr_data_blocks
        self.block_size = block_size
        self.zero = zero_new_blocks
        self.passdown = discard_passdown
        self.error_if_no_space = error_if_no_space
        self.payload = payload
        self.low_water_mark = low_water_mark
        self.commit_interval = commit_interval
        self.ignore_discard = ignore_discard

        self.time = 0
        self.transaction_id = 0
        self.devices: dict[int, Device] = {}
        self.held: dict[int, dict[int, int]] | None = None
        self.refs: dict[int, int] = {}
        self.pending: set[int] = set()
        self.cursor = 0
        self.data: dict[int, bytearray] = {}
        self.queue: list[tuple] = []
        self.oods = False
        self.draining = False
        self.lwm_armed = nr_data_blocks > low_water_mark
        self.ops_since_commit = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.events: list[tuple[str, int]] = []  # (kind, value) of data-space events

    # ---------------------------------------------------------------- space
    @property
    def used(self) -> int:
        return len(self.refs)

    @property
    def free(self) -> int:
        return self.nr_data_blocks - self.used

    def _ref(self, p: int) -> None:
        self.refs[p] = self.refs.get(p, 0) + 1

    def _unref(self, p: int, passdown: bool = False) -> None:
        self.refs[p] -= 1
        if self.refs[p] == 0:
            del self.refs[p]
            self.pending.add(p)
            self.counters["nr_freed"] += 1
            if passdown:
                self.counters["nr_passdown"] += 1
                if self.payload:
                    # the engine punches a hole in the data file; nobody can
                    # read the block before it is reallocated, and it is
                    # punched before the commit that makes it allocatable
                    self.data.pop(p, None)
            if not self.lwm_armed and self.free > self.low_water_mark:
                self.lwm_armed = True

    def _alloc(self):
        """Next-fit from the cursor.  Returns a block, or None when nothing is
        free even after committing the blocks freed in this transaction."""
        if self.oods:
            return None
        while True:
            for k in range(self.nr_data_blocks):
                b = (self.cursor + k) % self.nr_data_blocks
                if b not in self.refs and b not in self.pending:
                    self.refs[b] = 1
                    self.cursor = (b + 1) % self.nr_data_blocks
                    if self.lwm_armed and self.free <= self.low_water_mark:
                        self.lwm_armed = False
                        self.events.append(("low_water_mark", self.free))
                    return b
            if not self.pending:
                return None
            self.commit()

    def _block(self, p: int) -> bytearray:
        if p not in self.data:
            self.data[p] = bytearray(self.block_size)
        return self.data[p]

    # --------------------------------------------------------------- commit
    def commit(self) -> None:
        self.pending.clear()
        self.ops_since_commit = 0
        if self.oods and self.free > 0:
            self.oods = False
            self._drain_queue()

    # -------------------------------------------------------------- devices
    def _device(self, dev_id: int) -> Device:
        if dev_id not in self.devices:
            raise ModelError("DeviceNotFoundError", f"thin device {dev_id} does not exist")
        return self.devices[dev_id]

    def create_thin(self, dev_id: int, size: int) -> None:
        if dev_id in self.devices:
            raise ModelError("DeviceExistsError", f"thin device {dev_id} already exists")
        nr = -(-size // self.block_size)
        self.devices[dev_id] = Device(dev_id, size, nr, self.time, self.time)
        self.commit()

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        origin = self._device(origin_id)
        if dev_id in self.devices:
            raise ModelError("DeviceExistsError", f"thin device {dev_id} already exists")
        self.time += 1
        snap = Device(dev_id, origin.size, origin.nr_blocks, self.time, self.time, dict(origin.map))
        origin.snapshotted_time = self.time
        for p, _t in snap.map.values():
            self._ref(p)
        self.devices[dev_id] = snap
        self.commit()

    def delete(self, dev_id: int) -> None:
        dev = self._device(dev_id)
        if any(q[0] == dev_id for q in self.queue):
            # a device with I/O waiting for space is open: dm-thin refuses (EBUSY)
            raise ModelError("PoolBusyError", f"thin device {dev_id} has queued I/O")
        del self.devices[dev_id]
        for p, _t in dev.map.values():
            self._unref(p)
        self.commit()

    def set_transaction_id(self, old: int, new: int) -> None:
        if old != self.transaction_id:
            raise ModelError("TransactionIdMismatchError", f"current is {self.transaction_id}, not {old}")
        self.transaction_id = new
        self.commit()

    def reserve_metadata_snap(self) -> None:
        if self.held is not None:
            raise ModelError("DeviceExistsError", "a metadata snapshot is already held")
        self.commit()
        self.held = {d.dev_id: {vb: p for vb, (p, _t) in d.map.items()} for d in self.devices.values()}
        for m in self.held.values():
            for p in m.values():
                self._ref(p)
        self.commit()

    def release_metadata_snap(self) -> None:
        if self.held is None:
            raise ModelError("ThinpError", "no metadata snapshot is held")
        held, self.held = self.held, None
        for m in held.values():
            for p in m.values():
                self._unref(p)
        self.commit()

    def resize_data(self, nr_data_blocks: int) -> None:
        if nr_data_blocks < self.nr_data_blocks:
            raise ModelError("ValueError", "dm-thin only grows")
        if nr_data_blocks == self.nr_data_blocks:
            return
        self.commit()
        self.nr_data_blocks = nr_data_blocks
        if self.free > self.low_water_mark:
            self.lwm_armed = True
        self.commit()
        self.oods = False
        self._drain_queue()

    def reopen(self, commit: bool = True) -> None:
        """close() then ThinPool.open(): what survives is what was committed
        (close commits); queued I/O, counters and the out-of-space flag are
        per-open state and go."""
        if commit:
            self.commit()
        self.queue = []
        self.oods = False
        self.cursor = 0  # dm_sm_disk_open starts the cursor at block 0
        self.pending.clear()
        self.ops_since_commit = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.lwm_armed = self.free > self.low_water_mark

    # ------------------------------------------------------------------ I/O
    def submit(self, requests: list) -> None:
        """Run requests ``(dev_id, op, offset, length, data)`` as one batch,
        as ``ThinPool.replay`` (``data`` is bytes for a payload write, else
        None).  Requests are checked by the caller."""
        self._run(requests)

    def _drain_queue(self) -> None:
        if self.draining:
            return
        self.draining = True
        try:
            while self.queue and not self.oods:
                pending, self.queue = self.queue, []
                for dev_id, lo, n, piece in pending:
                    while self.commit_interval > 0 and self.ops_since_commit >= self.commit_interval:
                        self.commit()
                    self.ops_since_commit += 1
                    self._write_or_wait(self.devices[dev_id], lo // self.block_size, lo, n, piece)
        finally:
            self.draining = False

    @property
    def nr_queued(self) -> int:
        return len(self.queue)

    def _write_or_wait(self, dev, vb, lo, n, piece) -> bool:
        """One block of a write: True if written, else it failed for want of
        data space (error mode: False) or went to the queue (None)."""
        if self._write_block(dev, vb, lo - vb * self.block_size, n, piece):
            self.counters["nr_block_writes"] += 1
            return True
        if not self.oods:
            self.oods = True
            self.events.append(("out_of_data_space", vb))
        if self.error_if_no_space:
            self.counters["nr_enospc"] += 1
            return False
        self.queue.append((dev.dev_id, lo, n, piece))
        return None

    def _run(self, requests):
        bs = self.block_size
        resume_vb = -1
        for i in range(len(requests)):
            # (again after a commit whose retried blocks reached the interval)
            while self.commit_interval > 0 and self.ops_since_commit >= self.commit_interval and resume_vb < 0:
                self.commit()
            dev_id, op, off, ln, data = requests[i]
            if ln <= 0:
                resume_vb = -1
                continue
            dev = self.devices[dev_id]
            first_vb = off // bs
            last_vb = (off + ln - 1) // bs
            resuming = resume_vb >= 0
            if resuming:
                first_vb = resume_vb
            else:
                self.counters["nr_requests"] += 1
                self.ops_since_commit += 1
                self.counters[{WRITE: "bytes_written", READ: "bytes_read", DISCARD: "bytes_discarded"}[op]] += ln
            resume_vb = -1
            failed = False
            if op == WRITE:
                for vb in range(first_vb, last_vb + 1):
                    lo = max(off, vb * bs)
                    hi = min(off + ln, (vb + 1) * bs)
                    piece = None if data is None else data[lo - off:hi - off]
                    if self._write_or_wait(dev, vb, lo, hi - lo, piece) is False:
                        self.counters["nr_failed_requests"] += not failed
                        failed = True
            elif op == READ:
                for vb in range(first_vb, last_vb + 1):
                    self.counters["nr_block_reads"] += 1
                    if vb not in dev.map:
                        self.counters["nr_unmapped_reads"] += 1
            else:
                begin = -(-off // bs)  # whole blocks only
                end = (off + ln) // bs
                if self.ignore_discard:
                    end = begin
                for vb in range(begin, end):
                    if vb in dev.map:
                        p, _t = dev.map.pop(vb)
                        self.counters["nr_discarded"] += 1
                        self._unref(p, passdown=self.passdown)
        return None

    def _write_block(self, dev: Device, vb: int, in_block: int, n: int, piece) -> bool:
        """One per-block write; False when no data block could be had."""
        bs = self.block_size
        full = in_block == 0 and n == bs
        if vb in dev.map:
            p, t = dev.map[vb]
            if dev.snapshotted_time <= t:
                self._put(p, in_block, piece)
                return True
            # shared (by dm-thin's time test): break sharing
            p2 = self._alloc()
            if p2 is None:
                return False
            if full:
                self.counters["nr_cow_overwrites"] += 1
            else:
                self.counters["nr_cow_copies"] += 1
                self.counters["bytes_copied"] += bs
                if self.payload:
                    self.data[p2] = bytearray(self._block(p))
            dev.map[vb] = (p2, self.time)
            self._unref(p)
            self._put(p2, in_block, piece)
            return True
        p2 = self._alloc()
        if p2 is None:
            return False
        if full:
            self.counters["nr_overwrites"] += 1
        elif self.zero:
            self.counters["nr_zeroed"] += 1
            if self.payload:
                self.data[p2] = bytearray(bs)
        # with zeroing off, a partial write leaves whatever the block held
        dev.map[vb] = (p2, self.time)
        self.counters["nr_provisioned"] += 1
        self._put(p2, in_block, piece)
        return True

    def _put(self, p: int, in_block: int, piece) -> None:
        if self.payload and piece is not None:
            self._block(p)[in_block:in_block + len(piece)] = piece

    # ------------------------------------------------------ single requests
    def write(self, dev_id: int, offset: int, data) -> bool:
        """``dev.write``: True when some block failed with ENOSPC (the engine
        raises NoSpaceError after the request)."""
        length = data if isinstance(data, int) else len(data)
        before = self.counters["nr_enospc"]
        self.submit([(dev_id, WRITE, offset, length, None if isinstance(data, int) or not self.payload else bytes(data))])
        return self.counters["nr_enospc"] != before

    def discard(self, dev_id: int, offset: int, length: int) -> None:
        self.submit([(dev_id, DISCARD, offset, length, None)])

    def read(self, dev_id: int, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        self.submit([(dev_id, READ, offset, length, None)])
        return self.contents(dev_id, offset, length)

    def contents(self, dev_id: int, offset: int, length: int) -> bytes:
        """What the device reads as, without counting a request."""
        if not self.payload:
            return bytes(length)
        bs = self.block_size
        dev = self.devices[dev_id]
        out = bytearray()
        pos = offset
        while pos < offset + length:
            vb = pos // bs
            hi = min(offset + length, (vb + 1) * bs)
            if vb in dev.map:
                p = dev.map[vb][0]
                blk = self.data.get(p, bytes(bs))
                out += blk[pos - vb * bs:hi - vb * bs]
            else:
                out += bytes(hi - pos)
            pos = hi
        return bytes(out)

    # --------------------------------------------------------------- checks
    def holders(self) -> dict[int, int]:
        """pblock -> number of mappings naming it, recomputed from scratch
        (devices, plus the held snapshot).  Must equal ``refs``."""
        out: dict[int, int] = {}
        for d in self.devices.values():
            for p, _t in d.map.values():
                out[p] = out.get(p, 0) + 1
        for m in (self.held or {}).values():
            for p in m.values():
                out[p] = out.get(p, 0) + 1
        return out

    def mapped_sectors(self, dev_id: int) -> int:
        return len(self.devices[dev_id].map) * (self.block_size // 512)

    def highest_mapped_sector(self, dev_id: int):
        m = self.devices[dev_id].map
        if not m:
            return None
        return (max(m) + 1) * (self.block_size // 512) - 1

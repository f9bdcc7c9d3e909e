"""Differential tests: the numba engine against the pure-Python model.

A Hypothesis state machine drives a real :class:`thinp.ThinPool` and
:class:`tests.reference.thin_model.ThinModel` through the same random
sequence of messages (create_thin, create_snap of any device at any depth,
delete, set_transaction_id, reserve/release_metadata_snap), I/O (write, read,
discard, batch replay), commits, close/reopen (sometimes through a read-only
open), running out of data space in tiny pools (both no-space modes) and
resize_data.  After every step it compares everything the model knows:

* every device's mapping, exactly: (vblock, pblock, time), mapped blocks,
  thin status line, creation and snapshotted times; exact pblocks hold
  because both sides allocate next-fit from the same cursor and commit at
  the same points;
* the pool's time, transaction id, status fields and every data counter,
  low-water-mark and out-of-data-space events, and queued requests;
* the data allocation bitmap (in use or freed in the open transaction);
* the engine's refcounts, by what dm-thin's design guarantees (see
  :meth:`PoolMachine.check_refcounts`);
* in payload mode, the bytes of every block in use, and every read.

Two machines run: payload pools (real bytes through chains of snapshots)
and accounting pools (``write(offset, length)``, reads are zeros).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thinp import DISCARD, READ, TRACE_DTYPE, WRITE, errors
from thinp.thin import ThinPool
from tests.reference.thin_model import COUNTERS, ModelError, ThinModel

BS = 64 * 1024
SECTOR = 512
IDS = st.one_of(st.integers(0, 9), st.just((1 << 24) - 1))
#: device sizes: mostly 1-8 MiB (one leaf), any multiple of 512 so the last
#: block may be partial; sometimes big enough for a two- or three-level tree
#: (a leaf maps 512 blocks, 32 MiB)
SIZES = st.one_of(
    st.integers(2048, 16384).map(lambda s: s * SECTOR),
    st.integers(2048, 16384).map(lambda s: s * SECTOR),
    st.integers(2048, 16384).map(lambda s: s * SECTOR),
    st.sampled_from([32 * 1024 * 1024 + 512, 100 * 1024 * 1024, 20 << 30]),
)
MAX_DEVICES = 10
#: Every message commits, and a commit msyncs the metadata file: on a busy
#: disk that, not the engine, is what a run waits for.  Pools go in tmpfs
#: when the machine has one (the semantics under test are the same).
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

ERROR_CLASSES = {
    "DeviceExistsError": errors.DeviceExistsError,
    "DeviceNotFoundError": errors.DeviceNotFoundError,
    "PoolBusyError": errors.PoolBusyError,
    "TransactionIdMismatchError": errors.TransactionIdMismatchError,
    "ThinpError": errors.ThinpError,
    "ValueError": ValueError,
}


def pattern(seed: int, length: int) -> bytes:
    """Bytes that differ at every offset and for every seed, cheaply."""
    x = (np.arange(length, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B1)) * np.uint64(2654435761)
    return ((x >> np.uint64(13)) & np.uint64(0xFF)).astype(np.uint8).tobytes()


def io_range(data, size: int, *, discard: bool = False) -> tuple[int, int]:
    """An (offset, length) inside a device of ``size`` bytes, concentrated on
    its first few blocks (so snapshots and writes overlap) and its last."""
    nr = -(-size // BS)
    kinds = ["block", "partial", "span", "tail", "any", "empty"]
    if discard:
        kinds += ["aligned", "whole"]
    kind = data.draw(st.sampled_from(kinds), label="io kind")
    vb = data.draw(st.integers(0, min(nr, 6) - 1), label="vblock")
    if kind == "tail":
        vb = nr - 1
    base = vb * BS
    if kind in ("block", "tail"):
        return base, min(BS, size - base)
    if kind == "partial":
        lo = data.draw(st.integers(0, min(BS, size - base) - 1), label="in block")
        return base + lo, data.draw(st.integers(1, min(BS, size - base) - lo), label="length")
    if kind == "span":
        lo = data.draw(st.integers(0, min(BS, size - base) - 1), label="in block")
        return base + lo, data.draw(st.integers(1, min(3 * BS, size - base - lo)), label="length")
    if kind == "empty":
        return base, 0
    if kind == "aligned":
        return base, min(data.draw(st.integers(1, 4)) * BS, size - base)
    if kind == "whole":
        return 0, size
    off = data.draw(st.integers(0, size - 1), label="offset")
    return off, data.draw(st.integers(0, min(3 * BS, size - off)), label="length")


class PoolMachine(RuleBasedStateMachine):
    payload = True

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="thinp-diff-", dir=TMP_ROOT)
        self.path = f"{self.tmp}/pool"
        self.pool: ThinPool | None = None
        self.model: ThinModel | None = None
        self.events: list = []
        self.seed = 0
        self.reached: dict = {}

    def teardown(self):
        # what this run reached, for --hypothesis-show-statistics
        if self.model is not None:
            for name in ("nr_cow_copies", "nr_cow_overwrites", "nr_enospc", "nr_freed", "nr_discarded",
                         "nr_zeroed", "nr_passdown"):
                if self.reached.get(name):
                    event(f"reached {name}")
            for name in ("queued", "low_water_mark", "out_of_data_space", "reopen", "snap of snap",
                         "resize drained"):
                if self.reached.get(name):
                    event(f"reached {name}")
        try:
            if self.pool is not None:
                self.pool.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- setup
    @initialize(
        nr_data_blocks=st.integers(2, 12),
        error_if_no_space=st.booleans(),
        zero_new_blocks=st.booleans(),
        discard_passdown=st.booleans(),
        low_water_mark=st.integers(0, 4),
        commit_interval=st.sampled_from([0, 0, 0, 1, 2, 3, 5]),
        ignore_discard=st.sampled_from([False] * 7 + [True]),
        first_size=SIZES,
    )
    def create_pool(self, nr_data_blocks, error_if_no_space, zero_new_blocks, discard_passdown,
                    low_water_mark, commit_interval, ignore_discard, first_size):
        self.pool = ThinPool.create(
            self.path, data_size=nr_data_blocks * BS, block_size="64KiB", payload=self.payload,
            error_if_no_space=error_if_no_space, zero_new_blocks=zero_new_blocks,
            discard_passdown=discard_passdown, low_water_mark=low_water_mark,
            commit_interval=commit_interval, ignore_discard=ignore_discard, max_thins=16)
        self.model = ThinModel(
            nr_data_blocks, BS, payload=self.payload, error_if_no_space=error_if_no_space,
            zero_new_blocks=zero_new_blocks, discard_passdown=discard_passdown,
            low_water_mark=low_water_mark, commit_interval=commit_interval, ignore_discard=ignore_discard)
        self._listen()
        # start with a device so that I/O can begin at the first step
        self.pool.create_thin(0, first_size)
        self.model.create_thin(0, first_size)

    def _listen(self):
        for kind in ("low_water_mark", "out_of_data_space"):
            self.pool.on_event(kind, lambda ev: self.events.append((ev.kind, ev.value)))

    def both(self, engine_call, model_call):
        """Run one call on both sides: both raise the same error, or neither."""
        try:
            want = model_call()
        except ModelError as e:
            with pytest.raises(ERROR_CLASSES[e.kind]):
                engine_call()
            return None, e
        return engine_call(), want

    # ------------------------------------------------------------- messages
    @precondition(lambda self: len(self.model.devices) < MAX_DEVICES)
    @rule(dev_id=IDS, size=SIZES, via_message=st.booleans())
    def create_thin(self, dev_id, size, via_message):
        if via_message:
            call = lambda: self.pool.message(f"create_thin {dev_id} {size}")  # noqa: E731
        else:
            call = lambda: self.pool.create_thin(dev_id, size)  # noqa: E731
        dev, _ = self.both(call, lambda: self.model.create_thin(dev_id, size))
        if dev is not None:
            assert dev.dev_id == dev_id and dev.size == size

    @precondition(lambda self: len(self.model.devices) < MAX_DEVICES)
    @rule(dev_id=IDS, data=st.data(), via_message=st.booleans())
    def create_snap(self, dev_id, data, via_message):
        existing = sorted(self.model.devices)
        origin = data.draw(st.sampled_from(existing) if existing and data.draw(st.integers(0, 9)) else IDS,
                           label="origin")
        if via_message:
            call = lambda: self.pool.message(f"create_snap {dev_id} {origin}")  # noqa: E731
        else:
            call = lambda: self.pool.create_snap(dev_id, origin)  # noqa: E731
        if origin in self.model.devices and self.model.devices[origin].creation_time > 0:
            self.reached["snap of snap"] = True
        self.both(call, lambda: self.model.create_snap(dev_id, origin))

    @rule(data=st.data(), via_message=st.booleans())
    def delete(self, data, via_message):
        existing = sorted(self.model.devices)
        dev_id = data.draw(st.sampled_from(existing) if existing and data.draw(st.integers(0, 9)) else IDS,
                           label="dev_id")
        if via_message:
            call = lambda: self.pool.message(f"delete {dev_id}")  # noqa: E731
        else:
            call = lambda: self.pool.delete(dev_id)  # noqa: E731
        self.both(call, lambda: self.model.delete(dev_id))

    @rule(which=st.sampled_from(["set_transaction_id", "wrong_transaction_id",
                                 "reserve_metadata_snap", "release_metadata_snap"]),
          new=st.integers(0, 1 << 40))
    def other_message(self, which, new):
        if which.endswith("transaction_id"):
            old = self.model.transaction_id + (which == "wrong_transaction_id")
            self.both(lambda: self.pool.message(f"set_transaction_id {old} {new}"),
                      lambda: self.model.set_transaction_id(old, new))
        else:
            self.both(lambda: self.pool.message(which), getattr(self.model, which))

    # ------------------------------------------------------------------ I/O
    def _pick(self, data):
        return data.draw(st.sampled_from(sorted(self.model.devices)), label="device")

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data())
    def write(self, data):
        dev_id = self._pick(data)
        off, ln = io_range(data, self.model.devices[dev_id].size)
        self._write(dev_id, off, ln)

    def _write(self, dev_id, off, ln):
        dev = self.pool.device(dev_id)
        if self.payload:
            self.seed += 1
            payload = pattern(self.seed, ln)
        else:
            payload = ln
        enospc = self.model.write(dev_id, off, payload)
        if enospc:
            with pytest.raises(errors.NoSpaceError) as e:
                dev.write(off, payload)
            assert e.value.errno == 28  # ENOSPC
        else:
            dev.write(off, payload)

    # writes are what the engine is about: give them more of the steps
    @precondition(lambda self: self.model.devices)
    @rule(data=st.data())
    def write_again(self, data):
        self.write(data)

    @precondition(lambda self: any(d.map for d in self.model.devices.values()))
    @rule(data=st.data(), full=st.booleans())
    def write_mapped(self, data, full):
        """Overwrite a mapped block, where snapshots make CoW happen."""
        dev_id = data.draw(st.sampled_from(sorted(i for i, d in self.model.devices.items() if d.map)))
        mdev = self.model.devices[dev_id]
        vb = data.draw(st.sampled_from(sorted(mdev.map)), label="mapped vblock")
        end = min((vb + 1) * BS, mdev.size)
        if full:
            off, ln = vb * BS, end - vb * BS
        else:
            off = data.draw(st.integers(vb * BS, end - 1), label="offset")
            ln = data.draw(st.integers(1, end - off), label="length")
        self._write(dev_id, off, ln)

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), extra=st.integers(0, 2), full=st.booleans())
    def fill_pool(self, data, extra, full):
        """Write the free blocks' worth (and ``extra`` more) of unmapped blocks
        of one device: out of data space, in either mode."""
        dev_id = self._pick(data)
        mdev = self.model.devices[dev_id]
        todo = self.model.free + extra
        for vb in range(mdev.nr_blocks):
            if todo <= 0:
                break
            if vb in mdev.map:
                continue
            todo -= 1
            end = min((vb + 1) * BS, mdev.size)
            off = vb * BS if full else vb * BS + 512
            if off < end:
                self._write(dev_id, off, end - off)

    @precondition(lambda self: len(self.model.devices) < MAX_DEVICES and self.model.devices)
    @rule(dev_id=IDS, data=st.data())
    def snapshot_existing(self, dev_id, data):
        origin = self._pick(data)
        self.both(lambda: self.pool.create_snap(dev_id, origin), lambda: self.model.create_snap(dev_id, origin))

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data())
    def read(self, data):
        dev_id = self._pick(data)
        dev = self.pool.device(dev_id)
        off, ln = io_range(data, dev.size)
        got = dev.read(off, ln)
        want = self.model.read(dev_id, off, ln)
        assert len(got) == ln
        assert got == want, f"read of {ln} bytes at {off} of device {dev_id} differs"

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data())
    def discard(self, data):
        dev_id = self._pick(data)
        dev = self.pool.device(dev_id)
        off, ln = io_range(data, dev.size, discard=True)
        self.model.discard(dev_id, off, ln)
        dev.discard(off, ln)

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), n=st.integers(1, 8))
    def replay(self, data, n):
        """The batch path: a trace across devices, run in one numba call."""
        trace = np.zeros(n, dtype=TRACE_DTYPE)
        reqs = []
        for k in range(n):
            dev_id = self._pick(data)
            op = data.draw(st.sampled_from([WRITE, WRITE, READ, DISCARD]), label="op")
            off, ln = io_range(data, self.model.devices[dev_id].size, discard=op == DISCARD)
            trace[k] = (dev_id, op, off, ln)
            reqs.append((dev_id, op, off, ln, None))
        before = dict(self.model.counters)
        self.model.submit(reqs)
        res = self.pool.replay(trace)
        for name in COUNTERS:
            assert res.counters[name] == self.model.counters[name] - before[name], name
        assert res.nr_queued == self.model.nr_queued

    # -------------------------------------------------------- pool lifecycle
    @rule()
    def commit(self):
        self.pool.commit()
        self.model.commit()

    @rule(read_only_first=st.booleans(), commit_first=st.booleans())
    def reopen(self, read_only_first, commit_first):
        was_rw = not (self.model.oods or self.model.queue)
        if commit_first:
            self.pool.commit()
            self.model.commit()
            line = str(self.pool.status())
        self.pool.close()  # commits
        self.model.commit()
        self.pool = None
        if read_only_first:
            ro = ThinPool.open(self.path, read_only=True)
            try:
                st_ro = ro.status()
                assert st_ro.mode == "ro"
                self.check_devices(ro)
                for dev_id, mdev in sorted(self.model.devices.items()):
                    for vb in sorted(mdev.map)[:2]:
                        ln = min(BS, mdev.size - vb * BS)
                        assert ro.device(dev_id).read(vb * BS, ln) == self.model.contents(dev_id, vb * BS, ln)
                with pytest.raises(errors.ReadOnlyPoolError):
                    ro.commit()
                if self.model.devices:
                    d = min(self.model.devices)
                    with pytest.raises(errors.ReadOnlyPoolError):
                        ro.device(d).write(0, b"x" if self.payload else 1)
            finally:
                ro.close()
        self.pool = ThinPool.open(self.path)
        self.model.reopen(commit=False)
        self.reached["reopen"] = True
        self._listen()
        if was_rw and commit_first:
            # (a close right after a commit changes nothing)
            assert str(self.pool.status()) == line
        # every mapped block, read back through the public API (both sides
        # count these requests)
        for dev_id, mdev in sorted(self.model.devices.items()):
            dev = self.pool.device(dev_id)
            for vb in sorted(mdev.map):
                lo = vb * BS
                ln = min(BS, dev.size - lo)
                assert dev.read(lo, ln) == self.model.read(dev_id, lo, ln)

    @precondition(lambda self: self.model.oods or self.model.queue)
    @rule(grow=st.integers(1, 4))
    def resize_when_out_of_space(self, grow):
        self.resize_data(grow)

    @rule(grow=st.integers(-1, 8))
    def resize_data(self, grow):
        if grow < 0:
            with pytest.raises(ValueError, match="only grows"):
                self.pool.resize_data((self.model.nr_data_blocks - 1) * BS)
            return
        nr = self.model.nr_data_blocks + grow
        queued = self.model.nr_queued
        self.model.resize_data(nr)
        self.pool.resize_data(nr * BS)
        if queued > self.model.nr_queued:
            self.reached["resize drained"] = True

    # ------------------------------------------------------------ invariants
    def check_devices(self, pool):
        assert pool.devices() == sorted(self.model.devices)
        assert pool.time == self.model.time
        for dev_id, mdev in self.model.devices.items():
            dev = pool.device(dev_id)
            v, p, t = dev.mapping()
            want = sorted(mdev.map.items())
            assert list(zip(v.tolist(), p.tolist(), t.tolist())) == [(vb, pb, tm) for vb, (pb, tm) in want], \
                f"device {dev_id} mapping"
            assert dev.mapped_blocks == len(mdev.map)
            assert dev.size == mdev.size
            assert dev.creation_time == mdev.creation_time
            assert dev.snapshotted_time == mdev.snapshotted_time
            ts = dev.status()
            assert ts.mapped_sectors == self.model.mapped_sectors(dev_id)
            assert ts.highest_mapped_sector == self.model.highest_mapped_sector(dev_id)

    @invariant()
    def check_everything(self):
        if self.pool is None:
            return
        m, pool = self.model, self.pool
        for name, value in m.counters.items():
            if value:
                self.reached[name] = True
        for kind, _ in m.events:
            self.reached[kind] = True
        if m.queue:
            self.reached["queued"] = True
        self.check_devices(pool)
        s = pool.status()
        assert s.transaction_id == m.transaction_id
        assert s.used_data_blocks == m.used
        assert s.total_data_blocks == m.nr_data_blocks
        assert (s.held_root is None) == (m.held is None)
        assert s.mode == ("out_of_data_space" if (m.oods or m.queue) else "rw")
        assert s.discard == ("ignore_discard" if m.ignore_discard else
                             "discard_passdown" if m.passdown else "no_discard_passdown")
        assert s.no_space == ("error_if_no_space" if m.error_if_no_space else "queue_if_no_space")
        assert not s.needs_check
        for name in COUNTERS:
            assert s.counters[name] == m.counters[name], name
        assert pool.nr_queued == m.nr_queued
        assert self.events == m.events
        # bit set = in use or freed in this transaction (next-fit skips both)
        bits = pool.data_bitmap()
        assert [i for i in range(m.nr_data_blocks) if bits[i]] == sorted(set(m.refs) | m.pending)
        self.check_refcounts()
        if self.payload:
            for p in m.refs:
                got = bytes(pool._data[p * BS:(p + 1) * BS])
                assert got == bytes(m.data.get(p, bytes(BS))), f"data block {p}"

    def check_refcounts(self):
        """The engine counts references from mapping-tree *leaves* (dm-thin's
        design: a snapshot shares its origin's nodes, so the two devices'
        mappings of a block cost one reference until one side shadows the
        leaf).  The model counts mappings.  What must agree:

        * a block is referenced iff some device (or the held metadata
          snapshot) maps it: both counts are zero at the same moments;
        * the engine's count never exceeds the model's: every leaf entry that
          names a block is reached by at least one device mapping of it, and
          no device maps one block twice.
        """
        rc = self.pool.refcounts()
        m = self.model
        assert m.holders() == m.refs  # the model's bookkeeping, recomputed
        assert len(rc) == m.nr_data_blocks
        in_use = np.flatnonzero(rc > 0).tolist()
        assert in_use == sorted(m.refs)
        for p in in_use:
            assert 1 <= rc[p] <= m.refs[p], f"block {p}: engine count {rc[p]}, {m.refs[p]} mappings"


class AccountingMachine(PoolMachine):
    payload = False


# Each machine: 300 examples of up to 50 steps, 600 examples in all (about a
# minute).  THINP_DIFF_EXAMPLES=5000 makes a longer hunt.
_SETTINGS = settings(max_examples=int(os.environ.get("THINP_DIFF_EXAMPLES", 300)), stateful_step_count=50, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])

TestPayloadPool = PoolMachine.TestCase
TestPayloadPool.settings = _SETTINGS
TestAccountingPool = AccountingMachine.TestCase
TestAccountingPool.settings = _SETTINGS

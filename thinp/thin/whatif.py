"""What if every thin device wrote more?  Run it on the pool and see.

:func:`grow_devices` asks each thin device of a pool to write ``fraction``
more data *into blocks it does not map yet* (so every write needs a new
data block: no copy-on-write, no overwrite in place), replays those writes
through the engine, and reports what the pool did: Data% before and after,
the writes that succeeded and failed per device, and when the low water mark
and out-of-data-space events fired.

``of`` says what the fraction is of:

* ``"mapped"``: of the device's mapped bytes now (a device holding 40 GiB
  writes 4 GiB more at 10%); an empty device writes nothing;
* ``"virtual"``: of the device's virtual size (a 100 GiB volume writes
  10 GiB more, however full it is).

A device asked for more blocks than it has unmapped gets all of its
unmapped blocks (``capped`` in the result).  Each device's blocks are picked
at random (``seed``) among its unmapped virtual blocks and written whole, one
data block per write.  ``order`` says how the devices' writes interleave:

* ``"round-robin"``: one block from each device still writing, in turn, as
  devices writing at the same rate would: small writers finish first, and
  when the pool runs out the devices with the most left to write fail;
* ``"proportional"``: each device spreads its writes evenly over the same
  period, so all finish together, and when the pool runs out every device
  still writing fails.

The pool is changed: run this on a copy (a pool restored from a thin_dump,
say).  In ``queue_if_no_space`` mode the writes that found no space stay
queued (the pool's mode is ``out_of_data_space``: grow it with
:meth:`~thinp.ThinPool.resize_data` to run them, or close it to drop them);
with ``error_if_no_space`` they failed with ENOSPC.  Either way a write
"fails" here when it could not get a data block.  If the metadata runs out
first, the pool turns read-only (as dm-thin does) and the run stops there:
the event ``out_of_metadata_space`` says at which write (dm's mode of that
name, without needs_check), or ``metadata_failure`` at which batch (a
metadata operation failed: read-only with needs_check).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import errors
from ..trace import TRACE_DTYPE, WRITE

ORDERS = ("round-robin", "proportional")
BASES = ("mapped", "virtual")


@dataclass
class GrowthResult:
    """What :func:`grow_devices` did.

    ``devices``: a DataFrame, one row per device: ``dev_id``, ``size_bytes``
    (virtual), ``mapped_bytes_before``, ``demand_bytes`` (what it was asked
    to write), ``written_bytes``, ``failed_bytes``, ``fails`` (some write
    found no data block), ``capped`` (fewer unmapped blocks than asked).

    ``curve``: a DataFrame of the pool after each batch of writes:
    ``writes_issued`` (count, all devices), ``used_data_blocks``,
    ``meta_pct`` (Meta%), ``data_pct``.

    ``events``: one dict per pool event (``kind``, ``write_index`` -- the
    0-based write that crossed it --, ``used_data_blocks``, ``data_pct``).
    ``out_of_metadata_space`` or ``metadata_failure`` ends the run.  When free metadata reaches
    dm's reserve the pool commits what came before and goes read-only
    without needs_check (dm-thin's out-of-metadata-space mode):
    ``write_index`` is then the exact write that failed, every later one
    failing too.  When a metadata operation itself fails, the pool aborts
    the transaction and turns read-only with needs_check: the event is
    ``metadata_failure`` and ``write_index`` is the first write of the batch (the batch's writes
    count as failed).

    ``before`` and ``after``: the pool's :class:`~thinp.PoolStatus`."""

    devices: object
    curve: object
    events: list
    before: object
    after: object
    block_size: int
    low_water_mark: int
    fraction: float
    of: str
    order: str
    nr_writes: int = 0
    nr_written: int = 0
    trace: np.ndarray = field(default=None, repr=False)

    @property
    def nr_failed(self) -> int:
        """Writes that found no free data block."""
        return self.nr_writes - self.nr_written

    @property
    def failing_devices(self) -> list[int]:
        """Ids of the devices with at least one failed write."""
        return [int(d) for d in self.devices.loc[self.devices["fails"], "dev_id"]]

    def first_event(self, kind: str):
        """The first event of ``kind`` (a dict), or None."""
        return next((e for e in self.events if e["kind"] == kind), None)


def _interleave(dev_index: np.ndarray, rank: np.ndarray, demand: np.ndarray, order: str) -> np.ndarray:
    if order == "round-robin":
        return np.lexsort((dev_index, rank))
    key = (rank + 0.5) / demand[dev_index]
    return np.lexsort((dev_index, key))


def grow_devices(pool, fraction: float = 0.10, of: str = "mapped", dev_ids=None, order: str = "round-robin",
                 seed: int = 0, nr_points: int = 200) -> GrowthResult:
    """Make every device of ``pool`` (or those in ``dev_ids``) write
    ``fraction`` more into unmapped blocks; see the module for the rules.
    ``nr_points`` is roughly how many batches the writes are replayed in,
    i.e. the resolution of ``curve``.  Returns a :class:`GrowthResult`."""
    import pandas as pd

    if not (isinstance(fraction, (int, float)) and fraction >= 0):
        raise ValueError(f"fraction must be a number >= 0, not {fraction!r}")
    if of not in BASES:
        raise ValueError(f"of={of!r}: one of {', '.join(BASES)}")
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: one of {', '.join(ORDERS)}")
    bs = pool.block_size
    ids = pool.devices() if dev_ids is None else [int(d) for d in dev_ids]
    rng = np.random.default_rng(seed)
    before = pool.status()
    rows, picks = [], []
    for d in ids:
        dev = pool.device(d)
        v, _, _ = dev.mapping()
        nr = -(-dev.size // bs)
        basis = len(v) * bs if of == "mapped" else dev.size
        want = int(np.ceil(fraction * basis / bs - 1e-9))
        free = np.ones(nr, dtype=bool)
        free[v] = False
        unmapped = np.flatnonzero(free)
        n = min(want, len(unmapped))
        picks.append(rng.choice(unmapped, size=n, replace=False) if n else np.zeros(0, dtype=np.int64))
        rows.append(dict(dev_id=d, size_bytes=dev.size, mapped_bytes_before=len(v) * bs,
                         demand_bytes=n * bs, capped=n < want))
    demand = np.array([len(p) for p in picks], dtype=np.int64)
    dev_index = np.repeat(np.arange(len(ids)), demand)
    rank = np.concatenate([np.arange(n) for n in demand]) if len(ids) else np.zeros(0, dtype=np.int64)
    vblocks = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    perm = _interleave(dev_index, rank, np.maximum(demand, 1), order)
    dev_index, vblocks = dev_index[perm], vblocks[perm]
    trace = np.zeros(len(perm), dtype=TRACE_DTYPE)
    trace["dev_id"] = np.asarray(ids, dtype=np.int64)[dev_index] if len(ids) else 0
    trace["op"] = WRITE
    trace["offset"] = vblocks.astype(np.uint64) * np.uint64(bs)
    trace["length"] = bs

    total = before.total_data_blocks
    curve = [(0, before.used_data_blocks, before.metadata_percent)]
    events = []
    step = max(1, -(-len(trace) // max(1, int(nr_points))))
    meta_failed_at = None
    for start in range(0, len(trace), step):
        try:
            res = pool.replay(trace[start:start + step])
        except errors.OutOfMetadataSpaceError as e:
            # at the metadata reserve: what came before is committed and
            # every write from the first failed one on needs a new block
            meta_failed_at = start + int(e.failed[0])
            res = e.result
        except errors.ReadOnlyPoolError:
            # a metadata operation failed: dm-thin aborts the transaction and
            # turns the pool read-only; the exact write is not known, its batch is
            meta_failed_at = start
            events.append(dict(kind="metadata_failure", write_index=start, used_data_blocks=curve[-1][1],
                               data_pct=100.0 * curve[-1][1] / total))
            break
        for ev in res.events:
            i = start + ev.op_index
            # writes before i all got a block; write i got one unless it is
            # the one that found the pool full
            if ev.kind == "out_of_data_space":
                used = total
            else:  # write i failed out of metadata space, or got its block
                used = min(total, before.used_data_blocks + i + (ev.kind != "out_of_metadata_space"))
            events.append(dict(kind=ev.kind, write_index=i, used_data_blocks=used,
                               data_pct=100.0 * used / total))
        st = pool.status()
        curve.append((min(start + step, len(trace)), st.used_data_blocks, st.metadata_percent))
        if meta_failed_at is not None:
            break
    after = pool.status(observer=True)
    # every write needed one new block, and none was freed: the writes that
    # got one are the first (used after - used before) of the trace
    nr_written = curve[-1][1] - before.used_data_blocks
    if meta_failed_at is not None:
        nr_written = min(nr_written, meta_failed_at)
    ok = np.zeros(len(trace), dtype=bool)
    ok[:nr_written] = True
    written = np.bincount(dev_index[ok], minlength=len(ids))
    for r, w, n in zip(rows, written, demand):
        r["written_bytes"] = int(w) * bs
        r["failed_bytes"] = int(n - w) * bs
        r["fails"] = bool(n > w)
    cols = ["dev_id", "size_bytes", "mapped_bytes_before", "demand_bytes", "written_bytes", "failed_bytes",
            "fails", "capped"]
    devices = pd.DataFrame(rows, columns=cols)
    cv = pd.DataFrame(curve, columns=["writes_issued", "used_data_blocks", "meta_pct"])
    cv["data_pct"] = 100.0 * cv["used_data_blocks"] / total
    return GrowthResult(devices=devices, curve=cv, events=events, before=before, after=after, block_size=bs,
                        low_water_mark=pool.low_water_mark, fraction=float(fraction), of=of, order=order,
                        nr_writes=len(trace), nr_written=int(nr_written), trace=trace)

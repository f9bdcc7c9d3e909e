"""``replay`` applies a full mapping-change log to dm's btree on a second
thread while the replay kernel runs the trace's next stretch
(``ThinPool._apply_overlapped``).  Its results must be those of running the
two one after the other: the same metadata file byte for byte, the same
counters and events, and the same request where metadata runs out.  The
log is made a few dozen rows long here so that small traces overlap many
times, across commits, the metadata reserve and out-of-metadata-space."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import thinp
from thinp import errors
from thinp.thin import pool as P

BS = 64 * 1024


def _provisioning(seed: int, n: int, nr_virt: int) -> np.ndarray:
    """Random first writes (4 KiB each, distinct blocks), some reads and overwrites."""
    rng = np.random.default_rng(seed)
    vb = rng.choice(nr_virt, n, replace=False)
    tr = np.zeros(n, dtype=thinp.TRACE_DTYPE)
    tr["op"] = thinp.WRITE
    tr["offset"] = vb * BS
    tr["length"] = 4096
    again = rng.random(n) < 0.1  # a read or an overwrite of an earlier block
    src = rng.integers(0, np.arange(n) + 1)
    tr["offset"][again] = tr["offset"][src[again]]
    tr["op"][again & (rng.random(n) < 0.5)] = thinp.READ
    return tr


def _mixed(seed: int, n: int, nr_virt: int) -> np.ndarray:
    """Writes on two thins (one a snapshot of the other), some spanning two
    blocks, reads and whole-block discards."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.65, 0.1, 0.15, 0.1])
    vb = rng.integers(0, nr_virt - 2, size=n)
    tr = np.zeros(n, dtype=thinp.TRACE_DTYPE)
    tr["dev_id"] = rng.integers(0, 2, size=n)
    tr["op"] = np.where(kind == 2, thinp.READ, np.where(kind == 3, thinp.DISCARD, thinp.WRITE))
    tr["offset"] = vb * BS + np.where(kind == 1, BS // 2, 0)
    tr["length"] = np.where(kind == 1, BS + 4096, np.where(kind == 3, BS, 4096))
    return tr


def _run(path, overlap: bool, monkeypatch, *, meta_blocks: int, commit_interval: int, trace_fn, n: int,
         snapshot: bool, stretch: int = P.STRETCH_FIRST):
    """The scenario with overlapping on or off: (what the replays returned
    or raised, the events, status, the metadata file's digest, how many
    logs were applied overlapped, how many kernel stretches ended before
    their trace's end for the pipeline's ramp, see ThinPool._stretch_end)."""
    monkeypatch.setattr(P, "OVERLAP_APPLY", overlap)
    monkeypatch.setattr(P, "LOG_ROWS", 48)
    monkeypatch.setattr(P, "STRETCH_FIRST", stretch)
    calls = []
    cut = []
    real = P.ThinPool._apply_overlapped
    real_end = P.ThinPool._stretch_end

    def counted(self, *a):
        calls.append(1)
        return real(self, *a)

    def stretch_end(self, n, start, ramp):
        end = real_end(self, n, start, ramp)
        assert start < end <= n
        if end < n:
            cut.append(end)
        return end

    monkeypatch.setattr(P.ThinPool, "_apply_overlapped", counted)
    monkeypatch.setattr(P.ThinPool, "_stretch_end", stretch_end)
    nr_virt = 1 << 22
    pool = thinp.ThinPool.create(str(path), data_size=(1 << 16) * BS, block_size=BS,
                                 metadata_size=meta_blocks * 4096, commit_interval=commit_interval, sync=False)
    pool.create_thin(0, nr_virt * BS)
    events = []
    seen = []
    tr = trace_fn(1, n, nr_virt)
    if snapshot:
        pool.replay(tr[tr["dev_id"] == 0][: n // 4])
        pool.commit()
        pool.create_snap(1, 0)
    for part in np.array_split(tr, 3):
        stop = False
        try:
            res = pool.replay(part)
            seen.append(("ok", dict(res.counters)))
        except errors.ThinpError as e:
            res = getattr(e, "result", None)
            seen.append((type(e).__name__, str(e).replace(str(path), "POOL"),
                         None if getattr(e, "failed", None) is None else list(e.failed),
                         None if res is None else dict(res.counters)))
            stop = isinstance(e, errors.ReadOnlyPoolError)
        if res is not None:
            events.extend((ev.kind, ev.op_index, ev.value) for ev in res.events)
        if stop:
            break
    st = pool.status()
    status = (st.transaction_id, st.used_metadata_blocks, st.used_data_blocks, st.mode, st.needs_check)
    pool.close()
    with open(os.path.join(str(path), "metadata"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return seen, events, status, digest, len(calls), len(cut)


@pytest.mark.parametrize("case", [
    # room enough: commits every 700 requests, overlapping across them
    dict(meta_blocks=4096, commit_interval=700, trace_fn=_provisioning, n=6000, snapshot=False),
    # a small metadata device: its low water mark crossed inside an
    # overlapped log, the commit at the reserve, then out of metadata space
    # (EIO for the blocks needing a mapping)
    dict(meta_blocks=96, commit_interval=0, trace_fn=_provisioning, n=24000, snapshot=False),
    # ... and a commit at the reserve that runs out (read-only, needs_check)
    dict(meta_blocks=80, commit_interval=0, trace_fn=_provisioning, n=16000, snapshot=False),
    # snapshots' shared blocks broken, discards, two-block writes
    dict(meta_blocks=4096, commit_interval=1500, trace_fn=_mixed, n=6000, snapshot=True),
    dict(meta_blocks=128, commit_interval=0, trace_fn=_mixed, n=24000, snapshot=True),
], ids=["commits", "out-of-metadata", "commit-runs-out", "mixed", "mixed-out-of-metadata"])
# (stretches of 4096 requests are longer than these traces: no ramp; of 8,
# shorter than a log: the kernel's runs end at the ramp's request bounds too)
@pytest.mark.parametrize("stretch", [4096, 8], ids=["no-ramp", "ramp"])
def test_overlapped_apply_is_the_serial_one(tmp_path, monkeypatch, case, stretch):
    serial = _run(tmp_path / "serial", False, monkeypatch, stretch=stretch, **case)
    overlapped = _run(tmp_path / "overlap", True, monkeypatch, stretch=stretch, **case)
    assert serial[4] == 0 and serial[5] == 0
    assert overlapped[4] > 10  # the path under test ran, many times
    assert (overlapped[5] > 10) == (stretch == 8)
    assert overlapped[:4] == serial[:4]
    if case["meta_blocks"] < 1024:
        # the scenario reached what it is about
        assert any(kind == "metadata_low_water_mark" for kind, _, _ in serial[1])
        assert serial[0][-1][0] in ("OutOfMetadataSpaceError", "ReadOnlyPoolError")

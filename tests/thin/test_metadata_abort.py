"""A metadata operation failing part way through a replay (here dm's commit
at the metadata reserve of a 64-block device, which needs more blocks than
are left): what the pool reports afterwards is what dm-thin would report --
the last commit's metadata, needs_check, and counters for exactly the
requests applied before it failed.  (Merely reaching the reserve is not a
failure: see tests/integrity/test_modes.py.)"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import thinp
from thinp import errors
from thinp.thin.pool import ThinPool

from .dm_fixtures import real_tool

BS = 64 * 1024
NR_VIRT = 1 << 22  # blocks per thin: scattered writes fill dm leaves part way
META_BLOCKS = 64


def _trace(seed: int, n: int) -> np.ndarray:
    """Writes (mostly new blocks, some 2-block), overwrites and CoW breaks of
    the blocks mapped before the snapshot, reads of mapped and unmapped
    blocks, and whole-block discards, on thins 0 and 1."""
    rng = np.random.default_rng(seed)
    tr = np.zeros(n, dtype=thinp.TRACE_DTYPE)
    kind = rng.choice(5, size=n, p=[0.6, 0.1, 0.15, 0.1, 0.05])
    vb = rng.integers(0, NR_VIRT - 2, size=n)
    vb[kind == 1] = rng.integers(0, 64, size=int((kind == 1).sum()))  # the premapped blocks
    tr["dev_id"] = rng.integers(0, 2, size=n)
    tr["op"] = np.where(kind <= 1, thinp.WRITE, np.where(kind == 2, thinp.READ,
                        np.where(kind == 3, thinp.WRITE, thinp.DISCARD)))
    tr["offset"] = vb * BS + np.where(kind == 3, BS // 2, 0)
    tr["length"] = np.where(kind == 3, BS + 4096, np.where(kind == 1, 4096, BS))  # kind 3 spans two blocks
    return tr


def _pool(path) -> ThinPool:
    # 64 metadata blocks (reserve 6): a few thousand scattered mappings fill
    # it, and the commit at the reserve needs more than 6 blocks
    pool = ThinPool.create(path, data_size=65536 * BS, block_size=BS, metadata_size=META_BLOCKS * 4096, sync=False,
                           commit_interval=0)
    dev = pool.create_thin(0, NR_VIRT * BS)
    for vb in range(64):
        dev.write(vb * BS, BS)
    pool.commit()
    pool.create_snap(1, 0)
    return pool


def _fields(st):
    return (st.transaction_id, st.used_metadata_blocks, st.total_metadata_blocks, st.used_data_blocks,
            st.total_data_blocks, st.held_root)


def _thin_dump(path) -> str:
    out = subprocess.run([real_tool("thin_dump"), str(path / "metadata")], capture_output=True, text=True,
                         check=True).stdout
    return re.sub(r' flags="\d+"', "", out)  # the aborted pool's carries needs_check


def test_abort_mid_replay_reports_exactly_the_applied_prefix(tmp_path):
    tr = _trace(7, 45000)
    j = 2000  # committed first: the last commit holds part of the trace
    a = _pool(tmp_path / "a")
    a.replay(tr[:j])
    a.commit()
    oom = []
    a.on_event("out_of_metadata_space", oom.append)
    with pytest.raises(errors.ReadOnlyPoolError, match="out of metadata space"):
        a.replay(tr[j:])
    assert len(oom) == 1
    i = oom[0].op_index  # the request whose mapping change dm could not make
    assert 1000 < i < len(tr) - j - 1000  # the kernel ran well past it before the log was applied

    b = _pool(tmp_path / "b")
    b.replay(tr[:j])
    b.commit()
    b.replay(tr[j:j + i])  # exactly the prefix applied: it fits

    # counters: those of the prefix, every one of them
    ca, cb = a.counters(), b.counters()
    assert ca == cb
    assert cb["nr_provisioned"] > 1000 and cb["nr_cow_copies"] > 0
    assert cb["nr_unmapped_reads"] > 0 and cb["nr_requests"] == 64 + j + i
    st = a.status()
    assert st.mode == "ro" and st.needs_check and st.counters == cb

    # metadata and index: the last commit, which b's files hold as well
    shutil.copytree(tmp_path / "b", tmp_path / "b_last")  # b's uncommitted work is not in its files
    bl = ThinPool.open(tmp_path / "b_last")
    assert _fields(st) == _fields(bl.status())
    for d in (0, 1):
        ma, ml = a.device(d).mapping(), bl.device(d).mapping()
        assert all(np.array_equal(x, y) for x, y in zip(ma, ml))
        assert a.device(d).mapped_blocks == bl.device(d).mapped_blocks == len(ma[0])
    # the rollback is real: b mapped more since its last commit (near the
    # reserve dm commits before every new block, so only a few)
    assert sum(b.device(d).mapped_blocks for d in (0, 1)) > sum(a.device(d).mapped_blocks for d in (0, 1))
    assert a.device(0).mapped_blocks > 64 + 3000
    assert _thin_dump(tmp_path / "a") == _thin_dump(tmp_path / "b_last")
    # and request i is where b runs out too
    with pytest.raises(errors.ReadOnlyPoolError, match="out of metadata space"):
        b.replay(tr[j + i:j + i + 1])
    a.close()
    bl.close()
    b.close()


def test_abort_after_device_writes_counts_the_applied_ones(tmp_path):
    """Requests from ThinDevice calls (one kernel run each, merged in the
    record as they pile up) are recounted the same way."""
    tr = _trace(11, 45000)
    j = 2000
    a = _pool(tmp_path / "a")
    a.replay(tr[:j])
    a.commit()
    oom = []
    a.on_event("out_of_metadata_space", oom.append)
    with pytest.raises(errors.ReadOnlyPoolError):
        for row in tr[j:]:
            dev = a.device(int(row["dev_id"]))
            op, off, ln = int(row["op"]), int(row["offset"]), int(row["length"])
            if op == thinp.WRITE:
                dev.write(off, ln)
            elif op == thinp.READ:
                dev.read(off, ln)
            else:
                dev.discard(off, ln)
    assert len(oom) == 1 and oom[0].op_index == 0  # each device call is its own one-request trace
    k = a.counters()["nr_requests"] - 64 - j  # device requests a counted
    assert k > 1000
    b = _pool(tmp_path / "b")
    b.replay(tr[:j])
    b.commit()
    b.replay(tr[j:j + k])
    assert a.counters() == b.counters()
    with pytest.raises(errors.ReadOnlyPoolError):  # the request a failed on, not counted there
        b.replay(tr[j + k:j + k + 1])
    a.close()
    b.close()

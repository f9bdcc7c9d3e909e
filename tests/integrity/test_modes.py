"""Pool modes as dm-thin has them: reaching the metadata reserve -> commit
and out-of-metadata-space (ro, no needs_check), a real metadata failure ->
ro + needs_check, the metadata reserve and low water mark, fail mode, resize_metadata, the
commit interval, and open refusing needs_check until check --repair."""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from thinp import errors
from thinp.thin import ThinPool
from thinp.thin.check import check
from thinp.trace import DISCARD, READ, TRACE_DTYPE, WRITE

from .populate import BS, trace


def _scattered(dev_id, n, stride=512):
    return trace(dev_id, np.arange(n) * stride)  # one new leaf per write


def _random(dev_id, n, nr_vblocks, seed=5):
    vbs = np.random.default_rng(seed).choice(nr_vblocks, n, replace=False)
    return trace(dev_id, vbs), vbs


def _thin_dump(path) -> str:
    tool = shutil.which("thin_dump")
    if tool is None:
        pytest.skip("thin_dump (thin-provisioning-tools) is not installed")
    return subprocess.run([tool, os.path.join(path, "metadata")], capture_output=True, text=True, check=True).stdout


def test_reaching_the_metadata_reserve_commits_and_goes_out_of_metadata_space(tmp_path):
    """dm-thin's alloc_data_block commits before it would use the metadata
    reserve; the commit finds free metadata at the reserve and switches to
    PM_OUT_OF_METADATA_SPACE: reported ``ro`` without needs_check, writes
    needing a new block fail with EIO, the rest still runs, and growing the
    metadata returns the pool to ``rw``."""
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    nvirt = 16384 * 512
    a = ThinPool.create(pa, data_size=65536 * BS, metadata_size="1M", sync=False)
    nm = a.nr_metadata_blocks
    lwm_events, oom = [], []
    a.on_event("metadata_low_water_mark", lwm_events.append)
    a.on_event("out_of_metadata_space", oom.append)
    dev = a.create_thin(0, nvirt * BS)
    dev.write(0, BS)
    a.commit()
    # random inserts leave dm's leaves part full: 60,000 need more than 1 MiB
    tr, vbs = _random(0, 60000, nvirt)
    with pytest.raises(errors.OutOfMetadataSpaceError, match="no needs_check") as e:
        a.replay(tr)
    assert e.value.errno == errno.EIO
    f = int(e.value.failed[0])
    assert 20000 < f < 59000
    # every later write to a new block failed; one to block 0 (provisioned) would not
    assert e.value.failed.tolist() == [i for i in range(f, len(vbs)) if vbs[i] != 0]
    c = e.value.result.counters  # the failed requests ran too: counted, and counted as failed
    assert c["nr_requests"] == len(vbs)
    assert c["nr_failed_requests"] == c["nr_eio"] == len(e.value.failed)
    assert [x.op_index for x in oom] == [f]
    assert [x.kind for x in lwm_events] == ["metadata_low_water_mark"]
    st = a.status()
    words = str(st).split()
    assert words[4] == "ro" and words[7] == "-" and not st.needs_check and a.out_of_metadata_space
    assert st.used_metadata_blocks == st.total_metadata_blocks == nm  # Meta% 100, as lvs shows it
    prefix = set(vbs[:f].tolist()) | {0}
    assert dev.mapped_blocks == len(prefix)
    # in this mode: overwrites of provisioned unshared blocks run, new blocks
    # fail (EIO), discards succeed and unmap nothing, pool messages are refused
    before = a.counters()["nr_requests"]
    dev.write(int(vbs[0]) * BS, 4096)
    assert a.counters()["nr_requests"] == before + 1
    with pytest.raises(errors.OutOfMetadataSpaceError):
        dev.write(int(vbs[-1]) * BS, BS)
    before = a.counters()
    dev.discard(int(vbs[0]) * BS, BS)
    assert dev.lookup(int(vbs[0])) is not None
    after = a.counters()
    assert after["nr_requests"] == before["nr_requests"] + 1 and after["nr_discarded"] == before["nr_discarded"]
    # dm's pool_message refuses every message from PM_OUT_OF_METADATA_SPACE on: EOPNOTSUPP
    for call in (lambda: a.create_thin(1, BS), lambda: a.create_snap(1, 0), lambda: a.delete(0),
                 lambda: a.message("create_thin 1"), lambda: a.message("set_transaction_id 1 2"),
                 lambda: a.reserve_metadata_snap()):
        with pytest.raises(errors.MessageRefusedError, match="out of metadata space") as m:
            call()
        assert m.value.errno == errno.EOPNOTSUPP and isinstance(m.value, errors.ReadOnlyPoolError)
    assert a.devices() == [0]
    a.close()

    # on disk: what came before request f, committed, needs_check clear --
    # the same metadata as a pool that replayed exactly that prefix
    b = ThinPool.create(pb, data_size=65536 * BS, metadata_size="1M", sync=False)
    b.create_thin(0, nvirt * BS).write(0, BS)
    b.commit()
    b.replay(tr[:f])
    b.commit()
    b.close()
    assert check(pa).ok and not check(pa).needs_check
    da = _thin_dump(pa)
    subprocess.run([shutil.which("thin_check"), os.path.join(pa, "metadata")], check=True, capture_output=True)
    with ThinPool.open(pa, read_only=True) as ro:  # an observer sees the pool's own mode
        assert ro.status(observer=True).mode == "ro" and ro.out_of_metadata_space
    assert 'flags="0"' in da and "needs_check" not in da
    assert re.sub(r' transaction="\d+"', "", da) == re.sub(r' transaction="\d+"', "", _thin_dump(pb))

    # reopened, the pool is still out of metadata space (no needs_check to
    # refuse it); growing the metadata returns it to write mode
    with ThinPool.open(pa) as a:
        assert a.out_of_metadata_space and a.status().mode == "ro" and not a.status().needs_check
        a.resize_metadata("4M")
        assert not a.out_of_metadata_space and a.status().mode == "rw"
        a.replay(tr[f:])
        assert a.device(0).mapped_blocks == len(set(vbs.tolist()) | {0})
    assert check(pa).ok


def test_a_real_metadata_failure_still_aborts_with_needs_check_until_repair(tmp_path):
    """A metadata operation that fails outright (here: a 64-block device
    whose commit at the reserve needs more blocks than are left) is dm's
    metadata_operation_failed: abort to the last commit, needs_check, ro."""
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=16384 * BS, metadata_size="256K", sync=False)
    nm = pool.nr_metadata_blocks
    dev = pool.create_thin(0, 16384 * 512 * BS)
    dev.write(0, BS)
    pool.commit()
    tr, vbs = _random(0, 12000, 16384 * 512)
    with pytest.raises(errors.ReadOnlyPoolError, match="needs_check set") as e:
        pool.replay(tr)
    assert not isinstance(e.value, errors.OutOfMetadataSpaceError)
    st = pool.status()
    assert st.mode == "ro" and st.needs_check and not pool.out_of_metadata_space
    assert st.used_metadata_blocks <= nm
    with pytest.raises(errors.ReadOnlyPoolError):
        dev.write(0, BS)
    with pytest.raises(errors.MessageRefusedError, match="needs_check") as m:
        pool.message("create_thin 1")
    assert m.value.errno == errno.EOPNOTSUPP
    pool.close()
    with pytest.raises(errors.MetadataCorruptError, match="needs_check"):
        ThinPool.open(path)
    rep = check(path)
    assert rep.ok and rep.needs_check
    rep = check(path, repair=True)
    assert rep.repaired and not rep.needs_check
    with ThinPool.open(path) as pool:
        # committed work survives: the abort went back to the last commit
        assert 1 <= pool.device(0).mapped_blocks < 12000
        pool.resize_metadata("80M")
        assert pool.nr_metadata_blocks == 20480
        assert pool.status().metadata_low_watermark == min(1024, 20480 // 4)
        pool.replay(tr)
        assert pool.device(0).mapped_blocks == len(set(vbs.tolist()) | {0})
    assert check(path).ok


def test_resize_metadata_only_grows(tmp_path):
    with ThinPool.create(str(tmp_path / "p"), data_size=64 * BS, metadata_size="4M") as pool:
        with pytest.raises(ValueError, match="only grows"):
            pool.resize_metadata("2M")
        pool.resize_metadata("4M")  # same size: nothing to do
        assert pool.nr_metadata_blocks == 1024


def test_fail_mode_errors_every_io_and_commits_nothing(tmp_path):
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=64 * BS, payload=True)
    dev = pool.create_thin(0, 16 * BS)
    dev.write(0, b"a" * BS)
    pool.commit()
    dev.write(BS, b"b" * BS)
    pool.fail("metadata device gone")
    assert pool.status().mode == "fail"
    for call in (lambda: dev.read(0, 10), lambda: dev.write(0, b"x"), lambda: dev.discard(0, BS)):
        with pytest.raises(errors.PoolFailedError) as ei:
            call()
        assert ei.value.errno == 5
    # messages: EOPNOTSUPP, as dm's pool_message in PM_FAIL
    for call in (lambda: pool.create_snap(1, 0), lambda: pool.message("delete 0")):
        with pytest.raises(errors.MessageRefusedError, match="fail mode") as m:
            call()
        assert m.value.errno == errno.EOPNOTSUPP
    pool.close()
    with ThinPool.open(path) as pool:
        d = pool.device(0)
        assert d.read(0, 4) == b"aaaa" and d.mapped_blocks == 1


def test_commit_interval_commits_every_n_operations(tmp_path):
    pool = ThinPool.create(str(tmp_path / "p"), data_size=256 * BS, commit_interval=10, sync=False)
    pool.create_thin(0, 256 * BS)
    commits = []
    real_commit = pool._commit  # (commit() and the replay's own commits all go through it)
    pool._commit = lambda *a: (commits.append(1), real_commit(*a))
    pool.replay(trace(0, np.arange(25)))
    assert len(commits) == 2  # before ops 10 and 20
    assert pool.commit_interval == 10
    pool.close()


def test_reserve_is_min_4096_or_tenth(tmp_path):
    for size, nm in (("4M", 1024), ("200M", 51200)):
        with ThinPool.create(str(tmp_path / size), data_size=64 * BS, metadata_size=size) as pool:
            assert pool.nr_metadata_blocks == nm
            st = pool.status()
            assert st.used_metadata_blocks == pool._dm.nr_used_metadata_blocks + min(4096, nm // 10)
            assert st.metadata_low_watermark == min(1024, nm // 4)


def test_status_counts_the_metadata_reserve_as_used(tmp_path):
    with ThinPool.create(str(tmp_path / "p"), data_size=64 * BS, metadata_size="4M") as pool:
        st = pool.status()
        used = pool._dm.nr_used_metadata_blocks
        assert st.used_metadata_blocks == used + min(4096, 1024 // 10)
        assert f" {st.used_metadata_blocks}/1024 " in str(st)


def _to_out_of_metadata_space(pool, dev_id, seed=5):
    """Random single-block writes to a big thin ``dev_id`` until the pool
    goes out of metadata space; returns the error."""
    nvirt = 16384 * 512
    pool.create_thin(dev_id, nvirt * BS)
    tr, _ = _random(dev_id, 60000, nvirt, seed)
    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        pool.replay(tr)
    assert pool.out_of_metadata_space
    return e.value


def test_out_of_metadata_space_fails_only_the_blocks_needing_a_new_mapping(tmp_path):
    """dm splits a request into one bio per block: out of metadata space,
    the bios needing a new mapping (provisioning, copy-on-write) fail with
    EIO while the request's other blocks are written; the request fails
    and is counted (nr_requests, nr_failed_requests), its failed blocks in
    nr_eio."""
    pool = ThinPool.create(str(tmp_path / "p"), data_size=65536 * BS, metadata_size="1M", payload=True, sync=False)
    d3 = pool.create_thin(3, 16 * BS)
    d3.write(0, b"a" * BS)
    d3.write(2 * BS, b"c" * BS)  # block 1 stays unmapped
    d0 = pool.create_thin(0, 16 * BS)
    d0.write(0, b"o" * (4 * BS))
    d1 = pool.create_snap(1, 0)  # blocks 0..3 shared
    d0.write(3 * BS, b"n" * BS)  # block 3: sharing broken, dev 0's copy is its own
    pool.commit()
    _to_out_of_metadata_space(pool, 9)

    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        d3.write(0, b"x" * (3 * BS))
    assert e.value.failed.tolist() == [0] and e.value.errno == errno.EIO
    c = e.value.result.counters
    assert (c["nr_requests"], c["nr_failed_requests"], c["nr_eio"], c["nr_block_writes"]) == (1, 1, 1, 2)
    assert c["bytes_written"] == 3 * BS and c["nr_provisioned"] == 0
    assert d3.read(0, BS) == b"x" * BS and d3.read(2 * BS, BS) == b"x" * BS
    assert d3.read(BS, BS) == bytes(BS) and d3.lookup(1) is None

    # copy-on-write needs a new mapping too: block 2 of dev 0 is shared, 3
    # is not, 4 is unmapped
    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        d0.write(2 * BS + 100, b"y" * (2 * BS))
    assert e.value.result.counters["nr_eio"] == 2
    assert d0.read(2 * BS, BS) == b"o" * BS and d1.read(2 * BS, BS) == b"o" * BS
    assert d0.read(3 * BS, BS) == b"y" * BS and d1.read(3 * BS, BS) == b"o" * BS
    assert d0.lookup(4) is None

    # a trace: every request runs, in order; only the write with a new block fails
    tr = np.zeros(4, dtype=TRACE_DTYPE)
    tr[0] = (3, WRITE, 0, 3 * BS)
    tr[1] = (3, READ, 0, 3 * BS)
    tr[2] = (3, DISCARD, 0, 3 * BS)  # succeeds and unmaps nothing (dm's process_bio_success)
    tr[3] = (0, WRITE, 3 * BS, BS)
    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        pool.replay(tr)
    assert e.value.failed.tolist() == [0]
    c = e.value.result.counters
    assert (c["nr_requests"], c["nr_failed_requests"], c["nr_eio"], c["nr_block_writes"]) == (4, 1, 1, 3)
    assert (c["nr_block_reads"], c["nr_unmapped_reads"], c["nr_discarded"]) == (3, 1, 0)
    assert d3.mapped_blocks == 2 and d3.read(0, BS) == b"x" * BS
    pool.close()


def test_the_switch_commits_a_requests_blocks_before_the_one_at_the_reserve(tmp_path):
    """Writes of eight blocks each: the block whose allocation finds free
    metadata at the reserve is where dm commits (alloc_data_block); the
    request's blocks before it are bios already mapped, so that commit
    holds them, and the block itself fails, out of metadata space."""
    path = str(tmp_path / "p")
    nvirt = 1 << 22
    pool = ThinPool.create(path, data_size=65536 * BS, metadata_size="1M", sync=False)
    dev = pool.create_thin(0, nvirt * BS)
    starts = np.random.default_rng(3).choice(nvirt // 8, 6000, replace=False) * 8
    tr = trace(0, starts, nblocks=8)
    oom = []
    pool.on_event("out_of_metadata_space", oom.append)
    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        pool.replay(tr)
    f, v = oom[0].op_index, oom[0].value
    assert len(oom) == 1 and e.value.failed[0] == f
    b0 = int(starts[f])
    assert b0 < v < b0 + 8  # the reserve was reached inside request f
    assert [dev.lookup(b) is not None for b in range(b0, b0 + 8)] == [b < v for b in range(b0, b0 + 8)]
    pool.close()
    # on disk: exactly the requests before f and request f's blocks before v
    with ThinPool.open(path, read_only=True) as ro:
        d = ro.device(0)
        assert d.mapped_blocks == 8 * f + (v - b0)
        assert [d.lookup(b) is not None for b in range(b0, b0 + 8)] == [b < v for b in range(b0, b0 + 8)]
        assert all(d.lookup(int(starts[i]) + 7) is not None for i in range(f))
    rep = check(path)
    assert rep.ok and not rep.needs_check
    tool = shutil.which("thin_check")
    if tool:
        subprocess.run([tool, os.path.join(path, "metadata")], check=True, capture_output=True)


def test_failed_requests_are_counted(tmp_path):
    """nr_requests counts every request run, failed or not; a request with a
    block that failed counts once in nr_failed_requests, each failed block
    in nr_enospc (no data space, error_if_no_space) or nr_eio."""
    pool = ThinPool.create(str(tmp_path / "p"), data_size=4 * BS, error_if_no_space=True, sync=False)
    pool.create_thin(0, 16 * BS)
    tr = np.zeros(4, dtype=TRACE_DTYPE)
    tr[0] = (0, WRITE, 0, 6 * BS)  # blocks 4 and 5 find no space
    tr[1] = (0, WRITE, 10 * BS, 4096)
    tr[2] = (0, READ, 0, 3 * BS)
    tr[3] = (0, WRITE, 0, 4096)  # provisioned: fine
    c = pool.replay(tr).counters
    assert (c["nr_requests"], c["nr_failed_requests"], c["nr_enospc"], c["nr_eio"]) == (4, 2, 3, 0)
    assert c["nr_block_writes"] == 5
    assert pool.counters()["nr_failed_requests"] == 2
    pool.close()


def test_a_trace_and_its_requests_one_by_one_agree_out_of_metadata_space(tmp_path):
    """The same mixed requests (writes of one to three blocks, multi-block
    discards, reads) as one replay and as ThinDevice calls, into 1 MiB of
    metadata: the same commits near the reserve, the same switch, the same
    failed requests, counters, mappings and committed metadata."""
    rng = np.random.default_rng(17)
    n, nvirt = 30000, 1 << 22
    kind = rng.choice(3, n, p=[0.85, 0.1, 0.05])
    vb = rng.integers(0, nvirt - 8, n)
    vb[kind != 0] = vb[np.maximum(0, np.arange(n) - rng.integers(1, 50, n))][kind != 0]  # recent blocks
    tr = np.zeros(n, dtype=TRACE_DTYPE)
    tr["op"] = np.where(kind == 0, WRITE, np.where(kind == 1, DISCARD, READ))
    tr["offset"] = vb.astype(np.uint64) * BS + np.where(kind == 0, 4096, 0).astype(np.uint64)
    tr["length"] = np.where(kind == 0, rng.integers(1, 3, n) * BS, np.where(kind == 1, 4 * BS, BS))

    def make(name):
        p = ThinPool.create(str(tmp_path / name), data_size=65536 * BS, metadata_size="1M", sync=False)
        return p, p.create_thin(0, nvirt * BS)

    a, da = make("a")
    with pytest.raises(errors.OutOfMetadataSpaceError) as e:
        a.replay(tr)
    b, db = make("b")
    failed_b = []
    for i, row in enumerate(tr):
        op, off, ln = int(row["op"]), int(row["offset"]), int(row["length"])
        try:
            if op == WRITE:
                db.write(off, ln)
            elif op == DISCARD:
                db.discard(off, ln)
            else:
                db.read(off, ln)
        except errors.OutOfMetadataSpaceError:
            failed_b.append(i)
    assert e.value.failed.tolist() == failed_b and len(failed_b) > 100
    assert a.counters() == b.counters()
    assert a.counters()["nr_requests"] == n and a.counters()["nr_discarded"] > 0
    assert all(np.array_equal(x, y) for x, y in zip(da.mapping(), db.mapping()))
    a.close()
    b.close()
    assert _thin_dump(str(tmp_path / "a")) == _thin_dump(str(tmp_path / "b"))


def test_a_discard_at_the_reserve_runs_without_a_commit(tmp_path):
    """dm commits before the reserve only when it allocates a data block
    (alloc_data_block); a discard reaching the reserve unmaps, uncommitted,
    and the pool stays in write mode."""
    nvirt = 1 << 22
    rng = np.random.default_rng(3)
    starts = rng.choice(nvirt // 4, 40000, replace=False) * 4

    def make(name):
        p = ThinPool.create(str(tmp_path / name), data_size=65536 * BS, metadata_size="1M", sync=False)
        return p, p.create_thin(0, nvirt * BS)

    def reaches_the_reserve(k):
        p, _ = make(f"probe{k}")
        try:
            p.replay(trace(0, starts[:k], nblocks=2))
        except errors.OutOfMetadataSpaceError:
            return True
        finally:
            p.close()
            shutil.rmtree(str(tmp_path / f"probe{k}"))
        return p._step
    lo, hi = 0, len(starts)  # the most writes that stay clear of the reserve
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches_the_reserve(mid) else (mid, hi)
    gone = rng.choice(starts[:lo], 2000, replace=False)
    tr = np.concatenate([trace(0, starts[:lo], nblocks=2), trace(0, gone, op=DISCARD, nblocks=2)])
    pool, dev = make("p")
    commits = pool._commit_gen
    pool.replay(tr)
    assert pool._step  # a discard reached the reserve ...
    assert pool._commit_gen == commits and not pool.out_of_metadata_space  # ... and dm commits nothing for it
    assert dev.mapped_blocks == 2 * (lo - len(gone))
    pool.close()
    assert check(str(tmp_path / "p")).ok

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
    assert e.value.result.counters["nr_requests"] == len(vbs) - len(e.value.failed)
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
    dev.discard(int(vbs[0]) * BS, BS)
    assert dev.lookup(int(vbs[0])) is not None
    with pytest.raises(errors.ReadOnlyPoolError, match="out of metadata space"):
        a.create_thin(1, BS)
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

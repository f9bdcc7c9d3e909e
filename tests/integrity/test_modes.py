"""Pool modes as dm-thin has them: metadata exhaustion -> ro + needs_check,
the metadata reserve and low water mark, fail mode, resize_metadata, the
commit interval, and open refusing needs_check until check --repair."""
from __future__ import annotations

import re

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


def test_metadata_exhaustion_goes_ro_with_needs_check_until_repair(tmp_path):
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=16384 * BS, metadata_size="256K", sync=False)
    nm = pool.nr_metadata_blocks
    reserve = min(4096, nm // 10)
    lwm_events = []
    pool.on_event("metadata_low_water_mark", lwm_events.append)
    assert pool.status().metadata_low_watermark == min(1024, nm // 4)
    dev = pool.create_thin(0, 16384 * 512 * BS)
    dev.write(0, BS)
    pool.commit()
    # random inserts leave dm's leaves part full: 12,000 of them need far
    # more than the 64-block device holds
    tr, vbs = _random(0, 12000, 16384 * 512)
    with pytest.raises(errors.ReadOnlyPoolError, match="out of metadata space") as e:
        pool.replay(tr)
    st = pool.status()
    assert st.mode == "ro" and st.needs_check
    # provisioning stopped at the reserve (the insert checked before it ran
    # may take a few of its blocks, as dm's check before provisioning allows)
    used = int(re.search(r"\((\d+)/64 blocks\)", str(e.value)).group(1))
    assert nm - reserve - 2 <= used <= nm - reserve + 8
    # the transaction was aborted: dm's metadata and the index are the last
    # commit's, and status counts the reserve as used, as dm-thin does
    assert pool.device(0).mapping()[0].tolist() == [0]
    assert st.used_metadata_blocks == pool._dm.nr_used_metadata_blocks + reserve < used
    assert [e.kind for e in lwm_events] == ["metadata_low_water_mark"]
    assert lwm_events[0].value <= min(1024, nm // 4)
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
        # the transaction was aborted: the pool is at its last commit
        v, p, t = pool.device(0).mapping()
        assert v.tolist() == [0]
        # growing the metadata recovers, across a space-map bitmap boundary
        pool.resize_metadata("80M")
        assert pool.nr_metadata_blocks == 20480
        assert pool.status().metadata_low_watermark == min(1024, 20480 // 4)
        pool.replay(tr)
        assert pool.device(0).mapped_blocks == 1 + len(set(vbs.tolist()) - {0})
    assert check(path).ok
    with ThinPool.open(path) as pool:
        assert pool.device(0).mapped_blocks == 1 + len(set(vbs.tolist()) - {0})
        assert pool.nr_metadata_blocks == 20480


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
    real_commit = pool.commit
    pool.commit = lambda: (commits.append(1), real_commit())
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

"""``Engine.sync()`` and the runs' readings after it: what a user measures
after ``sync(1)``, the same bytes on every driver for the same workload."""
from __future__ import annotations

import pytest

import thinp
import thinp.workloads as W
from thinp.experiments.compare import ALL_DRIVERS
from thinp.workloads.format import Step, Workload


def _small_image_engine(driver):
    import io
    import tarfile

    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        ti = tarfile.TarInfo("etc")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        t.addfile(ti)
    b.seek(0)
    e = thinp.Engine(driver)
    e.import_(b, "img:1")
    return e


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_sync_writes_back_a_mounted_containers_small_files(driver):
    with _small_image_engine(driver) as e:
        c = e.start(e.create("img:1"))
        e.sync()
        before = e.metrics()["bytes_written"]
        v = e.mount(c)
        for k in range(64):
            v.create(f"/etc/f{k}")
            v.write(f"/etc/f{k}", 0, 512)
        e.sync()
        m = e.metrics()
        assert m["bytes_written"] - before >= 64 * 512
        assert e.containers[c.id].state == "running" and e.mount(c) is v    # still mounted
        e.sync()                                     # nothing left: a second sync writes nothing
        assert e.metrics()["bytes_written"] == m["bytes_written"]


def test_devicemapper_holds_small_files_until_sync():
    """xfs on the thin device delays allocation: before sync the pool has seen
    none of the 64 new files' data, after it every file has its block."""
    with _small_image_engine("devicemapper") as e:
        c = e.start(e.create("img:1"))
        e.sync()
        m0 = e.metrics()
        v = e.mount(c)
        for k in range(64):
            v.create(f"/etc/f{k}")
            v.write(f"/etc/f{k}", 0, 512)
        m1 = e.metrics()
        e.sync()
        m2 = e.metrics()
        assert m1["bytes_written"] - m0["bytes_written"] < 64 * 4096
        assert m2["bytes_written"] - m0["bytes_written"] >= 64 * 4096


def test_sync_on_a_closed_engine_is_an_error():
    e = thinp.Engine("overlay2")
    e.close()
    with pytest.raises(thinp.errors.ThinpError, match="closed"):
        e.sync()


SMALL_FILES = Workload("small-files", "debian-minbase", 2, [
    Step("files", path="/data/{c}", count=300, size=512),
    Step("append", path="/var/log/app.log", size=200, count=50),
], 9)


@pytest.fixture(scope="module")
def small_runs():
    return {d: W.run(SMALL_FILES, d) for d in ALL_DRIVERS}


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_every_driver_writes_at_least_what_the_workload_wrote(small_runs, driver):
    r = small_runs[driver]
    assert r.error is None
    asked = 300 * 512 + 50 * 200          # per container
    for pc in r.per_container:
        assert pc["steps"]["bytes_written"] >= asked, driver
    assert r.phases["steps"]["bytes_written"] >= 2 * asked
    # and every phase's reading is after sync: the final counters are the sum of the phases
    assert r.metrics["bytes_written"] - sum(p["bytes_written"] for p in r.phases.values()) == \
        _empty(driver)


_EMPTY: dict = {}


def _empty(driver):
    if driver not in _EMPTY:
        with thinp.Engine(driver) as e:
            _EMPTY[driver] = e.metrics()["bytes_written"]
    return _EMPTY[driver]


def test_block_drivers_write_a_block_per_small_file(small_runs):
    """300 files of 512 B: a filesystem block (4 KiB) each on devicemapper's
    xfs and on the union drivers' ext4; btrfs keeps them inline in its leaves
    (16 KiB nodes, two copies), so it writes less than 300 blocks but more
    than the data."""
    for d in ("devicemapper", "overlay2", "aufs", "vfs"):
        assert small_runs[d].phases["steps"]["bytes_written"] >= 2 * 300 * 4096, d
    b = small_runs["btrfs"].phases["steps"]
    assert 2 * 300 * 512 < b["bytes_written"] < 2 * 300 * 4096
    assert b["metadata_bytes"] >= 2 * 2 * 16384         # new leaves, not one


def test_btrfs_new_files_fill_new_leaves():
    """A step that makes thousands of inodes in one transaction dirties the
    leaves they fill, not only the tree's last leaf."""
    w = Workload("many", "debian-minbase", 1, [Step("files", path="/d", count=3000, size=512)], 1)
    r = W.run(w, "btrfs")
    meta = r.phases["steps"]["metadata_bytes"]
    from thinp.drivers.btrfs import LEAF_CAPACITY, LEAF_FILL, NODESIZE

    # ~3000 x (inode + ref + 2 dir items + 512 B inline) of items
    leaves = 3000 * 700 // int(LEAF_CAPACITY * LEAF_FILL)
    assert meta >= leaves * NODESIZE * 2
    assert r.phases["steps"]["bytes_written"] >= meta


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_app_bytes_and_write_amplification_comparable(small_runs, driver):
    """The workload's own bytes are counted once, the same on every driver,
    and write amplification divides the device bytes by them."""
    from thinp.cost import estimate

    r = small_runs[driver]
    for pc in r.per_container:
        assert pc["steps"]["app_bytes_written"] == 300 * 512 + 50 * 200
        assert pc["create"]["app_bytes_written"] == 0
    assert "app_bytes_written" not in r.metrics
    e = estimate(driver, r.metrics, per_container=r.per_container, phases=r.phases)
    assert e["write_amplification"] == pytest.approx(
        r.phases["steps"]["bytes_written"] / (2 * (300 * 512 + 50 * 200)))
    assert e["write_amplification"] >= 1.0


@pytest.mark.parametrize("driver", ALL_DRIVERS)
def test_disk_used_counts_metadata_once(small_runs, driver):
    """Only devicemapper keeps metadata outside physical_bytes (the pool's
    metadata device); elsewhere it is part of the device's allocation."""
    from thinp.cost import estimate

    r = small_runs[driver]
    m = r.metrics
    e = estimate(driver, m, per_container=r.per_container, phases=r.phases)
    extra = m["metadata_bytes"] if driver == "devicemapper" else 0
    assert e["disk_used_bytes"] == m["physical_bytes"] + extra
    assert e["disk_used_bytes"] == e["disk_data_bytes"] + e["disk_metadata_bytes"]
    assert 0 < m["metadata_bytes"] and (driver == "devicemapper" or m["metadata_bytes"] < m["physical_bytes"])

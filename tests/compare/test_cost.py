"""The byte accounting and device profiles, and the published rankings on the
built-in scenarios, reproduced through the timing model's simulated columns."""
from __future__ import annotations

import dataclasses
import json

import pytest

from thinp import cost
from thinp.experiments.compare import row_from_result


def est(results, workload, driver, **kw):
    return row_from_result(results(workload, driver), **kw)


# ------------------------------------------------------------------ units
def test_device_profiles_have_all_fields_and_sources():
    assert set(cost.DEVICES) == {"hdd", "sata-ssd", "nvme", "ram"}
    for d in cost.DEVICES.values():
        assert d.source
        assert d.read_latency_s > 0 and d.write_bandwidth > 0
    # the order a user expects: hdd slowest, ram fastest, per random 4 KiB write
    t = {n: d.write_s(4096, 1) for n, d in cost.DEVICES.items()}
    assert t["hdd"] > t["sata-ssd"] > t["nvme"] > t["ram"]


def test_device_write_time_is_latency_plus_bandwidth():
    d = cost.DeviceProfile("x", 1e-3, 2e-3, 3e-3, 100.0, 200.0, 400.0)
    assert d.write_s(400, 2) == pytest.approx(2 * 2e-3 + 2.0)
    assert d.read_s(100, 1) == pytest.approx(1e-3 + 1.0)
    assert d.discard_s(400, 1) == pytest.approx(3e-3 + 1.0)


def test_user_device_from_toml(tmp_path):
    p = tmp_path / "dev.toml"
    p.write_text('[device]\nname = "slow"\nread_latency_s = 1e-3\nwrite_latency_s = 2e-3\n'
                 'discard_latency_s = 0\nread_bandwidth = "100M"\nwrite_bandwidth = "50M"\n'
                 'discard_bandwidth = "1G"\n')
    d = cost.load_device(str(p))
    assert d.name == "slow" and d.write_bandwidth == 50 << 20 and d.discard_latency_s == 0
    assert d.transfer_on_cpu is False
    p.write_text(p.read_text() + "transfer_on_cpu = true\n")
    assert cost.load_device(str(p)).transfer_on_cpu is True


@pytest.mark.parametrize("body, msg", [
    ('[device]\nread_latency_s = 1\nbogus = 2\n', "unknown key device.bogus"),
    ('[device]\nread_latency_s = 1e-3\nwrite_latency_s = 1e-3\ndiscard_latency_s = 1e-3\n'
     'read_bandwidth = "lots"\nwrite_bandwidth = "1M"\ndiscard_bandwidth = "1M"\n',
     "bad value device.read_bandwidth = 'lots'"),
    ('[device]\nread_latency_s = 1e-3\n', "missing key device.write_latency_s"),
    ('[nodevice]\n', "no [device] table"),
    ('[device]\nread_latency_s = 1e-3\nwrite_latency_s = 1e-3\ndiscard_latency_s = 1e-3\n'
     'read_bandwidth = "1M"\nwrite_bandwidth = "1M"\ndiscard_bandwidth = "1M"\ntransfer_on_cpu = "yes"\n',
     "bad value device.transfer_on_cpu = 'yes' (want true or false)"),
    ('not toml ===', "not valid TOML"),
])
def test_bad_device_toml_is_one_line(tmp_path, body, msg):
    p = tmp_path / "d.toml"
    p.write_text(body)
    with pytest.raises(cost.CostModelError) as e:
        cost.load_device(str(p))
    assert msg in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_unknown_device_name():
    with pytest.raises(cost.CostModelError, match="unknown device 'floppy'"):
        cost.load_device("floppy")


def test_constants_overridable_and_from_toml(tmp_path):
    k = cost.CostConstants()
    assert k.get("metadata_in_physical", "devicemapper") is False
    assert k.get("metadata_in_physical", "nosuch") is True
    p = tmp_path / "k.toml"
    p.write_text('[constants]\n[constants.zeroes_new_blocks]\ndevicemapper = true\n')
    k2 = cost.CostConstants.from_toml(str(p))
    assert k2.get("zeroes_new_blocks", "devicemapper") is True
    assert k2.get("zeroes_new_blocks", "aufs") is False
    p.write_text('[constants]\nwarp = 1\n')
    with pytest.raises(cost.CostModelError, match="unknown key constants.warp"):
        cost.CostConstants.from_toml(str(p))


@pytest.mark.parametrize("key", sorted(cost.MOVED_TO_TIMING))
def test_old_time_constants_say_where_they_went(tmp_path, key):
    """The order-of-magnitude time estimates are gone; a constants file still
    setting one of theirs gets one line naming it and its successor."""
    p = tmp_path / "k.toml"
    p.write_text(f"[constants]\n{key} = 1\n")
    with pytest.raises(cost.CostModelError) as e:
        cost.CostConstants.from_toml(str(p))
    msg = str(e.value)
    assert f"unknown key constants.{key} = 1" in msg and cost.MOVED_TO_TIMING[key] in msg and "\n" not in msg
    assert key not in {f.name for f in dataclasses.fields(cost.CostConstants)}


def test_old_time_constants_successors_exist():
    from thinp.timing import TimingConstants

    names = {f.name for f in dataclasses.fields(TimingConstants)}
    for where in cost.MOVED_TO_TIMING.values():
        if where.startswith("timing."):
            assert where.split(".", 1)[1] in names, where


def test_every_constant_is_documented():
    import inspect

    src = inspect.getsource(cost.CostConstants)
    for f in dataclasses.fields(cost.CostConstants):
        i = src.index(f"    {f.name}:")
        assert "#:" in src[max(0, i - 400):i], f"{f.name} has no #: comment"


def test_estimate_from_counts_alone():
    """A hand-made run: 2 containers, each copying up one 1 MiB file."""
    k = cost.CostConstants()
    dev = cost.DEVICES["nvme"]
    steps = {"bytes_written": 2 * (1 << 20) + 2 * 4096, "copy_up_bytes": 2 << 20, "copy_up_count": 2,
             "lookup_probes": 10}
    e = cost.estimate("overlay2", {"physical_bytes": 12, "metadata_bytes": 7, "bytes_written": 9},
                      phases={"steps": steps, "containers_create": {"create_ops": 4, "mount_ops": 2}},
                      containers=2, device=dev, constants=k)
    # overlay2's fs metadata is part of the device's allocation: counted once
    assert (e["disk_used_bytes"], e["disk_data_bytes"], e["disk_metadata_bytes"]) == (12, 5, 7)
    # devicemapper's pool metadata is its own device, beside the data device
    dm = cost.estimate("devicemapper", {"physical_bytes": 5, "metadata_bytes": 7}, containers=1)
    assert (dm["disk_used_bytes"], dm["disk_data_bytes"], dm["disk_metadata_bytes"]) == (12, 5, 7)
    assert e["copy_up_bytes"] == 2 << 20
    # two application writes of 4 KiB became 2 MiB + 8 KiB on the device
    assert e["write_amplification"] == pytest.approx((2 * (1 << 20) + 8192) / 8192)
    assert set(e) == {"disk_data_bytes", "disk_metadata_bytes", "disk_used_bytes", "bytes_written",
                      "copy_up_bytes", "cow_bytes", "zeroing_bytes", "lookup_probes", "write_amplification",
                      "containers"}
    # every time, and the page cache, is the timing model's
    assert not any(c.endswith("_s") or c.startswith("page_cache") for c in e)


def _reread(containers=2, count=3):
    """``containers`` containers each reading two 256 KiB image files ``count`` times."""
    from thinp.workloads import Step, Workload
    from thinp.workloads.format import ImageSpec, LayerSpec

    return Workload("reread", ImageSpec("synthetic", None, layers=[LayerSpec(2, 256 << 10, 1, "/data")]),
                    containers, [Step("read", glob="/data/**", count=count)], 1, "rereads")


@pytest.mark.parametrize("driver, copies", [("overlay2", 1), ("devicemapper", 2)])
def test_page_cache_columns_are_the_timing_models_lru(driver, copies):
    """The page-cache columns are the simulated LRU's: rereads inside a
    container hit (the old formula counted hits only across containers),
    and the bytes are the report's the read times were priced from."""
    from thinp.timing import simulate
    from thinp.workloads import run

    res = run(_reread(), driver)
    row = row_from_result(res)
    rep = simulate(res.oplog)
    files = 2 * (256 << 10)
    # one copy of the files per page-cache key: shared by the containers on
    # overlay2 (the lower layer's inode), one per container's device on devicemapper
    assert row["page_cache_bytes"] == copies * files
    assert row["page_cache_miss_bytes"] == copies * files == rep.miss_pages * 4096
    # 2 containers x 3 reads of the files: what did not miss hit, inside a container too
    assert row["page_cache_hit_bytes"] == 2 * 3 * files - copies * files == rep.hit_pages * 4096
    one = row_from_result(run(_reread(containers=1), driver))
    assert one["page_cache_hit_bytes"] == 2 * files           # N = 1: its own rereads hit


def test_page_cache_bytes_capped_by_the_simulated_cache(results):
    """A cache smaller than what the containers read holds at most its
    size, and the rereads that no longer fit miss."""
    from thinp.timing import TimingConstants

    r = results("read-heavy", "devicemapper")
    big = row_from_result(r)
    small = row_from_result(r, timing=TimingConstants(cache_bytes=8 << 20))
    assert small["page_cache_bytes"] == 8 << 20 < big["page_cache_bytes"]
    assert big["page_cache_bytes"] == big["page_cache_miss_bytes"]
    assert small["page_cache_miss_bytes"] >= big["page_cache_miss_bytes"]
    total = big["page_cache_miss_bytes"] + big["page_cache_hit_bytes"]
    assert small["page_cache_miss_bytes"] + small["page_cache_hit_bytes"] == total   # the same reads


def test_per_container_times_to_plot(results):
    """``sim_per_container`` holds each container's simulated times, and
    :func:`per_container_frame` makes them a long DataFrame whose means are
    the table's per-container columns."""
    import pandas as pd

    from thinp.experiments.compare import PER_CONTAINER_TIMES, per_container_frame

    rows = [est(results, "webapp", d) for d in ("overlay2", "devicemapper")]
    rows.append(row_from_result(_Failed("aufs")))
    df = pd.DataFrame(rows)
    pc = per_container_frame(df)
    assert list(pc.columns) == ["driver", "container", *PER_CONTAINER_TIMES]
    assert set(pc["driver"]) == {"overlay2", "devicemapper"}          # the failed driver has none
    for r in rows[:2]:
        mine = pc[pc["driver"] == r["driver"]]
        assert len(mine) == r["containers"] and list(mine["container"]) == list(range(len(mine)))
        assert mine["start_s"].mean() == pytest.approx(r["sim_start_s"])
        assert mine["steps_s"].mean() == pytest.approx(r["sim_steps_s"])
        assert mine["first_write_s"].mean() == pytest.approx(r["sim_first_write_s"])
        assert (mine["end_s"] <= r["sim_time_s"] + 1e-12).all()
    # devicemapper's starts serialize on its DeviceSet lock: the containers end one after another
    dm = pc[pc["driver"] == "devicemapper"]
    assert dm["end_s"].is_monotonic_increasing and dm["end_s"].iloc[-1] > dm["end_s"].iloc[0]


class _Failed:
    driver, workload, error = "aufs", "webapp", "OSError: boom"
    metrics, per_container, phases = {}, [], {}

    def __init__(self, driver):
        self.driver = driver


def test_findings_are_listed():
    assert cost.FINDINGS["reproduced"] and cost.FINDINGS["not_reproduced"]


# ------------------------------------------- published rankings (Tarasov 2017, Docker docs)
# on the built-in scenarios that produce the README's comparison (tests/compare/conftest.py
# SCALES), through the timing model's sim_* columns
@pytest.mark.parametrize("device", ["nvme", "hdd"])
def test_devicemapper_starts_slower_than_union_drivers(results, device):
    """Tarasov 2017: devicemapper's writable layer is slow to set up."""
    dm = est(results, "webapp", "devicemapper", device=device)["sim_start_s"]
    for d in ("overlay2", "aufs"):
        assert dm > 3 * est(results, "webapp", d, device=device)["sim_start_s"]


def test_devicemapper_no_shared_page_cache_and_slower_reads(results):
    """Tarasov 2017: N containers reading one image file cost N copies of
    page cache on devicemapper, one on overlay2/aufs, and the read workload is
    slower there (the timing model's LRU misses once per container)."""
    dm = est(results, "read-heavy", "devicemapper")
    n = dm["containers"]
    assert n >= 2
    for d in ("overlay2", "aufs"):
        u = est(results, "read-heavy", d)
        assert dm["page_cache_bytes"] == pytest.approx(n * u["page_cache_bytes"])
        assert dm["sim_steps_s"] > u["sim_steps_s"]
        assert json.loads(dm["sim_phases"])["steps"] > json.loads(u["sim_phases"])["steps"]


def test_first_write_to_big_file_expensive_on_copy_up(results):
    """Tarasov 2017 / Docker overlayfs docs: whole-file copy-up makes the first
    write to a big file expensive on aufs and overlay2, not on block CoW
    (devicemapper's write dirties the page cache; its CoW is at writeback)."""
    big = int(round((1 << 30) * 0.05))          # big-file-update's 1 GiB file, scaled
    for dev in ("nvme", "sata-ssd", "hdd"):
        for block_driver in ("devicemapper", "btrfs"):
            block = est(results, "big-file-update", block_driver, device=dev)["sim_first_write_s"]
            for d in ("overlay2", "aufs"):
                r = est(results, "big-file-update", d, device=dev)
                assert r["copy_up_bytes"] >= big                  # the whole file, copied up
                assert r["sim_first_write_s"] > 10 * block, (dev, d, block_driver)
        assert est(results, "big-file-update", "overlay2", device=dev)["write_amplification"] > \
            5 * est(results, "big-file-update", "devicemapper", device=dev)["write_amplification"]


def test_vfs_copies_the_whole_image_per_container(results):
    """Tarasov 2017 / Docker vfs docs: a deep copy per container."""
    v = est(results, "webapp", "vfs")
    o = est(results, "webapp", "overlay2")
    n = v["containers"]
    r_v, r_o = results("webapp", "vfs"), results("webapp", "overlay2")
    image = r_o.phases["image_load"]["logical_bytes"]
    create_v = r_v.phases["containers_create"]["bytes_written"]
    assert create_v >= n * image
    assert create_v > 10 * r_o.phases["containers_create"]["bytes_written"]
    assert v["sim_start_s"] > 5 * o["sim_start_s"]
    assert r_v.metrics["physical_bytes"] - r_o.metrics["physical_bytes"] > (n - 1) * image


def test_devicemapper_teardown_slower():
    """Tarasov 2017: devicemapper's writable layer is slow to destroy -- seen
    when the workload removes its containers (an ``rm`` step: the ``rm``
    phase of ``sim_phases``)."""
    from thinp.workloads import Step, Workload, run
    from thinp.workloads.format import ImageSpec

    wl = Workload("rm-three", ImageSpec("synthetic", None), 3,
                  [Step("create", path="/srv/a", size=4096), Step("rm")], 1, "three containers removed")
    rm = {}
    for d in ("overlay2", "aufs", "vfs", "devicemapper"):
        row = row_from_result(run(wl, d))
        rm[d] = json.loads(row["sim_phases"])["rm"]
    for d in ("overlay2", "aufs", "vfs"):
        assert rm["devicemapper"] > 5 * rm[d], rm


def test_nested_per_container_and_extra_phases():
    """thinp.workloads.run nests per-container deltas under "create"/"steps"
    and files commit/diff/export/rm under their own phases."""
    flat = [{"copy_up_bytes": 1 << 20, "bytes_written": 2 << 20}, {"copy_up_bytes": 0}]
    nested = [{"container": i, "create": {"copy_up_bytes": 7}, "steps": d} for i, d in enumerate(flat)]
    a = cost.estimate("overlay2", {}, per_container=flat)
    b = cost.estimate("overlay2", {}, per_container=nested)
    assert a == b and a["copy_up_bytes"] == 1 << 20 and a["containers"] == 2
    base = {"containers_create": {"create_ops": 4}, "steps": {"bytes_written": 8192}}
    more = dict(base, commit={"bytes_written": 1 << 20, "copy_up_bytes": 4096})
    e1 = cost.estimate("overlay2", {}, phases=base, containers=2)
    e2 = cost.estimate("overlay2", {}, phases=more, containers=2)
    assert (e1["copy_up_bytes"], e2["copy_up_bytes"]) == (0, 4096)


def test_counts_are_taken_as_given_no_unflushed_guess():
    """The accounting takes the device writes it is given (read after sync,
    as thinp.workloads.run reads them): logical growth without device
    writes is not turned into guessed writes."""
    steps = {"logical_bytes": 10_001 * 512, "bytes_written": 0, "inodes": 10_001, "app_bytes_written": 512}
    e = cost.estimate("devicemapper", {}, phases={"steps": steps}, containers=1)
    assert "unflushed_bytes" not in e
    assert e["write_amplification"] == 0.0


def test_devicemapper_counts_the_log_append_after_sync(results):
    """webapp appends 200-byte lines to a log and rewrites 4 KiB of the
    image's sqlite file in each container: on devicemapper the xfs of the
    still-mounted container holds the appends back until sync; read after
    sync every container's steps copy at least one 64 KiB pool block and
    write the log back beside it."""
    r = results("webapp", "devicemapper")
    assert len(r.per_container) == 5
    for d in r.per_container:
        s = d.get("steps", d)
        assert s["cow_bytes"] >= 65536
        assert s["bytes_written"] >= s["cow_bytes"] + 4096

"""The timing model's mechanisms added for ``thinp validate timing`` (issue
#13): each one's effect on predicted times, computed from the constants --
never measured time."""
import dataclasses

import pytest

from thinp.timing import TimingConstants, simulate
from thinp.validate import timing as vt
from thinp.workloads import Step, Workload, run
from thinp.workloads.format import ImageSpec, LayerSpec

MiB = 1 << 20


def _wl(steps, processes=1):
    img = ImageSpec("synthetic", None, layers=[LayerSpec(4, 64 << 10, 1, "/data")],
                    extra=[("/big", 4 * MiB)])
    return Workload("t", img, 1, steps, 0, processes=processes)


def _steps_s(log, k, device="ram"):
    return max(c["steps_s"] for c in simulate(log, device=device, constants=k).per_container)


def _one_core(**kw):
    return dataclasses.replace(TimingConstants(), cores=1, **kw)


@pytest.mark.parametrize("driver", ["overlay2", "btrfs", "vfs"])
def test_per_kind_layer_cost_is_paid_once_per_operation_of_that_kind(driver):
    log = run(_wl([Step("append", path="/log", size=5, count=50)]), driver).oplog
    writes = sum(1 for j in range(len(log)) if log.kind[j] == "write" and log.phase[j] == "steps")
    assert writes == 50
    base = _one_core(layer_kind_s={"default": 0.0})
    extra = _one_core(layer_kind_s={"default": 0.0, f"{driver}.write": 1e-3})
    # one process on one core: every microsecond of CPU is wall time
    assert _steps_s(log, extra) - _steps_s(log, base) == pytest.approx(50 * 1e-3, rel=1e-6)
    # a key for another driver changes nothing
    other = _one_core(layer_kind_s={"default": 0.0, "zfs.write": 1e-3})
    assert _steps_s(log, other) == pytest.approx(_steps_s(log, base), rel=1e-9)


def test_overlayfs_prices_an_open_and_a_create_above_ext4_by_default():
    k = TimingConstants()
    for kind in ("write", "read", "mkdir"):
        assert k.layer_kind_s[f"overlay2.{kind}"] > 0
        assert f"vfs.{kind}" not in k.layer_kind_s
    log_ov = run(_wl([Step("append", path="/log", size=5, count=200)]), "overlay2").oplog
    log_vfs = run(_wl([Step("append", path="/log", size=5, count=200)]), "vfs").oplog
    one = _one_core()
    # 200 appends: overlayfs pays 200 backing-file opens more than vfs' ext4
    assert _steps_s(log_ov, one) - _steps_s(log_vfs, one) > 200 * k.layer_kind_s["overlay2.write"]


def _dev(bandwidth):
    """A device whose transfer of a page takes 4096 / ``bandwidth`` s, no latency."""
    from thinp.cost import DeviceProfile, load_device

    return DeviceProfile(**{**dataclasses.asdict(load_device("ram")), "read_latency_s": 0.0,
                            "read_bandwidth": bandwidth})


def test_a_cold_read_pays_per_page_brought_in():
    log = run(_wl([Step("read", path="/big")]), "vfs").oplog
    pages = 4 * MiB // 4096
    a = _steps_s(log, _one_core(page_miss_s=0.0, page_read_cpu_s={"default": 0.0}))
    b = _steps_s(log, _one_core(page_miss_s=2e-6, page_read_cpu_s={"default": 0.0}))
    assert b - a == pytest.approx(pages * 2e-6, rel=1e-6)       # the ram device's transfer hides none of it


def test_readahead_overlaps_the_transfer_with_the_copy():
    """A sequential cold read of W readahead windows: the device fills the
    next window while the reader copies this one, so the read takes about
    the larger of its CPU and its transfer, not their sum."""
    log = run(_wl([Step("read", path="/big")]), "vfs").oplog
    pages, windows = 4 * MiB // 4096, 4 * MiB // (128 << 10)
    cpu_page, xfer_page = 2e-6, 1.5e-6           # CPU per page (copy + miss), transfer per page
    k = _one_core(page_copy_s=0.5e-6, page_miss_s=1.5e-6, page_read_cpu_s={"default": 0.0})
    t = _steps_s(log, k, device=_dev(4096 / xfer_page))
    serial = pages * (cpu_page + xfer_page)
    overlapped = pages * cpu_page + pages * xfer_page / windows      # all but the first window hidden
    assert t == pytest.approx(overlapped, rel=0.02) and t < 0.6 * serial


def test_a_loop_device_over_memory_copies_its_transfers_on_the_cores():
    """A device whose transfers are a host thread's copies (a loop device
    over a tmpfs file): its one worker's transfers take the cores the
    readers run on, one at a time.  Four readers on one core then take the
    readers' CPU and every transfer in sum; on a device of its own the
    transfers run beside the CPU.  With a core to spare one reader takes
    what it does on a device of its own, and the worker's waits are the
    device's."""
    four = run(_wl([Step("read", path="/data/d0000/f{p:06d}")], processes=4), "vfs").oplog
    pages = (64 << 10) // 4096
    one = run(_wl([Step("read", path="/big")]), "vfs").oplog
    cpu_page, xfer_page = 2e-6, 1.5e-6
    k = _one_core(page_copy_s=0.5e-6, page_miss_s=1.5e-6, page_read_cpu_s={"default": 0.0})
    dev = _dev(4096 / xfer_page)
    loop = dataclasses.replace(dev, transfer_on_cpu=True)
    # each file is one readahead window: nothing of its copy overlaps; on
    # one core the transfers (the files' pages and their inodes' blocks) add
    # to everything else the readers do, as a free transfer shows it
    free = dataclasses.replace(_dev(1e15), transfer_on_cpu=True)
    t0, t_loop, t_dev = (_steps_s(four, k, d) for d in (free, loop, dev))
    assert t_loop - t0 == pytest.approx(4 * pages * xfer_page, rel=0.15)
    assert t_dev < t_loop - 0.5 * 4 * pages * min(cpu_page, xfer_page)
    two = dataclasses.replace(k, cores=2)
    assert _steps_s(one, two, loop) == pytest.approx(_steps_s(one, two, dev), rel=0.02)
    rep = simulate(four, device=loop, constants=dataclasses.replace(k, cores=8))
    assert rep.wait_s.get("device", 0.0) > 0 and "cpu" not in rep.wait_s


def test_checksum_verification_is_cpu_that_readers_of_several_files_run_at_once():
    """btrfs verifies each page read in its end-io workers, zfs-fuse in its
    daemon's threads: one reader pays it in full (nothing to overlap on a
    device that costs nothing), 4 readers of 4 files on 8 cores pay it
    side by side as they do their own CPU per page (page_miss_s), and on
    one core one after another -- it is CPU, not the device's one transfer
    channel."""
    steps = [Step("read", path="/data/d0000/f{p:06d}")]
    img = ImageSpec("synthetic", None, layers=[LayerSpec(4, 4 * MiB, 1, "/data")])
    one = run(Workload("t", img, 1, steps, 0, processes=1), "btrfs").oplog
    four = run(Workload("t", img, 1, steps, 0, processes=4), "btrfs").oplog
    pages = 4 * MiB // 4096
    dev = _dev(1e15)                        # a transfer that costs nothing
    base = dataclasses.replace(TimingConstants(), cores=8, page_copy_s=0.0, page_miss_s=0.0,
                               page_read_cpu_s={"default": 0.0})
    verify = dataclasses.replace(base, page_read_cpu_s={"default": 0.0, "btrfs": 10e-6})
    cpu = dataclasses.replace(base, page_miss_s=10e-6)
    t0 = _steps_s(one, base, dev)
    assert _steps_s(one, verify, dev) - t0 == pytest.approx(pages * 10e-6, rel=0.02)
    extra_cpu = _steps_s(four, cpu, dev) - _steps_s(four, base, dev)
    assert extra_cpu == pytest.approx(pages * 10e-6, rel=0.05)
    assert _steps_s(four, verify, dev) - _steps_s(four, base, dev) == pytest.approx(extra_cpu, rel=0.02)
    # on one core the four readers' verification queues for it
    b1, v1 = (dataclasses.replace(x, cores=1) for x in (base, verify))
    assert _steps_s(four, v1, dev) - _steps_s(four, b1, dev) == pytest.approx(4 * pages * 10e-6, rel=0.05)
    # another driver's entry changes nothing on btrfs
    other = dataclasses.replace(base, page_read_cpu_s={"default": 0.0, "zfs": 10e-6})
    assert _steps_s(four, other, dev) == pytest.approx(_steps_s(four, base, dev), rel=1e-9)


def test_a_daemons_round_trip_waits_hold_no_core():
    """zfs-fuse's calls wait for its daemon's threads: the share of a kind's
    extra cost that daemon_wait_share marks as asleep costs one process the
    same wall time, but N processes on fewer cores overlap it, where CPU
    they queue for."""
    n_appends = 50
    one = run(_wl([Step("append", path="/log{p}", size=5, count=n_appends)]), "zfs").oplog
    four = run(_wl([Step("append", path="/log{p}", size=5, count=n_appends)], processes=4), "zfs").oplog
    base = _one_core(layer_kind_s={"default": 0.0})
    cpu = _one_core(layer_kind_s={"default": 0.0, "zfs.write": 1e-3})
    half = dataclasses.replace(cpu, daemon_wait_share={"default": 0.0, "zfs.write": 0.5})
    # one process: asleep or on the core, the same wall time
    assert _steps_s(one, half) - _steps_s(one, base) == pytest.approx(n_appends * 1e-3, rel=1e-6)
    assert _steps_s(one, cpu) == pytest.approx(_steps_s(one, half), rel=1e-9)
    # four on one core: all of it queued for the core, or only the half on it
    assert _steps_s(four, cpu) - _steps_s(four, base) == pytest.approx(4 * n_appends * 1e-3, rel=0.02)
    assert _steps_s(four, half) - _steps_s(four, base) == pytest.approx(4 * n_appends * 0.5e-3, rel=0.05)
    # another driver's share changes nothing on zfs
    other = dataclasses.replace(cpu, daemon_wait_share={"default": 0.0, "btrfs.write": 0.5})
    assert _steps_s(four, other) == pytest.approx(_steps_s(four, cpu), rel=1e-9)


def test_a_round_trips_idle_wake_up_is_paid_alone_not_when_the_cores_are_busy():
    """zfs-fuse: the part of a kind's extra cost that idle_wake_s marks as
    waking idle cores costs one process the same wall time (a core is
    always idle beside it), but 4 processes on 1 core never find it idle
    and do without it; another driver's entry changes nothing."""
    n_appends = 50
    one = run(_wl([Step("append", path="/log{p}", size=5, count=n_appends)]), "zfs").oplog
    four = run(_wl([Step("append", path="/log{p}", size=5, count=n_appends)], processes=4), "zfs").oplog
    base = _one_core(layer_kind_s={"default": 0.0})
    cpu = _one_core(layer_kind_s={"default": 0.0, "zfs.write": 1e-3})
    wake = dataclasses.replace(cpu, idle_wake_s={"default": 0.0, "zfs.write": 0.4e-3})
    assert _steps_s(one, wake) == pytest.approx(_steps_s(one, cpu), rel=1e-9)
    assert _steps_s(four, cpu) - _steps_s(four, base) == pytest.approx(4 * n_appends * 1e-3, rel=0.02)
    # all but the few wake-ups that find the core free (a process's last, the
    # container's sync) are saved
    assert _steps_s(four, wake) - _steps_s(four, base) == pytest.approx(4 * n_appends * 0.6e-3, rel=0.05)
    # never more than the kind's extra cost, whatever the entry says
    over = dataclasses.replace(cpu, idle_wake_s={"default": 0.0, "zfs.write": 5e-3})
    assert _steps_s(four, over) >= _steps_s(four, base)
    other = dataclasses.replace(cpu, idle_wake_s={"default": 0.0, "btrfs.write": 0.4e-3})
    assert _steps_s(four, other) == pytest.approx(_steps_s(four, cpu), rel=1e-9)


def test_a_copy_ups_once_cost_is_paid_per_copy_up_on_its_driver():
    """copy_up_cpu_s (thinp calibrate: two cold copy-up sizes) is paid once
    per copied-up file on overlay2, whatever its size; vfs copies nothing."""
    steps = [Step("append", path="/big", size=4096, count=4)]
    ovl = run(_wl(steps), "overlay2").oplog
    k0 = _one_core(copy_up_cpu_s={"default": 0.0})
    k1 = _one_core(copy_up_cpu_s={"default": 0.0, "overlay2": 2e-3})
    assert _steps_s(ovl, k1) - _steps_s(ovl, k0) == pytest.approx(2e-3, rel=1e-6)
    vfs = run(_wl(steps), "vfs").oplog
    assert _steps_s(vfs, k1) == pytest.approx(_steps_s(vfs, k0), rel=1e-9)


def test_a_reread_pays_no_miss_cost():
    once = run(_wl([Step("read", path="/big")]), "vfs").oplog
    twice = run(_wl([Step("read", path="/big"), Step("read", path="/big")]), "vfs").oplog
    k0, k1 = _one_core(page_miss_s=0.0), _one_core(page_miss_s=5e-6)
    # the second read hits: the miss cost is paid for the first read's pages only
    assert (_steps_s(twice, k1) - _steps_s(twice, k0)) == pytest.approx(
        _steps_s(once, k1) - _steps_s(once, k0), rel=1e-6)


def test_cpu_bound_processes_share_the_cores():
    """N processes of CPU-only work on C cores take N/C times as long as one."""
    steps = [Step("append", path="/log-{p}", size=5, count=2000)]
    k = dataclasses.replace(TimingConstants(), cores=2)
    one = _steps_s(run(_wl(steps, 1), "vfs").oplog, k)
    four = _steps_s(run(_wl(steps, 4), "vfs").oplog, k)
    # 2x, give or take the first process's sync of the new container
    # (it runs it while the other three have begun)
    assert 1.9 * one <= four <= 2.2 * one
    eight_cores = dataclasses.replace(k, cores=8)
    assert one * 0.95 <= _steps_s(run(_wl(steps, 4), "vfs").oplog, eight_cores) <= 1.2 * one


def test_validation_predicts_on_the_machines_cores(monkeypatch):
    """``thinp validate timing`` replaces the constants' cores by this
    machine's: 4 processes on 1 core take about 4 times one process."""
    monkeypatch.setattr(vt.os, "sched_getaffinity", lambda _pid: {0})
    case = next(c for c in vt.CASES if c.name == "append-small")
    k = TimingConstants(cores=16)
    assert vt.predict(case, "vfs", 4, k) == pytest.approx(4 * vt.predict(case, "vfs", 1, k), rel=0.1)


def test_a_serialized_share_caps_how_far_that_kind_scales():
    """With a kind's whole CPU under the driver's one lock, 4 processes on
    8 cores take about 4 times one process; with none, about as long."""
    steps = [Step("append", path="/log-{p}", size=5, count=40)]
    one, four = run(_wl(steps, 1), "btrfs").oplog, run(_wl(steps, 4), "btrfs").oplog
    kind = {"default": 0.0, "btrfs.write": 1e-3}          # 1 ms of CPU per write: it dominates
    free = dataclasses.replace(TimingConstants(), cores=8, layer_kind_s=kind)
    locked = dataclasses.replace(free, serial_share={"default": 0.0, "btrfs.write": 1.0})
    t1 = _steps_s(one, free)
    assert t1 == pytest.approx(_steps_s(one, locked), rel=1e-6)     # alone, the lock costs nothing
    assert _steps_s(four, free) < 1.3 * t1
    assert _steps_s(four, locked) > 3.5 * t1
    rep = simulate(four, device="ram", constants=locked)
    assert rep.wait_s.get("btrfs_tree_lock", 0) > 3 * 40 * 1e-3       # the waits are on the lock
    # half under the lock: 4 processes need 4 x 0.5 ms of the lock per write round
    half = dataclasses.replace(locked, serial_share={"btrfs.write": 0.5})
    assert 1.6 * t1 < _steps_s(four, half) < 2.4 * t1
    # another driver's share changes nothing here
    other = dataclasses.replace(free, serial_share={"zfs.write": 1.0})
    assert _steps_s(four, other) == pytest.approx(_steps_s(four, free), rel=1e-9)


def test_a_sleeping_locks_hand_over_costs_each_waiter_its_handoff():
    """btrfs' tree lock held for a whole create: with serial_handoff_s h,
    4 processes that queue for it take about h longer per create after the
    first (each waiter resumes h after the release), one process alone
    nothing more; another kind's or driver's entry changes nothing."""
    steps = [Step("append", path="/log-{p}", size=5, count=40)]
    one, four = run(_wl(steps, 1), "btrfs").oplog, run(_wl(steps, 4), "btrfs").oplog
    kind = {"default": 0.0, "btrfs.write": 1e-3}
    locked = dataclasses.replace(TimingConstants(), cores=8, layer_kind_s=kind,
                                 serial_share={"default": 0.0, "btrfs.write": 1.0})
    h = 0.5e-3
    slow = dataclasses.replace(locked, serial_handoff_s={"btrfs.write": h})
    assert _steps_s(one, slow) == pytest.approx(_steps_s(one, locked), rel=1e-9)
    # 4 x 40 writes one at a time; all but the very first acquisition waited
    extra = _steps_s(four, slow) - _steps_s(four, locked)
    assert extra == pytest.approx((4 * 40 - 1) * h, rel=0.05)
    for other in ({"btrfs.create": h}, {"zfs.write": h}):
        k = dataclasses.replace(locked, serial_handoff_s=other)
        assert _steps_s(four, k) == pytest.approx(_steps_s(four, locked), rel=1e-9)


def test_calibrate_fits_a_handoff_where_4_at_once_did_less_than_1_alone():
    import pathlib

    from thinp.cost import toml_load
    from thinp.validate import calibrate as cal

    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "timing" / "calibrate.toml"
    meas = dict(toml_load(path)["calibration"]["measured_s"])
    # create+unlink (two ops a pair): 4 at once 4 us a pair slower than 1 alone
    meas.update({"btrfs.create_unlink.p1": 30e-6, "btrfs.create_unlink.p4": 4 * 34e-6,
                 # readdir: 4 at once within what the cores allow -- no lock, no handoff
                 "btrfs.readdir.p1": 20e-6, "btrfs.readdir.p4": 20e-6})
    t = cal.fit(meas, {})["timing"]
    assert t["serial_share"]["btrfs.create"] == 1.0
    assert t["serial_handoff_s"]["btrfs.create"] == pytest.approx(2e-6)
    assert t["serial_handoff_s"]["btrfs.unlink"] == pytest.approx(2e-6)
    assert "btrfs.readdir" not in t["serial_handoff_s"] and "btrfs.readdir" not in t["serial_share"]
    # the fitted table loads back as constants
    assert all(v >= 0 for v in t["serial_handoff_s"].values())


def test_buffered_writes_reach_the_device_at_sync_not_one_request_per_write():
    """btrfs counts an append's bytes when it is made; the model still
    writes them back at the container's sync, in merged requests: 200
    appends on a disk with 10 ms writes do not pay 200 latencies."""
    from thinp.cost import DeviceProfile, load_device

    hdd = load_device("hdd")
    slow = DeviceProfile(**{**dataclasses.asdict(hdd), "write_latency_s": 10e-3})
    log = run(_wl([Step("append", path="/log", size=4096, count=200)]), "btrfs").oplog
    writes = [j for j in range(len(log)) if log.kind[j] == "write" and log.phase[j] == "steps"]
    assert len(writes) == 200 and all(log.deltas[j][0] > 0 for j in writes)   # counted per write
    k = _one_core()
    rep = simulate(log, device=slow, constants=k)
    steps = max(c["steps_s"] for c in rep.per_container)
    assert steps < 20 * 10e-3                # a few latencies (the sync's), not 200
    # the bytes still reach the device: the sync's write-back holds it
    assert rep.busy_s["device"] >= 200 * 4096 / slow.write_bandwidth


def _start_s(n, driver, k):
    case = next(c for c in vt.CASES if c.name == "start")
    log = run(case.workload(n), driver).oplog
    return simulate(log, device="ram", constants=k).time_s


@pytest.mark.parametrize("serial", [0.05, 0.1, 0.3])
def test_concurrent_starts_add_their_serialized_part_each(serial):
    """N starts at once take one start plus (N - 1) x start_serial_s: below
    start_s the rest of a start runs beside the others, above it each start
    that waited for the lock resumes later (its hand-over).  Without
    start_serial_s the whole start serializes."""
    base = dataclasses.replace(TimingConstants(), cores=2, start_s={"default": 0.1})
    k = dataclasses.replace(base, start_serial_s={"btrfs": serial})
    t1 = _start_s(1, "btrfs", k)
    assert t1 == pytest.approx(_start_s(1, "btrfs", base), rel=1e-6)      # alone: start_s either way
    assert _start_s(4, "btrfs", k) - t1 == pytest.approx(3 * serial, rel=0.02)
    assert _start_s(4, "btrfs", base) - t1 == pytest.approx(3 * 0.1, rel=0.02)
    # another driver's entry changes nothing here
    other = dataclasses.replace(base, start_serial_s={"zfs": serial})
    assert _start_s(4, "btrfs", other) == pytest.approx(_start_s(4, "btrfs", base), rel=1e-9)


def test_a_union_init_layer_is_priced_as_creates_and_a_vfs_layer_as_copies():
    """overlay2's start makes its init layer's empty files (a create each);
    vfs copies the image file by file (vfs_copy_inode_s each)."""
    case = next(c for c in vt.CASES if c.name == "start")
    log = run(case.workload(1), "overlay2").oplog
    inodes = sum(log.deltas[j][8] for j in range(len(log)) if log.kind[j] == "container_start")
    assert inodes > 0
    k = _one_core(start_s={"default": 0.0})
    cheap = dataclasses.replace(k, cpu_s={**k.cpu_s, "create": 0.0}, vfs_copy_inode_s=0.0)
    dear = dataclasses.replace(k, cpu_s={**k.cpu_s, "create": 1e-3})
    assert _start_s(1, "overlay2", dear) - _start_s(1, "overlay2", cheap) == pytest.approx(inodes * 1e-3, rel=1e-6)
    copy = dataclasses.replace(cheap, vfs_copy_inode_s=1e-3)
    assert _start_s(1, "overlay2", copy) == pytest.approx(_start_s(1, "overlay2", cheap), rel=1e-9)
    vlog = run(case.workload(1), "vfs").oplog
    vinodes = sum(vlog.deltas[j][8] for j in range(len(vlog)) if vlog.kind[j] == "container_start")
    t0 = simulate(vlog, device="ram", constants=cheap).time_s
    assert simulate(vlog, device="ram", constants=copy).time_s - t0 == pytest.approx(vinodes * 1e-3, rel=1e-6)


def _copy_ups(n):
    """n processes, each appending to its own 4 MiB image file through
    overlay2: each open copies its file up first."""
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 1024, 1, "/etc")],
                    extra=[(f"/big{p}", 4 * MiB) for p in range(n)])
    return run(Workload("t", img, 1, [Step("append", path="/big{p}", size=4096, count=2)], 0,
                        processes=n), "overlay2").oplog


def test_a_copy_ups_worker_share_keeps_one_alone_and_queues_several_for_the_worker():
    """On a loop device over memory, copy_up_worker_share of a copy-up's
    cost runs on the device's one worker, not the copying process: one
    copy-up alone takes what it did (the cost is moved, not added); 4 at
    once on 4 cores then take about 4 worker shares end to end, where with
    the share at 0 (only the transfers on the worker) they ran side by
    side; a device of its own (no worker on the cores) is unchanged."""
    k = dataclasses.replace(TimingConstants(), cores=4, copy_up_page_s=4e-6,
                            copy_up_cpu_s={"default": 0.0})
    dev = dataclasses.replace(_dev(1e12), write_bandwidth=1e12)
    loop = dataclasses.replace(dev, transfer_on_cpu=True)
    none, share = (dataclasses.replace(k, copy_up_worker_share=s) for s in (0.0, 0.75))
    one, four = _copy_ups(1), _copy_ups(4)
    assert _steps_s(one, share, loop) == pytest.approx(_steps_s(one, none, loop), rel=1e-6)
    per_copy = 1024 * 4e-6
    assert _steps_s(four, none, loop) < 1.5 * per_copy
    assert _steps_s(four, share, loop) > 4 * 0.75 * per_copy
    assert _steps_s(four, share, dev) == pytest.approx(_steps_s(four, none, dev), rel=1e-9)


def test_copy_ups_fsync_waits_for_every_copy_in_flight_on_the_devices_worker():
    """A copy-up's fsync returns with the journal commit, which waits for
    every copy-up's write the loop device's one worker has in flight: on 2
    cores, 4 copy-ups each followed by appends of A seconds of CPU run their
    appends only once all 4 worker shares W are done -- at least 4 W + 2 A
    end to end, where a process free as soon as its own copy was written
    would run its appends beside the worker's later copies."""
    k = dataclasses.replace(TimingConstants(), cores=2, copy_up_page_s=4e-6, copy_up_worker_share=0.75,
                            copy_up_cpu_s={"default": 0.0}, cpu_s={**TimingConstants().cpu_s, "write": 1e-3})
    dev = dataclasses.replace(_dev(1e12), write_bandwidth=1e12, transfer_on_cpu=True)
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 1024, 1, "/etc")],
                    extra=[(f"/big{p}", 4 * MiB) for p in range(4)])
    log = run(Workload("t", img, 1, [Step("append", path="/big{p}", size=4096, count=6)], 0,
                       processes=4), "overlay2").oplog
    w, a = 0.75 * 1024 * 4e-6, 5 * 1e-3
    assert _steps_s(log, k, dev) > 4 * w + 0.95 * 2 * a


def test_a_write_that_fills_a_new_page_pays_its_own_idle_wake_ups():
    """zfs-fuse: idle_wake_s zfs.write.page is a 4 KiB append's wake-ups in
    place of zfs.write's (a 2 KiB append pays half of each); a 5-byte
    append keeps zfs.write's, and the key changes nothing without it."""
    def steps(size):
        return run(_wl([Step("append", path="/log", size=size, count=40)]), "zfs").oplog

    cpu = _one_core(layer_kind_s={"default": 0.0, "zfs.write": 1e-3},
                    idle_wake_s={"default": 0.0, "zfs.write": 0.4e-3})
    page = dataclasses.replace(cpu, idle_wake_s={**cpu.idle_wake_s, "zfs.write.page": 0.1e-3})
    full, half, small = steps(4096), steps(2048), steps(5)
    # one process alone: every write's wake-ups are paid
    assert _steps_s(full, cpu) - _steps_s(full, page) == pytest.approx(40 * 0.3e-3, rel=0.02)
    assert _steps_s(half, cpu) - _steps_s(half, page) == pytest.approx(40 * 0.15e-3, rel=0.02)
    assert _steps_s(small, cpu) - _steps_s(small, page) == pytest.approx(40 * 0.3e-3 * 5 / 4096, rel=0.02)
    # no more than the write's extra cost
    over = dataclasses.replace(cpu, idle_wake_s={**cpu.idle_wake_s, "zfs.write.page": 5e-3})
    assert _steps_s(full, over) == pytest.approx(_steps_s(full, dataclasses.replace(
        cpu, idle_wake_s={**cpu.idle_wake_s, "zfs.write.page": 1e-3})), rel=1e-9)


def test_a_write_that_fills_a_new_page_holds_the_lock_for_its_own_share():
    """zfs-fuse: serial_share zfs.write.page is a 4 KiB append's share under
    the daemon's lock in place of zfs.write's (a 2 KiB append takes half of
    each): 4 processes' 4 KiB appends all under it take about 4 times one
    process's, their 5-byte appends (zfs.write: none) scale with the cores,
    and alone the lock costs nothing."""
    from thinp.timing.model import write_serial_share

    def log(size, procs):
        return run(_wl([Step("append", path="/log-{p}", size=size, count=40)], procs), "zfs").oplog

    free = dataclasses.replace(TimingConstants(), cores=8, layer_kind_s={"default": 0.0, "zfs.write": 1e-3})
    page = dataclasses.replace(free, serial_share={**free.serial_share, "zfs.write.page": 1.0})
    t1 = _steps_s(log(4096, 1), free)
    assert _steps_s(log(4096, 1), page) == pytest.approx(t1, rel=1e-6)
    assert _steps_s(log(4096, 4), free) < 1.3 * t1
    assert _steps_s(log(4096, 4), page) > 3.5 * t1
    assert _steps_s(log(5, 4), page) < 1.3 * _steps_s(log(5, 1), page)
    assert 1.6 * t1 < _steps_s(log(2048, 4), page) < 2.9 * t1
    assert write_serial_share(0.2, None, 4096) == 0.2
    assert write_serial_share(0.2, 0.6, 2048) == pytest.approx(0.4)
    assert write_serial_share(0.2, 3.0, 4096) == 1.0


def test_overlayfs_creates_in_its_upper_dir_hold_at_least_ext4s_serialized_seconds():
    """A union kind made in the upper directory (ovl_create_upper: ext4's
    own mkdir beneath) is fitted to hold the driver's lock for at least
    the seconds vfs's (ext4's) same kind holds it; a union kind already
    holding longer keeps its share; a kind ext4 runs in parallel adds none."""
    from thinp.timing.model import op_cpu_s
    from thinp.validate import calibrate as cal

    cpu = {"default": 0.0, "mkdir": 20e-6, "create": 4e-6, "write": 0.5e-6}
    timing = {"cpu_s": cpu, "layer_kind_s": {"default": 0.0, "overlay2.mkdir": 10e-6, "overlay.mkdir": 10e-6,
                                              "overlay2.create": 4e-6},
              "serial_share": {"vfs.mkdir": 0.75, "vfs.create": 0.5, "overlay2.create": 0.9}}
    cal.union_upper_serial_fit(timing)
    k = dataclasses.replace(TimingConstants(), cpu_s=cpu, layer_kind_s=timing["layer_kind_s"])
    share = timing["serial_share"]
    for d in ("overlay2", "overlay"):
        held = share[f"{d}.mkdir"] * op_cpu_s(k, d, "mkdir")
        assert held == pytest.approx(0.75 * op_cpu_s(k, "vfs", "mkdir"), rel=1e-9)
        assert share[f"{d}.mkdir"] < 0.75          # overlayfs' own part of its mkdir runs beside
    assert share["overlay2.create"] == 0.9         # already longer than ext4's 2 us
    assert "overlay2.unlink" not in share and "overlay2.write" not in share
    # with that, 4 trees at once on 2 cores cost overlay2 more over one tree
    # than before: the union's mkdirs queue as ext4's do
    steps = [Step("tree", path="/t{p}", depth=5, fanout=2, size=1024)]
    one, four = run(_wl(steps, 1), "overlay2").oplog, run(_wl(steps, 4), "overlay2").oplog
    base = dataclasses.replace(k, cores=2, serial_share={"default": 0.0})
    fitted = dataclasses.replace(base, serial_share={"default": 0.0, **share})
    assert _steps_s(one, fitted) == pytest.approx(_steps_s(one, base), rel=1e-6)
    assert _steps_s(four, fitted) > 1.1 * _steps_s(four, base)


def test_busy_cores_slow_each_other_by_busy_slowdown_and_one_process_alone_not():
    """With busy_slowdown x, 4 CPU-bound processes on 2 cores take about
    (1 + x) times as long as without; one process alone, which never
    finds every other core taken, takes as long as without."""
    steps = [Step("append", path="/log-{p}", size=5, count=60)]
    one, four = run(_wl(steps, 1), "vfs").oplog, run(_wl(steps, 4), "vfs").oplog
    kind = {"default": 0.0, "vfs.write": 1e-3}          # 1 ms of CPU per write: it dominates
    base = dataclasses.replace(TimingConstants(), cores=2, layer_kind_s=kind)
    slow = dataclasses.replace(base, busy_slowdown=0.5)
    assert _steps_s(one, slow) == pytest.approx(_steps_s(one, base), rel=1e-9)
    assert _steps_s(four, slow) / _steps_s(four, base) == pytest.approx(1.5, rel=0.05)
    # on one core there is no other core to slow it
    k1 = dataclasses.replace(base, cores=1)
    assert _steps_s(four, dataclasses.replace(k1, busy_slowdown=0.5)) == pytest.approx(_steps_s(four, k1), rel=1e-9)


def test_calibrate_fits_busy_slowdown_from_the_lock_free_benchmarks_by_4():
    from thinp.validate import calibrate as cal

    meas = {}
    for where in cal.LOCK_FREE[0]:
        for op in cal.LOCK_FREE[1]:
            meas[f"{where}.{op}.p1"] = 2e-6
            meas[f"{where}.{op}.p4"] = 2e-6 * 2 * 1.2          # 4 on 2 cores: 1.2x the bound
    meas["ext4.create_unlink.p4"] = 1.0                        # a locked op is not looked at
    timing: dict = {}
    cal.busy_slowdown_fit(timing, meas, 2)
    assert timing["busy_slowdown"] == pytest.approx(0.2)
    # faster than the bound: no speed-up, 0
    timing = {}
    cal.busy_slowdown_fit(timing, {k: v / 2 if k.endswith("p4") else v for k, v in meas.items()}, 2)
    assert timing["busy_slowdown"] == 0.0
    timing = {}
    cal.busy_slowdown_fit(timing, meas, 1)                     # one core: nothing to fit
    assert "busy_slowdown" not in timing

"""The read side of the timing model (issue #13): a path's first lookup
(``meta_miss_s``, its serialized share, waits for a lookup in flight), vfs'
cold read of the image it copies at a container start, and ``thinp
calibrate``'s fit of the cold-read constants -- each mechanism's effect
computed from the constants, never measured time."""
import dataclasses

import pytest

from thinp.cost import DeviceProfile, load_device
from thinp.timing import TimingConstants, simulate
from thinp.validate import calibrate
from thinp.workloads import Step, Workload, run
from thinp.workloads.format import ImageSpec, LayerSpec

MiB = 1 << 20
FILES = 40


def _small_image():
    return ImageSpec("synthetic", None, layers=[LayerSpec(FILES, 4096, 4, "/small")])


def _steps_s(log, k, device="ram"):
    return max(c["steps_s"] for c in simulate(log, device=device, constants=k).per_container)


def _k(cores=8, **kw):
    return dataclasses.replace(TimingConstants(), cores=cores, **kw)


def _reads(driver, processes, own=False):
    step = Step("read", path="/small/d{p:04d}/f{p:06d}") if own else Step("read", glob="/small/**")
    return run(Workload("t", _small_image(), 1, [step], 0, processes=processes), driver).oplog


@pytest.mark.parametrize("driver", ["zfs", "overlay2", "btrfs"])
def test_a_paths_first_lookup_pays_meta_miss_once(driver):
    """One process reading every small file once, then again: each file's
    first lookup pays meta_miss_s, the second read none."""
    once = run(Workload("t", _small_image(), 1, [Step("read", glob="/small/**")], 0), driver).oplog
    twice = run(Workload("t", _small_image(), 1, [Step("read", glob="/small/**")] * 2, 0), driver).oplog
    k0 = _k(cores=1, meta_miss_s={"default": 0.0})
    k1 = _k(cores=1, meta_miss_s={"default": 0.0, driver: 1e-3})
    assert _steps_s(once, k1) - _steps_s(once, k0) == pytest.approx(FILES * 1e-3, rel=1e-3)
    assert _steps_s(twice, k1) - _steps_s(twice, k0) == pytest.approx(FILES * 1e-3, rel=1e-3)
    # another driver's entry changes nothing
    other = _k(cores=1, meta_miss_s={"default": 0.0, "vfs" if driver != "vfs" else "zfs": 1e-3})
    assert _steps_s(once, other) == pytest.approx(_steps_s(once, k0), rel=1e-9)


def test_processes_wait_for_a_lookup_in_flight_and_a_serial_share_caps_own_files():
    """zfs-fuse: 4 processes reading the same files share each file's first
    lookup (the others wait for it), so they take about as long as one;
    reading their own files, a lookup wholly under the daemon's one lock
    takes 4 times one process's, and none under it about as long."""
    miss = 1e-3             # dominates every other cost
    free = _k(meta_miss_s={"default": 0.0, "zfs": miss}, serial_share={"default": 0.0})
    locked = dataclasses.replace(free, serial_share={"default": 0.0, "zfs.meta_miss": 1.0})
    one_same, four_same = _reads("zfs", 1), _reads("zfs", 4)
    t1 = _steps_s(one_same, locked)
    assert t1 == pytest.approx(FILES * miss, rel=0.1)
    assert _steps_s(four_same, locked) < 1.2 * t1
    assert _steps_s(four_same, free) < 1.2 * t1
    one_own, four_own = _reads("zfs", 1, own=True), _reads("zfs", 4, own=True)
    o1 = _steps_s(one_own, locked)
    assert _steps_s(four_own, locked) == pytest.approx(4 * o1, rel=0.1)
    assert _steps_s(four_own, free) < 1.2 * o1
    rep = simulate(four_own, device="ram", constants=locked)
    assert rep.wait_s.get("zfs_fuse_daemon", 0.0) > 2 * miss        # the waits are on the daemon


def _start(driver, n):
    return run(Workload("s", _small_image(), n, [], 0), driver).oplog


def _start_reads(log):
    return [log.reads[a:b] for j, (a, b) in enumerate(log.pc) if log.kind[j] == "container_start"]


def test_a_vfs_start_logs_one_read_of_its_image_per_file():
    """The -init layer's copy reads the image layer's files; the
    container's copy of its -init reads pages just written: not logged."""
    log = _start("vfs", 2)
    per = _start_reads(log)
    assert [len(r) for r in per] == [FILES, FILES]
    assert all(p1 - p0 == 1 for r in per for _key, p0, p1 in r)           # 4 KiB each
    assert {key for key, _a, _b in per[0]} == {key for key, _a, _b in per[1]}  # the same image files
    # drivers that do not copy log no read at a start
    assert all(not r for r in _start_reads(_start("overlay2", 2)))


def test_a_vfs_start_prices_the_cold_source_read_once():
    """Two containers started at once read the image once: the first
    misses every file (a cold lookup and a page each), the second hits or
    waits for those pages."""
    dev = DeviceProfile(**{**dataclasses.asdict(load_device("ram")), "read_latency_s": 1e-3})
    k0 = _k(cores=1, meta_miss_s={"default": 0.0})
    k1 = _k(cores=1, meta_miss_s={"default": 0.0, "vfs": 1e-3})
    one, two = _start("vfs", 1), _start("vfs", 2)

    def t(log, k, device="ram"):
        return simulate(log, device=device, constants=k).time_s
    # per missed file: meta_miss_s, and an inode and a data request one after another
    assert t(one, k1) - t(one, k0) == pytest.approx(FILES * 1e-3, rel=1e-3)
    ram = load_device("ram")
    dev_extra = t(one, k0, dev) - t(one, k0)
    assert dev_extra == pytest.approx(2 * FILES * (1e-3 - ram.read_latency_s), rel=0.05)
    # two containers: one cold read of the image between them
    assert t(two, k1) - t(two, k0) == pytest.approx(FILES * 1e-3, rel=0.05)
    rep = simulate(two, device="ram", constants=k0)
    assert rep.miss_pages == FILES and rep.hit_pages == FILES


def test_calibrate_recovers_the_cold_read_constants_the_model_prices_with():
    """The fit of page_miss_s and page_read_cpu_s inverts the model's cold
    16 MiB read, asynchronous readahead included, in both branches of its
    overlap (CPU per page above and below the transfer per page), on a
    device whose transfers are a worker's CPU (where btrfs verifies on that
    worker, after the transfer) and on one whose are not."""
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 4096, 1, "/x")],
                    extra=[("/cold", calibrate.COLD_BYTES)])

    def cold(driver, k, dev):
        log = run(Workload("c", img, 1, [Step("read", path="/cold")], 0), driver).oplog
        return _steps_s(log, k, dev)

    cases = [(bw, miss, verify, on_cpu) for bw, miss, verify in
             ((4096 / 1e-6, 2e-6, 0.5e-6), (4096 / 3e-6, 0.5e-6, 0.4e-6), (4096 / 0.3e-6, 0.5e-6, 0.6e-6))
             for on_cpu in (False, True)]
    for bw, miss, verify, on_cpu in cases:
        dev = DeviceProfile(**{**dataclasses.asdict(load_device("ram")), "read_latency_s": 0.0,
                               "read_bandwidth": bw, "transfer_on_cpu": on_cpu})
        k = _k(cores=1, page_miss_s=miss, page_read_cpu_s={"default": 0.0, "btrfs": verify},
               cpu_s={"read": 0.0, "sync": 0.0}, journal_commit_writes=0, layer_cpu_s={"default": 0.0}, layer_kind_s={"default": 0.0},
               probe_s={"default": 0.0}, meta_read_bytes=0)
        meas = {"ext4.cold_read.p1": cold("vfs", k, dev), "btrfs.cold_read.p1": cold("btrfs", k, dev)}
        got_miss, got_verify = calibrate.cold_read_fit(meas, {"read_latency_s": 0.0, "read_bandwidth": bw}, k,
                                                       on_cpu=on_cpu)
        assert got_miss == pytest.approx(miss, rel=0.05)
        assert got_verify["btrfs"] == pytest.approx(verify, rel=0.1)


def test_calibrate_fits_meta_miss_and_its_serial_share_from_cold_small_reads():
    """A zfs whose cold small read costs 100 us over its warm one, and whose
    4 processes on their own files took as long as one, gets meta_miss_s
    100 us, all of it serialized (no device part is taken off: zfs-fuse's
    ARC held the files calibrate had just written); an ext4 whose cold
    read is the device's two requests gets 0."""
    k = TimingConstants()
    dev = {"read_latency_s": 20e-6, "read_bandwidth": 4096 / 1e-6}
    per_dev = 2 * (20e-6 + 1e-6)
    meas = _calibration_table()
    meas.update({"ext4.cold_small.p1": 10e-6 + per_dev + k.page_miss_s, "ext4.warm_small.p1": 10e-6,
                 "ext4.cold_split.p4": (10e-6 + per_dev) / 2,
                 "zfs.cold_small.p1": 50e-6 + 100e-6, "zfs.warm_small.p1": 50e-6,
                 "zfs.cold_split.p4": 50e-6 + 100e-6})
    timing = calibrate.fit(meas, dev)["timing"]
    miss = timing["page_miss_s"]
    assert timing["meta_miss_s"]["zfs"] == pytest.approx(100e-6 - miss, rel=1e-6)
    assert timing["meta_miss_s"]["default"] == pytest.approx(max(k.page_miss_s - miss, 0.0), abs=1e-9)
    assert timing["serial_share"]["zfs.meta_miss"] == pytest.approx(1.0)
    assert "vfs.meta_miss" not in timing["serial_share"]


def test_cold_small_rel_reads_the_drivers_files_between_ext4s_and_divides_their_times(tmp_path, monkeypatch):
    """Each run: a fresh copy, ``before``, drop_caches, then ext4's file i
    and the driver's file i in turn for every i, twice (cold, then warm);
    the driver's median cold read less its median warm one over ext4's (a
    clock that charges ext4's reads 1 s cold and 0.5 s warm and the
    driver's 3 s and 1 s gives 4, one read of each that waited 100 s
    aside); the copy is removed after each run."""
    import shutil

    from thinp.validate import timing as vt

    src, ref_dir = tmp_path / "src", tmp_path / "ref"
    paths = calibrate._cold_small_files(str(src))[:6]
    ref = calibrate._cold_small_files(str(ref_dir))[:6]
    events = []
    clock = [0.0]
    seen = set()
    real_read = vt.read_whole

    def read(path):
        events.append("ref" if path.startswith(str(ref_dir)) else "own")
        warm = path in seen
        seen.add(path)
        clock[0] += {("ref", False): 1.0, ("ref", True): 0.5, ("own", False): 3.0, ("own", True): 1.0}[
            events[-1], warm] + (100.0 if events.count(events[-1]) == 2 else 0.0)
        return real_read(path)
    monkeypatch.setattr(vt, "read_whole", read)
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(vt, "drop_caches", lambda: (events.append("drop"), seen.clear()))

    def fresh(ps):
        new = tmp_path / f"copy{events.count('copy')}"
        shutil.copytree(src, new)
        events.append("copy")
        return [str(new) + p[len(str(src)):] for p in ps], lambda: (shutil.rmtree(new), events.append("rm"))
    got = calibrate.cold_small_rel(paths, ref, runs=2, fresh=fresh, before=lambda: events.append("evict"))
    assert got == pytest.approx([4.0, 4.0])
    assert events == (["copy", "evict", "drop"] + ["ref", "own"] * 12 + ["rm"]) * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "src"]


def test_calibrate_fits_meta_miss_from_the_ratio_to_ext4_measured_beside_it():
    """A driver whose cold small reads were measured beside ext4's
    (``cold_small_rel``) gets meta_miss_s from what ext4's cold read took
    over its warm one times that ratio, not from its own figures measured
    apart; zfs's device part is taken off once its runs emptied the ARC
    first (evicted bytes kept)."""
    k = TimingConstants()
    dev = {"read_latency_s": 5e-6, "read_bandwidth": 4096 / 1e-6}
    per_dev = 2 * (5e-6 + 1e-6)
    meas = _calibration_table()
    meas.update({"ext4.cold_small.p1": 60e-6, "ext4.warm_small.p1": 4e-6,
                 "btrfs.cold_small.p1": 24e-6, "btrfs.warm_small.p1": 4e-6,
                 "zfs.cold_small.p1": 150e-6, "zfs.warm_small.p1": 30e-6})
    timing = calibrate.fit(meas, dev)["timing"]
    miss = timing["page_miss_s"]
    assert timing["meta_miss_s"]["btrfs"] == pytest.approx(24e-6 - 4e-6 - per_dev - miss, rel=1e-6)
    assert timing["meta_miss_s"]["zfs"] == pytest.approx(150e-6 - 30e-6 - miss, rel=1e-6)
    meas.update({"btrfs.cold_small_rel.p1": 1.1, "zfs.cold_small_rel.p1": 3.0,
                 "zfs.cold_small.evicted_bytes": 150e6})
    timing = calibrate.fit(meas, dev)["timing"]
    assert timing["meta_miss_s"]["btrfs"] == pytest.approx(1.1 * (60e-6 - 4e-6) - per_dev - miss, rel=1e-6)
    assert timing["meta_miss_s"]["zfs"] == pytest.approx(3.0 * (60e-6 - 4e-6) - per_dev - miss, rel=1e-6)
    assert timing["meta_miss_s"]["vfs"] == pytest.approx(60e-6 - 4e-6 - per_dev - miss, rel=1e-6)


def test_calibrate_fits_zfs_reads_serial_share_from_4_readers_of_the_same_cold_files():
    """4 processes reading the same cold files on zfs-fuse, each file 30 us
    later per reader past the first than one alone: that much of a read
    (its CPU with the cores busy) runs under the daemon's lock; readers that
    took no longer give none, and other drivers' cold reads give none."""
    dev = {"read_latency_s": 20e-6, "read_bandwidth": 4096 / 1e-6}
    meas = _calibration_table()
    meas.update({"zfs.cold_small.p1": 150e-6, "zfs.warm_small.p1": 50e-6, "zfs.cold_small.p4": 150e-6 + 3 * 30e-6,
                 "btrfs.cold_small.p4": 10 * meas["btrfs.cold_small.p1"],
                 # 4 warm open+reads at once as fast as the cores allow: the
                 # kept calibration's own may show contention, which gives
                 # zfs.read a share by the per-kind rule, not this one
                 "zfs.open_read.p4": 2 * meas["zfs.open_read.p1"]})
    timing = calibrate.fit(meas, dev)["timing"]
    wake = timing.get("idle_wake_s", {}).get("zfs.read", 0.0)
    asleep = timing["layer_kind_s"]["zfs.read"] * timing.get("daemon_wait_share", {}).get("zfs.read", 0.0)
    read_s = timing["cpu_s"]["read"] + timing["layer_cpu_s"]["zfs"] + timing["layer_kind_s"]["zfs.read"] - wake - asleep
    assert timing["serial_share"]["zfs.read"] == pytest.approx(min(30e-6 / read_s, 1.0), rel=1e-6)
    assert "btrfs.read" not in timing["serial_share"]
    meas["zfs.cold_small.p4"] = 140e-6
    assert "zfs.read" not in calibrate.fit(meas, dev)["timing"]["serial_share"]


def _calibration_table():
    """The figures ``fit`` needs besides the cold small reads (the kept
    calibration's, so the rest of the fit runs as it does on real data),
    less the kept cold small reads' ratios to ext4's and zfs-fuse's ARC
    evictions before them (the tests set the ones they mean)."""
    import pathlib

    from thinp.cost import toml_load

    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "timing" / "calibrate.toml"
    return {k: v for k, v in toml_load(path)["calibration"]["measured_s"].items()
            if ".cold_small_rel." not in k and k != "zfs.cold_small.evicted_bytes"}


def test_cold_small_reads_each_run_in_a_fresh_copy_and_removes_it(tmp_path, monkeypatch):
    """``fresh`` gives each run the files in a new copy (a container's new
    snapshot or clone) and the run removes it; the caches are dropped
    after the copy is made (here: counted, not dropped)."""
    import shutil

    from thinp.validate import timing as vt

    src = tmp_path / "src"
    paths = calibrate._cold_small_files(str(src))[:8]
    events = []
    monkeypatch.setattr(vt, "drop_caches", lambda: events.append("drop"))

    def fresh(ps):
        new = tmp_path / f"copy{len(events)}"
        shutil.copytree(src, new)
        events.append("copy")
        return [str(new) + p[len(str(src)):] for p in ps], lambda: (shutil.rmtree(new), events.append("rm"))
    per_file = calibrate._cold_small(paths, 2, reps=3, fresh=fresh)
    assert per_file > 0
    assert events == ["copy", "drop", "rm"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_btrfs_verifies_on_the_loop_worker_one_read_at_a_time():
    """btrfs checks a page's crc32c in the read's completion, on the CPU
    that completed it (model.VERIFY_IN_COMPLETION): on a loop device, whose
    transfers are its one worker's copies (transfer_on_cpu), 4 readers of
    their own 16 MiB files take at least 4 files' transfer and verification
    one after another, however many cores there are.  zfs-fuse's verification
    (its daemon's threads) runs on the cores beside the transfers, and on a
    device whose transfers are not CPU btrfs' does too."""
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 4096, 1, "/x")],
                    extra=[(f"/big{p}", 16 * MiB) for p in range(4)])
    log = {d: run(Workload("r", img, 1, [Step("read", path="/big{p}")], 0, processes=4), d).oplog
           for d in ("btrfs", "zfs")}
    t_page, v = 1e-6, 3e-6
    pages = 4 * 16 * MiB // 4096
    k = _k(cores=8, page_read_cpu_s={"default": 0.0, "btrfs": v, "zfs": v})
    for on_cpu in (True, False):
        dev = DeviceProfile(**{**dataclasses.asdict(load_device("ram")), "read_latency_s": 0.0,
                               "read_bandwidth": 4096 / t_page, "transfer_on_cpu": on_cpu})
        btrfs, zfs = (_steps_s(log[d], k, dev) for d in ("btrfs", "zfs"))
        if on_cpu:
            assert btrfs >= pages * (t_page + v) * 0.99
            # zfs: the transfers one at a time (4 files' worth), its
            # verification beside them on the other cores
            assert zfs < 0.6 * btrfs
        else:
            assert btrfs == pytest.approx(zfs, rel=0.3)
            assert btrfs < 0.6 * pages * (t_page + v)


def test_zfs_arc_ceiling_is_read_from_zfsrc(tmp_path):
    """max-arc-size (MiB) in zfsrc, comments and other keys aside; None
    where the file or the key is missing."""
    rc = tmp_path / "zfsrc"
    rc.write_text("# max-arc-size = 7\nvdev-cache-size = 10\nmax-arc-size = 100  # MiB\nzfs-prefetch-disable\n")
    assert calibrate.zfs_arc_max_bytes(str(rc)) == 100 << 20
    rc.write_text("vdev-cache-size = 10\n")
    assert calibrate.zfs_arc_max_bytes(str(rc)) is None
    assert calibrate.zfs_arc_max_bytes(str(tmp_path / "absent")) is None


def test_the_cold_big_read_empties_the_arc_of_its_file_first(tmp_path, monkeypatch):
    """Each run of the cold read first reads other files, 1.5 times the ARC
    (all of them where its size is unknown), then drops the page cache,
    then reads the probe's file: drop_caches leaves zfs-fuse's ARC alone."""
    from thinp.validate import timing as vt

    others = []
    for i in range(6):
        p = tmp_path / f"o{i}"
        p.write_bytes(b"x" * (1 << 20))
        others.append(str(p))
    assert calibrate.evict_arc(others, 2 << 20) == 3 << 20
    assert calibrate.evict_arc(others, None) == 6 << 20
    probe = tmp_path / "probe"
    probe.write_bytes(b"y" * 4096)
    events = []
    monkeypatch.setattr(vt, "drop_caches", lambda: events.append("drop"))
    calibrate._cold_read(str(probe), before=lambda: events.append(calibrate.evict_arc(others, 2 << 20)))
    assert events == [3 << 20, "drop"] * 3
    # the image's big files, as read-big reads them, are what it reads
    assert calibrate.image_big_files("/r")[:2] == ["/r/data/big0", "/r/data/big1"]
    assert calibrate.COLD_BYTES == vt.BIG_BYTES


def _big_reads(driver, n):
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 4096, 1, "/x")],
                    extra=[(f"/big{p}", 16 * MiB) for p in range(4)])
    return run(Workload("r", img, 1, [Step("read", path="/big{p}")], 0, processes=n), driver).oplog


def _on_cpu_dev(t_page, on_cpu=True):
    return DeviceProfile(**{**dataclasses.asdict(load_device("ram")), "read_latency_s": 0.0,
                            "read_bandwidth": 4096 / t_page, "transfer_on_cpu": on_cpu})


def test_read_fill_puts_a_loop_devices_page_copies_on_its_one_worker():
    """A loop device's worker copies each page of a buffered read into a new
    page-cache page (read_fill_s): 4 readers of their own 16 MiB files
    take at least 4 files' fills one after another on 8 cores; without it
    the transfers at the device's bandwidth take a fraction of that; on a
    device whose transfers are not CPU it changes nothing.  (btrfs without
    verification: its snapshot copies nothing at the start, as vfs would.)"""
    log = _big_reads("btrfs", 4)
    pages = 4 * 16 * MiB // 4096
    fill = 2e-6
    none = {"page_read_cpu_s": {"default": 0.0}}
    k0, k1 = _k(**none), _k(read_fill_s=fill, **none)
    dev = _on_cpu_dev(0.25e-6)
    assert _steps_s(log, k1, dev) >= 0.99 * pages * fill
    assert _steps_s(log, k0, dev) < 0.5 * pages * fill
    off = _on_cpu_dev(0.25e-6, on_cpu=False)
    assert _steps_s(log, k1, off) == pytest.approx(_steps_s(log, k0, off), rel=1e-9)


def test_verify_chain_share_moves_btrfs_verification_between_the_worker_and_the_cores():
    """btrfs' verification wholly on the worker's chain (share 1) makes 4
    readers wait for every page's transfer and check one after another;
    none of it (share 0) runs it on the 8 cores beside the transfers, as
    zfs-fuse's; half is in between.  Absent, btrfs' share is 1."""
    log = _big_reads("btrfs", 4)
    pages = 4 * 16 * MiB // 4096
    t_page, v = 1e-6, 3e-6
    dev = _on_cpu_dev(t_page)

    def t(share):
        extra = {} if share is None else {"verify_chain_share": {"btrfs": share}}
        return _steps_s(log, _k(page_read_cpu_s={"default": 0.0, "btrfs": v}, **extra), dev)
    assert t(1.0) >= 0.99 * pages * (t_page + v)
    assert t(0.0) < 0.6 * pages * (t_page + v)
    assert t(0.0) < t(0.5) < t(1.0)
    assert t(None) == pytest.approx(t(1.0), rel=1e-9)


def test_calibrate_recovers_verification_with_a_fill_and_a_chain_share():
    """With the worker's fill slower than the device's bandwidth and half of
    btrfs' verification on its chain, the fit of page_read_cpu_s still
    inverts the model's cold 16 MiB read; given the reader's measured CPU
    it takes page_miss_s from that."""
    img = ImageSpec("synthetic", None, layers=[LayerSpec(1, 4096, 1, "/x")],
                    extra=[("/cold", calibrate.COLD_BYTES)])
    pages = calibrate.COLD_BYTES // 4096

    def cold(driver, k, dev):
        log = run(Workload("c", img, 1, [Step("read", path="/cold")], 0), driver).oplog
        return _steps_s(log, k, dev)
    bw = 4096 / 0.5e-6
    dev = _on_cpu_dev(0.5e-6)
    for miss, fill, verify in ((0.3e-6, 1.5e-6, 0.8e-6), (2e-6, 1e-6, 0.6e-6)):
        k = _k(cores=1, page_miss_s=miss, read_fill_s=fill, verify_chain_share={"btrfs": 0.5},
               page_read_cpu_s={"default": 0.0, "btrfs": verify}, cpu_s={"read": 0.0, "sync": 0.0},
               journal_commit_writes=0, layer_cpu_s={"default": 0.0}, layer_kind_s={"default": 0.0},
               probe_s={"default": 0.0}, meta_read_bytes=0)
        meas = {"ext4.cold_read.p1": cold("vfs", k, dev), "btrfs.cold_read.p1": cold("btrfs", k, dev),
                "ext4.cold_read.cpu.p1": pages * (k.page_copy_s + miss)}
        got_miss, got_verify = calibrate.cold_read_fit(meas, {"read_latency_s": 0.0, "read_bandwidth": bw}, k)
        assert got_miss == pytest.approx(miss, rel=1e-6)
        assert got_verify["btrfs"] == pytest.approx(verify, rel=0.1)


def test_calibrate_splits_btrfs_verification_by_who_ran_its_cpu():
    """btrfs' cold read over ext4's: 2 ms more kernel-thread CPU and 1 ms
    more of the reader's give a verification of 3 ms over the pages, two
    thirds of it the worker chain's; where 4 readers finished in half the
    kernel threads' CPU (the end-io workers ran beside the worker) the
    share halves; without the figures nothing is fitted."""
    pages = calibrate.COLD_BYTES // 4096
    meas = {"ext4.cold_read.kthread.p1": 4e-3, "ext4.cold_read.cpu.p1": 2e-3,
            "btrfs.cold_reads.kthread.p1": 6e-3, "btrfs.cold_reads.cpu.p1": 3e-3,
            "btrfs.cold_reads.p4": 30e-3, "btrfs.cold_reads.kthread.p4": 24e-3}
    share, verify = calibrate.verify_split_fit(meas)
    assert verify["btrfs"] == pytest.approx(3e-3 / pages)
    assert share["btrfs"] == pytest.approx(2 / 3)
    share, _v = calibrate.verify_split_fit({**meas, "btrfs.cold_reads.p4": 12e-3})
    assert share["btrfs"] == pytest.approx(1 / 3)
    assert calibrate.verify_split_fit({k: v for k, v in meas.items() if "ext4" not in k}) == ({}, {})


def test_cold_reads_run_one_process_per_file_after_dropping_the_cache(tmp_path, monkeypatch):
    """Each run drops the page cache (here: counted), then reads every file
    in its own process; each figure is the least of the runs, and the
    readers' CPU is theirs."""
    from thinp.validate import timing as vt

    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"z" * (1 << 20))
        paths.append(str(p))
    events = []
    monkeypatch.setattr(vt, "drop_caches", lambda: events.append("drop"))
    wall, kthread, cpu = calibrate._cold_reads(paths, reps=2)
    assert events == ["drop", "drop"]
    assert wall > 0 and kthread >= 0 and cpu > 0

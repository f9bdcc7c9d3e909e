"""thinp validate timing and thinp calibrate.

The real-kernel test asserts only orderings that hold by a wide margin (the
machine is shared; times vary run to run); the full table is in the README."""
import dataclasses
import os

import pytest

from thinp.timing import TimingConstants, simulate
from thinp.validate import calibrate as cal
from thinp.validate import timing as vt


def test_every_case_is_a_workload_of_n_processes():
    for case in vt.CASES:
        w = case.workload(4)
        if case.name == "start":
            assert w.containers == 4 and w.processes == 1
        else:
            assert w.containers == 1 and w.processes == 4


def test_predictions_alone():
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=[vt.CASES[1]], real=False)
    assert [r["driver"] for r in rows] == ["overlay2", "vfs"]
    assert all(r["measured_s"] is None for r in rows)
    ov, vfs = rows
    assert ov["predicted_s"] > vfs["predicted_s"]          # overlay2 copies the 4 MiB file up first


@pytest.mark.skipif(not vt.available()[0], reason=f"real side unavailable: {vt.available()[1]}")
def test_real_and_predicted_agree_where_the_margin_is_wide():
    cases = [c for c in vt.CASES if c.name in ("append-big", "start")]
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=cases, reps=3)
    by = {(r["case"], r["driver"]): r for r in rows}
    # overlay2 before each vfs run and once after the last
    assert all(len(r["runs_s"]) == (4 if r["driver"] == "overlay2" else 3) for r in rows)
    assert all(r["measured_lo"] <= r["measured_s"] <= r["measured_hi"] for r in rows)
    assert all(len(vt.paired_rel(r)) == 3 and r["rel_paired"] and r["rel_lo"] <= r["measured_rel"] <= r["rel_hi"]
               and len(r["cpu_s"]) == 3 and all(c > 0 for c in r["cpu_s"]) for r in rows if r["driver"] == "vfs")
    # medians of 3 runs on a shared machine: the margins are far inside
    # what the README's run measured at load 3.5-13 on 2 vCPUs (start: 69x;
    # append-big: 6.5x, its middle runs' ranges 2.2x apart)
    for key, copy_up_margin in (("measured_s", 1.5), ("predicted_s", 2)):
        # a container start of a Debian rootfs: vfs copies 5,230 files, overlay2 mounts
        assert by[("start", "vfs")][key] > 10 * by[("start", "overlay2")][key]
        # the first append to a 16 MiB image file copies it up on overlay2 only
        assert by[("append-big", "overlay2")][key] > copy_up_margin * by[("append-big", "vfs")][key]


def test_spread_and_decided_orders():
    assert vt.spread([5, 1, 3, 2, 4]) == (3, 2, 4)          # median, the middle three's range
    assert vt.spread([2, 1]) == (1.5, 1, 2)
    # 9 runs: the 3rd to the 7th, so an outlier in the 2nd or 8th place does not widen it
    assert vt.spread([9, 1, 8, 2, 7, 3, 6, 4, 5]) == (5, 3, 7)
    assert vt.spread([1, 100, 10, 11, 12, 13, 14, 15, 16]) == (13, 11, 15)
    rows = [{"case": "c", "n": 1, "driver": d, "measured_s": m, "measured_lo": lo, "measured_hi": hi,
             "predicted_s": p, "measured_rel": m / 10, "predicted_rel": p / 10}
            for d, m, lo, hi, p in (("overlay2", 10, 9, 11, 10), ("vfs", 20, 18, 22, 30),
                                    ("btrfs", 21, 19, 25, 20))]
    s = vt.summary(rows)
    # vfs and btrfs overlap: the group is undecided, its decided pairs are
    # overlay2 < vfs and overlay2 < btrfs, both predicted alike
    assert (s["groups"], s["decided_groups"], s["same_ranking"]) == (1, 0, 0)
    assert (s["pairs_decided"], s["pairs_agree"]) == (2, 2)
    assert (s["rel_rows"], s["rel_within_1_5x"]) == (2, 2)
    md = vt.markdown(rows)
    assert "undecided (overlay2 < vfs < btrfs)" in md and "20.00 s (18.00 s-22.00 s) / 30.00 s (2x / 3x)" in md
    rows[2].update(measured_s=30, measured_lo=28, measured_hi=31, measured_rel=3.0)
    s = vt.summary(rows)
    assert (s["decided_groups"], s["same_ranking"]) == (1, 0)   # decided; the model swaps vfs and btrfs
    assert (s["pairs_decided"], s["pairs_agree"]) == (3, 2)


def test_a_groups_order_is_decided_by_the_paired_ratios_where_every_row_has_them():
    """Runs where the machine's speed moved 1.5x from round to round: each
    driver's own runs overlap the others' (undecided by their spreads), but
    each run over the overlay2 runs beside it is steady -- vfs 1.2x, btrfs
    1.4x -- so the order is decided, and the model's swap of the two is
    counted; where the paired ratios overlap, the pair is undecided even
    though the medians' ranges are apart."""
    phase = [1.0, 1.5, 1.0, 1.5, 1.2]
    o2 = [10 * p for p in phase]

    def row(d, x, pred):
        runs = [t * x for t in o2] if d != "overlay2" else o2 + [o2[-1]]
        r = {"case": "c", "n": 1, "driver": d, "runs_s": runs, "predicted_s": pred,
             "pair_s": o2 if d != "overlay2" else [], "pair_after_s": o2 if d != "overlay2" else []}
        r["measured_s"], r["measured_lo"], r["measured_hi"] = vt.spread(runs)
        return r
    rows = [row("overlay2", 1.0, 10), row("vfs", 1.2, 14), row("btrfs", 1.4, 12)]
    base = rows[0]
    for x in rows:
        x["predicted_rel"] = x["predicted_s"] / 10
        if x is base:
            x["measured_rel"], x["rel_lo"], x["rel_hi"], x["rel_paired"] = 1.0, 1.0, 1.0, False
        else:
            x["measured_rel"], x["rel_lo"], x["rel_hi"], x["rel_paired"] = vt.rel_spread(x, base)
    assert rows[1]["measured_hi"] >= rows[2]["measured_lo"]           # the runs' own ranges overlap
    s = vt.summary(rows)
    assert (s["groups"], s["decided_groups"], s["same_ranking"]) == (1, 1, 0)
    assert (s["pairs_decided"], s["pairs_agree"]) == (3, 2)           # vfs < btrfs measured, predicted swapped
    assert "| overlay2 < vfs < btrfs | no |" in vt.markdown(rows)
    # btrfs' paired ratios now overlap vfs's; their medians' ranges set apart
    rows[2].update(rel_lo=1.15, rel_hi=1.5, measured_lo=100, measured_hi=110, measured_s=105)
    s = vt.summary(rows)
    assert (s["decided_groups"], s["pairs_decided"]) == (0, 2)
    # a row without paired ratios: its own runs' ranges decide
    rows[2]["rel_paired"] = False
    assert vt.summary(rows)["pairs_decided"] == 3


def test_measured_rows_are_taken_from_an_earlier_run():
    case = next(c for c in vt.CASES if c.name == "append-small")
    kept = [{"case": "append-small", "n": 1, "driver": d, "measured_s": m, "measured_lo": m, "measured_hi": m,
             "runs_s": [m], "note": "", "load": 3.0} for d, m in (("overlay2", 0.02), ("vfs", 0.01))]
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=[case], measured=kept)
    assert [r["measured_s"] for r in rows] == [0.02, 0.01]
    assert rows[1]["measured_rel"] == 0.5 and rows[1]["predicted_s"] > 0


MEAS = {"ext4.stat.p1": 1e-6, "ext4.append.p1": 6e-6, "ext4.create_unlink.p1": 20e-6,
        "ext4.mkdir.p1": 12e-6, "ext4.readdir.p1": 4e-6, "ext4.read_hit.p1": 1.5e-6,
        "overlay1.stat.p1": 1.6e-6, "overlay4.stat.p1": 2.5e-6, "overlay1.copy_up_4MiB.p1": 0.0105,
        "overlay1.append_after.p1": 0.0005, "overlay4.mount_umount.p1": 0.004, "vfs.start.p1": 1.046,
        "btrfs.start.p1": 0.03, "btrfs.remove.p1": 0.01}


def test_fit_and_the_file_compare_reads(tmp_path):
    from thinp.cost import load_device

    res = cal.fit(MEAS, {"read_latency_s": 50e-6, "read_bandwidth": 2e9})
    t = res["timing"]
    assert t["cpu_s"]["write"] == pytest.approx(3e-6)             # open/append/close less three stats
    assert t["cpu_s"]["create"] == pytest.approx(10e-6)
    assert t["layer_cpu_s"]["overlay2"] == pytest.approx(0.6e-6)     # only stat measured through it
    assert t["probe_s"]["default"] == pytest.approx(0.3e-6)
    # the copy-up of 4 MiB less the device's read and synchronous write of it
    # (50 us latency, 2 GB/s), which the model prices apart, and copy_up_cpu_s
    io_s = 2 * (50e-6 + (4 << 20) / 2e9)
    assert t["copy_up_page_s"] == pytest.approx((0.01 - io_s - TimingConstants().get("copy_up_cpu_s", "overlay2")) / 1024)
    assert t["start_s"]["btrfs"] == 0.03 and "zfs" not in t["start_s"]
    out = tmp_path / "cal.toml"
    cal.write(str(out), res)
    k = TimingConstants.from_toml(out)
    assert k.get("cpu_s", "write") == pytest.approx(3e-6)
    assert k.get("cpu_s", "rename") == TimingConstants().get("cpu_s", "rename")   # not measured: default
    # per entry a layer copy makes (files, directories, symlinks), as the vfs
    # driver counts them: the Debian profile's 6,668
    from thinp.workloads.format import profile_rows

    entries = len(list(profile_rows("debian-minbase")))
    assert k.vfs_copy_inode_s == pytest.approx(1.046 / entries)
    # a start that made two copies (the -init layer and the container's), as
    # the harness makes them now: per entry of one copy
    two = cal.fit(dict(MEAS, **{"vfs.start_copies.p1": 2.0}), {})["timing"]
    assert two["vfs_copy_inode_s"] == pytest.approx(1.046 / (2 * entries))
    assert load_device(str(out)).read_latency_s == 50e-6


def test_fit_prices_btrfs_and_zfs_per_op_and_per_kind_over_ext4():
    meas = dict(MEAS)
    meas.update({"zfs.stat.p1": 3e-6, "zfs.append.p1": 66e-6, "zfs.create_unlink.p1": 60e-6,
                 "zfs.mkdir.p1": 32e-6, "zfs.readdir.p1": 24e-6})
    t = cal.fit(meas, {})["timing"]
    # every op pays the stat's difference (2 us); each kind its own besides
    assert t["layer_cpu_s"]["zfs"] == pytest.approx(2e-6)
    kind = t["layer_kind_s"]
    assert kind["zfs.write"] == pytest.approx(66e-6 - 6e-6 - 4 * 2e-6)    # open/append/close: 4 logged ops
    assert kind["zfs.read"] == pytest.approx(66e-6 - 6e-6 - 2e-6)       # priced as an append, 1 logged op
    assert kind["zfs.create"] == pytest.approx((60e-6 - 20e-6) / 2 - 2e-6)
    assert kind["zfs.mkdir"] == pytest.approx(32e-6 - 12e-6 - 2e-6)
    assert kind["zfs.readdir"] == pytest.approx(24e-6 - 4e-6 - 2e-6)
    assert "btrfs" not in t["layer_cpu_s"] and not any(k.startswith("btrfs.") for k in kind)
    assert t["cores"] >= 1


def test_fit_prices_a_cold_page_from_a_cold_read():
    from thinp.timing import TimingConstants

    k = TimingConstants()
    pages = cal.COLD_BYTES // 4096
    dev = {"read_latency_s": 0.0, "read_bandwidth": 1e30}      # a device that costs nothing
    meas = dict(MEAS, **{"ext4.cold_read.p1": pages * (k.page_copy_s + 2e-6),
                         "btrfs.cold_read.p1": pages * (k.page_copy_s + 2.5e-6)})
    t = cal.fit(meas, dev)["timing"]
    assert t["page_miss_s"] == pytest.approx(2e-6)
    # btrfs verifies in the read's completion, on calibrate's loop device the
    # worker's chain after each (here free) transfer, while the reader copies
    # the window before: the read takes the reader's first window and the
    # chain's every page, so the chain carries nearly all the 3 us a page
    # that was measured -- not the 0.5 us it took over ext4, as it would if
    # verification ran beside the copy on another core
    w = cal.COLD_BYTES // k.readahead_bytes
    v = (meas["btrfs.cold_read.p1"] - pages * (k.page_copy_s + 2e-6) / w) / pages
    assert t["page_read_cpu_s"]["btrfs"] == pytest.approx(v)
    assert v > 5 * 0.5e-6
    assert "zfs" not in t["page_read_cpu_s"]


def test_fit_takes_the_daemons_waits_from_wall_less_cpu_time():
    """zfs-fuse: of one process's open/append/close (66 us, 52 us of it
    zfs.write's extra over ext4), 26 us were not CPU of the process or the
    daemon: half the extra is asleep; a kind with no CPU figure gets none."""
    meas = dict(MEAS)
    meas.update({"zfs.stat.p1": 3e-6, "zfs.append.p1": 66e-6, "zfs.append.cpu.p1": 40e-6,
                 "zfs.create_unlink.p1": 60e-6, "zfs.create_unlink.cpu.p1": 70e-6})
    t = cal.fit(meas, {})["timing"]
    extra = t["layer_kind_s"]["zfs.write"]
    assert extra == pytest.approx(52e-6)
    assert t["daemon_wait_share"]["zfs.write"] == pytest.approx(26e-6 / extra)
    # CPU above the wall time (another thread's work besides): none asleep
    assert t["daemon_wait_share"]["zfs.create"] == 0.0 == t["daemon_wait_share"]["zfs.unlink"]
    assert "zfs.read" not in t["daemon_wait_share"]
    assert not cal.fit(MEAS, {})["timing"].get("daemon_wait_share")


def test_fit_prices_a_read_from_many_files_read_in_turn_where_measured():
    """A workload reads many files: the warm reads of the small files (each
    of 256 in turn) price a read where measured, not one file read over and
    over; through overlayfs and zfs-fuse alike, over ext4's."""
    copy_s = TimingConstants().page_copy_s
    meas = dict(MEAS, **{"ext4.open_read.p1": 3e-6 + copy_s, "overlay1.open_read.p1": 5.6e-6 + copy_s,
                         "zfs.stat.p1": 3e-6, "zfs.open_read.p1": 50e-6})
    one = cal.fit(meas, {})["timing"]
    assert one["cpu_s"]["read"] == pytest.approx(3e-6)
    many = cal.fit(dict(meas, **{"ext4.warm_small.p1": 4e-6 + copy_s, "overlay1.warm_small.p1": 7e-6 + copy_s,
                                 "zfs.warm_small.p1": 66e-6}), {})["timing"]
    assert many["cpu_s"]["read"] == pytest.approx(4e-6)
    assert many["layer_kind_s"]["overlay2.read"] == pytest.approx(3e-6 - 0.6e-6)
    assert many["layer_kind_s"]["zfs.read"] == pytest.approx(66e-6 - 4e-6 - copy_s - 2e-6)
    assert one["layer_kind_s"]["zfs.read"] == pytest.approx(50e-6 - 3e-6 - copy_s - 2e-6)


def test_fit_takes_the_idle_cores_wake_ups_from_one_process_alone_and_with_the_cores_busy():
    """zfs-fuse: one process's open/append/close took 93 us alone, all of it
    CPU (none asleep), and 63 us with every core kept busy: 30 us of each
    write's extra is waking idle cores; a 4 KiB append's new page costs
    what the busy figures of an append past a new file's first record
    differ by, less the copy (not the lone runs' difference, which the
    wake-ups blur): calibrate's 4 KiB figures average the first record's
    dearer appends in (cal.FIRST_RECORD_RATIO), here 125 and 83.5 us for
    a later append."""
    copy_s = TimingConstants().page_copy_s
    later = cal.zfs_later_append_share()
    meas = dict(MEAS)
    meas.update({"ext4.append4k.p1": 9e-6, "zfs.stat.p1": 3e-6, "zfs.append.p1": 93e-6, "zfs.append.cpu.p1": 93e-6,
                 "zfs.append.busy.p1": 63e-6, "zfs.append4k.p1": 125e-6 / later,
                 "zfs.append4k.busy.p1": (63e-6 + copy_s + 20e-6) / later,
                 "zfs.create_unlink.p1": 260e-6, "zfs.create_unlink.busy.p1": 200e-6})
    t = cal.fit(meas, {})["timing"]
    assert t["idle_wake_s"]["zfs.write"] == pytest.approx(30e-6)
    # per create of a create + unlink, as layer_kind_s takes it
    assert t["idle_wake_s"]["zfs.create"] == pytest.approx(30e-6) == t["idle_wake_s"]["zfs.unlink"]
    assert t["page_write_cpu_s"]["zfs"] == pytest.approx(20e-6)
    # a share asleep is not counted twice
    half = cal.fit(dict(meas, **{"zfs.append.cpu.p1": 83e-6}), {})["timing"]
    assert half["idle_wake_s"]["zfs.write"] == pytest.approx(20e-6)
    # without the busy figures: none, and the new page from the lone runs
    lone = cal.fit({k: v for k, v in meas.items() if ".busy." not in k}, {})["timing"]
    assert "idle_wake_s" not in lone
    assert lone["page_write_cpu_s"]["zfs"] == pytest.approx(125e-6 / later - 93e-6 - copy_s)


def _zfs_append_meas(append4k_s: float) -> dict:
    """MEAS with zfs-fuse's 5-byte append at 93 us alone (all CPU) and 63 us
    with the cores busy, its 4 KiB append at ``append4k_s`` alone and 20 us
    of a new page over the 5-byte one with the cores busy."""
    copy_s = TimingConstants().page_copy_s
    return {**MEAS, "ext4.append4k.p1": 9e-6, "zfs.stat.p1": 3e-6, "zfs.append.p1": 93e-6,
            "zfs.append.cpu.p1": 93e-6, "zfs.append.busy.p1": 63e-6, "zfs.append4k.p1": append4k_s,
            "zfs.append4k.busy.p1": 63e-6 + copy_s + 20e-6}


def test_fit_keeps_a_lone_4k_append_on_zfs_no_dearer_than_measured_alone():
    """zfs-fuse: the 4 KiB append with the cores busy measured dearer than
    alone (83.5 against 80 us; the busy medians are of runs in either of the
    daemon's modes), so no wake-ups are left for its page, and the busy
    figures' new page (20 us) would price it alone at 93 - 30 + 0.5 + 20 =
    83.5 us: the page's CPU is cut to what leaves it at the 80 us measured."""
    copy_s = TimingConstants().page_copy_s
    meas = _zfs_append_meas(80e-6)
    t = {"page_write_cpu_s": {"zfs": 20e-6}, "idle_wake_s": {"zfs.write": 30e-6, "zfs.write.page": 0.0}}
    cal.zfs_page_write_lone_fit(t, meas, copy_s)
    assert t["page_write_cpu_s"]["zfs"] == pytest.approx(80e-6 - (93e-6 - 30e-6) - copy_s)
    assert cal.fit(meas, {})["timing"]["idle_wake_s"]["zfs.write.page"] == 0.0
    # a lone 4 KiB append measured dearer than the busy one: the bound leaves the busy figures' page
    dear = {"page_write_cpu_s": {"zfs": 20e-6}, "idle_wake_s": {"zfs.write": 30e-6, "zfs.write.page": 0.0}}
    cal.zfs_page_write_lone_fit(dear, dict(meas, **{"zfs.append4k.p1": 125e-6}), copy_s)
    assert dear["page_write_cpu_s"]["zfs"] == pytest.approx(20e-6)


def test_fit_prices_a_zfs_append_past_a_files_first_record_and_holds_its_page_by_four():
    """calibrate's 4 KiB appends go to a new file whose first 32 appends (its
    first 128 KiB record) cost FIRST_RECORD_RATIO times a later one: the
    page's CPU leaves a later append alone at a4 * 250 / (32 r + 218), and
    4 at once hold the daemon's lock for p4 / 4 of that mix's later part,
    as a share of a whole-page write's CPU; without p4 no share is set."""
    from thinp.timing.model import op_cpu_s

    copy_s = TimingConstants().page_copy_s
    later = cal.zfs_later_append_share()
    assert 0.6 < later < 0.8
    # a 5-byte append 50 us alone (all CPU), 40 with the cores busy; a 4 KiB
    # one 80 us alone and dearer busy (no wake-ups of its own)
    a4, p4 = 80e-6, 4 * 60e-6
    meas = {**MEAS, "ext4.append4k.p1": 9e-6, "zfs.stat.p1": 3e-6, "zfs.append.p1": 50e-6,
            "zfs.append.cpu.p1": 50e-6, "zfs.append.busy.p1": 40e-6, "zfs.append4k.p1": a4,
            "zfs.append4k.busy.p1": 120e-6, "zfs.append4k.p4": p4}
    t = cal.fit(meas, {})["timing"]
    # below the lone bound (a4 itself) and the busy figures' page
    assert t["page_write_cpu_s"]["zfs"] == pytest.approx(a4 * later - (50e-6 - 10e-6) - copy_s)
    assert t["page_write_cpu_s"]["zfs"] < a4 - (50e-6 - 10e-6) - copy_s
    k = dataclasses.replace(TimingConstants(), **{
        key: ({**getattr(TimingConstants(), key), **v} if isinstance(v, dict) else v) for key, v in t.items()})
    assert t["serial_share"]["zfs.write.page"] == pytest.approx(60e-6 * later / op_cpu_s(k, "zfs", "write", 4096))
    assert "zfs.write" not in t["serial_share"]
    # no 4-process figure: no share; a hold above the write's CPU: the whole of it
    assert "zfs.write.page" not in cal.fit({k: v for k, v in meas.items() if k != "zfs.append4k.p4"},
                                           {})["timing"].get("serial_share", {})
    assert cal.fit(dict(meas, **{"zfs.append4k.p4": 4e-3}), {})["timing"]["serial_share"]["zfs.write.page"] == 1.0


def _copy_up_cost(mib):
    """A cold copy-up of a ``mib`` MiB lower file as the model prices it on a
    50 us, 2 GB/s loop device: the device's read and write of the file, the
    append after, 2 ms once and 1.5 us a page."""
    k = TimingConstants()
    nreq = -(-(mib << 20) // k.merge_bytes)
    io_s = 2 * (50e-6 * -(-nreq // k.get("queue_depth", "loop-on-tmpfs")) + (mib << 20) / 2e9)
    return 0.0005 + io_s + 2e-3 + mib * 256 * 1.5e-6


def test_fit_parts_a_copy_ups_once_cost_from_its_per_page_cost_with_two_sizes(tmp_path):
    """Cold copy-ups of 4 and 16 MiB made as the model prices them (the
    device's read and write of the file, the append after, 2 ms once, 1.5 us
    a page) give those two constants back."""
    dev = {"read_latency_s": 50e-6, "read_bandwidth": 2e9}
    meas = dict(MEAS)
    for mib in cal.COPY_UP_MIB:
        meas[f"overlay1.copy_up_cold_{mib}MiB.p1"] = _copy_up_cost(mib)
    t = cal.fit(meas, dev)["timing"]
    assert t["copy_up_page_s"] == pytest.approx(1.5e-6)
    assert t["copy_up_cpu_s"]["overlay2"] == pytest.approx(2e-3) == t["copy_up_cpu_s"]["overlay"]
    # the file thinp compare reads: overlay's once cost, aufs' default kept
    out = tmp_path / "cal.toml"
    cal.write(str(out), {"timing": t, "calibration": {}})
    got = TimingConstants.from_toml(out)
    assert got.get("copy_up_cpu_s", "overlay2") == pytest.approx(2e-3)
    assert got.get("copy_up_cpu_s", "aufs") == TimingConstants().get("copy_up_cpu_s", "aufs")


def test_busy_cores_spin_at_idle_priority_and_are_stopped_by_their_pids():
    """The spinners that keep every core busy run SCHED_IDLE (they give way
    at once to the measured work) and are gone on the way out."""
    import time as _time

    def spinners():
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[1]) == os.getpid() and \
                        os.sched_getscheduler(int(pid)) == os.SCHED_IDLE:
                    out.append(int(pid))
            except (OSError, ValueError):
                continue
        return out

    with cal.busy_cores(2):
        deadline = _time.monotonic() + 5
        while len(spinners()) < 2 and _time.monotonic() < deadline:
            _time.sleep(0.01)
        pids = spinners()
        assert len(pids) == 2
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                   for p in pids)


def test_the_daemons_threads_are_found_and_their_cpu_counted():
    import subprocess
    import time as _time

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in cal._children_named("sleep")
        assert cal._children_named("no-such-command") == []
        t0 = cal._tasks_cpu_s([os.getpid()])
        end = _time.process_time() + 0.02
        while _time.process_time() < end:
            pass
        assert cal._tasks_cpu_s([os.getpid()]) >= t0 + 0.01
        assert cal._tasks_cpu_s([child.pid]) < 1.0
    finally:
        child.kill()
        child.wait()


def test_fit_prices_new_pages_trees_and_small_reads_from_their_benchmarks():
    from thinp.timing import TimingConstants

    copy_s = TimingConstants().page_copy_s
    meas = dict(MEAS, **{"ext4.append4k.p1": 6e-6 + copy_s + 3e-6, "btrfs.append.p1": 8e-6,
                         "btrfs.stat.p1": 1e-6, "btrfs.append4k.p1": 8e-6 + copy_s + 4e-6,
                         "ext4.tree.p1": 40e-6, "overlay1.tree.p1": 50e-6,
                         "ext4.open_read.p1": 3e-6 + copy_s, "overlay1.open_read.p1": 5.6e-6 + copy_s})
    t = cal.fit(meas, {})["timing"]
    # a 4 KiB append over a 5-byte one, less the copy: per new page
    assert t["page_write_cpu_s"]["default"] == pytest.approx(3e-6)
    # btrfs' entry is its whole cost per new page (the model takes it in
    # place of the default): ext4's 3 us and 1 us more
    assert t["page_write_cpu_s"]["btrfs"] == pytest.approx(4e-6)
    # a tree's directory less its share of the tree's 63 files (create + write)
    files = cal.TREE_FILES / cal.TREE_DIRS
    assert t["cpu_s"]["mkdir"] == pytest.approx(40e-6 - files * (10e-6 + 3e-6))
    assert t["layer_kind_s"]["overlay2.mkdir"] == pytest.approx(10e-6 - (1 + 2 * files) * 0.6e-6)
    # a logged read of a small file is an open/read/close
    assert t["cpu_s"]["read"] == pytest.approx(3e-6)
    assert t["layer_kind_s"]["overlay2.read"] == pytest.approx(2.6e-6 - 0.6e-6)


def _btrfs_ok():
    from thinp.validate import block

    ok, why = vt.available()
    return (block.btrfs_available() if ok else (ok, why))


@pytest.mark.skipif(not _btrfs_ok()[0], reason=f"btrfs unavailable: {_btrfs_ok()[1]}")
def test_the_snapshot_ioctl_makes_a_writable_snapshot_as_dockers_btrfs_driver_does():
    import contextlib
    import os
    import subprocess

    with contextlib.ExitStack() as st:
        base = st.enter_context(vt.tmpfs("400M"))
        mnt = st.enter_context(vt.loop_fs(base, "b", 300 << 20, ["mkfs.btrfs", "-q", "-f"]))
        vt.run_cmd(["btrfs", "subvolume", "create", f"{mnt}/src"])
        vt.write_file(f"{mnt}/src/d/f", 5000, 1)
        vt.btrfs_snapshot(f"{mnt}/src", f"{mnt}/snap")
        try:
            # a subvolume of its own (btrfs says so), with the source's files
            show = subprocess.run(["btrfs", "subvolume", "show", f"{mnt}/snap"], capture_output=True, text=True)
            assert show.returncode == 0 and "snap" in show.stdout
            with open(f"{mnt}/snap/d/f", "rb") as a, open(f"{mnt}/src/d/f", "rb") as b:
                assert a.read() == b.read()
            # writable, and a write to it leaves the source alone
            with open(f"{mnt}/snap/d/f", "ab") as f:
                f.write(b"x")
            assert os.path.getsize(f"{mnt}/snap/d/f") == 5001 and os.path.getsize(f"{mnt}/src/d/f") == 5000
            with pytest.raises(OSError):
                vt.btrfs_snapshot(f"{mnt}/src", f"{mnt}/snap")      # the name is taken
        finally:
            subprocess.run(["btrfs", "subvolume", "delete", f"{mnt}/snap"], capture_output=True)


def test_a_hung_real_command_is_a_clear_error():
    from thinp.cli.errors import report
    from thinp.errors import RealRunError

    with pytest.raises(RealRunError, match=r"sleep 30 did not finish in 0.2 s") as e:
        vt.run_cmd(["sleep", "30"], timeout=0.2)
    assert report(e.value) == "sleep 30 did not finish in 0.2 s"      # one CLI line, no traceback
    with pytest.raises(RealRunError, match=r"false failed \(1\)"):
        vt.run_cmd(["false"])


class _Flaky:
    """A RealSetup whose first ``fails`` measurements fail as a lost zfs clone does."""

    def __init__(self, fails):
        self.fails, self.calls = fails, 0

    def measure(self, case, driver, n):
        from thinp.errors import RealRunError

        self.calls += 1
        if self.calls <= self.fails:
            raise RealRunError("zfs clone p/deb@base p/ctr461 did not finish in 300 s")
        return 0.25


def test_one_failed_real_run_is_measured_again_and_a_second_is_raised():
    from thinp.errors import RealRunError

    r = _Flaky(fails=1)
    assert vt._measure_once_more(r, "start", "zfs", 16) == 0.25 and r.calls == 2
    with pytest.raises(RealRunError):
        vt._measure_once_more(_Flaky(fails=2), "start", "zfs", 16)


#: what the real side sets up, in a child that then waits to be killed:
#: the scratch tmpfs (with the SIGTERM handler) and a loop-mounted ext4 in it
_SIGTERM_CHILD = """
import contextlib, subprocess, sys, time
from thinp.validate import timing as vt
with contextlib.ExitStack() as stack:
    base = vt.scratch(stack, "64M")
    mnt = stack.enter_context(vt.loop_fs(base, "e", 32 << 20, ["mkfs.ext4", "-q", "-F"]))
    loop = subprocess.run(["findmnt", "-no", "SOURCE", mnt], capture_output=True, text=True).stdout.strip()
    print(base, mnt, loop, flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not vt.available()[0], reason=f"real side unavailable: {vt.available()[1]}")
def test_a_harness_killed_by_sigterm_leaves_no_mount_and_no_loop_device():
    import os
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD], stdout=subprocess.PIPE, text=True,
                             cwd=root, env=dict(os.environ, PYTHONPATH=root))
    base = mnt = loop = None
    try:
        base, mnt, loop = child.stdout.readline().split()
        assert base in open("/proc/self/mounts").read()         # it was set up
        child.send_signal(signal.SIGTERM)           # as `timeout` ends a run
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        mounts = open("/proc/self/mounts").read()
        assert mnt not in mounts and base not in mounts and not os.path.exists(base)
        # the loop device is detached: no backing file any more
        name = os.path.basename(loop)
        assert not os.path.exists(f"/sys/block/{name}/loop/backing_file")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        # whatever a failure left, by its own path and device
        for m in (mnt, base):
            if m and m in open("/proc/self/mounts").read():
                subprocess.run(["umount", m], capture_output=True)
            if m == mnt and loop:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
        if base and os.path.isdir(base) and base not in open("/proc/self/mounts").read():
            os.rmdir(base) if not os.listdir(base) else None


def test_fit_leaves_the_files_of_a_tree_to_their_own_kinds():
    """A tree's time per directory carries half a file's create and write:
    the directory's own extra on a driver is what is left after those
    kinds' extras, so a tree is not priced twice for its files."""
    meas = dict(MEAS, **{"ext4.tree.p1": 40e-6, "zfs.tree.p1": 200e-6, "zfs.stat.p1": 1e-6,
                         "ext4.append.p1": 6e-6, "zfs.append.p1": 66e-6,
                         "ext4.create_unlink.p1": 20e-6, "zfs.create_unlink.p1": 120e-6})
    t = cal.fit(meas, {})["timing"]
    kind = t["layer_kind_s"]
    files = cal.TREE_FILES / cal.TREE_DIRS
    assert kind["zfs.write"] == pytest.approx(60e-6) and kind["zfs.create"] == pytest.approx(50e-6)
    assert kind["zfs.mkdir"] == pytest.approx(160e-6 - files * (50e-6 + 60e-6))


def test_fit_finds_the_serialized_share_from_one_and_four_processes():
    import os

    cores = len(os.sched_getaffinity(0))
    meas = dict(MEAS, **{"zfs.stat.p1": 1e-6, "zfs.append.p1": 60e-6,
                         # 4 processes: 4 x 45 us each per op, 45 us per op in all:
                         # more than 1.25 x what the cores allow (60 / cores)
                         "zfs.append.p4": 4 * 45e-6,
                         "ext4.append.p4": 4 * 6e-6 / min(cores, 4),   # scales with the cores
                         "btrfs.stat.p1": 1e-6, "btrfs.append.p1": 8e-6,
                         "btrfs.append.p4": 4 * 9e-6})                 # slower than alone: all of it
    share = cal.fit(meas, {})["timing"]["serial_share"]
    assert share["zfs.write"] == pytest.approx(45 / 60)
    assert share["btrfs.write"] == 1.0
    assert "vfs.write" not in share


def test_fit_takes_what_each_concurrent_start_adds_from_the_widest_n():
    meas = dict(MEAS, **{"btrfs.start.p2": 0.07, "btrfs.start.p4": 0.15, "btrfs.start.p16": 0.03 + 15 * 0.045,
                         "overlay2.start.p1": 0.002, "overlay2.start.p4": 0.0035})
    t = cal.fit(meas, {})["timing"]
    assert t["start_s"]["btrfs"] == 0.03
    assert t["start_serial_s"]["btrfs"] == pytest.approx(0.045)         # (t16 - t1) / 15
    # overlay2: its start as validate makes it (directories and the mount),
    # not the bare mount + umount, and what each of 4 at once adds
    assert t["start_s"]["overlay2"] == t["start_s"]["overlay"] == 0.002
    assert t["start_serial_s"]["overlay2"] == pytest.approx(0.0005)
    assert "zfs" not in t["start_serial_s"]
    # measured at one process only: the whole start stays serialized
    assert "start_serial_s" not in cal.fit(MEAS, {})["timing"]


def test_refit_fits_the_kept_measurements_again(tmp_path, capsys):
    from thinp.cli import main

    res = cal.fit(MEAS, {"read_latency_s": 50e-6, "read_bandwidth": 2e9})
    res["calibration"]["note"] = "measured somewhere"
    res["timing"]["cpu_s"]["write"] = 1.0          # as an older fit left it
    src, out = tmp_path / "cal.toml", tmp_path / "new.toml"
    cal.write(str(src), res)
    assert main(["calibrate", "--refit", str(src), "--out", str(out)]) == 0
    k = TimingConstants.from_toml(out)
    assert k.get("cpu_s", "write") == pytest.approx(3e-6)        # fitted again from the measurements
    text = out.read_text()
    assert 'note = "measured somewhere"' in text and '"ext4.append.p1" = 6e-06' in text
    bad = tmp_path / "bad.toml"
    bad.write_text("[timing]\ncores = 2\n")
    assert main(["calibrate", "--refit", str(bad), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"thinp: error: {bad}: no [calibration.measured_s] to fit (not a thinp calibrate file)"


class _FakeStarts:
    """A real side whose zfs start at ``bad_n`` processes fails on its first
    run (a hung ``zfs clone``), or on every run with ``always``."""

    def __init__(self, bad_n, always=False):
        self.n, self.bad_n, self.always, self.removed, self.runs = 0, bad_n, always, [], {}

    def warm_tool(self, d):
        pass

    def create(self, d, i, cold):
        pass

    def remove(self, d, i):
        self.removed.append((d, i))

    def settle(self, d):
        pass


def _fake_concurrently(real):
    def run(jobs):
        d, n = jobs[0][1][0], len(jobs)
        k = real.runs[(d, n)] = real.runs.get((d, n), 0) + 1
        if d == "zfs" and n == real.bad_n and (k == 1 or real.always):
            raise vt.RealRunError("zfs clone did not finish in 300 s")
        return 0.001 * n + 0.0001 * k
    return run


def test_a_lost_start_run_costs_that_run_not_the_calibration(monkeypatch):
    real = _FakeStarts(bad_n=4)
    monkeypatch.setattr(vt, "concurrently", _fake_concurrently(real))
    monkeypatch.setattr(vt, "drop_caches", lambda: None)
    said = []
    meas = cal._starts(real, {}, said.append, reps=3)
    # the two runs left give their median (validate's statistic), and are kept
    assert meas["zfs.start.p4"] == pytest.approx(0.004 + 0.00025)
    assert meas["zfs.start.p4.runs"] == pytest.approx([0.0042, 0.0043])
    assert meas["zfs.start.p2"] == pytest.approx(0.002 + 0.0002)
    assert any("zfs starts by 4: a run failed" in m for m in said)
    # every container of every run was removed, the failed run's too
    assert len(real.removed) == 3 * 3 * sum(cal.START_NS)


def test_a_start_count_with_every_run_lost_is_raised(monkeypatch):
    real = _FakeStarts(bad_n=16, always=True)
    monkeypatch.setattr(vt, "concurrently", _fake_concurrently(real))
    monkeypatch.setattr(vt, "drop_caches", lambda: None)
    with pytest.raises(vt.RealRunError, match="did not finish"):
        cal._starts(real, {}, lambda m: None, reps=2)


def _fake_tool(tmp_path, monkeypatch, name, body):
    """An executable ``name`` first on PATH running the shell ``body``."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_a_hung_removal_is_killed_by_its_pid_and_raised(tmp_path, monkeypatch):
    import time

    # a zfs-fuse client that never answers, as the wedged daemon's destroy did
    pidfile = tmp_path / "pid"
    _fake_tool(tmp_path, monkeypatch, "zfs", f"echo $$ > {pidfile}; exec sleep 60")
    monkeypatch.setattr(vt, "CMD_TIMEOUT_S", 0.5)
    real = vt.RealSetup.__new__(vt.RealSetup)
    real.zpool, real.zmnt = "p", str(tmp_path / "mnt")
    t = time.monotonic()
    with pytest.raises(vt.RealRunError, match=r"^zfs destroy -r p/ctr7 did not finish in 0.5 s$"):
        real.remove("zfs", 7)
    assert time.monotonic() - t < vt.KILL_GRACE_S
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}")       # killed and reaped
    # a removal tool that fails (nothing to destroy: a clone a lost run never
    # made) is let be
    _fake_tool(tmp_path, monkeypatch, "zfs", "echo 'dataset does not exist' >&2; exit 1")
    real.remove("zfs", 8)


class _HungRemoval(vt.RealSetup):
    """A real side whose ``bad``-th removal hangs (raises as remove_tool does)."""

    def __init__(self, bad):
        self.n, self.bad, self.removes, self.settled = 0, bad, [], 0

    def create(self, driver, n, debian=False):
        return "/nonexistent"

    def warm_tool(self, driver):
        pass

    def remove(self, driver, n):
        self.removes.append(n)
        if len(self.removes) == self.bad:
            raise vt.RealRunError(f"zfs destroy -f p/ctr{n} did not finish in 300 s")

    def settle(self, driver):
        self.settled += 1


def test_a_hung_removal_costs_the_run_and_every_container_is_still_removed(monkeypatch):
    monkeypatch.setattr(vt, "drop_caches", lambda: None)
    monkeypatch.setattr(vt, "concurrently", lambda calls, detail=None: 0.125 + len(calls))
    real = _HungRemoval(bad=2)
    with pytest.raises(vt.RealRunError, match="zfs destroy -f p/ctr2 did not finish"):
        real.measure("start", "zfs", 4)
    assert real.removes == [1, 2, 3, 4] and real.settled == 1     # the later ones too
    # validate's one retry: the next run stands
    real = _HungRemoval(bad=3)
    assert vt._measure_once_more(real, "start", "zfs", 4) == 4.125
    assert real.removes == [1, 2, 3, 4, 5, 6, 7, 8]


class _HungRemovalStarts(_FakeStarts):
    """calibrate's start runs, the first removal of a zfs start by ``bad_n`` hanging."""

    def __init__(self, bad_n):
        super().__init__(bad_n=-1)
        self.hang_n, self.hung = bad_n, False

    def remove(self, d, i):
        super().remove(d, i)
        if d == "zfs" and not self.hung and self.runs.get((d, self.hang_n)) == 1:
            self.hung = True
            raise vt.RealRunError(f"zfs destroy -f p/ctr{i} did not finish in 300 s")


def test_a_hung_removal_costs_a_calibration_start_run_not_the_calibration(monkeypatch):
    real = _HungRemovalStarts(bad_n=4)
    monkeypatch.setattr(vt, "concurrently", _fake_concurrently(real))
    monkeypatch.setattr(vt, "drop_caches", lambda: None)
    said = []
    meas = cal._starts(real, {}, said.append, reps=3)
    assert real.hung
    # the first run by 4 is lost: the median of the two others
    assert meas["zfs.start.p4"] == pytest.approx(0.004 + 0.00025)
    assert any("zfs starts by 4: a removal failed" in m for m in said)
    assert len(real.removed) == 3 * 3 * sum(cal.START_NS)


def test_kernel_threads_cpu_is_read_and_grows():
    a = vt.kthread_cpu_s()
    assert a > 0                # kernel threads have run since boot
    assert vt.kthread_cpu_s() >= a


class _KeepsKthreads:
    """A real side whose runs take 0.1 s and whose kernel threads ran 0.01 s per run."""

    def __init__(self, stack, base, drivers):
        self.skipped, self.last_kthread_s, self.k = {}, None, 0

    def measure(self, case, driver, n):
        self.k += 1
        self.last_kthread_s = 0.01 * self.k
        return 0.1


def test_each_run_keeps_the_kernel_threads_cpu_beside_its_time(monkeypatch):
    monkeypatch.setattr(vt, "available", lambda: (True, ""))
    monkeypatch.setattr(vt, "scratch", lambda stack, size: "/nonexistent")
    monkeypatch.setattr(vt, "RealSetup", _KeepsKthreads)
    monkeypatch.setattr(vt, "predict", lambda case, d, n, timing, device: 0.2)
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=vt.CASES[:1], reps=3)
    # (overlay2 before each vfs run and after the last)
    assert [len(x["kthread_s"]) for x in rows] == [4, 3]
    assert sorted(v for x in rows for v in x["kthread_s"]) == pytest.approx([0.01 * k for k in range(1, 8)])
    # and a re-prediction keeps them from the measured rows
    again = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=vt.CASES[:1], measured=rows)
    assert [x["kthread_s"] for x in again] == [x["kthread_s"] for x in rows]


def test_a_driver_lost_twice_is_left_out_and_the_rest_of_the_table_kept(monkeypatch):
    """A wedged zfs-fuse loses a cell twice: the run goes on without zfs (its
    rows say where it was lost) instead of losing every cell measured so far."""
    from thinp.errors import RealRunError

    class _Setup:
        def __init__(self, stack, base, drivers):
            self.skipped, self.last_kthread_s, self.calls = {}, 0.0, []

        def measure(self, case, driver, n):
            self.calls.append((case, driver, n))
            if driver == "zfs" and n == 4:
                raise RealRunError("zfs clone p/deb@base p/ctr9 did not finish in 300 s")
            return 0.5 if driver == "zfs" else 0.25

    made = []
    monkeypatch.setattr(vt, "available", lambda: (True, ""))
    monkeypatch.setattr(vt, "scratch", lambda stack, size: "/nonexistent")
    monkeypatch.setattr(vt, "RealSetup", lambda *a: made.append(_Setup(*a)) or made[-1])
    monkeypatch.setattr(vt, "predict", lambda case, d, n, timing, device: 1.0)
    cases = vt.CASES[:2]
    rows = vt.validate_timing(ns=(1, 4, 16), drivers=("overlay2", "zfs"), cases=cases, reps=3)
    by = {(x["case"], x["n"], x["driver"]): x for x in rows}
    first, second = cases[0].name, cases[1].name
    assert by[(first, 1, "zfs")]["measured_s"] == 0.5
    assert by[(first, 4, "zfs")]["measured_s"] is None
    assert by[(first, 4, "zfs")]["note"].startswith(f"lost at {first} N = 4: zfs clone")
    for n in (1, 4, 16):                       # overlay2 measured in every cell
        assert by[(first, n, "overlay2")]["measured_s"] == 0.25
        assert by[(second, n, "overlay2")]["measured_s"] == 0.25
        assert by[(second, n, "zfs")]["measured_s"] is None
    # zfs was tried twice at the lost cell, then never again
    zfs_calls = [c for c in made[0].calls if c[1] == "zfs"]
    assert zfs_calls == [(first, "zfs", 1)] * 3 + [(first, "zfs", 4)] * 2


def test_a_start_keeps_the_median_of_every_run_and_a_per_op_cost_its_least(tmp_path):
    """calibrate --runs 3: a start of 16 containers is the median of all
    its runs (9 here), as validate timing shows a start; a one-process
    op's cost the least of the runs.  The runs are written beside the
    figure and a refit reads the file back."""
    runs = [{"ext4.stat.p1": 1.2e-6, "overlay2.start.p16": 0.0064, "overlay2.start.p16.runs": [0.0056, 0.0064, 0.0120]},
            {"ext4.stat.p1": 1.0e-6, "overlay2.start.p16": 0.0090, "overlay2.start.p16.runs": [0.0090, 0.0135, 0.0075]},
            {"ext4.stat.p1": 1.1e-6, "overlay2.start.p16": 0.0081, "overlay2.start.p16.runs": [0.0067, 0.0081, 0.0110]}]
    m = cal.merge_runs(runs)
    assert m["ext4.stat.p1"] == 1.0e-6
    assert m["overlay2.start.p16"] == 0.0081                 # the 5th of 9, not the least (0.0056)
    assert m["overlay2.start.p16.runs"] == sorted(v for r in runs for v in r["overlay2.start.p16.runs"])
    # one run: its own median
    assert cal.merge_runs(runs[:1])["overlay2.start.p16"] == 0.0064
    meas = dict(MEAS, **{k: v for k, v in m.items() if k.startswith("overlay2.")}, **{"overlay2.start.p1": 0.004})
    res = cal.fit(meas, {})
    assert res["timing"]["start_serial_s"]["overlay2"] == pytest.approx((0.0081 - 0.004) / 15)
    out = tmp_path / "cal.toml"
    cal.write(str(out), res)
    again = cal.refit(str(out), str(tmp_path / "again.toml"))
    assert again["calibration"]["measured_s"]["overlay2.start.p16.runs"] == m["overlay2.start.p16.runs"]
    assert again["timing"]["start_serial_s"] == res["timing"]["start_serial_s"]


def test_a_zfs_destroy_refused_as_busy_is_tried_again_then_raised(tmp_path, monkeypatch):
    """zfs-fuse refuses a destroy right after a clone's unmount as busy
    now and then: tried again until it goes (the clone must not stay
    mounted in the daemon); still busy past the limit, the run is lost."""
    count = tmp_path / "count"
    count.write_text("0")
    _fake_tool(tmp_path, monkeypatch, "zfs", f"""echo "$@" >> {tmp_path}/log
n=$(cat {count}); echo $((n + 1)) > {count}
if [ "$n" -lt 2 ]; then echo "cannot destroy '$3': dataset is busy" >&2; exit 1; fi""")
    vt.zfs_destroy("p/ctr3", str(tmp_path / "not-mounted"))
    assert (tmp_path / "log").read_text().splitlines() == ["destroy -r p/ctr3"] * 3
    _fake_tool(tmp_path, monkeypatch, "zfs", "echo \"cannot destroy '$3': dataset is busy\" >&2; exit 1")
    monkeypatch.setattr(vt, "ZFS_BUSY_RETRY_S", 0.1)
    with pytest.raises(vt.RealRunError, match=r"^zfs destroy -r p/ctr4: still busy after 0.1 s$"):
        vt.zfs_destroy("p/ctr4")
    # a dataset that is not there (a clone a lost run never made) is let be
    _fake_tool(tmp_path, monkeypatch, "zfs", "echo \"cannot open '$3': dataset does not exist\" >&2; exit 1")
    vt.zfs_destroy("p/ctr5")


def _hold_zfs_mount_lock(path, log, k):
    import time

    with vt.zfs_mount_lock(path):
        with open(log, "a") as f:
            f.write(f"in {k}\n")
        time.sleep(0.05)
        with open(log, "a") as f:
            f.write(f"out {k}\n")


def test_zfs_starts_clone_one_at_a_time(tmp_path, monkeypatch):
    """A zfs start as the real side makes it: ``zfs clone`` (which mounts
    the clone on zfs-fuse) under the mount lock, which one process holds at
    a time (zfs-fuse wedges on two mounts at once)."""
    import multiprocessing as mp

    _fake_tool(tmp_path, monkeypatch, "zfs", f'echo "$@" >> {tmp_path}/log')
    real = vt.RealSetup.__new__(vt.RealSetup)
    real.zpool, real.zmnt, real.zfs_lock = "p", "/m", str(tmp_path / "lock")
    assert real.create("zfs", 7, True) == "/m/ctr7"
    assert (tmp_path / "log").read_text().splitlines() == ["clone p/deb@base p/ctr7"]
    log = tmp_path / "held"
    procs = [mp.get_context("fork").Process(target=_hold_zfs_mount_lock, args=(real.zfs_lock, log, k))
             for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = log.read_text().split()
    held = [lines[i:i + 4] for i in range(0, len(lines), 4)]       # each "in k out k", never overlapping
    assert len(held) == 4 and all(a == "in" and c == "out" and b == d for a, b, c, d in held)
    assert sorted(b for _a, b, _c, _d in held) == ["0", "1", "2", "3"]


def test_zfs_start_rows_say_how_the_real_side_made_them(monkeypatch):
    class _Setup:
        def __init__(self, stack, base, drivers):
            self.skipped, self.last_kthread_s = {}, 0.0

        def measure(self, case, driver, n):
            return 0.5

    monkeypatch.setattr(vt, "available", lambda: (True, ""))
    monkeypatch.setattr(vt, "scratch", lambda stack, size: "/nonexistent")
    monkeypatch.setattr(vt, "RealSetup", _Setup)
    monkeypatch.setattr(vt, "predict", lambda case, d, n, timing, device: 1.0)
    cases = [c for c in vt.CASES if c.name in ("append-small", "start")]
    rows = vt.validate_timing(ns=(16,), drivers=("overlay2", "zfs"), cases=cases, reps=1)
    notes = {(x["case"], x["driver"]): x["note"] for x in rows}
    assert notes[("start", "zfs")] == vt.ZFS_NOTE
    assert notes[("append-small", "zfs")] == notes[("start", "overlay2")] == ""
    assert vt.markdown(rows).endswith(f"\n\nNote -- zfs start: {vt.ZFS_NOTE}")


def test_each_driver_runs_right_after_an_overlay2_run_of_its_own():
    live = ["overlay2", "vfs", "btrfs", "zfs"]
    for rep in range(4):
        order = vt.round_order(live, rep)
        # overlay2 (a pair), then a driver, three times; every driver once a round
        assert [d for d, _p in order[::2]] == ["overlay2"] * 3 and all(p for _d, p in order[::2])
        assert sorted(d for d, _p in order[1::2]) == ["btrfs", "vfs", "zfs"]
        assert not any(p for _d, p in order[1::2])
    # the drivers' order turns round by round
    assert [vt.round_order(live, r)[1][0] for r in range(3)] == ["vfs", "btrfs", "zfs"]
    # overlay2 lost (or not asked for): each driver once, in turn, unpaired
    assert vt.round_order(["vfs", "btrfs"], 1) == [("btrfs", False), ("vfs", False)]
    assert vt.round_order(["overlay2"], 0) == [("overlay2", False)]


class _Drifting:
    """A real side on a machine that slows down run by run (another tenant
    getting busier: each run takes 1.25 times the one before would), where
    vfs takes twice overlay2's time and btrfs half."""

    def __init__(self, stack, base, drivers):
        self.skipped, self.last_kthread_s, self.runs = {}, 0.0, []
        self.last_detail = {}

    def measure(self, case, driver, n):
        slow = 1.25 ** len(self.runs)
        t = 0.01 * slow * {"overlay2": 1, "vfs": 2, "btrfs": 0.5}[driver]
        self.runs.append((driver, t))
        self.last_detail = {"cpu_s": 0.001 * slow, "preempted": len(self.runs), "waits": 0}
        return t


def test_paired_ratios_cancel_a_machine_that_changes_speed(monkeypatch):
    made = []
    monkeypatch.setattr(vt, "available", lambda: (True, ""))
    monkeypatch.setattr(vt, "scratch", lambda stack, size: "/nonexistent")
    monkeypatch.setattr(vt, "RealSetup", lambda *a: made.append(_Drifting(*a)) or made[-1])
    monkeypatch.setattr(vt, "predict",
                        lambda case, d, n, timing, device: {"overlay2": 1.0, "vfs": 2.5, "btrfs": 0.2}[d])
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs", "btrfs"), cases=vt.CASES[:1], reps=5)
    by = {x["driver"]: x for x in rows}
    seq = made[0].runs
    # two overlay2 runs a round, each before a driver's, and one after the last driver's
    assert [d for d, _t in seq[::2]] == ["overlay2"] * 11 and len(seq) == 21
    assert len(by["overlay2"]["runs_s"]) == 11 and len(by["vfs"]["runs_s"]) == 5
    # every driver's run has the overlay2 runs right before and after it
    for i, (d, t) in enumerate(seq):
        if d != "overlay2":
            k = by[d]["runs_s"].index(t)
            assert (by[d]["pair_s"][k], by[d]["pair_after_s"][k]) == (seq[i - 1][1], seq[i + 1][1])
    # each run over the overlay2 runs beside it: exact, however the machine changed
    for d, rel in (("vfs", 2.0), ("btrfs", 0.5)):
        x = by[d]
        assert x["rel_paired"] and x["measured_rel"] == pytest.approx(rel)
        assert x["rel_lo"] == pytest.approx(rel) and x["rel_hi"] == pytest.approx(rel)
        # the medians' ratio, against overlay2's runs of other rounds, is not
        # known to within 1.5x
        _m, lo, hi, paired = vt.rel_spread(dict(x, pair_s=[], pair_after_s=[]), by["overlay2"])
        assert not paired and hi / lo > 1.5
        # dividing by the run before alone leaves the drift of one run in
        assert vt.paired_rel(dict(x, pair_after_s=[])) == pytest.approx([rel * 1.25] * 5)
    assert by["vfs"]["rel_verdict"] == "within" and by["btrfs"]["rel_verdict"] == "miss"  # 0.2 vs 0.5
    # each run's rusage beside it
    assert len(by["vfs"]["cpu_s"]) == 5 and len(by["overlay2"]["preempted"]) == 11
    assert by["vfs"]["cpu_s"][0] == pytest.approx(0.001 * by["vfs"]["runs_s"][0] / 0.02)
    # the kept rows give the same ratios back (paired from runs_s and pair_s)
    again = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs", "btrfs"), cases=vt.CASES[:1],
                               measured=rows)
    assert [x["measured_rel"] for x in again] == pytest.approx([x["measured_rel"] for x in rows])
    assert [x["rel_paired"] for x in again] == [False, True, True]


def test_a_run_kept_from_before_pairing_gets_the_ratio_of_its_medians():
    case = next(c for c in vt.CASES if c.name == "append-small")
    kept = [{"case": "append-small", "n": 1, "driver": d, "runs_s": runs, "note": "", "load": 3.0}
            for d, runs in (("overlay2", [0.010, 0.020, 0.030, 0.040, 0.050]),
                            ("vfs", [0.010, 0.011, 0.012, 0.013, 0.014]))]
    rows = vt.validate_timing(ns=(1,), drivers=("overlay2", "vfs"), cases=[case], measured=kept)
    vfs = rows[1]
    assert not vfs["rel_paired"]
    assert vfs["measured_rel"] == pytest.approx(0.012 / 0.030)
    # the range: lowest over highest, highest over lowest, of the middle runs
    assert (vfs["rel_lo"], vfs["rel_hi"]) == pytest.approx((0.011 / 0.040, 0.013 / 0.020))
    assert rows[0]["measured_rel"] == 1.0 and rows[0]["rel_verdict"] is None


def test_a_row_whose_measured_ratio_spans_more_than_the_target_is_no_pass():
    v = vt.rel_verdict
    assert v(1.2, 1.0, 0.9, 1.1) == "within"
    assert v(1.6, 1.0, 0.9, 1.1) == "miss" and v(0.6, 1.0, 0.9, 1.1) == "miss"
    assert v(1.5, 1.0, 1.0, 1.5) == "within"        # a spread of exactly 1.5x is not noisy
    # the middle runs span 0.5x to 1.0x (2x): never a pass, even with the
    # prediction on the median
    assert v(0.7, 0.7, 0.5, 1.0) == "within noise"
    assert v(1.45, 0.7, 0.5, 1.0) == "within noise"         # within 1.5x of the range's top
    assert v(1.6, 0.7, 0.5, 1.0) == "miss" and v(0.3, 0.7, 0.5, 1.0) == "miss"
    rows = [{"case": "c", "n": 1, "driver": d, "measured_s": m, "measured_lo": m, "measured_hi": m,
             "predicted_s": p, "measured_rel": m / 10, "predicted_rel": p / 10, "rel_lo": lo, "rel_hi": hi}
            for d, m, p, lo, hi in (("overlay2", 10, 10, 1, 1), ("vfs", 7, 7, 0.5, 1.0),
                                    ("btrfs", 20, 21, 1.9, 2.1), ("zfs", 40, 90, 3.9, 4.1))]
    s = vt.summary(rows)
    assert (s["rel_rows"], s["rel_within_1_5x"], s["rel_noisy"], s["rel_within_noise"], s["rel_miss"]) == \
        (3, 1, 1, 1, 1)
    assert s["rel_median_within_1_5x"] == 2         # vfs on its median, btrfs
    sentence = vt.summary_sentence(s)
    assert "within 1.5x of the measured ratio in 1 of 3 rows and misses in 1" in sentence
    assert "1 rows are noisy" in sentence and "in 1 (within noise)" in sentence
    md = vt.markdown(rows)
    assert "(0.7x [0.5-1] / 0.7x) noise" in md and "(4x [3.9-4.1] / 9x) miss" in md
    assert "(2x [1.9-2.1] / 2.1x) |" in md


def _busy(seconds):
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_concurrently_says_what_the_processes_spent_on_the_core():
    import time

    busy, asleep, child = {}, {}, {}
    vt.concurrently([(_busy, (0.05,))], busy)
    vt.concurrently([(time.sleep, (0.05,))], asleep)
    assert busy["cpu_s"] >= 0.05 > 0.02 > asleep["cpu_s"]
    # a command's CPU counts too (a vfs start's cp, a zfs start's zfs)
    vt.concurrently([(vt.run_cmd, (["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"],))], child)
    assert child["cpu_s"] > 0.02
    assert asleep["waits"] >= 1
    assert all(k in busy for k in ("preempted", "waits", "faults"))


def test_fit_takes_the_copy_ups_worker_share_from_its_kernel_threads_cpu():
    """copy_up_worker_share is the largest cold copy-up's kernel-thread CPU
    over that and the process's own; a calibration without the CPU figures
    fits none (the model's default stands)."""
    meas = dict(MEAS)
    for mib in cal.COPY_UP_MIB:
        meas[f"overlay1.copy_up_cold_{mib}MiB.p1"] = mib * 1e-3
        meas[f"overlay1.copy_up_cold_{mib}MiB.cpu.p1"] = mib * 0.4e-3
        meas[f"overlay1.copy_up_cold_{mib}MiB.kthread.p1"] = mib * (0.3e-3 if mib == max(cal.COPY_UP_MIB) else 0.9e-3)
    t = cal.fit(meas, {"read_latency_s": 50e-6, "read_bandwidth": 2e9})["timing"]
    assert t["copy_up_worker_share"] == pytest.approx(0.3 / 0.7)
    bare = {k: v for k, v in meas.items() if not k.endswith((".cpu.p1", ".kthread.p1"))}
    assert "copy_up_worker_share" not in cal.fit(bare, {"read_latency_s": 50e-6, "read_bandwidth": 2e9})["timing"]


def test_fit_prices_a_copy_up_by_its_cpu_where_measured_not_a_loaded_wall_time():
    """Where calibrate measured a cold copy-up's own and kernel-thread CPU,
    the two-size fit takes their sum (a lone copy-up's chain) over a wall
    time that load stretched: the constants come back as from a quiet run."""
    dev = {"read_latency_s": 50e-6, "read_bandwidth": 2e9}
    meas = dict(MEAS)
    for mib in cal.COPY_UP_MIB:
        cost = _copy_up_cost(mib)
        meas[f"overlay1.copy_up_cold_{mib}MiB.p1"] = 5 * cost          # a loaded machine's wall time
        meas[f"overlay1.copy_up_cold_{mib}MiB.cpu.p1"] = 0.4 * cost
        meas[f"overlay1.copy_up_cold_{mib}MiB.kthread.p1"] = 0.6 * cost
    t = cal.fit(meas, dev)["timing"]
    assert t["copy_up_page_s"] == pytest.approx(1.5e-6)
    assert t["copy_up_cpu_s"]["overlay2"] == pytest.approx(2e-3)
    assert t["copy_up_worker_share"] == pytest.approx(0.6)
    walls = {k: v for k, v in meas.items() if not k.endswith((".cpu.p1", ".kthread.p1"))}
    assert cal.fit(walls, dev)["timing"]["copy_up_page_s"] > 3 * 1.5e-6       # the wall alone: stretched


def test_real_setup_skips_zfs_when_another_daemon_holds_it(tmp_path):
    """A second zfs-fuse daemon cannot start beside a running one (another
    calibrate, a probe): the real side names zfs as skipped, with the reason,
    instead of a traceback, and leaves the running daemon's pool alone."""
    import contextlib
    import subprocess

    from thinp.validate import block

    ok, why = block.zfs_available()
    if not ok:
        pytest.skip(why)
    with contextlib.ExitStack() as first:
        try:
            pool, _mnt = first.enter_context(block.real_zfs(workdir=str(tmp_path), size="256M"))
        except RuntimeError as e:
            pytest.skip(f"zfs-fuse refused: {e}")
        with contextlib.ExitStack() as stack:
            base = vt.scratch(stack, "2G")
            real = vt.RealSetup(stack, base, ("zfs",))
            assert "zfs" in real.skipped and "zfs-fuse" in real.skipped["zfs"]
            assert real.zfs is None
        listed = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True)
        assert pool in listed.stdout.split()

def test_fit_takes_a_new_pages_wake_ups_from_lone_and_busy_4k_appends():
    """zfs-fuse: a lone 4 KiB append costs what it costs with the cores busy
    (its new page's work hides the wake-ups): idle_wake_s zfs.write.page is
    the lone figure less the busy one, never below 0; absent without the
    busy 4 KiB figure; both figures average a new file's dearer first
    record in, so it is a later append's share of that difference
    (cal.zfs_append_first_record_fit)."""
    copy_s = TimingConstants().page_copy_s
    later = cal.zfs_later_append_share()
    meas = _zfs_append_meas(90e-6)
    t = cal.fit(meas, {})["timing"]
    assert t["idle_wake_s"]["zfs.write"] == pytest.approx(30e-6)
    assert t["idle_wake_s"]["zfs.write.page"] == pytest.approx((90e-6 - 63e-6 - copy_s - 20e-6) * later)
    hidden = cal.fit(dict(meas, **{"zfs.append4k.p1": 80e-6}), {})["timing"]
    assert hidden["idle_wake_s"]["zfs.write.page"] == 0.0
    lone = cal.fit({k: v for k, v in meas.items() if k != "zfs.append4k.busy.p1"}, {})["timing"]
    assert "zfs.write.page" not in lone["idle_wake_s"]


def _tree_meas(t1, p4):
    """A calibration whose zfs-fuse tree took ``t1`` a directory alone and
    ``p4`` (wall time / directories of one process) by 4 at once."""
    return dict(MEAS, **{"ext4.tree.p1": 40e-6, "ext4.tree.p4": 4 * 40e-6, "zfs.stat.p1": 1e-6,
                         "ext4.append.p1": 6e-6, "zfs.append.p1": 66e-6, "zfs.append.p4": 4 * 20e-6,
                         "ext4.create_unlink.p1": 20e-6, "zfs.create_unlink.p1": 120e-6,
                         "zfs.create_unlink.p4": 4 * 90e-6, "zfs.tree.p1": t1, "zfs.tree.p4": p4})


def test_fit_holds_zfs_fuses_lock_for_its_tree_as_the_tree_by_four_measured():
    """A lock-bound tree by 4 at once: the model, with the fitted shares and
    hand-over, makes 4 trees at once in about the time calibrate measured
    (t4 a directory of the 4 trees, 4 t4 a directory of one), where the kind-by-kind shares alone made them much
    faster; a tree that scales with the cores is left to those shares."""
    from thinp.workloads import Step, Workload
    from thinp.workloads import run as wrun

    cores = 2
    t1, t4 = 200e-6, 230e-6
    wl = Workload("t", vt.image_spec(), 1, [Step("tree", path="/t{p}", depth=cal.TREE_DEPTH, fanout=2,
                                                 size=1024)], 0, processes=4)
    log = wrun(wl, "zfs").oplog

    def per_dir(t):     # wall time / directories of one process, as calibrate's p4
        k = dataclasses.replace(TimingConstants(), cores=cores, **{
            key: ({**getattr(TimingConstants(), key), **v} if isinstance(v, dict) else v)
            for key, v in t.items() if key != "cores"})
        return max(c["steps_s"] for c in simulate(log, device="ram", constants=k).per_container) / cal.TREE_DIRS

    import unittest.mock as um
    with um.patch("os.sched_getaffinity", return_value=set(range(cores))):
        t = cal.fit(_tree_meas(t1, 4 * t4), {})["timing"]
        assert t["serial_share"]["zfs.mkdir"] == 1.0 and t["serial_handoff_s"]["zfs.mkdir"] > 0
        assert per_dir(t) == pytest.approx(4 * t4, rel=0.1)
        # the kind-by-kind fit alone: far below what was measured
        kinds = {**t, "serial_share": {**t["serial_share"], "zfs.mkdir": min(t4, t1) / t1},
                 "serial_handoff_s": {k: v for k, v in t["serial_handoff_s"].items() if k != "zfs.mkdir"}}
        assert per_dir(kinds) < 0.85 * 4 * t4
        # 4 at once in half the time of 4 alone: it scales, nothing is added
        free = cal.fit(_tree_meas(t1, 4 * t1 / cores), {})["timing"]
        assert "zfs.mkdir" not in free.get("serial_handoff_s", {})
        # plain mkdirs by 4 at once made a directory in 100 us: no directory
        # held the lock longer, and the trees by 4 come out faster than measured
        capped = cal.fit(dict(_tree_meas(t1, 4 * t4), **{"zfs.mkdir.p4": 4 * 100e-6}), {})["timing"]
        assert "zfs.mkdir" not in capped.get("serial_handoff_s", {})
        assert capped["serial_share"]["zfs.mkdir"] < 1.0
        assert per_dir(capped) < 0.85 * 4 * t4
        assert "zfs.mkdir" not in free.get("serial_share", {})

"""``thinp calibrate``'s appends measured as ratios to ext4's (issue #13):
the driver's blocks and ext4's in turn, each run's ratio of their medians
(:func:`thinp.validate.calibrate.interleaved_rel`), and the fit that prices
the driver's append as that ratio times ext4's figure -- synthetic times,
never measured ones."""
import pathlib

import pytest

from thinp.cost import toml_load
from thinp.validate import calibrate as cal


def _kept():
    """The kept calibration's measurements less its ratios to ext4's (the
    ``*_rel`` keys: each test here sets the ones it means)."""
    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "timing" / "calibrate.toml"
    return {k: v for k, v in toml_load(path)["calibration"]["measured_s"].items() if "_rel." not in k}


def _phased(phases, own_x, slow_own=None):
    """A ref and an own benchmark whose seconds per op are the machine's
    phase (one per block, both sides of it) times 1.3 us and ``own_x`` times
    that; ``slow_own``: the own call (1-based) that waits 100x as long."""
    calls = []

    def phase():
        return phases[(len(calls) - 1) // 2 % len(phases)]

    def ref():
        calls.append("ref")
        return 1.3e-6 * phase()

    def own():
        calls.append("own")
        return own_x * 1.3e-6 * phase() * (100.0 if calls.count("own") == slow_own else 1.0)
    return own, ref, calls


def test_interleaved_rel_recovers_the_ratio_through_the_machines_phases():
    """The machine's speed changes from block to block (1x, 1.6x, 1.3x ...)
    and one driver block waits 100x as long: each run's ratio of medians is
    still the driver's 40x ext4's; blocks alternate which goes first."""
    own, ref, calls = _phased([1.0, 1.6, 1.3, 1.0, 1.45, 1.6, 1.1], 40, slow_own=3)
    got = cal.interleaved_rel(own, ref, blocks=8, runs=3)
    assert got == pytest.approx([40.0, 40.0, 40.0])
    assert calls[:8] == ["ref", "own", "own", "ref", "ref", "own", "own", "ref"]
    assert len(calls) == 2 * 8 * 3


def test_a_least_measured_in_another_phase_would_not_recover_it():
    """The reason for the ratio: the driver's least taken in its own fast
    phase over ext4's taken in a slow one is another ratio (40 / 1.5); the
    interleaved blocks of the same phases give 40."""
    ext4 = [1.3e-6 * p for p in (1.6, 1.5, 1.6)]
    zfs = [40 * 1.3e-6 * p for p in (1.0, 1.1, 1.0)]
    assert min(zfs) / min(ext4) == pytest.approx(40 / 1.5)
    own, ref, _calls = _phased([1.6, 1.0, 1.5, 1.1], 40)
    assert cal.interleaved_rel(own, ref, blocks=4, runs=1) == pytest.approx([40.0])


def test_fit_prices_the_drivers_appends_as_the_ratio_times_ext4s_and_keeps_what_was_measured(tmp_path):
    """With ``zfs.append_rel.p1`` = 40 (and the busy and CPU ratios), the
    fit takes zfs-fuse's lone append as 40 x ext4's least, not its own
    least (the kept file's 53.8 us): the write's extra over ext4's, its
    wake-ups (lone less busy) and its daemon wait (lone less CPU) follow;
    the file keeps the measured figures, and a refit gives the same."""
    meas = _kept()
    ext4 = meas["ext4.append.p1"]
    floor = meas["zfs.stat.p1"] - meas["ext4.stat.p1"]
    base = cal.fit(meas, {})["timing"]
    rel = dict(meas, **{"zfs.append_rel.p1": 40.0, "zfs.append_rel.busy.p1": 30.0,
                        "zfs.append_rel.cpu.p1": 38.0, "zfs.append4k_rel.p1": 20.0,
                        "zfs.append4k_rel.busy.p1": 19.0})
    res = cal.fit(rel, {})
    t = res["timing"]
    x = 40 * ext4 - ext4 - 4 * floor
    assert t["layer_kind_s"]["zfs.write"] == pytest.approx(x, rel=1e-9)
    assert base["layer_kind_s"]["zfs.write"] == pytest.approx(meas["zfs.append.p1"] - ext4 - 4 * floor, rel=1e-9)
    wait = (40 - 38) * ext4 / x
    assert t["daemon_wait_share"]["zfs.write"] == pytest.approx(wait, rel=1e-9)
    assert t["idle_wake_s"]["zfs.write"] == pytest.approx((40 - 30) * ext4 - x * wait, rel=1e-9)
    a4 = 20.0 * meas["ext4.append4k.p1"]
    b4 = 19.0 * meas["ext4.append4k.p1"]
    # a later append's share of the two mixes' difference (a new file's first record averaged in)
    assert t["idle_wake_s"]["zfs.write.page"] == pytest.approx((a4 - b4) * cal.zfs_later_append_share(), rel=1e-9)
    # btrfs measured apart: its own least stands
    assert t["layer_kind_s"]["btrfs.write"] == base["layer_kind_s"]["btrfs.write"]
    kept = res["calibration"]["measured_s"]
    assert kept["zfs.append.p1"] == meas["zfs.append.p1"] and kept["zfs.append_rel.p1"] == 40.0
    out = tmp_path / "cal.toml"
    cal.write(str(out), res)
    again = cal.refit(str(out), str(tmp_path / "again.toml"))
    assert again["timing"]["layer_kind_s"] == t["layer_kind_s"]
    assert again["timing"]["idle_wake_s"] == t["idle_wake_s"]


def test_append_rels_measures_every_ratio_with_its_runs(tmp_path):
    """On two plain directories (a stand-in driver and ext4) with a daemon
    pid to sample: the wall, CPU and busy ratios, each the median of its
    runs, the runs kept under ``.runs`` for ``merge_runs`` to pool."""
    import os

    own, ref = tmp_path / "own", tmp_path / "ref"
    own.mkdir()
    ref.mkdir()
    m = cal.append_rels("zfs", str(own), str(ref), 5, 5, daemon=[os.getpid()], blocks=2, runs=3)
    keys = {"zfs.append_rel.p1", "zfs.append4k_rel.p1", "zfs.append_rel.cpu.p1",
            "zfs.append_rel.busy.p1", "zfs.append4k_rel.busy.p1"}
    assert set(m) == keys | {k + cal.RUNS for k in keys}
    for k in keys:
        assert len(m[k + cal.RUNS]) == 3 and all(v > 0 for v in m[k + cal.RUNS])
        assert m[k] == sorted(m[k + cal.RUNS])[1]
    merged = cal.merge_runs([m, m])
    assert merged["zfs.append_rel.p1"] == m["zfs.append_rel.p1"]
    assert len(merged["zfs.append_rel.p1" + cal.RUNS]) == 6
    assert not (set(cal.append_rels("btrfs", str(own), str(ref), 5, 5, blocks=2, runs=1))
                & {"btrfs.append_rel.cpu.p1", "btrfs.append_rel.busy.p1"})

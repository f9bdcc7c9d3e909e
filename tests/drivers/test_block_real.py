"""The btrfs and zfs models against a real btrfs on a loop device and zfs-fuse,
where this machine allows; skipped with the reason otherwise."""
from __future__ import annotations

import subprocess

import pytest

from thinp.validate import block as vb


def _loops():
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def test_btrfs_one_leaf_snapshot_matches_the_kernel():
    ok, why = vb.btrfs_available()
    if not ok:
        pytest.skip(why)
    real = vb.btrfs_scenario_real(0)
    assert "thinp-btrfs-" not in _loops()         # our loop device was released
    sim = vb.btrfs_scenario_sim(0)
    assert sim == real


def test_btrfs_two_level_tree_within_one_leaf():
    ok, why = vb.btrfs_available()
    if not ok:
        pytest.skip(why)
    real = vb.btrfs_scenario_real(300)
    sim = vb.btrfs_scenario_sim(300)
    for k in ("fi_du_total", "fi_du_exclusive", "snap_excl_after_snapshot"):
        assert sim[k] == real[k], k
    assert sim["snap_referenced"] == pytest.approx(real["snap_referenced"], rel=0.05)
    # whether the split extent items split the leaf depends on how full it is
    # (name hashes): one 16 KiB node either way
    assert abs(sim["snap_exclusive"] - real["snap_exclusive"]) <= 16384


def test_btrfs_debian_rootfs_subvolume():
    ok, why = vb.btrfs_available()
    if not ok:
        pytest.skip(why)
    rows = vb._rootfs_rows()
    if rows is None:
        pytest.skip("Debian rootfs manifest fixture missing")
    real = vb.btrfs_rootfs_real(rows)
    sim = vb.btrfs_rootfs_sim(rows)
    assert sim["data_used_after_rootfs"] == pytest.approx(real["data_used_after_rootfs"], rel=0.01)
    assert sim["metadata_used_after_rootfs"] == pytest.approx(real["metadata_used_after_rootfs"], rel=0.10)
    assert sim["base_referenced"] == pytest.approx(real["base_referenced"], rel=0.02)
    assert sim["snap_exclusive_after_100_writes"] == pytest.approx(real["snap_exclusive_after_100_writes"], rel=0.25)  # real: 671,744-704,512 here


@pytest.mark.parametrize("recordsize", ["128K", "16K"])
def test_zfs_clone_used_matches_zfs_fuse(recordsize):
    ok, why = vb.zfs_available()
    if not ok:
        pytest.skip(why)
    try:
        real = vb.zfs_scenario_real(recordsize)
    except RuntimeError as e:
        pytest.skip(f"zfs-fuse refused: {e}")
    sim = vb.zfs_scenario_sim(recordsize)
    assert sim["clone_used"] == pytest.approx(real["clone_used"], rel=0.05)
    assert sim["base_used"] == pytest.approx(real["base_used"], rel=0.05)


def test_rows_have_the_table_shape():
    rows = vb.validate_block_drivers(real=False, rootfs=False)
    assert rows and all(r["real"] is None and r["note"] for r in rows if r["driver"] != "devicemapper")
    assert {r["driver"] for r in rows} == {"btrfs", "zfs", "devicemapper"}
    dm = [r for r in rows if r["driver"] == "devicemapper"]
    assert all(abs(r["err_pct"]) < 5 for r in dm)      # SOURCES.md mkfs figures
    assert "clone_used" in vb.format_rows(rows)

"""The overlay2 calibration: replaying the real dpkg trace leaves the kernel's upper dir."""
from __future__ import annotations

import pytest

from thinp.validate.union import KERNEL_UPPER_DU_KIB, overlay2_replay_calibration


@pytest.fixture(scope="module")
def calibration(fixtures_dir):
    return overlay2_replay_calibration(fixtures_dir)


def test_replay_applies_every_operation(calibration):
    r = calibration["replay"]
    assert r["errors"] == {} and r["applied"] == calibration["nr_ops"] == 1240


def test_upper_has_exactly_the_kernels_paths(calibration):
    c = calibration
    assert c["missing"] == [] and [p for p in c["extra"] if not p.startswith(".wh..wh.")] == []
    assert c["mismatched"] == []     # type, size, mode, owner, symlink target, overlay xattr names
    assert c["paths_matched"] == c["paths_expected"] == 155


def test_whiteouts_and_opaque_markers_as_the_kernel_left_them(calibration):
    # dpkg only adds files: no whiteouts; its renamed-into-place new dirs are opaque
    assert calibration["whiteouts"] == 0
    assert calibration["opaque_dirs"] == 11


def test_upper_size_within_5_percent_of_the_kernels(calibration):
    du = calibration["du_kib"]
    assert abs(du - KERNEL_UPPER_DU_KIB) <= 0.05 * KERNEL_UPPER_DU_KIB
    print(f"overlay2 upper du -sk: {du} KiB (kernel {KERNEL_UPPER_DU_KIB} KiB)")


def test_copy_up_counters(calibration):
    s = calibration["stats"]
    # the files dpkg rewrites in place or renames over: status, dpkg.log, debconf, locks ...
    assert s["copy_up_count"] >= 40 and s["copy_up_bytes"] > 753_157   # templates.dat alone
    assert s["lookup_probes"] > 0


def test_xfs_backing_gives_the_same_tree(fixtures_dir):
    c = overlay2_replay_calibration(fixtures_dir, fstype="xfs")
    assert c["missing"] == c["extra"] == c["mismatched"] == []


def test_aufs_replay_leaves_the_same_files(fixtures_dir):
    c = overlay2_replay_calibration(fixtures_dir, driver="aufs")
    # aufs has no overlay xattrs (so those rows differ) but the same paths
    assert c["missing"] == [] and [p for p in c["extra"] if not p.startswith(".wh..wh.")] == []
    assert {p for p, want, got in c["mismatched"]} == {p for p, want, got in c["mismatched"] if want[6]}

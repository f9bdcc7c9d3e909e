"""Reality tests: the simulated filesystems against real mkfs + kernel on loop devices.

Skipped, with the reason, where the machine refuses (not root, no losetup,
mount refused).
"""
import subprocess

import pytest

from thinp.validate.fs import (CALIBRATION, DEFAULT_CONFIGS, STAGES, format_table, real_fs, run_real, run_sim,
                               scan_allocated, scan_seek_data, summarize, validate_fs)

pytestmark = pytest.mark.real


def _loops_for(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path in line]


@pytest.fixture(scope="module")
def rows(real_kernel, rootfs_manifest):
    try:
        rows = validate_fs(workloads=("mkfs", "file100m", "rootfs", "smallfiles"), size="10G")
    except RuntimeError as e:   # e.g. mount refused in a container
        pytest.skip(f"real kernel refused: {e}")
    if any(r["real_64k"] is None for r in rows):
        pytest.skip("real kernel runs failed: " + "; ".join({r["note"] for r in rows}))
    print("\n" + format_table(rows))
    return rows


@pytest.mark.parametrize("config", range(len(DEFAULT_CONFIGS)), ids=["ext4", "ext4-docker", "xfs"])
@pytest.mark.parametrize("workload", ["mkfs", "file100m", "rootfs", "smallfiles"])
def test_64k_chunks_within_15_percent(rows, config, workload):
    fstype, opts = DEFAULT_CONFIGS[config]
    (row,) = [r for r in rows if r["fs"] == fstype and r["options"] == opts and r["workload"] == workload]
    assert abs(row["sim_64k"] - row["real_64k"]) <= 0.15 * row["real_64k"], format_table([row])
    assert abs(row["sim_kib"] - row["real_kib"]) <= 0.10 * row["real_kib"], format_table([row])


@pytest.mark.parametrize("fstype,opts", [("ext4", {"lazy_itable_init": False}),
                                          ("ext4", {"lazy_journal_init": True}),
                                          ("xfs", {"agcount": 8})])
def test_mkfs_variants_match_real(real_kernel, fstype, opts):
    real = run_real(fstype, "10G", opts, "mkfs")
    sim = run_sim(fstype, "10G", opts, "mkfs")
    assert abs(sim["chunks_64k"] - real["chunks_64k"]) <= 0.05 * real["chunks_64k"], (real, sim)


@pytest.mark.parametrize("fstype,size,opts,figures", CALIBRATION[:1] + CALIBRATION[3:4],
                         ids=["ext4-10G", "xfs-10G"])
def test_sources_table_still_holds_here(real_kernel, tmp_path, fstype, size, opts, figures):
    """SOURCES.md's du figures, re-measured: mkfs, +100 MiB, rm, fstrim."""
    got = []
    with real_fs(fstype, size, opts) as (img, loop, mnt, mount, umount):
        mount()
        got.append(summarize(scan_allocated(img))["kib"])
        with open(f"{mnt}/f", "wb") as f:
            f.write(bytes(range(256)) * (400 << 10))
        umount()
        got.append(summarize(scan_allocated(img))["kib"])
        mount()
        subprocess.run(["rm", f"{mnt}/f"], check=True)
        umount()
        got.append(summarize(scan_allocated(img))["kib"])
        mount()
        subprocess.run(["fstrim", mnt], check=True, capture_output=True)
        umount()
        got.append(summarize(scan_allocated(img))["kib"])
        # SEEK_DATA skips the unwritten extents mkfs zeroed with write-zeroes
        assert summarize(scan_seek_data(img))["kib"] < got[-1]
        held = img
    assert not _loops_for(held), "the harness left a loop device behind"
    for stage, want, have in zip(STAGES, figures, got):
        if want is not None:
            assert abs(have - want) <= 0.05 * want, (stage, want, have)


def test_harness_cleans_up_when_a_step_fails(real_kernel):
    with pytest.raises(RuntimeError):
        with real_fs("ext4", "1G") as (img, loop, mnt, mount, umount):
            held = img
            mount()
            raise RuntimeError("workload failed")
    assert not _loops_for(held)
    out = subprocess.run(["mount"], capture_output=True, text=True).stdout
    assert held.rsplit("/", 1)[0] not in out


@pytest.fixture(scope="module")
def churn_rows(real_kernel, rootfs_manifest):
    rows = validate_fs(workloads=("churn", "churn_trim"), configs=[("ext4", {}), ("xfs", {})])
    if any(r["real_64k"] is None for r in rows):
        pytest.skip("real kernel runs failed: " + "; ".join({r["note"] for r in rows}))
    print("\n" + format_table(rows))
    return rows


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
@pytest.mark.parametrize("workload", ["churn", "churn_trim"])
def test_delete_and_trim_match_real(churn_rows, fstype, workload):
    """rm -rf without discard keeps blocks provisioned; fstrim gives them back."""
    (row,) = [r for r in churn_rows if r["fs"] == fstype and r["workload"] == workload]
    assert abs(row["sim_64k"] - row["real_64k"]) <= 0.05 * row["real_64k"], format_table([row])


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_fstrim_reports_what_the_kernel_reports(real_kernel, fstype):
    """fstrim -v twice on a fresh 2 GiB fs: ext4 reports the bytes, then 0; xfs the range twice."""
    import re

    from thinp.blockdev import PlainDevice
    from thinp.fs import mkfs

    got = []
    with real_fs(fstype, "2G") as (_img, _loop, mnt, mount, umount):
        mount()
        for _ in range(2):
            out = subprocess.run(["fstrim", "-v", mnt], capture_output=True, text=True, check=True).stdout
            got.append(int(re.search(r"\((\d+) bytes\)", out).group(1)))
        umount()
    fs = mkfs(PlainDevice("2G"), fstype)
    assert [fs.fstrim(), fs.fstrim()] == got


@pytest.mark.parametrize("fstype,workload", [("ext4", "rootfs"), ("xfs", "smallfiles")])
def test_100g_workloads_match_real(real_kernel, rootfs_manifest, fstype, workload):
    """At 100 GiB ext4 has 50 flex groups and a 512 MiB journal; placement must still hold."""
    real = run_real(fstype, "100G", {}, workload)
    sim = run_sim(fstype, "100G", {}, workload)
    assert abs(sim["chunks_64k"] - real["chunks_64k"]) <= 0.15 * real["chunks_64k"], (real, sim)

"""thinp.compare() and ``thinp compare`` on the built-in scenarios, shrunk with ``scale``."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import thinp
from thinp.cli import main
from thinp import workloads
from thinp.experiments import compare as cmp

DRIVERS = ["overlay2", "devicemapper", "aufs"]
SCALE = "0.1"        # webapp: 5 containers, a 0.4 MiB sqlite-like file each rewrites
SQLITE_BYTES = int(round((4 << 20) * 0.1))


class FailingRunner:
    """thinp.workloads, with one driver failing as a RunResult error and one raising."""

    load = staticmethod(workloads.load)

    @staticmethod
    def run(workload, driver, **kw):
        if driver == "aufs":
            return workloads.RunResult(driver, workload.name,
                                       error="TooManyLayersError: max depth of 127 layers exceeded")
        if driver == "vfs":
            raise OSError(28, "No space left on device")
        return workloads.run(workload, driver, **kw)


@pytest.fixture(scope="module")
def df_fig():
    return thinp.compare("webapp", drivers=DRIVERS, device="nvme", scale=float(SCALE), progress=False)


def test_lazy_export():
    assert thinp.compare is cmp.compare


def test_one_row_per_driver_with_metric_columns(df_fig):
    df, fig = df_fig
    assert list(df["driver"]) == DRIVERS
    for col in ("driver", "error", "device", *cmp.COLUMNS):
        assert col in df.columns
    assert df["error"].isna().all()
    assert (df["device"] == "nvme").all()
    assert (df["containers"] == 5).all()
    assert (df["disk_used_bytes"] == df["disk_data_bytes"] + df["disk_metadata_bytes"]).all()
    by = df.set_index("driver")
    assert by.loc["devicemapper", "sim_start_s"] > by.loc["overlay2", "sim_start_s"]
    # the first write that copies: overlay2 copies the whole file up inside
    # the write call; devicemapper's write only dirties the page cache (the
    # block CoW happens at writeback, in the fsync)
    assert by.loc["overlay2", "sim_first_write_s"] > 2 * by.loc["devicemapper", "sim_first_write_s"]
    phases = {d: json.loads(by.loc[d, "sim_phases"]) for d in DRIVERS}
    assert all({"containers_create", "steps"} <= set(p) for p in phases.values())
    assert by.loc["devicemapper", "page_cache_bytes"] > by.loc["overlay2", "page_cache_bytes"]
    assert by.loc["overlay2", "copy_up_bytes"] >= 5 * SQLITE_BYTES     # each container's whole file
    assert by.loc["devicemapper", "cow_bytes"] > 0 and by.loc["devicemapper", "copy_up_bytes"] == 0


def test_phases_view_is_the_time_per_phase(df_fig):
    df, _ = df_fig
    rows, cols = cmp.phases_view(df)
    assert cols[:3] == ["driver", "containers_create", "steps"]
    assert [r["driver"] for r in rows] == DRIVERS
    by = {r["driver"]: r for r in rows}
    # the same seconds as the row's sim_phases, and devicemapper's starts the slowest phase of all
    for d in DRIVERS:
        assert by[d]["steps"] == json.loads(df.set_index("driver").loc[d, "sim_phases"])["steps"]
    assert by["devicemapper"]["containers_create"] > 5 * by["overlay2"]["containers_create"]


def test_cli_waits_prints_both_breakdowns(cli):
    rc, out, err = cli("compare", "webapp", "--scale", "0.05", "--drivers", "overlay2,devicemapper", "--waits")
    assert rc == 0, err
    assert "waiting on each resource" in out and "seconds per phase" in out and "containers_create" in out


def test_figure_has_four_labelled_panels(df_fig):
    _, fig = df_fig
    axes = fig.get_axes()
    assert len(axes) == 4
    titles = [a.get_title() for a in axes]
    assert any("Disk used" in t for t in titles) and any("simulated: start + steps" in t for t in titles)
    assert any("Page-cache" in t for t in titles) and any("written" in t for t in titles)
    assert all(a.get_ylabel() for a in axes)          # units on every panel
    assert [t.get_text() for t in axes[0].get_xticklabels()] == DRIVERS


def test_figure_false_draws_none_unless_out_wants_the_png(tmp_path, df_fig):
    df, fig = thinp.compare("webapp", drivers=DRIVERS, scale=float(SCALE), progress=False, figure=False)
    assert fig is None
    cols = [c for c in df.columns if c != "run_s"]
    pd.testing.assert_frame_equal(df[cols], df_fig[0][cols])
    _df, fig = thinp.compare("webapp", drivers=["aufs"], scale=float(SCALE), progress=False, figure=False,
                             out=tmp_path)
    assert fig is not None and (tmp_path / "compare.png").stat().st_size > 0


def test_failing_driver_keeps_its_row_and_the_run_goes_on(tmp_path):
    calls = []
    df, _ = cmp.compare("webapp", drivers=["overlay2", "aufs", "vfs"], runner=FailingRunner, scale=0.05,
                        progress=lambda d, i, n: calls.append((d, i, n)), out=tmp_path)
    assert calls == [("overlay2", 0, 3), ("aufs", 1, 3), ("vfs", 2, 3)]
    by = df.set_index("driver")
    assert "TooManyLayersError" in by.loc["aufs", "error"]
    assert "No space left on device" in by.loc["vfs", "error"]
    assert pd.isna(by.loc["aufs", "sim_start_s"]) and pd.isna(by.loc["vfs", "disk_used_bytes"])
    assert pd.isna(by.loc["overlay2", "error"]) and by.loc["overlay2", "sim_start_s"] > 0
    back = pd.read_parquet(tmp_path / "compare.parquet")
    assert list(back["driver"]) == ["overlay2", "aufs", "vfs"]
    assert "TooManyLayersError" in back.set_index("driver").loc["aufs", "error"]
    assert (tmp_path / "compare.png").stat().st_size > 10_000


@pytest.mark.parametrize("drivers, msg", [("overlay2,nosuch", "unknown driver 'nosuch'"),
                                          ("", "no drivers given"), ([], "no drivers given")])
def test_bad_driver_lists(drivers, msg):
    with pytest.raises(cmp.CompareError, match=msg):
        cmp.parse_drivers(drivers)


def test_all_is_the_seven_drivers():
    assert cmp.parse_drivers("all") == ["overlay2", "overlay", "aufs", "devicemapper", "btrfs", "zfs", "vfs"]
    assert cmp.parse_drivers(" aufs , vfs") == ["aufs", "vfs"]


# ----------------------------------------------------------------------- CLI
@pytest.fixture
def cli(capsys):
    def run(*argv):
        try:
            rc = main(list(argv))
        except SystemExit as e:   # argparse usage errors exit(2) after one line
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def test_cli_writes_table_and_files(cli, tmp_path):
    rc, out, err = cli("compare", "webapp", "--scale", SCALE, "--drivers", "overlay2,devicemapper",
                       "--out", str(tmp_path))
    assert rc == 0, err
    assert "overlay2" in out and "devicemapper" in out and "start/ctr ms" in out and "1st write ms" in out
    assert "start_time_s" not in out and "work/ctr" not in out
    for name in ("compare.csv", "compare.parquet", "compare.png"):
        assert (tmp_path / name).stat().st_size > 0
    csv = pd.read_csv(tmp_path / "compare.csv")
    assert list(csv["driver"]) == ["overlay2", "devicemapper"]
    assert set(cmp.COLUMNS) <= set(csv.columns)


def test_cli_json_is_a_list_of_rows(cli):
    rc, out, err = cli("compare", "read-heavy", "--scale", "0.5", "--drivers", "aufs,devicemapper", "--json",
                       "--disk", "hdd")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["driver"] for r in rows] == ["aufs", "devicemapper"]
    assert all(r["device"] == "hdd" and r["error"] is None for r in rows)
    assert rows[1]["page_cache_bytes"] == 5 * rows[0]["page_cache_bytes"]      # 5 containers, 5 copies
    assert rows[0]["write_amplification"] is None     # nothing written: NaN becomes null


@pytest.mark.parametrize("argv, msg", [
    (("compare", "nosuch", "--drivers", "aufs"), "nosuch: no such workload file or built-in scenario"),
    (("compare", "missing.toml"), "missing.toml: no such workload file"),
    (("compare", "webapp", "--drivers", "aufs,zz"), "unknown driver 'zz'"),
    (("compare", "webapp", "--disk", "floppy"), "unknown device 'floppy'"),
    (("compare", "webapp", "--scale", "0"), "argument --scale: 0 is out of range (want > 0)"),
    (("compare", "webapp", "--scale", "big"), "argument --scale: want a number, not 'big'"),
])
def test_cli_errors_are_one_line(cli, argv, msg):
    rc, out, err = cli(*argv)
    assert rc != 0
    assert msg in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("thinp")


def test_cli_bad_workload_file_names_the_file(cli, tmp_path):
    p = tmp_path / "w.toml"
    p.write_text("[workload]\ncontainers = 'many'\n")
    rc, out, err = cli("compare", str(p), "--drivers", "aufs")
    assert rc != 0 and str(p) in err and err.count("\n") == 1


def test_cli_bad_device_file(cli, tmp_path):
    p = tmp_path / "dev.toml"
    p.write_text("[device]\nread_latency_s = 'fast'\n")
    rc, out, err = cli("compare", "webapp", "--drivers", "aufs", "--disk", str(p))
    assert rc != 0 and str(p) in err and "device." in err and err.count("\n") == 1


def test_workload_errors_are_not_driver_failures():
    """A WorkloadError from run() (a glob that matches nothing) is the
    workload's fault: it propagates instead of filling every row."""
    class WorkloadError(ValueError):
        pass

    class Runner:
        load = staticmethod(workloads.load)

        @staticmethod
        def run(workload, driver, **kw):
            raise WorkloadError("w.toml: steps[0].glob = '/nope/*' matches no file")

    Runner.WorkloadError = WorkloadError
    with pytest.raises(WorkloadError, match="matches no file"):
        cmp.compare("webapp", drivers=["aufs"], runner=Runner, progress=False)


def test_cli_constants_file_changes_the_times(cli, tmp_path):
    p = tmp_path / "k.toml"
    p.write_text("[timing.start_s]\noverlay2 = 1.0\n")
    rc, out, err = cli("compare", "webapp", "--scale", "0.05", "--drivers", "overlay2", "--json", "--constants", str(p))
    assert rc == 0, err
    slow = json.loads(out)[0]["sim_start_s"]
    rc, out, err = cli("compare", "webapp", "--scale", "0.05", "--drivers", "overlay2", "--json")
    assert slow - json.loads(out)[0]["sim_start_s"] >= 0.99
    p.write_text("[constants]\ncache = 1\n")
    rc, out, err = cli("compare", "webapp", "--scale", "0.05", "--drivers", "overlay2", "--constants", str(p))
    assert rc != 0 and "unknown key constants.cache" in err and err.count("\n") == 1
    # a constant of the old time estimates says where its role went
    p.write_text("[constants.mount_s]\noverlay2 = 1.0\n")
    rc, out, err = cli("compare", "webapp", "--scale", "0.05", "--drivers", "overlay2", "--constants", str(p))
    assert rc != 0 and "constants.mount_s" in err and "timing.start_s" in err and err.count("\n") == 1


def test_parallel_rows_equal_serial_rows():
    """Drivers are independent: one process per driver gives the rows one
    process gives (run_s aside), on the real workloads."""
    kw = dict(drivers=["overlay2", "devicemapper", "vfs"], scale=0.05, progress=False)
    serial, _ = cmp.compare("webapp", jobs=1, **kw)
    para, _ = cmp.compare("webapp", jobs=3, **kw)
    assert list(para["driver"]) == ["overlay2", "devicemapper", "vfs"]
    cols = [c for c in serial.columns if c != "run_s"]
    pd.testing.assert_frame_equal(serial[cols], para[cols])
    assert serial["disk_used_bytes"].gt(0).all() and serial["error"].isna().all()


def test_a_dead_worker_becomes_an_error_row(tmp_path, monkeypatch):
    """vfs's worker dies while overlay2's is still running (the runner makes
    sure of it): the broken pool ends both, and both rows say so, with NaN
    figures, instead of the comparison failing."""
    monkeypatch.setenv("THINP_TEST_CRASH_MARKER", str(tmp_path / "vfs-died"))
    calls = []
    df, _ = cmp.compare("webapp", drivers=["overlay2", "vfs"], jobs=2, scale=0.05,
                        runner=__import__("tests.compare.crashing", fromlist=["run"]),
                        progress=lambda d, i, n: calls.append(d))
    by = df.set_index("driver")
    assert (tmp_path / "vfs-died").exists()
    for d in ("vfs", "overlay2"):
        assert "worker process died" in by.loc[d, "error"], by.loc[d, "error"]
        assert pd.isna(by.loc[d, "sim_start_s"])
    assert sorted(calls) == ["overlay2", "vfs"]


def test_jobs_must_be_positive():
    with pytest.raises(cmp.CompareError, match="jobs"):
        cmp.compare("webapp", drivers=["overlay2"], jobs=0, progress=False)


def test_log_scale_disk_panel_keeps_stacked_parts_visible():
    """With vfs dwarfing the rest the disk panel goes log scale; its axis must
    start below every stacked part (a log axis clipped btrfs's data part, so
    its bar looked all metadata)."""
    from thinp.plot import compare_figure

    mib = 1 << 20
    df = pd.DataFrame({"driver": ["btrfs", "vfs"], "error": [None, None],
                       "disk_data_bytes": [143 * mib, 13_000 * mib], "disk_metadata_bytes": [27 * mib, 600 * mib],
                       "bytes_written": [160 * mib, 14_000 * mib], "sim_start_s": [0.03, 0.2],
                       "sim_steps_s": [0.05, 0.01],
                       "page_cache_bytes": [30 * mib, 30 * mib]})
    ax = compare_figure(df).get_axes()[0]
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    assert lo < 27 and hi > 13_600

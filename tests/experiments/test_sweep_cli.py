"""thinp sweep (local, resumable, failures, Dask equivalence) and the two CLI commands."""
import json
import os


import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
from thinp.cli import main  # noqa: E402
from thinp.experiments import sweep as S  # noqa: E402

SPEC = {
    "grid": {"driver": ["devicemapper", "overlay2"], "seed": [0, 1], "block_size": ["64k", "1m"]},
    "fixed": {"pool": "512M", "containers": 8, "write_per_container": "64M", "image": "8M"},
}
RESULT = ["hash", "params", "error", "containers_started", "first_min_free_space", "first_out_of_data_space",
          "final_data_pct", "final_meta_pct", "max_overcommit_ratio", "final_host_bytes"]


def test_expand_and_hash():
    pts = S.expand(SPEC)
    assert len(pts) == 8 and len({S.point_hash(p) for p in pts}) == 8
    assert S.point_hash({"a": 1, "b": 2}) == S.point_hash({"b": 2, "a": 1})
    assert all(p["pool"] == "512M" for p in pts)


@pytest.fixture
def fails_at_1m(monkeypatch):
    """Points with block_size 1m fail while running (a spec check cannot see it)."""
    import functools

    from thinp.experiments import overcommit as O

    real = O.overcommit

    @functools.wraps(real)
    def flaky(*a, **kw):
        if kw.get("block_size") == "1m":
            raise RuntimeError("the disk went away")
        return real(*a, **kw)
    monkeypatch.setattr(O, "overcommit", flaky)


def test_sweep_resume_and_failures(tmp_path, fails_at_1m):
    spec = {**SPEC, "grid": {**SPEC["grid"], "block_size": ["64k", "1m"]}}
    out = str(tmp_path / "r.parquet")
    st = S.run_sweep(spec, out, workers=0, progress=False)
    assert st == {**st, "points": 8, "skipped": 0, "ran": 8, "failed": 4}
    assert S.failures(out) == ["4 points: RuntimeError: the disk went away"]
    df = S.read_results(out)
    assert len(df) == 8
    bad = df[df["p_block_size"] == "1m"]
    assert (bad["error"].str.startswith("RuntimeError")).all() and len(bad) == 4
    good = df[df["p_block_size"] == "64k"]
    assert (good["error"] == "").all() and (good["containers_started"] > 0).all()
    # interrupted: lose two finished points, rerun -> only those run
    parts = sorted(f for f in os.listdir(out) if f.endswith(".parquet") and "failed" not in f)
    for f in parts[:2]:
        os.unlink(os.path.join(out, f))
    st2 = S.run_sweep(spec, out, workers=0, progress=False)
    assert (st2["skipped"], st2["ran"], st2["failed"]) == (6, 2, 0)
    again = S.read_results(out)
    pd.testing.assert_frame_equal(again[RESULT], df[RESULT])
    # failed points are kept unless asked to retry
    st3 = S.run_sweep(spec, out, workers=0, progress=False, retry_failed=True)
    assert (st3["skipped"], st3["ran"], st3["failed"]) == (4, 4, 4)
    assert len(S.read_results(out)) == 8


def test_dask_matches_local(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    local = str(tmp_path / "local.parquet")
    S.run_sweep(SPEC, local, workers=0, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = str(tmp_path / "dask.parquet")
        st = S.run_sweep(SPEC, remote, client=client, progress=False)
    assert st["ran"] == 8 and st["failed"] == 0
    a, b = S.read_results(local), S.read_results(remote)
    assert len(a) == len(b) == 8
    pd.testing.assert_frame_equal(a[RESULT + [c for c in a if c.startswith("p_")]],
                                  b[RESULT + [c for c in a if c.startswith("p_")]])


def test_sweep_process_pool_and_cli(tmp_path, capsys):
    toml = tmp_path / "sweep.toml"
    toml.write_text('[grid]\nseed = [0, 1]\ndriver = ["devicemapper", "vfs"]\n'
                    '[fixed]\npool = "512M"\ncontainers = 6\nwrite_per_container = "64M"\nimage = "8M"\n')
    out = str(tmp_path / "res.parquet")
    assert main(["sweep", str(toml), "--out", out, "--jobs", "2", "-q"]) == 0
    text = capsys.readouterr().out
    assert "4 points: 0 already done, 4 ran (0 failed)" in text
    local = str(tmp_path / "local.parquet")
    S.run_sweep(S.load_spec(toml), local, workers=0, progress=False)
    pd.testing.assert_frame_equal(S.read_results(out)[RESULT], S.read_results(local)[RESULT])
    assert main(["sweep", str(toml), "--out", out, "-q"]) == 0
    assert "4 already done, 0 ran" in capsys.readouterr().out
    assert main(["sweep", str(toml), "--out", out, "--jobs", "1", "--scheduler", "tcp://x:1"]) == 1


def test_overcommit_cli(tmp_path, capsys):
    out = tmp_path / "oc"
    rc = main(["overcommit", "--data-size", "1G", "--containers", "40", "--write-per-container", "32M",
               "--image", "16M", "--drivers", "devicemapper,overlay2", "--out", str(out), "--json"])
    assert rc == 0
    summary = {r["driver"]: r for r in json.loads(capsys.readouterr().out)}
    assert "min_free_space at container" in summary["devicemapper"]["events"]
    assert "out_of_data_space at container" in summary["overlay2"]["events"]
    assert summary["devicemapper"]["started"] < 40 and summary["overlay2"]["completed"] < 40
    df = pd.read_csv(out / "overcommit.csv")
    assert len(df) == 80 and {"data_pct", "meta_pct", "overcommit_ratio", "events", "mapped_bytes",
                              "virtual_bytes"} <= set(df.columns)
    png = (out / "overcommit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rc = main(["overcommit", "--data-size", "1G", "--containers", "3", "--write-per-container", "8M",
               "--no-plot", "--out", str(out / "pq"), "-q"])
    assert rc == 0 and len(pd.read_parquet(out / "pq" / "overcommit.parquet")) == 3
    assert not (out / "pq" / "overcommit.png").exists()
    with pytest.raises(SystemExit) as e:       # refused while parsing: one line, exit 2
        main(["overcommit", "--block-size", "3k", "--containers", "1", "--out", str(out), "-q"])
    assert e.value.code == 2 and "--block-size" in capsys.readouterr().err


def test_overcommit_notes_pool_options_the_union_drivers_ignore(tmp_path, capsys):
    argv = ["overcommit", "--data-size", "1G", "--containers", "3", "--write-per-container", "8M", "--image", "16M",
            "--no-plot", "-q", "--out", str(tmp_path)]
    assert main(argv + ["--drivers", "devicemapper,overlay2", "--discard", "ignore", "--zeroing"]) == 0
    err = capsys.readouterr().err
    assert "thinp: note: overlay2 run on a plain disk" in err and "zeroing, discard" in err
    assert main(argv + ["--drivers", "devicemapper", "--discard", "ignore"]) == 0
    assert "thinp: note" not in capsys.readouterr().err      # devicemapper alone uses them
    assert main(argv + ["--drivers", "overlay2"]) == 0
    assert "thinp: note" not in capsys.readouterr().err      # defaults: nothing to say


@pytest.mark.parametrize("grid, fixed, msg", [
    ({"blok_size": ["64k"]}, {}, "grid.blok_size: unknown parameter of overcommit (did you mean 'block_size'?)"),
    ({"block_size": ["64k", "3k"]}, {}, "grid.block_size = '3k'"),
    ({"seed": [0]}, {"containers": -1}, "fixed.containers: containers must be an integer >= 1, not -1"),
    ({"driver": ["devicemapper", "btrfs"]}, {}, "grid.driver = 'btrfs': driver 'btrfs': one of"),
    ({"seed": []}, {}, "grid.seed is an empty list"),
])
def test_sweep_spec_is_checked_before_any_point_runs(tmp_path, capsys, grid, fixed, msg):
    toml = tmp_path / "s.toml"
    lines = ["[grid]"] + [f"{k} = {json.dumps(v)}" for k, v in grid.items()]
    lines += ["[fixed]"] + [f"{k} = {json.dumps(v)}" for k, v in
                            {"pool": "512M", "containers": 2, "image": "8M", **fixed}.items()]
    toml.write_text("\n".join(lines) + "\n")
    out = tmp_path / "res"
    assert main(["sweep", str(toml), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"thinp: error: {toml}: ") and msg in err
    assert not out.exists()                 # nothing ran, nothing written


def test_sweep_cli_exits_non_zero_with_each_error_once(tmp_path, capsys, fails_at_1m):
    toml = tmp_path / "s.toml"
    toml.write_text('[grid]\nblock_size = ["64k", "1m"]\nseed = [0, 1]\n'
                    '[fixed]\npool = "512M"\ncontainers = 2\nimage = "8M"\n')
    assert main(["sweep", str(toml), "--out", str(tmp_path / "r"), "--jobs", "1", "-q"]) == 1
    out, err = capsys.readouterr()
    assert "4 ran (2 failed)" in out
    assert err == "thinp: error: 2 points: RuntimeError: the disk went away\n"

"""Every user mistake is one line naming the user's value, a non-zero exit,
no traceback and nothing half-written; the cases new users hit (#15)."""
from __future__ import annotations

import json
import os

import pytest

from thinp.cli import main


@pytest.fixture
def cli(capsys):
    def run(*argv):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:       # argparse's usage errors: one line, exit 2
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def one_line(rc, err, *parts):
    assert rc in (1, 2), rc
    assert err.startswith("thinp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for p in parts:
        assert p in err, (p, err)


@pytest.mark.parametrize("argv, parts", [
    (["overcommit", "--containers", "0"], ["--containers", "0 is below 1"]),
    (["demo", "--containers", "-5"], ["--containers", "-5"]),
    (["overcommit", "--autoextend-threshold", "150"], ["--autoextend-threshold", "150"]),
    (["overcommit", "--min-free-space", "120"], ["--min-free-space", "120"]),
    (["overcommit", "--no-space-timeout", "-5"], ["--no-space-timeout", "-5 is below 0"]),
    (["overcommit", "--data-size", "lots"], ["--data-size", "'lots'"]),
    (["overcommit", "--block-size", "3k"], ["--block-size"]),
    (["sweep", "s.toml", "--out", "o", "--workers", "-1"], ["--workers", "-1"]),
    (["sweep", "s.toml", "--out", "o", "--jobs", "0"], ["--jobs", "0"]),
    (["compare", "--jobs", "0"], ["--jobs", "0"]),
    (["compare", "--scale", "-1"], ["--scale", "-1"]),
    (["pool", "create", "p", "--data-size", "1G", "--metadata-size", "1k"], ["--metadata-size", "1k", "2MiB"]),
    (["pool", "create", "p", "--data-size", "1G", "--low-water-mark", "-3"], ["--low-water-mark", "-3"]),
    (["metadata-size", "-b", "64k", "-s", "1G", "-m", "0"], ["--max-thins", "0"]),
    (["validate", "fs", "--size", "1k"], ["--size", "1k"]),
])
def test_numeric_options_are_range_checked(cli, argv, parts):
    rc, out, err = cli(*argv)
    one_line(rc, err, *parts)
    assert out == ""


def test_pool_create_refuses_a_missing_parent_and_a_non_empty_dir(cli, tmp_path):
    rc, out, err = cli("pool", "create", tmp_path / "no" / "such" / "pool", "--data-size", "1G")
    one_line(rc, err, str(tmp_path / "no" / "such"), "does not exist")
    assert not (tmp_path / "no").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    rc, out, err = cli("pool", "create", busy, "--data-size", "1G")
    one_line(rc, err, str(busy), "not empty")
    assert os.listdir(busy) == ["notes.txt"]
    rc, out, err = cli("pool", "create", tmp_path / "ok", "--data-size", "1G")
    assert rc == 0 and sorted(os.listdir(tmp_path / "ok"))[:2] == ["data", "metadata"]


def test_metadata_too_small_for_the_pool_is_refused_by_the_library(tmp_path):
    from thinp import ThinPool

    with pytest.raises(ValueError, match="metadata_size 2M: too small for 16777216 data blocks"):
        ThinPool.create(tmp_path / "p", "1T", metadata_size="2M")
    assert not (tmp_path / "p").exists()


def test_paths_the_user_gave_are_the_ones_named(cli, tmp_path):
    pool = tmp_path / "pool"
    assert cli("pool", "create", pool, "--data-size", "256M")[0] == 0
    rc, out, err = cli("pool", "replay", pool, tmp_path / "missing.trace")
    one_line(rc, err, f"{tmp_path / 'missing.trace'}: no such trace file")
    rc, out, err = cli("dump", pool, "-o", tmp_path / "nodir" / "x.xml")
    one_line(rc, err, str(tmp_path / "nodir" / "x.xml"), "does not exist")
    assert not (tmp_path / "nodir").exists()
    rc, out, err = cli("pool", "status", tmp_path / "nopool")
    one_line(rc, err, str(tmp_path / "nopool"))
    rc, out, err = cli("sweep", tmp_path / "none.toml", "--out", tmp_path / "r")
    one_line(rc, err, f"{tmp_path / 'none.toml'}: no such sweep file")


def test_a_bad_constants_value_names_file_and_key(cli, tmp_path):
    k = tmp_path / "k.toml"
    k.write_text('[constants.zeroes_new_blocks]\ndevicemapper = "big"\n')
    rc, out, err = cli("compare", "webapp", "--scale", "0.02", "--drivers", "aufs", "--constants", k)
    one_line(rc, err, f"{k}: constants.zeroes_new_blocks.devicemapper = 'big'")
    k.write_text('[constants]\ncache_bytes = "8G"\n')      # the page cache is the timing model's now
    rc, out, err = cli("compare", "webapp", "--scale", "0.02", "--drivers", "aufs", "--constants", k)
    one_line(rc, err, f"{k}: unknown key constants.cache_bytes = '8G'")
    assert "timing.cache_bytes" in err
    k.write_text('[constants.mount_s]\noverlay2 = "slow"\n')
    rc, out, err = cli("compare", "webapp", "--scale", "0.02", "--drivers", "aufs", "--constants", k)
    one_line(rc, err, f"{k}: unknown key constants.mount_s", "timing.start_s")     # an old time constant


def test_compare_exits_non_zero_naming_each_distinct_error_once(cli, monkeypatch):
    from thinp import workloads
    from thinp.experiments import compare as cmp

    class Runner:
        load = staticmethod(workloads.load)

        @staticmethod
        def run(workload, driver, **kw):
            if driver in ("aufs", "vfs"):
                raise OSError(28, "No space left on device")
            if driver == "overlay":
                raise RuntimeError("mount refused")
            return workloads.run(workload, driver, **kw)

    monkeypatch.setattr(cmp, "_default_runner", lambda: Runner)
    rc, out, err = cli("compare", "webapp", "--scale", "0.02", "--drivers", "overlay2,aufs,overlay,vfs", "-q")
    assert rc == 1
    assert err.splitlines() == ["thinp: error: aufs, vfs: OSError: [Errno 28] No space left on device",
                                "thinp: error: overlay: RuntimeError: mount refused"]
    assert "overlay2" in out and "aufs" not in out           # the good row stays, the bad ones go
    rc, out, err = cli("compare", "webapp", "--scale", "0.02", "--drivers", "overlay2,aufs", "--json")
    rows = json.loads(out)
    assert rc == 1 and [r["error"] is None for r in rows] == [True, False]


def test_version_and_bare_groups(cli, capsys):
    from thinp import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"thinp {__version__}\n"
    rc, out, err = cli("pool")
    assert rc == 2 and out.startswith("usage: thinp pool") and "resize" in out and "table" in out
    with pytest.raises(SystemExit):
        main(["pool", "message", "--help"])


def test_pool_message_help_lists_the_six_messages(capsys):
    with pytest.raises(SystemExit):
        main(["pool", "message", "--help"])
    out = capsys.readouterr().out
    for m in ("create_thin", "create_snap", "delete", "set_transaction_id", "reserve_metadata_snap",
              "release_metadata_snap"):
        assert f"\n  {m}" in out


def test_every_option_has_a_help_line():
    import argparse

    from thinp.cli import build_parser

    missing = []

    def walk(p, prefix):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, prefix + [name])
            elif a.help is None and a.option_strings:
                missing.append(" ".join(prefix + [a.option_strings[-1]]))
            elif a.help is None and not isinstance(a, argparse._HelpAction):
                missing.append(" ".join(prefix + [a.dest]))
    walk(build_parser(), ["thinp"])
    assert missing == []


def test_pool_table_resize_and_json(cli, tmp_path):
    pool = tmp_path / "pool"
    assert cli("pool", "create", pool, "--data-size", "1G", "--skip-block-zeroing", "--low-water-mark", "7")[0] == 0
    assert cli("pool", "message", pool, "create_thin", "1", "512M")[0] == 0
    assert cli("pool", "message", pool, "create_snap", "2", "1")[0] == 0
    rc, out, err = cli("pool", "table", pool)
    assert rc == 0 and out.splitlines() == [
        f"pool: 0 2097152 thin-pool {pool}/metadata {pool}/data 128 7 1 skip_block_zeroing",
        f"thin1: 0 1048576 thin {pool} 1", f"thin2: 0 1048576 thin {pool} 2"]
    rc, out, err = cli("pool", "resize", pool, "--data-size", "+1G")
    assert rc == 0 and out.split()[2] == "0/32768"
    rc, out, err = cli("pool", "resize", pool, "--thin", "1", "--size", "+128M")
    assert rc == 0
    rc, out, err = cli("pool", "status", pool, "--json")
    st = json.loads(out)
    assert st["status"].split()[2] == "0/32768"
    assert [(d["lv"], d["lsize"]) for d in st["devices"]] == [("pool", "2GiB"), ("thin1", "640MiB"),
                                                                ("thin2", "512MiB")]
    rc, out, err = cli("pool", "resize", pool, "--data-size", "1G")
    one_line(rc, err, "shrink")
    rc, out, err = cli("pool", "resize", pool, "--thin", "1")
    one_line(rc, err, "--thin DEV_ID and --size SIZE go together")
    rc, out, err = cli("ls", pool, "--json")
    assert rc == 0 and [r["DEV"] for r in json.loads(out)] == [1, 2]
    rc, out, err = cli("ls", pool)
    assert out.split()[:4] == ["DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME"]


@pytest.mark.parametrize("argv, parts", [
    (["pool", "replay", "p", "t.txt", "--device", "7,0"], ["--device was removed", "--trace-device"]),
    (["pool", "replay", "p", "t.txt", "--format", "ftrace"], ["--format was removed", "--trace-format"]),
    (["overcommit", "--format", "parquet"], ["--format was removed", "--out"]),
])
def test_an_old_spelling_that_meant_something_else_is_refused_naming_the_new_one(cli, argv, parts):
    rc, out, err = cli(*argv)
    one_line(rc, err, *parts)
    assert rc == 2 and out == ""


@pytest.mark.parametrize("argv, dest, value, use", [
    (["compare", "--device", "hdd"], "disk", "hdd", "--disk"),
    (["overcommit", "--pool", "1G"], "data_size", "1G", "--data-size"),
    (["overcommit", "--driver", "vfs"], "drivers", "vfs", "--drivers"),
    (["sweep", "s.toml", "--out", "o", "--workers", "3"], "jobs", 3, "--jobs"),
])
def test_an_old_spelling_still_works_and_says_once_what_to_use(capsys, argv, dest, value, use):
    from thinp.cli import build_parser

    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err == f"thinp: warning: {argv[-2]} is deprecated; use {use}\n"

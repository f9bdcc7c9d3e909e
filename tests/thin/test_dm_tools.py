"""thinp's metadata tools on dm-thin images agree with the real tools."""
from __future__ import annotations

import subprocess
import sys

import pytest

from thinp import errors
from thinp.thin.check import check
from thinp.thin.delta import delta
from thinp.thin.dump import dump
from thinp.thin.ls import ls
from thinp.thin.rmap import parse_region, rmap

from .dm_fixtures import CORRUPTED, real_tool, unpack


@pytest.fixture(scope="module")
def tmeta(fixtures_dir, tmp_path_factory):
    return unpack(fixtures_dir, "tmeta", tmp_path_factory.mktemp("tools"))


def _run(*argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_check_reads_the_image(tmeta):
    rep = check(tmeta)
    assert rep.ok and rep.transaction_id == 21 and rep.nr_devices == 11


def test_ls_equals_thin_ls(tmeta):
    fields = ("DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS", "CREATE_TIME", "SNAP_TIME")
    real = _run(real_tool("thin_ls"), "-o", ",".join(fields), str(tmeta))
    assert ls(tmeta, fields) == real


@pytest.mark.parametrize("pair", [(1, 2), (2, 13), (1, 16)])
def test_delta_equals_thin_delta(tmeta, pair):
    real = _run(real_tool("thin_delta"), "--snap1", str(pair[0]), "--snap2", str(pair[1]), str(tmeta))
    assert delta(tmeta, *pair) == real


@pytest.mark.parametrize("regions", [["0..20000"], ["100..200", "5000..5100"]])
def test_rmap_equals_thin_rmap(tmeta, regions):
    args = [a for r in regions for a in ("--region", r)]
    real = _run(real_tool("thin_rmap"), *args, str(tmeta))
    mine = rmap(tmeta, [parse_region(r) for r in regions])
    assert sorted(mine.splitlines()) == sorted(real.splitlines())
    assert len(mine.splitlines()) > 100


def test_dump_and_cli_take_an_image(tmeta):
    real = _run(real_tool("thin_dump"), str(tmeta))
    assert dump(tmeta) == real
    out = subprocess.run([sys.executable, "-m", "thinp", "dump", str(tmeta)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == real


def test_cli_names_the_broken_block(fixtures_dir, tmp_path):
    bad = unpack(fixtures_dir, CORRUPTED, tmp_path)
    with pytest.raises(errors.MetadataCorruptError, match="device details tree: btree node block 6"):
        check(bad)
    out = subprocess.run([sys.executable, "-m", "thinp", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "block 6" in out.stderr and "Traceback" not in out.stderr


def test_bad_region_is_one_line():
    with pytest.raises(ValueError, match="--region '9..3'"):
        parse_region("9..3")

"""thinp's metadata tools on their own: restore's errors, check/repair,
dump -m, ls formats, trim, the CLI, PoolBusyError, metadata-size."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from thinp import errors
from thinp.cli import main
from thinp.thin import ThinPool
from thinp.thin.check import check
from thinp.thin.dump import dump, load_pool_view
from thinp.thin.ls import human_size, ls, parse_format
from thinp.thin.restore import RestoreError, restore

from .populate import BS, trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SB = '<superblock uuid="" time="1" transaction="0" flags="0" version="2" data_block_size="128" nr_data_blocks="100">\n'
DEV = '  <device dev_id="{id}" mapped_blocks="{n}" transaction="0" creation_time="0" snap_time="0">\n'


def _xml(*devices):
    body = "".join(DEV.format(id=i, n=len(maps)) + "".join(f"    {m}\n" for m in maps) + "  </device>\n"
                   for i, maps in devices)
    return SB + body + "</superblock>\n"


SINGLE = '<single_mapping origin_block="{o}" data_block="{d}" time="0"/>'


@pytest.mark.parametrize("text, line, message", [
    (_xml((0, [SINGLE.format(o=1, d=2), '<bogus x="1"/>'])), 4, "unknown element <bogus>"),
    (_xml((0, [SINGLE.format(o=1, d=100)])), 3, "data block 100 is past nr_data_blocks=100"),
    (_xml((0, []), (0, [])), 4, "duplicate dev_id 0"),
    (_xml((0, ['<single_mapping origin_block="1x" data_block="2" time="0"/>'])), 3, "'1x' is not a non-negative"),
    (_xml((0, ['<range_mapping origin_begin="0" data_begin="-5" length="2" time="0"/>'])), 3, "not a non-negative"),
    (_xml((0, [SINGLE.format(o=1, d=2), SINGLE.format(o=1, d=3)])), 4, "origin block 1 is mapped twice"),
    (_xml((0, ['<single_mapping origin_block="1" data_block="2" time="9"/>'])), 3, "later than"),
    (SB + "  <device dev_id=\"0\"\n</superblock>\n", 3, "malformed XML"),
    (_xml().replace('data_block_size="128"', 'data_block_size="100"'), 1, "data_block_size=100"),
    (_xml((0, [SINGLE.format(o=1, d=2)])).replace('mapped_blocks="1"', 'mapped_blocks="3"'), 2, "mapped_blocks=3"),
])
def test_restore_rejects_bad_xml_with_line_and_leaves_nothing(tmp_path, text, line, message):
    src = tmp_path / "bad.xml"
    src.write_text(text)
    with pytest.raises(RestoreError) as ei:
        restore(str(src), str(tmp_path / "pool"))
    assert f"bad.xml:{line}:" in str(ei.value) and message in str(ei.value)
    assert not (tmp_path / "pool").exists()


def test_restore_into_existing_pool_refused_and_kept(populated, tmp_path):
    _, xml = populated
    restore(xml, str(tmp_path / "p"))
    before = dump(str(tmp_path / "p"))
    with pytest.raises(errors.DeviceExistsError):
        restore(xml, str(tmp_path / "p"))
    assert dump(str(tmp_path / "p")) == before


def test_dump_restore_dump_is_identical(populated, tmp_path):
    pool_dir, xml = populated
    restore(xml, str(tmp_path / "p"))
    a, b = open(xml).read(), dump(str(tmp_path / "p"))
    assert a.split("\n", 1)[1] == b.split("\n", 1)[1]
    assert check(str(tmp_path / "p")).ok


def test_check_finds_wrong_counts_and_repair_salvages(populated, tmp_path, capsys):
    pool_dir, xml = populated
    p = str(tmp_path / "p")
    restore(xml, p)
    # damage the counts consistently with the checksums: a data block gets
    # three references no leaf holds, committed as dm commits
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.open(os.path.join(p, "metadata"))
    md.data_sm.inc([5, 5, 5])
    md.commit()
    md.close(commit=False)
    with pytest.raises(errors.MetadataCorruptError, match="metadata corrupt"):
        ThinPool.open(p)
    rep = check(p)
    assert not rep.ok
    assert main(["check", p]) == 1
    # a dm image's counts are not patched in place: thin_repair's way
    assert main(["check", p, "--repair"]) == 1
    assert "thinp repair" in capsys.readouterr().err
    fixed = str(tmp_path / "fixed")
    assert main(["repair", "-i", os.path.join(p, "metadata"), "-o", fixed]) == 0
    os.replace(fixed, os.path.join(p, "metadata"))
    assert check(p).ok
    # the salvaged trees name the same roots, so the sidecar still belongs
    with ThinPool.open(p) as pool:
        assert pool.device(0).mapped_blocks == load_pool_view(pool_dir).devices[0].mapped_blocks


def test_check_reports_tree_damage_as_corrupt(populated, tmp_path, capsys):
    _, xml = populated
    p = str(tmp_path / "p")
    restore(xml, p)
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.open(os.path.join(p, "metadata"), writable=False)
    root = md.subtree_root(0)
    md.bm.close()
    with open(os.path.join(p, "metadata"), "r+b") as f:
        f.seek(root * 4096 + 40)
        f.write(b"\xff")
    with pytest.raises(errors.MetadataCorruptError, match=f"{root}"):
        check(p)
    assert main(["check", p, "--repair"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("thinp: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_dump_metadata_snap_shows_the_held_state(tmp_path):
    p = str(tmp_path / "p")
    pool = ThinPool.create(p, data_size=1024 * BS, sync=False)
    pool.create_thin(0, 512 * BS)
    pool.replay(trace(0, np.arange(100)))
    pool.create_snap(1, 0)
    pool.close()
    frozen = dump(p)
    with ThinPool.open(p) as pool:
        pool.reserve_metadata_snap()
        pool.replay(trace(0, np.arange(50, 200)))
        pool.delete(1)
    live, held = dump(p), dump(p, metadata_snap=True)
    body = lambda x: x.split("\n", 1)[1]  # noqa: E731
    assert body(held) == body(frozen) and body(live) != body(frozen)
    assert main(["dump", p, "-m", "-o", str(tmp_path / "h.xml")]) == 0
    assert body((tmp_path / "h.xml").read_text()) == body(frozen)


def test_ls_formats(populated, capsys):
    pool_dir, _ = populated
    assert ls(pool_dir).splitlines()[0].split() == ["DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME"]  # thin_ls's
    out = ls(pool_dir, parse_format("DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,HIGHEST_BLOCK,"
                                    "CREATE_TIME,SNAP_TIME")).splitlines()
    view = load_pool_view(pool_dir)
    for line, d in zip(out[1:], view.devices):
        dev, mapped, excl, shared, hi, ct, stime = line.split()
        assert int(mapped) == d.mapped_blocks == int(excl) + int(shared)
        assert int(hi) == int(d.vblocks[-1]) and int(ct) == d.creation_time
    blocks = ls(pool_dir, parse_format("MAPPED_BLOCKS")).split()[1:]
    sectors = ls(pool_dir, parse_format("MAPPED_SECTORS")).split()[1:]
    nbytes = ls(pool_dir, parse_format("mapped_bytes")).split()[1:]
    assert [int(b) * 128 for b in blocks] == [int(s) for s in sectors]
    assert [int(b) * BS for b in blocks] == [int(s) for s in nbytes]
    assert main(["ls", pool_dir, "--format", "DEV,NOPE"]) == 1
    assert "unknown field 'NOPE'" in capsys.readouterr().err
    assert [human_size(n * BS) for n in (1, 16, 144, 1000, 16384, 16384 * 9)] == \
           ["64KiB", "1024KiB", "9MiB", "63MiB", "1024MiB", "9GiB"]  # as thin_ls 0.9.0 printed them


def test_delta_cli_and_unknown_device(populated, capsys):
    pool_dir, _ = populated
    assert main(["delta", pool_dir, "--snap1", "0", "--snap2", "1"]) == 0
    out = capsys.readouterr().out
    assert '<diff left="0" right="1">' in out and "<same " in out and "<different " in out
    assert main(["delta", pool_dir, "--snap1", "0", "--snap2", "77"]) == 1
    assert "thin device 77 does not exist" in capsys.readouterr().err


def test_trim_punches_exactly_the_free_blocks(tmp_path):
    p = str(tmp_path / "p")
    pool = ThinPool.create(p, data_size=64 * BS, payload=True, discard_passdown=False, sync=False)
    dev = pool.create_thin(0, 64 * BS)
    for vb in range(40):
        dev.write(vb * BS, bytes([vb + 1]) * BS)
    dev.discard(10 * BS, 10 * BS)   # free 10..19 without passdown
    dev.discard(39 * BS, BS)        # and the last allocated one
    pool.close()
    with open(os.path.join(p, "data"), "rb") as f:
        before = f.read()
    assert main(["trim", p]) == 0
    with open(os.path.join(p, "data"), "rb") as f:
        after = f.read()
    with ThinPool.open(p, read_only=True) as pool:
        drc = pool.refcounts()
        v, pb, _ = pool.device(0).mapping()
        for vb, b in zip(v.tolist(), pb.tolist()):
            assert pool.device(0).read(vb * BS, BS) == bytes([vb + 1]) * BS
    for b in range(64):
        chunk = after[b * BS:(b + 1) * BS]
        if drc[b] == 0:
            assert chunk == bytes(BS)
        else:
            assert chunk == before[b * BS:(b + 1) * BS]
    st = os.stat(os.path.join(p, "data"))
    assert st.st_blocks * 512 <= 29 * BS + 8192  # 29 blocks still allocated


def test_second_writer_gets_pool_busy(tmp_path):
    p = str(tmp_path / "p")
    ThinPool.create(p, data_size=64 * BS).close()
    code = ("import sys, time; from thinp.thin import ThinPool; "
            "pool = ThinPool.open(sys.argv[1]); print('open', flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", code, p], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(errors.PoolBusyError) as ei:
            ThinPool.open(p)
        assert ei.value.errno == 16
        with pytest.raises(errors.PoolBusyError):
            ThinPool.open(p, read_only=True)
        assert main(["dump", p]) == 1
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    a = ThinPool.open(p, read_only=True)
    b = ThinPool.open(p, read_only=True)  # readers share
    with pytest.raises(errors.PoolBusyError):
        ThinPool.open(p)
    a.close()
    b.close()
    ThinPool.open(p).close()


SOURCES_ROWS = [("64k", "100g", "1000", 57360384), ("64k", "100g", "1", 53268480), ("1m", "100g", "1", 3334144)]


@pytest.mark.parametrize("b, s, m, expected", SOURCES_ROWS)
def test_metadata_size_matches_sources_and_real_tool(b, s, m, expected, capsys):
    assert main(["metadata-size", "-b", b, "-s", s, "-m", m, "-u", "b", "-n"]) == 0
    assert capsys.readouterr().out.strip() == str(expected)
    tool = shutil.which("thin_metadata_size")
    if tool:
        real = subprocess.run([tool, "-b", b, "-s", s, "-m", m, "-u", "b", "-n"], capture_output=True, text=True)
        assert int(real.stdout.split()[0]) == expected


def test_metadata_size_other_units_match_real_tool(capsys):
    tool = shutil.which("thin_metadata_size")
    if not tool:
        pytest.skip("thin_metadata_size not installed")
    for args in (["-b", "128k", "-s", "1t", "-m", "10", "-u", "k", "-n"],
                 ["-b", "64k", "-s", "10g", "-m", "100", "-u", "m", "-n"]):
        assert main(["metadata-size"] + args) == 0
        ours = float(capsys.readouterr().out.split()[0])
        real = float(subprocess.run([tool] + args, capture_output=True, text=True).stdout.split()[0])
        assert abs(ours - real) <= 0.01 * real + 1e-9


def test_restore_fast_scanner_and_expat_reader_agree(populated, tmp_path):
    """thin_dump's layout takes the vectorised path; anything else (a
    prologue, a comment, other spacing or quoting) the expat reader; both
    give the same pool."""
    from thinp.thin.restore import _Fallback, _fast_scan, parse

    _, xml = populated
    text = open(xml).read()
    _fast_scan(xml, text.encode())  # the plain layout does not fall back
    odd = ('<?xml version="1.0"?>\n<!-- from elsewhere -->\n'
           + text.replace("<single_mapping origin_block=", "<single_mapping   origin_block=", 3)
                 .replace(' time="0"/>', " time='0' />", 2))
    (tmp_path / "odd.xml").write_text(odd)
    with pytest.raises(_Fallback):
        _fast_scan("odd.xml", odd.encode())
    sa, da = parse(xml)
    sb, db = parse(str(tmp_path / "odd.xml"))
    assert sa == sb and len(da) == len(db)
    for (x, *ax), (y, *by) in zip(da, db):
        assert x == y and all((p == q).all() for p, q in zip(ax, by))


@pytest.mark.parametrize("argv, fragment", [
    (["check", "/nonexistent/pool"], "no such pool directory"),
    (["dump", "/nonexistent/pool"], "no such pool directory"),
    (["ls", "/nonexistent/pool"], "no such pool directory"),
    (["trim", "/nonexistent/pool"], "no such pool directory"),
    (["restore", "-i", "/nonexistent.xml", "DIR"], "No such file"),
])
def test_cli_user_errors_are_one_line(argv, fragment, tmp_path, capsys):
    argv = [str(tmp_path / "x") if a == "DIR" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("thinp: error: ") and err.count("\n") == 1 and fragment in err


def test_cli_restore_bad_xml_and_corrupt_dump(tmp_path, capsys):
    bad = tmp_path / "bad.xml"
    bad.write_text(_xml((0, [SINGLE.format(o=1, d=2), "<oops/>"])))
    assert main(["restore", "-i", str(bad), str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.xml:4: unknown element <oops>" in err
    assert not (tmp_path / "p").exists()
    good = tmp_path / "good.xml"
    good.write_text(_xml((0, [SINGLE.format(o=1, d=2)])))
    assert main(["restore", "-i", str(good), str(tmp_path / "p")]) == 0
    with open(tmp_path / "p" / "metadata", "r+b") as f:
        f.truncate(3 * 4096)
    capsys.readouterr()
    assert main(["dump", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err


def test_restore_many_devices_spans_table_blocks(tmp_path):
    """200 devices (four device-table blocks), sparse ids, empty ones too."""
    devs = []
    for i in range(200):
        maps = [SINGLE.format(o=3 * i + k, d=(i * 7 + k) % 100) for k in range(i % 4)]
        devs.append((i * 1000, maps))
    text = _xml(*devs).replace('time="1"', 'time="0"', 1)
    (tmp_path / "many.xml").write_text(text)
    restore(str(tmp_path / "many.xml"), str(tmp_path / "p"))
    (tmp_path / "back.xml").write_text(dump(str(tmp_path / "p")))
    from thinp.thin.restore import parse

    _, a = parse(str(tmp_path / "many.xml"))
    _, b = parse(str(tmp_path / "back.xml"))
    assert len(a) == len(b) == 200
    for (x, *ax), (y, *by) in zip(a, b):
        assert x == y and all((p == q).all() for p, q in zip(ax, by))
    rep = check(str(tmp_path / "p"))
    assert rep.ok and rep.nr_devices == 200
    with ThinPool.open(str(tmp_path / "p")) as pool:
        assert pool.devices() == [i * 1000 for i in range(200)]
        assert pool.device(199000).lookup(3 * 199 + 2) == ((199 * 7 + 2) % 100, 0)

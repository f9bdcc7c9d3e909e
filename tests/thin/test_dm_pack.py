"""thin_metadata_pack archives: the VM of thin-provisioning-tools, and round trips."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from thinp import errors
from thinp.thin import pack as P
from thinp.thin.pool_metadata import PoolMetadata

from .dm_fixtures import INTACT, unpack as unpack_fixture


def _tag(t, nib):
    return bytes([(t << 4) | nib])


def _archive(tmp_path, records, nr_blocks=4):
    """A pack file with one chunk of (block, program) records."""
    body = b"".join(struct.pack("<Q", b) + prog for b, prog in records)
    z = zlib.compress(body)
    p = tmp_path / "a.pack"
    p.write_bytes(struct.pack("<4Q", P.MAGIC, 3, 4096, nr_blocks) + struct.pack("<Q", len(z)) + z)
    return p


def test_vm_instructions(tmp_path):
    # 512 u64 words: Set 7; Pos 1 x3 (8 9 10); PosW 300 (310); Neg 2 (308); NegW 256 (52);
    # Const 5 x 52; Count 3 of Pos 4 (56 60 64); Const8 of 256+240=496 x 64; a literal of 8 bytes
    prog = (_tag(P.SET, 1) + b"\x07" + _tag(P.COUNT, 3) + _tag(P.POS, 1) + _tag(P.POSW, 2) + struct.pack("<H", 300)
            + _tag(P.NEG, 2) + _tag(P.NEGW, 2) + struct.pack("<H", 256) + _tag(P.CONST, 5)
            + _tag(P.COUNT, 3) + _tag(P.POS, 4) + _tag(P.CONST8, 1) + bytes([240]) + _tag(P.LIT, 8) + b"ABCDEFGH")
    a = _archive(tmp_path, [(2, prog)])
    P.unpack(a, tmp_path / "out")
    words = np.frombuffer((tmp_path / "out").read_bytes()[2 * 4096:3 * 4096], dtype="<u8")
    want = [7, 8, 9, 10, 310, 308, 52] + [52] * 5 + [56, 60, 64] + [64] * 496
    assert words[:len(want)].tolist() == want
    assert (tmp_path / "out").read_bytes()[2 * 4096 + 8 * len(want):3 * 4096] == b"ABCDEFGH"
    assert (tmp_path / "out").stat().st_size == 4 * 4096


def test_vm_shifted_run(tmp_path):
    # 512 block_time values: high parts 100.. and low parts all 3
    n = 512
    high = _tag(P.SET, 1) + bytes([100]) + _tag(P.COUNT8, 1) + bytes([255]) + _tag(P.POS, 1)
    low = _tag(P.SET, 1) + bytes([3]) + _tag(P.CONST8, 1) + bytes([255])
    prog = _tag(P.SHIFTED_RUN, n >> 8) + bytes([n & 255]) + high + low
    P.unpack(_archive(tmp_path, [(0, prog)]), tmp_path / "out")
    words = np.frombuffer((tmp_path / "out").read_bytes()[:4096], dtype="<u8")
    assert words.tolist() == [((100 + i) << 24) | 3 for i in range(n)]


def test_bad_archives_are_named(tmp_path):
    (tmp_path / "x").write_bytes(b"\0" * 40)
    with pytest.raises(errors.ImageFormatError, match="not a thin_metadata_pack archive"):
        P.unpack(tmp_path / "x", tmp_path / "y")
    a = _archive(tmp_path, [(9, _tag(P.LITW, 2) + struct.pack("<H", 4096) + b"\0" * 4096)])
    with pytest.raises(errors.ImageFormatError, match="block 9 beyond the 4 blocks"):
        P.unpack(a, tmp_path / "z")
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("name", INTACT)
def test_round_trip_kernel_images(fixtures_dir, tmp_path, name):
    img = unpack_fixture(fixtures_dir, name, tmp_path)
    n = P.pack(img, tmp_path / "p")
    assert n > 10
    P.unpack(tmp_path / "p", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == img.read_bytes()
    assert (tmp_path / "p").stat().st_size < img.stat().st_size // 20


def test_round_trip_cli(tmp_path):
    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=256, nr_data_blocks=5000, data_block_sectors=128)
    md.create_thin(1)
    for vb in range(3000):
        md.insert(1, vb, md.alloc_data())
    md.close()
    run = lambda *a: subprocess.run([sys.executable, "-m", "thinp", *a], capture_output=True, text=True)  # noqa: E731
    assert run("pack", "-i", str(tmp_path / "m"), "-o", str(tmp_path / "p")).returncode == 0
    out = run("unpack", "-i", str(tmp_path / "p"), "-o", str(tmp_path / "back"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "back").read_bytes() == (tmp_path / "m").read_bytes()
    again = run("unpack", "-i", str(tmp_path / "p"), "-o", str(tmp_path / "back"))
    assert again.returncode != 0 and again.stderr.count("\n") == 1 and "exists" in again.stderr

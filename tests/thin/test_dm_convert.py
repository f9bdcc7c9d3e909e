"""thinp convert: an old-format pool becomes a dm-format pool the real tools read."""
from __future__ import annotations

import re
import subprocess

import pytest

import thinp
from thinp import errors
from thinp.thin.convert import convert_pool
from thinp.thin.dm_pool import DmPool
from thinp.thin.dump import dump

from .dm_fixtures import real_tool
from .old_format import OldPool


def _old_pool(path):
    pool = OldPool(path, 1 << 30)
    pool.create_thin(1, 512 << 20)
    pool.write(1, 0, 40 << 20)
    pool.create_snap(2, 1)
    pool.write(2, 1 << 20, 3 << 20)
    pool.discard(1, 8 << 20, 2 << 20)
    pool.set_transaction_id(7)
    pool.close()


def test_convert_keeps_every_mapping(tmp_path):
    _old_pool(tmp_path / "old")
    n = convert_pool(tmp_path / "old", tmp_path / "new")
    assert n > 600
    # dm's superblock has 16 bytes for a uuid and LVM leaves them zero; thinp's
    # pools carry a 36-character one, which the conversion drops
    old_xml = re.sub(r'uuid="[^"]*"', 'uuid=""', dump(tmp_path / "old"), count=1)
    new_xml = dump(tmp_path / "new")
    assert new_xml == old_xml
    real = subprocess.run([real_tool("thin_dump"), str(tmp_path / "new" / "metadata")], capture_output=True,
                          text=True, check=True).stdout
    assert real == old_xml
    assert subprocess.run([real_tool("thin_check"), str(tmp_path / "new" / "metadata")],
                          capture_output=True).returncode == 0
    with DmPool.open(tmp_path / "new") as p:
        assert p.size(1) == p.size(2) == 512 << 20
        assert p.md.sb.trans_id == 7


def test_old_format_pool_is_refused_naming_convert_then_opens_converted(tmp_path):
    _old_pool(tmp_path / "old")
    with pytest.raises(errors.NotSupportedError, match="old format; convert it with 'thinp convert"):
        thinp.ThinPool.open(tmp_path / "old")
    convert_pool(tmp_path / "old", tmp_path / "new")
    with thinp.ThinPool.open(tmp_path / "new") as pool:
        assert pool.devices() == [1, 2] and pool.transaction_id == 7
        assert pool.device(1).size == 512 << 20
        assert pool.device(2).mapped_blocks == 640
        assert pool.device(1).mapped_blocks == 640 - 32
        pool.device(1).write(100 << 20, 1 << 20)
    assert subprocess.run([real_tool("thin_check"), str(tmp_path / "new" / "metadata")],
                          capture_output=True).returncode == 0

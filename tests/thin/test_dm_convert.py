"""thinp convert: an old-format pool becomes a dm-format pool the real tools read."""
from __future__ import annotations

import re
import subprocess

import thinp
from thinp.thin.convert import convert_pool
from thinp.thin.dm_pool import DmPool
from thinp.thin.dump import dump

from .dm_fixtures import real_tool


def test_convert_keeps_every_mapping(tmp_path):
    with thinp.ThinPool.create(tmp_path / "old", "1G", metadata_size="8M") as pool:
        pool.create_thin(1, "512M")
        pool.device(1).write(0, 40 << 20)
        pool.create_snap(2, 1)
        pool.device(2).write(1 << 20, 3 << 20)
        pool.device(1).discard(8 << 20, 2 << 20)
        pool.set_transaction_id(0, 7)
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

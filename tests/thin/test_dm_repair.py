"""thinp repair salvages what a damaged dm-thin metadata image still holds."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from thinp import errors
from thinp.pdata import btree
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.pool_metadata import PoolMetadata
from thinp.thin.repair import repair

from .dm_fixtures import CORRUPTED, real_tool, unpack


def _thin_check(path):
    out = subprocess.run([real_tool("thin_check"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _mappings(path):
    with DmMetadata.open(path) as r:
        out = {}
        for d in r.devices():
            v, p, t = r.mappings(d)
            out[d.dev_id] = dict(zip(v.tolist(), zip(p.tolist(), t.tolist())))
        return out


def test_kernel_corrupted_image(fixtures_dir, tmp_path):
    bad = unpack(fixtures_dir, CORRUPTED, tmp_path)
    rep = repair(bad, tmp_path / "fixed")
    assert rep.roots_found_by_scan
    assert any("mapping tree root 20" in d for d in rep.damaged)
    _thin_check(tmp_path / "fixed")
    # the second thin, the one live when the image was damaged, is back
    assert 2 in _mappings(tmp_path / "fixed")


def _build(path):
    md = PoolMetadata.format(path, nr_metadata_blocks=1024, nr_data_blocks=40000, data_block_sectors=128)
    md.sync = False
    md.create_thin(1)
    for vb in range(12000):
        md.insert(1, vb, md.alloc_data())
    md.create_snap(2, 1)
    rng = np.random.default_rng(3)
    for vb in rng.choice(12000, 2000, replace=False).tolist():
        md.insert(2, vb, md.alloc_data())
    md.create_thin(3)
    for vb in range(0, 20000, 3):
        md.insert(3, vb, md.alloc_data())
    md.close()


def _leaves(path):
    """{leaf block: [(dev, vblock)]} of every device tree."""
    out: dict = {}
    with DmMetadata.open(path) as r:
        for d in r.devices():
            btree.walk(r.bm, d.root, 8, lambda n, k, v, d=d: out.setdefault(n.b, []).extend(
                (d.dev_id, int(x)) for x in k))
        internal = set()
        for d in r.devices():
            sh = btree.TreeShape()
            btree.walk(r.bm, d.root, 8, lambda *a: None, shape=sh)
            internal.update(b for b in sh.blocks if b not in out)
    return out, sorted(internal)


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_nodes(tmp_path, seed):
    src = tmp_path / "m"
    _build(src)
    before = _mappings(src)
    leaves, internal = _leaves(src)
    rng = np.random.default_rng(seed)
    victims = rng.choice(sorted(leaves), 3, replace=False).tolist()
    if seed % 2 and internal:
        victims.append(int(rng.choice(internal)))
    raw = bytearray(src.read_bytes())
    for b in victims:
        off = b * 4096 + int(rng.integers(40, 4096))
        raw[off] ^= 0xFF
    src.write_bytes(bytes(raw))
    with pytest.raises(errors.MetadataCorruptError):
        DmMetadata.open(src).check()
    rep = repair(src, tmp_path / "fixed")
    _thin_check(tmp_path / "fixed")
    after = _mappings(tmp_path / "fixed")
    # nothing invented, and every mapping of a surviving leaf kept
    for dev, m in after.items():
        assert set(m.items()) <= set(before[dev].items())
    lost = {(dev, vb) for b in victims if b in leaves for dev, vb in leaves[b]}
    for b, entries in leaves.items():
        for dev, vb in entries:
            if (dev, vb) not in lost:
                assert after[dev][vb] == before[dev][vb], (dev, vb)
    assert rep.nr_mappings == sum(len(m) for m in after.values())


def test_refuses_to_overwrite(tmp_path):
    _build(tmp_path / "m")
    (tmp_path / "out").write_bytes(b"x")
    with pytest.raises(errors.DeviceExistsError):
        repair(tmp_path / "m", tmp_path / "out")

"""A pool whose metadata is a dm image: kernel images opened, changed, still read by the real tools."""
from __future__ import annotations

import json
import subprocess

import pytest

from thinp import errors
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.dm_pool import SIDECAR, DmPool, read_sidecar

from .dm_fixtures import real_tool, unpack


def _maps(path):
    with DmMetadata.open(path) as r:
        out = {}
        for d in r.devices():
            v, p, _ = r.mappings(d)
            out[d.dev_id] = dict(zip(v.tolist(), p.tolist()))
        return out


def _thin_check(path):
    out = subprocess.run([real_tool("thin_check"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_kernel_image_changes_exactly(fixtures_dir, tmp_path):
    img = unpack(fixtures_dir, "tmeta", tmp_path)
    before = _maps(img)
    pool = DmPool.import_image(tmp_path / "pool", img)
    bs = pool.block_size
    assert pool.size(1) == (max(before[1]) + 1) * bs
    # dev 1 was snapshotted at time 15: its old blocks are shared, so writes break sharing
    written = list(range(100, 140))
    assert pool.write(1, 100 * bs, 40 * bs) == 40
    assert pool.write(1, 100 * bs, 40 * bs) == 0  # now its own
    pool.create_snap(100, 1)
    pool.delete(3)
    pool.set_transaction_id(21, 22)
    pool.close()
    meta = tmp_path / "pool" / "metadata"
    _thin_check(meta)
    after = _maps(meta)
    assert set(after) == (set(before) - {3}) | {100}
    for dev in set(before) - {1, 3}:
        assert after[dev] == before[dev]
    used_before = {p for m in before.values() for p in m.values()}
    for vb, p in after[1].items():
        if vb in written:
            assert p not in used_before
        else:
            assert p == before[1][vb]
    assert after[100] == after[1]
    dump = subprocess.run([real_tool("thin_dump"), str(meta)], capture_output=True, text=True, check=True).stdout
    assert 'transaction="22"' in dump and 'dev_id="100"' in dump and 'dev_id="3"' not in dump


def test_sidecar_must_belong_to_the_metadata(tmp_path):
    pool = DmPool.create(tmp_path / "p", "1G")
    pool.create_thin(1, "100M")
    pool.write(1, 0, 1 << 20)
    pool.set_transaction_id(0, 1)
    pool.close()
    side = tmp_path / "p" / SIDECAR
    good = read_sidecar(tmp_path / "p")
    assert good["transaction_id"] == 1 and good["devices"] == {"1": (100 << 20) // 512}
    bad = dict(good, transaction_id=0, devices={})
    side.write_text(json.dumps(bad))
    with pytest.raises(errors.TransactionIdMismatchError, match=r"transaction id 0 in pool.json, 1 in the metadata"):
        DmPool.open(tmp_path / "p")
    pool = DmPool.open(tmp_path / "p", reconcile=True)
    assert pool.size(1) == 16 * 65536  # from the highest mapped block
    pool.close()
    assert read_sidecar(tmp_path / "p")["transaction_id"] == 1


def test_pool_rules_and_real_tools(tmp_path):
    pool = DmPool.create(tmp_path / "p", "2G", metadata_size="4M")
    bs = pool.block_size
    pool.create_thin(0, "1G")
    assert pool.write(0, 0, 10 * bs + 1) == 11
    pool.create_snap(1, 0)
    assert pool.write(1, 0, bs) == 1  # breaks sharing
    assert pool.write(0, 0, bs) == 1  # dm's time test copies on the origin side too
    assert pool.discard(0, bs // 2, 3 * bs) == 2  # whole blocks inside only
    with pytest.raises(ValueError, match="run past the end of thin device 0"):
        pool.write(0, (1 << 30) - 10, 20)
    st = pool.status()
    # 11 provisioned, one new block for each side of block 0 (the first one
    # freed by the origin's copy), blocks 1 and 2 still mapped by the snapshot
    assert st["used_data_blocks"] == 11 + 2 - 1
    pool.close()
    meta = tmp_path / "p" / "metadata"
    _thin_check(meta)
    m = _maps(meta)
    assert sorted(m[0]) == [0] + list(range(3, 11)) and sorted(m[1]) == list(range(11))


def test_thinpool_opens_a_dm_pool_directory(tmp_path):
    import thinp

    with DmPool.create(tmp_path / "p", "1G") as pool:
        pool.create_thin(3, "128M")
        pool.write(3, 0, 4 << 20)
    with thinp.ThinPool.open(tmp_path / "p") as pool:
        assert pool.devices() == [3] and pool.device(3).size == 128 << 20
        assert pool.device(3).mapped_blocks == 64
        pool.device(3).write(8 << 20, 4096)
    with DmPool.open(tmp_path / "p") as pool:
        assert pool.size(3) == 128 << 20
    _thin_check(tmp_path / "p" / "metadata")

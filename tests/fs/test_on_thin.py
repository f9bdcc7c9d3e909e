"""The file layer on a thin device: what a filesystem writes is what the pool provisions.

The filesystem only sees the BlockDevice protocol, so on a ThinDevice every
64 KiB chunk it touches must become exactly one provisioned data block, and
an fstrim with discard passdown must give blocks back to the pool.
"""
from __future__ import annotations

import numpy as np
import pytest

import thinp
from thinp.blockdev import PlainDevice
from thinp.fs import mkfs

SIZE = 2 << 30


@pytest.fixture
def pool(tmp_path):
    p = thinp.ThinPool.create(tmp_path / "pool", "8G", "64k", sync=False)
    yield p
    p.close()


@pytest.mark.parametrize("fstype,opts", [("ext4", {}), ("ext4", {"lazy_itable_init": False, "lazy_journal_init": False}),
                                         ("xfs", {})])
def test_provisioned_blocks_equal_chunks_touched(pool, fstype, opts):
    thin = pool.create_thin(1, SIZE)
    plain = PlainDevice(SIZE)
    for dev in (thin, plain):
        fs = mkfs(dev, fstype, **opts)
        for i in range(200):
            fs.write(f"/f{i}", 0, 10_000 + 37 * i)
        fs.mkdir("/d")
        fs.write("/d/big", 0, 5 << 20)
        fs.umount()
    assert thin.mapped_blocks == plain.chunks_touched(64 * 1024)
    assert pool.status().used_data_blocks == thin.mapped_blocks
    # and the mapping is exactly the set of touched chunks
    vblocks, _, _ = thin.mapping()
    bits = plain.allocated_blocks()
    touched = {i // 16 for i in bits.search(1)}
    assert set(vblocks.tolist()) == touched


def test_delete_without_discard_keeps_blocks_fstrim_returns_them(pool):
    thin = pool.create_thin(1, SIZE)
    fs = mkfs(thin, "ext4")
    fs.write("/big", 0, 64 << 20)
    fs.umount()
    with_file = thin.mapped_blocks
    fs.unlink("/big")
    fs.umount()
    assert thin.mapped_blocks == with_file  # devicemapper users' complaint: rm frees nothing
    fs.fstrim()
    fs.umount()
    assert thin.mapped_blocks <= with_file - (64 << 20) // (64 * 1024) + 1
    pool.commit()
    assert pool.status().used_data_blocks == thin.mapped_blocks


def test_snapshot_of_a_formatted_device_shares_until_written(pool):
    base = pool.create_thin(1, SIZE)
    fs = mkfs(base, "xfs")
    fs.write("/f", 0, 8 << 20)
    fs.umount()
    used = pool.status().used_data_blocks
    pool.create_snap(2, 1)
    assert pool.status().used_data_blocks == used
    snap = pool.device(2)
    snap.write(0, 4096)  # a superblock update in the snapshot breaks sharing once
    st = pool.status()
    assert st.used_data_blocks == used + 1 and st.nr_cow_copies == 1


def test_payload_bytes_round_trip_through_a_thin_device(tmp_path):
    with thinp.ThinPool.create(tmp_path / "p", "1G", "64k", payload=True, sync=False) as pool:
        thin = pool.create_thin(1, 512 << 20)
        fs = mkfs(thin, "ext4")
        data = np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        fs.write("/blob", 0, data)
        fs.umount()
        assert fs.read("/blob") == data

"""On-disk space-map pages (metadata format 2): 2040 uint16 counts a page."""
import numpy as np
import pytest

import thinp
from thinp import errors
from thinp.pdata import _kernels as K
from thinp.thin import metadata as M


def test_pages_round_trip_every_uint16_count():
    rng = np.random.default_rng(7)
    n = 3 * K.SM_PAGE_ENTRIES + 77                      # a partial last page
    rc = rng.integers(0, K.SM_MAX_COUNT + 1, n).astype(np.uint32)
    rc[:4] = [0, 1, K.SM_MAX_COUNT, 2]
    npages = M.sm_pages(n)
    meta = np.zeros((2 + 2 * npages, K.NODE_ENTRIES), dtype=np.uint64)
    M._write_sm_pages(meta, rc, np.arange(npages, dtype=np.int64), 2, 1)
    back = np.zeros(n, dtype=np.uint32)
    assert M._read_sm_pages_np(meta, back, 2, npages, 1) == -1
    np.testing.assert_array_equal(back, rc)
    meta[2 + 2 * 2 + 1, 100] ^= np.uint64(1 << 20)      # one flipped bit in page 2
    assert M._read_sm_pages_np(meta, back, 2, npages, 1) == 2


def test_old_format_pages_are_only_read_now(tmp_path):
    # ThinPool writes dm's format; the old pages are read by thinp convert
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "1G", "64k", sync=False)
    pool.close()
    with open(tmp_path / "p" / "metadata", "rb") as f:
        head = f.read(40)
    assert int.from_bytes(head[:8], "little") != M.MAGIC
    assert int.from_bytes(head[32:40], "little") == 27022010


def test_data_space_map_is_dms_bitmaps_of_16320_entries(tmp_path):
    # 100 GiB at 64 KiB: 1,638,400 data blocks -> 101 bitmaps of 16,320 entries
    from thinp.pdata.space_map import ENTRIES_PER_BITMAP

    pool = thinp.ThinPool.create(str(tmp_path / "p"), "100G", "64k", sync=False)
    try:
        assert ENTRIES_PER_BITMAP == 16320
        assert pool._dm.data_sm.count.shape[0] == 1_638_400
        assert len(pool._dm.data_sm.index_entries) == -(-1_638_400 // 16320) == 101
    finally:
        pool.close()


def test_counts_of_three_and_more_survive_commit_and_reopen(tmp_path):
    # four snapshots each break sharing of one block in the leaf they share
    # with the origin: shadowing that leaf gives every other block in it one
    # more reference (dm's inc_children), so counts reach 5, past the 2-bit
    # bitmap's 2, into the ref-count btree
    path = str(tmp_path / "p")
    pool = thinp.ThinPool.create(path, "1G", "64k", sync=False)
    dev = pool.create_thin(1, "256M")
    dev.write(0, 64 * 65536)
    for k in range(2, 6):
        pool.create_snap(k, 1)
        pool.device(k).write(k * 65536, 65536)
    pool.commit()
    counts = pool._dm.data_sm.count.copy()
    assert counts.max() >= 3
    pool.close()
    import subprocess

    assert subprocess.run(["thin_check", f"{path}/metadata"], capture_output=True).returncode == 0
    again = thinp.ThinPool.open(path)
    try:
        np.testing.assert_array_equal(again._dm.data_sm.count, counts)
        assert again.devices() == [1, 2, 3, 4, 5]
    finally:
        again.close()

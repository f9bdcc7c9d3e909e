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
    npages = M._pages(n)
    meta = np.zeros((2 + 2 * npages, K.NODE_ENTRIES), dtype=np.uint64)
    M._write_sm_pages(meta, rc, np.arange(npages, dtype=np.int64), 2, 1)
    back = np.zeros(n, dtype=np.uint32)
    assert M._read_sm_pages_np(meta, back, 2, npages, 1) == -1
    np.testing.assert_array_equal(back, rc)
    meta[2 + 2 * 2 + 1, 100] ^= np.uint64(1 << 20)      # one flipped bit in page 2
    assert M._read_sm_pages_np(meta, back, 2, npages, 1) == 2


def test_space_map_is_a_quarter_of_a_block_per_thousand_data_blocks(tmp_path):
    # 100 GiB at 64 KiB: 1,638,400 data blocks -> 804 pages, in two copies
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "100G", "64k", sync=False)
    try:
        md = pool._md
        assert md.sb.dsm_pages == -(-1_638_400 // 2040) == 804
    finally:
        pool.close()


def test_a_count_past_uint16_refuses_the_commit_and_keeps_the_last_one(tmp_path):
    path = str(tmp_path / "p")
    pool = thinp.ThinPool.create(path, "1G", "64k", sync=False)
    pool.create_thin(1, "1G")
    pool.commit()
    md = pool._md
    gen = md.sb.generation
    md.sp.drc[5] = K.SM_MAX_COUNT + 1
    md.sp.ddirty[0] = 1
    with pytest.raises(errors.ThinpError, match="more than the space map's 65535"):
        pool.commit()
    assert md.sb.generation == gen
    md.sp.drc[5] = 0
    pool.close()
    again = thinp.ThinPool.open(path)
    try:
        assert [d for d in again.devices()] == [1]
    finally:
        again.close()

"""The bitmap commit kernel writes what the numpy packing writes, and the
index entry dm's lazy hint gives (the Python forms are the oracle)."""
from __future__ import annotations

import numpy as np
import pytest

from thinp.pdata.space_map import ENTRIES_PER_BITMAP, INDEX_ENTRY_DTYPE, pack_bitmap, unpack_bitmap
from thinp.pdata.transaction import write_bitmap_entry


def _oracle(cur, old, nfb):
    blk = np.zeros(4096, dtype=np.uint8)
    pack_bitmap(np.minimum(cur, 3).astype(np.uint8), blk)
    nr_free = ENTRIES_PER_BITMAP - int(np.count_nonzero(cur))
    freed = np.flatnonzero((old != 0) & (cur == 0))
    if len(freed):
        nfb = min(nfb, int(freed[0]))
    newly = (old == 0) & (cur != 0)
    while nfb < len(cur) and newly[nfb]:
        nfb += 1
    return blk, nr_free, nfb


@pytest.mark.parametrize("n", [ENTRIES_PER_BITMAP, 1000, 33])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bitmap_and_index_entry_match_the_oracle(n, seed):
    rng = np.random.default_rng(seed)
    old = rng.choice([0, 1, 2, 3, 7], n, p=[0.4, 0.3, 0.1, 0.1, 0.1]).astype(np.uint32)
    cur = old.copy()
    first = int(rng.integers(0, n))
    cur[first:first + 50] = np.where(old[first:first + 50] == 0, 1, old[first:first + 50])  # allocated in order
    flip = rng.random(n) < 0.05
    cur[flip] = rng.choice([0, 1, 2, 5], int(flip.sum())).astype(np.uint32)
    nfb = int(rng.integers(0, n))
    blk = np.full(4096, 0xAB, dtype=np.uint8)
    blk[:16] = 7  # the header is the seal's, untouched here
    ie = np.zeros(1, dtype=INDEX_ENTRY_DTYPE)
    ie["none_free_before"] = nfb
    write_bitmap_entry(blk, ie, cur, old, 1234)
    want, nr_free, want_nfb = _oracle(cur, old, nfb)
    assert np.array_equal(blk[16:], want[16:])
    assert (blk[:16] == 7).all()
    assert np.array_equal(unpack_bitmap(blk)[:n], np.minimum(cur, 3))
    assert (int(ie["nr_free"][0]), int(ie["none_free_before"][0]), int(ie["blocknr"][0])) == (nr_free, want_nfb, 1234)

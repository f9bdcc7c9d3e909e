"""``find_run`` (the allocator's scan with per-zone free counts) against
``find_extent`` (the plain scan): the same answer on every bitmap, goal,
length and alignment -- the zone counts only let it skip starts that cannot
hold a long enough run."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from thinp.fs import _kernels as K


def _state(nr_blocks, zone_blocks, runs):
    bitmap = np.zeros(nr_blocks, dtype=np.uint8)
    nz = (nr_blocks + zone_blocks - 1) // zone_blocks
    first_free = np.arange(nz, dtype=np.int64) * zone_blocks
    zone_used = np.zeros(nz, dtype=np.int64)
    for start, length, value in runs:
        start %= nr_blocks
        K.set_range(bitmap, first_free, zone_used, zone_blocks, start, min(length, nr_blocks - start), value)
    return bitmap, first_free, zone_used


@settings(max_examples=400, deadline=None)
@given(nr_blocks=st.integers(8, 600), zone_blocks=st.sampled_from([8, 16, 32, 64]),
       runs=st.lists(st.tuples(st.integers(0, 599), st.integers(1, 80), st.sampled_from([1, 1, 1, 0])), max_size=30),
       goal=st.integers(0, 599), end=st.integers(0, 700), want=st.integers(1, 90),
       align=st.sampled_from([1, 1, 2, 8, 16]), min_len=st.integers(1, 90))
def test_find_run_matches_find_extent(nr_blocks, zone_blocks, runs, goal, end, want, align, min_len):
    bitmap, first_free, zone_used = _state(nr_blocks, zone_blocks, runs)
    goal %= nr_blocks
    assert int(zone_used.sum()) == int(bitmap.sum())
    want_r = K.find_extent(bitmap, first_free, zone_blocks, goal, end, want, align, min_len)
    got = K.find_run(bitmap, first_free, zone_used, zone_blocks, goal, end, want, align, min_len)
    assert got == want_r


def test_find_run_skips_to_a_zone_tail_that_continues():
    # zone 0 (16 blocks) has 3 free blocks: one early hole and the last two;
    # a 5-block run starts in its tail and continues into zone 1
    bitmap, first_free, zone_used = _state(64, 16, [(0, 20, 1), (3, 1, 0), (14, 6, 0)])
    r = K.find_run(bitmap, first_free, zone_used, 16, 0, 64, 5, 1, 5)
    assert (r // 2**32, r % 2**32) == (14, 5)
    assert r == K.find_extent(bitmap, first_free, 16, 0, 64, 5, 1, 5)

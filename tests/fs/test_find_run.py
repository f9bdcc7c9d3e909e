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
    none = np.zeros(0, dtype=np.int64)
    got = K.find_run(bitmap, first_free, zone_used, none, zone_blocks, goal, end, want, align, min_len)
    assert got == want_r


def test_find_run_skips_to_a_zone_tail_that_continues():
    # zone 0 (16 blocks) has 3 free blocks: one early hole and the last two;
    # a 5-block run starts in its tail and continues into zone 1
    bitmap, first_free, zone_used = _state(64, 16, [(0, 20, 1), (3, 1, 0), (14, 6, 0)])
    r = K.find_run(bitmap, first_free, zone_used, np.zeros(0, dtype=np.int64), 16, 0, 64, 5, 1, 5)
    assert (r // 2**32, r % 2**32) == (14, 5)
    assert r == K.find_extent(bitmap, first_free, 16, 0, 64, 5, 1, 5)


# one step: (is_find, a, b, c, d) -- a find (goal, want, min_len, align) or a
# set_range (start, length, value)
step = st.tuples(st.booleans(), st.integers(0, 599), st.integers(1, 90), st.integers(1, 90),
                 st.sampled_from([1, 1, 1, 4, 0]))


@settings(max_examples=300, deadline=None)
@given(nr_blocks=st.integers(8, 600), zone_blocks=st.sampled_from([8, 16, 32, 64]),
       steps=st.lists(step, min_size=1, max_size=60))
def test_find_run_with_learned_zones_matches_find_extent(nr_blocks, zone_blocks, steps):
    """What the scans learn per zone (no run of L blocks starts there), kept
    as Filesystem._mark keeps it through allocations and frees, never changes
    an answer: every find along a random history matches the plain scan."""
    bitmap, first_free, zone_used = _state(nr_blocks, zone_blocks, [])
    norun = np.full(len(zone_used), K.NORUN_UNKNOWN, dtype=np.int64)
    learned = 0
    for is_find, a, b, c, d in steps:
        if is_find:
            goal, want, min_len, align = a % nr_blocks, b, c, max(d, 1)
            expect = K.find_extent(bitmap, first_free, zone_blocks, goal, nr_blocks, want, align, min_len)
            got = K.find_run(bitmap, first_free, zone_used, norun, zone_blocks, goal, nr_blocks, want, align, min_len)
            assert got == expect
            learned += int((norun != K.NORUN_UNKNOWN).sum())
        else:
            start, n, value = a % nr_blocks, min(b, nr_blocks - a % nr_blocks), int(d != 0)
            changed = K.set_range(bitmap, first_free, zone_used, zone_blocks, start, n, value)
            if not value and changed:
                z0 = start // zone_blocks
                norun[max(z0 - 1, 0):(start + n - 1) // zone_blocks + 1] = K.NORUN_UNKNOWN
    for z in range(len(norun)):     # every fact still true
        if norun[z] == K.NORUN_UNKNOWN:
            continue
        lo, hi = z * zone_blocks, min((z + 1) * zone_blocks, nr_blocks)
        for s0 in range(lo, hi):
            e = s0
            while e < nr_blocks and bitmap[e] == 0:
                e += 1
            assert e - s0 < norun[z], (z, s0, e - s0, norun[z])


def test_a_scan_learns_a_fragmented_zone_and_a_free_forgets_it():
    # zone 0 (16 blocks): used but for 2-block holes at 2 and 8; zone 1 free
    bitmap, first_free, zone_used = _state(64, 16, [(0, 16, 1), (2, 2, 0), (8, 2, 0)])
    norun = np.full(4, K.NORUN_UNKNOWN, dtype=np.int64)
    r = K.find_run(bitmap, first_free, zone_used, norun, 16, 0, 64, 4, 1, 4)
    assert (r // 2**32, r % 2**32) == (16, 4)
    assert norun[0] == 4 and (norun[1:] == K.NORUN_UNKNOWN).all()
    # a scan for 3 blocks cannot use that fact: it finds nothing in zone 0 either
    assert K.find_run(bitmap, first_free, zone_used, norun, 16, 0, 64, 3, 1, 3) == 16 * 2**32 + 3
    assert norun[0] == 3
    # an allocation keeps the fact; the caller forgets it when blocks are freed
    changed = K.set_range(bitmap, first_free, zone_used, 16, 10, 6, 0)
    assert changed == 6
    norun[0:1] = K.NORUN_UNKNOWN
    r = K.find_run(bitmap, first_free, zone_used, norun, 16, 0, 64, 4, 1, 4)
    assert (r // 2**32, r % 2**32) == (8, 4) == divmod(K.find_extent(bitmap, first_free, 16, 0, 64, 4, 1, 4), 2**32)

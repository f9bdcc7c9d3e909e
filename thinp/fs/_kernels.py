"""Numba kernels over a filesystem's block bitmap.

Arrays:

* ``bitmap``: uint8[nr_blocks], one byte per 4 KiB filesystem block; 1 = in
  use (metadata, file data, or reserved), 0 = free.
* ``zone_used``: int64[nr_zones], blocks in use per zone.
* ``first_free``: int64[nr_zones], per allocation zone (an ext4 block group
  or an xfs allocation group, ``zone_blocks`` blocks each): every block of the
  zone below ``first_free[z]`` is in use.  It is a hint that only ever lags
  behind the truth, so scans may start there.

Kernels never raise: "nothing found" is ``-1``.
"""
from __future__ import annotations

import numpy as np

from ..config import njit


@njit
def find_extent(bitmap, first_free, zone_blocks, goal, end, want, align, min_len):
    """First free run in ``[goal, end)`` whose start is a multiple of ``align``.

    Returns ``start * 2**32 + length`` packed in an int64 (length <= ``want``,
    >= ``min_len``), or -1.  A run shorter than ``min_len`` is skipped, so a
    caller that wants "the first ``want``-long hole" passes ``min_len=want``
    and one that takes what it can passes ``min_len=1``.
    """
    none = np.zeros(0, dtype=np.int64)
    return find_run(bitmap, first_free, none, none, zone_blocks, goal, end, want, align, min_len)


#: ``zone_norun`` value: nothing known about the zone's free runs
NORUN_UNKNOWN = 1 << 62


@njit
def find_run(bitmap, first_free, zone_used, zone_norun, zone_blocks, goal, end, want, align, min_len):
    """:func:`find_extent`, faster over fragmented, nearly full zones; the
    result is the same.

    ``zone_used`` (blocks in use per zone, or an empty array): in a zone with
    fewer than ``min_len`` free blocks a long enough run can only start in
    the free tail that reaches the next zone, at or after ``zone_end - free``.

    ``zone_norun`` (int64 per zone, or an empty array; kept by the caller):
    ``zone_norun[z] = L`` records that no free run starting in zone ``z`` is
    ``L`` blocks long or longer (:data:`NORUN_UNKNOWN`: nothing known).
    Allocation keeps that true; the caller resets a zone and the one before
    it to unknown when blocks in it are freed.  A scan that covered every
    start in a zone (from at or below ``first_free``, no alignment) without
    finding ``min_len`` blocks records it, and later scans for at least that
    many skip the zone."""
    b = goal
    n = bitmap.shape[0]
    if end > n:
        end = n
    words = bitmap[: n - n % 8].view(np.uint64)
    full = np.uint64(0x0101010101010101)
    counted = zone_used.shape[0] > 0 and min_len > 1
    known = zone_norun.shape[0] > 0
    learn = known and align == 1 and want >= min_len and min_len <= zone_blocks
    cur_z = -1
    covered = False
    while b < end:
        z = b // zone_blocks
        if known and z != cur_z:
            if learn and covered and cur_z >= 0 and min_len < zone_norun[cur_z]:
                zone_norun[cur_z] = min_len
            cur_z = z
            covered = b <= first_free[z]
            if zone_norun[z] <= min_len:
                b = (z + 1) * zone_blocks
                continue
        ff = first_free[z]
        if b < ff:
            b = ff
            continue
        if counted:
            zend = (z + 1) * zone_blocks
            if zend > n:
                zend = n
            free = zend - z * zone_blocks - zone_used[z]
            if free < min_len and b < zend - free:
                b = zend - free
                continue
        if bitmap[b] != 0:
            # skip whole words of used blocks
            if b % 8 == 0:
                while b + 8 <= end and words[b >> 3] == full:
                    b += 8
                if b >= end or bitmap[b] == 0:
                    continue
            b += 1
            continue
        if align > 1 and b % align != 0:
            b += align - (b % align)
            continue
        e = b
        lim = b + want
        if lim > end:
            lim = end
        while e < lim and bitmap[e] == 0:
            e += 1
        if e - b >= min_len:
            return b * 4294967296 + (e - b)
        b = e
    return -1


@njit
def set_range(bitmap, first_free, zone_used, zone_blocks, start, length, value):
    """Mark ``[start, start+length)`` used (value=1) or free (0).

    Keeps the ``first_free`` hints and ``zone_used`` (int64[nr_zones], blocks
    in use per zone) exact.  Returns how many blocks changed state.
    """
    changed = 0
    for i in range(start, start + length):
        if bitmap[i] != value:
            bitmap[i] = value
            changed += 1
            z = i // zone_blocks
            if value == 0:
                zone_used[z] -= 1
            else:
                zone_used[z] += 1
    if length <= 0:
        return changed
    z0 = start // zone_blocks
    z1 = (start + length - 1) // zone_blocks
    if value == 0:
        for z in range(z0, z1 + 1):
            lo = z * zone_blocks
            if lo < start:
                lo = start
            if lo < first_free[z]:
                first_free[z] = lo
    else:
        n = bitmap.shape[0]
        for z in range(z0, z1 + 1):
            b = first_free[z]
            zend = (z + 1) * zone_blocks
            if zend > n:
                zend = n
            while b < zend and bitmap[b] != 0:
                b += 1
            first_free[z] = b
    return changed


@njit
def count_free(bitmap, begin, end):
    c = 0
    for i in range(begin, end):
        if bitmap[i] == 0:
            c += 1
    return c


@njit
def free_runs(bitmap, begin, end, min_len):
    """Free runs in ``[begin, end)`` of at least ``min_len`` blocks, as an
    int64[k, 2] array of (start, length)."""
    cap = 64
    out = np.empty((cap, 2), dtype=np.int64)
    k = 0
    b = begin
    while b < end:
        if bitmap[b] != 0:
            b += 1
            continue
        e = b
        while e < end and bitmap[e] == 0:
            e += 1
        if e - b >= min_len:
            if k == cap:
                bigger = np.empty((cap * 2, 2), dtype=np.int64)
                for i in range(cap):
                    bigger[i, 0] = out[i, 0]
                    bigger[i, 1] = out[i, 1]
                out = bigger
                cap *= 2
            out[k, 0] = b
            out[k, 1] = e - b
            k += 1
        b = e
    res = np.empty((k, 2), dtype=np.int64)
    for i in range(k):
        res[i, 0] = out[i, 0]
        res[i, 1] = out[i, 1]
    return res


@njit
def runs_of(blocks):
    """Sorted unique int64 block numbers -> int64[k, 2] (start, length) runs."""
    n = blocks.shape[0]
    out = np.empty((n, 2), dtype=np.int64)
    k = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and blocks[j] == blocks[j - 1] + 1:
            j += 1
        out[k, 0] = blocks[i]
        out[k, 1] = j - i
        k += 1
        i = j
    res = np.empty((k, 2), dtype=np.int64)
    for i in range(k):
        res[i, 0] = out[i, 0]
        res[i, 1] = out[i, 1]
    return res


@njit
def flex_group_stats(izone_used, zone_used, group_dirs, flex, inodes_per_group, blocks_per_group):
    """Per ext4 flex group (``flex`` block groups each; a last partial flex
    group counts its missing groups as full): free inodes, free blocks and
    directories, as three int64 arrays, and their three sums."""
    ng = izone_used.shape[0]
    nf = (ng + flex - 1) // flex
    free_i = np.full(nf, inodes_per_group * flex, dtype=np.int64)
    free_b = np.full(nf, blocks_per_group * flex, dtype=np.int64)
    dirs = np.zeros(nf, dtype=np.int64)
    for g in range(ng):
        x = g // flex
        free_i[x] -= izone_used[g]
        free_b[x] -= zone_used[g]
        dirs[x] += group_dirs[g]
    sum_i = 0
    sum_b = 0
    sum_d = 0
    for x in range(nf):
        sum_i += free_i[x]
        sum_b += free_b[x]
        sum_d += dirs[x]
    return free_i, free_b, dirs, sum_i, sum_b, sum_d


@njit
def alloc_one_in_groups(ibitmap, ifirst_free, izone_used, per_group, lo, hi, nr_groups, wrap):
    """Take the first free entry (an inode) of a group, trying groups
    ``[lo, hi)`` in order, then (``wrap``) ``[hi, nr_groups)`` and ``[0, lo)``.

    ``ibitmap``/``ifirst_free``/``izone_used`` are the inode-table analogues
    of ``bitmap``/``first_free``/``zone_used`` (``per_group`` entries per
    group).  Marks the entry used and returns its index, or -1 if every
    group tried is full."""
    # np.int64(1), not 1: numba types a constant argument as Literal[int], and
    # find_extent/set_range would compile a second time for it (~3 s)
    one = np.int64(1)
    for k in range(3 if wrap else 1):
        if k == 0:
            a, b = lo, hi
        elif k == 1:
            a, b = hi, nr_groups
        else:
            a, b = 0, lo
        for grp in range(a, b):
            if izone_used[grp] >= per_group:
                continue
            r = find_extent(ibitmap, ifirst_free, per_group, grp * per_group, (grp + 1) * per_group, one, one, one)
            if r < 0:
                continue
            idx = r // 4294967296
            set_range(ibitmap, ifirst_free, izone_used, per_group, idx, one, one)
            return idx
    return -1


@njit
def alloc_many_in_groups(ibitmap, ifirst_free, izone_used, per_group, lo, hi, nr_groups, wrap, out):
    """:func:`alloc_one_in_groups` ``len(out)`` times (a directory's files,
    cloned together): the indices taken go to ``out``; returns how many were
    taken before the groups tried ran out."""
    n = 0
    for i in range(out.shape[0]):
        idx = alloc_one_in_groups(ibitmap, ifirst_free, izone_used, per_group, lo, hi, nr_groups, wrap)
        if idx < 0:
            break
        out[i] = idx
        n += 1
    return n

"""pdata.intrinsics: memmove moves as numpy's copy does (overlap both
ways, across rows of a 2-D array); prefetch changes nothing."""
from __future__ import annotations

import numpy as np
import pytest

from thinp.config import njit
from thinp.pdata.intrinsics import memmove, prefetch


@njit
def _move(a, dst, src, n):
    memmove(a, dst, src, n)


@njit
def _touch(a):
    for i in range(0, a.size, 8):
        prefetch(a, i)


@pytest.mark.parametrize("dst,src,n", [(1, 0, 300), (0, 1, 300), (400, 5, 511), (5, 400, 511), (7, 7, 10),
                                       (3, 9, 0)])
def test_memmove_matches_a_numpy_copy(dst, src, n):
    a = np.arange(2 * 512, dtype=np.uint64).reshape(2, 512) * np.uint64(2654435761)
    want = a.ravel().copy()
    want[dst:dst + n] = want[src:src + n].copy()
    _move(a, dst, src, n)
    assert np.array_equal(a.ravel(), want)


def test_memmove_refuses_a_non_contiguous_array():
    a = np.zeros((4, 8), dtype=np.uint64)[:, ::2]
    with pytest.raises(Exception, match="(?i)memmove|typing"):
        _move(a, 1, 0, 2)


def test_prefetch_changes_nothing():
    a = np.arange(4096, dtype=np.uint64).reshape(8, 512)
    before = a.copy()
    _touch(a)
    assert np.array_equal(a, before)

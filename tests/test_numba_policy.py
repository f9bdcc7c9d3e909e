"""The one numba policy (thinp/config.py) leans on numba's private ``_nrt``
option for ``refcount=False`` kernels.  These tests fail loudly if a numba
upgrade renames, ignores or removes it, before the hot kernels silently get
slower (NRT back on) or stop compiling."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from numba.core import cpu

from thinp.config import njit


def test_numba_still_has_the_private_nrt_option():
    assert "_nrt" in dir(cpu.CPUTargetOptions), (
        f"numba {numba.__version__} has no _nrt target option: thinp.config.njit(refcount=False) "
        "needs another way to compile without reference counting")


def test_refcount_false_compiles_without_nrt():
    @njit(refcount=False, cache=False)
    def bump(a, i):
        a[i] += 1
        return a[i]

    x = np.zeros(4, np.int64)
    assert bump(x, 2) == 1 and bump(x, 2) == 2 and x.tolist() == [0, 0, 2, 0]
    assert bump.targetoptions.get("_nrt") is False
    assert bump.targetoptions.get("nogil") is True


def test_refcount_false_really_turns_nrt_off():
    """Without NRT a kernel cannot allocate an array: numba refuses to type
    np.zeros.  If this compiles, ``_nrt=False`` is being ignored."""
    @njit(refcount=False, cache=False)
    def alloc(n):
        return np.zeros(n)

    with pytest.raises(numba.core.errors.TypingError):
        alloc(3)


def test_the_default_keeps_nrt_and_caches():
    @njit(cache=False)
    def alloc(n):
        return np.zeros(n)

    assert alloc(3).tolist() == [0.0, 0.0, 0.0]
    assert "_nrt" not in alloc.targetoptions


def test_kernels_are_cached_to_disk_by_default():
    from numba.core.caching import NullCache

    def f(x):
        return x + 1

    assert not isinstance(njit(f)._cache, NullCache)          # cache=True: compiled once per machine
    assert isinstance(njit(cache=False)(f)._cache, NullCache)


def test_a_constant_argument_does_not_compile_a_second_signature():
    """numba would type ``callee(x, 1)`` inside a kernel as (int64,
    Literal[int](1)) and compile the callee again for it; thinp's njit
    compiles one int64 signature for both calls."""
    @njit(cache=False)
    def callee(a, b):
        return a + b

    @njit(cache=False)
    def with_constant(x):
        return callee(x, 1) + callee(x, -1)

    assert callee(3, 4) == 7 and with_constant(5) == 10
    assert [tuple(str(t) for t in sig) for sig in callee.signatures] == [("int64", "int64")]

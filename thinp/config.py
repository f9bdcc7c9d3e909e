"""Defaults and the one numba policy.

Every kernel in thinp is compiled through :func:`njit` below, so the JIT policy
(``cache=True``: a second process never pays compile time again; ``nogil``: a
kernel may run beside other threads) is set in one place.
"""
from __future__ import annotations

#: The kernel's page: the page cache's unit, and the block size of every
#: filesystem model (ext4/xfs 4 KiB blocks, btrfs's sectorsize).
PAGE_SIZE = 4096
#: The metadata block size: 4 KiB, as dm-persistent-data uses.
METADATA_BLOCK_SIZE = 4096
#: dm-thin's data block size limits, in bytes.
MIN_DATA_BLOCK_SIZE = 64 * 1024
MAX_DATA_BLOCK_SIZE = 1024 * 1024 * 1024
#: 512-byte sectors, the unit dm tables and status lines speak.
SECTOR_SIZE = 512


#: callables run once, when :func:`njit` first imports numba (``thinp.jitnotice`` listens from then on)
on_numba_import: list = []
_caches_checked = False


def njit(func=None, *, refcount=True, **kwargs):
    """``numba.njit`` with thinp's policy: cached to disk, no GIL.

    Use it bare (``@njit``) or with options (``@njit(inline="always")``).

    ``refcount=False`` compiles without numba's reference counting (NRT).
    The hot kernels need it: numba increfs and decrefs every array of a
    NamedTuple argument at a call boundary it cannot prune, which measured
    ~270 ns a call here (3.7 M writes/s instead of 100 M/s).  Such kernels
    must not allocate arrays; callers pass scratch space in.

    The helpers on the write path (allocation, shadowing, refcounts) are
    also ``inline="always"``: passing a NamedTuple of 13 arrays by value to
    a non-inlined call costs more than the helper's work; inlining took
    random provisioning from ~10 M to ~33 M writes/s (thread time, median
    of 7) at the price of longer first compiles.
    """
    import numba  # only kernel modules pay for numba's import

    global _caches_checked
    if not _caches_checked:
        _caches_checked = True
        from .jitcache import drop_stale

        drop_stale()        # before the first kernel loads from the cache
    while on_numba_import:
        on_numba_import.pop(0)()

    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    if not refcount:
        kwargs["_nrt"] = False
    if func is None:
        return lambda f: _one_signature(numba.njit(**kwargs)(f))
    return _one_signature(numba.njit(**kwargs)(func))


def _one_signature(disp):
    """Compile ``disp`` for plain types when another kernel calls it with a
    constant argument.  numba types a constant as ``Literal[int](1)`` and
    compiles the callee once per distinct combination of constants at its
    call sites: the dm btree's split/rebalance kernels compiled 3-5 times
    each on a cold ``thinp compare`` (~25 s).  No thinp kernel needs a
    literal argument (``inline="always"`` helpers are inlined before typing
    and never get here)."""
    from numba.core import types

    call_template = disp.get_call_template

    def get_call_template(args, kws):
        return call_template(tuple(types.unliteral(a) for a in args),
                             {k: types.unliteral(v) for k, v in kws.items()})

    disp.get_call_template = get_call_template
    return disp

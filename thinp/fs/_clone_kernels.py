"""ext4's bulk tree clone as one kernel call (see :mod:`._bulk_clone`).

The kernel runs a clone *plan* -- the source tree's entries in the order
:meth:`~thinp.fs.core.Filesystem.clone_tree` copies them -- through ext4's
allocators and journal, as the per-entry calls would, and leaves the
Python objects (inodes, directory entries) to its caller.

Plan arrays, one row per item (int64[n]):

* ``kind``: :data:`POP` (a directory's turn: its entries follow),
  :data:`DIR`, :data:`REG`, :data:`LNK`, :data:`OTHER` (a device node,
  fifo, socket), :data:`LINK` (a hard link to item ``link_to``).  Item 0 is
  the destination directory itself, made before the kernel runs.
* ``parent``: the item of the directory the entry goes in (a POP: its own).
* ``dsize``: the directory entry's bytes; ``crc``: crc32 of its name (which
  directory block a change dirties); ``size``: a regular file's bytes or a
  symlink target's; ``flags``: :data:`F_XATTR` (the entry has xattrs: the
  caller copies them after the item).

Per item, written by the kernel: ``ino``, ``loc`` (the fs block holding the
on-disk inode), ``zone`` (block group).  Per directory: ``dbytes`` (its
``dir_bytes``) and its blocks, ``mdata[moff[i]:moff[i] + mlen[i]]`` (a
symlink's block lives there too).

Filesystem arrays: the block bitmap with its hints (``bitmap``,
``first_free``, ``zone_used``, ``zone_norun``, see :mod:`._kernels`), the
inode bitmap likewise (``ibitmap``, ``ifirst_free``, ``izone_used``),
``group_dirs``, and the geometry's per-group ``inode_table``,
``inode_bitmap``, ``block_bitmap`` block numbers.  The dirty set is
``dmark`` (uint8 per fs block) with its members in ``dlist``.  Scalars
live in ``sc`` (the ``S_*`` slots, read and written) and ``kc`` (the
``C_*`` constants).  Device writes (journal, checkpoint) go to ``wlog``
as (block, count) rows, for the caller to issue in order.

The kernel returns ``(code, k)``: :data:`DONE`; :data:`AFTER`: item
``k - 1`` is done but for what the caller does next (a writeback, if its
write reached the dirty-page limit, then its xattrs); :data:`BEFORE`: item
``k`` must be done by the caller (it might run out of space or inodes, or
the write log is nearly full); :data:`NOSPACE`: item ``k`` found no inode.
"""
from __future__ import annotations

import numpy as np

from ..config import njit
from ._kernels import alloc_one_in_groups, find_run, flex_group_stats, set_range

POP, DIR, REG, LNK, OTHER, LINK = 0, 1, 2, 3, 4, 5
F_XATTR = 1

DONE, AFTER, BEFORE, NOSPACE = 0, 1, 2, 3

# sc slots
S_USED, S_NINODES, S_DELAYED, S_DIRTY_PAGES, S_STAMP, S_FILE_BYTES, S_DATA_WRITTEN, S_DCOUNT, S_JPOS, \
    S_JOURNAL_WRITTEN, S_COMMITS, S_META_WRITTEN, S_WCOUNT = range(13)
S_LAG = 13          # three lagging percpu counters: free inodes, free blocks, directories
S_LAG_SET = 16      # ... and whether each has been folded yet
NR_S = 19
# kc slots
C_NR_BLOCKS, C_ZONE_BLOCKS, C_MAX_INODES, C_IPG, C_NR_GROUPS, C_FLEX, C_COMMIT_BLOCKS, C_WRITEBACK_BLOCKS, \
    C_JOURNAL, C_JSTART, C_JBLOCKS, C_RESERVED, C_INLINE, C_ROOT_INO, C_PERCPU_BATCH, C_DESC_PER_BLOCK, \
    C_INODES_PER_BLOCK = range(17)
NR_C = 17

DIR_BLOCK_USABLE = 4096 - 12      # ext4 metadata_csum dirent tail
EMPTY_DIR_BYTES = 24
BLOCK = 4096
PACK = 4294967296


@njit(inline="always")
def _dirty_add(b, dmark, dlist, sc):
    if dmark[b] == 0:
        dmark[b] = 1
        dlist[sc[S_DCOUNT]] = b
        sc[S_DCOUNT] += 1


@njit(inline="always")
def _log_write(wlog, sc, start, n):
    if n > 0:
        w = sc[S_WCOUNT]
        wlog[w, 0] = start
        wlog[w, 1] = n
        sc[S_WCOUNT] = w + 1


@njit
def _commit(bitmap, dmark, dlist, sc, kc, wlog):
    """ext4's commit at the dirty limit: journal the dirty blocks, then
    checkpoint (write home the ones still in use, in runs)."""
    n = sc[S_DCOUNT]
    if n == 0:
        return
    if kc[C_JOURNAL]:
        jn = kc[C_JBLOCKS]
        total = n + 1 + (n + 249) // 250
        left = total
        while left:
            k = jn - sc[S_JPOS]
            if left < k:
                k = left
            _log_write(wlog, sc, kc[C_JSTART] + sc[S_JPOS], k)
            sc[S_JPOS] += k
            left -= k
            if sc[S_JPOS] >= jn:
                sc[S_JPOS] = 1
        sc[S_JOURNAL_WRITTEN] += total
    sc[S_COMMITS] += 1
    blocks = np.sort(dlist[:n])
    live = 0
    i = 0
    while i < n:
        b = blocks[i]
        dmark[b] = 0
        if bitmap[b] != 0:
            blocks[live] = b
            live += 1
        i += 1
    i = 0
    while i < live:
        j = i + 1
        while j < live and blocks[j] == blocks[j - 1] + 1:
            j += 1
        _log_write(wlog, sc, blocks[i], j - i)
        i = j
    sc[S_META_WRITTEN] += live
    sc[S_DCOUNT] = 0


@njit(inline="always")
def _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog):
    if sc[S_DCOUNT] >= kc[C_COMMIT_BLOCKS]:
        _commit(bitmap, dmark, dlist, sc, kc, wlog)


@njit
def _alloc_block(goal, bitmap, first_free, zone_used, zone_norun, block_bitmap, dmark, dlist, sc, kc):
    """One metadata block near ``goal`` (ext4's ``_alloc_run(goal, 1)``), or -1."""
    one = np.int64(1)
    nb = kc[C_NR_BLOCKS]
    zb = kc[C_ZONE_BLOCKS]
    r = find_run(bitmap, first_free, zone_used, zone_norun, zb, goal, nb, one, one, one)
    if r < 0 and goal > 0:
        r = find_run(bitmap, first_free, zone_used, zone_norun, zb, np.int64(0), goal, one, one, one)
    if r < 0:
        return -1
    s = r // PACK
    sc[S_USED] += set_range(bitmap, first_free, zone_used, zb, s, one, one)
    grp = s // zb
    _dirty_add(block_bitmap[grp], dmark, dlist, sc)
    _dirty_add(1 + grp // kc[C_DESC_PER_BLOCK], dmark, dlist, sc)
    return s


@njit
def _dir_resize(i, dbytes, moff, mlen, mdata, zone, bitmap, first_free, zone_used, zone_norun, block_bitmap,
                dmark, dlist, sc, kc):
    """Give directory item ``i`` the blocks its entries need; False if out of space."""
    n = (dbytes[i] + DIR_BLOCK_USABLE - 1) // DIR_BLOCK_USABLE
    if n > 1:
        n += 1            # htree root block
    need = n
    if mlen[i] > need:
        need = mlen[i]
    if need < 1:
        need = 1
    while mlen[i] < need:
        if moff[i] + mlen[i] >= moff[i + 1]:
            return False
        if mlen[i] > 0:
            goal = mdata[moff[i] + mlen[i] - 1] + 1
        else:
            f = kc[C_FLEX]
            goal = (zone[i] & ~(f - 1)) * kc[C_ZONE_BLOCKS]
        b = _alloc_block(goal, bitmap, first_free, zone_used, zone_norun, block_bitmap, dmark, dlist, sc, kc)
        if b < 0:
            return False
        mdata[moff[i] + mlen[i]] = b
        mlen[i] += 1
        _dirty_add(b, dmark, dlist, sc)
    return True


@njit(inline="always")
def _lagging(sc, kc, which, exact):
    if sc[S_LAG_SET + which] == 0 or abs(exact - sc[S_LAG + which]) >= kc[C_PERCPU_BATCH]:
        sc[S_LAG + which] = exact
        sc[S_LAG_SET + which] = 1
    return sc[S_LAG + which]


@njit
def _orlov(pzone, izone_used, zone_used, group_dirs, sc, kc):
    """find_group_orlov for a directory whose parent is not the root: the
    block group to start looking in, or -1."""
    f = kc[C_FLEX]
    ipg = kc[C_IPG]
    ng = kc[C_NR_GROUPS]
    free_i, free_b, dirs, sum_i, sum_b, sum_d = flex_group_stats(izone_used, zone_used, group_dirs, f, ipg,
                                                                 kc[C_ZONE_BLOCKS])
    nf = free_i.shape[0]
    freei = _lagging(sc, kc, 0, sum_i)
    freeb = _lagging(sc, kc, 1, sum_b)
    ndirs = _lagging(sc, kc, 2, sum_d)
    avefreei = freei // nf
    avefreeb = freeb // nf
    max_dirs = ndirs // nf + ipg * f // 16
    min_inodes = avefreei - ipg * f // 4
    if min_inodes < 1:
        min_inodes = 1
    min_blocks = avefreeb - kc[C_ZONE_BLOCKS] * f // 4
    p = pzone // f
    for i in range(nf):
        x = (p + i) % nf
        if dirs[x] < max_dirs and free_i[x] >= min_inodes and free_b[x] >= min_blocks:
            return x * f
    avefreei_g = freei // ng
    for i in range(ng):
        grp = (pzone + i) % ng
        free = ipg - izone_used[grp]
        if free and free >= avefreei_g:
            return grp
    for grp in range(ng):
        if izone_used[grp] < ipg:
            return grp
    return -1


@njit(inline="always")
def _take_inode(k, idx, ino, loc, zone, inode_table, inode_bitmap, dmark, dlist, sc, kc):
    ipg = kc[C_IPG]
    grp = idx // ipg
    ino[k] = idx + 1
    loc[k] = inode_table[grp] + (idx - grp * ipg) // kc[C_INODES_PER_BLOCK]
    zone[k] = grp
    _dirty_add(inode_bitmap[grp], dmark, dlist, sc)
    _dirty_add(1 + grp // kc[C_DESC_PER_BLOCK], dmark, dlist, sc)


@njit
def clone_plan(kind, parent, dsize, crc, size, link_to, flags, k0,
               ino, loc, zone, dbytes, moff, mlen, mdata,
               bitmap, first_free, zone_used, zone_norun, ibitmap, ifirst_free, izone_used, group_dirs,
               inode_table, inode_bitmap, block_bitmap, dmark, dlist, sc, kc, wlog):
    """Run the plan's items from ``k0`` on; see the module docstring."""
    n = kind.shape[0]
    f = kc[C_FLEX]
    ipg = kc[C_IPG]
    ng = kc[C_NR_GROUPS]
    wcap = wlog.shape[0]
    k = k0
    while k < n:
        t = kind[k]
        p = parent[k]
        if t == POP:
            k += 1
            if flags[k - 1] & F_XATTR:
                return AFTER, k
            continue
        # what the per-entry calls would do differently here is the caller's:
        # running out of inodes or blocks (it raises, or writes back first),
        # a commit that would overflow the write log
        if sc[S_WCOUNT] + sc[S_DCOUNT] + 64 > wcap or sc[S_DCOUNT] + 64 > dlist.shape[0]:
            return BEFORE, k
        if kc[C_NR_BLOCKS] - sc[S_USED] < 4:
            return BEFORE, k
        if t != LINK and sc[S_NINODES] >= kc[C_MAX_INODES]:
            return BEFORE, k
        nblk = (size[k] + BLOCK - 1) // BLOCK
        if t == REG and size[k] > 0 and \
                nblk + 4 > kc[C_NR_BLOCKS] - sc[S_USED] - sc[S_DELAYED] - kc[C_RESERVED]:
            return BEFORE, k
        if t == DIR and ino[p] == kc[C_ROOT_INO]:
            return BEFORE, k     # Orlov spreads top-level directories at random
        if t == DIR and moff[k + 1] - moff[k] < 1:
            return BEFORE, k
        if t == LINK:
            tk = link_to[k]
            if kind[tk] == REG:
                sc[S_FILE_BYTES] += size[tk]
            _dirty_add(loc[tk], dmark, dlist, sc)
            _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog)
        else:
            if t == DIR:
                lo = _orlov(zone[p], izone_used, zone_used, group_dirs, sc, kc)
                if lo < 0:
                    return NOSPACE, k
                hi = (lo // f) * f + f
                if hi > ng:
                    hi = ng
                idx = alloc_one_in_groups(ibitmap, ifirst_free, izone_used, ipg, lo, hi, ng, False)
                if idx < 0:
                    return NOSPACE, k
                group_dirs[idx // ipg] += 1
            else:
                lo = zone[p] & ~(f - 1)
                hi = lo + f
                if hi > ng:
                    hi = ng
                idx = alloc_one_in_groups(ibitmap, ifirst_free, izone_used, ipg, lo, hi, ng, True)
                if idx < 0:
                    return NOSPACE, k
            _take_inode(k, idx, ino, loc, zone, inode_table, inode_bitmap, dmark, dlist, sc, kc)
            sc[S_NINODES] += 1
            _dirty_add(loc[k], dmark, dlist, sc)
            _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog)
            if t == DIR:
                dbytes[k] = EMPTY_DIR_BYTES
                if not _dir_resize(k, dbytes, moff, mlen, mdata, zone, bitmap, first_free, zone_used, zone_norun,
                                   block_bitmap, dmark, dlist, sc, kc):
                    return NOSPACE, k       # not reached: at least 4 blocks were free
        # the entry in the parent (_dir_add)
        dbytes[p] += dsize[k]
        if not _dir_resize(p, dbytes, moff, mlen, mdata, zone, bitmap, first_free, zone_used, zone_norun,
                           block_bitmap, dmark, dlist, sc, kc):
            return NOSPACE, k
        nb = mlen[p]
        if nb > 1:
            _dirty_add(mdata[moff[p] + crc[k] % nb], dmark, dlist, sc)
            _dirty_add(mdata[moff[p]], dmark, dlist, sc)
        elif nb == 1:
            _dirty_add(mdata[moff[p]], dmark, dlist, sc)
        _dirty_add(loc[p], dmark, dlist, sc)
        _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog)
        k += 1
        if t == REG and size[k - 1] > 0:
            # the copy's write: delayed allocation of the whole file
            sc[S_STAMP] += 1
            sc[S_DELAYED] += nblk
            sc[S_FILE_BYTES] += size[k - 1]
            sc[S_DATA_WRITTEN] += nblk
            _dirty_add(loc[k - 1], dmark, dlist, sc)
            _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog)
            if sc[S_DELAYED] + sc[S_DIRTY_PAGES] >= kc[C_WRITEBACK_BLOCKS]:
                return AFTER, k
        elif t == LNK and size[k - 1] > kc[C_INLINE]:
            if moff[k] - moff[k - 1] < 1:
                return NOSPACE, k - 1
            goal = (zone[k - 1] & ~(f - 1)) * kc[C_ZONE_BLOCKS]
            b = _alloc_block(goal, bitmap, first_free, zone_used, zone_norun, block_bitmap, dmark, dlist, sc, kc)
            if b < 0:
                return NOSPACE, k - 1
            mdata[moff[k - 1]] = b
            mlen[k - 1] = 1
            _dirty_add(b, dmark, dlist, sc)
        if t != LINK and flags[k - 1] & F_XATTR:
            return AFTER, k
    return DONE, k


# -- writeback ---------------------------------------------------------------------
#
# ``writeback_plan`` runs ext4's writeback (``Filesystem._flush_inode`` for each
# delayed inode, in order) for inodes the plain case covers: one delayed range,
# no extents or extent-tree blocks yet, no dirty pages.  Per inode (int64[n]):
# ``nblk`` its delayed blocks, ``lblk0`` the range's first logical block,
# ``fsize`` its size in bytes, ``zone`` its block group, ``isreg`` 1 for a
# regular file, ``loc`` its inode's block.  The locality-group window is
# ``lg`` ([next, end), ext4's ``_lg``).  The inodes' extents go to ``ext``
# as (lblk, pblk, n) rows, inode k's at ``ext[eoff[k]:eoff[k + 1]]`` (the rows
# restart at 0 on each call).  Data writes join the commits' in ``wlog``.
#
# Returns ``(code, k)``: :data:`DONE`; :data:`WB_PAUSE`: the buffers are full,
# call again from ``k`` (after taking the rows); :data:`BEFORE`: inode ``k``
# is the caller's (it might not fit, or its buffers could overflow);
# :data:`AFTER`: inode ``k - 1`` has more than 4 extents: the caller lays out
# its extent tree and touches its inode; :data:`NOSPACE`: not reached (the
# free blocks were checked).

WB_PAUSE = 4
STREAM_REQUEST = 16        # ext4's s_mb_stream_request
GROUP_PREALLOC = 512       # s_mb_group_prealloc
MAX_NORMALIZED = 2048
MAX_EXTENT_LEN = 32768
INLINE_EXTENTS = 4


@njit(inline="always")
def _find(goal, want, align, min_len, bitmap, first_free, zone_used, zone_norun, kc):
    """``Filesystem._find``: the packed run, or -1."""
    zb = kc[C_ZONE_BLOCKS]
    r = find_run(bitmap, first_free, zone_used, zone_norun, zb, goal, kc[C_NR_BLOCKS], want, align, min_len)
    if r < 0 and goal > 0:
        r = find_run(bitmap, first_free, zone_used, zone_norun, zb, np.int64(0), goal, want, align, min_len)
    return r


@njit(inline="always")
def _dirty_groups(start, n, block_bitmap, dmark, dlist, sc, kc):
    """ext4's ``_dirty_alloc``: the bitmap and descriptor blocks of the groups a run spans."""
    zb = kc[C_ZONE_BLOCKS]
    for grp in range(start // zb, (start + n - 1) // zb + 1):
        _dirty_add(block_bitmap[grp], dmark, dlist, sc)
        _dirty_add(1 + grp // kc[C_DESC_PER_BLOCK], dmark, dlist, sc)


@njit
def _alloc_run_wb(goal, want, align, bitmap, first_free, zone_used, zone_norun, block_bitmap, dmark, dlist, sc,
                  kc):
    """``Filesystem._alloc_run``: the packed run taken, or -1."""
    one = np.int64(1)
    r = np.int64(-1)
    if align > 1:
        r = _find(goal, want, align, want, bitmap, first_free, zone_used, zone_norun, kc)
    if r < 0:
        r = _find(goal, want, one, want, bitmap, first_free, zone_used, zone_norun, kc)
    if r < 0:
        r = _find(goal, want, one, one, bitmap, first_free, zone_used, zone_norun, kc)
    if r < 0:
        return r
    s = r // PACK
    n = r % PACK
    sc[S_USED] += set_range(bitmap, first_free, zone_used, kc[C_ZONE_BLOCKS], s, n, one)
    _dirty_groups(s, n, block_bitmap, dmark, dlist, sc, kc)
    return r


@njit(inline="always")
def _add_piece(lb, s, n, ext, epos, e0):
    """``Filesystem._add_extent`` on a file whose extents all lie before ``lb``; the new row count."""
    if epos > e0:
        j = epos - 1
        if ext[j, 0] + ext[j, 2] == lb and ext[j, 1] + ext[j, 2] == s and ext[j, 2] + n <= MAX_EXTENT_LEN:
            ext[j, 2] += n
            return epos
    ext[epos, 0] = lb
    ext[epos, 1] = s
    ext[epos, 2] = n
    return epos + 1


@njit
def writeback_plan(k0, nblk, lblk0, fsize, zone, isreg, loc, ext, eoff, lg,
                   bitmap, first_free, zone_used, zone_norun, norun_unknown, block_bitmap, dmark, dlist, sc, kc,
                   wlog):
    """Write back inodes ``k0...``; see the comment above."""
    n = nblk.shape[0]
    ecap = ext.shape[0]
    wcap = wlog.shape[0]
    dcap = dlist.shape[0]
    zb = kc[C_ZONE_BLOCKS]
    f = kc[C_FLEX]
    one = np.int64(1)
    epos = 0
    eoff[k0] = 0
    k = k0
    while k < n:
        nb = nblk[k]
        if sc[S_WCOUNT] + sc[S_DCOUNT] + 5 * nb + 128 > wcap or epos + nb > ecap or \
                sc[S_DCOUNT] + 4 * nb + 64 > dcap:
            if k > k0:
                return WB_PAUSE, k
            return BEFORE, k
        if kc[C_NR_BLOCKS] - sc[S_USED] < nb + 64:
            return BEFORE, k
        sc[S_DELAYED] -= nb
        r0 = lblk0[k]
        size_blocks = (fsize[k] + BLOCK - 1) // BLOCK
        if size_blocks < r0 + nb:
            size_blocks = r0 + nb
        # _data_goal of a file with no extents
        grp = zone[k] & ~(f - 1)
        if isreg[k] and f >= 4 and grp + 1 < kc[C_NR_GROUPS]:
            grp += 1
        goal = grp * zb
        e0 = epos
        if size_blocks <= STREAM_REQUEST:
            # _alloc_lg: the locality group's preallocation window
            nxt = lg[0]
            end = lg[1]
            s = np.int64(-1)
            if end - nxt < nb:
                if end > nxt:   # give back what the old window did not use
                    ch = set_range(bitmap, first_free, zone_used, zb, nxt, end - nxt, np.int64(0))
                    if ch:
                        sc[S_USED] -= ch
                        z0 = nxt // zb - 1
                        if z0 < 0:
                            z0 = 0
                        zone_norun[z0:(end - 1) // zb + 1] = norun_unknown
                gp = np.int64(GROUP_PREALLOC)
                r = _find(goal, gp, gp, gp, bitmap, first_free, zone_used, zone_norun, kc)
                if r < 0:
                    r = _find(goal, gp, one, nb, bitmap, first_free, zone_used, zone_norun, kc)
                if r < 0:
                    lg[0] = 0
                    lg[1] = 0
                    r = _alloc_run_wb(goal, nb, one, bitmap, first_free, zone_used, zone_norun, block_bitmap,
                                      dmark, dlist, sc, kc)
                    if r < 0:
                        return NOSPACE, k
                    s = r // PACK
                    epos = _add_piece(r0, s, r % PACK, ext, epos, e0)
                    _log_write(wlog, sc, s, r % PACK)
                else:
                    g0 = r // PACK
                    gl = r % PACK
                    sc[S_USED] += set_range(bitmap, first_free, zone_used, zb, g0, gl, one)
                    nxt = g0
                    end = g0 + gl
            if s < 0:
                lg[0] = nxt + nb
                lg[1] = end
                _dirty_groups(nxt, nb, block_bitmap, dmark, dlist, sc, kc)
                epos = _add_piece(r0, nxt, nb, ext, epos, e0)
                _log_write(wlog, sc, nxt, nb)
        else:
            align = one
            if nb >= 512:
                bits = 0
                v = nb - 1
                while v:
                    bits += 1
                    v >>= 1
                align = one << bits
                if align > MAX_NORMALIZED:
                    align = np.int64(MAX_NORMALIZED)
            left = nb
            lb = r0
            while left:
                r = _alloc_run_wb(goal, left, align, bitmap, first_free, zone_used, zone_norun, block_bitmap,
                                  dmark, dlist, sc, kc)
                if r < 0:
                    return NOSPACE, k
                s = r // PACK
                got = r % PACK
                epos = _add_piece(lb, s, got, ext, epos, e0)
                _log_write(wlog, sc, s, got)
                lb += got
                left -= got
                goal = s + got
                align = one
        eoff[k + 1] = epos
        k += 1
        if epos - e0 > INLINE_EXTENTS:
            return AFTER, k
        # _touch_inode
        _dirty_add(loc[k - 1], dmark, dlist, sc)
        _maybe_commit(bitmap, dmark, dlist, sc, kc, wlog)
    return DONE, k

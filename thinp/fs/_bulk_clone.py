"""ext4's :meth:`~thinp.fs.core.Filesystem.clone_tree` in accounting mode:
the copy's allocations, dirty blocks and commits in one kernel call
(:mod:`._clone_kernels`), then its inodes made from the kernel's numbers.

A copy of a tree is inodes, directory entries and extents.  The per-entry
calls spend most of their time being Python calls; the kernel runs the same
steps -- Orlov's group choice for a directory's inode, the first free inode
of the parent's flex group for a file's, a directory's blocks as its
entries grow, each change's dirty blocks, a commit (journal, checkpoint)
whenever the dirty set reaches the limit, each file's delayed allocation --
over the filesystem's arrays, in the order the per-entry calls take them.
What the kernel leaves to Python, it stops for, and resumes after:

* writeback, when a copied file's write reaches the dirty-page limit;
* xattrs (rare in images);
* an entry that might run out of inodes or blocks: done by the per-entry
  calls, which raise as they would have;
* a top-level directory (Orlov picks it at random).

The result is the per-entry copy's, field for field (tests/fs/test_clone_tree.py).
"""
from __future__ import annotations

import errno
import stat as _stat
import time as _time
import zlib
from itertools import chain

import numpy as np

from ..blockdev import PlainDevice
from . import _clone_kernels as CK
from ._kernels import NORUN_UNKNOWN
from .core import BLOCK, Inode, os_error

_S_IFDIR, _S_IFREG, _S_IFLNK, _S_IFMT = _stat.S_IFDIR, _stat.S_IFREG, _stat.S_IFLNK, _stat.S_IFMT
POP, DIR, REG, LNK, OTHER, LINK = CK.POP, CK.DIR, CK.REG, CK.LNK, CK.OTHER, CK.LINK


class _Plan:
    """A copy's plan (the kernel's arrays, see :mod:`._clone_kernels`) and,
    per item, its name, source inode and new inode (``nodes``), and each
    directory item's destination path."""

    __slots__ = ("kind", "parent", "dsize", "crc", "size", "link_to", "flags", "names", "srcs", "paths",
                 "moff", "mlen", "mdata", "ino", "loc", "zone", "dbytes", "nodes")


def _reload(P, k) -> bool:
    """Item ``k``'s numbers from its inode (made or changed by Python); False
    if its blocks no longer fit the plan's room."""
    node = P.nodes[k]
    P.ino[k], P.loc[k], P.zone[k] = node.ino, node.loc, node.zone
    if node.entries is not None:
        P.dbytes[k] = node.dir_bytes
        mb = node.meta_blocks
        o = int(P.moff[k])
        if len(mb) > int(P.moff[k + 1]) - o:
            return False
        P.mdata[o:o + len(mb)] = mb
        P.mlen[k] = len(mb)
    return True


def _plain_delayed(node) -> bool:
    """Whether the writeback kernel covers ``node``: one delayed range, no
    extents or extent-tree blocks, no dirty pages."""
    d = node.delayed
    return d is not None and len(d) == 1 and not node.extents and not node.meta_blocks and not node.dirty


def _finished(code) -> bool:
    """Whether a kernel's run ended (:data:`DONE`); ENOSPC for :data:`NOSPACE`."""
    if code == CK.NOSPACE:
        raise os_error(errno.ENOSPC, "")
    return code == CK.DONE


def _made(P) -> int:
    """Inodes the copy made (the destination's included; a hard link makes none)."""
    return int(np.count_nonzero((P.kind != POP) & (P.kind != LINK)))


class _State:
    """The arrays the kernel takes besides the plan's: the dirty set as marks
    and a list, the scalars, the constants, the geometry, the write log."""

    __slots__ = ("dmark", "dlist", "wlog", "sc", "kc", "inode_table", "inode_bitmap", "block_bitmap", "nmarked")


_LAG = ("freei", "freeb", "ndirs")


class BulkClone:
    """ext4's ``_clone_tree`` in accounting mode, mixed into :class:`~.ext4.Ext4`."""

    def _clone_tree(self, snode, src: str, dst: str) -> int:
        """The kernel's copy where it can run (not into the source itself)."""
        s, d = "/".join(self._split(src)), "/".join(self._split(dst))
        if not s or d.startswith(s + "/") or not self._bulk_usable():
            return super()._clone_tree(snode, src, dst)
        return self._bulk_clone(snode, dst)

    def _bulk_usable(self) -> bool:
        """Whether the kernel can go on copying now: accounting mode on a
        plain device (whose writes, issued after the kernel, cannot fail as a
        thin device's can), commits that checkpoint at once with nothing left
        from the last, no discards waiting, a block bitmap of its own."""
        return (not self.payload and type(self.device) is PlainDevice and self.checkpoint_on_commit
                and not self._ail and not self._pending_discard and not self._bitmap_shared)

    def _bulk_clone(self, snode, dst: str) -> int:
        """:meth:`~thinp.fs.core.Filesystem._clone_tree` by the kernel (see the module docstring)."""
        parent, name = self._parent_of(dst)
        root = self._make_dir_in(parent, name, _stat.S_IMODE(snode.mode), snode.uid, snode.gid, dst)
        P = self._bulk_plan(snode, root, dst)
        n = len(P.kind)
        st = self._bulk_state()
        k = 1               # item 0, the destination, is made
        kernel = CK.clone_plan
        while k < n:
            if not self._bulk_usable():
                return self._bulk_rest(P, k)
            self._bulk_load(st)
            code, k_end = kernel(P.kind, P.parent, P.dsize, P.crc, P.size, P.link_to, P.flags, k,
                                 P.ino, P.loc, P.zone, P.dbytes, P.moff, P.mlen, P.mdata,
                                 self.bitmap, self.first_free, self.zone_used, self.zone_norun, self.ibitmap,
                                 self.ifirst_free, self.izone_used, self.group_dirs, st.inode_table, st.inode_bitmap,
                                 st.block_bitmap,
                                 st.dmark, st.dlist, st.sc, st.kc, st.wlog)
            self._bulk_store(st)
            self._bulk_materialize(P, k, k_end)
            k = k_end
            if _finished(code):
                break
            if code == CK.AFTER:
                j = k - 1
                if P.kind[j] == REG and P.size[j] > 0 and \
                        self._delayed_total + self._dirty_total >= self.writeback_blocks:
                    self.writeback()
                    self._maybe_commit()
                if P.flags[j] & CK.F_XATTR:
                    d = int(P.parent[j]) if P.kind[j] == POP else j
                    self._clone_xattrs(P.srcs[j], P.nodes[d])
                    if not _reload(P, d):
                        return self._bulk_rest(P, k)
            else:   # BEFORE: this item as the per-entry calls
                self._bulk_item(P, k)
                if not (_reload(P, int(P.parent[k])) and (P.nodes[k] is None or _reload(P, k))):
                    return self._bulk_rest(P, k + 1)
                k += 1
        return _made(P)

    def writeback(self) -> None:
        """:meth:`~thinp.fs.core.Filesystem.writeback` by the kernel
        (:func:`._clone_kernels.writeback_plan`) for the inodes it covers --
        one delayed range, no extents yet, no dirty pages, as a copy's or a
        new file's -- and by ``_flush_inode`` for the others, in the same
        order.  The result is the per-inode writeback's, field for field
        (tests/fs/test_bulk_writeback.py)."""
        nodes = list(self._delayed_inodes.values())
        if not self._bulk_usable():
            for node in nodes:
                self._flush_inode(node)
            return
        run = []
        for node in nodes:
            if _plain_delayed(node):
                run.append(node)
                continue
            if run:
                self._bulk_writeback(run)
                run = []
            self._flush_inode(node)
        if run:
            self._bulk_writeback(run)

    def _bulk_writeback(self, nodes: list) -> None:
        """Write back ``nodes`` (each one delayed range, nothing mapped), in
        order; a few by ``_flush_inode`` (the kernel's set-up costs more)."""
        n = len(nodes)
        if n < 8:
            for node in nodes:
                self._flush_inode(node)
            return
        ranges = [node.delayed[0] for node in nodes]
        lblk0 = np.array([r0 for r0, _ in ranges], dtype=np.int64)
        nblk = np.array([r1 for _, r1 in ranges], dtype=np.int64) - lblk0
        fsize = np.array([node.size for node in nodes], dtype=np.int64)
        zone = np.array([node.zone for node in nodes], dtype=np.int64)
        isreg = np.array([_S_IFMT(node.mode) == _S_IFREG for node in nodes], dtype=np.int64)
        loc = np.array([node.loc for node in nodes], dtype=np.int64)
        cap = 2 * n + 65536
        ext = np.zeros((cap, 3), dtype=np.int64)
        eoff = np.zeros(n + 1, dtype=np.int64)
        st = self._bulk_state()
        lg = np.array(self._lg, dtype=np.int64)
        k = 0
        while k < n:
            if not self._bulk_usable():
                for node in nodes[k:]:
                    self._flush_inode(node)
                return
            self._bulk_load(st)
            if len(st.wlog) < 2 * cap:
                st.wlog = np.zeros((2 * cap, 2), dtype=np.int64)
            lg[0], lg[1] = self._lg
            code, k_end = CK.writeback_plan(k, nblk, lblk0, fsize, zone, isreg, loc, ext, eoff, lg,
                                            self.bitmap, self.first_free, self.zone_used, self.zone_norun,
                                            NORUN_UNKNOWN, st.block_bitmap, st.dmark, st.dlist,
                                            st.sc, st.kc, st.wlog)
            self._lg = [int(lg[0]), int(lg[1])]
            self._bulk_store(st)
            self._wb_materialize(nodes, nblk, ext, eoff, k, k_end)
            k = k_end
            if _finished(code):
                break
            if code == CK.AFTER:
                node = nodes[k - 1]
                self._extent_tree_layout(node)
                self._touch_inode(node)
            elif code == CK.BEFORE:
                self._flush_inode(nodes[k])
                k += 1

    def _wb_materialize(self, nodes, nblk, ext, eoff, k0: int, k1: int) -> None:
        """Inodes ``[k0, k1)``, written back by the kernel: their extents and counts."""
        if k1 <= k0:
            return
        delayed_inodes = self._delayed_inodes
        rows = ext[:int(eoff[k1])].tolist()
        offs = eoff[k0:k1 + 1].tolist()
        nbs = nblk[k0:k1].tolist()
        for i in range(k1 - k0):
            node = nodes[k0 + i]
            node.delayed = None
            delayed_inodes.pop(node.ino, None)
            node.extents = rows[offs[i]:offs[i + 1]]
            node.nr_data_blocks += nbs[i]
            node.pending = None
        self.data_blocks += sum(nbs)

    def _bulk_plan(self, snode, root, dst: str) -> _Plan:
        """The source tree's entries in the order the copy makes them."""
        inodes = self.inodes
        # one row per item: kind, parent, dsize, crc, size, link_to, flags, room for blocks
        rows = [(DIR, 0, 0, 0, 0, -1, 0, 0)]
        names, srcs = [None], [snode]
        paths = {0: dst}
        first: dict[int, int] = {}
        stack = [0]
        S_IFMT = _stat.S_IFMT
        crc32 = zlib.crc32
        usable_bytes = CK.DIR_BLOCK_USABLE
        room: dict[int, int] = {}
        while stack:
            j = stack.pop()
            node = srcs[j]
            rows.append((POP, j, 0, 0, 0, -1, CK.F_XATTR if node.xattrs else 0, 0))
            names.append(None)
            srcs.append(node)
            total = 0
            base = paths[j] + "/"
            for name, ino in node.entries.items():
                c = inodes[ino]
                b = name.encode()
                ds = 8 + ((len(b) + 3) & ~3)
                total += ds
                k = len(rows)
                m = S_IFMT(c.mode)
                if m == _S_IFDIR:
                    stack.append(k)
                    paths[k] = base + name
                    rows.append((DIR, j, ds, crc32(b), 0, -1, 0, 0))
                elif c.nlink > 1 and c.ino in first:
                    rows.append((LINK, j, ds, crc32(b), 0, first[c.ino], 0, 0))
                else:
                    fl = CK.F_XATTR if c.xattrs else 0
                    if m == _S_IFREG:
                        rows.append((REG, j, ds, crc32(b), c.size, -1, fl, 0))
                    elif m == _S_IFLNK:
                        rows.append((LNK, j, ds, crc32(b), len(c.target.encode()), -1, fl, 2))
                    else:
                        rows.append((OTHER, j, ds, crc32(b), 0, -1, fl, 0))
                    if c.nlink > 1:
                        first[c.ino] = k
                names.append(name)
                srcs.append(c)
            # room for every block the directory's entries can take, and spare
            have = len(root.meta_blocks) if j == 0 else 0
            start = root.dir_bytes if j == 0 else CK.EMPTY_DIR_BYTES
            room[j] = have + (start + total + usable_bytes - 1) // usable_bytes + 6
        cols = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=8 * len(rows)).reshape(-1, 8)
        cap = cols[:, 7].copy()
        for j, r in room.items():
            cap[j] = r
        P = _Plan()
        P.kind, P.parent, P.dsize, P.crc, P.size, P.link_to, P.flags = (np.ascontiguousarray(cols[:, i])
                                                                          for i in range(7))
        P.names, P.srcs, P.paths = names, srcs, paths
        n = len(rows)
        P.moff = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(cap, out=P.moff[1:])
        P.mdata = np.zeros(int(P.moff[-1]), dtype=np.int64)
        P.mlen = np.zeros(n, dtype=np.int64)
        P.ino = np.zeros(n, dtype=np.int64)
        P.loc = np.zeros(n, dtype=np.int64)
        P.zone = np.zeros(n, dtype=np.int64)
        P.dbytes = np.zeros(n, dtype=np.int64)
        P.nodes = [None] * n
        P.nodes[0] = root
        _reload(P, 0)
        return P

    def _bulk_rest(self, P, k) -> int:
        for j in range(k, len(P.kind)):
            self._bulk_item(P, j)
        return _made(P)

    def _bulk_item(self, P, k) -> None:
        """Item ``k`` by the per-entry calls (what ``_clone_entries`` does for one entry)."""
        t = int(P.kind[k])
        c = P.srcs[k]
        p = int(P.parent[k])
        if t == POP:
            if c.xattrs:
                self._clone_xattrs(c, P.nodes[p])
            return
        pn = P.nodes[p]
        name = P.names[k]
        path = P.paths[p] + "/" + name
        m = c.mode
        imode = m & 0o7777
        if t == DIR:
            P.nodes[k] = self._make_dir_in(pn, name, imode, c.uid, c.gid, path)
            return
        if t == LINK:
            self._link_in(P.nodes[int(P.link_to[k])], pn, name, path)
            return
        if t == REG:
            new = self._make_leaf_in(pn, name, _S_IFREG | imode, c.uid, c.gid, path)
            if c.size:
                self._clone_stamps(c, new)
        elif t == LNK:
            new = self._make_leaf_in(pn, name, _S_IFLNK | 0o777, c.uid, c.gid, path)
            self._symlink_body(new, c.target)
        else:
            new = self._make_leaf_in(pn, name, _stat.S_IFMT(m) | imode, c.uid, c.gid, path)
            new.rdev = int(c.rdev)
        P.nodes[k] = new
        if c.xattrs:
            self._clone_xattrs(c, new)

    def _bulk_materialize(self, P, k0: int, k1: int) -> None:
        """The inodes and directory entries of items ``[k0, k1)``, which the
        kernel has done, from its numbers."""
        if k1 <= k0:
            return
        now = _time.time()
        inodes = self.inodes
        delayed_inodes = self._delayed_inodes
        nodes, names, srcs = P.nodes, P.names, P.srcs
        kinds = P.kind[k0:k1].tolist()
        pars = P.parent[k0:k1].tolist()
        inos = P.ino[k0:k1].tolist()
        locs = P.loc[k0:k1].tolist()
        zones = P.zone[k0:k1].tolist()
        sizes = P.size[k0:k1].tolist()
        links = P.link_to[k0:k1].tolist()
        new = Inode.__new__
        for i in range(k1 - k0):
            t = kinds[i]
            if t == POP:
                continue
            k = k0 + i
            pn = nodes[pars[i]]
            if t == LINK:
                tn = nodes[links[i]]
                tn.nlink += 1
                tn.ctime = now
                pn.entries[names[k]] = tn.ino
                continue
            c = srcs[k]
            node = new(Inode)
            ino = inos[i]
            node.ino = ino
            node.uid = c.uid
            node.gid = c.gid
            node.nlink = 1
            node.size = 0
            node.atime = node.mtime = node.ctime = now
            node.rdev = 0
            node.target = None
            node.xattrs = None
            node.extents = []
            node.stamps = None
            node.entries = None
            node.parent = pn.ino
            node.dir_bytes = 0
            node.meta_blocks = []
            node.loc = locs[i]
            node.zone = zones[i]
            node.nr_data_blocks = 0
            node.delayed = None
            node.pending = None
            node.dirty = None
            m = c.mode
            if t == REG:
                node.mode = _S_IFREG | (m & 0o7777)
                size = c.size
                if size:
                    nb = (size + BLOCK - 1) // BLOCK
                    node.size = size
                    node.delayed = [(0, nb)]
                    delayed_inodes.setdefault(ino, node)
                    s = c.stamps
                    if s is not None:
                        if nb == len(s) and s.dtype == np.uint64:
                            node.stamps = s.copy()
                        elif 1 <= nb <= len(s) and s.dtype == np.uint64:
                            node.stamps = s[:nb].copy()
                        else:
                            a = np.zeros(max(nb, 1), dtype=np.uint64)
                            kk = min(nb, len(s))
                            a[:kk] = s[:kk]
                            node.stamps = a
            elif t == DIR:
                node.mode = _S_IFDIR | (m & 0o7777)
                node.entries = {}
                node.nlink = 2
                pn.nlink += 1
            elif t == LNK:
                node.mode = _S_IFLNK | 0o777
                node.target = c.target
                node.size = sizes[i]
                if P.mlen[k]:
                    node.meta_blocks = [int(P.mdata[P.moff[k]])]
            else:
                node.mode = _stat.S_IFMT(m) | (m & 0o7777)
                node.rdev = int(c.rdev)
            inodes[ino] = node
            pn.entries[names[k]] = ino
            nodes[k] = node
        moff, mlen, mdata, dbytes = P.moff, P.mlen, P.mdata, P.dbytes
        kind = P.kind[k0:k1]
        grown = P.parent[k0:k1][kind != POP]       # directories that gained entries, and new ones
        for d in np.union1d(grown, np.flatnonzero(kind == DIR) + k0).tolist():
            node = nodes[d]
            node.mtime = node.ctime = now
            node.dir_bytes = int(dbytes[d])
            o = int(moff[d])
            node.meta_blocks = mdata[o:o + int(mlen[d])].tolist()

    def _bulk_state(self) -> "_State":
        g = self.geometry
        st = _State()
        cap = max(len(self._dirty), self.commit_blocks) + 4096
        st.dmark = np.zeros(self.nr_blocks, dtype=np.uint8)
        st.dlist = np.zeros(cap, dtype=np.int64)
        st.wlog = np.zeros((4 * cap, 2), dtype=np.int64)
        st.sc = np.zeros(CK.NR_S, dtype=np.int64)
        kc = np.zeros(CK.NR_C, dtype=np.int64)
        kc[CK.C_NR_BLOCKS] = self.nr_blocks
        kc[CK.C_ZONE_BLOCKS] = self.zone_blocks
        kc[CK.C_MAX_INODES] = self.max_inodes
        kc[CK.C_IPG] = g.inodes_per_group
        kc[CK.C_NR_GROUPS] = g.nr_groups
        kc[CK.C_FLEX] = g.flex_size
        kc[CK.C_COMMIT_BLOCKS] = self.commit_blocks
        kc[CK.C_WRITEBACK_BLOCKS] = self.writeback_blocks
        kc[CK.C_JOURNAL] = bool(self.journal_enabled)
        kc[CK.C_JSTART] = self.journal_start
        kc[CK.C_JBLOCKS] = g.journal_blocks
        kc[CK.C_RESERVED] = self._reserved_blocks()
        kc[CK.C_INLINE] = self._inline_limit()
        kc[CK.C_ROOT_INO] = self.ROOT_INO
        kc[CK.C_PERCPU_BATCH] = self.PERCPU_BATCH
        kc[CK.C_DESC_PER_BLOCK] = BLOCK // 64
        kc[CK.C_INODES_PER_BLOCK] = BLOCK // 256
        st.kc = kc
        st.inode_table = np.array(g.inode_table, dtype=np.int64)
        st.inode_bitmap = np.array(g.inode_bitmap, dtype=np.int64)
        st.block_bitmap = np.array(g.block_bitmap, dtype=np.int64)
        st.nmarked = 0
        return st

    def _bulk_load(self, st: "_State") -> None:
        """The kernel's view of the filesystem's scalars and dirty set."""
        sc = st.sc
        st.dmark[st.dlist[:st.nmarked]] = 0
        d = np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))
        if len(d) + 64 > len(st.dlist):
            st.dlist = np.zeros(len(d) + 4096, dtype=np.int64)
            st.wlog = np.zeros((4 * len(st.dlist), 2), dtype=np.int64)
        st.dlist[:len(d)] = d
        st.dmark[d] = 1
        st.nmarked = len(d)
        c = self.counters
        sc[:] = 0
        sc[CK.S_USED] = self.used_blocks
        sc[CK.S_NINODES] = len(self.inodes)
        sc[CK.S_DELAYED] = self._delayed_total
        sc[CK.S_DIRTY_PAGES] = self._dirty_total
        sc[CK.S_STAMP] = self._stamp_counter
        sc[CK.S_FILE_BYTES] = self.file_bytes
        sc[CK.S_DATA_WRITTEN] = c["data_blocks_written"]
        sc[CK.S_DCOUNT] = len(d)
        sc[CK.S_JPOS] = self._jpos
        sc[CK.S_JOURNAL_WRITTEN] = c["journal_blocks_written"]
        sc[CK.S_COMMITS] = c["commits"]
        sc[CK.S_META_WRITTEN] = c["metadata_blocks_written"]
        for i, name in enumerate(_LAG):
            v = self._percpu.get(name)
            if v is not None:
                sc[CK.S_LAG + i] = v
                sc[CK.S_LAG_SET + i] = 1

    def _bulk_store(self, st: "_State") -> None:
        """The kernel's device writes issued, its scalars and dirty set back."""
        sc = st.sc
        # the journal's, the checkpoint's and the data's writes, in order (each n > 0)
        self.device.write_runs(st.wlog[:sc[CK.S_WCOUNT]].tolist())
        self.used_blocks = int(sc[CK.S_USED])
        self._delayed_total = int(sc[CK.S_DELAYED])
        self._stamp_counter = int(sc[CK.S_STAMP])
        self.file_bytes = int(sc[CK.S_FILE_BYTES])
        c = self.counters
        c["data_blocks_written"] = int(sc[CK.S_DATA_WRITTEN])
        c["journal_blocks_written"] = int(sc[CK.S_JOURNAL_WRITTEN])
        c["commits"] = int(sc[CK.S_COMMITS])
        c["metadata_blocks_written"] = int(sc[CK.S_META_WRITTEN])
        self._jpos = int(sc[CK.S_JPOS])
        st.nmarked = int(sc[CK.S_DCOUNT])
        self._dirty = set(st.dlist[:st.nmarked].tolist())
        for i, name in enumerate(_LAG):
            if sc[CK.S_LAG_SET + i]:
                self._percpu[name] = int(sc[CK.S_LAG + i])

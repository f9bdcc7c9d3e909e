"""The filesystem model shared by ext4 and xfs: namespace, inodes, extents,
content, journal, discard, check.

State, per :class:`Filesystem`:

* ``bitmap``: uint8[nr_blocks], 1 = 4 KiB fs block in use (static metadata,
  inode tables/chunks, journal, directory/file/xattr/extent-tree blocks);
  ``first_free``: int64[nr_zones] scan hints (see :mod:`._kernels`).
* ``inodes``: dict ino -> :class:`Inode`.  A file's ``extents`` is a sorted
  list of ``[lblk, pblk, nr_blocks]``; a directory's ``entries`` maps name ->
  ino; ``meta_blocks`` lists the fs blocks an inode owns besides its data
  (directory blocks, an xattr block, extent-tree leaves, a symlink block).
* ``static_runs``: list of (start, nr_blocks) owned by the filesystem itself
  (superblocks, descriptors, bitmaps, inode tables or chunks, journal/log).
* ``_dirty``: set of fs block numbers of metadata changed since the last
  journal commit; a commit writes them to the journal and moves them to
  ``_ail``, the committed blocks not yet written home (a checkpoint writes
  the ones still in use).
* delayed allocation: ``Inode.delayed`` holds [begin, end) logical block
  ranges written but not yet allocated (``Inode.pending`` their bytes on a
  payload device); ``_delayed_inodes`` is the writeback order and
  ``_delayed_total`` the blocks reserved for them.
* dirty pages: ``Inode.dirty`` is the set of mapped logical blocks rewritten
  since their last writeback (their bytes in ``Inode.pending`` on a payload
  device).  A write to a mapped block dirties its page, as a write to a
  delayed one does; writeback (``sync``, ``fsync``, the dirty limit) writes
  each dirty page once, so 800 appends of 5 bytes into one block cost one
  4 KiB write on ext4 and xfs alike, as the kernel's page cache makes them.
* content: on a payload device the bytes live on the device; otherwise
  ``Inode.stamps`` is a uint64 array, one version stamp per 4 KiB logical
  block (0 = zeros or a hole).

Block numbers are fs blocks of 4 KiB; the device sees byte offsets
``block * 4096``.  Subclasses supply the on-disk geometry and the allocation
policy (:mod:`.ext4`, :mod:`.xfs`).
"""
from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import stat as _stat
import time as _time
import zlib
from typing import NamedTuple

import numpy as np

from ..config import PAGE_SIZE
from ..errors import MetadataCorruptError
from . import _kernels as K

BLOCK = PAGE_SIZE
_PACK = 4294967296
NAME_MAX = 255
SYMLOOP_MAX = 40


def os_error(code: int, path: str) -> OSError:
    """``OSError(code)`` with the kernel's message, naming ``path``."""
    import os

    return OSError(code, os.strerror(code), path)


class StatResult(NamedTuple):
    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime: float
    st_mtime: float
    st_ctime: float
    st_blocks: int
    st_rdev: int


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "size", "atime", "mtime", "ctime", "rdev",
                 "target", "xattrs", "extents", "stamps", "entries", "parent", "dir_bytes",
                 "meta_blocks", "loc", "zone", "nr_data_blocks", "delayed", "pending", "dirty")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0):
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 1
        self.size = 0
        now = _time.time()
        self.atime = self.mtime = self.ctime = now
        self.rdev = 0
        self.target = None
        self.xattrs = None
        self.extents = []
        self.stamps = None
        self.entries = None
        self.parent = 0
        self.dir_bytes = 0
        self.meta_blocks = []
        self.loc = 0          # fs block holding the on-disk inode
        self.zone = 0         # block group (ext4) or AG (xfs) of the inode
        self.nr_data_blocks = 0
        self.delayed = None   # delayed allocation: sorted [begin, end) logical block ranges
        self.pending = None   # payload of delayed and dirty blocks: lblk -> bytearray(4096)
        self.dirty = None     # mapped logical blocks rewritten since their last writeback (a set)

    def _copy(self) -> "Inode":
        """An independent copy (for :meth:`Filesystem.clone`)."""
        n = Inode.__new__(Inode)
        n.ino, n.mode, n.uid, n.gid, n.nlink, n.size = self.ino, self.mode, self.uid, self.gid, self.nlink, self.size
        n.atime, n.mtime, n.ctime, n.rdev, n.target = self.atime, self.mtime, self.ctime, self.rdev, self.target
        n.xattrs = dict(self.xattrs) if self.xattrs is not None else None
        n.extents = [list(e) for e in self.extents]
        n.stamps = self.stamps.copy() if self.stamps is not None else None
        n.entries = dict(self.entries) if self.entries is not None else None
        n.parent, n.dir_bytes, n.meta_blocks = self.parent, self.dir_bytes, list(self.meta_blocks)
        n.loc, n.zone, n.nr_data_blocks = self.loc, self.zone, self.nr_data_blocks
        n.delayed = list(self.delayed) if self.delayed is not None else None
        n.pending = {k: bytearray(v) for k, v in self.pending.items()} if self.pending is not None else None
        n.dirty = set(self.dirty) if self.dirty is not None else None
        return n

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    @property
    def is_reg(self) -> bool:
        return _stat.S_ISREG(self.mode)


def block_stamp(buf) -> int:
    """Content stamp of one block's bytes (zeros -> 0, so holes compare equal)."""
    b = bytes(buf)
    if not b.strip(b"\0"):
        return 0
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") | 1


def mix_stamp(old: int, stamp: int, lo: int, hi: int) -> int:
    """The stamp of a block whose bytes [lo, hi) were overwritten by content
    ``stamp`` over content ``old`` (a partial-block write or truncate)."""
    h = hashlib.blake2b(f"{old}:{stamp}:{lo}:{hi}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") | 1


@contextlib.contextmanager
def _no_cyclic_gc():
    """Keep the cyclic garbage collector off for a bulk step (a tree clone)
    and restore it as found.  Such a step allocates a few objects
    per inode and makes no cyclic garbage, so the collector's passes would
    only rescan a heap of hundreds of thousands of live inodes: a third of
    a vfs layer copy's time."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            # what the step made is long-lived: move it straight to the oldest
            # generation (freeze + unfreeze splices the generations' lists and
            # zeroes the young count) rather than have the first allocation
            # after enable() run a young collection over all of it, which
            # finds nothing (a tenth of a vfs run).  Not done when the
            # program has frozen objects of its own: unfreeze would thaw them.
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


_META_FILL = (b"thinp-fs-metadata" * 241)[:BLOCK]


class CowInodes:
    """ino -> :class:`Inode` for a cloned filesystem: shares a frozen dict with
    its origin and copies an inode the first time it is fetched, so a clone
    costs nothing per inode until it is used.

    ``values()``/``items()``/``peek()`` return shared objects for reading only;
    ``[ino]`` and ``get`` return this table's own copy (safe to change)."""

    __slots__ = ("own", "base", "gone", "n")

    def __init__(self, base: dict):
        self.own: dict = {}
        self.base = base
        self.gone: set = set()
        self.n = len(base)

    def __getitem__(self, ino):
        node = self.own.get(ino)
        if node is None:
            if ino in self.gone:
                raise KeyError(ino)
            node = self.own[ino] = self.base[ino]._copy()
        return node

    def peek(self, ino):
        node = self.own.get(ino)
        if node is None:
            if ino in self.gone:
                raise KeyError(ino)
            node = self.base[ino]
        return node

    def get(self, ino, default=None):
        try:
            return self[ino]
        except KeyError:
            return default

    def __contains__(self, ino) -> bool:
        return ino in self.own or (ino in self.base and ino not in self.gone)

    def __setitem__(self, ino, node) -> None:
        if ino not in self:
            self.n += 1
        self.own[ino] = node
        self.gone.discard(ino)

    def __delitem__(self, ino) -> None:
        if ino not in self:
            raise KeyError(ino)
        self.own.pop(ino, None)
        if ino in self.base:
            self.gone.add(ino)
        self.n -= 1

    def __len__(self) -> int:
        return self.n

    def keys(self):
        own = list(self.own)         # fetching during iteration copies into own: iterate a snapshot
        yield from own
        own_set, gone = set(own), set(self.gone)
        for ino in self.base:
            if ino not in own_set and ino not in gone:
                yield ino

    __iter__ = keys

    def values(self):
        for ino in self.keys():
            yield self.peek(ino)

    def items(self):
        for ino in self.keys():
            yield ino, self.peek(ino)

    def frozen(self) -> dict:
        """A plain dict of the current state (shared objects), to freeze as a new base."""
        d = {ino: node for ino, node in self.base.items() if ino not in self.gone}
        d.update(self.own)
        return d


class Filesystem:
    """A mounted ext4- or xfs-like filesystem on a :class:`~thinp.blockdev.BlockDevice`.

    Made by :func:`thinp.fs.mkfs`.  Paths are ``/``-separated, relative to
    this filesystem's root (a leading ``/`` is optional).  Errors are
    ``OSError`` with the errno the kernel would give.
    """

    fstype = "?"
    ROOT_INO = 2
    #: the directory paths resolve from (``chroot``): None = the root.  Set
    #: per instance (devicemapper mounts each device's ``/rootfs``, as
    #: Docker does); absolute symlinks and ".." stay below it.
    chroot_ino: int | None = None

    # -- set-up (subclasses call these from their mkfs) ---------------------
    def _init_common(self, device, nr_blocks: int, zone_blocks: int, *, discard_mount: bool,
                     journal: bool, seed: int):
        self.device = device
        self.nr_blocks = nr_blocks
        self.zone_blocks = zone_blocks
        self.nr_zones = (nr_blocks + zone_blocks - 1) // zone_blocks
        self.bitmap = np.zeros(nr_blocks, dtype=np.uint8)
        self.first_free = np.arange(self.nr_zones, dtype=np.int64) * zone_blocks
        self.zone_used = np.zeros(self.nr_zones, dtype=np.int64)
        self.used_blocks = 0      # zone_used.sum(), kept by _mark (statfs and every write read it)
        # per zone, a run length no free run starting there reaches (see _kernels.find_run)
        self.zone_norun = np.full(self.nr_zones, K.NORUN_UNKNOWN, dtype=np.int64)
        self.static_runs: list[tuple[int, int]] = []
        self.inodes: dict[int, Inode] = {}
        self._dirty: set[int] = set()
        self._ail: set[int] = set()       # committed, not yet written home
        # ext4 remembers, per group, that fstrim found nothing new to trim
        self._trimmed = np.zeros(self.nr_zones, dtype=bool) if self.remembers_trim else None
        self._trim_minlen = np.zeros(self.nr_zones, dtype=np.int64)
        self._pending_discard: list[tuple[int, int]] = []
        self._xattr_blocks: set[int] = set()
        self._delayed_inodes: dict[int, Inode] = {}   # insertion order = writeback order
        self._delayed_total = 0
        self._dirty_total = 0     # pages in Inode.dirty sets
        self.discard_mount = discard_mount
        self.journal_enabled = journal
        self.payload = bool(device.payload)
        self._stamp_counter = 0
        self._pcache = None     # see _parent_of
        # running totals kept by every change, so statistics need no walk
        # (check() recomputes both): data blocks mapped by all inodes, and
        # bytes of regular files counted once per link (``du -l``'s logical view)
        self.data_blocks = 0
        self.file_bytes = 0
        self._rng = np.random.default_rng(seed)
        self.counters = {"data_blocks_written": 0, "metadata_blocks_written": 0,
                         "journal_blocks_written": 0, "commits": 0, "blocks_discarded": 0}
        self.mounted = True
        self._release_hooks: list = []   # see on_release

    # -- device I/O ---------------------------------------------------------
    def _dev_write_run(self, start: int, n: int) -> None:
        """Write ``n`` metadata (or zeroed) blocks at ``start``."""
        if n <= 0:
            return
        if self.payload:
            chunk = 256
            for s in range(start, start + n, chunk):
                k = min(chunk, start + n - s)
                self.device.write(s * BLOCK, _META_FILL * k)
        else:
            self.device.write(start * BLOCK, n * BLOCK)

    def _dev_zero_run(self, start: int, n: int) -> None:
        if n <= 0:
            return
        if self.payload:
            chunk = 256
            z = bytes(chunk * BLOCK)
            for s in range(start, start + n, chunk):
                k = min(chunk, start + n - s)
                self.device.write(s * BLOCK, z[: k * BLOCK])
        else:
            self.device.write(start * BLOCK, n * BLOCK)

    def _write_blocks(self, blocks) -> None:
        """Write a set of metadata blocks home, coalesced into runs."""
        if not blocks:
            return
        arr = np.fromiter(sorted(blocks), dtype=np.int64, count=len(blocks))
        runs = K.runs_of(arr)
        for i in range(runs.shape[0]):
            self._dev_write_run(int(runs[i, 0]), int(runs[i, 1]))
        self.counters["metadata_blocks_written"] += len(arr)

    # -- block allocation ---------------------------------------------------
    #: clone() shares the block bitmap; the first change on either side copies it
    _bitmap_shared = False

    def _mark(self, start: int, n: int, value: int) -> None:
        if self._bitmap_shared:
            self.bitmap = self.bitmap.copy()
            self._bitmap_shared = False
        changed = K.set_range(self.bitmap, self.first_free, self.zone_used, self.zone_blocks, start, n, value)
        if value:
            self.used_blocks += changed
        elif changed:
            self.used_blocks -= changed
            z0 = start // self.zone_blocks
            # freed blocks lengthen runs in their zones and runs from the zone before
            self.zone_norun[max(z0 - 1, 0):(start + n - 1) // self.zone_blocks + 1] = K.NORUN_UNKNOWN

    def _reserve_static(self, start: int, n: int) -> None:
        if n <= 0:
            return
        self._mark(start, n, 1)
        self.static_runs.append((start, n))

    def _find(self, goal: int, want: int, *, align: int = 1, min_len: int = 1, end: int | None = None):
        """First free run at or after ``goal`` (wrapping once); (start, len) or None."""
        end = self.nr_blocks if end is None else end
        r = K.find_run(self.bitmap, self.first_free, self.zone_used, self.zone_norun, self.zone_blocks, goal, end,
                       want, align, min_len)
        if r < 0 and goal > 0:
            r = K.find_run(self.bitmap, self.first_free, self.zone_used, self.zone_norun, self.zone_blocks, 0, goal,
                           want, align, min_len)
        if r < 0:
            return None
        return int(r // _PACK), int(r % _PACK)

    def _alloc_run(self, goal: int, want: int, *, align: int = 1):
        """Allocate up to ``want`` blocks as one run near ``goal``; (start, len)."""
        got = None
        if align > 1:
            got = self._find(goal, want, align=align, min_len=want)
        if got is None:
            got = self._find(goal, want, min_len=want)
        if got is None:
            got = self._find(goal, want, min_len=1)
        if got is None:
            raise os_error(errno.ENOSPC, "")
        self._mark(got[0], got[1], 1)
        self._dirty_alloc(got[0], got[1])
        return got

    def _alloc_meta_block(self, goal: int) -> int:
        s, _ = self._alloc_run(goal, 1)
        return s

    def _free_run(self, start: int, n: int) -> None:
        self._mark(start, n, 0)
        if self._trimmed is not None:
            self._trimmed[start // self.zone_blocks:(start + n - 1) // self.zone_blocks + 1] = False
        self._dirty_alloc(start, n)
        if self.discard_mount:
            self._pending_discard.append((start, n))

    def statfs(self) -> dict:
        used = self.used_blocks - self._prealloc_blocks() + self._delayed_total
        return {"f_bsize": BLOCK, "f_blocks": self.nr_blocks, "f_bfree": self.nr_blocks - used,
                "f_files": self.max_inodes, "f_ffree": self.max_inodes - len(self.inodes)}

    #: ext4 skips groups already trimmed with nothing freed since; xfs trims all
    remembers_trim = False

    def _prealloc_blocks(self) -> int:
        """Blocks held in memory by preallocation windows (free on disk)."""
        return 0

    # -- hooks a subclass provides ------------------------------------------
    max_inodes = 0

    def _alloc_inode(self, parent: Inode, is_dir: bool) -> tuple[int, int, int]:  # ino, loc, zone
        raise NotImplementedError

    def _free_inode(self, node: Inode) -> None:
        raise NotImplementedError

    def _alloc_file_inodes(self, parent: Inode, count: int) -> list:
        """Inodes for ``count`` files made in ``parent`` one after another,
        taken at once (see :meth:`.ext4.Ext4._alloc_file_inodes`); a
        filesystem without a batch allocator takes none, and each file then
        takes its own with :meth:`_alloc_inode`."""
        return []

    def _take_inode(self, idx: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def _unalloc_inodes(self, idxs) -> None:
        raise NotImplementedError

    def _data_goal(self, node: Inode, lblk: int) -> int:
        raise NotImplementedError

    def _alloc_data(self, node: Inode, lblk: int, n: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _dirty_alloc(self, start: int, n: int) -> None:
        """Dirty the allocation metadata (bitmaps, btrees, descriptors) for a change."""
        raise NotImplementedError

    def _dir_capacity_blocks(self, node: Inode) -> int:
        """How many directory blocks ``node`` needs for its entries now."""
        raise NotImplementedError

    def _inline_limit(self) -> int:
        """Largest xattr/symlink payload kept inside the inode."""
        return 60

    def _journal_write(self, n: int) -> None:
        raise NotImplementedError

    # -- path resolution ----------------------------------------------------
    @staticmethod
    def _split(path: str) -> list[str]:
        try:
            parts = path.split("/")
        except AttributeError:
            raise TypeError(f"path must be str, not {type(path).__name__}") from None
        if parts[0] == "":          # the common absolute path: drop the leading ""
            del parts[0]
        if "" in parts or "." in parts:
            parts = [p for p in parts if p and p != "."]
        return parts

    def _lookup(self, path: str, *, follow: bool = True) -> Inode:
        return self._walk(self._split(path), follow, path, 0)

    def inode(self, path: str, *, follow: bool = True) -> Inode:
        """The :class:`Inode` at ``path`` (``follow``: resolve a final symlink).
        Drivers read its fields (mode, size, entries, xattrs, stamps) and hand
        it back to :meth:`write_inode` and :meth:`stat_inode`; they change it
        only through this filesystem's methods, or its ``stamps``."""
        return self._walk(self._split(path), follow, path, 0)

    def _walk(self, parts: list, follow: bool, path: str, depth: int) -> Inode:
        inodes = self.inodes
        top = self.chroot_ino
        node = inodes[self.ROOT_INO if top is None else top]
        last_i = len(parts) - 1
        for i, name in enumerate(parts):
            entries = node.entries
            if entries is None:
                raise os_error(errno.ENOTDIR, path)
            if name == "..":
                if node.ino != top:
                    node = inodes[node.parent]
                continue
            ino = entries.get(name)
            if ino is None:
                raise os_error(errno.ENOENT, path)
            child = inodes[ino]
            if child.target is not None and (follow or i < last_i):
                if depth >= SYMLOOP_MAX:
                    raise os_error(errno.ELOOP, path)
                tgt = self._split(child.target)
                newparts = (tgt if child.target.startswith("/") else parts[:i] + tgt) + parts[i + 1:]
                return self._walk(newparts, follow, path, depth + 1)
            node = child
        return node

    def _parent_of(self, path: str) -> tuple[Inode, str]:
        # one-entry cache of the last parent resolved (creating a tree makes
        # many entries in one directory in a row); keyed by the directory part
        # and the chroot, holding the ino (so CowInodes still copies on touch),
        # dropped whenever an entry is removed (that can change what a
        # directory path names; adding entries cannot)
        try:
            d, _sep, name = path.rpartition("/")
        except AttributeError:
            raise TypeError(f"path must be str, not {type(path).__name__}") from None
        c = self._pcache
        if c is not None and c[0] == d and c[1] == self.chroot_ino and name and name != "." \
                and name != ".." and len(name) <= NAME_MAX // 4:
            return self.inodes[c[2]], name
        parent, name = self._parent_of_slow(path)
        if d and name == path[len(d) + 1:]:
            self._pcache = (d, self.chroot_ino, parent.ino)
        return parent, name

    def _parent_of_slow(self, path: str) -> tuple[Inode, str]:
        parts = self._split(path)
        if not parts:
            raise os_error(errno.EEXIST if path.strip("/") == "" else errno.ENOENT, path)
        name = parts[-1]
        if name == "..":
            raise os_error(errno.EINVAL, path)
        if len(name) > NAME_MAX // 4 and len(name.encode()) > NAME_MAX:
            raise os_error(errno.ENAMETOOLONG, path)
        parent = self._walk(parts[:-1], True, path, 0)
        if parent.entries is None:
            raise os_error(errno.ENOTDIR, path)
        return parent, name

    def exists(self, path: str) -> bool:
        try:
            self._lookup(path, follow=False)
            return True
        except OSError:
            return False

    # -- namespace changes --------------------------------------------------
    def _touch_inode(self, node: Inode) -> None:
        self._dirty.add(node.loc)
        if len(self._dirty) >= self.commit_blocks:
            self.commit()

    def _dir_add(self, parent: Inode, name: str, ino: int) -> None:
        parent.entries[name] = ino
        parent.dir_bytes += self._dirent_size(name)
        try:
            self._dir_resize(parent)
        except OSError:
            del parent.entries[name]
            parent.dir_bytes -= self._dirent_size(name)
            raise
        self._dirty_dir_entry(parent, name)
        parent.mtime = parent.ctime = _time.time()
        self._touch_inode(parent)

    def _dir_remove(self, parent: Inode, name: str) -> None:
        self._pcache = None
        del parent.entries[name]
        parent.dir_bytes -= self._dirent_size(name)
        self._dirty_dir_entry(parent, name)
        parent.mtime = parent.ctime = _time.time()
        self._touch_inode(parent)

    def _dirty_dir_entry(self, parent: Inode, name: str) -> None:
        if parent.meta_blocks:
            nb = len(parent.meta_blocks)
            self._dirty.add(parent.meta_blocks[zlib.crc32(name.encode()) % nb if nb > 1 else 0])
            if nb > 1:
                self._dirty.add(parent.meta_blocks[0])

    def _dirent_size(self, name: str) -> int:
        return 8 + ((len(name.encode()) + 3) & ~3)

    def _dir_resize(self, node: Inode) -> None:
        need = self._dir_capacity_blocks(node)
        while len(node.meta_blocks) < need:
            goal = node.meta_blocks[-1] + 1 if node.meta_blocks else self._data_goal(node, 0)
            b = self._alloc_meta_block(goal)
            node.meta_blocks.append(b)
            self._dirty.add(b)

    def _new_inode(self, parent: Inode, mode: int, uid: int, gid: int) -> Inode:
        if len(self.inodes) >= self.max_inodes:
            raise os_error(errno.ENOSPC, "")
        ino, loc, zone = self._alloc_inode(parent, _stat.S_ISDIR(mode))
        node = Inode(ino, mode, uid, gid)
        node.loc = loc
        node.zone = zone
        node.parent = parent.ino
        self.inodes[ino] = node
        self._touch_inode(node)
        return node

    def _make(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> Inode:
        parent, name = self._parent_of(path)
        return self._make_in(parent, name, mode, uid, gid, path)

    def _make_in(self, parent: Inode, name: str, mode: int, uid: int, gid: int, path: str) -> Inode:
        """:meth:`_make` with the parent directory already resolved."""
        if name in parent.entries:
            raise os_error(errno.EEXIST, path)
        node = self._new_inode(parent, mode, uid, gid)
        try:
            if _stat.S_ISDIR(mode):
                node.entries = {}
                node.nlink = 2
                node.dir_bytes = self._empty_dir_bytes()
                self._dir_resize(node)
            self._dir_add(parent, name, node.ino)
        except OSError:   # out of space: leave nothing half-made
            for b in node.meta_blocks:
                self._free_run(b, 1)
            node.meta_blocks = []
            self._free_inode(node)
            del self.inodes[node.ino]
            raise
        if node.entries is not None:
            parent.nlink += 1
        return node

    def _empty_dir_bytes(self) -> int:
        return 24

    def create(self, path: str, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> int:
        """Create an empty regular file; EEXIST if the name is taken.  Returns its ino."""
        return self._make(path, _stat.S_IFREG | (mode & 0o7777), uid, gid).ino

    def mkdir(self, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> int:
        return self._make(path, _stat.S_IFDIR | (mode & 0o7777), uid, gid).ino

    def mknod(self, path: str, mode: int = _stat.S_IFCHR, rdev: int = 0, *, uid: int = 0, gid: int = 0) -> int:
        """Make a device node or fifo; ``mknod(p)`` makes the char 0/0 of a
        whiteout, mode 000 as the kernel's ``ovl_whiteout`` makes it."""
        kind = _stat.S_IFMT(mode) or _stat.S_IFCHR
        if kind not in (_stat.S_IFCHR, _stat.S_IFBLK, _stat.S_IFIFO, _stat.S_IFSOCK, _stat.S_IFREG):
            raise os_error(errno.EINVAL, path)
        node = self._make(path, kind | _stat.S_IMODE(mode), uid, gid)
        node.rdev = int(rdev)
        return node.ino

    def symlink(self, target: str, path: str, *, uid: int = 0, gid: int = 0) -> int:
        parent, name = self._parent_of(path)
        return self._symlink_in(parent, name, target, uid, gid, path).ino

    def _symlink_in(self, parent: Inode, name: str, target: str, uid: int, gid: int, path: str) -> Inode:
        node = self._make_in(parent, name, _stat.S_IFLNK | 0o777, uid, gid, path)
        self._symlink_body(node, target)
        return node

    def _symlink_body(self, node: Inode, target: str) -> None:
        """A new symlink inode takes its target (a block when it is too long for the inode)."""
        node.target = target
        node.size = len(target.encode())
        if node.size > self._inline_limit():
            b = self._alloc_meta_block(self._data_goal(node, 0))
            node.meta_blocks.append(b)
            self._dirty.add(b)

    def link(self, src: str, dst: str) -> None:
        node = self._lookup(src, follow=False)
        if node.is_dir:
            raise os_error(errno.EPERM, src)
        parent, name = self._parent_of(dst)
        self._link_in(node, parent, name, dst)

    def _link_in(self, node: Inode, parent: Inode, name: str, path: str) -> None:
        if name in parent.entries:
            raise os_error(errno.EEXIST, path)
        node.nlink += 1
        if node.is_reg:
            self.file_bytes += node.size
        node.ctime = _time.time()
        self._touch_inode(node)
        self._dir_add(parent, name, node.ino)

    def unlink(self, path: str) -> None:
        parent, name = self._parent_of(path)
        ino = parent.entries.get(name)
        if ino is None:
            raise os_error(errno.ENOENT, path)
        node = self.inodes[ino]
        if node.is_dir:
            raise os_error(errno.EISDIR, path)
        self._dir_remove(parent, name)
        self._drop_link(node)

    def _drop_link(self, node: Inode) -> None:
        if node.is_reg:
            self.file_bytes -= node.size
        node.nlink -= 1
        node.ctime = _time.time()
        self._touch_inode(node)
        if node.nlink <= 0:
            self._release(node)

    def on_release(self, fn) -> None:
        """Call ``fn(inode)`` when an inode is freed (its last link gone), before
        its number can be reused: the kernel's ``evict_inode``, where a driver
        drops the inode's cached pages.  A :meth:`clone` starts with none."""
        self._release_hooks.append(fn)

    def _release(self, node: Inode) -> None:
        for fn in getattr(self, "_release_hooks", ()):
            fn(node)
        self._drop_delayed(node, 0)
        self._truncate_blocks(node, 0)
        for b in node.meta_blocks:
            self._free_run(b, 1)
            self._xattr_blocks.discard(b)
        node.meta_blocks = []
        self._free_inode(node)
        del self.inodes[node.ino]

    def rmdir(self, path: str) -> None:
        parent, name = self._parent_of(path)
        ino = parent.entries.get(name)
        if ino is None:
            raise os_error(errno.ENOENT, path)
        node = self.inodes[ino]
        if not node.is_dir:
            raise os_error(errno.ENOTDIR, path)
        if node.entries:
            raise os_error(errno.ENOTEMPTY, path)
        self._dir_remove(parent, name)
        parent.nlink -= 1
        node.nlink = 0
        self._release(node)

    def rmtree(self, path: str) -> int:
        """``rm -rf path`` (path must be a directory); returns entries removed."""
        if not self._lookup(path, follow=False).is_dir:
            raise os_error(errno.ENOTDIR, path)
        n = 0
        for dpath, _dirs, files in reversed(list(self.walk(path))):
            for f in files:
                self.unlink(f"{dpath.rstrip('/')}/{f}")
                n += 1
            if dpath.strip("/"):
                self.rmdir(dpath)
                n += 1
        return n

    def rename(self, src: str, dst: str) -> None:
        sparent, sname = self._parent_of(src)
        ino = sparent.entries.get(sname)
        if ino is None:
            raise os_error(errno.ENOENT, src)
        node = self.inodes[ino]
        dparent, dname = self._parent_of(dst)
        if node.is_dir:  # may not move a directory below itself
            p = dparent
            while True:
                if p.ino == node.ino:
                    raise os_error(errno.EINVAL, dst)
                if p.ino == self.ROOT_INO:
                    break
                p = self.inodes[p.parent]
        old = dparent.entries.get(dname)
        if old == ino:
            return
        if old is not None:
            onode = self.inodes[old]
            if onode.is_dir and not node.is_dir:
                raise os_error(errno.EISDIR, dst)
            if node.is_dir and not onode.is_dir:
                raise os_error(errno.ENOTDIR, dst)
            if onode.is_dir:
                if onode.entries:
                    raise os_error(errno.ENOTEMPTY, dst)
                self._dir_remove(dparent, dname)
                dparent.nlink -= 1
                onode.nlink = 0
                self._release(onode)
            else:
                self._dir_remove(dparent, dname)
                self._drop_link(onode)
        self._dir_remove(sparent, sname)
        self._dir_add(dparent, dname, ino)
        if node.is_dir and sparent is not dparent:
            sparent.nlink -= 1
            dparent.nlink += 1
            node.parent = dparent.ino
            self._dirty_dir_entry(node, "..")
        node.ctime = _time.time()
        self._touch_inode(node)

    # -- attributes -----------------------------------------------------------
    def chmod(self, path: str, mode: int) -> None:
        node = self._lookup(path)
        node.mode = _stat.S_IFMT(node.mode) | (mode & 0o7777)
        node.ctime = _time.time()
        self._touch_inode(node)

    def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        node = self._lookup(path, follow=follow_symlinks)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid
        node.ctime = _time.time()
        self._touch_inode(node)

    def utime(self, path: str, times: tuple[float, float] | None = None, *, follow_symlinks: bool = True) -> None:
        node = self._lookup(path, follow=follow_symlinks)
        a, m = times if times is not None else (_time.time(),) * 2
        node.atime, node.mtime = a, m
        self._touch_inode(node)

    def setxattr(self, path: str, name: str, value: bytes, *, follow_symlinks: bool = True) -> None:
        self._setxattr_node(self._lookup(path, follow=follow_symlinks), name, value)

    def _setxattr_node(self, node: Inode, name: str, value: bytes) -> None:
        if node.xattrs is None:
            node.xattrs = {}
        node.xattrs[name] = bytes(value)
        self._xattr_layout(node)
        node.ctime = _time.time()
        self._touch_inode(node)

    def getxattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        node = self._lookup(path, follow=follow_symlinks)
        if not node.xattrs or name not in node.xattrs:
            raise os_error(errno.ENODATA, path)
        return node.xattrs[name]

    def listxattr(self, path: str, *, follow_symlinks: bool = True) -> list[str]:
        node = self._lookup(path, follow=follow_symlinks)
        return sorted(node.xattrs or ())

    def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        node = self._lookup(path, follow=follow_symlinks)
        if not node.xattrs or name not in node.xattrs:
            raise os_error(errno.ENODATA, path)
        del node.xattrs[name]
        self._xattr_layout(node)
        self._touch_inode(node)

    def _xattr_bytes(self, node: Inode) -> int:
        return sum(16 + len(k) + len(v) for k, v in (node.xattrs or {}).items())

    def _xattr_layout(self, node: Inode) -> None:
        """Keep an xattr block exactly when the xattrs no longer fit in the inode."""
        need = self._xattr_bytes(node) > self._xattr_inline_bytes()
        tagged = [b for b in node.meta_blocks if b in self._xattr_blocks]
        if need and not tagged:
            b = self._alloc_meta_block(node.loc)
            node.meta_blocks.append(b)
            self._xattr_blocks.add(b)
            self._dirty.add(b)
        elif need:
            self._dirty.add(tagged[0])
        elif tagged:
            b = tagged[0]
            node.meta_blocks.remove(b)
            self._xattr_blocks.discard(b)
            self._free_run(b, 1)

    def _xattr_inline_bytes(self) -> int:
        return 96

    def stat(self, path: str, *, follow_symlinks: bool = True) -> StatResult:
        node = self._lookup(path, follow=follow_symlinks)
        return self._stat(node)

    def lstat(self, path: str) -> StatResult:
        return self.stat(path, follow_symlinks=False)

    def stat_inode(self, node: Inode) -> StatResult:
        """:meth:`stat` of an inode already looked up (see :meth:`inode`)."""
        return self._stat(node)

    def _stat(self, node: Inode) -> StatResult:
        size = self._dir_size(node) if node.is_dir else node.size
        delayed = sum(r1 - r0 for r0, r1 in node.delayed) if node.delayed else 0
        blocks = (node.nr_data_blocks + delayed + len(node.meta_blocks)) * (BLOCK // 512)
        return StatResult(node.mode, node.ino, 0, node.nlink, node.uid, node.gid, size,
                          node.atime, node.mtime, node.ctime, blocks, node.rdev)

    def _dir_size(self, node: Inode) -> int:
        return max(len(node.meta_blocks), 1) * BLOCK

    def readlink(self, path: str) -> str:
        node = self._lookup(path, follow=False)
        if not _stat.S_ISLNK(node.mode):
            raise os_error(errno.EINVAL, path)
        return node.target

    def listdir(self, path: str = "/") -> list[str]:
        node = self._lookup(path)
        if not node.is_dir:
            raise os_error(errno.ENOTDIR, path)
        return sorted(node.entries)

    def _peek(self, ino: int) -> Inode:
        """An inode for reading only (no copy on a cloned filesystem)."""
        inodes = self.inodes
        return inodes.peek(ino) if isinstance(inodes, CowInodes) else inodes[ino]

    def walk(self, top: str = "/"):
        """Like ``os.walk`` (top-down, symlinks not followed): (dirpath, dirnames, filenames)."""
        node = self._lookup(top)
        if not node.is_dir:
            return
        stack = [("/" + "/".join(self._split(top)), node)]
        while stack:
            dpath, d = stack.pop()
            dirs, files = [], []
            for name in sorted(d.entries):
                c = self._peek(d.entries[name])
                (dirs if c.is_dir else files).append(name)
            yield dpath, dirs, files
            base = dpath.rstrip("/")
            for name in reversed(dirs):
                stack.append((base + "/" + name, self._peek(d.entries[name])))

    # -- file content -----------------------------------------------------------
    def clone_tree(self, src: str, dst: str) -> int:
        """Copy directory ``src`` to a new directory ``dst``, entry for entry,
        as ``cp -a`` within one filesystem (moby's ``DirCopy``): modes,
        owners, symlinks, device nodes, xattrs, and hard links within the
        tree kept.  File data is written as a copy writes it (delayed
        allocation, the same block placement); in accounting mode a file's
        version stamps are copied, so its content compares equal.

        The result -- inode numbers, block placement, counters, journal --
        is the one the per-path calls (``mkdir``, ``create``, ``write``,
        ``symlink``, ``mknod``, ``link``, ``setxattr``) give in the same
        order; this walks inodes instead of paths.  Returns the inodes made."""
        snode = self._lookup(src, follow=False)
        if snode.entries is None:
            raise os_error(errno.ENOTDIR, src)
        with _no_cyclic_gc():
            return self._clone_tree(snode, src, dst)

    def _clone_tree(self, snode: Inode, src: str, dst: str) -> int:
        parent, name = self._parent_of(dst)
        imode = _stat.S_IMODE
        root = self._make_dir_in(parent, name, imode(snode.mode), snode.uid, snode.gid, dst)
        made = 1
        links: dict[int, Inode] = {}
        inodes = self.inodes
        payload = self.payload
        stack = [(src, dst, snode, root)]
        # inode-table entries taken at once for the next run of files (no
        # directory between them), used last-first; any left on an error go back
        taken: list[int] = []
        try:
            while stack:
                s, d, node, dnode = stack.pop()
                if node.xattrs:
                    self._clone_xattrs(node, dnode)
                made += self._clone_entries(node, s, d, dnode, links, stack, taken, payload)
        finally:
            if taken:
                self._unalloc_inodes(taken)
        return made

    def _file_run(self, children: list, start: int, links: dict) -> int:
        """How many of ``children[start:]`` (inodes) are files that take an
        inode, before the next directory (hard links to an inode already
        copied, or to one earlier in the run, take none)."""
        seen = set()
        n = 0
        for c in children[start:]:
            if c.entries is not None:
                break
            if c.nlink > 1:
                if c.ino in links or c.ino in seen:
                    continue
                seen.add(c.ino)
            n += 1
        return n

    def _clone_entries(self, node, s, d, dnode, links, stack, taken, payload) -> int:
        """Copy the entries of directory ``node`` (at ``s``) into ``dnode`` (at
        ``d``); subdirectories are made and pushed on ``stack``."""
        imode = _stat.S_IMODE
        inodes = self.inodes
        made = 0
        names = list(node.entries)
        children = [inodes[ino] for ino in node.entries.values()]
        for i, name in enumerate(names):
            c = children[i]
            m = c.mode
            kind = _stat.S_IFMT(m)
            if kind == _stat.S_IFDIR:
                new = self._make_dir_in(dnode, name, imode(m), c.uid, c.gid, d + "/" + name)
                made += 1
                stack.append((s + "/" + name, d + "/" + name, c, new))
                continue
            if c.nlink > 1 and c.ino in links:
                self._link_in(links[c.ino], dnode, name, d + "/" + name)
                continue
            if not taken:
                run = min(self._file_run(children, i, links), self.max_inodes - len(inodes))
                if run > 1:
                    taken[:] = reversed(self._alloc_file_inodes(dnode, run))
            if kind == _stat.S_IFREG:
                new = self._make_leaf_in(dnode, name, _stat.S_IFREG | imode(m), c.uid, c.gid, d + "/" + name,
                                         taken)
                if c.size:
                    if payload:
                        self._write(new, 0, self.read(s + "/" + name, 0, c.size), None)
                    else:
                        self._clone_stamps(c, new)
            elif kind == _stat.S_IFLNK:
                new = self._make_leaf_in(dnode, name, _stat.S_IFLNK | 0o777, c.uid, c.gid, d + "/" + name,
                                         taken)
                self._symlink_body(new, c.target)
            else:
                new = self._make_leaf_in(dnode, name, kind | imode(m), c.uid, c.gid, d + "/" + name, taken)
                new.rdev = int(c.rdev)
            made += 1
            if c.xattrs:
                self._clone_xattrs(c, new)
            if c.nlink > 1:
                links[c.ino] = new
        return made

    def _make_leaf_in(self, parent: Inode, name: str, mode: int, uid: int, gid: int, path: str,
                      taken: list | None = None) -> Inode:
        """:meth:`_make_in` for anything but a directory, with ``_new_inode``
        and ``_dir_add`` inlined (the same calls in the same order, the same
        undo on ENOSPC): the bulk clone makes most of its inodes here.
        ``taken``: inode-table entries from :meth:`_alloc_file_inodes`; the
        first is used (popped) instead of allocating."""
        entries = parent.entries
        if name in entries:
            raise os_error(errno.EEXIST, path)
        inodes = self.inodes
        if len(inodes) >= self.max_inodes:
            raise os_error(errno.ENOSPC, "")
        if taken:
            ino, loc, zone = self._take_inode(taken.pop())
        else:
            ino, loc, zone = self._alloc_inode(parent, False)
        node = Inode(ino, mode, uid, gid)
        node.loc = loc
        node.zone = zone
        node.parent = parent.ino
        inodes[ino] = node
        self._dirty.add(loc)
        if len(self._dirty) >= self.commit_blocks:
            self.commit()
        entries[name] = ino
        nbytes = self._dirent_size(name)
        parent.dir_bytes += nbytes
        try:
            self._dir_resize(parent)
        except OSError:
            del entries[name]
            parent.dir_bytes -= nbytes
            for b in node.meta_blocks:
                self._free_run(b, 1)
            node.meta_blocks = []
            self._free_inode(node)
            del inodes[ino]
            raise
        meta = parent.meta_blocks
        if meta:
            nb = len(meta)
            if nb > 1:
                self._dirty.add(meta[zlib.crc32(name.encode()) % nb])
                self._dirty.add(meta[0])
            else:
                self._dirty.add(meta[0])
        parent.mtime = parent.ctime = _time.time()
        self._dirty.add(parent.loc)
        if len(self._dirty) >= self.commit_blocks:
            self.commit()
        return node

    def _make_dir_in(self, parent: Inode, name: str, mode: int, uid: int, gid: int, path: str) -> Inode:
        return self._make_in(parent, name, _stat.S_IFDIR | (mode & 0o7777), uid, gid, path)

    def _clone_xattrs(self, src: Inode, dst: Inode) -> None:
        for k, v in src.xattrs.items():
            self._setxattr_node(dst, k, v if isinstance(v, bytes) else str(v).encode())

    def _clone_stamps(self, src: Inode, dst: Inode) -> None:
        """Accounting mode: write ``src``'s size into ``dst`` (new, empty) and
        take its version stamps."""
        size = src.size
        if dst.size or dst.extents or dst.delayed or dst.dirty is not None or size <= 0:
            self._write(dst, 0, size, None)
        else:
            self._write_new(dst, size)
        st = src.stamps
        if st is None:
            dst.stamps = None
        else:
            n = (size + BLOCK - 1) // BLOCK
            if 1 <= n <= len(st) and st.dtype == np.uint64:
                dst.stamps = st[:n].copy()
                return
            new = np.zeros(max(n, 1), dtype=np.uint64)
            k = min(n, len(st))
            new[:k] = st[:k]
            dst.stamps = new

    def _write_new(self, node: Inode, size: int) -> None:
        """``_write(node, 0, size, None)`` into a new, empty inode, step for
        step (a fresh stamp, ``_delay``'s first-write path, the counters, the
        inode touched, writeback at the dirty limit, a commit at the journal's)
        without the stamps, which the caller replaces."""
        self._stamp_counter += 1
        n = (size + BLOCK - 1) // BLOCK
        if n > self.nr_blocks - self.used_blocks - self._delayed_total - self._reserved_blocks():
            if self._delayed_total:
                self.writeback()
            if n > self._free_blocks() - self._reserved_blocks():
                raise os_error(errno.ENOSPC, "")
        node.delayed = [(0, n)]
        self._delayed_total += n
        self._delayed_inodes.setdefault(node.ino, node)
        self.file_bytes += size * node.nlink
        node.size = size
        self.counters["data_blocks_written"] += n
        node.mtime = node.ctime = _time.time()
        dirty = self._dirty
        dirty.add(node.loc)
        if len(dirty) >= self.commit_blocks:
            self.commit()
        if self._delayed_total + self._dirty_total >= self.writeback_blocks:
            self.writeback()
        if len(self._dirty) >= self.commit_blocks:
            self.commit()

    def inode_for_write(self, path: str) -> Inode:
        """The regular file at ``path``, created (0644) if missing: the one path
        walk a driver makes before :meth:`write_inode`.  EISDIR/EINVAL for a
        directory or another non-regular file."""
        return self._file_for_write(path)

    def _file_for_write(self, path: str) -> Inode:
        try:
            node = self._lookup(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            node = self._make(path, _stat.S_IFREG | 0o644)
        if node.is_dir:
            raise os_error(errno.EISDIR, path)
        if not node.is_reg:
            raise os_error(errno.EINVAL, path)
        return node

    def write(self, path: str, offset: int, data, *, stamp: int | None = None) -> int:
        """Write ``data`` (bytes) or ``data`` bytes of opaque content (an ``int``)
        at ``offset``; creates the file if missing.  Returns bytes written.

        In accounting mode every 4 KiB block gets a version stamp: the hash of
        its bytes when bytes are given, else ``stamp`` (or a fresh counter).
        """
        node = self._file_for_write(path)
        return self._write(node, offset, data, stamp)

    def write_inode(self, node: Inode, offset: int, data, stamp: int | None = None) -> int:
        """:meth:`write` to an inode already looked up (:meth:`inode`,
        :meth:`inode_for_write`), without a second path walk."""
        return self._write(node, offset, data, stamp)

    def _write(self, node: Inode, offset: int, data, stamp) -> int:
        if offset < 0:
            raise os_error(errno.EINVAL, "")
        if isinstance(data, int) and not isinstance(data, bool):
            length = data
            buf = None
            if self.payload:
                raise ValueError("a payload filesystem needs bytes, not a length")
            if stamp is None:
                self._stamp_counter += 1
                stamp = self._stamp_counter
        else:
            buf = memoryview(data).cast("B")
            length = len(buf)
        if length < 0:
            raise os_error(errno.EINVAL, "")
        if length == 0:
            return 0
        end = offset + length
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        self._delay(node, b0, b1)
        if end > node.size:
            self.file_bytes += (end - node.size) * node.nlink
            node.size = end
        if self.payload:
            pend = node.pending
            for lo_b, hi_b in self._delayed_in(node, b0, b1):
                for b in range(lo_b, hi_b):
                    page = pend.get(b)
                    if page is None:
                        page = pend[b] = bytearray(BLOCK)
                    lo, hi = max(offset, b * BLOCK), min(end, (b + 1) * BLOCK)
                    page[lo - b * BLOCK:hi - b * BLOCK] = buf[lo - offset:hi - offset]
            for lblk, pblk, n in self._map_range(node, b0, b1):
                self._dirty_pages(node, lblk, pblk, n, offset, end, buf)
        else:
            st = self._stamps(node, b1)
            if buf is not None:
                for b in range(b0, b1):
                    lo, hi = max(offset, b * BLOCK), min(end, (b + 1) * BLOCK)
                    if hi - lo == BLOCK:
                        st[b] = block_stamp(buf[lo - offset:hi - offset])
                    else:
                        st[b] = mix_stamp(int(st[b]), block_stamp(buf[lo - offset:hi - offset]), lo % BLOCK, hi - b * BLOCK)
            else:
                first_old = int(st[b0])
                last_old = int(st[b1 - 1])
                st[b0:b1] = stamp
                if offset % BLOCK:
                    st[b0] = mix_stamp(first_old, stamp, offset % BLOCK, min(BLOCK, end - b0 * BLOCK))
                if end % BLOCK and (b1 - 1 != b0 or offset % BLOCK == 0):
                    st[b1 - 1] = mix_stamp(last_old, stamp, (offset - (b1 - 1) * BLOCK) if b1 - 1 == b0 else 0, end % BLOCK)
            for lblk, pblk, n in self._map_range(node, b0, b1):
                self._dirty_pages(node, lblk, pblk, n, offset, end, None)
        self.counters["data_blocks_written"] += b1 - b0
        node.mtime = node.ctime = _time.time()
        self._touch_inode(node)
        if self._delayed_total + self._dirty_total >= self.writeback_blocks:
            self.writeback()
        self._maybe_commit()
        return length

    #: delayed blocks that trigger writeback (the dirty-page limit)
    writeback_blocks = 65536

    def _dirty_pages(self, node: Inode, lblk: int, pblk: int, n: int, offset: int, end: int, buf) -> None:
        """Logical blocks [lblk, lblk + n), mapped at ``pblk``, take the bytes
        of a write covering [offset, end): their pages become dirty and reach
        the device at writeback (on a payload device a partly written page
        not yet dirty is read first, as the kernel reads a page that is not
        up to date before a partial write)."""
        d = node.dirty
        if d is None:
            d = node.dirty = set()
            self._delayed_inodes.setdefault(node.ino, node)
        before = len(d)
        d.update(range(lblk, lblk + n))
        self._dirty_total += len(d) - before
        if buf is None:
            return
        pend = node.pending
        if pend is None:
            pend = node.pending = {}
        for i in range(n):
            b = lblk + i
            lo, hi = max(offset, b * BLOCK), min(end, (b + 1) * BLOCK)
            page = pend.get(b)
            if page is None:
                page = pend[b] = bytearray(BLOCK) if hi - lo == BLOCK else \
                    bytearray(self.device.read((pblk + i) * BLOCK, BLOCK))
            page[lo - b * BLOCK:hi - b * BLOCK] = buf[lo - offset:hi - offset]

    def _free_blocks(self) -> int:
        return self.nr_blocks - self.used_blocks - self._delayed_total

    def _delay(self, node: Inode, b0: int, b1: int) -> None:
        """Reserve the unmapped, not yet delayed blocks of [b0, b1) for delayed allocation."""
        if not node.extents and not node.delayed:      # fast path: a new file's first write
            n = b1 - b0
            if n > self._free_blocks() - self._reserved_blocks():
                if self._delayed_total:
                    self.writeback()
                if n > self._free_blocks() - self._reserved_blocks():
                    raise os_error(errno.ENOSPC, "")
            node.delayed = [(b0, b1)]
            if self.payload and node.pending is None:
                node.pending = {}
            self._delayed_total += n
            self._delayed_inodes.setdefault(node.ino, node)
            return
        holes = self._holes(node, b0, b1) if node.extents else [(b0, b1)]
        if not holes:
            return
        d = node.delayed
        new = []
        for h0, h1 in holes:
            if d:
                cur = h0
                for r0, r1 in d:
                    if r1 <= cur or r0 >= h1:
                        continue
                    if r0 > cur:
                        new.append((cur, r0))
                    cur = max(cur, r1)
                if cur < h1:
                    new.append((cur, h1))
            else:
                new.append((h0, h1))
        n = sum(h1 - h0 for h0, h1 in new)
        if not n:
            return
        if n > self._free_blocks() - self._reserved_blocks():
            if self._delayed_total:
                self.writeback()
            if n > self._free_blocks() - self._reserved_blocks():
                raise os_error(errno.ENOSPC, "")
        if d is None:
            d = node.delayed = []
            if self.payload and node.pending is None:
                node.pending = {}
        d.extend(new)
        d.sort()
        merged = [list(d[0])]
        for r0, r1 in d[1:]:
            if r0 <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r1)
            else:
                merged.append([r0, r1])
        node.delayed = [tuple(r) for r in merged]
        self._delayed_total += n
        self._delayed_inodes.setdefault(node.ino, node)

    def _reserved_blocks(self) -> int:
        """Blocks kept back for metadata (directory, extent-tree blocks)."""
        return 64

    def _delayed_in(self, node: Inode, b0: int, b1: int):
        out = []
        for r0, r1 in node.delayed or ():
            lo, hi = max(b0, r0), min(b1, r1)
            if lo < hi:
                out.append((lo, hi))
        return out

    def _drop_delayed(self, node: Inode, keep: int) -> None:
        """Forget delayed blocks and dirty pages at or beyond logical block ``keep``."""
        if node.dirty:
            before = len(node.dirty)
            node.dirty = {b for b in node.dirty if b < keep} or None
            self._dirty_total -= before - len(node.dirty or ())
        if not node.delayed:
            if node.pending:
                for b in [b for b in node.pending if b >= keep]:
                    del node.pending[b]
            if not node.dirty:
                node.pending = None
                node.dirty = None
                self._delayed_inodes.pop(node.ino, None)
            return
        kept, dropped = [], 0
        for r0, r1 in node.delayed:
            if r1 <= keep:
                kept.append((r0, r1))
            elif r0 >= keep:
                dropped += r1 - r0
            else:
                kept.append((r0, keep))
                dropped += r1 - keep
        self._delayed_total -= dropped
        if node.pending:
            for b in [b for b in node.pending if b >= keep]:
                del node.pending[b]
        if kept:
            node.delayed = kept
        elif node.dirty:
            node.delayed = None
        else:
            node.delayed = node.pending = None
            self._delayed_inodes.pop(node.ino, None)

    def _flush_inode(self, node: Inode) -> None:
        """Write back the inode's dirty pages, then allocate and write its
        delayed blocks (each page once, contiguous blocks in one request)."""
        if node.dirty:
            self._write_dirty(node)
        ranges = node.delayed
        if not ranges:
            if node.dirty is None:
                node.pending = None
                self._delayed_inodes.pop(node.ino, None)
            return
        node.delayed = None
        self._delayed_inodes.pop(node.ino, None)
        n_total = ranges[0][1] - ranges[0][0] if len(ranges) == 1 else sum(r1 - r0 for r0, r1 in ranges)
        self._delayed_total -= n_total
        for r0, r1 in ranges:
            pieces = self._alloc_data(node, r0, r1 - r0, node.size)
            lb = r0
            for pblk, n in pieces:
                self._add_extent(node, lb, pblk, n)
                if self.payload:
                    pend = node.pending
                    for i in range(n):
                        page = pend.get(lb + i)
                        self.device.write((pblk + i) * BLOCK, bytes(page) if page is not None else bytes(BLOCK))
                else:
                    self.device.write(pblk * BLOCK, n * BLOCK)
                lb += n
            node.nr_data_blocks += r1 - r0
            self.data_blocks += r1 - r0
        node.pending = None
        self._extent_tree_layout(node)
        self._touch_inode(node)

    def _write_dirty(self, node: Inode) -> None:
        blocks = sorted(node.dirty)
        node.dirty = None
        self._dirty_total -= len(blocks)
        pend = node.pending
        i = 0
        while i < len(blocks):
            j = i + 1
            while j < len(blocks) and blocks[j] == blocks[j - 1] + 1:
                j += 1
            for lblk, pblk, n in self._map_range(node, blocks[i], blocks[j - 1] + 1):
                if self.payload:
                    self.device.write(pblk * BLOCK, b"".join(
                        bytes(pend.pop(lblk + k, None) or bytes(BLOCK)) for k in range(n)))
                else:
                    self.device.write(pblk * BLOCK, n * BLOCK)
            i = j

    def writeback(self) -> None:
        """Allocate and write every delayed block, in the order files were dirtied."""
        for node in list(self._delayed_inodes.values()):
            self._flush_inode(node)

    def _stamps(self, node: Inode, nblocks: int) -> np.ndarray:
        st = node.stamps
        if st is None:
            st = node.stamps = np.zeros(max(nblocks, 1), dtype=np.uint64)
        elif len(st) < nblocks:
            new = np.zeros(max(nblocks, 2 * len(st)), dtype=np.uint64)
            new[: len(st)] = st
            st = node.stamps = new
        return st

    def _map_range(self, node: Inode, b0: int, b1: int):
        """Mapped pieces (lblk, pblk, n) of logical blocks [b0, b1)."""
        out = []
        for lblk, pblk, n in node.extents:
            if lblk >= b1:
                break
            if lblk + n <= b0:
                continue
            lo, hi = max(b0, lblk), min(b1, lblk + n)
            out.append((lo, pblk + (lo - lblk), hi - lo))
        return out

    def _holes(self, node: Inode, b0: int, b1: int):
        holes = []
        cur = b0
        for lo, _p, n in self._map_range(node, b0, b1):
            if lo > cur:
                holes.append((cur, lo))
            cur = lo + n
        if cur < b1:
            holes.append((cur, b1))
        return holes

    def _add_extent(self, node: Inode, lblk: int, pblk: int, n: int) -> None:
        ex = node.extents
        if not ex or ex[-1][0] + ex[-1][2] <= lblk:
            if ex and ex[-1][0] + ex[-1][2] == lblk and ex[-1][1] + ex[-1][2] == pblk and ex[-1][2] + n <= self.max_extent_len:
                ex[-1][2] += n
            else:
                ex.append([lblk, pblk, n])
            return
        import bisect

        i = bisect.bisect_left([e[0] for e in ex], lblk)
        ex.insert(i, [lblk, pblk, n])
        # merge neighbours where contiguous
        j = max(i - 1, 0)
        while j < len(ex) - 1:
            a, b = ex[j], ex[j + 1]
            if a[0] + a[2] == b[0] and a[1] + a[2] == b[1] and a[2] + b[2] <= self.max_extent_len:
                a[2] += b[2]
                del ex[j + 1]
            else:
                j += 1
                if j > i + 1:
                    break

    max_extent_len = 32768

    def _extent_tree_layout(self, node: Inode) -> None:
        """Subclass hook: extent-tree blocks for files with many extents."""

    def read(self, path: str, offset: int = 0, length: int | None = None):
        """Bytes on a payload device; else the uint64 version stamps of the 4 KiB
        blocks the range covers (0 = zeros or hole)."""
        node = self._lookup(path)
        if node.is_dir:
            raise os_error(errno.EISDIR, path)
        if offset < 0:
            raise os_error(errno.EINVAL, path)
        if length is None:
            length = max(node.size - offset, 0)
        end = min(offset + length, node.size)
        if end <= offset:
            return b"" if self.payload else np.zeros(0, dtype=np.uint64)
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        node.atime = _time.time()
        if not self.payload:
            for _l, pblk, n in self._map_range(node, b0, b1):
                self.device.read(pblk * BLOCK, n * BLOCK)
            st = node.stamps
            out = np.zeros(b1 - b0, dtype=np.uint64)
            if st is not None:
                k = min(len(st), b1) - b0
                if k > 0:
                    out[:k] = st[b0:b0 + k]
            return out
        out = bytearray(end - offset)
        for lblk, pblk, n in self._map_range(node, b0, b1):
            lo = max(offset, lblk * BLOCK)
            hi = min(end, (lblk + n) * BLOCK)
            out[lo - offset:hi - offset] = self.device.read(pblk * BLOCK + (lo - lblk * BLOCK), hi - lo)
        for b, page in (node.pending or {}).items():
            if b0 <= b < b1:
                lo, hi = max(offset, b * BLOCK), min(end, (b + 1) * BLOCK)
                out[lo - offset:hi - offset] = page[lo - b * BLOCK:hi - b * BLOCK]
        return bytes(out)

    def content(self, path: str):
        """A hashable summary of a file's content: (size, digest).  Two files with
        equal content in the same mode compare equal, across filesystems."""
        node = self._lookup(path)
        if node.is_dir:
            raise os_error(errno.EISDIR, path)
        if self.payload:
            return node.size, hashlib.blake2b(self.read(path), digest_size=16).hexdigest()
        n = (node.size + BLOCK - 1) // BLOCK
        st = self.read(path) if n else np.zeros(0, dtype=np.uint64)
        return node.size, hashlib.blake2b(st.tobytes(), digest_size=16).hexdigest()

    def write_stamps(self, path: str, stamps, size: int) -> None:
        """Accounting mode: give ``path`` exactly this content -- ``stamps`` (one
        uint64 per 4 KiB block, 0 = zeros, left as a hole) and ``size`` bytes --
        as a copy would.  Creates the file if missing; replaces its content."""
        if self.payload:
            raise ValueError("write_stamps is for accounting mode; write bytes on a payload filesystem")
        node = self._file_for_write(path)
        stamps = np.asarray(stamps, dtype=np.uint64)
        nblk = (size + BLOCK - 1) // BLOCK
        if len(stamps) < nblk:
            stamps = np.concatenate([stamps, np.zeros(nblk - len(stamps), dtype=np.uint64)])
        self.truncate(path, 0)
        self.file_bytes += size * node.nlink
        node.size = size
        nz = np.flatnonzero(stamps[:nblk])
        if nz.size:
            runs = K.runs_of(nz.astype(np.int64))
            for i in range(runs.shape[0]):
                self._delay(node, int(runs[i, 0]), int(runs[i, 0] + runs[i, 1]))
        st = self._stamps(node, max(nblk, 1))
        st[:nblk] = stamps[:nblk]
        self.counters["data_blocks_written"] += int(nz.size)
        node.mtime = node.ctime = _time.time()
        self._touch_inode(node)

    def truncate(self, path: str, size: int) -> None:
        node = self._lookup(path)
        if node.is_dir:
            raise os_error(errno.EISDIR, path)
        if not node.is_reg:
            raise os_error(errno.EINVAL, path)
        if size < 0:
            raise os_error(errno.EINVAL, path)
        if size < node.size:
            keep = (size + BLOCK - 1) // BLOCK
            self._drop_delayed(node, keep)
            self._truncate_blocks(node, keep)
            if node.stamps is not None:
                node.stamps[keep:] = 0
                # (a last block past the stamps array is a hole grown by
                # truncate: zeros, and zeros cut short stay a hole)
                if size % BLOCK and 0 < keep <= len(node.stamps) and not self.payload:
                    node.stamps[keep - 1] = mix_stamp(int(node.stamps[keep - 1]), 0, size % BLOCK, BLOCK)
            if self.payload and size % BLOCK:
                m = self._map_range(node, size // BLOCK, size // BLOCK + 1)
                page = (node.pending or {}).get(size // BLOCK)
                if page is not None:
                    page[size % BLOCK:] = bytes(BLOCK - size % BLOCK)
                elif m:
                    _l, pblk, _n = m[0]
                    self.device.write(pblk * BLOCK + size % BLOCK, bytes(BLOCK - size % BLOCK))
        self.file_bytes += (size - node.size) * node.nlink
        node.size = size
        node.mtime = node.ctime = _time.time()
        self._touch_inode(node)

    def _truncate_blocks(self, node: Inode, keep: int) -> None:
        new = []
        freed = 0
        for lblk, pblk, n in node.extents:
            if lblk + n <= keep:
                new.append([lblk, pblk, n])
            elif lblk >= keep:
                self._free_run(pblk, n)
                freed += n
            else:
                k = keep - lblk
                new.append([lblk, pblk, k])
                self._free_run(pblk + k, n - k)
                freed += n - k
        node.extents = new
        node.nr_data_blocks -= freed
        self.data_blocks -= freed
        if freed:
            self._extent_tree_layout(node)

    # -- journal, sync, discard ------------------------------------------------
    def commit(self) -> None:
        """Close the running transaction: journal the dirty metadata, then
        write it home (checkpoint), then pass down mount-time discards."""
        if self._dirty:
            if self.journal_enabled:
                self._journal_write(len(self._dirty))
            self._ail |= self._dirty
            self._dirty = set()
            self.counters["commits"] += 1
            if self.checkpoint_on_commit or len(self._ail) >= self._ail_limit():
                self.checkpoint()
        if self._pending_discard:
            runs = self._pending_discard
            self._pending_discard = []
            for s, n in sorted(runs):
                if K.count_free(self.bitmap, s, s + n) == n:
                    self.device.discard(s * BLOCK, n * BLOCK)
                    self.counters["blocks_discarded"] += n

    #: ext4 writes committed metadata home when the fs is synced (sync
    #: flushes the block device's dirty buffers); xfs leaves it in the AIL,
    #: written at unmount or when the log needs space.
    checkpoint_on_commit = True

    def _ail_limit(self) -> int:
        return 1 << 62

    def checkpoint(self) -> None:
        """Write committed metadata home.  Blocks freed meanwhile are not
        written (jbd2_journal_forget / xfs stale buffers)."""
        if not self._ail:
            return
        live = [b for b in self._ail if self.bitmap[b]]
        self._ail = set()
        self._write_blocks(live)

    def _maybe_commit(self) -> None:
        if len(self._dirty) >= self.commit_blocks:
            self.commit()

    commit_blocks = 4096

    def sync(self) -> None:
        """Write back delayed data, then commit."""
        self.writeback()
        self.commit()

    def fsync(self, path: str) -> None:
        node = self._lookup(path)
        self._flush_inode(node)
        self.commit()

    def fstrim(self, minlen: int = 0) -> int:
        """Discard every free run of at least ``minlen`` bytes.

        Returns what FITRIM reports to ``fstrim -v``: on ext4 the bytes
        discarded, on xfs the length of the range examined.  The blocks
        actually discarded are in ``counters["blocks_discarded"]``."""
        self.sync()
        min_blocks = max(1, (minlen + BLOCK - 1) // BLOCK)
        total = 0
        for z in range(self.nr_zones):
            if self._trimmed is not None:
                if self._trimmed[z] and min_blocks >= self._trim_minlen[z]:
                    continue            # EXT4_GROUP_INFO_WAS_TRIMMED: nothing freed since
                self._trimmed[z] = True
                self._trim_minlen[z] = min_blocks
            lo = z * self.zone_blocks
            hi = min(self.nr_blocks, lo + self.zone_blocks)
            runs = K.free_runs(self.bitmap, lo, hi, min_blocks)
            for i in range(runs.shape[0]):
                s, n = int(runs[i, 0]), int(runs[i, 1])
                self.device.discard(s * BLOCK, n * BLOCK)
                total += n
        self.counters["blocks_discarded"] += total
        return total * BLOCK

    def umount(self) -> None:
        """Write back, commit, write the unmount record.  The object stays
        usable: the next operation behaves as after a fresh ``mount``."""
        self.sync()
        self.checkpoint()
        if self._trimmed is not None:   # the trimmed flags live in memory only
            self._trimmed[:] = False
        self._on_umount()
        self.mounted = False

    def mount(self, *, discard: bool | None = None) -> None:
        """(Re)mount, optionally changing the ``discard`` mount option."""
        if discard is not None:
            self.discard_mount = bool(discard)
        self.mounted = True

    def _on_umount(self) -> None:
        pass

    # -- cloning (block-device snapshots) ------------------------------------------
    def clone(self, device) -> "Filesystem":
        """This filesystem's state as seen through ``device``, a snapshot of
        the device it lives on (a thin snapshot shares every block, so the
        on-disk filesystem is identical).  Writes back and commits first, as
        the unmount before a snapshot does.  The clone has its own inodes,
        bitmaps and allocator state, and counters from zero.

        O(1) in the number of inodes: both filesystems switch to a
        :class:`CowInodes` table over the same frozen dict, and an inode is
        copied the first time either side touches it."""
        import copy

        if device.size != self.device.size:
            raise ValueError(f"clone onto a device of {device.size} bytes; this filesystem's is {self.device.size}")
        self.sync()
        base = self.inodes.frozen() if isinstance(self.inodes, CowInodes) else self.inodes
        self.inodes = CowInodes(base)
        new = object.__new__(type(self))
        memo = {id(self.device): device, id(self): new}
        for name, value in self.__dict__.items():
            if name == "device":
                v = device
            elif name == "inodes":
                v = CowInodes(base)
            elif name == "counters":
                v = dict.fromkeys(value, 0)
            elif name == "_release_hooks":
                v = []                         # the clone's owner registers its own
            elif name == "bitmap":
                v = value                      # copied by whichever side changes it first
            elif isinstance(value, np.ndarray):
                v = value.copy()
            elif isinstance(value, (int, float, str, bool, type(None))):
                v = value
            elif isinstance(value, dict) and all(isinstance(x, (int, float, str, tuple, type(None)))
                                                 for x in value.values()):
                v = dict(value)      # values immutable (tuples hold ints here)
            else:
                v = copy.deepcopy(value, memo)
            new.__dict__[name] = v
        new.payload = bool(device.payload)
        self._bitmap_shared = new._bitmap_shared = True
        return new

    # -- checking ------------------------------------------------------------------
    def check(self) -> dict:
        """Verify the structure; raise :class:`MetadataCorruptError` naming the first fault.

        * every in-use block is owned exactly once (static metadata, an inode's
          data or metadata blocks), and no owned block is marked free;
        * directory link counts are 2 + subdirectories, others the number of
          entries naming them; every entry names a live inode;
        * file sizes cover their mapped blocks and extents do not overlap.
        """
        owners = np.zeros(self.nr_blocks, dtype=np.uint8)   # wraps only past 255 owners of one block
        for s, n in self.static_runs:
            owners[s:s + n] += 1
        for node in self.inodes.values():
            mapped = 0
            last_end = -1
            for lblk, pblk, n in node.extents:
                if lblk < last_end:
                    raise MetadataCorruptError(f"ino {node.ino}: extent at lblk {lblk} overlaps previous ending {last_end}")
                last_end = lblk + n
                owners[pblk:pblk + n] += 1
                mapped += n
            if mapped != node.nr_data_blocks:
                raise MetadataCorruptError(f"ino {node.ino}: {mapped} mapped blocks but nr_data_blocks {node.nr_data_blocks}")
            if node.is_reg and last_end > 0 and (last_end - 1) * BLOCK >= node.size:
                raise MetadataCorruptError(f"ino {node.ino}: block {last_end - 1} mapped beyond size {node.size}")
            for b in node.meta_blocks:
                owners[b] += 1
        multi = np.flatnonzero(owners > 1)
        if multi.size:
            raise MetadataCorruptError(f"block {int(multi[0])} owned {int(owners[multi[0]])} times")
        used = self.bitmap != 0
        owned = owners == 1
        bad = np.flatnonzero(used != owned)
        if bad.size:
            b = int(bad[0])
            state = "in use but unowned" if used[b] else "owned but marked free"
            raise MetadataCorruptError(f"block {b} {state} ({bad.size} such blocks)")
        refs: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        for node in self.inodes.values():
            if node.is_dir:
                for name, ino in node.entries.items():
                    if ino not in self.inodes:
                        raise MetadataCorruptError(f"dir ino {node.ino} entry {name!r} names dead ino {ino}")
                    refs[ino] = refs.get(ino, 0) + 1
                    if self.inodes[ino].is_dir:
                        subdirs[node.ino] = subdirs.get(node.ino, 0) + 1
                        if self.inodes[ino].parent != node.ino:
                            raise MetadataCorruptError(f"dir ino {ino} parent {self.inodes[ino].parent} != {node.ino}")
        for node in self.inodes.values():
            if node.is_dir:
                want = 2 + subdirs.get(node.ino, 0)
                if node.ino != self.ROOT_INO and refs.get(node.ino, 0) != 1:
                    raise MetadataCorruptError(f"dir ino {node.ino} named {refs.get(node.ino, 0)} times")
            else:
                want = refs.get(node.ino, 0)
            if node.nlink != want:
                raise MetadataCorruptError(f"ino {node.ino}: nlink {node.nlink} but {want} references")
        data = sum(n.nr_data_blocks for n in self.inodes.values())
        if data != self.data_blocks:
            raise MetadataCorruptError(f"inodes map {data} data blocks; the running total says {self.data_blocks}")
        fbytes = sum(n.size * n.nlink for n in self.inodes.values() if n.is_reg)
        if fbytes != self.file_bytes:
            raise MetadataCorruptError(f"regular files hold {fbytes} bytes (per link); the running total says "
                                       f"{self.file_bytes}")
        if int(used.sum()) != self.used_blocks:
            raise MetadataCorruptError(f"bitmap has {int(used.sum())} blocks in use; the running total says "
                                       f"{self.used_blocks}")
        return {"inodes": len(self.inodes), "blocks_in_use": int(used.sum())}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.nr_blocks * BLOCK} bytes on {self.device!r}>"

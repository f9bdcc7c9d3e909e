"""Shared machinery of the union drivers (vfs, aufs, overlay, overlay2) and
Docker's ``NaiveDiffDriver``.

Layout
------
Every union driver keeps ONE :class:`thinp.fs.Filesystem` (ext4 by default,
xfs as an option) on one :class:`~thinp.blockdev.PlainDevice` (accounting
mode by default, ``payload=True`` keeps bytes).  A layer is a directory of
that filesystem (a *branch*); the paths are Docker's, below
``/var/lib/docker/<driver>/``, so per-layer bookkeeping files (overlay2's
``link``/``lower``, aufs's ``layers/<id>``) take their real inodes and
blocks.  A mounted layer is a :class:`UnionView` over a list of branches,
top first: branch 0 is the writable upper of a container (or the layer
itself while :meth:`UnionDriver.apply_diff` fills it).

Lookup
------
:meth:`UnionView._resolve` walks a path one component at a time over the
merged directory *stack* (the same directory in each branch, top-down, cut at
an opaque directory, a whiteout or a non-directory), as overlayfs's
``ovl_lookup`` and aufs's ``lkup`` do.  Each branch examined for a name is one
``lookup_probe``.  Symlinks in the merged view are followed in the merged view
(a ``/lib -> usr/lib`` in the lower works for a path written in the upper).

Copy-up
-------
Changing anything that lives only in a lower branch first copies it into
branch 0 (parents first, directories as metadata only), whole-file, counting
``copy_up_count``/``copy_up_bytes``.  overlay2 with ``metacopy=on`` copies
only the inode for chmod/chown and copies the data at the first write.

The driver subclasses set class attributes that pick the native forms
(``whiteout_style`` "char" or "aufs", ``origin_xattrs``), and hooks for their
on-disk layout (:meth:`UnionDriver._make_layer`, ``_branches``).

Naive diff
----------
vfs and legacy overlay use the naive diff of :mod:`._treediff` (the one
every driver without a native diff uses): walk two whole merged trees and
compare them, as Docker's ``NaiveDiffDriver`` (``archive.ChangesDirs``) does;
every entry visited and every byte compared is counted in ``diff_work``.
aufs and overlay2 have native diffs: they walk only the layer's own branch
(:meth:`UnionDriver._branch_changes`).  Both produce
:class:`~thinp.drivers.base.Change` rows, and :func:`._treediff.layer`
turns rows into a :class:`thinp.image.Layer` with OCI whiteouts.
"""
from __future__ import annotations

import errno
import os
import stat as _stat
import tempfile
import zlib

import numpy as np

from ..blockdev import PlainDevice
from ..config import PAGE_SIZE
from .base import Capabilities, Change, Driver, MountedView, Usage, empty_stats
from .layers import LayerRecord, LayerTable, NaiveDiff
from ._treediff import StampedContent, decode_stamps
from .apply import apply_layer, ensure_parents
from .pagecache import PageCache

__all__ = ["UnionDriver", "UnionView", "NativeWhiteouts",
           "OVL_OPAQUE", "OVL_ORIGIN", "OVL_IMPURE", "OVL_METACOPY", "WH_PREFIX", "WH_OPAQUE"]

BLOCK = PAGE_SIZE
OVL_OPAQUE = "trusted.overlay.opaque"
OVL_ORIGIN = "trusted.overlay.origin"
OVL_IMPURE = "trusted.overlay.impure"
OVL_METACOPY = "trusted.overlay.metacopy"
WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
WH_BASE = ".wh..wh.aufs"     # aufs whiteouts are hard links to this file in the branch root
SYMLOOP_MAX = 40


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _split(path: str) -> list[str]:
    if not isinstance(path, str):
        raise TypeError(f"path must be str, not {type(path).__name__}")
    return [p for p in path.split("/") if p and p != "."]


def _join(parts) -> str:
    return "/" + "/".join(parts)


# ---------------------------------------------------------------- the view
def _namespace_change(fn):
    """Mark a view method that can change what a directory path resolves to:
    the driver's generation moves before and after it, so no resolved-directory
    cache entry made during the call outlives it."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        self.driver._gen += 1
        try:
            return fn(self, *args, **kw)
        finally:
            self.driver._gen += 1
    return wrapper


class UnionView(MountedView):
    """A merged view over ``branches`` (backing-fs directory paths, top first).

    ``writable`` views write into branch 0; others raise EROFS."""

    def __init__(self, driver: "UnionDriver", branches: list[str], *, writable: bool):
        self.driver = driver
        self.fs = driver.fs
        self.branches = list(branches)
        self.writable = writable
        self.payload = driver.fs.payload
        self.char_wh = driver.whiteout_style == "char"
        self.origin = driver.origin_xattrs
        self.metacopy = driver.metacopy
        self._roots = None
        self._dirs: dict = {}      # dirname string -> (canon, stacks) of a resolved directory
        self._dirs_gen = -1

    # -- merged lookup -----------------------------------------------------
    def _root_stack(self):
        # branch root inodes stay put while the layer is mounted; opacity is re-read
        roots = self._roots
        if roots is None or roots[0][1].ino not in self.fs.inodes:
            fs = self.fs
            roots = self._roots = [(i, fs.inode(b, follow=False)) for i, b in enumerate(self.branches)]
        for k, (_i, node) in enumerate(roots):
            if self._is_opaque(node):
                return roots[: k + 1]
        return roots

    def _is_whiteout(self, node) -> bool:
        return self.char_wh and _stat.S_ISCHR(node.mode) and node.rdev == 0

    def _is_opaque(self, node) -> bool:
        if self.char_wh:
            x = node.xattrs
            return bool(x) and x.get(OVL_OPAQUE) == b"y"
        return node.entries is not None and WH_OPAQUE in node.entries

    def _step(self, stack, name: str):
        """The stack of ``name`` under the merged directory ``stack``: [] when absent."""
        inodes = self.fs.inodes
        res = []
        probes = 0
        aufs = not self.char_wh
        for bi, d in stack:
            probes += 1
            ent = d.entries
            ino = ent.get(name)
            if ino is None:
                if aufs and (WH_PREFIX + name) in ent:
                    break
                continue
            node = inodes[ino]
            if self.char_wh and _stat.S_ISCHR(node.mode) and node.rdev == 0:
                break
            if not res:
                res.append((bi, node))
                if not _stat.S_ISDIR(node.mode) or self._is_opaque(node):
                    break
            else:
                if not _stat.S_ISDIR(node.mode):
                    break
                res.append((bi, node))
                if self._is_opaque(node):
                    break
        self.driver._counters["lookup_probes"] += probes
        return res

    def _resolve(self, path: str, follow: bool = True):
        """(canonical parts, stacks along them): ``stacks[0]`` is the root's,
        ``stacks[-1]`` the final component's ([] when it does not exist).
        ENOENT/ENOTDIR/ELOOP for a bad intermediate component.

        Resolved parent directories are cached until a change that can alter
        a directory stack (mkdir, rmdir, rename, directory copy-up, whiteout,
        opaque marker) bumps the driver's generation."""
        head, sep, name = path.rstrip("/").rpartition("/")
        if sep and name and name not in (".", "..") and "\0" not in path:
            drv = self.driver
            if self._dirs_gen != drv._gen:
                self._dirs.clear()
                self._dirs_gen = drv._gen
            hit = self._dirs.get(head)
            if hit is None:
                canon_d, stacks_d = self._resolve_slow(head or "/", True)
                if stacks_d[-1] and _stat.S_ISDIR(stacks_d[-1][0][1].mode):
                    self._dirs[head] = (canon_d, stacks_d)
            else:
                canon_d, stacks_d = hit
            cur = stacks_d[-1]
            if cur and _stat.S_ISDIR(cur[0][1].mode) and len(name.encode()) <= 255:
                st = self._step(cur, name)
                if not (st and _stat.S_ISLNK(st[0][1].mode) and follow):
                    return canon_d + [name], stacks_d + [st]
        return self._resolve_slow(path, follow)

    def _resolve_slow(self, path: str, follow: bool = True):
        if "\0" in path:
            raise _err(errno.EINVAL, path)
        parts = _split(path)
        parts.reverse()
        canon: list[str] = []
        stacks = [self._root_stack()]
        hops = 0
        while parts:
            name = parts.pop()
            if name == "..":
                if canon:
                    canon.pop()
                    stacks.pop()
                continue
            cur = stacks[-1]
            if not cur:
                raise _err(errno.ENOENT, path)
            if not _stat.S_ISDIR(cur[0][1].mode):
                raise _err(errno.ENOTDIR, path)
            if len(name.encode()) > 255:
                raise _err(errno.ENAMETOOLONG, path)
            st = self._step(cur, name)
            last = not parts
            if st and _stat.S_ISLNK(st[0][1].mode) and (follow or not last):
                hops += 1
                if hops > SYMLOOP_MAX:
                    raise _err(errno.ELOOP, path)
                tgt = st[0][1].target
                if tgt.startswith("/"):
                    canon, stacks = [], [stacks[0]]
                tp = _split(tgt)
                tp.reverse()
                parts.extend(tp)
                continue
            if not st and not last:
                raise _err(errno.ENOENT, path)
            canon.append(name)
            stacks.append(st)
        return canon, stacks

    def _bpath(self, bi: int, canon) -> str:
        b = self.branches[bi]
        return b + "/" + "/".join(canon) if canon else b

    def _top(self, path: str, follow: bool = True):
        canon, stacks = self._resolve(path, follow)
        st = stacks[-1]
        if not st:
            raise _err(errno.ENOENT, path)
        return canon, stacks, st[0][0], st[0][1]

    def _lower_positive(self, parent_stack, name: str) -> bool:
        """Does ``name`` exist below branch 0 under this merged directory?"""
        lower = [(bi, d) for bi, d in parent_stack if bi > 0]
        return bool(lower) and bool(self._step(lower, name))

    # -- read side ----------------------------------------------------------
    def stat(self, path: str, *, follow_symlinks: bool = True):
        _c, _s, _bi, node = self._top(path, follow_symlinks)
        return self.fs.stat_inode(node)

    def exists(self, path: str) -> bool:
        try:
            canon, stacks = self._resolve(path, follow=False)
        except OSError:
            return False
        return bool(stacks[-1])

    def readlink(self, path: str) -> str:
        canon, _s, bi, node = self._top(path, follow=False)
        if not _stat.S_ISLNK(node.mode):
            raise _err(errno.EINVAL, path)
        return node.target

    def listdir(self, path: str = "/") -> list[str]:
        canon, stacks = self._resolve(path)
        st = stacks[-1]
        if not st:
            raise _err(errno.ENOENT, path)
        if not _stat.S_ISDIR(st[0][1].mode):
            raise _err(errno.ENOTDIR, path)
        return sorted(self._merged_names(st, canon))

    def _merged_names(self, st, canon=None) -> dict:
        """name -> (bi, node) of the top entry, for a merged directory stack."""
        inodes = self.fs.inodes
        seen: dict = {}
        hidden: set = set()
        aufs = not self.char_wh
        for bi, d in st:
            for name, ino in d.entries.items():
                if name in seen or name in hidden:
                    continue
                if aufs and name.startswith(WH_PREFIX):
                    if name != WH_OPAQUE and not name.startswith(".wh..wh."):
                        hidden.add(name[len(WH_PREFIX):])
                    continue
                node = inodes[ino]
                if self.char_wh and _stat.S_ISCHR(node.mode) and node.rdev == 0:
                    hidden.add(name)
                    continue
                seen[name] = (bi, node)
        if aufs and not canon:
            for k in [k for k in seen if k.startswith(".wh..wh.")]:
                del seen[k]
        return seen

    def _data_source(self, canon, stacks, bi, node) -> str:
        """Backing path holding a file's data (a metacopy upper reads its lower)."""
        if bi == 0 and self.metacopy and node.xattrs and OVL_METACOPY in node.xattrs:
            lower = self._step([(b, d) for b, d in stacks[-2] if b > 0], canon[-1])
            if lower:
                return self._bpath(lower[0][0], canon)
        return self._bpath(bi, canon)

    def read(self, path: str, offset: int = 0, length: int | None = None):
        canon, stacks, bi, node = self._top(path)
        src = self._data_source(canon, stacks, bi, node)
        out = self.fs.read(src, offset, length)
        if _stat.S_ISREG(node.mode):
            self.driver._page_cache_touch(self.fs.inode(src), offset, length)
        return out

    def content(self, path: str):
        canon, stacks, bi, node = self._top(path)
        return self.fs.content(self._data_source(canon, stacks, bi, node))

    def listxattr(self, path: str) -> list[str]:
        canon, _s, bi, node = self._top(path, follow=False)
        names = sorted(node.xattrs or ())
        return [n for n in names if not n.startswith("trusted.overlay.")] if self.char_wh else names

    def getxattr(self, path: str, name: str) -> bytes:
        canon, _s, bi, node = self._top(path)
        if self.char_wh and name.startswith("trusted.overlay."):
            raise _err(errno.ENODATA, path)
        return self.fs.getxattr(self._bpath(bi, canon), name, follow_symlinks=False)

    # -- copy-up ------------------------------------------------------------
    def _check_rw(self, path: str) -> None:
        if not self.writable:
            raise _err(errno.EROFS, path)

    def _copy_up_dirs(self, canon, stacks, upto: int) -> None:
        """Make sure the directories canon[:upto] exist in branch 0."""
        for j in range(upto):
            st = stacks[j + 1]
            if st and st[0][0] == 0:
                continue
            self._copy_up_one(canon[: j + 1], stacks, j + 1, data=True)

    def _copy_up_one(self, canon, stacks, j: int, *, data: bool, meta: bool = False) -> None:
        """Copy the entry at stacks[j] (path canon) into branch 0; parents must be up."""
        fs, drv = self.fs, self.driver
        drv._gen += 1
        bi, node = stacks[j][0]
        src = self._bpath(bi, canon)
        dst = self._bpath(0, canon)
        mode = _stat.S_IMODE(node.mode)
        if _stat.S_ISDIR(node.mode):
            fs.mkdir(dst, mode, uid=node.uid, gid=node.gid)
        elif _stat.S_ISREG(node.mode):
            fs.create(dst, mode, uid=node.uid, gid=node.gid)
            if data:
                if node.size:
                    _copy_data(fs, src, dst, node.size)
                drv._counters["copy_up_bytes"] += node.size
            elif meta:   # metacopy=on: the inode only; the data stays below
                if node.size:
                    fs.truncate(dst, node.size)
                fs.setxattr(dst, OVL_METACOPY, b"", follow_symlinks=False)
        elif _stat.S_ISLNK(node.mode):
            fs.symlink(node.target, dst, uid=node.uid, gid=node.gid)
        else:
            fs.mknod(dst, node.mode, node.rdev, uid=node.uid, gid=node.gid)
        for k, v in (node.xattrs or {}).items():
            if not k.startswith("trusted.overlay."):
                fs.setxattr(dst, k, v, follow_symlinks=False)
        if self.origin:
            # copy_up.c (index=off): origin for a directory or a lower inode with
            # one link only; copying up one name of a hard-linked file breaks
            # the link and records no origin.  The parent is marked impure either way.
            if _stat.S_ISDIR(node.mode) or node.nlink == 1:
                fs.setxattr(dst, OVL_ORIGIN, _origin_handle(node), follow_symlinks=False)
            self._set_impure(canon[:-1])
        drv._counters["copy_up_count"] += 1
        new = fs.inode(dst, follow=False)
        stacks[j] = [(0, new)] + (stacks[j] if _stat.S_ISDIR(node.mode) else [])

    def _set_impure(self, dir_canon) -> None:
        p = self._bpath(0, dir_canon)
        node = self.fs.inode(p, follow=False)
        if not (node.xattrs and OVL_IMPURE in node.xattrs):
            self.fs.setxattr(p, OVL_IMPURE, b"y", follow_symlinks=False)

    def _copy_up(self, canon, stacks, *, data: bool = True, meta: bool = False) -> None:
        """Copy the final entry (and its parents) into branch 0, if not there:
        with its data, without it (``data=False``: about to be truncated), or,
        ``meta``, as an overlay metacopy."""
        self._copy_up_dirs(canon, stacks, len(canon) - 1)
        st = stacks[-1]
        if st[0][0] != 0:
            self._copy_up_one(canon, stacks, len(stacks) - 1, data=data and not meta, meta=meta)
        elif data and self.metacopy:
            node = st[0][1]
            if node.xattrs and OVL_METACOPY in node.xattrs:
                lower = self._step([(b, d) for b, d in stacks[-2] if b > 0], canon[-1])
                dst = self._bpath(0, canon)
                size = node.size
                if lower and size:
                    src = self._bpath(lower[0][0], canon)
                    self.fs.truncate(dst, 0)
                    _copy_data(self.fs, src, dst, min(size, lower[0][1].size))
                    if size > lower[0][1].size:
                        self.fs.truncate(dst, size)
                    self.driver._counters["copy_up_bytes"] += size
                self.fs.removexattr(dst, OVL_METACOPY, follow_symlinks=False)

    # -- whiteouts and opaque dirs --------------------------------------------
    def _whiteout(self, canon) -> None:
        fs = self.fs
        self.driver._gen += 1
        if self.char_wh:
            fs.mknod(self._bpath(0, canon), _stat.S_IFCHR, 0)
        else:
            base = self.branches[0] + "/" + WH_BASE
            wh = self._bpath(0, canon[:-1] + [WH_PREFIX + canon[-1]])
            if not fs.exists(base):
                fs.create(base, 0o444)
            fs.link(base, wh)

    def _clear_upper_whiteout(self, canon) -> bool:
        """Remove a whiteout for canon[-1] in branch 0; True if there was one."""
        fs = self.fs
        pd = fs.inode(self._bpath(0, canon[:-1]), follow=False)
        name = canon[-1]
        if self.char_wh:
            ino = pd.entries.get(name)
            if ino is not None and self._is_whiteout(fs.inodes[ino]):
                fs.unlink(self._bpath(0, canon))
                self.driver._gen += 1
                return True
            return False
        if WH_PREFIX + name in pd.entries:
            fs.unlink(self._bpath(0, canon[:-1] + [WH_PREFIX + name]))
            self.driver._gen += 1
            return True
        return False

    def _set_opaque(self, canon) -> None:
        p = self._bpath(0, canon)
        self.driver._gen += 1
        if self.char_wh:
            self.fs.setxattr(p, OVL_OPAQUE, b"y", follow_symlinks=False)
        else:
            base = self.branches[0] + "/" + WH_BASE
            if not self.fs.exists(base):
                self.fs.create(base, 0o444)
            if not self.fs.exists(p + "/" + WH_OPAQUE):
                self.fs.link(base, p + "/" + WH_OPAQUE)

    def _purge_upper_dir(self, upath: str) -> None:
        """Remove a (merged-empty) upper directory: its whiteouts and markers first."""
        fs = self.fs
        self.driver._gen += 1
        for name in list(fs.inode(upath, follow=False).entries):
            fs.unlink(upath + "/" + name)
        fs.rmdir(upath)

    # -- making entries ---------------------------------------------------------
    def _new_entry(self, path: str, make) -> None:
        """Common path of create/mkdir/mknod/symlink: EEXIST, parents, whiteout."""
        self._check_rw(path)
        canon, stacks = self._resolve(path, follow=False)
        if stacks[-1]:
            raise _err(errno.EEXIST, path)
        if not canon:
            raise _err(errno.EEXIST, path)
        self._copy_up_dirs(canon, stacks, len(canon) - 1)
        over_wh = self._clear_upper_whiteout(canon)
        make(self._bpath(0, canon))
        return canon, stacks, over_wh

    def create(self, path: str, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> None:
        self._new_entry(path, lambda p: self.fs.create(p, mode, uid=uid, gid=gid))

    @_namespace_change
    def mkdir(self, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> None:
        canon, stacks, over_wh = self._new_entry(path, lambda p: self.fs.mkdir(p, mode, uid=uid, gid=gid))
        if over_wh:
            self._set_opaque(canon)

    def mknod(self, path: str, mode: int, rdev: int = 0, *, uid: int = 0, gid: int = 0) -> None:
        self._new_entry(path, lambda p: self.fs.mknod(p, mode, rdev, uid=uid, gid=gid))

    def symlink(self, target: str, path: str, *, uid: int = 0, gid: int = 0) -> None:
        self._new_entry(path, lambda p: self.fs.symlink(target, p, uid=uid, gid=gid))

    def link(self, src: str, dst: str) -> None:
        self._check_rw(dst)
        scanon, sstacks, _bi, snode = self._top(src, follow=False)
        if _stat.S_ISDIR(snode.mode):
            raise _err(errno.EPERM, src)
        dcanon, dstacks = self._resolve(dst, follow=False)
        if dstacks[-1]:
            raise _err(errno.EEXIST, dst)
        self._copy_up(scanon, sstacks)
        dcanon, dstacks = self._resolve(dst, follow=False)   # the copy-up may have made its parents
        self._copy_up_dirs(dcanon, dstacks, len(dcanon) - 1)
        self._clear_upper_whiteout(dcanon)
        self.fs.link(self._bpath(0, scanon), self._bpath(0, dcanon))
        if self.origin:
            # dir.c ovl_create_or_link: a link to a copied-up file (one with an
            # origin) makes its new parent impure
            up = self.fs.inode(self._bpath(0, scanon), follow=False)
            if up.xattrs and OVL_ORIGIN in up.xattrs:
                self._set_impure(dcanon[:-1])

    def open(self, path: str, *, write: bool = False, create: bool = False, truncate: bool = False,
             exclusive: bool = False, mode: int = 0o644) -> None:
        """open(2): O_CREAT creates, and an open for write copies a lower file up
        (without its data when O_TRUNC empties it anyway)."""
        try:
            canon, stacks, bi, node = self._top(path)
        except OSError as e:
            if e.errno != errno.ENOENT or not create:
                raise
            self.create(path, mode)
            return
        if create and exclusive:
            raise _err(errno.EEXIST, path)
        if not (write or truncate):
            return
        if _stat.S_ISDIR(node.mode):
            raise _err(errno.EISDIR, path)
        if not _stat.S_ISREG(node.mode):
            return
        self._check_rw(path)
        self._copy_up(canon, stacks, data=not truncate)
        if truncate:
            self.fs.truncate(self._bpath(0, canon), 0)

    # -- changing files -----------------------------------------------------------
    def write(self, path: str, offset: int, data) -> int:
        self._check_rw(path)
        try:
            canon, stacks, bi, node = self._top(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            self.create(path)
            canon, stacks, bi, node = self._top(path)
        if _stat.S_ISDIR(node.mode):
            raise _err(errno.EISDIR, path)
        if not _stat.S_ISREG(node.mode):
            raise _err(errno.EINVAL, path)
        if bi == 0 and not (self.metacopy and node.xattrs and OVL_METACOPY in node.xattrs):
            return self.fs.write_inode(node, offset, data)   # already up: no second path walk
        self._copy_up(canon, stacks)
        return self.fs.write(self._bpath(0, canon), offset, data)

    def write_content(self, path: str, data) -> None:
        """A whole file's content from a layer tar (see :mod:`.apply`): in
        accounting mode, bytes a thinp diff made from version stamps
        (:func:`._treediff.decode_stamps`) keep their versions, and so does
        a :class:`~thinp.image.stamps.StampedContent` (stamps, no bytes)."""
        if isinstance(data, StampedContent):
            if self.payload:
                data = data.to_bytes()
            else:
                self.write(path, 0, data.size)
                _canon, _stacks, _bi, node = self._top(path)
                nb = data.nr_blocks
                stamps = np.zeros(max(nb, 1), dtype=np.uint64)
                k = min(nb, len(data.stamps))
                stamps[:k] = data.stamps[:k]
                node.stamps = stamps
                return
        stamps = None if self.payload else decode_stamps(data)
        if stamps is None:
            self.write(path, 0, data)
            return
        self.write(path, 0, len(data))
        _canon, _stacks, _bi, node = self._top(path)
        node.stamps = stamps

    def truncate(self, path: str, size: int) -> None:
        self._check_rw(path)
        canon, stacks, bi, node = self._top(path)
        if _stat.S_ISDIR(node.mode):
            raise _err(errno.EISDIR, path)
        self._copy_up(canon, stacks, data=size > 0)
        self.fs.truncate(self._bpath(0, canon), size)

    def _attr(self, path: str, follow: bool, fn, meta_only: bool) -> None:
        self._check_rw(path)
        canon, stacks, bi, node = self._top(path, follow)
        self._copy_up(canon, stacks, meta=meta_only and self.metacopy and _stat.S_ISREG(node.mode))
        fn(self._bpath(0, canon))

    def chmod(self, path: str, mode: int) -> None:
        self._attr(path, True, lambda p: self.fs.chmod(p, mode), True)

    def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        self._attr(path, follow_symlinks, lambda p: self.fs.chown(p, uid, gid, follow_symlinks=False), True)

    def utime(self, path: str, times=None, *, follow_symlinks: bool = True) -> None:
        self._attr(path, follow_symlinks, lambda p: self.fs.utime(p, times, follow_symlinks=False), False)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if self.char_wh and name.startswith("trusted.overlay."):
            raise _err(errno.EPERM, path)
        self._attr(path, True, lambda p: self.fs.setxattr(p, name, value, follow_symlinks=False), True)

    def fsync(self, path: str) -> None:
        canon, _s, bi, _n = self._top(path)
        if bi == 0 and self.writable:
            self.fs.fsync(self._bpath(0, canon))

    # -- removing -------------------------------------------------------------------
    @_namespace_change
    def unlink(self, path: str) -> None:
        self._check_rw(path)
        canon, stacks, bi, node = self._top(path, follow=False)
        if _stat.S_ISDIR(node.mode):
            raise _err(errno.EISDIR, path)
        self._remove(canon, stacks, bi)

    def _remove(self, canon, stacks, bi) -> None:
        lower = self._lower_positive(stacks[-2], canon[-1])
        if bi == 0:
            up = self._bpath(0, canon)
            if _stat.S_ISDIR(stacks[-1][0][1].mode):
                self._purge_upper_dir(up)
            else:
                self.fs.unlink(up)
        else:
            self._copy_up_dirs(canon, stacks, len(canon) - 1)
        if lower:
            self._whiteout(canon)

    @_namespace_change
    def rmdir(self, path: str) -> None:
        self._check_rw(path)
        canon, stacks, bi, node = self._top(path, follow=False)
        if not canon:
            raise _err(errno.EBUSY, path)
        if not _stat.S_ISDIR(node.mode):
            raise _err(errno.ENOTDIR, path)
        if self._merged_names(stacks[-1], canon):
            raise _err(errno.ENOTEMPTY, path)
        self._remove(canon, stacks, bi)

    @_namespace_change
    def rename(self, src: str, dst: str) -> None:
        self._check_rw(src)
        scanon, sstacks, sbi, snode = self._top(src, follow=False)
        sdir = _stat.S_ISDIR(snode.mode)
        if sdir and any(b > 0 for b, _ in sstacks[-1]):
            raise _err(errno.EXDEV, src)   # a lower or merged directory (redirect_dir off)
        dcanon, dstacks = self._resolve(dst, follow=False)
        if not scanon or not dcanon:
            raise _err(errno.EBUSY, src)
        if sdir and dcanon[: len(scanon)] == scanon and len(dcanon) > len(scanon):
            raise _err(errno.EINVAL, dst)
        dst_st = dstacks[-1]
        if dst_st:
            dnode = dst_st[0][1]
            if dnode is snode:
                return
            ddir = _stat.S_ISDIR(dnode.mode)
            if ddir and not sdir:
                raise _err(errno.EISDIR, dst)
            if sdir and not ddir:
                raise _err(errno.ENOTDIR, dst)
            if ddir and self._merged_names(dst_st, dcanon):
                raise _err(errno.ENOTEMPTY, dst)
        src_lower = self._lower_positive(sstacks[-2], scanon[-1])
        self._copy_up(scanon, sstacks)
        # the source's parent chain may be a prefix of the destination's: re-resolve
        dcanon, dstacks = self._resolve(dst, follow=False)
        dst_st = dstacks[-1]
        self._copy_up_dirs(dcanon, dstacks, len(dcanon) - 1)
        dst_lower = self._lower_positive(dstacks[-2], dcanon[-1])
        if dst_st and dst_st[0][0] == 0 and _stat.S_ISDIR(dst_st[0][1].mode):
            self._purge_upper_dir(self._bpath(0, dcanon))
        else:
            self._clear_upper_whiteout(dcanon)
        fs = self.fs
        up_src = self._bpath(0, scanon)
        moved = fs.inode(up_src, follow=False)
        fs.rename(up_src, self._bpath(0, dcanon))
        if src_lower:
            self._whiteout(scanon)
        if sdir:
            opaque = self._is_opaque(moved)
            parent_merged = any(b > 0 for b, _ in dstacks[-2])
            if not opaque and (dst_lower or (self.char_wh and parent_merged)):
                self._set_opaque(dcanon)
        if self.origin and moved.xattrs and OVL_ORIGIN in moved.xattrs and scanon[:-1] != dcanon[:-1]:
            self._set_impure(dcanon[:-1])

    def __repr__(self) -> str:
        return f"<{type(self.driver).__name__} view of {len(self.branches)} branches>"


def _copy_data(fs, src: str, dst: str, size: int, snode=None, dnode=None) -> None:
    """Copy a file's content within one filesystem (bytes, or version stamps).
    ``snode``/``dnode`` are the inodes when the caller has them (saves lookups)."""
    if fs.payload:
        fs.write(dst, 0, fs.read(src, 0, size))
        return
    if dnode is None:
        dnode = fs.inode(dst)
    if snode is None:
        snode = fs.inode(src)
    fs.write_inode(dnode, 0, size)
    n = (size + BLOCK - 1) // BLOCK
    st = snode.stamps
    if st is None:
        dnode.stamps = None
    else:
        new = np.zeros(max(n, 1), dtype=np.uint64)
        k = min(n, len(st))
        new[:k] = st[:k]
        dnode.stamps = new


def _origin_handle(node) -> bytes:
    """A 29-byte ``trusted.overlay.origin`` (struct ovl_fb: version, magic, len,
    flags, type, uuid, then an ext4 file handle of the lower inode)."""
    return (b"\x00\xfb\x1d\x00\x01" + bytes(16) + int(node.ino).to_bytes(4, "little")
            + zlib.crc32(int(node.ino).to_bytes(8, "little")).to_bytes(4, "little"))


# ---------------------------------------------------------------- the driver
class UnionDriver(Driver):
    """Base of vfs, aufs, overlay and overlay2 (see the module docstring).

    Options: ``fstype`` ("ext4" | "xfs"), ``size`` of the backing device
    (default 20 GiB, sparse), ``payload`` (keep bytes), ``backing_file``
    (put the device in a sparse file under ``root``), ``fs_options`` (mkfs
    options), ``page_cache_bytes`` (an LRU page cache of that size; default
    unbounded, see :mod:`~thinp.drivers.pagecache`)."""

    name = ""
    whiteout_style = "char"      # "char" (overlay 0/0 device) or "aufs" (.wh. files)
    origin_xattrs = False        # overlay: trusted.overlay.origin/impure on copy-up
    native_diff = False          # walk only the layer's branch for changes()
    max_depth: int | None = None  # deepest parent chain a layer may have
    flat_layers = False          # every layer holds its whole tree (vfs, overlay image layers)
    base_dir = "/var/lib/docker"

    def __init__(self, root=None, *, fstype: str = "ext4", size="20GiB", payload: bool = False,
                 backing_file: bool = False, fs_options: dict | None = None, metacopy=False,
                 page_cache_bytes: int | None = None, **options):
        from ..fs import mkfs

        if options:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(options)}")
        if isinstance(metacopy, str):
            metacopy = metacopy.lower() in ("on", "true", "1", "yes")
        if metacopy and self.name != "overlay2":
            raise ValueError(f"{self.name}: metacopy is an overlay2 option")
        self.metacopy = bool(metacopy)
        self.root = None if root is None else os.fspath(root)
        path = None
        if backing_file:
            if self.root is None:
                self.root = tempfile.mkdtemp(prefix=f"thinp-{self.name}-")
            os.makedirs(self.root, exist_ok=True)
            path = os.path.join(self.root, f"{self.name}.img")
        self.device = PlainDevice(size, path=path, payload=payload)
        self.fs = mkfs(self.device, fstype, **(fs_options or {}))
        self.fstype = fstype
        self.home = f"{self.base_dir}/{self.name}"
        d = ""
        for part in _split(self.home):
            d += "/" + part
            self.fs.mkdir(d, 0o710 if part == self.name else 0o711)
        self.layers = LayerTable(self.name, None if self.max_depth is None else self.max_depth + 1)
        self._bookkeeping: set[str] = set()   # paths written by _write_small
        self._counters = {k: 0 for k in ("copy_up_bytes", "copy_up_count", "lookup_probes", "mount_ops",
                                         "create_ops", "diff_work")}
        self.naive = NaiveDiff(self._counters, by_stat=self.capabilities().changes_by_stat)
        self.page_cache = PageCache(page_cache_bytes)
        # a freed inode's pages go (the kernel's evict_inode), so a later file
        # that reuses the inode number starts cold.  The hook holds the cache,
        # not the driver: a driver <-> filesystem cycle would leave a whole
        # filesystem (vfs: 2.5 M objects) to the cyclic collector, 2.5 s.
        drop = self.page_cache.drop
        self.fs.on_release(lambda node: drop(("ino", node.ino)))
        self._gen = 0      # bumped by every change that can alter a merged directory stack
        self._setup()

    # -- subclass hooks ---------------------------------------------------------
    def _setup(self) -> None:
        """Driver-wide directories (overlay2's ``l/``, aufs's ``diff/ layers/ mnt/``)."""

    def _make_layer(self, rec: LayerRecord) -> None:
        raise NotImplementedError

    def _drop_layer(self, rec: LayerRecord) -> None:
        raise NotImplementedError

    def _branches(self, rec: LayerRecord) -> list[str]:
        """Backing directories of the layer's view, top first."""
        raise NotImplementedError

    def _own_dirs(self, rec: LayerRecord) -> list[str]:
        """Backing directories this layer owns (for usage and logical bytes)."""
        return [self._branches(rec)[0]]

    # -- the layout, for validation and tests ------------------------------------
    def branches(self, id: str) -> list[str]:
        """Backing-filesystem directories of layer ``id``'s view, top first
        (Docker's UpperDir/Dir, then the LowerDirs)."""
        return list(self._branches(self._rec(id)))

    def upper_dir(self, id: str) -> str:
        """The backing directory layer ``id`` writes into (its own branch)."""
        return self._branches(self._rec(id))[0]

    # -- helpers ----------------------------------------------------------------
    def _rec(self, id: str) -> LayerRecord:
        return self.layers[id]

    def _chain(self, rec: LayerRecord) -> list[LayerRecord]:
        return self.layers.chain(rec.id)

    def _rmtree(self, path: str) -> None:
        fs = self.fs
        if not fs.exists(path):
            return
        node = fs.inode(path, follow=False)
        if not _stat.S_ISDIR(node.mode):
            fs.unlink(path)
            return
        for name in list(node.entries):
            self._rmtree(path + "/" + name)
        fs.rmdir(path)

    def _write_small(self, path: str, text: str) -> None:
        """A driver bookkeeping file (aufs ``layers/<id>``, overlay2 ``link``
        and ``lower``): on the disk, but not layer content."""
        data = text.encode()
        self.fs.create(path, 0o644)
        self.fs.write(path, 0, data if self.fs.payload else len(data))
        self._bookkeeping.add(path)

    def _bookkeeping_bytes(self) -> int:
        fs, n = self.fs, 0
        for p in list(self._bookkeeping):
            try:
                n += fs.inode(p, follow=False).size
            except OSError:
                self._bookkeeping.discard(p)
        return n

    def _page_cache_touch(self, node, offset: int, length) -> None:
        """A read of a regular file through any layer's view: the page cache
        is keyed by the backing inode, so every container reading an
        image file through the same lower branch shares its pages."""
        size = node.size
        if length is None:
            length = size - offset
        end = min(size, offset + max(length, 0))
        if end > offset:
            self.page_cache.read(("ino", node.ino), end - offset, offset)

    # -- Driver -------------------------------------------------------------------
    def create(self, id: str, parent: str | None, *, read_write: bool = False, **opts) -> None:
        rec = self.layers.new(id, parent, read_write, opts)
        rec.data = {}
        self._make_layer(rec)
        self.layers.add(rec)
        self._counters["create_ops"] += 1

    def remove(self, id: str) -> None:
        rec = self.layers.removable(id)
        self._gen += 1
        self._drop_layer(rec)
        self.layers.drop(id)

    def get(self, id: str) -> UnionView:
        view, first = self.layers.mount(
            id, lambda rec: UnionView(self, self._branches(rec), writable=rec.read_write))
        self._counters["mount_ops"] += first
        return view

    def put(self, id: str) -> None:
        """Unmount: the union mount goes; the backing filesystem stays mounted
        (it holds every layer), so nothing is written back here."""
        self.layers.unmount(id)

    def cleanup(self) -> None:
        self.layers.unmount_all()
        self.fs.sync()
        self.device.close()

    def status(self) -> list[tuple[str, str]]:
        return [("Storage Driver", self.name), ("Backing Filesystem", self.fstype),
                ("Layers", str(len(self.layers)))]

    def capabilities(self) -> Capabilities:
        union = self.name != "vfs"
        return Capabilities(reproducible_diff=True, native_diff=self.native_diff,
                            shares_page_cache="inode" if union else "none",
                            copy_on_write="file" if union else "none",
                            max_layers=None if self.max_depth is None else self.max_depth + 1,
                            dir_rename_exdev=union, breaks_lower_hardlinks=union,
                            changes="upper" if self.native_diff else "naive")

    def _view(self, id: str | None, *, writable: bool = False):
        if id is None:
            return None
        return UnionView(self, self._branches(self._rec(id)), writable=writable)

    def changes(self, id: str, parent: str | None) -> list[Change]:
        rec = self._rec(id)
        if self.native_diff and parent == rec.parent:
            return self._branch_changes(rec)[0]
        return self.naive.changes(self._view(id), self._view(parent))

    def _branch_changes(self, rec: LayerRecord):
        """Native changes: walk only the layer's own branch (aufs, overlay2).
        Returns (changes, opaque directory paths)."""
        fs = self.fs
        top = self._branches(rec)[0]
        view = self._view(rec.id)
        lower = self._view(rec.parent)
        out: dict[str, str] = {}
        opaque: list[str] = []
        work = 0
        # (path, upper dir inode, does the lower have this directory, not hidden by an opaque marker?)
        stack = [("", fs.inode(top, follow=False), lower is not None)]
        while stack:
            p, d, has_lower = stack.pop()
            if view._is_opaque(d) and p:
                opaque.append(p)
                if has_lower:
                    names = set(view.listdir(p))
                    for n in lower.listdir(p):
                        if n not in names:
                            out[p + "/" + n] = "D"
                has_lower = False
            for name, ino in d.entries.items():
                work += 1
                node = fs.inodes[ino]
                if not p and name in self._branch_meta:
                    continue
                if self.whiteout_style == "aufs" and name.startswith(WH_PREFIX):
                    if name != WH_OPAQUE and not name.startswith(".wh..wh."):
                        out[p + "/" + name[len(WH_PREFIX):]] = "D"
                    continue
                path = p + "/" + name
                if view._is_whiteout(node):
                    out[path] = "D"
                    continue
                in_lower = has_lower and lower.exists(path)
                if _stat.S_ISDIR(node.mode):
                    lower_dir = in_lower and _stat.S_ISDIR(lower.lstat(path).st_mode)
                    # a directory in the branch is "A", or "C" when the lower has it (copied up,
                    # maybe only to hold a change below, maybe chmod-ed: the walk cannot tell)
                    out[path] = "C" if in_lower else "A"
                    stack.append((path, node, lower_dir))
                else:
                    out[path] = "C" if in_lower else "A"
        # a directory holding a change shows as "C" (the walk already named the added ones)
        for p in list(out):
            parent = p.rsplit("/", 1)[0]
            while parent and parent not in out:
                out[parent] = "C"
                parent = parent.rsplit("/", 1)[0]
        self._counters["diff_work"] += work
        return sorted(Change(p, k) for p, k in out.items()), opaque

    _branch_meta = frozenset({WH_BASE, ".wh..wh.plnk", ".wh..wh.orph"})

    def diff(self, id: str, parent: str | None):
        rec = self._rec(id)
        view = self._view(id)
        if self.native_diff and parent == rec.parent:
            changes, opaque = self._branch_changes(rec)
            return self.naive.layer(view, changes, opaque)
        return self.naive.diff(view, self._view(parent))

    def apply_diff(self, id: str, parent: str | None, layer) -> int:
        """Untar ``layer`` into layer ``id`` (Docker's ``ApplyDiff``): into its
        own branch with native whiteouts (aufs, overlay2), or into its whole
        tree, deleting what the whiteouts name (vfs, overlay)."""
        rec = self._rec(id)
        self._gen += 1
        self.layers.busy(id)
        if parent != rec.parent:
            raise ValueError(f"{self.name}: layer {id!r} has parent {rec.parent!r}, not {parent!r}")
        if self.flat_layers or rec.read_write:
            return apply_layer(UnionView(self, self._branches(rec), writable=True), layer)
        return apply_layer(UnionView(self, self._branches(rec)[:1], writable=True), layer, NativeWhiteouts())

    def fill(self, id: str, fn) -> None:
        """Call ``fn(view)`` with a writable view of unmounted layer ``id``, as
        ``apply_diff`` writes a layer (no tar needed: workloads and benchmarks
        fill an image layer from a manifest this way)."""
        rec = self._rec(id)
        self._gen += 1
        self.layers.busy(id)
        fn(UnionView(self, self._branches(rec), writable=True))

    def usage(self, id: str) -> Usage:
        rec = self._rec(id)
        size = inodes = 0
        fs = self.fs
        inherited: set[int] = set()     # hard links into the parent's tree (overlay's farm)
        if rec.parent is not None:
            for top in self._own_dirs(self.layers[rec.parent]):
                if fs.exists(top):
                    inherited.update(n.ino for n in walk_nodes(fs, fs.inode(top, follow=False))
                                     if n.nlink > 1 and not _stat.S_ISDIR(n.mode))
        for top in self._own_dirs(rec):
            if not fs.exists(top):
                continue
            links: dict[int, int] = {}
            nodes = {}
            for node in walk_nodes(fs, fs.inode(top, follow=False)):
                links[node.ino] = links.get(node.ino, 0) + 1
                nodes[node.ino] = node
            for ino, n in links.items():
                node = nodes[ino]
                if _stat.S_ISDIR(node.mode) or n >= node.nlink or ino not in inherited:
                    inodes += 1
                    size += fs.stat_inode(node).st_blocks * 512
        return Usage(size=size, inodes=inodes)

    def op_counters(self) -> tuple:
        c, s = self._counters, self.device.stats
        return (s.bytes_written, s.nr_writes, c["copy_up_bytes"], c["copy_up_count"], 0, 0,
                c["lookup_probes"], 0, len(self.fs.inodes))     # (physical_bytes counts a bitmap: not per op)

    def stats(self) -> dict:
        """Counters after a sync (delayed allocation written back), as ``du``
        and the device see them once the page cache is flushed."""
        fs = self.fs
        fs.sync()
        out = empty_stats()
        for k, v in self._counters.items():
            out[k] = v
        out["physical_bytes"] = self.device.physical_bytes
        out["bytes_written"] = self.device.stats.bytes_written
        out["metadata_bytes"] = max(self.device.physical_bytes - fs.data_blocks * BLOCK, 0)
        out["inodes"] = len(fs.inodes)
        out["page_cache_bytes"] = self.page_cache.cached_bytes
        # every regular file of the backing filesystem lies in some layer's
        # directory, so the filesystem's running per-link total is the sum
        # over layers (a hard link between layers counts in each, as a walk
        # of each layer's tree would: see _logical_by_walk)
        out["logical_bytes"] = fs.file_bytes - self._bookkeeping_bytes()
        return out

    def _logical_by_walk(self) -> int:
        """``logical_bytes`` by walking every layer's tree (what stats() kept
        as a running total; the tests compare the two)."""
        fs = self.fs
        logical = 0
        for rec in self.layers.values():
            top = self._branches(rec)[0]
            logical += sum(n.size for n in walk_nodes(fs, fs.inode(top, follow=False)) if _stat.S_ISREG(n.mode))
        return logical

    def metadata(self, id: str) -> dict:
        rec = self._rec(id)
        br = self._branches(rec)
        return {"UpperDir" if rec.read_write else "Dir": br[0], "LowerDir": ":".join(br[1:])}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.layers)} layers on {self.fs!r}>"


def walk_nodes(fs, node):
    """Every inode reached below a directory inode (hard links repeat)."""
    stack = [node]
    while stack:
        d = stack.pop()
        for ino in d.entries.values():
            c = fs.inodes[ino]
            yield c
            if c.entries is not None:
                stack.append(c)


# ---------------------------------------------------------------- apply a layer tar
class NativeWhiteouts:
    """The whiteout plug-in of :func:`.apply.apply_layer` for a layer untarred
    into its own branch (overlay2's and aufs's ``ApplyDiff``): whiteouts and
    opaque markers are written in the driver's native form -- a character
    device 0/0 and ``trusted.overlay.opaque`` (overlay2), ``.wh.`` hard links
    (aufs) -- to act on the lower layers when the layer is mounted."""

    def whiteout(self, view: UnionView, path: str, unpacked: set) -> None:
        if view.fs.exists(view.branches[0] + path):
            return
        ensure_parents(view, path, unpacked)
        view._whiteout(_split(path))

    def opaque(self, view: UnionView, path: str, unpacked: set) -> None:
        ensure_parents(view, path.rstrip("/") + "/x", unpacked)
        if not view.fs.exists(view.branches[0] + path):
            view.mkdir(path, 0o755)
            unpacked.add(path)
        view._set_opaque(_split(path))


def copy_dir(fs, src: str, dst: str) -> None:
    """Copy backing directory ``src`` to ``dst`` (created) entry for entry:
    whiteouts, xattrs and hard links within the tree kept (moby's ``DirCopy``),
    as one :meth:`~thinp.fs.core.Filesystem.clone_tree`."""
    fs.clone_tree(src, dst)


def _set_xattrs(fs, p: str, xattrs) -> None:
    for k, v in (xattrs or {}).items():
        fs.setxattr(p, k, v if isinstance(v, bytes) else str(v).encode(), follow_symlinks=False)


def clone_tree(drv: UnionDriver, src_view, dst: str, *, hardlink_from=()) -> None:
    """Copy ``src_view``'s merged tree to backing directory ``dst`` (which
    exists).  Regular files whose backing file lies under one of the
    ``hardlink_from`` directories are hard-linked (overlay's layer farm);
    the rest are copied (vfs)."""
    fs = drv.fs
    prefixes = tuple(h.rstrip("/") + "/" for h in hardlink_from)
    links: dict[int, str] = {}
    for top, dirs, files in src_view.walk("/"):
        base = top.rstrip("/")
        for n in dirs:
            p = base + "/" + n
            canon, stacks, bi, node = src_view._top(p, follow=False)
            d = dst + p
            fs.mkdir(d, _stat.S_IMODE(node.mode), uid=node.uid, gid=node.gid)
            _set_xattrs(fs, d, {k: v for k, v in (node.xattrs or {}).items() if not k.startswith("trusted.overlay.")})
        for n in files:
            p = base + "/" + n
            canon, stacks, bi, node = src_view._top(p, follow=False)
            src = src_view._bpath(bi, canon)
            d = dst + p
            mode = node.mode
            if _stat.S_ISREG(mode):
                if prefixes and src.startswith(prefixes):
                    fs.link(src, d)
                    continue
                if node.nlink > 1 and node.ino in links:
                    fs.link(links[node.ino], d)
                    continue
                fs.create(d, _stat.S_IMODE(mode), uid=node.uid, gid=node.gid)
                if node.size:
                    _copy_data(fs, src_view._data_source(canon, stacks, bi, node), d, node.size)
                if node.nlink > 1:
                    links[node.ino] = d
            elif _stat.S_ISLNK(mode):
                fs.symlink(node.target, d, uid=node.uid, gid=node.gid)
            else:
                fs.mknod(d, mode, node.rdev, uid=node.uid, gid=node.gid)

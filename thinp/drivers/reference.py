"""The reference driver: an obviously-correct in-memory model (a test oracle).

``"reference"`` is not one of Docker's seven drivers and is hidden from
:func:`~thinp.drivers.known_drivers` (``known_drivers(hidden=True)`` lists
it).  The contract tests and the cross-driver equivalence tests compare
every real driver against it, and the engine can run on it.

State, per :class:`ReferenceDriver`:

* ``layers``: id -> :class:`_Layer` with ``parent`` (id or None),
  ``read_write``, ``tree`` (a :class:`Tree`), ``mounts`` (get/put count) and
  ``view``;
* a :class:`Tree` is ``nodes``: absolute path ("/" is the root, no trailing
  slash) -> :class:`RNode`, and ``children``: dir path -> set of names.
  Hardlinked paths hold the *same* ``RNode`` object; ``create`` copies the
  parent's whole tree (each inode once, so links stay links): no sharing
  between layers, nothing clever.

An ``RNode`` holds ``kind`` (the :class:`thinp.image.Entry` vocabulary:
file dir symlink char block fifo), ``mode`` (permission bits), ``uid``,
``gid``, ``size``, ``mtime``, ``target`` (symlink), ``rdev``, ``xattrs``
and the content: ``data`` (bytearray) with ``payload=True``, else
``stamps`` (uint64 per 4 KiB block) computed exactly as :mod:`thinp.fs`
does, so :meth:`MountedView.content` compares equal with a real driver in
the same mode.  Times come from a logical clock (one tick per operation),
so the reference's diffs are reproducible byte for byte.

``changes`` is Docker's naive ``ChangesDirs``: a path is "A" when only the
layer has it, "D" when only the parent has it (a deleted directory's
children are not listed), "C" when its type, mode, uid, gid, rdev, xattrs,
link target, or (non-directories) size, mtime or content differ; every
ancestor directory of a change is "C".  With ``changes_by_stat=True`` it
is Docker's exact rule instead (no content; of the xattrs only
``security.capability``), to stand beside drivers whose capabilities say
``changes_by_stat``.  ``diff`` writes those changes as a
tar with OCI whiteouts (one ``.wh.`` per deleted path, never an opaque
marker) and hardlinks between changed paths that share an inode.  In
accounting mode (no bytes kept) file content in a diff is zeros.

Counters are those a full-copy store would have (like vfs): every layer
holds its whole tree, so ``physical_bytes`` = ``logical_bytes``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat as _stat
from dataclasses import dataclass, field

import numpy as np

from ..fs.core import BLOCK, StatResult, mix_stamp, block_stamp
from .base import Capabilities, Change, Driver, MountedView, Usage, empty_stats, register
from .layers import LayerRecord, LayerTable
from .pagecache import PageCache

__all__ = ["ReferenceDriver", "ReferenceView", "Tree", "RNode", "ZeroReader"]

SYMLOOP_MAX = 40
NAME_MAX = 255
_EPOCH = 1_700_000_000.0

_IFMT = {"file": _stat.S_IFREG, "dir": _stat.S_IFDIR, "symlink": _stat.S_IFLNK,
         "char": _stat.S_IFCHR, "block": _stat.S_IFBLK, "fifo": _stat.S_IFIFO}
_KIND_OF_IFMT = {v: k for k, v in _IFMT.items()}


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _join(d: str, name: str) -> str:
    return "/" + name if d == "/" else d + "/" + name


def _parent_name(path: str) -> tuple[str, str]:
    d, _, name = path.rpartition("/")
    return d or "/", name


@dataclass(eq=False)
class RNode:
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: float = 0.0
    target: str = ""
    rdev: int = 0
    xattrs: dict = field(default_factory=dict)
    data: bytearray | None = None
    stamps: np.ndarray | None = None
    ino: int = 0
    nlink: int = 1

    def copy(self) -> "RNode":
        return RNode(self.kind, self.mode, self.uid, self.gid, self.size, self.mtime, self.target,
                     self.rdev, dict(self.xattrs),
                     bytearray(self.data) if self.data is not None else None,
                     self.stamps.copy() if self.stamps is not None else None, self.ino, self.nlink)

    def content_key(self, payload: bool):
        """(size, digest) exactly as :meth:`thinp.fs.Filesystem.content`."""
        if payload:
            return self.size, hashlib.blake2b(bytes(self.data or b""), digest_size=16).hexdigest()
        n = (self.size + BLOCK - 1) // BLOCK
        st = np.zeros(n, dtype=np.uint64)
        if self.stamps is not None and n:
            k = min(len(self.stamps), n)
            st[:k] = self.stamps[:k]
        return self.size, hashlib.blake2b(st.tobytes(), digest_size=16).hexdigest()


class Tree:
    """One layer's whole file tree (see the module docstring)."""

    def __init__(self):
        self.nodes: dict[str, RNode] = {"/": RNode("dir", 0o755, nlink=2, ino=1)}
        self.children: dict[str, set[str]] = {"/": set()}

    def copy(self) -> "Tree":
        t = Tree.__new__(Tree)
        seen: dict[int, RNode] = {}
        t.nodes = {}
        for p, n in self.nodes.items():
            c = seen.get(id(n))
            if c is None:
                c = seen[id(n)] = n.copy()
            t.nodes[p] = c
        t.children = {d: set(s) for d, s in self.children.items()}
        return t

    def add(self, path: str, node: RNode) -> None:
        d, name = _parent_name(path)
        self.nodes[path] = node
        self.children[d].add(name)
        if node.kind == "dir":
            self.children.setdefault(path, set())

    def remove(self, path: str) -> None:
        """Remove ``path`` and (for a directory) everything below it."""
        self._drop(path)
        d, name = _parent_name(path)
        self.children[d].discard(name)

    def _drop(self, path: str) -> None:
        node = self.nodes.pop(path)
        if node.kind == "dir":
            for name in self.children.pop(path, set()):
                self._drop(_join(path, name))
        else:
            node.nlink -= 1

    def paths(self) -> list[str]:
        return sorted(p for p in self.nodes if p != "/")


class ZeroReader(io.RawIOBase):
    """``size`` zero bytes, read in chunks (accounting-mode file content in tars)."""

    def __init__(self, size: int):
        self.remaining = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.remaining)
        b[:n] = bytes(n)
        self.remaining -= n
        return n


# ============================================================ the view
class ReferenceView(MountedView):
    """File operations on one layer's :class:`Tree` (POSIX errnos)."""

    def __init__(self, driver: "ReferenceDriver", layer: "_Layer"):
        self._driver = driver
        self._layer = layer

    # ---------------------------------------------------------- helpers
    @property
    def tree(self) -> Tree:
        return self._layer.tree

    def _tick(self) -> float:
        return self._driver._tick()

    def _writable(self, path: str) -> None:
        if not self._layer.read_write and not self._layer.applying:
            raise _err(errno.EROFS, path)

    def _resolve(self, path: str, follow: bool = True, _depth: int = 0) -> str:
        """The real path of ``path`` (symlinks in parents always followed,
        the last one when ``follow``), ENOENT/ENOTDIR/ELOOP as the kernel."""
        if not isinstance(path, str):
            raise TypeError(f"path must be str, not {type(path).__name__}")
        parts = [p for p in path.split("/") if p and p != "."]
        cur = "/"
        nodes = self.tree.nodes
        i = 0
        while i < len(parts):
            name = parts[i]
            node = nodes[cur]
            if node.kind != "dir":
                raise _err(errno.ENOTDIR, path)
            if name == "..":
                cur = _parent_name(cur)[0] if cur != "/" else "/"
                i += 1
                continue
            nxt = _join(cur, name)
            child = nodes.get(nxt)
            if child is None:
                raise _err(errno.ENOENT, path)
            last = i == len(parts) - 1
            if child.kind == "symlink" and (follow or not last):
                if _depth >= SYMLOOP_MAX:
                    raise _err(errno.ELOOP, path)
                rest = "/".join(parts[i + 1:])
                tgt = child.target
                newp = (tgt if tgt.startswith("/") else cur + "/" + tgt) + ("/" + rest if rest else "")
                return self._resolve(newp, follow, _depth + 1)
            cur = nxt
            i += 1
        return cur

    def _parent(self, path: str) -> tuple[str, str]:
        """(real parent dir path, name) for creating/removing ``path``."""
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts:
            raise _err(errno.EEXIST if path.strip("/") == "" else errno.ENOENT, path)
        name = parts[-1]
        if name == "..":
            raise _err(errno.EINVAL, path)
        if len(name.encode()) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG, path)
        d = self._resolve("/" + "/".join(parts[:-1]))
        if self.tree.nodes[d].kind != "dir":
            raise _err(errno.ENOTDIR, path)
        return d, name

    def _node(self, path: str, follow: bool = True) -> RNode:
        return self.tree.nodes[self._resolve(path, follow)]

    def _touch_dir(self, d: str) -> None:
        self.tree.nodes[d].mtime = self._tick()

    def _make(self, path: str, node: RNode) -> RNode:
        self._writable(path)
        d, name = self._parent(path)
        p = _join(d, name)
        if p in self.tree.nodes:
            raise _err(errno.EEXIST, path)
        node.ino = self._driver._new_ino()
        node.mtime = self._tick()
        if node.kind == "dir":
            node.nlink = 2
        self.tree.add(p, node)
        self._touch_dir(d)
        return node

    def _file(self, path: str, create: bool = False) -> RNode:
        try:
            node = self._node(path)
        except OSError as e:
            if e.errno != errno.ENOENT or not create:
                raise
            return self._make(path, RNode("file", 0o644))
        if node.kind == "dir":
            raise _err(errno.EISDIR, path)
        if node.kind != "file":
            raise _err(errno.EINVAL, path)
        return node

    # ---------------------------------------------------------- namespace
    def create(self, path, mode=0o644, *, uid=0, gid=0):
        self._make(path, RNode("file", mode & 0o7777, uid, gid))

    def mkdir(self, path, mode=0o755, *, uid=0, gid=0):
        self._make(path, RNode("dir", mode & 0o7777, uid, gid))

    def mknod(self, path, mode, rdev=0, *, uid=0, gid=0):
        fmt = _stat.S_IFMT(mode) or _stat.S_IFCHR
        kind = _KIND_OF_IFMT.get(fmt)
        if kind not in ("char", "block", "fifo", "file"):
            raise _err(errno.EINVAL, path)
        self._make(path, RNode(kind, _stat.S_IMODE(mode), uid, gid, rdev=int(rdev)))

    def symlink(self, target, path, *, uid=0, gid=0):
        self._make(path, RNode("symlink", 0o777, uid, gid, size=len(target.encode()), target=target))

    def link(self, src, dst):
        self._writable(dst)
        node = self._node(src, follow=False)
        if node.kind == "dir":
            raise _err(errno.EPERM, src)
        d, name = self._parent(dst)
        p = _join(d, name)
        if p in self.tree.nodes:
            raise _err(errno.EEXIST, dst)
        node.nlink += 1
        self.tree.add(p, node)
        self._touch_dir(d)

    def unlink(self, path):
        self._writable(path)
        d, name = self._parent(path)
        p = _join(d, name)
        node = self.tree.nodes.get(p)
        if node is None:
            raise _err(errno.ENOENT, path)
        if node.kind == "dir":
            raise _err(errno.EISDIR, path)
        self.tree.remove(p)
        self._touch_dir(d)

    def rmdir(self, path):
        self._writable(path)
        d, name = self._parent(path)
        p = _join(d, name)
        node = self.tree.nodes.get(p)
        if node is None:
            raise _err(errno.ENOENT, path)
        if node.kind != "dir":
            raise _err(errno.ENOTDIR, path)
        if self.tree.children[p]:
            raise _err(errno.ENOTEMPTY, path)
        self.tree.remove(p)
        self._touch_dir(d)

    def rename(self, src, dst):
        self._writable(dst)
        sd, sname = self._parent(src)
        sp = _join(sd, sname)
        node = self.tree.nodes.get(sp)
        if node is None:
            raise _err(errno.ENOENT, src)
        dd, dname = self._parent(dst)
        dp = _join(dd, dname)
        if node.kind == "dir" and (dp == sp or dp.startswith(sp + "/")):
            if dp == sp:
                return
            raise _err(errno.EINVAL, dst)
        old = self.tree.nodes.get(dp)
        if old is node:
            return
        if old is not None:
            if old.kind == "dir" and node.kind != "dir":
                raise _err(errno.EISDIR, dst)
            if node.kind == "dir" and old.kind != "dir":
                raise _err(errno.ENOTDIR, dst)
            if old.kind == "dir" and self.tree.children[dp]:
                raise _err(errno.ENOTEMPTY, dst)
            self.tree.remove(dp)
        # move the subtree
        moved = [sp] + ([p for p in self.tree.nodes if p.startswith(sp + "/")] if node.kind == "dir" else [])
        items = [(p, self.tree.nodes.pop(p)) for p in moved]
        kids = {p: self.tree.children.pop(p) for p in moved if p in self.tree.children}
        self.tree.children[sd].discard(sname)
        for p, n in items:
            self.tree.nodes[dp + p[len(sp):]] = n
        for p, s in kids.items():
            self.tree.children[dp + p[len(sp):]] = s
        self.tree.children[dd].add(dname)
        self._touch_dir(sd)
        self._touch_dir(dd)

    # ---------------------------------------------------------- attributes
    def chmod(self, path, mode):
        self._writable(path)
        node = self._node(path)
        node.mode = mode & 0o7777

    def chown(self, path, uid, gid):
        self._writable(path)
        node = self._node(path)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid

    def utime(self, path, times=None):
        self._writable(path)
        node = self._node(path)
        node.mtime = times[1] if times is not None else self._tick()

    def setxattr(self, path, name, value):
        self._writable(path)
        self._node(path).xattrs[name] = bytes(value)

    def getxattr(self, path, name):
        node = self._node(path)
        if name not in node.xattrs:
            raise _err(errno.ENODATA, path)
        return node.xattrs[name]

    def listxattr(self, path):
        return sorted(self._node(path).xattrs)

    def stat(self, path, *, follow_symlinks=True):
        n = self._node(path, follow_symlinks)
        size = BLOCK if n.kind == "dir" else n.size
        return StatResult(_IFMT[n.kind] | n.mode, n.ino, 0, n.nlink, n.uid, n.gid, size,
                          n.mtime, n.mtime, n.mtime, (size + 511) // 512, n.rdev)

    def readlink(self, path):
        n = self._node(path, follow=False)
        if n.kind != "symlink":
            raise _err(errno.EINVAL, path)
        return n.target

    def listdir(self, path="/"):
        p = self._resolve(path)
        if self.tree.nodes[p].kind != "dir":
            raise _err(errno.ENOTDIR, path)
        return sorted(self.tree.children[p])

    def exists(self, path):
        try:
            self._resolve(path, follow=False)
            return True
        except OSError:
            return False

    # ---------------------------------------------------------- content
    def write(self, path, offset, data):
        self._writable(path)
        node = self._file(path, create=True)
        n = self._driver._write_node(node, offset, data)
        node.mtime = self._tick()
        return n

    def read(self, path, offset=0, length=None):
        node = self._node(path)
        if node.kind == "dir":
            raise _err(errno.EISDIR, path)
        if offset < 0:
            raise _err(errno.EINVAL, path)
        if length is None:
            length = max(node.size - offset, 0)
        end = min(offset + length, node.size)
        payload = self._driver.payload
        if end <= offset:
            return b"" if payload else np.zeros(0, dtype=np.uint64)
        # every layer is a full copy (like vfs): its files are its own inodes
        self._driver.page_cache.read((self._layer.id, node.ino), end - offset, offset)
        if payload:
            return bytes(node.data[offset:end])
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        out = np.zeros(b1 - b0, dtype=np.uint64)
        st = node.stamps
        if st is not None:
            k = min(len(st), b1) - b0
            if k > 0:
                out[:k] = st[b0:b0 + k]
        return out

    def content(self, path):
        node = self._node(path)
        if node.kind == "dir":
            raise _err(errno.EISDIR, path)
        return node.content_key(self._driver.payload)

    def truncate(self, path, size):
        self._writable(path)
        node = self._file(path)
        if size < 0:
            raise _err(errno.EINVAL, path)
        self._driver._truncate_node(node, size)
        node.mtime = self._tick()


# ============================================================ the driver
class _Layer(LayerRecord):
    """A layer: the table's fields, its whole ``tree``, and ``applying``
    (apply_diff may write a read-only layer)."""

    def __init__(self, id, parent, read_write, depth):
        super().__init__(id, parent, read_write, depth)
        self.tree = Tree()
        self.applying = False


@register
class ReferenceDriver(Driver):
    """The test oracle (see the module docstring).  Options: ``payload``
    (keep file bytes; default False: 4 KiB version stamps as in
    :mod:`thinp.fs`), ``max_layers`` (refuse deeper chains, to exercise
    :class:`~thinp.errors.TooManyLayersError`; default no limit)."""

    name = "reference"
    hidden = True

    def __init__(self, root=None, *, payload: bool = False, max_layers: int | None = None,
                 changes_by_stat: bool = False):
        self.root = None if root is None else os.fspath(root)
        self.payload = bool(payload)
        self.changes_by_stat = bool(changes_by_stat)
        self.max_layers = max_layers
        self.layers = LayerTable(self.name, max_layers)
        self._clock = 0
        self._ino = 1
        self._stats = empty_stats()
        self.page_cache = PageCache()

    # ---------------------------------------------------------- helpers
    def _tick(self) -> float:
        self._clock += 1
        return _EPOCH + self._clock

    def _new_ino(self) -> int:
        self._ino += 1
        return self._ino

    def _layer(self, id: str) -> _Layer:
        return self.layers[id]

    def _write_node(self, node: RNode, offset: int, data) -> int:
        if offset < 0:
            raise _err(errno.EINVAL, "")
        if isinstance(data, int) and not isinstance(data, bool):
            if self.payload:
                raise ValueError("a payload driver needs bytes, not a length")
            length, buf = data, None
        else:
            buf = memoryview(data).cast("B")
            length = len(buf)
        if length < 0:
            raise _err(errno.EINVAL, "")
        if length == 0:
            return 0
        end = offset + length
        self._stats["bytes_written"] += length
        if self.payload:
            if node.data is None:
                node.data = bytearray()
            if len(node.data) < end:
                node.data.extend(bytes(end - len(node.data)))
            node.data[offset:end] = buf
            node.size = max(node.size, end)
            return length
        # accounting: the same per-block version stamps as thinp.fs
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        st = node.stamps
        if st is None:
            st = node.stamps = np.zeros(max(b1, 1), dtype=np.uint64)
        elif len(st) < b1:
            new = np.zeros(max(b1, 2 * len(st)), dtype=np.uint64)
            new[:len(st)] = st
            st = node.stamps = new
        if buf is not None:
            for b in range(b0, b1):
                lo, hi = max(offset, b * BLOCK), min(end, (b + 1) * BLOCK)
                if hi - lo == BLOCK:
                    st[b] = block_stamp(buf[lo - offset:hi - offset])
                else:
                    st[b] = mix_stamp(int(st[b]), block_stamp(buf[lo - offset:hi - offset]), lo % BLOCK,
                                 hi - b * BLOCK)
        else:
            self._stamp_counter = getattr(self, "_stamp_counter", 0) + 1
            stamp = self._stamp_counter
            first_old, last_old = int(st[b0]), int(st[b1 - 1])
            st[b0:b1] = stamp
            if offset % BLOCK:
                st[b0] = mix_stamp(first_old, stamp, offset % BLOCK, min(BLOCK, end - b0 * BLOCK))
            if end % BLOCK and (b1 - 1 != b0 or offset % BLOCK == 0):
                st[b1 - 1] = mix_stamp(last_old, stamp, (offset - (b1 - 1) * BLOCK) if b1 - 1 == b0 else 0,
                                  end % BLOCK)
        node.size = max(node.size, end)
        return length

    def _truncate_node(self, node: RNode, size: int) -> None:
        if self.payload:
            if node.data is None:
                node.data = bytearray()
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
        elif size < node.size and node.stamps is not None:
            keep = (size + BLOCK - 1) // BLOCK
            node.stamps[keep:] = 0
            if size % BLOCK and 0 < keep <= len(node.stamps):   # past the array: a hole
                node.stamps[keep - 1] = mix_stamp(int(node.stamps[keep - 1]), 0, size % BLOCK, BLOCK)
        node.size = size

    # ---------------------------------------------------------- layers
    def create(self, id, parent, *, read_write=False, **opts):
        layer = self.layers.new(id, parent, read_write, opts, record=_Layer)
        if parent is not None:
            layer.tree = self.layers[parent].tree.copy()
        self.layers.add(layer)
        self._stats["create_ops"] += 1

    def remove(self, id):
        self.layers.removable(id)
        self.layers.drop(id)
        self.page_cache.drop_where(lambda k: k[0] == id)

    def get(self, id):
        view, first = self.layers.mount(id, lambda layer: ReferenceView(self, layer))
        self._stats["mount_ops"] += first
        return view

    def put(self, id):
        self.layers.unmount(id)

    def status(self):
        return [("Storage Driver", self.name), ("Backing Filesystem", "memory"),
                ("Payload", str(self.payload).lower()), ("Layers", str(len(self.layers)))]

    def metadata(self, id):
        layer = self._layer(id)
        return {"Parent": layer.parent or "", "ReadWrite": str(layer.read_write).lower()}

    def cleanup(self):
        self.layers.unmount_all()

    def capabilities(self):
        return Capabilities(reproducible_diff=True, native_diff=False, shares_page_cache="none",
                            copy_on_write="none", max_layers=self.max_layers,
                            changes_by_stat=self.changes_by_stat)

    # ---------------------------------------------------------- changes
    def _compare(self, id, parent):
        new = self._layer(id).tree
        old = self._layer(parent).tree if parent is not None else Tree()
        return _changes(old, new, self.payload, self._stats, self.changes_by_stat)

    def changes(self, id, parent):
        return self._compare(id, parent)

    def diff(self, id, parent):
        from ..image.layer import Entry, Layer

        new = self._layer(id).tree
        rows = self._compare(id, parent)
        items = []
        first_path: dict[int, str] = {}
        for ch in rows:
            rel = ch.path.lstrip("/")
            if ch.kind == "D":
                items.append((Entry(rel, "whiteout", 0), None))
                continue
            n = new.nodes[ch.path]
            e = Entry(rel, n.kind, n.mode, n.uid, n.gid, n.mtime, 0, n.target,
                      os.major(n.rdev) if n.kind in ("char", "block") else 0,
                      os.minor(n.rdev) if n.kind in ("char", "block") else 0,
                      dict(n.xattrs))
            if n.kind != "dir" and id_(n) in first_path:
                e.kind, e.linkname = "hardlink", first_path[id_(n)]
                items.append((e, None))
                continue
            if n.kind != "dir":
                first_path[id_(n)] = rel
            content = None
            if n.kind == "file":
                e.size = n.size
                content = bytes(n.data or b"") if self.payload else ZeroReader(n.size)
            items.append((e, content))
        return Layer.from_entries(items, name=f"<reference diff {id}>")

    def apply_diff(self, id, parent, layer):
        lay = self._layer(id)
        if parent != lay.parent:
            raise ValueError(f"apply_diff({id!r}, {parent!r}): the layer's parent is {lay.parent!r}")
        view = ReferenceView(self, lay)
        tree = lay.tree
        added: set[str] = set()
        size = 0
        lay.applying = True
        try:
            for e, stream in layer.walk():
                path = "/" + e.path if e.path else "/"
                if e.kind == "whiteout":
                    try:
                        d, name = view._parent(path)
                    except OSError:
                        continue
                    p = _join(d, name)
                    if p in tree.nodes and p not in added:
                        tree.remove(p)
                    continue
                if e.kind == "opaque":
                    try:
                        d = view._resolve(path)
                    except OSError as err:
                        if err.errno != errno.ENOENT:
                            raise
                        view.mkdir(path)
                        d = view._resolve(path)
                    for name in list(tree.children.get(d, ())):
                        p = _join(d, name)
                        if p not in added:
                            tree.remove(p)
                    continue
                if path == "/":
                    root = tree.nodes["/"]
                    root.mode, root.uid, root.gid, root.mtime = e.mode & 0o7777, e.uid, e.gid, e.mtime
                    root.xattrs = dict(e.xattrs)
                    continue
                self._mkparents(view, path, added)
                d, name = view._parent(path)
                p = _join(d, name)
                existing = tree.nodes.get(p)
                if e.kind == "dir" and existing is not None and existing.kind == "dir":
                    existing.mode, existing.uid, existing.gid = e.mode & 0o7777, e.uid, e.gid
                    existing.mtime, existing.xattrs = e.mtime, dict(e.xattrs)
                    added.add(p)
                    continue
                if e.kind == "hardlink":
                    tp = view._resolve("/" + e.linkname, follow=False)
                    target = tree.nodes[tp]
                    if tp == p:
                        continue
                    if existing is not None:
                        tree.remove(p)
                    if target.kind == "dir":
                        raise _err(errno.EPERM, p)
                    target.nlink += 1
                    tree.add(p, target)
                    added.add(p)
                    continue
                if existing is not None:
                    tree.remove(p)
                node = RNode(e.kind, e.mode & 0o7777, e.uid, e.gid, 0, e.mtime,
                             e.linkname if e.kind == "symlink" else "",
                             os.makedev(e.devmajor, e.devminor) if e.kind in ("char", "block") else 0,
                             dict(e.xattrs), ino=self._new_ino())
                if e.kind == "symlink":
                    node.size = len(e.linkname.encode())
                if e.kind == "dir":
                    node.nlink = 2
                tree.add(p, node)
                added.add(p)
                if e.kind == "file":
                    off = 0
                    while True:
                        chunk = stream.read(1 << 20)
                        if not chunk:
                            break
                        self._write_node(node, off, chunk)
                        off += len(chunk)
                    node.size = e.size
                    if self.payload and len(node.data or b"") < e.size:
                        self._truncate_node(node, e.size)
                    size += e.size
        finally:
            lay.applying = False
        return size

    def _mkparents(self, view, path, added):
        parts = path.strip("/").split("/")[:-1]
        cur = ""
        for part in parts:
            cur += "/" + part
            try:
                view._resolve(cur)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                node = RNode("dir", 0o755, nlink=2, ino=self._new_ino())
                d, name = view._parent(cur)
                view.tree.add(_join(d, name), node)
                added.add(_join(d, name))

    # ---------------------------------------------------------- accounting
    def usage(self, id):
        tree = self._layer(id).tree
        inodes = {id_(n): n for n in tree.nodes.values()}
        return Usage(sum(n.size for n in inodes.values() if n.kind == "file"), len(inodes))

    def stats(self):
        out = dict(self._stats)
        total = 0
        inodes = 0
        for layer in self.layers.values():
            seen = {id_(n): n for n in layer.tree.nodes.values()}
            inodes += len(seen)
            total += sum(n.size for n in seen.values() if n.kind == "file")
        out["physical_bytes"] = total
        out["logical_bytes"] = total
        out["inodes"] = inodes
        out["page_cache_bytes"] = self.page_cache.cached_bytes
        return out


id_ = id   # ``id`` is shadowed by layer-id parameters above


# ============================================================ changes
def _differs(o: RNode, n: RNode, payload: bool, by_stat: bool = False) -> bool:
    if o.kind != n.kind or o.mode != n.mode or o.uid != n.uid or o.gid != n.gid or o.rdev != n.rdev:
        return True
    if by_stat:   # Docker's statDifferent: only the capability xattr, no content
        cap = "security.capability"
        if o.xattrs.get(cap) != n.xattrs.get(cap) or o.target != n.target:
            return True
    elif o.xattrs != n.xattrs or o.target != n.target:
        return True
    if n.kind == "dir":
        return False
    if o.size != n.size or o.mtime != n.mtime:
        return True
    if n.kind != "file" or by_stat:
        return False
    if payload:
        return (o.data or b"") != (n.data or b"")
    k = (n.size + BLOCK - 1) // BLOCK
    a = o.stamps[:k] if o.stamps is not None else np.zeros(0, dtype=np.uint64)
    b = n.stamps[:k] if n.stamps is not None else np.zeros(0, dtype=np.uint64)
    a = np.pad(a, (0, k - len(a)))
    b = np.pad(b, (0, k - len(b)))
    return not np.array_equal(a, b)


def _changes(old: Tree, new: Tree, payload: bool, stats: dict, by_stat: bool = False) -> list[Change]:
    """Docker's ChangesDirs over two whole trees (see the module docstring)."""
    out: list[Change] = []

    def walk(d: str, old_is_dir: bool, added: bool) -> bool:
        """Append changes below ``d``; True if any."""
        start = len(out)
        new_kids = new.children.get(d, set())
        old_kids = old.children.get(d, set()) if old_is_dir else set()
        stats["diff_work"] += len(new_kids) + len(old_kids)
        for name in sorted(new_kids | old_kids):
            p = _join(d, name)
            if name not in new_kids:
                out.append(Change(p, "D"))
                continue
            n = new.nodes[p]
            o = old.nodes.get(p) if name in old_kids else None
            child_added = False
            if o is None:
                out.append(Change(p, "A"))
                child_added = True
            elif _differs(o, n, payload, by_stat):
                out.append(Change(p, "C"))
                child_added = True
            if n.kind == "dir":
                walk(p, o is not None and o.kind == "dir", child_added)
        if len(out) > start and not added and d != "/":
            out.insert(start, Change(d, "C"))
        return len(out) > start

    walk("/", True, True)
    return sorted(out)

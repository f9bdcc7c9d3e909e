"""What btrfs and zfs share: a snapshot per layer, file data in a :class:`CowStore`.

Each layer is a *subvolume* (btrfs) or *dataset* (zfs) with:

* a namespace: a :class:`thinp.fs.Filesystem` used only for names, inodes,
  sizes, modes and content stamps (its own block allocation is ignored --
  it sits on an accounting :class:`~thinp.blockdev.PlainDevice`).  A
  snapshot starts from :meth:`~thinp.fs.Filesystem.clone` of the parent's;
* ``trees``: inode number -> :class:`FileTree`, the file's mapping in the
  shared :class:`CowStore` (a snapshot takes a reference on each root);
* ``owned``: the metadata nodes this layer has copied-on-write since it was
  made (the exclusive part of its trees), as driver-defined keys.

Subclasses say how a write maps onto extents/records (``_write_data``) and
which metadata a change dirties (``_dirty_meta``).
"""
from __future__ import annotations

import errno
import tempfile

from .. import errors
from ..blockdev import PlainDevice
from . import _treediff as td
from ._cowstore import CowStore, FileTree
from ._fsview import FsView, fs_totals
from .base import Driver, Usage, empty_stats
from .pagecache import PageCache


class Layer:
    __slots__ = ("id", "sid", "parent", "fs", "trees", "owned", "mounts", "view", "read_write",
                 "children", "extra")

    def __init__(self, id, sid, parent, fs, trees, read_write):
        self.id, self.sid, self.parent, self.fs, self.trees = id, sid, parent, fs, trees
        self.owned: set = set()
        self.mounts = 0
        self.view = None
        self.read_write = read_write
        self.children = 0
        self.extra: dict = {}


class CowView(FsView):
    """A layer's mount: namespace ops on the fs, data through the driver."""

    def __init__(self, drv, layer: Layer, read_only: bool):
        super().__init__(layer.fs, read_only=read_only, on_read=drv._read_hook(layer))
        self.drv = drv
        self.layer = layer

    def _data_write(self, node, offset, length):
        self.drv._write_data(self.layer, node, offset, length)

    def _data_truncate(self, node, old, new):
        self.drv._truncate_data(self.layer, node, old, new)

    def _data_release(self, ino):
        self.drv._release_data(self.layer, ino)

    def _touch(self, path, *, follow=False):
        try:
            node = self.fs._lookup(path, follow=follow)
        except OSError:
            return
        self.drv._dirty_meta(self.layer, node.ino)

    def _touch_parent(self, path):
        parent = "/".join(path.rstrip("/").split("/")[:-1]) or "/"
        self._touch(parent, follow=True)


def _wrap(name, touch_path=True, touch_parent=True, arg=0):
    base = getattr(FsView, name)

    def op(self, *args, **kw):
        r = base(self, *args, **kw)
        p = args[arg]
        if touch_path:
            self._touch(p)
        if touch_parent:
            self._touch_parent(p)
        return r
    op.__name__ = name
    return op


for _name, _tp, _tpar, _arg in (("create", True, True, 0), ("mkdir", True, True, 0),
                                ("unlink", False, True, 0), ("rmdir", False, True, 0),
                                ("link", True, True, 1), ("symlink", True, True, 1),
                                ("mknod", True, True, 0), ("chmod", True, False, 0),
                                ("chown", True, False, 0), ("utime", True, False, 0),
                                ("setxattr", True, False, 0), ("removexattr", True, False, 0),
                                ("truncate", True, False, 0)):
    setattr(CowView, _name, _wrap(_name, _tp, _tpar, _arg))


def _rename(self, src, dst):
    FsView.rename(self, src, dst)
    self._touch(dst)
    self._touch_parent(src)
    self._touch_parent(dst)


CowView.rename = _rename


class CowDriver(Driver):
    """Common lifecycle of the btrfs and zfs drivers."""

    unit_bytes = 4096
    fs_size = "10G"

    def __init__(self, root=None, *, size="100G", payload=False, page_cache_bytes=None, **opts):
        from ..units import parse_size

        if payload:
            raise errors.NotSupportedError(f"{self.name}: payload mode is not modelled (accounting only)")
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"thinp-{self.name}-")
            root = self._tmp.name
        self.root = str(root)
        self.size_bytes = parse_size(size, what="size")
        self.store = CowStore(self.size_bytes // self.unit_bytes, self.unit_bytes)
        self.page_cache = PageCache(page_cache_bytes)
        self.layers: dict[str, Layer] = {}
        self._next_sid = 256
        self._counters = {"mount_ops": 0, "create_ops": 0, "diff_work": 0, "cow_bytes": 0, "cow_count": 0,
                          "meta_bytes_written": 0}
        self._configure(**opts)

    def _configure(self, **opts):
        if opts:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(opts)}")

    # ---------------------------------------------------------------- hooks
    def _write_data(self, layer, node, offset, length):
        raise NotImplementedError

    def _truncate_data(self, layer, node, old, new):
        raise NotImplementedError

    def _own_tree(self, layer, ino):
        """This layer's writable FileTree for ``ino`` (copied from a shared one)."""
        t = layer.trees.get(ino)
        if t is None:
            t = layer.trees[ino] = FileTree(owner=layer.sid)
        elif t.owner != layer.sid:
            t = layer.trees[ino] = t.copy(layer.sid)
        return t

    def _release_data(self, layer, ino):
        t = layer.trees.pop(ino, None)
        if t is not None:
            self.store.release(t)
        self.page_cache.drop(self._cache_key(layer, ino))

    def _dirty_meta(self, layer, ino, extents_added=0):
        raise NotImplementedError

    def _cache_key(self, layer, ino):
        return (layer.sid, ino)

    def _read_hook(self, layer):
        cache = self.page_cache

        def hook(node, offset, nbytes):
            cache.read((layer.sid, node.ino), nbytes, offset)
        return hook

    def _on_snapshot(self, src: Layer, new: Layer) -> None:
        pass

    # ---------------------------------------------------------------- layers
    def _layer(self, id) -> Layer:
        try:
            return self.layers[id]
        except KeyError:
            raise errors.DeviceNotFoundError(f"{self.name}: layer {id!r} does not exist") from None

    def _new_fs(self):
        from ..fs import mkfs

        return mkfs(PlainDevice(self.fs_size), "xfs")

    def create(self, id, parent=None, *, read_write=False, **opts):
        if id in self.layers:
            raise errors.DeviceExistsError(f"{self.name}: layer {id!r} already exists")
        src = self._layer(parent) if parent is not None else None
        sid = self._next_sid
        if src is None:
            layer = Layer(id, sid, None, self._new_fs(), {}, bool(read_write))
        else:
            fs = src.fs.clone(PlainDevice(self.fs_size))
            trees = dict(src.trees)          # FileTree objects shared; see _own_tree
            self.store.share(trees.values())
            layer = Layer(id, sid, parent, fs, trees, bool(read_write))
            src.children += 1
        self.store.commit()
        self._next_sid += 1
        self.layers[id] = layer
        self._counters["create_ops"] += 1
        self._on_snapshot(src, layer)
        return None

    def remove(self, id):
        layer = self._layer(id)
        if layer.mounts:
            raise OSError(errno.EBUSY, f"{self.name}: layer {id} is mounted ({layer.mounts} users)", id)
        if layer.children:
            raise OSError(errno.EBUSY, f"{self.name}: layer {id} has {layer.children} child layer(s)", id)
        for t in layer.trees.values():
            self.store.release(t)
        self.store.commit()
        for key in [k for k in self.page_cache._pages if k[0][0] == layer.sid]:
            del self.page_cache._pages[key]
        del self.layers[id]
        if layer.parent is not None:
            self.layers[layer.parent].children -= 1

    def get(self, id):
        layer = self._layer(id)
        if layer.mounts == 0:
            layer.view = CowView(self, layer, read_only=not layer.read_write)
            self._counters["mount_ops"] += 1
        layer.mounts += 1
        return layer.view

    def put(self, id):
        layer = self._layer(id)
        if layer.mounts == 0:
            raise OSError(errno.EINVAL, f"{self.name}: layer {id} is not mounted", id)
        layer.mounts -= 1
        if layer.mounts == 0:
            layer.view = None
            self.sync()

    def sync(self):
        """A transaction commit (btrfs commit / zfs txg sync)."""
        self.store.commit()
        for layer in self.layers.values():
            layer.extra.pop("open", None)

    def exists(self, id):
        return id in self.layers

    def list_layers(self):
        return list(self.layers)

    def parent(self, id):
        return self._layer(id).parent

    def cleanup(self):
        for layer in self.layers.values():
            layer.mounts = 0
            layer.view = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------- diffs
    def _rw_view(self, layer):
        return CowView(self, layer, read_only=False)

    def changes(self, id, parent):
        w = td.Work()
        pv = self._rw_view(self._layer(parent)) if parent is not None else None
        out = td.changes(self._rw_view(self._layer(id)), pv, w)
        self._counters["diff_work"] += w.total
        return out

    def diff(self, id, parent):
        w = td.Work()
        pv = self._rw_view(self._layer(parent)) if parent is not None else None
        layer = td.diff(self._rw_view(self._layer(id)), pv, w)
        self._counters["diff_work"] += w.total
        return layer

    def apply_diff(self, id, parent, layer):
        n = td.apply_diff(self._rw_view(self._layer(id)), layer)
        self.sync()
        return n

    # ---------------------------------------------------------------- usage
    def _extent_marks(self, exclude: Layer | None = None, only: Layer | None = None):
        layers = [only] if only is not None else [x for x in self.layers.values() if x is not exclude]
        return self.store.referenced(t for x in layers for t in x.trees.values())

    def _exclusive_data_bytes(self, layer: Layer) -> int:
        mine = self._extent_marks(only=layer)
        others = self._extent_marks(exclude=layer)
        excl = (mine == 1) & (others == 0)
        return int(self.store.ext_len[: len(excl)][excl].sum()) * self.unit_bytes

    def _referenced_data_bytes(self, layer: Layer) -> int:
        mine = self._extent_marks(only=layer) == 1
        return int(self.store.ext_len[: len(mine)][mine].sum()) * self.unit_bytes

    def usage(self, id):
        layer = self._layer(id)
        base = len(self.layers[layer.parent].fs.inodes) if layer.parent is not None else 0
        return Usage(size=self._exclusive_bytes(layer), inodes=max(0, len(layer.fs.inodes) - base))

    def _exclusive_bytes(self, layer) -> int:
        return self._exclusive_data_bytes(layer)

    def _metadata_bytes(self) -> int:
        return 0

    def _fixed_bytes(self) -> int:
        return 0

    def stats(self):
        out = empty_stats()
        data = self.store.units_used * self.unit_bytes
        meta = self._metadata_bytes()
        out["physical_bytes"] = data + meta + self._fixed_bytes()
        out["metadata_bytes"] = meta
        out["bytes_written"] = self.store.counters["units_written"] * self.unit_bytes + self._counters["meta_bytes_written"]
        out["cow_bytes"] = self._counters["cow_bytes"]
        out["cow_count"] = self._counters["cow_count"]
        logical = inodes = 0
        for layer in self.layers.values():
            i, b = fs_totals(layer.fs)
            inodes += i
            logical += b
        out["logical_bytes"] = logical
        out["inodes"] = inodes
        out["page_cache_bytes"] = self.page_cache.cached_bytes
        for k in ("mount_ops", "create_ops", "diff_work"):
            out[k] = self._counters[k]
        return out

    def __del__(self):
        try:
            self.cleanup()
        except Exception:
            pass


__all__ = ["CowDriver", "CowView", "Layer", "FileTree"]

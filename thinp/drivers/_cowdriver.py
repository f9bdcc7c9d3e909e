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

Payload mode (``payload=True``): the namespace filesystem still keeps only
stamps; the bytes live in ``blobs``, keyed by extent id and offset in the
extent (btrfs: one 4 KiB block; zfs: the whole record, offset 0), written
when a write maps a new extent/record and dropped when the store frees it.
A read walks the layer's trees to them (``_payload_get``), so it returns
what the CoW mapping says, snapshots and all.  btrfs inline files keep
their bytes in ``layer.extra["inline_data"]`` (copied, like the leaf, by a
snapshot).
"""
from __future__ import annotations

import errno
import functools
import tempfile

from ..blockdev import PlainDevice
from ..config import PAGE_SIZE
from .apply import apply_layer
from ._cowstore import CowStore, FileTree
from ._fsview import FsView, layers_totals
from .base import Driver, Usage, empty_stats
from .layers import LayerRecord, LayerTable, NaiveDiff
from .pagecache import PageCache


class Layer(LayerRecord):
    """A subvolume/dataset: the table's fields plus ``sid`` (its number),
    ``fs`` (the namespace), ``trees`` (ino -> FileTree), ``owned`` (metadata
    nodes it has copied) and ``extra`` (driver-specific state)."""

    def __init__(self, id, parent, read_write, depth):
        super().__init__(id, parent, read_write, depth)
        self.sid = 0
        self.fs = None
        self.trees: dict = {}
        self.owned: set = set()
        self.extra: dict = {}


class CowView(FsView):
    """A layer's mount: namespace ops on the fs, data through the driver."""

    def __init__(self, drv, layer: Layer, read_only: bool):
        super().__init__(layer.fs, read_only=read_only, on_read=drv._read_hook(layer))
        self.drv = drv
        self.layer = layer

    def write(self, path, offset, data):
        self._rw(path)
        drv = self.drv
        if drv.payload and isinstance(data, int) and not isinstance(data, bool):
            raise ValueError(f"{drv.name}: a payload driver needs bytes, not a length")
        fs = self.fs
        node = fs.inode_for_write(path)      # one path walk for the fs and the driver
        old_size = node.size
        n = fs.write_inode(node, offset, data)
        if n > 0:
            buf = memoryview(data).cast("B")[:n] if drv.payload else None
            drv._write_data(self.layer, node, offset, n, (offset, buf, old_size))
        return n

    def content(self, path):
        if not self.drv.payload:
            return FsView.content(self, path)
        import hashlib

        node = self.fs.inode(path)
        if node.is_dir:
            raise OSError(errno.EISDIR, "Is a directory", path)
        data = bytes(self.drv._payload_get(self.layer, node.ino, node.size, 0, node.size))
        return node.size, hashlib.blake2b(data, digest_size=16).hexdigest()   # as thinp.fs with payload

    def read(self, path, offset=0, length=None):
        out = FsView.read(self, path, offset, length)    # errnos, page-cache hook
        if not self.drv.payload:
            return out
        node = self.fs.inode(path)
        end = node.size if length is None else min(node.size, offset + length)
        if end <= offset:
            return b""
        return bytes(self.drv._payload_get(self.layer, node.ino, node.size, offset, end))

    def _data_truncate(self, node, old, new):
        self.drv._truncate_data(self.layer, node, old, new)

    def _data_release(self, ino):
        self.drv._release_data(self.layer, ino)

    def _touch(self, path, *, follow=False):
        try:
            node = self.fs.inode(path, follow=follow)
        except OSError:
            return
        self.drv._dirty_meta(self.layer, node.ino)

    def _touch_parent(self, path):
        parent = "/".join(path.rstrip("/").split("/")[:-1]) or "/"
        self._touch(parent, follow=True)


def _wrap(name, touch_path=True, touch_parent=True, arg=0):
    base = getattr(FsView, name)

    @functools.wraps(base)       # keeps the signature (follow_symlinks where FsView takes it)
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

    unit_bytes = PAGE_SIZE
    fs_size = "10G"

    def __init__(self, root=None, *, size="100G", payload=False, page_cache_bytes=None, **opts):
        from ..units import parse_size

        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"thinp-{self.name}-")
            root = self._tmp.name
        self.root = str(root)
        self.size_bytes = parse_size(size, what="size")
        self.store = CowStore(self.size_bytes // self.unit_bytes, self.unit_bytes)
        self.payload = bool(payload)
        #: payload mode: extent id -> {offset in the extent (btrfs: 4 KiB
        #: block; zfs: 0, the whole record) -> bytes}.  Reads go through the
        #: layer's CoW trees to these, so they return what the mapping says.
        self.blobs: dict[int, dict[int, bytes]] = {}
        if self.payload:
            self.store.on_free = self._forget_extent
        self.page_cache = PageCache(page_cache_bytes)
        self.layers = LayerTable(self.name)
        self._next_sid = 256
        self._counters = {"mount_ops": 0, "create_ops": 0, "diff_work": 0, "cow_bytes": 0, "cow_count": 0,
                          "meta_bytes_written": 0}
        self._configure(**opts)
        self.naive = NaiveDiff(self._counters, by_stat=self.capabilities().changes_by_stat)

    def _configure(self, **opts):
        if opts:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(opts)}")

    # ---------------------------------------------------------------- payload
    def _forget_extent(self, e: int) -> None:
        self.blobs.pop(e, None)

    def _payload_get(self, layer, ino: int, size: int, lo: int, hi: int) -> bytearray:
        """Bytes [lo, hi) of file ``ino`` in ``layer`` as its trees map them,
        zeros past ``size`` and in holes."""
        raise NotImplementedError

    def _merged(self, layer, ino: int, pend, lo: int, hi: int) -> bytearray:
        """The new content of [lo, hi): the old bytes (zeros past the old
        size) with the written ones over them.  Call before remapping."""
        off, data, old_size = pend
        buf = self._payload_get(layer, ino, old_size, lo, hi)
        if data is not None:
            a, b = max(lo, off), min(hi, off + len(data))
            if b > a:
                buf[a - lo:b - lo] = data[a - off:b - off]
        return buf

    def _rewrite_tail(self, layer, node, new: int, start: int) -> None:
        """A truncate to an unaligned size zeroes the rest of the last
        block/record and writes it back (btrfs_truncate_block; zfs's
        dnode_free_range dirties the partial block): a CoW of that unit.
        ``start`` is the first byte of the unit holding ``new``."""
        pend = (start, None, new)
        if self.payload:
            pend = (start, memoryview(bytes(self._payload_get(layer, node.ino, new, start, new))), new)
        self._write_data(layer, node, start, new - start, pend)

    # ---------------------------------------------------------------- hooks
    def _write_data(self, layer, node, offset, length, pend=None):
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
        layer.extra.get("inline", set()).discard(ino)
        layer.extra.get("inline_data", {}).pop(ino, None)
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
        return self.layers[id]

    def _new_fs(self):
        from ..fs import mkfs

        return mkfs(PlainDevice(self.fs_size), "xfs")

    def create(self, id, parent=None, *, read_write=False, **opts):
        layer = self.layers.new(id, parent, read_write, opts, record=Layer)
        src = self.layers[parent] if parent is not None else None
        layer.sid = self._next_sid
        if src is None:
            layer.fs = self._new_fs()
        else:
            src.extra.pop("open", None)      # a snapshot commits the transaction
            layer.fs = src.fs.clone(PlainDevice(self.fs_size))
            layer.trees = dict(src.trees)    # FileTree objects shared; see _own_tree
            self.store.share(layer.trees.values())
        self.store.commit()
        self._next_sid += 1
        self.layers.add(layer)
        self._counters["create_ops"] += 1
        self._on_snapshot(src, layer)

    def remove(self, id):
        layer = self.layers.removable(id)
        for t in layer.trees.values():
            self.store.release(t)
        self.store.commit()
        self.page_cache.drop_where(lambda k: k[0] == layer.sid)
        self.layers.drop(id)

    def get(self, id):
        view, first = self.layers.mount(id, lambda l: CowView(self, l, read_only=not l.read_write))
        self._counters["mount_ops"] += first
        return view

    def put(self, id):
        """Unmount; the last user's unmount commits the transaction."""
        if self.layers.unmount(id):
            self.sync()

    def sync(self):
        """A transaction commit (btrfs commit / zfs txg sync)."""
        self.store.commit()
        for layer in self.layers.values():
            layer.extra.pop("open", None)

    def cleanup(self):
        self.layers.unmount_all()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------- diffs
    def _rw_view(self, layer):
        return CowView(self, layer, read_only=False)

    def _parent_view(self, parent):
        return self._rw_view(self.layers[parent]) if parent is not None else None

    def changes(self, id, parent):
        return self.naive.changes(self._rw_view(self.layers[id]), self._parent_view(parent))

    def diff(self, id, parent):
        return self.naive.diff(self._rw_view(self.layers[id]), self._parent_view(parent))

    def apply_diff(self, id, parent, layer):
        n = apply_layer(self._rw_view(self.layers[id]), layer)
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

    def op_counters(self):
        c = self._counters
        return (self.store.counters["units_written"] * self.unit_bytes + c["meta_bytes_written"], -1,
                0, 0, c["cow_bytes"], c["cow_count"], 0, self.store.units_used * self.unit_bytes, 0)

    def stats(self):
        out = empty_stats()
        data = self.store.units_used * self.unit_bytes
        meta = self._metadata_bytes()
        out["physical_bytes"] = data + meta + self._fixed_bytes()
        out["metadata_bytes"] = meta
        out["bytes_written"] = self.store.counters["units_written"] * self.unit_bytes + self._counters["meta_bytes_written"]
        out["cow_bytes"] = self._counters["cow_bytes"]
        out["cow_count"] = self._counters["cow_count"]
        out["inodes"], out["logical_bytes"] = layers_totals(self.layers.values())
        out["page_cache_bytes"] = self.page_cache.cached_bytes
        for k in ("mount_ops", "create_ops", "diff_work"):
            out[k] = self._counters[k]
        return out


__all__ = ["CowDriver", "CowView", "Layer", "FileTree"]

"""devicemapper: Docker's loop-lvm thin pool, one filesystem per thin device.

Layout under ``root``: ``devicemapper/data`` and ``devicemapper/metadata``,
the two sparse files of a :class:`thinp.ThinPool` (the loop-lvm files Docker
kept in ``/var/lib/docker/devicemapper/devicemapper/``).

* The pool has Docker's loop-lvm defaults: 100 GiB data, 2 GiB metadata,
  64 KiB blocks, low water mark 32,768 blocks, ``skip_block_zeroing``;
  accounting mode unless ``payload=True``; ``sync=False``.
* The base device (thin id 1) is 10 GiB (``basesize``) formatted xfs
  (``fs="ext4"`` uses Docker's ``-E nodiscard,lazy_itable_init=0,
  lazy_journal_init=0``).  A layer with no parent is a snapshot of it.
  A layer's view is the device filesystem's ``/rootfs`` directory (Docker's
  ``Get`` returns ``<mountpoint>/rootfs``), so a new base layer is empty
  even on ext4 (``lost+found`` is beside it).
* ``create(id, parent)`` is ``create_snap`` of the parent's device; the new
  device's filesystem starts as a clone of the parent's state
  (:meth:`thinp.fs.Filesystem.clone`), since the snapshot shares its blocks.
  A container is ``<id>-init`` plus a read-write snapshot of that (the
  engine creates both, as Docker's layer store does).
* ``dm.min_free_space`` (10%): a create that would start with less free
  data or metadata space than that fails with Docker's message.
* ``remove`` discards the whole device first (``dm.blkdiscard``, default
  on), then deletes it.
* ``changes``/``diff`` mount the layer and its parent and walk both whole
  trees (:mod:`._treediff`), so their cost grows with the image, not with the
  change: ``diff_work`` counts it.

Options may be given as ``dm.basesize="20G"`` or ``basesize="20G"``:
``basesize``, ``fs``, ``loopdatasize``, ``loopmetadatasize``, ``blocksize``,
``min_free_space``, ``blkdiscard``, ``payload``, ``page_cache_bytes``.
"""
from __future__ import annotations

import os
import tempfile
import weakref

from .. import errors
from ..config import METADATA_BLOCK_SIZE
from ..units import parse_size
from .apply import apply_layer
from ._fsview import FsView, layers_totals
from .base import Capabilities, Driver, Usage, empty_stats, register
from .layers import LayerTable, NaiveDiff
from .pagecache import PageCache

BASE_ID = 1
DOCKER_MKFS_EXT4 = dict(nodiscard=True, lazy_itable_init=False, lazy_journal_init=False)

#: Docker's loop-lvm defaults (moby daemon/graphdriver/devmapper/deviceset.go):
#: data and metadata loop-file sizes, pool block size, base device size, and
#: the low water mark Docker's pool table line sets, in pool blocks
LOOP_DATA_SIZE = "100G"
LOOP_METADATA_SIZE = "2G"
POOL_BLOCK_SIZE = "64KiB"
BASE_DEVICE_SIZE = "10G"
LOW_WATER_MARK_BLOCKS = 32768


def _close(pool, tmp) -> None:
    pool.close()
    if tmp is not None:
        tmp.cleanup()


def _options(options: dict) -> dict:
    out = {}
    for k, v in options.items():
        k2 = k[3:] if k.startswith("dm.") else k
        out[k2.lower()] = v
    return out


def _percent(v) -> float:
    if isinstance(v, str):
        v = v.strip().rstrip("%")
    f = float(v)
    if not 0 <= f <= 99:
        raise ValueError(f"dm.min_free_space {v!r} must be a percentage in 0..99")
    return f


@register
class DeviceMapperDriver(Driver):
    name = "devicemapper"

    def __init__(self, root=None, **options):
        from ..thin import ThinPool

        opts = _options(options)
        known = {"basesize", "fs", "loopdatasize", "loopmetadatasize", "blocksize", "min_free_space",
                 "blkdiscard", "payload", "page_cache_bytes", "mkfsarg"}
        bad = sorted(set(opts) - known)
        if bad:
            raise ValueError(f"devicemapper: unknown option(s) {bad}; known: {sorted(known)}")
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="thinp-dm-")
            root = self._tmp.name
        self.root = os.fspath(root)
        self.fstype = opts.get("fs", "xfs")
        if self.fstype not in ("xfs", "ext4"):
            raise ValueError(f"devicemapper: fs {self.fstype!r} must be 'xfs' or 'ext4'")
        self.base_size = parse_size(opts.get("basesize", BASE_DEVICE_SIZE), what="dm.basesize")
        self.min_free_percent = _percent(opts.get("min_free_space", "10%"))
        self.blkdiscard = bool(opts.get("blkdiscard", True))
        payload = bool(opts.get("payload", False))
        self.pool_dir = os.path.join(self.root, "devicemapper")
        self.pool = ThinPool.create(
            self.pool_dir, opts.get("loopdatasize", LOOP_DATA_SIZE),
            block_size=opts.get("blocksize", POOL_BLOCK_SIZE),
            metadata_size=opts.get("loopmetadatasize", LOOP_METADATA_SIZE),
            low_water_mark=LOW_WATER_MARK_BLOCKS, skip_block_zeroing=True, payload=payload, sync=False)
        self._finalizer = weakref.finalize(self, _close, self.pool, self._tmp)
        self.page_cache = PageCache(opts.get("page_cache_bytes"))
        self.layers = LayerTable(self.name)
        self._next_thin = BASE_ID + 1
        self._counters = {"mount_ops": 0, "create_ops": 0, "diff_work": 0}
        self.naive = NaiveDiff(self._counters, by_stat=True)
        from ..fs import mkfs

        base = self.pool.create_thin(BASE_ID, self.base_size)
        fsopts = DOCKER_MKFS_EXT4 if self.fstype == "ext4" else {}
        self._base_fs = mkfs(base, self.fstype, **fsopts)
        # Docker's Get mounts the device and hands out <mnt>/rootfs (made
        # 0755 on first use), so lost+found and the fs root stay outside the
        # layer; every layer's device descends from the base, so make it here
        self._base_fs.mkdir("/rootfs", 0o755)
        self._base_fs.chroot_ino = self._base_fs.inode("/rootfs").ino
        self._base_fs.sync()

    # ------------------------------------------------------------ helpers
    def _dev(self, id):
        return self.layers[id]

    def _check_free_space(self) -> None:
        st = self.pool.status()
        p = self.min_free_percent
        min_data = max(1, st.total_data_blocks * p // 100) if p else 0
        free_data = st.total_data_blocks - st.used_data_blocks
        if free_data < min_data:
            raise errors.NoSpaceError(
                f"devmapper: Thin Pool has {free_data} free data blocks which is less than minimum required "
                f"{int(min_data)} free data blocks. Create more free space in thin pool or use "
                f"dm.min_free_space option to change behavior")
        min_meta = max(1, st.total_metadata_blocks * p // 100) if p else 0
        free_meta = st.total_metadata_blocks - st.used_metadata_blocks
        if free_meta < min_meta:
            raise errors.NoSpaceError(
                f"devmapper: Thin Pool has {free_meta} free metadata blocks which is less than minimum "
                f"required {int(min_meta)} free metadata blocks. Create more free metadata space in thin "
                f"pool or use dm.min_free_space option to change behavior")

    def _on_read(self, dev):
        cache = self.page_cache

        def hook(node, offset, nbytes):
            cache.read((dev.thin_id, node.ino), nbytes, offset)
        return hook

    def _rw_view(self, dev) -> FsView:
        return FsView(dev.fs, read_only=False, on_read=self._on_read(dev))

    # ------------------------------------------------------------ lifecycle
    def create(self, id, parent=None, *, read_write=False, **opts):
        dev = self.layers.new(id, parent, read_write, opts)
        pdev = self.layers[parent] if parent is not None else None
        self._check_free_space()
        thin_id = self._next_thin
        origin = pdev.thin_id if pdev is not None else BASE_ID
        origin_fs = pdev.fs if pdev is not None else self._base_fs
        origin_fs.sync()   # a snapshot of an active device is taken after a flush
        device = self.pool.create_snap(thin_id, origin)
        self._next_thin += 1
        try:
            dev.fs = origin_fs.clone(device)
        except BaseException:
            self.pool.delete(thin_id)
            raise
        dev.thin_id = thin_id
        self.layers.add(dev)
        self._counters["create_ops"] += 1

    def remove(self, id):
        dev = self.layers.removable(id)
        thin = self.pool.device(dev.thin_id)
        if self.blkdiscard:
            thin.discard(0, thin.size)
        self.pool.delete(dev.thin_id)
        self.page_cache.drop_where(lambda k: k[0] == dev.thin_id)
        self.layers.drop(id)

    def get(self, id):
        view, first = self.layers.mount(
            id, lambda dev: FsView(dev.fs, read_only=not dev.read_write, on_read=self._on_read(dev)))
        self._counters["mount_ops"] += first
        return view

    def put(self, id):
        """Unmount the device's filesystem: the last user's umount writes back and commits."""
        dev = self.layers[id]
        if self.layers.unmount(id):
            dev.fs.sync()

    def sync(self):
        """``sync(1)``: each thin device's filesystem writes back its delayed
        allocation and commits its journal (a mounted container's new small
        files reach the pool only here, at umount or at the dirty limit)."""
        self._base_fs.sync()
        for dev in self.layers.values():
            dev.fs.sync()

    def cleanup(self):
        if not self._finalizer.alive:
            return
        for dev in self.layers.values():
            dev.fs.sync()
        self.layers.unmount_all()
        self._finalizer()      # closes the pool, removes a temporary root

    # ------------------------------------------------------------ diffs
    def _parent_view(self, parent):
        if parent is None:
            return None
        return self._rw_view(self._dev(parent))

    def changes(self, id, parent):
        return self.naive.changes(self._rw_view(self.layers[id]), self._parent_view(parent))

    def diff(self, id, parent):
        return self.naive.diff(self._rw_view(self.layers[id]), self._parent_view(parent))

    def apply_diff(self, id, parent, layer):
        dev = self._dev(id)
        n = apply_layer(self._rw_view(dev), layer)
        dev.fs.sync()
        return n

    # ------------------------------------------------------------ reporting
    def capabilities(self):
        return Capabilities(reproducible_diff=True, native_diff=False, shares_page_cache="device",
                            copy_on_write="block", max_layers=None, changes_by_stat=True,
                            extra={"block_size": self.pool.block_size, "fs": self.fstype})

    def usage(self, id):
        import numpy as np

        dev = self._dev(id)
        # what is on the device: ``du`` after ``sync`` (a mounted layer's
        # delayed writes are not in the pool yet)
        dev.fs.sync()
        # blocks this device maps that its parent's device does not (the
        # parent's blocks are shared with it by the snapshot)
        _v, p, _t = self.pool.device(dev.thin_id).mapping()
        origin = self.layers[dev.parent].thin_id if dev.parent is not None else BASE_ID
        _v, q, _t = self.pool.device(origin).mapping()
        excl = len(np.setdiff1d(p, q, assume_unique=True))
        parent_inodes = len(self.layers[dev.parent].fs.inodes) if dev.parent is not None else len(self._base_fs.inodes)
        return Usage(size=excl * self.pool.block_size, inodes=max(0, len(dev.fs.inodes) - parent_inodes))

    def metadata(self, id):
        dev = self._dev(id)
        return {"DeviceId": str(dev.thin_id), "DeviceName": f"docker-thinp-{id}",
                "DeviceSize": str(self.base_size)}

    def status(self):
        st = self.pool.status()
        bs = self.pool.block_size
        mb = METADATA_BLOCK_SIZE
        return [
            ("Storage Driver", self.name),
            ("Pool Name", "docker-thinp-pool"),
            ("Pool Blocksize", f"{bs // 1024} kB"),
            ("Base Device Size", f"{self.base_size / 1e9:.1f} GB"),
            ("Backing Filesystem", self.fstype),
            ("Data file", os.path.join(self.pool_dir, "data")),
            ("Metadata file", os.path.join(self.pool_dir, "metadata")),
            ("Data Space Used", f"{st.used_data_blocks * bs / 1e9:.3f} GB"),
            ("Data Space Total", f"{st.total_data_blocks * bs / 1e9:.1f} GB"),
            ("Data Space Available", f"{(st.total_data_blocks - st.used_data_blocks) * bs / 1e9:.1f} GB"),
            ("Metadata Space Used", f"{st.used_metadata_blocks * mb / 1e6:.1f} MB"),
            ("Metadata Space Total", f"{st.total_metadata_blocks * mb / 1e9:.3f} GB"),
            ("Metadata Space Available",
             f"{(st.total_metadata_blocks - st.used_metadata_blocks) * mb / 1e9:.3f} GB"),
            ("Thin Pool Minimum Free Space", f"{st.total_data_blocks * bs * self.min_free_percent / 100 / 1e9:.2f} GB"),
            ("Data loop file", os.path.join(self.pool_dir, "data")),
        ]

    def op_counters(self):
        # called after every recorded operation: the pool's counters only, not
        # its status (which counts the metadata space map's used blocks)
        c = self.pool.counters()
        return (c["bytes_written"] + c["bytes_copied"], -1, 0, 0, c["bytes_copied"],
                c["nr_cow_copies"] + c["nr_cow_overwrites"], 0, self.pool.nr_used_data_blocks * self.pool.block_size, 0)

    def stats(self):
        st = self.pool.status()
        c = st.counters
        bs = self.pool.block_size
        out = empty_stats()
        out["physical_bytes"] = st.used_data_blocks * bs
        out["metadata_bytes"] = st.used_metadata_blocks * METADATA_BLOCK_SIZE
        out["bytes_written"] = c["bytes_written"] + c["bytes_copied"]
        out["cow_bytes"] = c["bytes_copied"]
        out["cow_count"] = c["nr_cow_copies"] + c["nr_cow_overwrites"]
        out["inodes"], out["logical_bytes"] = layers_totals(self.layers.values())
        out["page_cache_bytes"] = self.page_cache.cached_bytes
        out.update(self._counters)
        return out

"""A :class:`~thinp.drivers.base.MountedView` over one :class:`thinp.fs.Filesystem`.

The block drivers (devicemapper, btrfs, zfs) mount a whole tree per layer, so
their view is the filesystem's own operations plus three hooks:

* ``read_only``: mutating calls raise EROFS (an image layer mounted ro);
* ``on_read(node, offset, nbytes)``: the driver's page-cache accounting;
* ``_data_truncate``/``_data_release`` (and ``write``/``read``, overridden by
  :class:`._cowdriver.CowView`): btrfs and zfs keep file data in their own
  CoW trees, keyed by inode number (the namespace filesystem only tracks
  names, sizes and content stamps).

Their changes and diffs are the naive tree walk of :mod:`._treediff`.
"""
from __future__ import annotations

import errno
import os

import numpy as np

from ..fs.core import BLOCK, block_stamp, mix_stamp
from ..image.stamps import StampedContent, stamp_block
from .base import MountedView


def written_stamps(content: StampedContent) -> np.ndarray:
    """The block stamps :mod:`thinp.fs` gives a new file when the bytes of
    ``content`` are written to it (each full block: the hash of its bytes;
    a final partial block: that hash mixed over a hole), from one hash per
    distinct stamp."""
    nb = content.nr_blocks
    src = np.zeros(max(nb, 1), dtype=np.uint64)
    k = min(nb, len(content.stamps))
    src[:k] = content.stamps[:k]
    uniq, inverse = np.unique(src, return_inverse=True)
    hashed = np.array([block_stamp(stamp_block(s)) for s in uniq.tolist()], dtype=np.uint64)
    out = hashed[inverse.reshape(-1)]
    tail = content.size % BLOCK
    if tail and nb:
        out[nb - 1] = mix_stamp(0, block_stamp(stamp_block(int(src[nb - 1]))[:tail]), 0, tail)
    return out


def _erofs(path):
    return OSError(errno.EROFS, os.strerror(errno.EROFS), path)


class FsView(MountedView):
    def __init__(self, fs, *, read_only: bool = False, on_read=None):
        self.fs = fs
        self.read_only = read_only
        self.on_read = on_read

    def _rw(self, path):
        if self.read_only:
            raise _erofs(path)

    # data hooks (btrfs / zfs override)
    def _data_write(self, node, offset: int, length: int) -> None:
        pass

    def _data_truncate(self, node, old_size: int, new_size: int) -> None:
        pass

    def _data_release(self, ino: int) -> None:
        pass

    def _live(self, ino: int) -> bool:
        return ino in self.fs.inodes

    # -- namespace -------------------------------------------------------
    def create(self, path, mode=0o644, *, uid=0, gid=0):
        self._rw(path)
        self.fs.create(path, mode, uid=uid, gid=gid)

    def write(self, path, offset, data):
        self._rw(path)
        fs = self.fs
        node = fs.inode_for_write(path)      # one path walk for the fs and the driver
        n = fs.write_inode(node, offset, data)
        self._data_write(node, offset, n)
        return n

    def write_content(self, path, data):
        """A whole file's content from a layer tar (see :mod:`.apply`): bytes,
        or a :class:`~thinp.image.stamps.StampedContent`, which leaves the
        same block stamps as writing its bytes would, without the bytes."""
        if not isinstance(data, StampedContent) or self.fs.payload:
            return self.write(path, 0, data.to_bytes() if isinstance(data, StampedContent) else data)
        n = self.write(path, 0, data.size)
        self.fs.inode(path).stamps = written_stamps(data)
        return n

    def read(self, path, offset=0, length=None):
        fs = self.fs
        out = fs.read(path, offset, length)
        if self.on_read is not None:
            node = fs.inode(path)
            end = node.size if length is None else min(node.size, offset + length)
            if end > offset:
                self.on_read(node, offset, end - offset)
        return out

    def content(self, path):
        return self.fs.content(path)

    def truncate(self, path, size):
        self._rw(path)
        node = self.fs.inode(path)
        old = node.size
        self.fs.truncate(path, size)
        self._data_truncate(node, old, size)

    def _ino_at(self, path):
        try:
            return self.fs.inode(path, follow=False).ino
        except OSError:
            return None

    def unlink(self, path):
        self._rw(path)
        ino = self._ino_at(path)
        self.fs.unlink(path)
        if ino is not None and not self._live(ino):
            self._data_release(ino)

    def mkdir(self, path, mode=0o755, *, uid=0, gid=0):
        self._rw(path)
        self.fs.mkdir(path, mode, uid=uid, gid=gid)

    def rmdir(self, path):
        self._rw(path)
        self.fs.rmdir(path)

    def rename(self, src, dst):
        self._rw(src)
        victim = self._ino_at(dst)
        self.fs.rename(src, dst)
        if victim is not None and not self._live(victim):
            self._data_release(victim)

    def link(self, src, dst):
        self._rw(dst)
        self.fs.link(src, dst)

    def symlink(self, target, path, *, uid=0, gid=0):
        self._rw(path)
        self.fs.symlink(target, path, uid=uid, gid=gid)

    def mknod(self, path, mode, rdev=0, *, uid=0, gid=0):
        self._rw(path)
        self.fs.mknod(path, mode, rdev, uid=uid, gid=gid)

    def chmod(self, path, mode):
        self._rw(path)
        self.fs.chmod(path, mode)

    def chown(self, path, uid, gid, *, follow_symlinks=False):
        self._rw(path)
        self.fs.chown(path, uid, gid, follow_symlinks=follow_symlinks)

    def utime(self, path, times=None, *, follow_symlinks=True):
        self._rw(path)
        self.fs.utime(path, times, follow_symlinks=follow_symlinks)

    def setxattr(self, path, name, value):
        self._rw(path)
        self.fs.setxattr(path, name, value)

    def getxattr(self, path, name):
        return self.fs.getxattr(path, name)

    def listxattr(self, path):
        return self.fs.listxattr(path)

    def removexattr(self, path, name):
        self._rw(path)
        self.fs.removexattr(path, name)

    def stat(self, path, *, follow_symlinks=True):
        return self.fs.stat(path, follow_symlinks=follow_symlinks)

    def readlink(self, path):
        return self.fs.readlink(path)

    def listdir(self, path="/"):
        return self.fs.listdir(path)

    def exists(self, path):
        return self.fs.exists(path)

    def walk(self, top="/"):
        return self.fs.walk(top)

    def fsync(self, path):
        self.fs.fsync(path)


_BASE_TOTALS: dict = {}


def fs_totals(fs) -> tuple[int, int]:
    """(inodes, bytes of regular files) of a filesystem, in O(changes since its
    last clone): a cloned filesystem's frozen inode dict is counted once."""
    from ..fs.core import CowInodes

    inodes = fs.inodes
    if not isinstance(inodes, CowInodes):
        return len(inodes), sum(n.size for n in inodes.values() if n.is_reg)
    base = inodes.base
    key = id(base)
    hit = _BASE_TOTALS.get(key)
    if hit is None or hit[0] is not base:
        hit = (base, sum(n.size for n in base.values() if n.is_reg))
        _BASE_TOTALS[key] = hit
        if len(_BASE_TOTALS) > 4096:
            _BASE_TOTALS.clear()
            _BASE_TOTALS[key] = hit
    logical = hit[1]
    for ino in set(inodes.own) | inodes.gone:
        old = base.get(ino)
        if old is not None and old.is_reg:
            logical -= old.size
    for node in inodes.own.values():
        if node.is_reg:
            logical += node.size
    return len(inodes), logical


def layers_totals(layers) -> tuple[int, int]:
    """(inodes, bytes of regular files) summed over layers that each have a
    namespace filesystem ``fs`` (devicemapper's devices, btrfs/zfs subvolumes)."""
    inodes = logical = 0
    for layer in layers:
        i, b = fs_totals(layer.fs)
        inodes += i
        logical += b
    return inodes, logical

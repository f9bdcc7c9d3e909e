"""The one protocol every side-by-side run uses, and the one "can this machine
mount" check.

A workload (:mod:`thinp.fs.populate`'s ``wl_*``, the union scripts of
:mod:`.union`) is a function ``(target) -> None`` over :class:`Target`; the
same function runs on

* :class:`RealDir` -- a directory on a real mount (a loop device, tmpfs, an
  overlay, a btrfs subvolume, a zfs-fuse dataset), through the OS;
* :class:`SimTarget` -- thinp's model of it: a :class:`thinp.fs.Filesystem`
  or any driver's mounted view (:class:`~thinp.drivers.MountedView`).

Paths are relative to the target's root; a leading "/" is allowed.  File
content is a fixed pseudo-random pattern offset by ``seed`` (in accounting
mode the simulated side keeps a version stamp instead), so the sizes and
layout agree whatever the bytes.

:class:`RealView` is the other direction: enough of the
:class:`~thinp.drivers.MountedView` operations over a real directory for
:func:`thinp.traces.strace.replay` to drive the kernel as it drives a driver.

:func:`can_mount` says whether this process can make the real side at all
(root, the tools, loop devices, the kernel filesystem, FUSE), and if not why,
so every harness skips with the same kind of reason.
"""
from __future__ import annotations

import os
import shutil
import stat as _stat
import subprocess
from typing import Protocol, runtime_checkable

__all__ = ["Target", "RealDir", "SimTarget", "RealView", "can_mount"]


@runtime_checkable
class Target(Protocol):
    """What a side-by-side workload may do."""

    def mkdir(self, path: str, mode: int = 0o755) -> None: ...

    def write_file(self, path: str, size: int, seed: int = 0) -> None:
        """Create ``path`` holding ``size`` bytes of content ``seed``."""

    def append(self, path: str, size: int, seed: int = 0) -> None: ...

    def symlink(self, target: str, path: str) -> None: ...

    def link(self, src: str, dst: str) -> None: ...

    def mknod(self, path: str, mode: int, rdev: int) -> None: ...

    def chmod(self, path: str, mode: int) -> None: ...

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Owner of ``path`` itself (a symlink is not followed)."""

    def unlink(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def rmtree(self, path: str) -> None: ...

    def sync(self) -> None: ...

    def fstrim(self) -> None: ...


_PATTERN: bytes | None = None


def pattern() -> bytes:
    """4 MiB of fixed pseudo-random bytes (the content every target writes)."""
    global _PATTERN
    if _PATTERN is None:
        import numpy as np

        _PATTERN = np.random.default_rng(12345).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    return _PATTERN


def content(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of the pattern, starting at an offset chosen by ``seed``."""
    pat = pattern()
    off = (seed * 4099) % (len(pat) - 8192)
    if size <= len(pat) - off:
        return pat[off:off + size]
    reps = size // (len(pat) - off) + 1
    return (pat[off:] * reps)[:size]


def _rel(path: str) -> str:
    return path.lstrip("/")


class RealDir:
    """A :class:`Target` under a real directory, through the OS."""

    def __init__(self, root):
        self.root = os.fspath(root)

    def _p(self, path: str) -> str:
        return os.path.join(self.root, _rel(path))

    def mkdir(self, path, mode=0o755):
        os.mkdir(self._p(path), mode)

    def write_file(self, path, size, seed=0):
        pat = pattern()
        with open(self._p(path), "wb") as f:
            off = (seed * 4099) % (len(pat) - 8192)
            left = size
            while left:
                k = min(left, len(pat) - off)
                f.write(pat[off:off + k])
                left -= k
                off = 0

    def append(self, path, size, seed=0):
        with open(self._p(path), "ab") as f:
            f.write(content(size, seed))

    def symlink(self, target, path):
        os.symlink(target, self._p(path))

    def link(self, src, dst):
        os.link(self._p(src), self._p(dst))

    def mknod(self, path, mode, rdev):
        os.mknod(self._p(path), mode, rdev)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid, follow_symlinks=False)

    def unlink(self, path):
        os.unlink(self._p(path))

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def rename(self, src, dst):
        os.rename(self._p(src), self._p(dst))

    def rmtree(self, path):
        shutil.rmtree(self._p(path))

    def sync(self):
        os.sync()

    def fstrim(self):
        os.sync()
        subprocess.run(["fstrim", self.root], check=True, capture_output=True)


class SimTarget:
    """A :class:`Target` over thinp's model: a :class:`thinp.fs.Filesystem`
    (paths relative to its root) or a driver's mounted view.  ``sync`` is
    called by :meth:`sync` (default: the filesystem's or the view's own)."""

    def __init__(self, fs_or_view, sync=None):
        self.t = fs_or_view
        self.payload = bool(getattr(fs_or_view, "payload", False))
        self._is_fs = hasattr(fs_or_view, "fstrim")     # a Filesystem; a view has no fstrim
        self._sync = sync

    def _p(self, path: str) -> str:
        return _rel(path) if self._is_fs else "/" + _rel(path)

    def _data(self, size: int, seed: int):
        return content(size, seed) if self.payload else size

    def mkdir(self, path, mode=0o755):
        self.t.mkdir(self._p(path), mode)

    def write_file(self, path, size, seed=0):
        p = self._p(path)
        self.t.create(p)
        if not size:
            return
        if self._is_fs:
            # accounting mode: the stamp comes from the content seed, so the
            # same workload gives equal content() on any filesystem
            self.t.write(p, 0, self._data(size, seed), stamp=None if self.payload else seed + 1)
        else:
            self.t.write(p, 0, self._data(size, seed))

    def append(self, path, size, seed=0):
        p = self._p(path)
        if not self._is_fs:
            self.t.open(p, write=True)      # a union view copies the file up here
        self.t.write(p, self.t.stat(p).st_size, self._data(size, seed))

    def symlink(self, target, path):
        self.t.symlink(target, self._p(path))

    def link(self, src, dst):
        self.t.link(self._p(src), self._p(dst))

    def mknod(self, path, mode, rdev):
        self.t.mknod(self._p(path), mode, rdev)

    def chmod(self, path, mode):
        p = self._p(path)
        if self._is_fs or not _stat.S_ISLNK(self.t.lstat(p).st_mode):
            self.t.chmod(p, mode)

    def chown(self, path, uid, gid):
        self.t.chown(self._p(path), uid, gid, follow_symlinks=False)

    def unlink(self, path):
        self.t.unlink(self._p(path))

    def rmdir(self, path):
        self.t.rmdir(self._p(path))

    def rename(self, src, dst):
        self.t.rename(self._p(src), self._p(dst))

    def rmtree(self, path):
        if self._is_fs:
            self.t.rmtree(self._p(path))
            return
        from ..drivers.apply import remove_tree

        remove_tree(self.t, self._p(path))

    def sync(self):
        if self._sync is not None:
            self._sync()
        elif self._is_fs:
            self.t.sync()
        else:
            self.t.fs.sync()

    def fstrim(self):
        self.t.fstrim()


class RealView:
    """Enough of :class:`~thinp.drivers.MountedView` over a real directory for
    :func:`thinp.traces.strace.replay` (paths absolute inside ``root``; file
    content from the pattern)."""

    payload = False

    def __init__(self, root: str):
        self.root = root

    def _p(self, p):
        return self.root + p

    def stat(self, p, *, follow_symlinks=True):
        return os.stat(self._p(p), follow_symlinks=follow_symlinks)

    def exists(self, p):
        return os.path.lexists(self._p(p))

    def open(self, p, *, write=False, create=False, truncate=False, exclusive=False, mode=0o644):
        flags = (os.O_RDWR if write else os.O_RDONLY) | (os.O_CREAT if create else 0) \
            | (os.O_TRUNC if truncate else 0) | (os.O_EXCL if exclusive else 0)
        os.close(os.open(self._p(p), flags, mode))

    def create(self, p, mode=0o644, **kw):
        os.close(os.open(self._p(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))

    def write(self, p, offset, data):
        data = content(data) if isinstance(data, int) else data
        fd = os.open(self._p(p), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def truncate(self, p, size):
        os.truncate(self._p(p), size)

    def rename(self, a, b):
        os.rename(self._p(a), self._p(b))

    def unlink(self, p):
        os.unlink(self._p(p))

    def rmdir(self, p):
        os.rmdir(self._p(p))

    def mkdir(self, p, mode=0o755, **kw):
        os.mkdir(self._p(p), mode)

    def mknod(self, p, mode, rdev=0, **kw):
        os.mknod(self._p(p), mode, rdev)

    def chmod(self, p, mode):
        os.chmod(self._p(p), mode)

    def chown(self, p, uid, gid, *, follow_symlinks=True):
        os.chown(self._p(p), uid, gid, follow_symlinks=follow_symlinks)

    def symlink(self, target, p, **kw):
        os.symlink(target, self._p(p))

    def link(self, a, b):
        os.link(self._p(a), self._p(b), follow_symlinks=False)

    def utime(self, p, times=None, *, follow_symlinks=True):
        os.utime(self._p(p), times, follow_symlinks=follow_symlinks)

    def fsync(self, p):
        fd = os.open(self._p(p), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def can_mount(*, tools=(), fstype: str | None = None, loop: bool = True, fuse: bool = False,
              what: str = "mount") -> tuple[bool, str]:
    """``(True, "")`` when this process can make a real mount: root, the
    ``tools`` on PATH, ``/dev/loop-control`` (``loop``), the kernel
    filesystem ``fstype`` (in /proc/filesystems, or loadable: not checked
    then), ``/dev/fuse`` (``fuse``).  Else ``(False, reason)``."""
    if os.geteuid() != 0:
        return False, f"not root: {what} needs root"
    for tool in (("losetup", "mount", "umount") if loop else ()) + tuple(tools):
        if shutil.which(tool) is None:
            return False, f"{tool} not found"
    if loop and not os.path.exists("/dev/loop-control"):
        return False, "no /dev/loop-control"
    if fuse and not os.path.exists("/dev/fuse"):
        return False, "no /dev/fuse"
    if fstype is not None:
        try:
            with open("/proc/filesystems") as f:
                if fstype not in f.read():
                    return False, f"kernel has no {fstype}"
        except OSError:
            return False, "cannot read /proc/filesystems"
    return True, ""

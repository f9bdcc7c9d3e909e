"""The storage-driver interface, modelled on containers/storage's ``Driver``.

A driver stores layers by id.  Image layers are created read-only from their
parent and filled by :meth:`Driver.apply_diff`; a container's layer is
created ``read_write=True`` on top of its image's top layer.  ``get(id)``
mounts a layer and returns a :class:`MountedView` with the file operations of
:class:`thinp.fs.Filesystem` (paths are absolute inside the layer, "/" is
its root); ``put(id)`` unmounts it.  Both are reference counted, as Docker's
are: the second ``get`` returns the same view and counts one more user.

Every driver ends at a block device, so its physical bytes are comparable:

* union drivers (vfs, aufs, overlay, overlay2) keep branches as directories
  of ONE filesystem (``thinp.fs``) on a :class:`~thinp.blockdev.PlainDevice`;
* devicemapper keeps one thin pool and one filesystem per thin device;
* btrfs and zfs keep their own trees over the shared refcounted CoW kernels
  of :mod:`thinp.pdata` at 4 KiB extents / 128 KiB records.

Changes (Docker's ``docker diff`` list) are :class:`Change` rows, sorted by
path, with kind ``"A"`` added, ``"C"`` changed, ``"D"`` deleted.  A layer
diff is a :class:`thinp.image.Layer` whose tar uses OCI whiteouts
(``.wh.<name>``, ``.wh..wh..opq``) whatever the driver's native form.

Metrics: :meth:`Driver.stats` returns a flat dict with exactly the keys of
:data:`METRIC_KEYS` for every driver (0 where a counter does not apply), so
:meth:`thinp.Engine.metrics` can compare drivers row by row.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import NotSupportedError

#: The counters every driver reports, in this order (units in the names).
METRIC_KEYS = (
    "physical_bytes",  # bytes the backing device has allocated (du of a sparse loop file / pool data)
    "logical_bytes",  # sum of file sizes visible in all layers, counted once per layer
    "metadata_bytes",  # filesystem/pool/tree metadata bytes on the backing device
    "bytes_written",  # bytes written to the backing device, copy-up and CoW included
    "copy_up_bytes",  # bytes copied up whole-file (union drivers)
    "copy_up_count",  # files copied up
    "cow_bytes",  # bytes copied by block/extent/record CoW (devicemapper, btrfs, zfs)
    "cow_count",  # CoW copies
    "lookup_probes",  # branch probes made by path lookups (aufs/overlay: one per layer searched)
    "inodes",  # inodes in use on the backing filesystem(s)
    "page_cache_bytes",  # page-cache memory for what containers read (see PageCache)
    "mount_ops",  # get() calls that really mounted
    "create_ops",  # create() calls (layers, init layers, containers)
    "diff_work",  # entries visited + bytes compared by changes()/diff() (Docker's naive diff)
)


#: What :meth:`Driver.op_counters` returns, in this order: running totals a
#: timing model reads before and after every file operation (cheap: no sync,
#: no walk).  ``write_requests`` is -1 where the device does not count them.
OP_COUNTER_KEYS = ("bytes_written", "write_requests", "copy_up_bytes", "copy_up_count",
                   "cow_bytes", "cow_count", "lookup_probes", "provisioned_bytes", "inodes")


@dataclass(frozen=True, order=True)
class Change:
    """One row of ``docker diff``: ``kind`` is "A", "C" or "D"."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass
class Usage:
    """Disk use of one layer (containers/storage's ``DriverWithDifferUsage``)."""

    size: int  # bytes this layer adds on disk (exclusive)
    inodes: int  # inodes this layer adds


@dataclass
class Capabilities:
    """What a driver can do natively (containers/storage ``Capabilities``)."""

    reproducible_diff: bool = True  # diff() of the same layer gives the same tar
    native_diff: bool = False  # diff from the driver's own records, not a tree walk
    #: what N containers reading one image file cost in page cache (see
    #: :mod:`thinp.drivers.pagecache`): "inode" -- one copy, the lower
    #: branch's inode (aufs, overlay, overlay2); "block" -- one copy, the
    #: ARC caches shared records (zfs); "device" -- N copies, each container
    #: its own device or subvolume inode (devicemapper, btrfs); "none" -- N
    #: copies, every layer holds its own full copy of the files (vfs)
    shares_page_cache: str = "inode"
    copy_on_write: str = "file"  # "none", "file", "block", "extent", "record"
    #: the longest chain create() accepts, the layer itself included (a layer
    #: may have max_layers - 1 ancestors); deeper raises TooManyLayersError
    max_layers: int | None = None
    #: rename(2) of a directory that exists in a lower layer gives EXDEV
    #: (aufs; overlay/overlay2 without redirect_dir); a directory made in the
    #: layer itself renames fine everywhere
    dir_rename_exdev: bool = False
    #: copy-up of one name of a hardlinked lower file separates it from its
    #: other names (overlayfs without index=on, aufs)
    breaks_lower_hardlinks: bool = False
    #: how changes() finds changes: "naive" compares the two whole trees
    #: (Docker's ChangesDirs); "upper" walks the layer's own directory
    #: (archive.Changes / OverlayChanges: a copied-up path is "C" even when
    #: unchanged, an opaque directory is "D" followed by its children as "A",
    #: only the immediate parent of an A/D is added as "C")
    changes: str = "naive"
    #: changes() decides "C" from lstat alone, as Docker's NaiveDiffDriver
    #: does (moby pkg/archive/changes_unix.go statDifferent: mode, uid, gid,
    #: rdev, and for non-directories size and mtime; plus the
    #: security.capability xattr -- no content, no inode number).  Content
    #: replaced at the same size and mtime (a rename over an equal-sized file
    #: with the same mtime) is then no change, and diff()/commit leave it out
    changes_by_stat: bool = False
    extra: dict = field(default_factory=dict)


class MountedView(abc.ABC):
    """A mounted layer: the file operations of :class:`thinp.fs.Filesystem`.

    ``write(path, offset, data)`` takes bytes, or an int length on an
    accounting-mode backend (content is then tracked as version stamps, so
    ``content(path)`` still compares equal across drivers).  Errors are
    ``OSError`` with the errno the real driver gives (EXDEV for a directory
    rename on aufs/overlay, ENOENT, EEXIST, ENOTEMPTY, EISDIR, ENOTDIR,
    ENOSPC, EROFS on a read-only layer)."""

    @abc.abstractmethod
    def create(self, path: str, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> None: ...

    @abc.abstractmethod
    def write(self, path: str, offset: int, data) -> int: ...

    @abc.abstractmethod
    def read(self, path: str, offset: int = 0, length: int | None = None): ...

    @abc.abstractmethod
    def content(self, path: str): ...

    @abc.abstractmethod
    def truncate(self, path: str, size: int) -> None: ...

    @abc.abstractmethod
    def unlink(self, path: str) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> None: ...

    @abc.abstractmethod
    def rmdir(self, path: str) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    def link(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    def symlink(self, target: str, path: str, *, uid: int = 0, gid: int = 0) -> None: ...

    @abc.abstractmethod
    def mknod(self, path: str, mode: int, rdev: int = 0, *, uid: int = 0, gid: int = 0) -> None: ...

    @abc.abstractmethod
    def chmod(self, path: str, mode: int) -> None: ...

    @abc.abstractmethod
    def chown(self, path: str, uid: int, gid: int) -> None: ...

    @abc.abstractmethod
    def utime(self, path: str, times: tuple[float, float] | None = None) -> None: ...

    @abc.abstractmethod
    def setxattr(self, path: str, name: str, value: bytes) -> None: ...

    @abc.abstractmethod
    def getxattr(self, path: str, name: str) -> bytes: ...

    @abc.abstractmethod
    def stat(self, path: str, *, follow_symlinks: bool = True): ...

    def lstat(self, path: str):
        return self.stat(path, follow_symlinks=False)

    @abc.abstractmethod
    def readlink(self, path: str) -> str: ...

    @abc.abstractmethod
    def listdir(self, path: str = "/") -> list[str]: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """``os.walk`` over the merged view, top-down, names sorted."""
        import stat as _stat

        dirs, files = [], []
        for name in sorted(self.listdir(top)):
            p = top.rstrip("/") + "/" + name
            (dirs if _stat.S_ISDIR(self.lstat(p).st_mode) else files).append(name)
        yield top, dirs, files
        for d in dirs:
            yield from self.walk(top.rstrip("/") + "/" + d)

    def fsync(self, path: str) -> None:
        """Durability point; drivers that journal count it."""

    def open(self, path: str, *, write: bool = False, create: bool = False, truncate: bool = False,
             exclusive: bool = False, mode: int = 0o644) -> None:
        """open(2) without a file handle: ``create`` (O_CREAT) makes a missing
        file, ``exclusive`` (O_EXCL) refuses an existing one with EEXIST,
        ``truncate`` (O_TRUNC) empties it.  Union drivers override it because an
        open for ``write`` alone copies a lower file up; a strace replay
        (:mod:`thinp.traces.strace`) calls it for every open that may write."""
        import errno as _errno
        import os as _os

        if not self.exists(path):
            if not create:
                raise OSError(_errno.ENOENT, _os.strerror(_errno.ENOENT), path)
            self.create(path, mode)
            return
        if create and exclusive:
            raise OSError(_errno.EEXIST, _os.strerror(_errno.EEXIST), path)
        if truncate:
            self.truncate(path, 0)


class Driver(abc.ABC):
    """A storage driver.  Subclasses set ``name`` and implement the methods.

    Every driver accepts the option ``payload`` (default False): True keeps
    file bytes (``read`` returns them, diffs carry them); False is
    accounting mode (4 KiB version stamps, as :mod:`thinp.fs`).  ``payload``
    is also an attribute of the driver.  A driver with ``hidden = True`` (the
    ``"reference"`` test oracle) works with :func:`get_driver` but is left out
    of :func:`known_drivers` unless ``hidden=True`` is passed.

    Layer ids are strings (Docker uses 64 hex digits; the ``-init`` suffix
    is Docker's init layer).  ``create`` of an existing id raises
    ``DeviceExistsError``; an unknown id raises ``KeyError``-free
    ``DeviceNotFoundError``; removing a layer that is mounted or has children
    raises ``OSError(EBUSY)``; a chain deeper than the driver allows raises
    :class:`~thinp.errors.TooManyLayersError`."""

    name: str = ""
    hidden: bool = False
    payload: bool = False

    @abc.abstractmethod
    def create(self, id: str, parent: str | None, *, read_write: bool = False, **opts) -> None:
        """Make layer ``id`` on top of ``parent`` (None: an empty base layer);
        ``read_write`` for a container's layer.  No options are known:
        any raises ``ValueError``, as a bad id does."""

    @abc.abstractmethod
    def remove(self, id: str) -> None:
        """Delete layer ``id``: EBUSY while it is mounted or has children."""

    @abc.abstractmethod
    def get(self, id: str) -> MountedView:
        """Mount layer ``id`` (one more user) and return its view; every
        user of a mounted layer shares one view."""

    @abc.abstractmethod
    def put(self, id: str) -> None:
        """One user fewer (EINVAL if none).  At the last one the view goes
        and the layer's own mount is unmounted: devicemapper's filesystem
        writes back and commits, btrfs/zfs commit the transaction; union
        layers share the one backing filesystem, which stays mounted."""

    # a driver keeps its layers in ``self.layers``, a :class:`.layers.LayerTable`
    def exists(self, id: str) -> bool:
        """Whether layer ``id`` exists."""
        return id in self.layers

    def list_layers(self) -> list[str]:
        """Every layer id, sorted."""
        return self.layers.ids()

    def parent(self, id: str) -> str | None:
        """Layer ``id``'s parent id (None for a base layer); DeviceNotFoundError if unknown."""
        return self.layers[id].parent

    def status(self) -> list[tuple[str, str]]:
        """``docker info``'s "Storage Driver" key/value lines."""
        return [("Storage Driver", self.name)]

    def metadata(self, id: str) -> dict:
        """``docker inspect``'s GraphDriver.Data for a layer."""
        return {}

    def cleanup(self) -> None:
        """Unmount everything and release the backing device (Docker's Cleanup)."""

    def sync(self) -> None:
        """``sync(1)``: every filesystem the driver keeps writes back its
        delayed data and commits, so :meth:`stats` counts what the device has
        been sent (``bytes_written``, ``physical_bytes``).  Mounts stay as
        they are.  The default syncs ``self.fs``, the one filesystem of the
        union drivers; devicemapper syncs each thin device's filesystem,
        btrfs/zfs commit the transaction."""
        fs = getattr(self, "fs", None)
        if fs is not None and callable(getattr(fs, "sync", None)):
            fs.sync()

    @abc.abstractmethod
    def changes(self, id: str, parent: str | None) -> list[Change]: ...

    @abc.abstractmethod
    def diff(self, id: str, parent: str | None):
        """The layer's changes against ``parent`` as a :class:`thinp.image.Layer`."""

    @abc.abstractmethod
    def apply_diff(self, id: str, parent: str | None, layer) -> int:
        """Apply a :class:`thinp.image.Layer` to layer ``id``; returns its size."""

    def diff_size(self, id: str, parent: str | None) -> int:
        """Bytes of the changes' content (what ``docker history`` calls SIZE)."""
        from ..image import Layer  # noqa: F401  (diff returns one)

        return self.diff(id, parent).size

    def capabilities(self) -> Capabilities:
        return Capabilities()

    @abc.abstractmethod
    def usage(self, id: str) -> Usage: ...

    def op_counters(self) -> tuple | None:
        """Running totals named by :data:`OP_COUNTER_KEYS` (no sync, no
        walk: a timing model reads them around every operation), or None
        where the driver keeps none."""
        return None

    @abc.abstractmethod
    def stats(self) -> dict:
        """Counters with exactly :data:`METRIC_KEYS`."""


# ----------------------------------------------------------------- registry
#: the seven built-in drivers, in the order comparisons list them (Docker's
#: default first); each lives in the module of the same name
DRIVER_NAMES = ("overlay2", "overlay", "aufs", "devicemapper", "btrfs", "zfs", "vfs")

_REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a driver available to :func:`get_driver`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def known_drivers(hidden: bool = False) -> list[str]:
    """Names of the registered drivers; ``hidden=True`` adds test-only ones
    (the ``"reference"`` oracle)."""
    _load_all()
    return sorted(n for n, c in _REGISTRY.items() if hidden or not getattr(c, "hidden", False))


def _load_all() -> None:
    import importlib

    for mod in DRIVER_NAMES + ("reference",):
        try:
            importlib.import_module(f"thinp.drivers.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"thinp.drivers.{mod}":
                raise


def get_driver(name: str, root=None, **options) -> Driver:
    """Driver ``name`` storing its state under ``root`` (a directory; a
    temporary one when None).  Unknown names raise NotSupportedError
    listing the known ones."""
    _load_all()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise NotSupportedError(
            f"storage driver {name!r} is not supported (known: {', '.join(known_drivers()) or 'none'})"
        ) from None
    return cls(root, **options)


def empty_stats() -> dict:
    """A metrics dict with every key at 0."""
    return {k: 0 for k in METRIC_KEYS}

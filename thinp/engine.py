"""``Engine``: a Docker-like façade over one storage driver and an image store.

``Engine(driver="overlay2", root=None, **driver_options)`` keeps

* ``driver``: the :class:`~thinp.drivers.Driver` (``root/driver``);
* ``store``: an :class:`~thinp.image.ImageStore` (``root/image``) with the
  images, tags and which containers use which image;
* ``containers``: id -> :class:`Container`.

``root=None`` makes a temporary directory that :meth:`Engine.close` removes,
so ``Engine()`` works in a notebook; the engine is a context manager.  The
engine's own state (containers, counters) lives in memory for its lifetime.

Layers live in the driver under their ChainID (64 hex digits, no
``sha256:``), as Docker's layer store names them, so an image layer shared
by several images (same ChainID) is created and filled once:
``driver.create(chain, parent_chain)`` then ``driver.apply_diff(...)``.  A
container is two layers, as in Docker: ``<id>-init`` (read-write, holding
``/etc/hosts``, ``/etc/resolv.conf``, ``/etc/hostname``, ``/.dockerenv``,
``/dev/console``, ``/dev/pts``, ``/dev/shm``, ``/proc``, ``/sys`` and the
``/etc/mtab`` symlink, made by Docker's ``initlayer.Setup`` rules) on the
image's top layer, then the container's read-write layer ``<id>`` on it.
``diff`` and ``commit`` compare the read-write layer with the init layer, so
init files never show.  Image layers no image or container needs any more
are removed from the driver after ``rmi``/``rm``.

A local registry for :meth:`Engine.pull` is a directory holding either

* ``<registry>/<repository>/<tag>``: an OCI image layout directory or a
  save/OCI tar (``<tag>.tar`` works too), one image per tag, where
  ``<repository>`` is the familiar name (``busybox``, ``user/app``); or
* ``<registry>/index.json``: one OCI layout whose index names the images
  (``org.opencontainers.image.ref.name`` / ``io.containerd.image.name``).

:meth:`Engine.metrics` is one flat dict with the same keys for every
driver: :data:`~thinp.drivers.METRIC_KEYS` then :data:`ENGINE_METRIC_KEYS`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as _stat
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .drivers import METRIC_KEYS, Change, get_driver
from .drivers.reference import ZeroReader
from .errors import ImageNotFoundError, ThinpError
from .image import Image, ImageStore, Reference
from .image import commit as _image_commit
from .image import history as _image_history
from .image import import_ as _image_import
from .image import inspect as _image_inspect
from .image import load as _archive_load
from .image.image import now_rfc3339
from .image.layer import Entry, write_tar

__all__ = ["Engine", "Container", "ENGINE_METRIC_KEYS", "ALL_METRIC_KEYS",
           "ContainerNotFoundError", "ContainerConflictError", "INIT_LAYER_PATHS"]

#: Engine-level counters appended to the driver's METRIC_KEYS by metrics().
ENGINE_METRIC_KEYS = (
    "images",  # images in the store
    "containers",  # containers (any state)
    "running",  # containers running
    "layers",  # layers in the driver (image layers + init + container layers)
    "image_layers",  # distinct image layers (by ChainID) in the driver
    "image_layer_bytes",  # content bytes over distinct image layers (docker system df)
    "layers_created",  # image layers created by load/pull/import/commit
    "layers_shared",  # image layers found already present (same ChainID) and reused
    "layers_removed",  # image layers removed once no image or container needed them
    "layer_bytes_applied",  # content bytes written by apply_diff of image layers
    "saved_bytes",  # bytes of archives written by save()
    "exported_bytes",  # bytes of tars written by export()
    "imported_bytes",  # content bytes of layers made by import_()
    "commits",  # commit() calls
)
ALL_METRIC_KEYS = tuple(METRIC_KEYS) + ENGINE_METRIC_KEYS

#: Docker's daemon/initlayer: path -> "dir", "file" or a symlink target.
INIT_LAYER_PATHS = (
    ("/dev/pts", "dir"),
    ("/dev/shm", "dir"),
    ("/proc", "dir"),
    ("/sys", "dir"),
    ("/.dockerenv", "file"),
    ("/etc/resolv.conf", "file"),
    ("/etc/hosts", "file"),
    ("/etc/hostname", "file"),
    ("/dev/console", "file"),
    ("/etc/mtab", "/proc/mounts"),
)

_FILE_OPS = frozenset((
    "create", "write", "read", "content", "truncate", "unlink", "mkdir", "rmdir", "rename",
    "link", "symlink", "mknod", "chmod", "chown", "utime", "setxattr", "getxattr", "stat",
    "lstat", "readlink", "listdir", "exists", "walk", "fsync"))


class ContainerNotFoundError(ThinpError, KeyError):
    """No container with that ID, ID prefix or name ("No such container")."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ContainerConflictError(ThinpError):
    """The container is running (``rm`` without ``force``) or the name is taken."""


@dataclass(eq=False)
class Container:
    """A container: an image plus ``<id>-init`` and ``<id>`` layers.

    File operations (``write``, ``read``, ``mkdir``, ``rename``, ... the
    :class:`~thinp.drivers.MountedView` methods) are available on the
    container itself and act on its mounted read-write layer."""

    id: str
    name: str
    image_id: str
    image: str  # the reference it was created from
    chain_ids: list
    created: str
    config: dict
    state: str = "created"  # created, running, exited
    _engine: "Engine | None" = field(default=None, repr=False)
    _view: object = field(default=None, repr=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def init_id(self) -> str:
        return self.id + "-init"

    @property
    def view(self):
        """The mounted read-write layer (mounted on first use)."""
        return self._engine._mount(self)

    def __getattr__(self, name):
        if name in _FILE_OPS:
            return getattr(self._engine._mount(self), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class Engine:
    """Docker's verbs over one storage driver (see the module docstring)."""

    def __init__(self, driver: str = "overlay2", root=None, **driver_options):
        self._own_root = root is None
        self.root = tempfile.mkdtemp(prefix="thinp-engine-") if root is None else os.fspath(root)
        self._finalizer = (weakref.finalize(self, shutil.rmtree, self.root, True)
                           if self._own_root else None)
        try:
            os.makedirs(os.path.join(self.root, "driver"), exist_ok=True)
            self.driver = get_driver(driver, os.path.join(self.root, "driver"), **driver_options)
            self.store = ImageStore(os.path.join(self.root, "image"))
        except BaseException:
            if self._finalizer is not None:
                self._finalizer()
            raise
        self.containers: dict[str, Container] = {}
        self._image_layers: dict[str, int] = {}   # driver layer id (chain hex) -> depth (1 = base)
        self._layer_bytes: dict[str, int] = {}
        self._counters = {k: 0 for k in ENGINE_METRIC_KEYS}
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmount everything, release the driver, remove a temporary root."""
        if self._closed:
            return
        self._closed = True
        try:
            for c in self.containers.values():
                if c._view is not None:
                    try:
                        self.driver.put(c.id)
                    except OSError:
                        pass
                    c._view = None
                c._engine = None     # no engine <-> container cycle: the driver's state
                # (a vfs filesystem: millions of objects) is freed on the last
                # reference, not left to a cyclic collection of seconds
            self.driver.cleanup()
        finally:
            if self._finalizer is not None:
                self._finalizer()

    @property
    def driver_name(self) -> str:
        return self.driver.name

    def info(self) -> list[tuple[str, str]]:
        """``docker info``'s storage lines plus image/container counts."""
        return [("Containers", str(len(self.containers))), ("Images", str(len(self.store)))] + \
            list(self.driver.status())

    # ------------------------------------------------------------- layers
    def _ensure_layers(self, image: Image) -> tuple[list[str], int]:
        """Create the driver layers of ``image`` that are missing; all or nothing."""
        created: list[str] = []
        shared = 0
        parent = None
        applied = 0
        try:
            for depth, (layer, cid) in enumerate(zip(image.layers, image.chain_ids), 1):
                lid = cid[7:]
                if self.driver.exists(lid):
                    shared += 1
                else:
                    self.driver.create(lid, parent)
                    created.append(lid)
                    n = self.driver.apply_diff(lid, parent, layer)
                    applied += n
                    self._image_layers[lid] = depth
                    if layer.size is None:
                        layer.scan()
                    self._layer_bytes[lid] = layer.size
                parent = lid
        except BaseException:
            for lid in reversed(created):
                try:
                    self.driver.remove(lid)
                except (OSError, ThinpError):
                    pass
                self._image_layers.pop(lid, None)
                self._layer_bytes.pop(lid, None)
            raise
        self._counters["layers_created"] += len(created)
        self._counters["layers_shared"] += shared
        self._counters["layer_bytes_applied"] += applied
        return created, shared

    def add_images(self, images, tags_for=None, *, load_path=None, platform=None) -> list[Image]:
        """Add images to the store (or load them from ``load_path``, a docker-save
        tar or OCI layout) and their layers to the driver; all or nothing.
        ``tags_for(image)`` gives each image's tags.  Returns the images added."""
        before = set(self.store.images)
        before_refs = dict(self.store.refs)
        added: list[Image] = []
        try:
            if load_path is not None:
                added = self.store.load(load_path, platform=platform)
                for img in added:
                    self._ensure_layers(img)
            for img in images:
                tags = tags_for(img) if tags_for else ()
                img = self.store.add(img, tags)
                added.append(img)
                self._ensure_layers(img)
        except BaseException:
            for img in added:
                if img.id not in before and img.id in self.store.images:
                    self.store.rmi(img.id, force=True, prune=False)
            self.store.refs.clear()
            self.store.refs.update({r: i for r, i in before_refs.items() if i in self.store.images})
            for i in list(self.store.images):
                self.store.sync_tags(i)
            self._gc_layers()
            raise
        return added

    def _gc_layers(self) -> None:
        """Remove image layers that no image and no container needs."""
        live = {cid[7:] for img in self.store.images.values() for cid in img.chain_ids}
        for c in self.containers.values():
            live.update(cid[7:] for cid in c.chain_ids)
        dead = [lid for lid in self._image_layers if lid not in live]
        dead.sort(key=lambda lid: -self._image_layers[lid])
        for lid in dead:
            if self.driver.exists(lid):
                self.driver.remove(lid)
            del self._image_layers[lid]
            self._layer_bytes.pop(lid, None)
            self._counters["layers_removed"] += 1

    # ------------------------------------------------------------- images
    def load(self, path, *, platform: str = "linux/amd64") -> list[Image]:
        """``docker load``: every image of a save/OCI archive; layers already
        present (same ChainID) are shared."""
        return self.add_images((), load_path=path, platform=platform)

    def save(self, refs: str | Sequence[str], path, *, format: str = "docker",
             directory: bool = False) -> int:
        """``docker save``; returns the bytes written."""
        if isinstance(refs, str):
            refs = [refs]
        self.store.save(list(refs), path, format=format, directory=directory)
        n = _tree_bytes(path)
        self._counters["saved_bytes"] += n
        return n

    def pull(self, ref: str, registry, *, platform: str = "linux/amd64") -> Image:
        """``docker pull`` from a local registry directory (see the module docstring)."""
        r = Reference.parse(ref)
        registry = os.fspath(registry)
        tag = r.tag or "latest"
        images = None
        if r.digest is None:
            base = os.path.join(registry, *r.familiar_name.split("/"), tag)
            for cand in (base, base + ".tar"):
                if os.path.exists(cand):
                    images = _archive_load(cand, platform=platform)
                    break
        if images is None and os.path.exists(os.path.join(registry, "index.json")):
            everything = _archive_load(registry, platform=platform)
            images = [img for img in everything
                      if (r.digest is not None and img.id == r.digest) or
                      (r.digest is None and any(Reference.parse(t) == Reference.parse(str(r))
                                                for t in img.tags))]
        if not images:
            raise ImageNotFoundError(
                f"manifest for {r.familiar} not found: manifest unknown (registry {registry})")
        if len(images) > 1:
            raise ThinpError(f"{r.familiar}: the registry holds {len(images)} images for one tag")
        img = images[0]
        img = Image(img.config_bytes, img.layers, (), img.parent)
        tags = [str(r)] if r.digest is None else []
        return self.add_images([img], tags_for=lambda _i: tags)[0]

    def images(self) -> list[dict]:
        """``docker images`` rows: repository, tag, id (short), created, size, platform."""
        rows = []
        for img in sorted(self.store.images.values(), key=lambda i: (i.created, i.id), reverse=True):
            tags = self.store.tags_of(img.id)
            for t in tags or [None]:
                if t is None:
                    repo, tg = "<none>", "<none>"
                else:
                    ref = Reference.parse(t)
                    repo, tg = ref.familiar_name, ref.tag or "<none>"
                rows.append({"repository": repo, "tag": tg, "id": img.short_id,
                             "image_id": img.id, "created": img.created, "size": img.size,
                             "platform": img.platform})
        return rows

    def image(self, ref: str) -> Image:
        return self.store.get(ref)

    def tag(self, source: str, target: str) -> None:
        self.store.tag(source, target)

    def rmi(self, ref: str, *, force: bool = False, prune: bool = True) -> list[tuple[str, str]]:
        """``docker rmi`` with Docker's rules; unused layers leave the driver."""
        records = self.store.rmi(ref, force=force, prune=prune)
        self._gc_layers()
        return records

    def history(self, ref: str) -> list[dict]:
        return _image_history(self.store.get(ref))

    def inspect(self, name: str) -> dict:
        """``docker inspect`` of a container (by id, prefix or name) or an image."""
        try:
            c = self.container(name)
        except ContainerNotFoundError:
            c = None
        if c is not None:
            return {
                "Id": c.id, "Name": "/" + c.name, "Created": c.created, "Image": c.image_id,
                "Config": {**c.config, "Image": c.image},
                "State": {"Status": c.state, "Running": c.state == "running"},
                "GraphDriver": {"Name": self.driver.name, "Data": self.driver.metadata(c.id)},
            }
        img = self.store.get(name)
        out = _image_inspect(img)
        out["GraphDriver"] = {"Name": self.driver.name,
                              "Data": self.driver.metadata(img.chain_ids[-1][7:]) if img.layers else {}}
        return out

    def import_(self, tar, ref: str | None = None, *, changes: Sequence[str] = (),
                message: str = "", source: str = "-", created: str | None = None) -> Image:
        """``docker import``: a one-layer image from a flat rootfs tar (shares nothing).
        ``created`` (RFC 3339) fixes the timestamp, hence the image ID."""
        img = _image_import(tar, changes=changes, message=message, source=source, created=created)
        tags = [ref] if ref else []
        img = self.add_images([img], tags_for=lambda _i: tags)[0]
        self._counters["imported_bytes"] += sum(l.size or 0 for l in img.layers)
        return img

    # ------------------------------------------------------------- containers
    def container(self, name: str | Container) -> Container:
        """A container by object, full id, unique id prefix or name."""
        if isinstance(name, Container):
            if name.id not in self.containers:
                raise ContainerNotFoundError(f"No such container: {name.id}")
            return name
        c = self.containers.get(name)
        if c is not None:
            return c
        by_name = [c for c in self.containers.values() if c.name == name.lstrip("/")]
        if by_name:
            return by_name[0]
        pref = [c for c in self.containers.values() if name and c.id.startswith(name)]
        if len(pref) == 1:
            return pref[0]
        if len(pref) > 1:
            raise ValueError(f"ambiguous container ID prefix {name!r}")
        raise ContainerNotFoundError(f"No such container: {name}")

    def create(self, image: str, *, name: str | None = None, id: str | None = None) -> Container:
        """``docker create``: ``<id>-init`` on the image's top layer, then ``<id>``.
        ``id`` (64 hex digits) re-creates a container a persistent root recorded."""
        img = self.store.get(image)
        self._seq += 1
        cid = id or hashlib.sha256(f"thinp-container:{self._seq}:{img.id}:{name}".encode()).hexdigest()
        if cid in self.containers:
            raise ContainerConflictError(f"container {cid} already exists")
        if name is None:
            name = f"thinp_{self._seq}"
        elif any(c.name == name for c in self.containers.values()):
            raise ContainerConflictError(
                f'Conflict. The container name "/{name}" is already in use')
        top = img.chain_ids[-1][7:] if img.layers else None
        init = cid + "-init"
        self.driver.create(init, top, read_write=True)
        try:
            view = self.driver.get(init)
            try:
                _setup_init_layer(view)
            finally:
                self.driver.put(init)
            self.driver.create(cid, init, read_write=True)
        except BaseException:
            if self.driver.exists(init):
                self.driver.remove(init)
            raise
        c = Container(cid, name, img.id, image, list(img.chain_ids), now_rfc3339(),
                      dict(img.container_config), _engine=self)
        self.containers[cid] = c
        self.store.add_user(img.id, cid)
        return c

    def run(self, image: str, ops: Callable | Iterable | None = None, *,
            name: str | None = None) -> Container:
        """``docker run``: create, start, then apply ``ops`` to the container's
        view: a callable taking the view, or an iterable of
        ``("method", *args)`` tuples (``("write", "/f", 0, b"x")``)."""
        c = self.create(image, name=name)
        self.start(c)
        if ops is not None:
            self.exec(c, ops)
        return c

    def exec(self, container, ops: Callable | Iterable) -> None:
        """Apply file operations to a container (see :meth:`run`)."""
        c = self.container(container)
        view = self._mount(c)
        if callable(ops):
            ops(view)
        else:
            for op in ops:
                getattr(view, op[0])(*op[1:])

    def start(self, container) -> Container:
        c = self.container(container)
        self._mount(c)
        c.state = "running"
        return c

    def stop(self, container) -> Container:
        c = self.container(container)
        self._unmount(c)
        if c.state == "running":
            c.state = "exited"
        return c

    def _mount(self, c: Container):
        if self._closed:
            raise ThinpError("the engine is closed")
        if c._view is None:
            c._view = self.driver.get(c.id)
        return c._view

    def _unmount(self, c: Container) -> None:
        if c._view is not None:
            self.driver.put(c.id)
            c._view = None

    def mount(self, container):
        """The container's mounted read-write layer (a MountedView)."""
        return self._mount(self.container(container))

    def sync(self) -> None:
        """``sync(1)``: every mounted filesystem writes back what it holds in
        memory (delayed allocation, the running journal transaction, an open
        btrfs/zfs transaction), as a user runs ``sync`` before measuring with
        ``du``, ``dmsetup status`` or ``btrfs filesystem df``.  Containers stay
        mounted; :meth:`metrics` afterwards counts what reached the device."""
        if self._closed:
            raise ThinpError("the engine is closed")
        self.driver.sync()

    def ps(self, all: bool = False) -> list[dict]:
        """``docker ps`` rows (``all`` includes stopped and created containers)."""
        rows = []
        for c in self.containers.values():
            if not all and c.state != "running":
                continue
            rows.append({"id": c.short_id, "container_id": c.id, "image": c.image,
                         "created": c.created, "status": c.state, "name": c.name})
        return rows

    def rm(self, container, *, force: bool = False) -> str:
        """``docker rm``: remove the container's layers (refused while running)."""
        c = self.container(container)
        if c.state == "running" and not force:
            raise ContainerConflictError(
                f"You cannot remove a running container {c.id}. Stop the container before "
                f"attempting removal or force remove")
        self._unmount(c)
        self.driver.remove(c.id)
        self.driver.remove(c.init_id)
        del self.containers[c.id]
        self.store.remove_user(c.image_id, c.id)
        c.state = "removed"
        self._gc_layers()
        return c.id

    def diff(self, container) -> list[Change]:
        """``docker diff``: the container's changes against its image (A/C/D)."""
        c = self.container(container)
        return self.driver.changes(c.id, c.init_id)

    def commit(self, container, repo_tag: str | None = None, *, message: str = "",
               author: str = "", changes: Sequence[str] = (), created: str | None = None) -> Image:
        """``docker commit``: the container's diff as a new image layer on its image.
        ``created`` (RFC 3339) fixes the timestamp, hence the image ID."""
        c = self.container(container)
        base = self.store.images.get(c.image_id)
        if base is None:
            raise ImageNotFoundError(f"No such image: {c.image_id} (the container's image was removed)")
        layer = self.driver.diff(c.id, c.init_id)
        img = _image_commit(base, layer, message=message, author=author, changes=changes,
                            container_config=c.config, container_id=c.id, created=created)
        tags = [repo_tag] if repo_tag else []
        img = self.add_images([img], tags_for=lambda _i: tags)[0]
        self._counters["commits"] += 1
        return img

    def export(self, container, out) -> int:
        """``docker export``: the container's merged rootfs as one flat tar
        (no whiteouts; hardlinks kept).  ``out`` is a path or a binary file;
        returns the tar's bytes.  In accounting mode file content is zeros."""
        c = self.container(container)
        view = self._mount(c)
        payload = bool(getattr(self.driver, "payload", False))
        items = list(_export_items(view, payload))
        if isinstance(out, (str, os.PathLike)):
            tmp = os.fspath(out) + ".tmp"
            try:
                with open(tmp, "wb") as f:
                    write_tar(items, f)
                os.replace(tmp, out)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            n = os.path.getsize(out)
        else:
            counter = _CountingWriter(out)
            write_tar(items, counter)
            n = counter.n
        self._counters["exported_bytes"] += n
        return n

    def df(self) -> dict:
        """``docker system df -v``: image layer sharing (``ImageStore.df``) and,
        per container, ``size_rw`` (``diff_size`` against its init layer, as
        Docker's SizeRw) and the driver's ``usage`` of its layer."""
        containers = {}
        for c in self.containers.values():
            u = self.driver.usage(c.id)
            containers[c.id] = {"size_rw": self.driver.diff_size(c.id, c.init_id),
                                "usage_bytes": u.size, "usage_inodes": u.inodes}
        return {"images": self.store.df(), "containers": containers}

    def __repr__(self) -> str:
        return (f"Engine(driver={self.driver.name!r}, images={len(self.store)}, "
                f"containers={len(self.containers)}, root={self.root!r})")

    # ------------------------------------------------------------- metrics
    def metrics(self) -> dict:
        """Driver counters (METRIC_KEYS) plus ENGINE_METRIC_KEYS, one flat dict."""
        stats = self.driver.stats()
        out = {k: int(stats.get(k, 0)) for k in METRIC_KEYS}   # the contract checks the keys
        e = dict(self._counters)
        e["images"] = len(self.store.images)
        e["containers"] = len(self.containers)
        e["running"] = sum(1 for c in self.containers.values() if c.state == "running")
        e["layers"] = len(self.driver.list_layers())
        e["image_layers"] = len(self._image_layers)
        e["image_layer_bytes"] = sum(self._layer_bytes.values())
        out.update(e)
        return out


# ================================================================= helpers
def _setup_init_layer(view) -> None:
    """Docker's ``initlayer.Setup``: unlink each path component, then make the
    path (parents 0755) unless it already resolves."""
    for path, typ in INIT_LAYER_PATHS:
        parts = path.strip("/").split("/")
        prev = ""
        for p in parts:
            prev += "/" + p
            try:
                view.unlink(prev)
            except OSError:
                pass
        try:
            view.stat(path)
            continue
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        parent = ""
        for p in parts[:-1]:
            parent += "/" + p
            try:
                view.mkdir(parent, 0o755)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        if typ == "dir":
            view.mkdir(path, 0o755)
        elif typ == "file":
            view.create(path, 0o755)
        else:
            view.symlink(typ, path)


def _export_items(view, payload: bool):
    """(Entry, content) pairs of a view's whole tree, sorted, hardlinks kept."""
    first: dict[int, str] = {}
    for top, dirs, files in view.walk("/"):
        base = top.rstrip("/")
        for name in sorted(dirs + files):
            p = base + "/" + name
            st = view.lstat(p)
            fmt = _stat.S_IFMT(st.st_mode)
            rel = p.lstrip("/")
            e = Entry(rel, "file", _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime)
            content = None
            if fmt == _stat.S_IFDIR:
                e.kind = "dir"
            elif fmt == _stat.S_IFLNK:
                e.kind, e.linkname = "symlink", view.readlink(p)
            elif fmt in (_stat.S_IFCHR, _stat.S_IFBLK):
                e.kind = "char" if fmt == _stat.S_IFCHR else "block"
                e.devmajor, e.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif fmt == _stat.S_IFIFO:
                e.kind = "fifo"
            elif fmt == _stat.S_IFREG:
                if st.st_nlink > 1 and st.st_ino in first:
                    e.kind, e.linkname = "hardlink", first[st.st_ino]
                else:
                    if st.st_nlink > 1:
                        first[st.st_ino] = rel
                    e.size = st.st_size
                    content = view.read(p) if payload else ZeroReader(st.st_size)
            else:
                continue   # sockets are not archived
            yield e, content


class _CountingWriter:
    """A write-only file that counts bytes (``tell`` is the count)."""

    def __init__(self, inner):
        self.inner, self.n = inner, 0

    def write(self, b):
        self.inner.write(b)
        self.n += len(b)
        return len(b)

    def tell(self):
        return self.n

    def flush(self):
        pass


def _tree_bytes(path) -> int:
    path = os.fspath(path)
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)

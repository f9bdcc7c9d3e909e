"""Apply layers in order to get the merged rootfs, in memory, metadata only.

``RootFS`` holds:

* ``nodes``: ``dict[path, Node]``; ``""`` is the root directory, paths are
  ``/``-separated with no leading ``/``;
* ``children``: ``dict[dir_path, set[name]]``, kept in step with ``nodes``.

A ``Node`` carries the entry metadata plus ``layer`` (index of the layer
that last wrote it), ``ino`` (hardlinked paths share one) and ``source``
``(layer_index, entry_index)`` of the tar member holding a file's bytes, so
that ``export`` can stream the content later without keeping it in memory.

Rules, as Docker's ``applyLayer`` and the OCI image spec give them:

* an entry replaces whatever is at its path, except that a directory over a
  directory only updates metadata;
* missing parent directories are created 0755 root:root;
* ``.wh.<name>`` removes ``name`` (and its subtree) from *lower* layers;
  ``.wh..wh..opq`` hides every lower child of its directory; neither touches
  entries of its own layer, whatever the order in the tar;
* a hardlink shares the inode of an existing non-directory entry;
* a parent component that is a symlink is followed when its target stays in
  the rootfs (relative, never climbing above ``/``); an absolute target or
  one that climbs out "leaves the rootfs" and is an ``ImageFormatError``, as
  is a hardlink to a missing target or a path under a non-directory.
"""
from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Sequence

from ..errors import ImageFormatError
from .layer import (BLOCKDEV, CHAR, DIR, FIFO, FILE, HARDLINK, OPAQUE, SYMLINK, WHITEOUT,
                    Entry, Layer)

__all__ = ["Node", "RootFS", "flatten", "export"]

_MAX_SYMLINK_HOPS = 40   # Linux's MAXSYMLINKS


@dataclass(slots=True)
class Node:
    kind: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict = field(default_factory=dict)
    layer: int = -1
    ino: int = 0
    source: tuple | None = None     # (layer_index, entry_index) of a file's bytes


class RootFS:
    """The merged view of a stack of layers (see the module docstring)."""

    def __init__(self):
        self.nodes: dict[str, Node] = {"": Node(DIR, 0o755)}
        self.children: dict[str, set[str]] = {"": set()}
        self._next_ino = 1
        self._generation = 0   # bumped on every removal: invalidates resolved-parent caches
        self.nr_layers = 0

    # ------------------------------------------------------------- queries
    def __contains__(self, path: str) -> bool:
        return path in self.nodes

    def __getitem__(self, path: str) -> Node:
        return self.nodes[path]

    def __len__(self) -> int:
        return len(self.nodes) - 1   # the root is implicit

    def paths(self) -> list[str]:
        """Every path except the root, sorted."""
        return sorted(p for p in self.nodes if p)

    def files(self) -> list[str]:
        return sorted(p for p, n in self.nodes.items() if n.kind == FILE)

    @property
    def content_bytes(self) -> int:
        """Bytes of file content, each hardlinked inode counted once."""
        seen = {}
        for n in self.nodes.values():
            if n.kind == FILE:
                seen[n.ino] = n.size
        return sum(seen.values())

    # ------------------------------------------------------------- helpers
    def _add(self, path: str, node: Node) -> None:
        parent, _, name = path.rpartition("/")
        self.nodes[path] = node
        self.children[parent].add(name)
        if node.kind == DIR:
            self.children.setdefault(path, set())

    def _remove(self, path: str) -> None:
        """Remove ``path`` and its whole subtree (iteratively: trees may be deep)."""
        self._generation += 1
        parent, _, name = path.rpartition("/")
        self.children[parent].discard(name)
        stack = [path]
        while stack:
            p = stack.pop()
            node = self.nodes.pop(p)
            if node.kind == DIR:
                for child in self.children.pop(p, ()):
                    stack.append(f"{p}/{child}")

    def _remove_lower(self, path: str, added: set) -> None:
        """Remove ``path``'s subtree except what the current layer wrote.

        A directory that keeps children written by this layer stays.
        """
        if path not in self.nodes:
            return
        # post-order without recursion: children before their parent
        order = []
        stack = [path]
        while stack:
            p = stack.pop()
            order.append(p)
            if self.nodes[p].kind == DIR:
                stack.extend(f"{p}/{c}" for c in self.children.get(p, ()))
        for p in reversed(order):
            node = self.nodes.get(p)
            if node is None or p in added:
                continue
            if node.kind == DIR and self.children.get(p):
                continue
            self._remove(p)

    def _resolve_dir(self, path: str, blob: str, what: str, layer: int, added: set,
                     create: bool | None) -> str | None:
        """Resolve the directory ``path`` through symlinks that stay inside.

        With ``create``, missing components become 0755 directories; with
        ``create=None`` a missing or non-directory component returns None.
        """
        if not path:
            return ""
        cur = ""
        parts = path.split("/")
        hops = 0
        i = 0
        while i < len(parts):
            comp = parts[i]
            i += 1
            nxt = f"{cur}/{comp}" if cur else comp
            node = self.nodes.get(nxt)
            if node is None:
                if create is None:
                    return None
                if not create:
                    raise ImageFormatError(f"{blob}: {what}: {nxt!r} does not exist")
                self._add(nxt, Node(DIR, 0o755, layer=layer, ino=self._ino()))
                added.add(nxt)
                cur = nxt
            elif node.kind == DIR:
                cur = nxt
            elif node.kind == SYMLINK:
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise ImageFormatError(f"{blob}: {what}: too many levels of symlinks at {nxt!r}")
                target = node.linkname
                if target.startswith("/"):
                    raise ImageFormatError(
                        f"{blob}: {what} goes through symlink {nxt!r} -> {target!r}, "
                        f"which leaves the rootfs")
                joined = posixpath.normpath(posixpath.join("/" + cur, target))
                # normpath of "/" + ... never climbs above "/", so check lexically.
                depth = cur.count("/") + 1 if cur else 0
                for t in target.split("/"):
                    if t == "..":
                        depth -= 1
                        if depth < 0:
                            raise ImageFormatError(
                                f"{blob}: {what} goes through symlink {nxt!r} -> {target!r}, "
                                f"which leaves the rootfs")
                    elif t not in ("", "."):
                        depth += 1
                rest = [p for p in joined.strip("/").split("/") if p]
                parts = rest + parts[i:]
                i = 0
                cur = ""
            else:
                if create is None:
                    return None
                raise ImageFormatError(f"{blob}: {what}: {nxt!r} is a {node.kind}, not a directory")
        return cur

    def _ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    # ------------------------------------------------------------- apply
    def apply(self, entries: Iterable[Entry], layer: int | None = None, blob: str = "layer") -> "RootFS":
        """Apply one layer's entries (in tar order) on top of this tree."""
        if layer is None:
            layer = self.nr_layers
        added: set[str] = set()
        resolved: dict[str, str] = {}     # parent as written -> parent as resolved
        generation = self._generation
        for index, e in enumerate(entries):
            kind = e.kind
            parent, _, base = e.path.rpartition("/")
            if kind == WHITEOUT or kind == OPAQUE:
                if kind == OPAQUE:
                    d = self._resolve_dir(e.path, blob, f"opaque marker in {e.path!r}", layer, added,
                                          create=True)
                    for name in list(self.children.get(d, ())):
                        self._remove_lower(f"{d}/{name}" if d else name, added)
                else:
                    d = self._resolve_dir(parent, blob, f"whiteout {e.path!r}", layer, added,
                                          create=None)
                    if d is None:
                        continue   # whiting out something absent is a no-op
                    self._remove_lower(f"{d}/{base}" if d else base, added)
                continue
            if not e.path:   # the root directory's own metadata
                root = self.nodes[""]
                root.mode, root.uid, root.gid, root.mtime = e.mode, e.uid, e.gid, e.mtime
                root.xattrs = dict(e.xattrs)
                continue
            if generation != self._generation:
                resolved.clear()
                generation = self._generation
            d = resolved.get(parent)
            if d is None:
                d = self._resolve_dir(parent, blob, f"entry {e.path!r}", layer, added, create=True)
                resolved[parent] = d
            path = f"{d}/{base}" if d else base
            existing = self.nodes.get(path)
            if kind == HARDLINK:
                lparent, _, lbase = e.linkname.rpartition("/")
                ld = self._resolve_dir(lparent, blob, f"hardlink {e.path!r} -> {e.linkname!r}",
                                       layer, added, create=False)
                target_path = f"{ld}/{lbase}" if ld else lbase
                target = self.nodes.get(target_path)
                if target is None:
                    raise ImageFormatError(
                        f"{blob}: hardlink {e.path!r} -> {e.linkname!r}: target does not exist")
                if target.kind == DIR:
                    raise ImageFormatError(
                        f"{blob}: hardlink {e.path!r} -> {e.linkname!r}: target is a directory")
                if target_path == path:
                    continue
                node = Node(target.kind, target.mode, target.uid, target.gid, target.mtime,
                            target.size, target.linkname, target.devmajor, target.devminor,
                            target.xattrs, layer, target.ino, target.source)
            elif kind == DIR and existing is not None and existing.kind == DIR:
                existing.mode, existing.uid, existing.gid, existing.mtime = e.mode, e.uid, e.gid, e.mtime
                existing.xattrs = dict(e.xattrs)
                existing.layer = layer
                added.add(path)
                continue
            else:
                node = Node(kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname,
                            e.devmajor, e.devminor, e.xattrs, layer, self._ino(),
                            (layer, index) if kind == FILE else None)
            if existing is not None:
                self._remove(path)
            self._add(path, node)
            added.add(path)
        self.nr_layers = max(self.nr_layers, layer + 1)
        return self

    def apply_layer(self, layer: Layer, index: int | None = None, verify: bool = True) -> "RootFS":
        return self.apply(layer.entries(verify=verify), index, layer.name)

    # ------------------------------------------------------------- export
    def export(self, layers: Sequence[Layer], out: BinaryIO) -> int:
        """Write the merged tree as one flat tar (no whiteouts) to ``out``.

        Directories, symlinks, devices and fifos come first (sorted), then
        regular files streamed from their layers, each inode once with its
        other names as hardlinks.  Returns the content bytes written.
        """
        by_source: dict[tuple, list[str]] = {}
        for path, n in self.nodes.items():
            if n.kind == FILE and path:
                by_source.setdefault(n.source, []).append(path)
        nr_bytes = 0
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for path in self.paths():
                n = self.nodes[path]
                if n.kind != FILE:
                    tf.addfile(_node_tarinfo(path, n))
            wanted_layers = sorted({s[0] for s in by_source})
            for li in wanted_layers:
                for index, (e, stream) in enumerate(layers[li].walk(verify=False)):
                    paths = by_source.get((li, index))
                    if not paths:
                        continue
                    paths.sort()
                    first = paths[0]
                    tf.addfile(_node_tarinfo(first, self.nodes[first]), stream)
                    nr_bytes += e.size
                    for other in paths[1:]:
                        ti = _node_tarinfo(other, self.nodes[other])
                        ti.type, ti.size, ti.linkname = tarfile.LNKTYPE, 0, first
                        tf.addfile(ti)
        return nr_bytes


def _node_tarinfo(path: str, n: Node) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path + "/" if n.kind == DIR else path)
    ti.type = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
               CHAR: tarfile.CHRTYPE, BLOCKDEV: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}[n.kind]
    ti.mode, ti.uid, ti.gid, ti.mtime = n.mode, n.uid, n.gid, n.mtime
    ti.size = n.size if n.kind == FILE else 0
    ti.linkname = n.linkname
    ti.devmajor, ti.devminor = n.devmajor, n.devminor
    ti.uname = ti.gname = ""
    if n.xattrs:
        ti.pax_headers = {"SCHILY.xattr." + k: (v.decode("utf-8", "surrogateescape")
                                                if isinstance(v, bytes) else v)
                          for k, v in n.xattrs.items()}
    return ti


def flatten(layers: Sequence[Layer], verify: bool = True) -> RootFS:
    """Apply ``layers`` bottom-up and return the merged tree."""
    fs = RootFS()
    for i, layer in enumerate(layers):
        fs.apply_layer(layer, i, verify=verify)
    return fs


def export(layers: Sequence[Layer], out: BinaryIO, rootfs: RootFS | None = None) -> int:
    """Flatten ``layers`` and write them as one tar without whiteouts."""
    fs = rootfs if rootfs is not None else flatten(layers)
    return fs.export(layers, out)

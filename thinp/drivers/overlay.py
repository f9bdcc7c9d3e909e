"""Docker's legacy ``overlay`` driver: one lower directory, one upper.

Layout under ``/var/lib/docker/overlay/<id>``.  An image layer is ``root``: a
hard-link farm of its parent's tree (directories, symlinks and devices made
anew, regular files hard-linked, so every layer costs its directories'
inodes) with its own diff applied on top (a replaced file is unlinked first,
so the parent keeps its copy).  A container is ``upper`` + ``work`` +
``lower-id`` (its image layer's id) + ``merged``, mounted as one upper over
the image layer's ``root``; a layer made on a container copies the
container's ``upper`` and shares its ``lower-id``, as moby does.

Semantics are overlayfs's (see :mod:`thinp.drivers.overlay2`).
``changes``/``diff`` use the naive tree walk (moby wraps this driver in
``NaiveDiffDriver``).
"""
from __future__ import annotations

from .base import register
from .union import UnionDriver, UnionView, clone_tree, copy_dir


@register
class OverlayDriver(UnionDriver):
    name = "overlay"
    whiteout_style = "char"
    origin_xattrs = True
    flat_layers = True

    def _dir(self, id: str) -> str:
        return f"{self.home}/{id}"

    def _lower_root(self, rec):
        """The image layer whose ``root`` a container mounts as its lower."""
        while rec is not None and rec.read_write:
            rec = self.layers[rec.parent] if rec.parent is not None else None
        return rec

    def _make_layer(self, rec) -> None:
        d = self._dir(rec.id)
        fs = self.fs
        fs.mkdir(d, 0o700)
        parent = self.layers[rec.parent] if rec.parent is not None else None
        if not rec.read_write:
            fs.mkdir(d + "/root", 0o755)
            if parent is not None:
                src = UnionView(self, self._branches(parent), writable=False)
                lower = self._lower_root(parent)
                farm = [self._dir(lower.id) + "/root"] if lower is not None else []
                clone_tree(self, src, d + "/root", hardlink_from=farm)
            return
        if parent is not None and parent.read_write:
            copy_dir(fs, self._dir(parent.id) + "/upper", d + "/upper")
        else:
            fs.mkdir(d + "/upper", 0o755)
        lower = self._lower_root(parent) if parent is not None else None
        if lower is not None:
            self._write_small(d + "/lower-id", lower.id)
        fs.mkdir(d + "/work", 0o700)
        fs.mkdir(d + "/merged", 0o700)

    def _drop_layer(self, rec) -> None:
        self._rmtree(self._dir(rec.id))

    def _branches(self, rec) -> list[str]:
        if not rec.read_write:
            return [self._dir(rec.id) + "/root"]
        lower = self._lower_root(self.layers[rec.parent]) if rec.parent is not None else None
        up = [self._dir(rec.id) + "/upper"]
        return up + ([self._dir(lower.id) + "/root"] if lower is not None else [])

    def _own_dirs(self, rec) -> list[str]:
        return [self._dir(rec.id)]

"""Docker's ``overlay2`` driver over kernel overlayfs semantics.

Layout under ``/var/lib/docker/overlay2`` on the backing filesystem, as moby
lays it out: ``<id>/diff`` (the layer's branch), ``<id>/link`` (its 26-char
short name), ``l/<short> -> ../<id>/diff``, and for a layer with a parent
``<id>/lower`` (``l/A:l/B:...``) and ``<id>/work``.  A mount stacks the
layer's ``diff`` over its ancestors' (up to 128 lower layers, Docker's limit;
deeper raises :class:`~thinp.errors.TooManyLayersError`).

Semantics (kernel overlayfs, ``redirect_dir=off``, ``index=off``): whole-file
copy-up with ``trusted.overlay.origin`` on the copy when it is a directory
or a file with one link (copying up one name of a hard-linked lower file
breaks the link and records no origin, as ``copy_up.c`` does without an
index) and ``trusted.overlay.impure`` on its parent either way; whiteouts are
char 0/0 devices with mode 000, as the kernel's ``ovl_whiteout`` makes them;
a directory made where a whiteout was, or a pure-upper directory renamed into
a merged one, carries ``trusted.overlay.opaque=y``; renaming a lower or merged
directory fails with EXDEV.  ``metacopy=on`` makes chmod/chown copy up only
the inode (``trusted.overlay.metacopy``); the data follows at the first
write.  ``changes``/``diff`` are native: only the ``diff`` branch is walked.
"""
from __future__ import annotations

import base64
import hashlib

from .base import register
from .union import UnionDriver


@register
class Overlay2Driver(UnionDriver):
    name = "overlay2"
    whiteout_style = "char"
    origin_xattrs = True
    native_diff = True
    max_depth = 128

    def _setup(self) -> None:
        self.fs.mkdir(self.home + "/l", 0o700)

    def status(self) -> list[tuple[str, str]]:
        return super().status() + [("Supports d_type", "true"), ("Native Overlay Diff", "true"),
                                   ("Using metacopy", str(self.metacopy).lower())]

    def _dir(self, id: str) -> str:
        return f"{self.home}/{id}"

    def _short(self, id: str) -> str:
        return base64.b32encode(hashlib.sha256(id.encode()).digest()).decode()[:26]

    def _make_layer(self, rec) -> None:
        d = self._dir(rec.id)
        self.fs.mkdir(d, 0o710)
        self.fs.mkdir(d + "/diff", 0o755)
        short = self._short(rec.id)
        self._write_small(d + "/link", short)
        self.fs.symlink(f"../{rec.id}/diff", f"{self.home}/l/{short}")
        if rec.parent is not None:
            lowers = [f"l/{self._short(r.id)}" for r in self._chain(self.layers[rec.parent])]
            self._write_small(d + "/lower", ":".join(lowers))
            self.fs.mkdir(d + "/work", 0o700)

    def _drop_layer(self, rec) -> None:
        self._rmtree(self._dir(rec.id))
        self.fs.unlink(f"{self.home}/l/{self._short(rec.id)}")

    def _branches(self, rec) -> list[str]:
        return [self._dir(r.id) + "/diff" for r in self._chain(rec)]

    def _own_dirs(self, rec) -> list[str]:
        return [self._dir(rec.id)]

"""Docker's ``vfs`` driver: every layer is a full copy of its parent's tree.

Layout: ``/var/lib/docker/vfs/dir/<id>``.  ``create`` copies the parent's
directory entry for entry (hard links within it kept, as moby's ``DirCopy``),
so there is no copy-on-write and no sharing: N layers cost N trees of bytes
and inodes.  A mount is that one directory.  ``changes``/``diff`` are the
naive tree walk against the parent.
"""
from __future__ import annotations

from .base import register
from .union import UnionDriver, copy_dir


@register
class VfsDriver(UnionDriver):
    name = "vfs"
    flat_layers = True

    def _setup(self) -> None:
        self.fs.mkdir(self.home + "/dir", 0o700)

    def _make_layer(self, rec) -> None:
        d = f"{self.home}/dir/{rec.id}"
        if rec.parent is None:
            self.fs.mkdir(d, 0o755)
        else:
            copy_dir(self.fs, f"{self.home}/dir/{rec.parent}", d)

    def _drop_layer(self, rec) -> None:
        self._rmtree(f"{self.home}/dir/{rec.id}")

    def _branches(self, rec) -> list[str]:
        return [f"{self.home}/dir/{rec.id}"]

"""Docker's ``vfs`` driver: every layer is a full copy of its parent's tree.

Layout: ``/var/lib/docker/vfs/dir/<id>``.  ``create`` copies the parent's
directory entry for entry (hard links within it kept, as moby's ``DirCopy``),
so there is no copy-on-write and no sharing: N layers cost N trees of bytes
and inodes.  A mount is that one directory.  ``changes``/``diff`` are the
naive tree walk against the parent.
"""
from __future__ import annotations

import stat as _stat

from .base import register
from .union import UnionDriver, walk_nodes, copy_dir


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
            src = f"{self.home}/dir/{rec.parent}"
            if rec.read_write and not self.layers[rec.parent].read_write:
                # a container's first layer (its -init) copies an image
                # layer, laid down long before: its pages are read from the
                # device unless cached.  A copy of a read-write layer (the
                # container's own, from its -init) reads pages the copy
                # before wrote moments ago: in the page cache
                self._note_source_read(rec.parent, src)
            copy_dir(self.fs, src, d)

    def _drop_layer(self, rec) -> None:
        self.__dict__.get("_files_of", {}).pop(rec.id, None)
        self._rmtree(f"{self.home}/dir/{rec.id}")

    def _note_source_read(self, id: str, src: str) -> None:
        """The copy reads every regular file of layer ``id`` at ``src`` (an
        image layer, not in the page cache until read): logged per file for
        the timing model, keyed as reads of those inodes are.  Nothing to do
        unless a timing model is listening.  An image layer does not change
        while containers use it: its files are listed once."""
        cache = self.page_cache
        if cache.log is None:
            return
        files_of = self.__dict__.setdefault("_files_of", {})
        files = files_of.get(id)
        if files is None:
            fs = self.fs
            seen: dict = {}
            for node in walk_nodes(fs, fs.inode(src, follow=False)):
                if _stat.S_ISREG(node.mode) and node.size:
                    seen[node.ino] = node.size
            files = files_of[id] = list(seen.items())
        for ino, size in files:
            cache.note_read(("ino", ino), size)

    def _branches(self, rec) -> list[str]:
        return [f"{self.home}/dir/{rec.id}"]

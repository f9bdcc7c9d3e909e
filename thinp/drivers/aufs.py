"""Docker's ``aufs`` driver over aufs semantics.

Layout under ``/var/lib/docker/aufs``: ``diff/<id>`` (the branch),
``layers/<id>`` (the ancestor ids, one a line), ``mnt/<id>``.  A mount stacks
the layer's branch over its ancestors', searched top-down: each lookup probes
one branch after another until the name is found (``lookup_probes``).  At
most 127 branches (so 126 ancestors); deeper raises
:class:`~thinp.errors.TooManyLayersError`.

Whole-file copy-up on the first write or on an open for write.  A deleted
lower name leaves ``.wh.<name>`` (a hard link to the branch's
``.wh..wh.aufs``, as aufs makes them); a directory made where a whiteout was
gets ``.wh..wh..opq``; renaming a directory that exists in a lower branch
gives EXDEV (aufs without ``dirren``).  ``changes``/``diff`` are native: only
the layer's branch is walked.
"""
from __future__ import annotations

from .base import register
from .union import UnionDriver


@register
class AufsDriver(UnionDriver):
    name = "aufs"
    whiteout_style = "aufs"
    origin_xattrs = False
    native_diff = True
    max_depth = 126

    def _setup(self) -> None:
        for d in ("diff", "layers", "mnt"):
            self.fs.mkdir(f"{self.home}/{d}", 0o755)

    def status(self) -> list[tuple[str, str]]:
        return super().status() + [("Root Dir", self.home), ("Dirs", str(len(self.layers))),
                                   ("Dirperm1 Supported", "true")]

    def _make_layer(self, rec) -> None:
        self.fs.mkdir(f"{self.home}/diff/{rec.id}", 0o755)
        self.fs.mkdir(f"{self.home}/mnt/{rec.id}", 0o755)
        ancestors = [r.id for r in self._chain(self.layers[rec.parent])] if rec.parent is not None else []
        self._write_small(f"{self.home}/layers/{rec.id}", "".join(a + "\n" for a in ancestors))

    def _drop_layer(self, rec) -> None:
        for d in ("diff", "mnt"):
            self._rmtree(f"{self.home}/{d}/{rec.id}")
        self.fs.unlink(f"{self.home}/layers/{rec.id}")

    def _branches(self, rec) -> list[str]:
        return [f"{self.home}/diff/{r.id}" for r in self._chain(rec)]

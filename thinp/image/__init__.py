"""Container images: references, layers and whiteouts, save/load, commit.

The image model is independent of storage.  Drivers consume layers through
this API:

``Layer`` (``thinp.image.layer``)
    ``layer.walk(verify=True)`` yields ``(Entry, content)`` in tar order;
    ``content`` is a readable stream for regular files (valid until the next
    item), else ``None``.  ``Entry`` has ``path`` (relative, no ``./``; root is
    ``""``), ``kind`` (file dir symlink hardlink char block fifo whiteout
    opaque), ``mode uid gid mtime size linkname devmajor devminor xattrs``.
    Whiteout/opaque entries only ever act on lower layers.
    ``layer.entries()`` is the metadata-only view (``layer.rows()`` the same
    as tuples); for an uncompressed layer in a file or in memory it is listed
    by one numba kernel (``thinp.image.fastscan``) that yields the same
    entries and errors as the streaming reader.  ``layer.diff_id`` (sha256
    of the uncompressed tar), ``layer.chain_id`` (sha256 of
    ``parent.chain_id + " " + diff_id``), ``layer.size`` (content bytes, like
    ``docker history``), ``layer.tar_size``, ``layer.open_uncompressed()``.
    Gzip and zstd blobs are read transparently.  ``Layer.from_entries`` and
    ``write_tar`` build a layer from ``(Entry, bytes)`` pairs (a driver's diff).

``RootFS`` / ``flatten(layers)`` (``thinp.image.rootfs``)
    Pure in-memory merge of layers: whiteouts, opaque dirs (before siblings,
    whatever the tar order), hardlinks (shared ``ino``), symlink-escape checks.
    ``export(layers, out)`` writes the merge as one flat tar, streaming content.

``Image`` (``thinp.image.image``)
    ``id`` (sha256 of the verbatim config), ``config``, ``diff_ids``,
    ``chain_ids``, ``layers``, ``tags``, ``parent``, ``size``.
    ``commit(base, layer_tar, message=, author=, changes=)``,
    ``import_(tar, changes=)``, ``history(image)``, ``inspect(image)``,
    ``apply_changes(config, changes)`` (CMD ENTRYPOINT ENV EXPOSE LABEL ONBUILD
    USER VOLUME WORKDIR).

``load(path, platform="linux/amd64")`` / ``save(images, path)`` (``thinp.image.archive``)
    Legacy docker save, Docker 25 hybrid save, OCI layouts (dir or tar,
    indexes, multi-arch: one image per name loads whatever its platform,
    ``platform`` chooses among several), whole-archive gzip/zstd; every
    digest verified; member names cleaned as Docker's ``Unpack`` cleans them;
    hostile input raises ``ImageFormatError``.

``ImageStore`` (``thinp.image.store``)
    Images by ID, tags, parent/child, ``add_user(image_id, container_id)``,
    ``tag``/``untag``/``rmi`` with Docker's rules, all-or-nothing ``load``.

``Reference.parse`` (``thinp.image.reference``): Docker's reference rules.

A driver applying an image, and an engine committing a container::

    store = ImageStore(root)                      # all-or-nothing loads
    [img] = store.load("busybox.tar")             # verified, hostile-checked
    for layer in img.layers:                      # bottom-up; layer.chain_id names it
        for entry, content in layer.walk(verify=False):
            ...                                   # create entry.path; copy content
    diff = Layer.from_entries(changes, path="diff.tar")   # the container's changes
    new = store.add(commit(img, diff, message="m", changes=["CMD sh"]), tags=["me/app:1"])
    store.rmi("me/app:1")                         # Docker's rules
"""
from __future__ import annotations

from .archive import load, save
from .changes import apply_changes
from .image import Image, commit, history, import_, inspect
from .layer import EMPTY_TAR_DIFF_ID, Entry, Layer, chain_id, chain_ids, write_tar
from .reference import Reference
from .rootfs import Node, RootFS, export, flatten
from .store import ImageStore

__all__ = [
    "Reference", "Entry", "Layer", "chain_id", "chain_ids", "write_tar", "EMPTY_TAR_DIFF_ID",
    "Node", "RootFS", "flatten", "export", "Image", "commit", "import_", "history",
    "inspect", "apply_changes", "load", "save", "ImageStore",
]

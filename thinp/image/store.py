"""``ImageStore``: the engine's images, tags, parents and users.

State:

* ``images``: image ID (``sha256:...``) -> ``Image``;
* ``refs``: canonical reference (``docker.io/library/busybox:latest``) -> image ID;
* ``users``: image ID -> set of container IDs (``add_user``/``remove_user``);
* ``layers``: ChainID -> ``Layer``, each kept while some image uses it.

Docker's rules (daemon/images/image_delete.go) for ``rmi``:

* a reference that is one of several tags of its image only untags;
* removing the last reference of an image, or naming it by ID, deletes it, and
  then prunes its untagged, unused, childless parents;
* an image used by a container, or with child images, or (by ID) tagged in
  several repositories, is refused with ``ImageConflictError`` unless
  ``force``; forcing an image with children only untags it (Docker cannot
  delete it either).

``load`` reads the whole archive and verifies it before adding anything, so
a failed load leaves the store (and its directory) as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

from ..errors import ImageConflictError, ImageNotFoundError
from . import archive
from .image import Image
from .layer import FileSource, Layer
from .reference import Reference

__all__ = ["ImageStore"]


class ImageStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.images: dict[str, Image] = {}
        self.refs: dict[str, str] = {}
        self.users: dict[str, set[str]] = {}
        self.layers: dict[str, Layer] = {}
        self.root = os.fspath(root) if root is not None else None
        if self.root is not None:
            os.makedirs(os.path.join(self.root, "layers"), exist_ok=True)

    # ------------------------------------------------------------- lookups
    def resolve(self, ref_or_id: str) -> tuple[str, Reference | None]:
        """``(image_id, reference or None if named by ID)``."""
        s = ref_or_id
        if s.startswith("sha256:"):
            s = s[7:]
        if s and all(c in "0123456789abcdef" for c in s):
            matches = [i for i in self.images if i[7:].startswith(s)]
            if len(matches) == 1:
                return matches[0], None
            if len(matches) > 1:
                raise ValueError(f"ambiguous image ID prefix {ref_or_id!r}")
            if ref_or_id.startswith("sha256:") or len(s) == 64:
                raise ImageNotFoundError(f"No such image: {ref_or_id}")
        ref = Reference.parse(ref_or_id)
        image_id = self.refs.get(str(ref))
        if image_id is None:
            raise ImageNotFoundError(f"No such image: {ref_or_id}")
        return image_id, ref

    def get(self, ref_or_id: str) -> Image:
        return self.images[self.resolve(ref_or_id)[0]]

    def __contains__(self, ref_or_id: str) -> bool:
        try:
            self.resolve(ref_or_id)
            return True
        except (ImageNotFoundError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self.images)

    def tags_of(self, image_id: str) -> list[str]:
        return sorted(Reference.parse(r).familiar for r, i in self.refs.items() if i == image_id)

    def children(self, image_id: str) -> list[str]:
        return [i for i, img in self.images.items() if img.parent == image_id]

    def sync_tags(self, image_id: str) -> None:
        """Set ``image.tags`` from the store's references (after they changed)."""
        img = self.images.get(image_id)
        if img is not None:
            img.tags = self.tags_of(image_id)

    # ------------------------------------------------------------- adding
    def add(self, image: Image, tags: Sequence[str] = ()) -> Image:
        """Add ``image`` (keeping an existing object with the same ID) and tag it."""
        image = self.images.setdefault(image.id, image)
        for layer in image.layers:
            self.layers.setdefault(layer.chain_id, layer)
        for t in list(image.tags) + list(tags):
            self._set_ref(Reference.parse(t), image.id)
        self.sync_tags(image.id)
        return image

    def _set_ref(self, ref: Reference, image_id: str) -> None:
        old = self.refs.get(str(ref))
        self.refs[str(ref)] = image_id
        if old is not None and old != image_id:
            self.sync_tags(old)   # the old image loses this tag (it may now be dangling)

    def tag(self, source: str, target: str) -> None:
        image_id, _ = self.resolve(source)
        ref = Reference.parse(target)
        if ref.digest:
            raise ValueError(f"refusing to create a tag with a digest reference: {target!r}")
        self._set_ref(ref, image_id)
        self.sync_tags(image_id)

    def untag(self, ref: str) -> str:
        r = Reference.parse(ref)
        image_id = self.refs.pop(str(r), None)
        if image_id is None:
            raise ImageNotFoundError(f"No such image: {ref}")
        self.sync_tags(image_id)
        return r.familiar

    # ------------------------------------------------------------- users
    def add_user(self, image_id: str, container_id: str) -> None:
        image_id, _ = self.resolve(image_id)
        self.users.setdefault(image_id, set()).add(container_id)

    def remove_user(self, image_id: str, container_id: str) -> None:
        users = self.users.get(image_id)
        if users is not None:
            users.discard(container_id)
            if not users:
                del self.users[image_id]

    # ------------------------------------------------------------- rmi
    def rmi(self, ref_or_id: str, force: bool = False, prune: bool = True) -> list[tuple[str, str]]:
        """Remove a tag or an image; returns ``[("Untagged", ref) | ("Deleted", id), ...]``."""
        image_id, ref = self.resolve(ref_or_id)
        short = image_id[7:19]
        refs = [r for r, i in self.refs.items() if i == image_id]
        users = sorted(self.users.get(image_id, ()))
        kids = self.children(image_id)
        records: list[tuple[str, str]] = []
        if ref is not None:
            if len(refs) > 1:
                records.append(("Untagged", self.untag(str(ref))))
                return records
            if users and not force:
                raise ImageConflictError(
                    f'conflict: unable to remove repository reference "{ref_or_id}" (must force) - '
                    f"container {users[0][:12]} is using its referenced image {short}")
            if kids and not force:
                raise ImageConflictError(
                    f"conflict: unable to delete {short} (must be forced) - image has dependent child images")
        else:
            repos = {Reference.parse(r).name for r in refs}
            if len(repos) > 1 and not force:
                raise ImageConflictError(
                    f"conflict: unable to delete {short} (must be forced) - image is referenced "
                    f"in multiple repositories")
            if users and not force:
                raise ImageConflictError(
                    f"conflict: unable to delete {short} (must be forced) - image is being used "
                    f"by container {users[0][:12]}")
            if kids and not force:
                raise ImageConflictError(
                    f"conflict: unable to delete {short} (must be forced) - image has dependent child images")
        for r in sorted(refs):
            records.append(("Untagged", self.untag(r)))
        if kids:
            return records   # cannot delete an image with children, even forced: untag only
        self._delete(image_id, records, prune)
        return records

    def _delete(self, image_id: str, records: list, prune: bool = True) -> None:
        img = self.images.pop(image_id)
        self.users.pop(image_id, None)
        records.append(("Deleted", image_id))
        parent = img.parent if prune else None
        # prune untagged, unused, childless parents (docker rmi without --no-prune)
        while parent is not None and parent in self.images:
            if self.tags_of(parent) or self.users.get(parent) or self.children(parent):
                break
            nxt = self.images[parent].parent
            self.images.pop(parent)
            records.append(("Deleted", parent))
            parent = nxt
        self._release_layers()

    def _release_layers(self) -> None:
        live = {layer.chain_id for img in self.images.values() for layer in img.layers}
        for cid in list(self.layers):
            if cid not in live:
                layer = self.layers.pop(cid)
                src = layer.source
                if self.root is not None and isinstance(src, FileSource) and \
                        os.path.dirname(src.path) == os.path.join(self.root, "layers"):
                    if not any(l.source.path == src.path for l in self.layers.values()
                               if isinstance(l.source, FileSource)):
                        try:
                            os.unlink(src.path)
                        except FileNotFoundError:
                            pass

    # ------------------------------------------------------------- disk use
    def df(self) -> dict:
        """Layer sharing, as ``docker system df -v``: bytes are layer content bytes.

        Returns ``{"layers_bytes": total over distinct layers (by ChainID),
        "images": {image_id: {"size", "shared_size", "unique_size"}}}``;
        a layer is shared when more than one image uses it.
        """
        users: dict[str, int] = {}
        for img in self.images.values():
            for cid in set(l.chain_id for l in img.layers):
                users[cid] = users.get(cid, 0) + 1
        sizes: dict[str, int] = {}
        for img in self.images.values():
            for layer in img.layers:
                if layer.size is None:
                    layer.scan()
                sizes[layer.chain_id] = layer.size
        per_image = {}
        for image_id, img in self.images.items():
            cids = set(l.chain_id for l in img.layers)
            shared = sum(sizes[c] for c in cids if users[c] > 1)
            unique = sum(sizes[c] for c in cids if users[c] == 1)
            per_image[image_id] = {"size": shared + unique, "shared_size": shared,
                                   "unique_size": unique}
        return {"layers_bytes": sum(sizes.values()), "images": per_image}

    # ------------------------------------------------------------- load / save
    def load(self, path, **kw) -> list[Image]:
        """Load an archive; all or nothing.  With a ``root``, layer blobs are
        copied (uncompressed) into ``root/layers`` only after the whole
        archive verified."""
        images = archive.load(path, **kw)
        if self.root is not None:
            images = self._ingest(images)
        return [self.add(img) for img in images]

    def _ingest(self, images: list[Image]) -> list[Image]:
        layers_dir = os.path.join(self.root, "layers")
        tmp = tempfile.mkdtemp(prefix=".ingest-", dir=self.root)
        moved: list[str] = []
        try:
            copies: dict[str, str] = {}
            for img in images:
                for layer in img.layers:
                    d = layer.diff_id
                    if d in copies or os.path.exists(os.path.join(layers_dir, d[7:] + ".tar")):
                        continue
                    dst = os.path.join(tmp, d[7:] + ".tar")
                    with layer.open_uncompressed() as src, open(dst, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    copies[d] = dst
            for d, p in copies.items():
                final = os.path.join(layers_dir, d[7:] + ".tar")
                os.replace(p, final)
                moved.append(final)
        except BaseException:
            for p in moved:
                os.unlink(p)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out = []
        for img in images:
            new_layers = []
            parent = None
            for layer in img.layers:
                nl = Layer(FileSource(os.path.join(layers_dir, layer.diff_id[7:] + ".tar")),
                           diff_id=layer.diff_id, parent=parent)
                nl.size, nl.tar_size, nl.nr_entries = layer.size, layer.tar_size, layer.nr_entries
                nl.blob_size, nl.compression = layer.tar_size, "none"
                new_layers.append(nl)
                parent = nl
            out.append(Image(img.config_bytes, new_layers, img.tags, img.parent))
        return out

    def save(self, refs: Sequence[str], path, **kw) -> None:
        """Save the named images; each keeps only the tags named (or all, if named by ID)."""
        chosen: dict[str, Image] = {}
        tags: dict[str, list[str]] = {}
        for r in refs:
            image_id, ref = self.resolve(r)
            chosen.setdefault(image_id, self.images[image_id])
            t = tags.setdefault(image_id, [])
            if ref is not None:
                t.append(ref.familiar)
            else:
                t.extend(self.tags_of(image_id))
        out = []
        for image_id, img in chosen.items():
            copy = Image(img.config_bytes, img.layers, sorted(set(tags[image_id])), img.parent)
            out.append(copy)
        archive.save(out, path, **kw)

"""``Image``: a config blob plus its layers; commit, import, history, inspect.

An image's identity is its config: ``Image.id`` is ``sha256:`` of the exact
config bytes, which are kept verbatim (so a loaded image keeps its real ID).
``config["rootfs"]["diff_ids"]`` lists the non-empty layers bottom-up and
``config["history"]`` has one entry per Dockerfile step, with
``empty_layer: true`` for steps that changed only the config.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from typing import BinaryIO, Sequence

from ..errors import ImageFormatError
from .changes import apply_changes
from .layer import FileSource, Layer, TempHolder, chain_ids
from .reference import Reference
from .rootfs import RootFS, export, flatten

__all__ = ["Image", "commit", "import_", "history", "inspect", "now_rfc3339", "canonical_json"]


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(obj) -> bytes:
    """Compact JSON, as Go's ``json.Marshal`` writes configs and manifests."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Image:
    """A container image: verbatim config bytes, layers, tags, optional parent."""

    def __init__(self, config_bytes: bytes, layers: Sequence[Layer], tags: Sequence[str] = (),
                 parent: str | None = None):
        self.config_bytes = bytes(config_bytes)
        try:
            self.config = json.loads(self.config_bytes)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageFormatError(f"image config is not JSON: {e}") from None
        if not isinstance(self.config, dict):
            raise ImageFormatError("image config is not a JSON object")
        self.id = "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()
        self.layers = list(layers)
        self.tags: list[str] = []
        for t in tags:
            self.add_tag(t)
        self.parent = parent
        diff_ids = self.diff_ids
        if len(diff_ids) != len(self.layers):
            raise ImageFormatError(
                f"image {self.short_id}: layer count {len(self.layers)} differs from the "
                f"config's {len(diff_ids)} diff_ids")

    @classmethod
    def from_config(cls, config: dict, layers: Sequence[Layer], **kw) -> "Image":
        return cls(canonical_json(config), layers, **kw)

    def add_tag(self, tag: str) -> None:
        fam = Reference.parse(tag).familiar
        if fam not in self.tags:
            self.tags.append(fam)

    # -------------------------------------------------------------- views
    @property
    def short_id(self) -> str:
        return self.id[7:19]

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.config.get("rootfs")
        if not isinstance(rootfs, dict):
            raise ImageFormatError(f"image {self.short_id}: config has no rootfs")
        ids = rootfs.get("diff_ids") or []
        if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
            raise ImageFormatError(f"image {self.short_id}: rootfs.diff_ids is not a list of digests")
        return list(ids)

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def size(self) -> int:
        """Content bytes over all layers (``docker images`` SIZE)."""
        total = 0
        for layer in self.layers:
            if layer.size is None:
                layer.scan()
            total += layer.size
        return total

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]`` from the config (``docker image inspect``'s
        Os, Architecture, Variant), ``"unknown"`` when the config has none."""
        c = self.config
        parts = [c.get("os"), c.get("architecture"), c.get("variant")]
        if not all(isinstance(x, str) and x for x in parts[:2]):
            return "unknown"
        return "/".join(x for x in parts if isinstance(x, str) and x)

    @property
    def container_config(self) -> dict:
        return self.config.get("config") or {}

    @property
    def created(self) -> str:
        return self.config.get("created", "")

    @property
    def history_entries(self) -> list[dict]:
        return list(self.config.get("history") or [])

    def rootfs(self, verify: bool = False) -> RootFS:
        return flatten(self.layers, verify=verify)

    def export(self, out: BinaryIO | str | os.PathLike) -> int:
        """Write the merged rootfs as one flat tar; returns content bytes."""
        return _write_export(self.layers, out)

    def __repr__(self) -> str:
        return f"Image({self.short_id}, tags={self.tags}, layers={len(self.layers)}, platform={self.platform})"


def _write_export(layers, out) -> int:
    if isinstance(out, (str, os.PathLike)):
        tmp = os.fspath(out) + ".tmp"
        try:
            with open(tmp, "wb") as f:
                n = export(layers, f)
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return n
    return export(layers, out)


def _as_layer(tar) -> Layer:
    if isinstance(tar, Layer):
        return tar
    if isinstance(tar, (bytes, bytearray, memoryview)):
        return Layer.from_bytes(bytes(tar), name="<layer tar>")
    if isinstance(tar, (str, os.PathLike)):
        return Layer.from_path(tar)
    if hasattr(tar, "read"):
        # spool a stream to a private temp file: never hold a whole layer in memory
        holder = TempHolder()
        path = os.path.join(holder.path, "layer.tar")
        with open(path, "wb") as out:
            shutil.copyfileobj(tar, out, 1 << 20)
        return Layer(FileSource(path, name="<layer stream>", keepalive=holder))
    raise TypeError(f"expected a layer tar as bytes, a path or a Layer, not {type(tar).__name__}")


def commit(base: Image | None, layer_tar, *, message: str = "", author: str = "",
           changes: Sequence[str] = (), container_config: dict | None = None,
           container_id: str = "", created_by: str = "", created: str | None = None,
           tags: Sequence[str] = (), repository: str | None = None) -> Image:
    """A new image: ``base`` plus one layer (the container's diff), as ``docker commit``.

    ``container_config`` (the container's runtime config) replaces the base
    config if given, then ``changes`` (Dockerfile instructions) are applied.
    A diff with no entries adds no layer and is recorded as
    ``empty_layer: true`` in the history, as Docker does.  ``repository``
    (``name[:tag]``, as ``docker commit CONTAINER REPO[:TAG]``) is added to ``tags``.
    """
    if repository:
        tags = list(tags) + [repository]
    layer = _as_layer(layer_tar)
    layer.scan()   # verifies, computes DiffID and sizes; hostile input raises here
    parent_layers = list(base.layers) if base is not None else []
    # the diff must apply cleanly on the base (symlink escapes, bad hardlinks)
    fs = flatten(parent_layers, verify=False)
    fs.apply_layer(layer, len(parent_layers), verify=False)
    created = created or now_rfc3339()
    if base is not None:
        config = copy.deepcopy(base.config)
    else:
        config = {"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    runtime = copy.deepcopy(container_config) if container_config is not None else config.get("config") or {}
    config["config"] = apply_changes(runtime, changes)
    config["created"] = created
    if author:
        config["author"] = author
    else:
        config.pop("author", None)
    if message:
        config["comment"] = message
    else:
        config.pop("comment", None)
    if container_id:
        config["container"] = container_id
    empty = layer.nr_entries == 0
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    diff_ids = list(rootfs.get("diff_ids") or [])
    hist = list(config.get("history") or [])
    entry = {"created": created}
    if author:
        entry["author"] = author
    if created_by:
        entry["created_by"] = created_by
    if message:
        entry["comment"] = message
    if empty:
        entry["empty_layer"] = True
        layers = parent_layers
    else:
        diff_ids.append(layer.diff_id)
        layers = parent_layers + [layer.with_parent(parent_layers[-1] if parent_layers else None)]
    rootfs["diff_ids"] = diff_ids
    hist.append(entry)
    config["history"] = hist
    return Image.from_config(config, layers, tags=tags, parent=base.id if base is not None else None)


def import_(tar, *, changes: Sequence[str] = (), message: str = "", source: str = "-",
            created: str | None = None, architecture: str = "amd64", os_name: str = "linux",
            tags: Sequence[str] = ()) -> Image:
    """A one-layer image from a flat rootfs tar, as ``docker import``.

    History and metadata of wherever the tar came from are lost; the one
    history entry's comment is ``message`` or ``"Imported from <source>"``.
    """
    layer = _as_layer(tar)
    layer.scan()
    flatten([layer], verify=False)   # hostile paths/links raise here
    created = created or now_rfc3339()
    config = {
        "architecture": architecture,
        "config": apply_changes({}, changes),
        "created": created,
        "history": [{"created": created, "comment": message or f"Imported from {source}"}],
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    return Image.from_config(config, [layer], tags=tags)


def history(image: Image, images: dict | None = None) -> list[dict]:
    """Rows of ``docker history``, newest first.

    Each row: ``id`` (the image ID on the top row; with ``images``, an
    ``{id: Image}`` map such as ``ImageStore.images``, a local parent's ID on
    the row of its last step; ``<missing>`` otherwise, as Docker shows), ``created``,
    ``created_by``, ``size`` (content bytes of the step's layer, 0 for an empty
    layer), ``comment``, ``author``, ``empty_layer`` and ``diff_id``.
    """
    rows = []
    layers = list(image.layers)
    li = 0
    entries = image.history_entries
    for h in entries:
        empty = bool(h.get("empty_layer"))
        layer = None
        if not empty and li < len(layers):
            layer = layers[li]
            li += 1
        if layer is not None and layer.size is None:
            layer.scan()
        rows.append({
            "created": h.get("created", ""),
            "created_by": h.get("created_by", ""),
            "size": layer.size if layer is not None else 0,
            "comment": h.get("comment", ""),
            "author": h.get("author", ""),
            "empty_layer": empty,
            "diff_id": layer.diff_id if layer is not None else None,
        })
    while li < len(layers):   # configs whose history lists fewer steps than layers
        layer = layers[li]
        li += 1
        if layer.size is None:
            layer.scan()
        rows.append({"created": "", "created_by": "", "size": layer.size, "comment": "",
                     "author": "", "empty_layer": False, "diff_id": layer.diff_id})
    rows.reverse()
    for row in rows:
        row["id"] = "<missing>"
    rows[0]["id"] = image.id if rows else None
    seen = {image.id}
    parent = images.get(image.parent) if images and image.parent else None
    while parent is not None and parent.id not in seen:
        seen.add(parent.id)
        r = len(rows) - len(parent.history_entries)
        if 0 <= r < len(rows):
            rows[r]["id"] = parent.id
        parent = images.get(parent.parent) if parent.parent else None
    return [{"id": r.pop("id"), **r} for r in rows]


def inspect(image: Image) -> dict:
    """The fields of ``docker image inspect`` that thinp knows."""
    cfg = image.config
    return {
        "Id": image.id,
        "RepoTags": list(image.tags),
        "RepoDigests": [],
        "Parent": image.parent or "",
        "Comment": cfg.get("comment", ""),
        "Created": cfg.get("created", ""),
        "DockerVersion": cfg.get("docker_version", ""),
        "Author": cfg.get("author", ""),
        "Config": copy.deepcopy(cfg.get("config") or {}),
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", ""),
        "Os": cfg.get("os", ""),
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Metadata": {"LastTagTime": ""},
    }

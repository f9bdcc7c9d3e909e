"""``docker pull``, ``push`` and ``search`` for a :class:`~thinp.docker.daemon.Daemon`.

A registry is ``http://127.0.0.1:PORT`` (or a reference whose registry host
is a loopback address, ``localhost:5000/busybox``), spoken to with
:class:`~thinp.docker.registry.HTTPRegistry`, or ``oci:DIR``: a directory
of OCI layouts, one per ``<repository>/<tag>`` (what
:meth:`thinp.Engine.pull` reads).

Pull fetches the manifest (following an index to the platform asked for),
the config, and only the layers whose ChainID the engine does not have
(docker's "Already exists"); every blob is verified by digest and every
layer's DiffID by the config's.  Fetched blobs wait in a temporary directory
until the image is whole; then it is added all or nothing.  Push sends, per
blob, nothing when the repository has it (HEAD), a cross-repository mount
when another repository of the registry has it, else the uncompressed layer
tar (monolithic or in chunks); then the OCI manifest.

Each returns ``{"lines": what docker prints, "bytes_transferred",
"bytes_stored", ...}``: bytes that crossed the wire (bodies) and the
growth of the driver's physical bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from ..errors import ImageFormatError, ImageNotFoundError
from ..image import Image, Layer, Reference, chain_ids
from ..image.archive import MT_OCI_CONFIG, MT_OCI_LAYER, MT_OCI_MANIFEST
from ..image.image import canonical_json
from ..image.layer import FileSource
from .registry import HTTPRegistry, is_loopback, registry_url

__all__ = ["pull", "push", "search", "resolve_registry"]

_MANIFESTS = (MT_OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")


def resolve_registry(ref: Reference, registry: str | None) -> tuple[str, str]:
    """``(kind, where)``: ``("http", url)`` or ``("oci", dir)``."""
    if registry:
        if registry.startswith("oci:"):
            d = registry[4:]
            if not d:
                raise ValueError("registry 'oci:' names no directory")
            return "oci", d
        return "http", registry_url(registry)
    host = ref.domain.rsplit(":", 1)[0] if not ref.domain.startswith("[") else ref.domain.split("]")[0] + "]"
    if is_loopback(host):
        return "http", registry_url(ref.domain)
    raise ValueError(f"{ref.domain}: thinp pulls and pushes only to registries on this machine; "
                     f"give --registry http://127.0.0.1:PORT or oci:DIR")


def _stored(daemon) -> int:
    daemon.engine.sync()
    return daemon.engine.metrics()["physical_bytes"] - daemon.baseline["physical_bytes"]


def _default_tag_line(text: str) -> list[str]:
    last = text.rsplit("/", 1)[-1]
    return [] if (":" in last or "@" in text) else ["Using default tag: latest"]


def pull(daemon, text: str, *, registry: str | None = None, platform: str = "linux/amd64") -> dict:
    ref = Reference.parse(text)
    kind, where = resolve_registry(ref, registry)
    lines = _default_tag_line(text)
    store = daemon.engine.store
    if kind == "oci":
        before = set(store.images)
        img = daemon.engine.pull(text, where, platform=platform)
        new = img.id not in before
        lines += [f"{ref.tag or ref.digest}: Pulling from {ref.path}",
                  f"Status: {'Downloaded newer image' if new else 'Image is up to date'} for {ref.familiar}",
                  str(ref)]
        res = {"lines": lines, "id": img.id, "bytes_transferred": 0, "bytes_stored": _stored(daemon)}
        daemon.transfer = {k: res[k] for k in ("bytes_transferred", "bytes_stored")}
        return res
    reg = HTTPRegistry(where)
    tmp = tempfile.mkdtemp(prefix=".pull-", dir=daemon.root)
    try:
        mbytes, _mt, mdigest = reg.manifest(ref.path, ref.digest or ref.tag, platform=platform)
        m = json.loads(mbytes)
        if m.get("schemaVersion") != 2 or not isinstance(m.get("config"), dict) or \
                not isinstance(m.get("layers"), list):
            raise ImageFormatError(f"{ref.familiar}: manifest {mdigest} is not a schema 2 image manifest")
        lines.append(f"{ref.tag or ref.digest}: Pulling from {ref.path}")
        cfg = reg.blob_bytes(ref.path, m["config"]["digest"])
        config = json.loads(cfg)
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(m["layers"]):
            raise ImageFormatError(f"{ref.familiar}: the manifest lists {len(m['layers'])} layers, "
                                   f"the config {len(diff_ids)} diff_ids")
        image_id = "sha256:" + hashlib.sha256(cfg).hexdigest()
        up_to_date = image_id in store.images
        layers, parent = [], None
        for desc, diff_id, chain in zip(m["layers"], diff_ids, chain_ids(diff_ids)):
            short = desc["digest"][7:19]
            have = store.layers.get(chain)
            if have is not None:
                layer = have
                lines.append(f"{short}: Already exists")
            else:
                path = os.path.join(tmp, desc["digest"][7:])
                reg.blob(ref.path, desc["digest"], path)
                layer = Layer(FileSource(path), diff_id=diff_id, parent=parent, blob_digest=desc["digest"],
                              blob_size=desc.get("size"), media_type=desc.get("mediaType"))
                layer.scan()          # the DiffID the config names, or ImageFormatError
                lines.append(f"{short}: Pull complete")
            layers.append(layer)
            parent = layer
        img = Image(cfg, layers)
        tags = [str(ref)] if ref.digest is None else []
        daemon.add_image(img, tags)
        daemon.write_state()     # persists the layer blobs before the temporary files go
        lines += [f"Digest: {mdigest}",
                  f"Status: {'Image is up to date' if up_to_date else 'Downloaded newer image'} for {ref.familiar}",
                  str(ref)]
    finally:
        reg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"lines": lines, "id": image_id, "digest": mdigest, "bytes_transferred": reg.bytes_received,
           "bytes_stored": _stored(daemon)}
    daemon.transfer = {k: res[k] for k in ("bytes_transferred", "bytes_stored")}
    return res


def _layer_file(layer: Layer, tmp: str) -> str:
    """A path holding the layer's uncompressed tar (its own file when it is one)."""
    src = layer.source
    if isinstance(src, FileSource) and src.offset == 0 and src.length is None and layer.compression == "none":
        return src.path
    path = os.path.join(tmp, layer.diff_id[7:])
    with layer.open_uncompressed() as f, open(path, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    return path


def push(daemon, text: str, *, registry: str | None = None, chunk_size: int = 0) -> dict:
    ref = Reference.parse(text)
    kind, where = resolve_registry(ref, registry)
    lines = _default_tag_line(text)
    try:
        img = daemon.engine.image(text)
    except ImageNotFoundError:
        raise ImageNotFoundError(f"An image does not exist locally with the tag: {ref.familiar_name}") from None
    tag = ref.tag or "latest"
    lines.append(f"The push refers to repository [{ref.familiar_name}]")
    if kind == "oci":
        from ..image import save

        dst = os.path.join(where, *ref.familiar_name.split("/"), tag)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        save([Image(img.config_bytes, img.layers, [f"{ref.familiar_name}:{tag}"])], dst, format="oci",
             directory=True)
        for layer in reversed(img.layers):
            lines.append(f"{layer.diff_id[7:19]}: Pushed")
        lines.append(f"{tag}: digest: {img.id} size: {len(img.config_bytes)}")
        return {"lines": lines, "bytes_transferred": 0, "bytes_stored": 0}
    reg = HTTPRegistry(where)
    tmp = tempfile.mkdtemp(prefix=".push-", dir=daemon.root)
    sent_blobs = mounted = existing = 0
    try:
        others = None
        for layer in reversed(img.layers):
            d = layer.diff_id
            if reg.has_blob(ref.path, d):
                lines.append(f"{d[7:19]}: Layer already exists")
                existing += 1
                continue
            if others is None:
                try:
                    others = [r for r in reg.catalog() if r != ref.path]
                except Exception:   # a registry without the catalog API: no mounts
                    others = []
            src = next((o for o in others if reg.has_blob(o, d)), None)
            if src is not None and reg.mount_blob(ref.path, d, src):
                lines.append(f"{d[7:19]}: Mounted from {src}")
                mounted += 1
                continue
            reg.upload_blob(ref.path, d, path=_layer_file(layer, tmp), chunk_size=chunk_size)
            lines.append(f"{d[7:19]}: Pushed")
            sent_blobs += 1
        if not reg.has_blob(ref.path, img.id):
            reg.upload_blob(ref.path, img.id, data=img.config_bytes, chunk_size=chunk_size)
        for layer in img.layers:
            if layer.tar_size is None:
                layer.scan()
        manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                    "config": {"mediaType": MT_OCI_CONFIG, "digest": img.id, "size": len(img.config_bytes)},
                    "layers": [{"mediaType": MT_OCI_LAYER, "digest": l.diff_id, "size": l.tar_size}
                               for l in img.layers]}
        body = canonical_json(manifest)
        digest = reg.put_manifest(ref.path, tag, body, MT_OCI_MANIFEST)
        lines.append(f"{tag}: digest: {digest} size: {len(body)}")
    finally:
        reg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"lines": lines, "digest": digest, "layers_pushed": sent_blobs, "layers_mounted": mounted,
           "layers_existing": existing, "bytes_transferred": reg.bytes_sent, "bytes_stored": 0}
    daemon.transfer = {k: res[k] for k in ("bytes_transferred", "bytes_stored")}
    return res


def search(daemon, term: str, *, registry: str) -> list[dict]:
    """Repositories whose name contains ``term``, with their tags."""
    kind, where = resolve_registry(Reference.parse("x"), registry)
    rows = []
    if kind == "oci":
        for top, dirs, files in os.walk(where):
            if "oci-layout" in files or "index.json" in files:
                repo, tag = os.path.split(os.path.relpath(top, where))
                rows.append((repo, tag))
                dirs[:] = []
            else:
                rows += [(os.path.relpath(top, where), f[:-4]) for f in files if f.endswith(".tar")]
        out: dict[str, list] = {}
        for repo, tag in sorted(rows):
            if term in repo:
                out.setdefault(repo, []).append(tag)
        return [{"name": r, "tags": t} for r, t in out.items()]
    reg = HTTPRegistry(where)
    try:
        return [{"name": r, "tags": sorted(reg.tags(r))} for r in sorted(reg.catalog()) if term in r]
    finally:
        reg.close()

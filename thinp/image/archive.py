"""Read and write image archives: docker save (legacy and Docker 25) and OCI layouts.

``load(path, platform="linux/amd64")`` accepts:

* a legacy ``docker save`` tar: ``manifest.json`` + ``<id>/layer.tar`` +
  ``<config>.json`` (+ ``repositories``, ignored like ``docker load`` does);
* Docker 25's hybrid save: OCI ``index.json`` + ``blobs/sha256`` +
  ``manifest.json`` (``manifest.json`` wins, as in ``docker load``);
* a plain OCI image layout, as a directory or a tar: image indexes (nested,
  multi-arch) are walked as ``docker load`` walks them: each name (and all
  unnamed entries together) holding ONE image loads it whatever its
  platform (``Image.platform`` says which), and only among several does
  ``platform`` choose (none matching is an error listing the platforms on
  offer); manifests whose blobs the saver left out
  are not on offer; manifests whose config is not an image config, or with
  an ``artifactType``, or marked as attestations (SBOMs, signatures) are
  skipped;
* any of those gzip- or zstd-compressed as a whole.

Every digest is verified (configs named by digest, blobs, manifests, DiffIDs)
and a mismatch names the blob.  Every layer is read once, checked for
hostile entries and flattened per image, before anything is returned.  One
``Image`` is returned per distinct image ID, carrying all its tags.

``save(images, path)`` writes a Docker 25-style archive (OCI layout plus
``manifest.json`` and ``repositories``) with uncompressed layers, so each
layer blob's digest is its DiffID.  ``save(..., format="oci")`` writes the
pure OCI layout; ``directory=True`` writes a directory instead of a tar.
Output is written to a temporary name and renamed, so a failure leaves
nothing behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from typing import Sequence

from ..errors import ImageFormatError
from . import tarstream as ts
from .image import Image, canonical_json
from .layer import BlobSource, FileSource, Layer, TempHolder as _TempHolder
from .reference import Reference
from .rootfs import RootFS

__all__ = ["load", "save", "MEDIA_TYPES", "parse_platform"]

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = {MT_OCI_INDEX, MT_DOCKER_LIST}
MANIFEST_TYPES = {MT_OCI_MANIFEST, MT_DOCKER_MANIFEST}
CONFIG_TYPES = {MT_OCI_CONFIG, MT_DOCKER_CONFIG}
LAYER_TYPES = {
    MT_OCI_LAYER, MT_OCI_LAYER + "+gzip", MT_OCI_LAYER + "+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    MT_DOCKER_LAYER, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
MEDIA_TYPES = INDEX_TYPES | MANIFEST_TYPES | CONFIG_TYPES | LAYER_TYPES

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"
ANN_REFERENCE_TYPE = "vnd.docker.reference.type"

_MAX_JSON_BYTES = 16 << 20
_SHA256_HEX = re.compile(r"[a-f0-9]{64}\Z")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}\Z")


# ===================================================================== input
class _Archive:
    name = "archive"

    def has(self, member: str) -> bool: ...
    def size(self, member: str) -> int: ...
    def source(self, member: str) -> BlobSource: ...

    def read(self, member: str, what: str) -> bytes:
        if not self.has(member):
            raise ImageFormatError(f"{self.name}: {what} {member!r} is missing")
        n = self.size(member)
        if n > _MAX_JSON_BYTES:
            raise ImageFormatError(f"{self.name}: {what} {member!r} is {n} bytes, too large")
        with self.source(member).open() as f:
            data = f.read(n + 1)
        if len(data) != n:
            raise ImageFormatError(f"{self.name}: {what} {member!r}: declared size {n}, read {len(data)}")
        return data

    def json(self, member: str, what: str):
        data = self.read(member, what)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageFormatError(f"{self.name}: {what} {member!r} is not valid JSON: {e}") from None


class _DirArchive(_Archive):
    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.name = root

    def _path(self, member: str) -> str:
        rel = ts.normalize_member_name(member, self.name, "archive path")
        p = os.path.realpath(os.path.join(self.root, rel))
        if not (p == self.root or p.startswith(self.root + os.sep)):
            raise ImageFormatError(f"{self.name}: {member!r} resolves outside the layout")
        return p

    def has(self, member: str) -> bool:
        return os.path.isfile(self._path(member))

    def size(self, member: str) -> int:
        return os.path.getsize(self._path(member))

    def source(self, member: str) -> BlobSource:
        return FileSource(self._path(member), name=f"{self.name}/{member}")


class _TarArchive(_Archive):
    """An uncompressed tar indexed once with the strict reader."""

    def __init__(self, path: str, display: str, keepalive=None):
        self.path = path
        self.name = display
        self.keepalive = keepalive
        self.members: dict[str, tuple] = {}   # name -> (kind, offset, size, linkname)
        with open(path, "rb") as f:
            inp = ts.HashingInput(f, display, hash_data=False, size_bytes=os.fstat(f.fileno()).st_size)
            for h, stream in ts.iter_tar(inp):
                if stream is not None:
                    offset = inp.nr_bytes - (len(inp.buf) - inp.pos)
                    self.members[h.path] = ("file", offset, h.size, "")
                elif h.kind in (ts.SYMLINK, ts.HARDLINK):
                    self.members[h.path] = (h.kind, 0, 0, h.linkname)

    def _resolve(self, member: str, hops: int = 0) -> tuple:
        name = ts.normalize_member_name(member, self.name, "archive path")
        m = self.members.get(name)
        if m is None:
            return None
        kind, _, _, link = m
        if kind == "file":
            return m
        if hops > 8:
            raise ImageFormatError(f"{self.name}: too many links resolving {member!r}")
        if kind == ts.SYMLINK:
            if link.startswith("/"):
                raise ImageFormatError(f"{self.name}: member {member!r} links outside the archive")
            parts = name.split("/")[:-1]
            for p in link.split("/"):
                if p in ("", "."):
                    continue
                if p == "..":
                    if not parts:
                        raise ImageFormatError(f"{self.name}: member {member!r} links outside the archive")
                    parts.pop()
                else:
                    parts.append(p)
            return self._resolve("/".join(parts), hops + 1)
        return self._resolve(link, hops + 1)

    def has(self, member: str) -> bool:
        return self._resolve(member) is not None

    def size(self, member: str) -> int:
        return self._resolve(member)[2]

    def source(self, member: str) -> BlobSource:
        m = self._resolve(member)
        if m is None:
            raise ImageFormatError(f"{self.name}: {member!r} is missing")
        return FileSource(self.path, m[1], m[2], name=f"{self.name}:{member}", keepalive=self.keepalive)


def _open_archive(path, max_ratio: float) -> _Archive:
    path = os.fspath(path)
    if os.path.isdir(path):
        return _DirArchive(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if ts.sniff_compression(head) == "none":
        return _TarArchive(path, path)
    holder = _TempHolder()
    try:
        tmp = os.path.join(holder.path, "archive.tar")
        with open(path, "rb") as raw, open(tmp, "wb") as out:
            reader, _ = ts.open_blob(raw, path, max_ratio=max_ratio)
            while True:
                chunk = reader.read(ts.CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
        return _TarArchive(tmp, path, keepalive=holder)
    except BaseException:
        holder.cleanup()
        raise


# ===================================================================== helpers
def parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r} is not os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _platform_matches(p: dict | None, want: tuple) -> bool:
    if not isinstance(p, dict):
        return True
    os_, arch, variant = want
    if p.get("os") != os_ or p.get("architecture") != arch:
        return False
    if variant is not None and p.get("variant") not in (variant, None):
        return False
    return True


def _check_digest(d, where: str) -> str:
    if not isinstance(d, str) or not _DIGEST.match(d):
        raise ImageFormatError(f"{where}: unsupported or malformed digest {d!r}")
    return d


def _descriptor(d, where: str) -> dict:
    if not isinstance(d, dict):
        raise ImageFormatError(f"{where}: descriptor is not an object")
    _check_digest(d.get("digest"), where)
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageFormatError(f"{where}: descriptor size {size!r} is not a non-negative integer")
    if not isinstance(d.get("mediaType", ""), str):
        raise ImageFormatError(f"{where}: mediaType is not a string")
    return d


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest[7:]


def _read_verified(arch: _Archive, desc: dict, what: str) -> bytes:
    member = _blob_path(desc["digest"])
    data = arch.read(member, what)
    if len(data) != desc["size"]:
        raise ImageFormatError(
            f"{arch.name}: {what} {desc['digest']}: declared size {desc['size']} does not match "
            f"blob size {len(data)}")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != desc["digest"]:
        raise ImageFormatError(f"{arch.name}: {what} {member}: digest mismatch: expected {desc['digest']}, got {got}")
    return data


def _parse_tags(tags, where: str) -> list[str]:
    out = []
    if tags is not None and not isinstance(tags, list):
        raise ImageFormatError(f"{where}: RepoTags {tags!r} is not a list")
    for t in tags or []:
        if not isinstance(t, str):
            raise ImageFormatError(f"{where}: tag {t!r} is not a string")
        try:
            out.append(Reference.parse(t).familiar)
        except ValueError as e:
            raise ImageFormatError(f"{where}: bad tag {t!r}: {e}") from None
    return out


class _Builder:
    """Collects images, sharing Layer objects by ChainID."""

    def __init__(self, arch: _Archive, max_ratio: float):
        self.arch = arch
        self.max_ratio = max_ratio
        self.layers: dict[str, Layer] = {}
        self.images: dict[str, Image] = {}
        self.order: list[str] = []

    def image(self, config_bytes: bytes, layer_specs: list[tuple], tags: list[str], where: str):
        try:
            cfg = json.loads(config_bytes)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageFormatError(f"{where}: config is not valid JSON: {e}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("rootfs"), dict):
            raise ImageFormatError(f"{where}: config has no rootfs")
        diff_ids = cfg["rootfs"].get("diff_ids") or []
        if not isinstance(diff_ids, list):
            raise ImageFormatError(f"{where}: rootfs.diff_ids is not a list")
        if len(diff_ids) != len(layer_specs):
            raise ImageFormatError(
                f"{where}: layer count {len(layer_specs)} differs from the config's "
                f"{len(diff_ids)} diff_ids")
        layers = []
        parent = None
        for (member, blob_digest, blob_size, media_type), diff_id in zip(layer_specs, diff_ids):
            _check_digest(diff_id, f"{where}: diff_id")
            if media_type is not None and media_type not in LAYER_TYPES:
                raise ImageFormatError(f"{where}: layer {member}: unsupported media type {media_type!r}")
            if not self.arch.has(member):
                raise ImageFormatError(f"{self.arch.name}: layer {member!r} is missing")
            parent_chain = parent.chain_id if parent is not None else None
            key = f"{parent_chain} {diff_id}"
            layer = self.layers.get(key)
            if layer is None:
                layer = Layer(self.arch.source(member), diff_id=diff_id, parent=parent,
                              blob_digest=blob_digest, blob_size=blob_size,
                              media_type=media_type, max_ratio=self.max_ratio)
                self.layers[key] = layer
            layers.append(layer)
            parent = layer
        img = Image(config_bytes, layers)
        if img.id in self.images:
            img = self.images[img.id]
        else:
            self.images[img.id] = img
            self.order.append(img.id)
        for t in tags:
            img.add_tag(t)

    def finish(self) -> list[Image]:
        verified: set[int] = set()
        for image_id in self.order:
            img = self.images[image_id]
            fs_layers = img.layers
            fs = RootFS()
            for i, layer in enumerate(fs_layers):
                fs.apply_layer(layer, i, verify=id(layer) not in verified)
                verified.add(id(layer))
        return [self.images[i] for i in self.order]


def _load_docker(arch: _Archive, b: _Builder) -> None:
    manifest = arch.json("manifest.json", "manifest")
    if not isinstance(manifest, list):
        raise ImageFormatError(f"{arch.name}: manifest.json is not a list")
    for n, item in enumerate(manifest):
        where = f"{arch.name}: manifest.json[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) \
                or not isinstance(item.get("Layers") or [], list):
            raise ImageFormatError(f"{where}: needs Config (string) and Layers (list)")
        cfg_member = item["Config"]
        config_bytes = arch.read(cfg_member, "config")
        base = cfg_member.rsplit("/", 1)[-1]
        hexpart = base[:-5] if base.endswith(".json") else base
        if hexpart.startswith("sha256:"):
            hexpart = hexpart[7:]
        if _SHA256_HEX.match(hexpart):
            got = hashlib.sha256(config_bytes).hexdigest()
            if got != hexpart:
                raise ImageFormatError(
                    f"{arch.name}: config {cfg_member}: digest mismatch: expected sha256:{hexpart}, got sha256:{got}")
        sources = item.get("LayerSources") or {}
        if not isinstance(sources, dict):
            raise ImageFormatError(f"{where}: LayerSources is not an object")
        specs = []
        for member in item.get("Layers") or []:
            if not isinstance(member, str):
                raise ImageFormatError(f"{where}: layer path {member!r} is not a string")
            ts.normalize_member_name(member, where, "layer path")
            blob_digest = blob_size = media_type = None
            m = re.fullmatch(r"(?:\./)?blobs/sha256/([a-f0-9]{64})", member)
            if m:
                blob_digest = "sha256:" + m.group(1)
                desc = sources.get(blob_digest)
                if desc is not None:
                    _descriptor(desc, f"{where}: LayerSources[{blob_digest}]")
                    blob_size = desc["size"]
                    media_type = desc.get("mediaType")
            specs.append((member, blob_digest, blob_size, media_type))
        b.image(config_bytes, specs, _parse_tags(item.get("RepoTags"), where), where)


def _platform_text(p: dict | None) -> str:
    if not isinstance(p, dict) or not p.get("os"):
        return "unknown"
    return "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def _load_oci(arch: _Archive, b: _Builder, platform: tuple) -> None:
    """Every image of an OCI layout, chosen as ``docker load`` chooses.

    The index is walked (nested indexes included) and every manifest that is
    an image (not an attestation, signature, SBOM or other artifact) becomes
    a candidate, with its platform from its descriptor or else its config.
    Each name (``io.containerd.image.name`` or a full reference in
    ``org.opencontainers.image.ref.name``), and all unnamed entries together,
    is one image to load: with ONE candidate it loads whatever its platform;
    with several (a multi-platform index), ``platform`` picks those that
    match, and none matching is an error that lists the platforms on offer.
    """
    layout = arch.json("oci-layout", "oci-layout file")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageFormatError(f"{arch.name}: oci-layout has no imageLayoutVersion")
    index = arch.json("index.json", "index")
    if not isinstance(index, dict):
        raise ImageFormatError(f"{arch.name}: index.json is not an object")
    images: list[tuple] = []   # (platform dict, match, config bytes, layer specs, tags, where)
    absent: list[str] = []

    def visit(desc: dict, tags: list[str], depth: int, where: str, top: bool):
        if depth > 8:
            raise ImageFormatError(f"{where}: image indexes nested too deeply")
        _descriptor(desc, where)
        mt = desc.get("mediaType")
        ann = desc.get("annotations") or {}
        if not isinstance(ann, dict):
            raise ImageFormatError(f"{where}: annotations is not an object")
        if ann.get(ANN_REFERENCE_TYPE):   # buildx attestation manifests
            return
        plat = desc.get("platform")
        if mt in INDEX_TYPES:
            data = _read_verified(arch, desc, "index")
            try:
                sub = json.loads(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise ImageFormatError(f"{where}: index {desc['digest']} is not JSON: {e}") from None
            if not isinstance(sub, dict) or not isinstance(sub.get("manifests") or [], list):
                raise ImageFormatError(f"{where}: index {desc['digest']} has no manifests list")
            for i, child in enumerate(sub.get("manifests") or []):
                visit(child, tags, depth + 1, f"{where} -> {desc['digest'][:19]}[{i}]", False)
            return
        if mt not in MANIFEST_TYPES:
            raise ImageFormatError(f"{where}: unsupported media type {mt!r}")
        if isinstance(plat, dict) and plat.get("os") == "unknown":
            return   # attestation / provenance
        if desc.get("artifactType"):
            return
        if not top and not arch.has(_blob_path(desc["digest"])):
            # a platform the saver did not keep (Docker 25+ saves the whole
            # index, but only the pulled platform's blobs): not on offer
            absent.append(f"{where}: manifest {desc['digest']} ({_platform_text(plat)})")
            return
        data = _read_verified(arch, desc, "manifest")
        try:
            man = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageFormatError(f"{where}: manifest {desc['digest']} is not JSON: {e}") from None
        if not isinstance(man, dict):
            raise ImageFormatError(f"{where}: manifest {desc['digest']} is not an object")
        if man.get("mediaType") not in (None, mt):
            raise ImageFormatError(
                f"{where}: manifest {desc['digest']} says mediaType {man.get('mediaType')!r}, "
                f"descriptor says {mt!r}")
        if man.get("artifactType"):
            return
        cfg_desc = _descriptor(man.get("config"), f"{where}: manifest config")
        cmt = cfg_desc.get("mediaType")
        if cmt not in CONFIG_TYPES:
            if isinstance(cmt, str) and cmt:
                return   # an artifact (SBOM, signature, ...): not an image
            raise ImageFormatError(f"{where}: config has no mediaType")
        layer_descs = man.get("layers") or []
        if not isinstance(layer_descs, list):
            raise ImageFormatError(f"{where}: manifest layers is not a list")
        lmts = [ld.get("mediaType") if isinstance(ld, dict) else None for ld in layer_descs]
        if lmts and all(isinstance(m, str) and m.endswith("+json") for m in lmts):
            # an image-shaped artifact whose "layers" are JSON documents: cosign
            # signatures (simplesigning), in-toto/DSSE attestations, SPDX/CycloneDX SBOMs
            return
        config_bytes = _read_verified(arch, cfg_desc, "config")
        if isinstance(plat, dict):
            shown, match = plat, _platform_matches(plat, platform)
        else:
            # descriptor had no platform: the config's own (a top-level
            # descriptor without one matches any platform, as before)
            try:
                c = json.loads(config_bytes)
            except (ValueError, UnicodeDecodeError):
                c = None
            shown = {"os": c.get("os"), "architecture": c.get("architecture"),
                     "variant": c.get("variant")} if isinstance(c, dict) else None
            match = top or _platform_matches(shown, platform)
        specs = []
        for i, ld in enumerate(layer_descs):
            _descriptor(ld, f"{where}: layer {i}")
            lmt = ld.get("mediaType")
            if lmt not in LAYER_TYPES:
                raise ImageFormatError(f"{where}: layer {ld['digest']}: unsupported media type {lmt!r}")
            specs.append((_blob_path(ld["digest"]), ld["digest"], ld["size"], lmt))
        images.append((shown, match, config_bytes, specs, tags, where))

    manifests = index.get("manifests") or []
    if not isinstance(manifests, list):
        raise ImageFormatError(f"{arch.name}: index.json manifests is not a list")
    for i, desc in enumerate(manifests):
        where = f"{arch.name}: index.json[{i}]"
        ann = (desc.get("annotations") if isinstance(desc, dict) else None) or {}
        tags = []
        name = ann.get(ANN_CONTAINERD_NAME) if isinstance(ann, dict) else None
        ref_name = ann.get(ANN_REF_NAME) if isinstance(ann, dict) else None
        if isinstance(name, str) and name:
            tags = _parse_tags([name], where)
        elif isinstance(ref_name, str) and ("/" in ref_name or ":" in ref_name):
            tags = _parse_tags([ref_name], where)
        visit(desc, tags, 0, where, True)
    if absent and not images:
        raise ImageFormatError(f"{absent[0]} is missing from the archive")
    # each name (or all unnamed entries together) is one image to load, as
    # docker load imports each named entry: a single candidate whatever its
    # platform, several (a multi-platform index) chosen by ``platform``
    groups: dict[tuple, list] = {}
    for img in images:
        groups.setdefault(tuple(img[4]), []).append(img)
    for group in groups.values():
        if len({img[2] for img in group}) == 1:
            chosen = group[:1] if not group[0][4] else group
        else:
            chosen = [img for img in group if img[1]]
            if not chosen:
                offered = sorted({_platform_text(img[0]) for img in group})
                named = f"{', '.join(group[0][4])}: " if group[0][4] else ""
                raise ImageFormatError(
                    f"{arch.name}: {named}no image for platform {'/'.join(p for p in platform if p)} among "
                    f"{len(group)} images; the archive offers {', '.join(offered)}")
        for shown, _match, config_bytes, specs, tags, where in chosen:
            b.image(config_bytes, specs, tags, where)


def load(path, *, platform: str = "linux/amd64",
         max_ratio: float = ts.DEFAULT_MAX_RATIO) -> list[Image]:
    """Read every image in a save/OCI archive (see the module docstring)."""
    want = parse_platform(platform)
    arch = _open_archive(path, max_ratio)
    try:
        b = _Builder(arch, max_ratio)
        if arch.has("manifest.json"):
            _load_docker(arch, b)
        elif arch.has("index.json"):
            _load_oci(arch, b, want)
        elif arch.has("repositories"):
            raise ImageFormatError(f"{arch.name}: pre-1.10 docker save (repositories only) is not supported")
        else:
            raise ImageFormatError(f"{arch.name}: neither manifest.json nor index.json: not an image archive")
        return b.finish()
    except BaseException:
        holder = getattr(arch, "keepalive", None)
        if holder is not None:
            holder.cleanup()
        raise


# ===================================================================== output
def _familiar_repo_tag(tag: str) -> tuple[str, str, Reference]:
    ref = Reference.parse(tag)
    return ref.familiar_name, ref.tag or "latest", ref


class _Out:
    """Writes members to a tar stream or a directory."""

    def __init__(self, path: str, directory: bool):
        self.directory = directory
        self.final = path
        parent = os.path.dirname(os.path.abspath(path))
        if directory:
            self.tmp = tempfile.mkdtemp(prefix=".thinp-save-", dir=parent)
            self.tf = None
        else:
            fd, self.tmp = tempfile.mkstemp(prefix=".thinp-save-", suffix=".tar", dir=parent)
            self.f = os.fdopen(fd, "wb")
            self.tf = tarfile.open(fileobj=self.f, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()
        self.written: set[str] = set()

    def _mkdirs(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self.dirs:
                continue
            self.dirs.add(d)
            if self.tf is not None:
                ti = tarfile.TarInfo(d + "/")
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                self.tf.addfile(ti)
            else:
                os.makedirs(os.path.join(self.tmp, d), exist_ok=True)

    def add(self, name: str, data: bytes | None = None, stream=None, size: int | None = None) -> None:
        if name in self.written:
            return
        self.written.add(name)
        self._mkdirs(name)
        if data is not None:
            stream, size = io.BytesIO(data), len(data)
        if self.tf is not None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = size, 0o644, 0
            self.tf.addfile(ti, stream)
        else:
            with open(os.path.join(self.tmp, name), "wb") as f:
                n = 0
                while True:
                    chunk = stream.read(ts.CHUNK_BYTES)
                    if not chunk:
                        break
                    f.write(chunk)
                    n += len(chunk)
                if n != size:
                    raise ImageFormatError(f"{name}: wrote {n} bytes, expected {size}")

    def commit(self) -> None:
        if self.tf is not None:
            self.tf.close()
            self.f.close()
            os.replace(self.tmp, self.final)
        else:
            if os.path.exists(self.final):
                if os.path.isdir(self.final) and not os.listdir(self.final):
                    os.rmdir(self.final)
                else:
                    raise FileExistsError(self.final)
            os.rename(self.tmp, self.final)

    def abort(self) -> None:
        if self.tf is not None:
            try:
                self.tf.close()
                self.f.close()
            except Exception:
                pass
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class _Counting(io.RawIOBase):
    def __init__(self, inner, hasher):
        self.inner, self.hasher, self.n = inner, hasher, 0

    def readable(self):
        return True

    def readinto(self, b):
        data = self.inner.read(len(b))
        b[:len(data)] = data
        self.hasher.update(data)
        self.n += len(data)
        return len(data)


def save(images: Sequence[Image] | Image, path, *, format: str = "docker",
         directory: bool = False) -> None:
    """Write ``images`` as a Docker 25-style save (``format="docker"``) or a pure
    OCI layout (``format="oci"``), to a tar file or (``directory=True``) a directory.

    Layers are written uncompressed, so a layer blob's digest is its DiffID;
    each is streamed and its digest checked while writing.
    """
    if isinstance(images, Image):
        images = [images]
    unique: dict[str, Image] = {}
    for img in images:   # an image named twice is written once, with all its tags
        if img.id in unique and unique[img.id] is not img:
            merged = Image(img.config_bytes, unique[img.id].layers, unique[img.id].tags, img.parent)
            for t in img.tags:
                merged.add_tag(t)
            unique[img.id] = merged
        else:
            unique.setdefault(img.id, img)
    images = list(unique.values())
    if format not in ("docker", "oci"):
        raise ValueError(f"format must be 'docker' or 'oci', not {format!r}")
    out = _Out(os.fspath(path), directory)
    try:
        index_manifests = []
        docker_manifest = []
        repositories: dict[str, dict[str, str]] = {}
        if not directory:
            out.add("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        for img in images:
            layer_descs = []
            for layer, diff_id in zip(img.layers, img.diff_ids):
                if layer.tar_size is None:
                    layer.scan()
                blob = _blob_path(diff_id)
                if blob not in out.written:
                    hasher = hashlib.sha256()
                    src = _Counting(layer.open_uncompressed(), hasher)
                    out.add(blob, stream=src, size=layer.tar_size)
                    if "sha256:" + hasher.hexdigest() != diff_id or src.n != layer.tar_size:
                        raise ImageFormatError(f"{layer.name}: changed while saving (DiffID mismatch)")
                layer_descs.append({"mediaType": MT_OCI_LAYER, "digest": diff_id,
                                    "size": layer.tar_size})
            cfg_digest = img.id
            out.add(_blob_path(cfg_digest), img.config_bytes)
            manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                        "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg_digest,
                                   "size": len(img.config_bytes)},
                        "layers": layer_descs}
            mbytes = canonical_json(manifest)
            mdigest = "sha256:" + hashlib.sha256(mbytes).hexdigest()
            out.add(_blob_path(mdigest), mbytes)
            mdesc = {"mediaType": MT_OCI_MANIFEST, "digest": mdigest, "size": len(mbytes)}
            if img.tags:
                for t in img.tags:
                    repo, tag, ref = _familiar_repo_tag(t)
                    index_manifests.append({**mdesc, "annotations": {
                        ANN_CONTAINERD_NAME: str(ref), ANN_REF_NAME: tag}})
                    if layer_descs:
                        repositories.setdefault(repo, {})[tag] = layer_descs[-1]["digest"][7:]
            else:
                index_manifests.append(mdesc)
            docker_manifest.append({
                "Config": _blob_path(cfg_digest),
                "RepoTags": list(img.tags) or None,
                "Layers": [_blob_path(d["digest"]) for d in layer_descs],
                "LayerSources": {d["digest"]: d for d in layer_descs},
            })
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index_manifests}
        out.add("index.json", canonical_json(index))
        if format == "docker":
            out.add("manifest.json", canonical_json(docker_manifest))
            if repositories:
                out.add("repositories", canonical_json(repositories))
        if directory:
            out.add("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        out.commit()
    except BaseException:
        out.abort()
        raise

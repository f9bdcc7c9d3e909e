"""Test-side writers of docker-save and OCI-layout archives, independent of
thinp's own ``save``, so that the readers are tested against hand-made input."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def config_for(diff_ids, arch="amd64", os_="linux", extra=None) -> bytes:
    cfg = {"architecture": arch, "os": os_, "config": {"Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
           "history": [{"created_by": f"step {i}"} for i in range(len(diff_ids))]}
    cfg.update(extra or {})
    return json.dumps(cfg).encode()


def legacy_save(layers: list[bytes], tags=("test:latest",), diff_ids=None, config=None,
                manifest_layers=None) -> bytes:
    """A legacy docker save: <n>/layer.tar, <hex>.json, manifest.json."""
    diff_ids = diff_ids if diff_ids is not None else [sha(l) for l in layers]
    cfg = config if config is not None else config_for(diff_ids)
    files = {}
    paths = []
    for i, l in enumerate(layers):
        files[f"l{i}/layer.tar"] = l
        paths.append(f"l{i}/layer.tar")
    files[sha(cfg)[7:] + ".json"] = cfg
    files["manifest.json"] = json.dumps([{
        "Config": sha(cfg)[7:] + ".json", "RepoTags": list(tags),
        "Layers": manifest_layers if manifest_layers is not None else paths}]).encode()
    return tar_of(files)


MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


class OCILayout:
    """Builds an OCI image layout in memory: blobs + index.json."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.index: list[dict] = []

    def blob(self, data: bytes) -> dict:
        d = sha(data)
        self.blobs[d] = data
        return {"digest": d, "size": len(data)}

    def image(self, layers: list[bytes], arch="amd64", layer_mt=MT_LAYER,
              config_mt=MT_CONFIG, artifact_type=None) -> dict:
        import gzip
        descs = []
        diff_ids = []
        for l in layers:
            diff_ids.append(sha(gzip.decompress(l) if l[:2] == b"\x1f\x8b" else l))
            descs.append({"mediaType": layer_mt, **self.blob(l)})
        cfg = config_for(diff_ids, arch=arch)
        man = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
               "config": {"mediaType": config_mt, **self.blob(cfg)}, "layers": descs}
        if artifact_type:
            man["artifactType"] = artifact_type
        return {"mediaType": MT_MANIFEST, **self.blob(json.dumps(man).encode()),
                "platform": {"architecture": arch, "os": "linux"}}

    def multi(self, manifests: list[dict]) -> dict:
        idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
        return {"mediaType": MT_INDEX, **self.blob(json.dumps(idx).encode())}

    def tag(self, desc: dict, name: str | None) -> None:
        d = dict(desc)
        d.pop("platform", None) if d["mediaType"] == MT_INDEX else None
        if name:
            d["annotations"] = {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
        self.index.append(d)

    def files(self) -> dict[str, bytes]:
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                 "index.json": json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                                           "manifests": self.index}).encode()}
        for d, data in self.blobs.items():
            files["blobs/sha256/" + d[7:]] = data
        return files

    def tar(self) -> bytes:
        return tar_of(self.files())

    def write_dir(self, root) -> None:
        import os
        for name, data in self.files().items():
            p = os.path.join(root, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)

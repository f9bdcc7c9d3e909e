"""pull/push/search against Debian's real docker-registry (distribution 2.8)
on a free loopback port, and ``oci:DIR`` as a registry."""
from __future__ import annotations

import json
import os

import pytest

from thinp.docker.registry import HTTPRegistry, registry_url
from thinp.image.archive import MT_OCI_INDEX


def _blobs(docker):
    return sorted(os.listdir(os.path.join(docker.root, "image", "layers")))


def _no_temp(docker):
    return [n for n in os.listdir(docker.root) if n.startswith((".pull-", ".push-"))] == []


def _pushed(docker, test_image, registry, name="dive:v1"):
    docker.ok("load", "-i", test_image)
    docker.ok("tag", "dive-test", f"{registry.host}/{name}")
    return docker.ok("push", f"{registry.host}/{name}", stats=True)


def test_push_pull_round_trip(docker, test_image, registry):
    rc, out, err = docker.run("push", f"{registry.host}/dive:v1")
    assert rc == 1 and "An image does not exist locally with the tag" in err
    docker.ok("load", "-i", test_image)
    docker.ok("tag", "dive-test", f"{registry.host}/dive:v1")
    rc, out, err = docker.run("push", f"{registry.host}/dive:v1", stats=True)
    lines = out.splitlines()
    assert lines[0] == f"The push refers to repository [{registry.host}/dive]"
    assert len(lines) == 16 and all(ln.endswith(": Pushed") for ln in lines[1:15])
    assert lines[15].startswith("v1: digest: sha256:")
    sent_first = int(err.split("bytes transferred ")[1].split(" B")[0].replace(",", ""))
    assert sent_first > 1_400_000            # every layer tar went over the wire
    # again: the registry has every blob (HEAD), only the manifest is sent
    rc, out, err = docker.run("push", f"{registry.host}/dive:v1", stats=True)
    assert all(ln.endswith(": Layer already exists") for ln in out.splitlines()[1:15])
    size = int(out.splitlines()[15].rsplit(" ", 1)[1])
    assert f"bytes transferred {size:,} B" in err
    # another repository of the same registry: blobs are mounted, not sent; chunked upload path
    docker.ok("tag", "dive-test", f"{registry.host}/other/dive")
    out = docker.ok("push", "--chunk-size", "4096", f"{registry.host}/other/dive")
    assert out.splitlines()[0] == "Using default tag: latest"
    assert all(ln.endswith(": Mounted from dive") for ln in out.splitlines()[2:16])
    rows = json.loads(docker.ok("search", "--registry", registry.url, "--format", "json"))
    assert rows == [{"name": "dive", "tags": ["v1"]}, {"name": "other/dive", "tags": ["latest"]}]
    assert docker.ok("search", "--registry", registry.url, "oth").splitlines()[1].split() == ["other/dive", "latest"]
    # rmi everything, pull back: the same image ID, every layer fetched and verified
    docker.ok("rmi", f"{registry.host}/dive:v1", f"{registry.host}/other/dive", "dive-test")
    assert _blobs(docker) == []
    rc, out, err = docker.run("pull", f"{registry.host}/dive:v1", stats=True)
    assert rc == 0, err
    assert out.count(": Pull complete") == 14 and "Status: Downloaded newer image" in out
    assert "layers +14 shared 0" in err
    got = int(err.split("bytes transferred ")[1].split(" B")[0].replace(",", ""))
    assert got > 1_400_000
    assert docker.ok("images", "-q").split() == ["75ae28b8ebf8"]
    # the same layers by ChainID under another name: nothing fetched but the manifest and config
    rc, out, err = docker.run("pull", f"{registry.host}/other/dive", stats=True)
    assert out.count(": Already exists") == 14 and "Status: Image is up to date" in out
    assert "layers +0 shared 14" in err
    got2 = int(err.split("bytes transferred ")[1].split(" B")[0].replace(",", ""))
    assert got2 < 10_000
    # the pulled image still runs and saves as the original did
    assert len(_blobs(docker)) == 14 and _no_temp(docker)


def test_digest_mismatch_stores_nothing(docker, test_image, registry):
    _pushed(docker, test_image, registry)
    docker.ok("rmi", f"{registry.host}/dive:v1", "dive-test")
    reg = HTTPRegistry(registry.url)
    body, _mt, _d = reg.manifest("dive", "v1")
    layers = json.loads(body)["layers"]
    victim = registry.blob_data(layers[7]["digest"])
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF
    victim.write_bytes(bytes(data))
    line = docker.fails("pull", f"{registry.host}/dive:v1")
    assert "digest mismatch" in line and layers[7]["digest"] in line
    assert docker.ok("images", "-q") == "" and _blobs(docker) == [] and _no_temp(docker)


def test_interrupted_pull_leaves_no_orphans(docker, test_image, registry):
    _pushed(docker, test_image, registry)
    docker.ok("rmi", f"{registry.host}/dive:v1", "dive-test")
    body, _mt, _d = HTTPRegistry(registry.url).manifest("dive", "v1")
    layers = json.loads(body)["layers"]
    registry.blob_data(layers[10]["digest"]).unlink()     # the registry loses a blob mid-image
    line = docker.fails("pull", f"{registry.host}/dive:v1")
    assert layers[10]["digest"] in line
    assert docker.ok("images", "-q") == "" and _blobs(docker) == [] and _no_temp(docker)
    with open(os.path.join(docker.root, "state.json")) as f:
        assert json.load(f)["images"] == []


def test_index_platform_choice(docker, test_image, registry):
    _pushed(docker, test_image, registry)
    reg = HTTPRegistry(registry.url)
    body, mt, digest = reg.manifest("dive", "v1")
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        {"mediaType": mt, "digest": digest, "size": len(body),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    reg.put_manifest("dive", "multi", json.dumps(index).encode(), MT_OCI_INDEX)
    line = docker.fails("pull", f"{registry.host}/dive:multi")
    assert "no matching manifest for linux/amd64" in line and "linux/arm64/v8" in line
    out = docker.ok("pull", "--platform", "linux/arm64", f"{registry.host}/dive:multi")
    assert f"Digest: {digest}" in out and out.count("Already exists") == 14
    # by digest: no tag is made
    docker.ok("pull", f"{registry.host}/dive@{digest}")


def test_only_loopback_registries(docker):
    assert "only to registries on this machine" in docker.fails("pull", "busybox")
    assert "not a loopback address" in docker.fails("pull", "--registry", "http://10.1.2.3:5000", "busybox")
    assert "not a loopback address" in docker.fails("search", "--registry", "example.com:5000")
    with pytest.raises(ValueError, match="only http://"):
        registry_url("https://127.0.0.1:5000")
    import socket

    with socket.socket() as s:          # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = docker.fails("pull", f"127.0.0.1:{port}/x")
    assert f"http://127.0.0.1:{port}: GET /v2/x/manifests/latest" in line and "refused" in line.lower()


def test_oci_dir_registry(docker, test_image, tmp_path):
    reg = f"oci:{tmp_path / 'oci'}"
    docker.ok("load", "-i", test_image)
    docker.ok("tag", "dive-test", "me/dive:1")
    docker.ok("push", "--registry", reg, "me/dive:1")
    assert docker.ok("search", "--registry", reg).splitlines()[1].split() == ["me/dive", "1"]
    docker.ok("rmi", "me/dive:1", "dive-test")
    out = docker.ok("pull", "--registry", reg, "me/dive:1")
    assert "Downloaded newer image for me/dive:1" in out
    assert docker.ok("images", "-q").split() == ["75ae28b8ebf8"]


def test_pull_interrupted_by_the_user(docker, test_image, registry, monkeypatch):
    _pushed(docker, test_image, registry)
    docker.ok("rmi", f"{registry.host}/dive:v1", "dive-test")
    calls = []
    real_blob = HTTPRegistry.blob

    def blob(self, *a, **kw):
        calls.append(a)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_blob(self, *a, **kw)
    monkeypatch.setattr(HTTPRegistry, "blob", blob)
    rc, out, err = docker.run("pull", f"{registry.host}/dive:v1")
    assert rc == 130 and err == "thinp: interrupted\n" and len(calls) == 6
    monkeypatch.undo()
    assert docker.ok("images", "-a", "-q") == "" and _blobs(docker) == [] and _no_temp(docker)


def test_chunked_push(docker, test_image, registry, tmp_path, capsys, monkeypatch):
    from .conftest import Docker

    methods = []
    real = HTTPRegistry._request

    def spy(self, method, path, *a, **kw):
        methods.append(method)
        return real(self, method, path, *a, **kw)
    monkeypatch.setattr(HTTPRegistry, "_request", spy)
    docker.ok("load", "-i", test_image)
    docker.ok("tag", "dive-test", f"{registry.host}/chunked:1")
    rc, out, err = docker.run("push", "--chunk-size", "65536", f"{registry.host}/chunked:1", stats=True)
    assert rc == 0, err
    assert out.count(": Pushed") == 14
    # the 1.2 MB bottom layer alone takes 19 PATCHes of 64 KiB
    assert methods.count("PATCH") > 19 and methods.count("PUT") == 15 + 1
    # read back by another root: the registry assembled every chunked blob whole (digests verified)
    other = Docker(tmp_path / "other", capsys)
    out = other.ok("pull", f"{registry.host}/chunked:1")
    assert out.count("Pull complete") == 14 and other.ok("images", "-q").split() == ["75ae28b8ebf8"]


def _skopeo(*args):
    import shutil
    import subprocess

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_skopeo_pushes_gzip_layers_thinp_pulls(docker, registry, fixtures_dir):
    """A real client (skopeo) pushes a Docker v2 manifest with gzip layers;
    thinp pulls it and gets the image ``docker load`` of the archive gives."""
    archive = fixtures_dir / "images" / "whiteout_dir.tar"
    _skopeo("copy", "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{registry.host}/wd:1")
    out = docker.ok("pull", f"{registry.host}/wd:1")
    assert out.count("Pull complete") == 4
    pulled = json.loads(docker.ok("inspect", f"{registry.host}/wd:1"))[0]["Id"]
    docker.ok("rmi", f"{registry.host}/wd:1")
    loaded = docker.ok("load", "-i", archive).split(": ", 1)[1].strip()
    assert json.loads(docker.ok("inspect", loaded))[0]["Id"] == pulled


def test_thinp_pushes_skopeo_reads(docker, test_image, registry, tmp_path):
    """What thinp pushes a real client copies out as an OCI layout that loads
    back as the same image."""
    _pushed(docker, test_image, registry)
    raw = json.loads(_skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/dive:v1"))
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json" and len(raw["layers"]) == 14
    _skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/dive:v1", f"oci:{tmp_path / 'oci'}:dive")
    docker.ok("rmi", f"{registry.host}/dive:v1", "dive-test")
    out = docker.ok("load", "-i", tmp_path / "oci")
    assert json.loads(docker.ok("images", "--format", "json"))[0]["image_id"].startswith("sha256:75ae28b8ebf8"), out

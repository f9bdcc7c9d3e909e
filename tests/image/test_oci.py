"""OCI layouts: indexes, platforms, artifacts, media types, digests."""
import gzip
import json

import pytest

from thinp.errors import ImageFormatError
from thinp.image import load

from .builders import MT_LAYER, OCILayout, sha, tar_of
from .conftest import make_tar

L_AMD = make_tar([("amd64.txt", "f", b"x86")])
L_ARM = make_tar([("arm64.txt", "f", b"arm")])
L_BASE = make_tar([("etc/", "d"), ("etc/os-release", "f", b"ID=test\n")])


def _write(tmp_path, layout, as_dir):
    if as_dir:
        layout.write_dir(tmp_path / "layout")
        return tmp_path / "layout"
    p = tmp_path / "layout.tar"
    p.write_bytes(layout.tar())
    return p


@pytest.mark.parametrize("as_dir", [True, False])
def test_multi_arch_picks_platform(tmp_path, as_dir):
    o = OCILayout()
    amd = o.image([L_BASE, L_AMD], arch="amd64")
    arm = o.image([L_BASE, L_ARM], arch="arm64")
    sbom = o.image([make_tar([("sbom.json", "f", b"{}")])],
                   config_mt="application/vnd.example.sbom.config+json")
    sbom["platform"] = {"architecture": "unknown", "os": "unknown"}
    o.tag(o.multi([amd, arm, sbom]), "docker.io/library/multi:1")
    path = _write(tmp_path, o, as_dir)
    [img] = load(path)
    assert img.tags == ["multi:1"]
    assert img.config["architecture"] == "amd64"
    assert img.rootfs().paths() == ["amd64.txt", "etc", "etc/os-release"]
    [img_arm] = load(path, platform="linux/arm64")
    assert img_arm.rootfs().paths() == ["arm64.txt", "etc", "etc/os-release"]
    # the two images share their base layer's ChainID
    assert img.chain_ids[0] == img_arm.chain_ids[0]
    with pytest.raises(ImageFormatError, match="no image for platform linux/s390x among 2 images; "
                                               "the archive offers linux/amd64, linux/arm64"):
        load(path, platform="linux/s390x")


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("as_dir", [True, False])
def test_a_single_foreign_platform_image_loads_whatever_platform_is_asked(tmp_path, as_dir, nested):
    """``docker load`` of a layout holding one linux/arm64 image loads it on amd64."""
    o = OCILayout()
    arm = o.image([L_BASE, L_ARM], arch="arm64")
    o.tag(o.multi([arm]) if nested else arm, "docker.io/library/armonly:1")
    path = _write(tmp_path, o, as_dir)
    for asked in ("linux/amd64", "linux/s390x"):
        [img] = load(path, platform=asked)
        assert img.platform == "linux/arm64" and "platform=linux/arm64" in repr(img)
        assert img.tags == ["armonly:1"]
        assert img.rootfs().paths() == ["arm64.txt", "etc", "etc/os-release"]


def test_an_index_whose_other_platforms_were_not_saved_loads_the_one_present(tmp_path):
    """Docker 25+ saves a multi-platform index whole but only the pulled
    platform's blobs: the absent manifests are not on offer."""
    o = OCILayout()
    amd = o.image([L_BASE, L_AMD], arch="amd64")
    arm = o.image([L_BASE, L_ARM], arch="arm64")
    o.tag(o.multi([amd, arm]), "docker.io/library/half:1")
    del o.blobs[amd["digest"]]
    [img] = load(_write(tmp_path, o, False), platform="linux/amd64")
    assert img.platform == "linux/arm64" and img.rootfs().paths() == ["arm64.txt", "etc", "etc/os-release"]
    del o.blobs[arm["digest"]]
    with pytest.raises(ImageFormatError, match="is missing from the archive"):
        load(_write(tmp_path, o, False))


def test_one_image_per_tagged_entry_and_artifacts_skipped(tmp_path):
    o2 = OCILayout()
    a = o2.image([L_AMD])
    b = o2.image([gzip.compress(make_tar([("gz.txt", "f", b"z")]))], layer_mt=MT_LAYER + "+gzip")
    sig = o2.image([make_tar([("sig", "f", b"s")])], artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json")
    # cosign's classic signature: an image config, but a JSON "layer"
    cosign = o2.image([b'{"critical":{}}'], layer_mt="application/vnd.dev.cosign.simplesigning.v1+json")
    spdx = o2.image([b'{"spdxVersion":"SPDX-2.3"}'], layer_mt="application/spdx+json")
    o2.tag(a, "docker.io/library/a:1")
    o2.tag(a, "docker.io/library/a:2")
    o2.tag(b, "example.com/b:latest")
    o2.tag(sig, "example.com/b:sha256-abc.sig")
    o2.tag(cosign, "example.com/b:sha256-abc.sig2")
    o2.tag(spdx, "example.com/b:sha256-abc.sbom")
    imgs = load(_write(tmp_path, o2, False))
    assert [i.tags for i in imgs] == [["a:1", "a:2"], ["example.com/b:latest"]]
    assert imgs[1].rootfs().paths() == ["gz.txt"]


def test_unknown_layer_media_type(tmp_path):
    o = OCILayout()
    o.tag(o.image([L_AMD], layer_mt="application/x-unknown-layer"), "docker.io/library/x:1")
    with pytest.raises(ImageFormatError, match="unsupported media type 'application/x-unknown-layer'"):
        load(_write(tmp_path, o, False))


def test_unknown_descriptor_media_type(tmp_path):
    o = OCILayout()
    d = o.image([L_AMD])
    d["mediaType"] = "application/vnd.example.thing"
    o.tag(d, "docker.io/library/x:1")
    with pytest.raises(ImageFormatError, match="unsupported media type 'application/vnd.example.thing'"):
        load(_write(tmp_path, o, True))


def test_tampered_blob_names_the_blob(tmp_path):
    o = OCILayout()
    o.tag(o.image([L_BASE]), "docker.io/library/x:1")
    files = o.files()
    victim = "blobs/sha256/" + sha(L_BASE)[7:]
    data = bytearray(files[victim])
    data[1026] ^= 0xFF     # inside the content of etc/os-release (header at 512, data at 1024)
    files[victim] = bytes(data)
    p = tmp_path / "bad.tar"
    p.write_bytes(tar_of(files))
    with pytest.raises(ImageFormatError, match=sha(L_BASE)[7:19]) as e:
        load(p)
    assert "mismatch" in str(e.value)


def test_declared_size_mismatch(tmp_path):
    o = OCILayout()
    d = o.image([L_BASE])
    man = json.loads(o.blobs[d["digest"]])
    man["layers"][0]["size"] += 1
    mb = json.dumps(man).encode()
    d2 = {"mediaType": d["mediaType"], **o.blob(mb)}
    o.tag(d2, "docker.io/library/x:1")
    with pytest.raises(ImageFormatError, match="declared size"):
        load(_write(tmp_path, o, True))


def test_tampered_manifest(tmp_path):
    o = OCILayout()
    d = o.image([L_BASE])
    o.blobs[d["digest"]] = o.blobs[d["digest"]].replace(b'"schemaVersion": 2', b'"schemaVersion": 3')
    o.tag(d, "docker.io/library/x:1")
    with pytest.raises(ImageFormatError, match="digest mismatch"):
        load(_write(tmp_path, o, True))


def test_missing_oci_layout_file(tmp_path):
    o = OCILayout()
    o.tag(o.image([L_BASE]), "docker.io/library/x:1")
    files = o.files()
    del files["oci-layout"]
    p = tmp_path / "x.tar"
    p.write_bytes(tar_of(files))
    with pytest.raises(ImageFormatError, match="oci-layout"):
        load(p)


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(tar_of({"hello.txt": b"hi"}))
    with pytest.raises(ImageFormatError, match="not an image archive"):
        load(p)


def test_each_named_entry_is_one_image_whatever_the_others_platforms(tmp_path):
    """Two names, one arm64-only and one multi-platform: the arm64 one loads
    as it is, the multi-platform one by ``platform``."""
    o = OCILayout()
    o.tag(o.image([L_ARM], arch="arm64"), "docker.io/library/armonly:1")
    amd = o.image([L_BASE, L_AMD], arch="amd64")
    arm = o.image([L_BASE, L_ARM], arch="arm64")
    o.tag(o.multi([amd, arm]), "docker.io/library/multi:1")
    path = _write(tmp_path, o, False)
    imgs = load(path, platform="linux/amd64")
    assert [(i.tags, i.platform) for i in imgs] == [(["armonly:1"], "linux/arm64"), (["multi:1"], "linux/amd64")]
    with pytest.raises(ImageFormatError, match="multi:1: no image for platform linux/s390x among 2 images; "
                                               "the archive offers linux/amd64, linux/arm64"):
        load(path, platform="linux/s390x")


def test_unnamed_entries_of_several_platforms_are_chosen_among(tmp_path):
    o = OCILayout()
    o.tag(o.image([L_BASE, L_AMD], arch="amd64"), None)
    o.tag(o.image([L_BASE, L_ARM], arch="arm64"), None)
    path = _write(tmp_path, o, True)
    [img] = load(path, platform="linux/arm64")
    assert img.platform == "linux/arm64" and img.tags == []


def test_a_docker_save_of_a_foreign_platform_image_loads_and_says_so(tmp_path):
    from .builders import config_for, legacy_save

    cfg = config_for([sha(L_ARM)], arch="arm64", extra={"variant": "v8"})
    p = tmp_path / "save.tar"
    p.write_bytes(legacy_save([L_ARM], tags=("armsave:1",), config=cfg))
    [img] = load(p, platform="linux/amd64")
    assert img.platform == "linux/arm64/v8" and img.rootfs().paths() == ["arm64.txt"]

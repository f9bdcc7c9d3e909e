"""Real tools read what thinp writes, and thinp reads what they write.

skopeo and umoci (Debian packages ``skopeo``, ``umoci``) are the reference;
each test skips with the reason when the tool is not installed.
"""
import json
import os
import shutil
import subprocess

import pytest

from thinp.image import load, save

from .conftest import fixture_path

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed (apt-get install skopeo)")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci not installed (apt-get install umoci)")
pytestmark = pytest.mark.real

IMAGES = ["test-docker-image.tar", "hello-world-v25.tar", "whiteout_image.tar", "whiteout_dir.tar",
          "overwritten_file.tar"]


def _run(*args) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


@needs_skopeo
@pytest.mark.parametrize("name", IMAGES)
def test_skopeo_reads_our_docker_save(name, tmp_path):
    [img] = load(fixture_path("images", name))
    out = tmp_path / "out.tar"
    save([img], out)
    ref = f"docker-archive:{out}" + (f":{img.tags[0]}" if img.tags else "")
    info = json.loads(_run(SKOPEO, "inspect", ref))
    assert info["Layers"] == img.diff_ids
    config = _run(SKOPEO, "inspect", "--config", "--raw", ref).encode()
    assert config == img.config_bytes
    # and the OCI side of the same archive
    if img.tags:
        tag = img.tags[0].rsplit(":", 1)[1]
        oci = json.loads(_run(SKOPEO, "inspect", "--raw", f"oci-archive:{out}:{tag}"))
        assert [l["digest"] for l in oci["layers"]] == img.diff_ids


@needs_umoci
@pytest.mark.parametrize("name", ["test-docker-image.tar", "whiteout_image.tar", "whiteout_dir.tar",
                                  "overwritten_file.tar"])
def test_umoci_unpack_matches_our_flatten(name, tmp_path):
    """umoci applies the layers (whiteouts, opaques, hardlinks) on a real filesystem."""
    [img] = load(fixture_path("images", name))
    layout = tmp_path / "layout"
    save([img], layout, format="oci", directory=True)
    tag = img.tags[0].rsplit(":", 1)[1]
    bundle = tmp_path / "bundle"
    _run(UMOCI, "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle))
    root = bundle / "rootfs"
    real = sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)
    assert real == img.rootfs().paths()


@needs_skopeo
@pytest.mark.parametrize("name", ["test-docker-image.tar", "whiteout_dir.tar", "overwritten_file.tar"])
def test_we_read_skopeo_oci_layout(name, tmp_path):
    [ours] = load(fixture_path("images", name))
    dest = tmp_path / "sk"
    _run(SKOPEO, "copy", "--quiet", f"docker-archive:{fixture_path('images', name)}", f"oci:{dest}:v1")
    [img] = load(dest)       # skopeo writes only a bare ref.name: the image comes back untagged
    assert img.diff_ids == ours.diff_ids
    assert img.chain_ids == ours.chain_ids
    assert img.rootfs().paths() == ours.rootfs().paths()


@needs_umoci
def test_umoci_unpacks_a_layer_with_a_root_entry_and_absolute_names_as_we_flatten_it(tmp_path):
    """What kaniko writes: a ``/`` entry and ``/``-rooted names; umoci (like
    Docker) takes them inside the rootfs."""
    from thinp.image import import_

    from .conftest import make_tar

    layer = make_tar([("/", "d", None, {"mode": 0o751}), ("/etc/", "d"), ("/etc/os-release", "f", b"ID=k\n"),
                      ("/bin/", "d"), ("/bin/sh", "f", b"elf", {"mode": 0o755}), ("/bin/ash", "h", "/bin/sh"),
                      ("/usr/", "d"), ("/usr/lib", "l", "../lib")])
    img = import_(layer, tags=["kaniko:1"])
    layout = tmp_path / "layout"
    save([img], layout, format="oci", directory=True)
    bundle = tmp_path / "bundle"
    _run(UMOCI, "unpack", "--rootless", "--image", f"{layout}:1", str(bundle))
    root = bundle / "rootfs"
    real = sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)
    fs = img.rootfs()
    assert real == fs.paths() == ["bin", "bin/ash", "bin/sh", "etc", "etc/os-release", "usr", "usr/lib"]
    assert os.stat(root / "bin" / "ash").st_ino == os.stat(root / "bin" / "sh").st_ino
    assert oct(os.stat(root).st_mode & 0o777) == oct(fs[""].mode) == oct(0o751)

"""Every real image (the shared fixtures, and the images tests build) loads
with verified DiffIDs, and each layer lists exactly what GNU ``tar -tv``
lists: names (as Docker cleans them), types, modes, owners, sizes, links."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from thinp.image import load
from thinp.image import tarstream as ts
from thinp.validate.capture import SCENARIO_FILES, build_tools_image

from .builders import OCILayout, legacy_save
from .conftest import FIXTURES, make_tar

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")

_KIND = {"-": "file", "d": "dir", "l": "symlink", "h": "hardlink", "c": "char", "b": "block", "p": "fifo"}
_LINE = re.compile(r"^(\S)(\S{9})\s+(\d+)/(\d+)\s+(\d+|\d+,\s*\d+)\s+\d{4}-\d\d-\d\d \d\d:\d\d (.*)$")


def _perm(s: str) -> int:
    """``rwsr-xr-t`` to bits: s/t are x plus set-id/sticky, S/T the latter alone."""
    mode = 0
    for i, c in enumerate(s):
        if c not in "-ST":
            mode |= 1 << (8 - i)
    if s[2] in "sS":
        mode |= 0o4000
    if s[5] in "sS":
        mode |= 0o2000
    if s[8] in "tT":
        mode |= 0o1000
    return mode


def _clean(name: str) -> str:
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            parts = parts[:-1]
            continue
        parts.append(p)
    return "/".join(parts)


def _tar_listing(path) -> list[tuple]:
    r = subprocess.run(["tar", "--numeric-owner", "--quoting-style=literal", "-tvf", str(path)],
                       capture_output=True, text=True, errors="surrogateescape", check=True)
    rows = []
    for line in r.stdout.splitlines():
        m = _LINE.match(line)
        assert m, line
        kind = _KIND[m.group(1)]
        rest = m.group(6)
        link = ""
        if kind == "symlink":
            rest, link = rest.split(" -> ", 1)
        elif kind == "hardlink":
            rest, link = rest.split(" link to ", 1)
            link = _clean(link)
        size = int(m.group(5)) if kind == "file" else 0
        rows.append((_clean(rest), kind, _perm(m.group(2)), int(m.group(3)), int(m.group(4)), size, link))
    return rows


def _our_listing(layer) -> list[tuple]:
    with layer.open_uncompressed() as f:
        inp = ts.HashingInput(f, layer.name)
        return [(h.path, h.kind, h.mode, h.uid, h.gid, h.size, h.linkname) for h, _ in ts.iter_tar(inp)]


def _check_archive(path, tmp_path, **kw):
    images = load(path, **kw)
    assert images
    for img in images:
        for i, layer in enumerate(img.layers):
            layer.scan()    # DiffID (and blob digest) verified against the config
            assert layer.diff_id == img.diff_ids[i]
            blob = tmp_path / f"{img.short_id}-{i}.tar"
            with layer.open_uncompressed() as f, open(blob, "wb") as out:
                shutil.copyfileobj(f, out)
            assert _our_listing(layer) == _tar_listing(blob), (path, i)
    return images


def _fixture_archives():
    d = FIXTURES / "images"
    return sorted(p.name for p in d.glob("*.tar")) if d.is_dir() else []


@pytest.mark.parametrize("name", _fixture_archives() or ["<no fixtures>"])
def test_fixture_images_list_as_tar_lists_them(name, tmp_path):
    if name == "<no fixtures>":
        pytest.skip(f"no image fixtures in {FIXTURES / 'images'}")
    _check_archive(FIXTURES / "images" / name, tmp_path)


def test_the_capture_tools_image_lists_as_tar_lists_it(tmp_path):
    try:
        build_tools_image(tmp_path / "tools.tar", SCENARIO_FILES)
    except Exception as e:   # a host without one of the tools
        pytest.skip(f"cannot build the tools image here: {e}")
    [img] = _check_archive(tmp_path / "tools.tar", tmp_path)
    paths = img.rootfs().paths()
    assert "bin/sh" in paths and "data/hl2" in paths


def test_a_kaniko_style_image_with_a_root_entry_and_absolute_names(tmp_path):
    layer = make_tar([("/", "d", None, {"mode": 0o755}), ("/etc/", "d"), ("/etc/os-release", "f", b"ID=x\n"),
                      ("/bin/", "d"), ("/bin/sh", "f", b"elf", {"mode": 0o755}), ("/bin/ash", "h", "/bin/sh"),
                      ("/dev/", "d"), ("/dev/null", "c", (1, 3)), ("/run/p", "p"), ("/lib", "l", "usr/lib")])
    p = tmp_path / "kaniko.tar"
    p.write_bytes(legacy_save([layer], tags=("kaniko:1",)))
    [img] = _check_archive(p, tmp_path)
    assert img.rootfs().paths() == ["bin", "bin/ash", "bin/sh", "dev", "dev/null", "etc", "etc/os-release",
                                    "lib", "run", "run/p"]


def test_an_oci_layout_with_one_foreign_platform_image(tmp_path):
    o = OCILayout()
    o.tag(o.image([make_tar([("etc/", "d"), ("etc/arch", "f", b"arm64\n")])], arch="arm64"),
          "docker.io/library/arm:1")
    o.write_dir(tmp_path / "layout")
    [img] = _check_archive(tmp_path / "layout", tmp_path, platform="linux/amd64")
    assert img.platform == "linux/arm64"


def _gnu_tar_layer(tmp_path, fmt: str, absolute: bool) -> bytes:
    """A layer written by GNU tar itself from a real directory tree: ``./``
    names (the root entry included), or ``/``-rooted ones (``-P``)."""
    src = tmp_path / f"src-{fmt}"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    (src / "etc" / "group").write_bytes(b"root:x:0:\n")
    os.link(src / "etc" / "passwd", src / "etc" / "passwd-")
    os.symlink("../etc/passwd", src / "etc" / "link")
    deep = src / "d" / ("n" * 60) / ("m" * 60)
    if fmt != "v7":           # v7 names stop at 100 bytes
        deep.mkdir(parents=True)
        (deep / "long-file-name").write_bytes(b"x" * 700)
    if fmt != "v7":           # v7 has no fifo type
        os.mkfifo(src / "fifo")
    os.chmod(src, 0o750)
    os.chown(src, 1234, 4321)
    out = tmp_path / f"layer-{fmt}.tar"
    args = ["tar", f"--format={fmt}", "--numeric-owner", "-cf", str(out), "-C", str(src)]
    if absolute:
        args[1:1] = ["-P", "--transform=s,^\\./*,/,S"]   # names and hardlink targets, not symlink text
    subprocess.run([*args, "."], check=True, capture_output=True)
    return out.read_bytes()


@pytest.mark.parametrize("absolute", [False, True], ids=["dot", "rooted"])
@pytest.mark.parametrize("fmt", ["v7", "ustar", "gnu", "posix"])
def test_layers_written_by_gnu_tar_in_every_format(fmt, absolute, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the layer's root directory")
    layer = _gnu_tar_layer(tmp_path, fmt, absolute)
    p = tmp_path / "img.tar"
    p.write_bytes(legacy_save([layer], tags=("gnutar:1",)))
    [img] = _check_archive(p, tmp_path)
    fs = img.rootfs(verify=True)
    root = fs[""]
    assert (root.mode, root.uid, root.gid) == (0o750, 1234, 4321)
    assert fs["etc/passwd"].ino == fs["etc/passwd-"].ino and fs["etc/link"].linkname == "../etc/passwd"
    if fmt != "v7":
        assert fs["fifo"].kind == "fifo"
        assert fs["d/" + "n" * 60 + "/" + "m" * 60 + "/long-file-name"].size == 700

"""The workload TOML format, its Python API and the errors users will make."""
from __future__ import annotations

import pytest

import thinp.workloads as W
from thinp.workloads.format import WorkloadError, image_files, profile_rows


def _write(tmp_path, text, name="wl.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """
name = "app"
description = "two containers"
containers = 2
seed = 7
[image]
profile = "debian-minbase"
[[image.extra]]
path = "/srv/db"
size = "64K"
[[steps]]
op = "append"
path = "/var/log/a-{c}.log"
size = "1K"
count = 3
[[steps]]
op = "write"
path = "/srv/db"
offset = "random"
size = "4KiB"
count = 5
[[steps]]
op = "read"
sample = 3
glob = "/usr/bin/*"
[[steps]]
op = "chmod"
glob = "/etc/hostname"
mode = "0600"
[[steps]]
op = "commit"
"""


def test_parse_good(tmp_path):
    w = W.load(_write(tmp_path, GOOD))
    assert (w.name, w.containers, w.seed, w.description) == ("app", 2, 7, "two containers")
    assert w.image.kind == "profile" and w.image.extra == [("/srv/db", 65536)]
    assert [s.op for s in w.steps] == ["append", "write", "read", "chmod", "commit"]
    assert w.steps[0].size == 1024 and w.steps[0].count == 3
    assert w.steps[1].offset == "random" and w.steps[1].size == 4096
    assert w.steps[2].sample == 3 and w.steps[3].mode == 0o600


def test_synthetic_layers(tmp_path):
    w = W.load(_write(tmp_path, """
[image]
[[image.layers]]
files = 10
size = {dist = "lognormal", median = "4K", sigma = 0.5}
dirs = 2
prefix = "/data"
[[image.layers]]
files = 3
size = {dist = "uniform", min = "1K", max = "2K"}
[[steps]]
op = "read"
glob = "/data/**"
"""))
    assert w.image.kind == "synthetic" and len(w.image.layers) == 2
    assert w.image.layers[0].size["median"] == 4096
    files = image_files(w.image)
    assert len(files) == 13 and files[0].startswith("/data/d0000/")
    r = W.run(w, "reference")
    assert r.error is None and r.metrics["image_layers"] == 2


@pytest.mark.parametrize("text, words", [
    ("contaners = 3", ["contaners", "unknown key"]),
    ("[[steps]]\nop = \"append\"\npath = \"/x\"\nsize = \"10 parsecs\"", ["steps[0].size", "10 parsecs", "bad size"]),
    ("[[steps]]\nop = \"read\"\nglob = \"/nowhere/*\"", ["steps[0].glob", "/nowhere/*", "matches no file"]),
    ("[[steps]]\nop = \"frobnicate\"", ["steps[0].op", "frobnicate", "unknown op"]),
    ("[image]\nprofile = \"arch\"", ["image.profile", "arch", "unknown profile"]),
    ("[[steps]]\nop = \"write\"\npath = \"/x\"\nsizze = 1", ["steps[0].sizze", "unknown key"]),
    ("[[image.layers]]\nfiles = 1\nsize = {dist = \"zipf\"}", ["image.layers[0].size.dist", "zipf"]),
    ("containers = -1", ["containers", "-1"]),
    ("[[steps]]\nop = \"strace\"\ntrace = \"nope.strace\"", ["steps[0].trace", "nope.strace", "no such strace"]),
    ("[[steps]]\nop = \"strace\"", ["steps[0].trace", "needs trace"]),
    ("[[steps]]\nop = \"append\"\nsize = 1", ["steps[0].path", "needs path"]),
    ("[[steps]]\nop = \"chmod\"\npath = \"/x\"\nmode = 644", ["steps[0].mode", "644", "octal string"]),
    ("[[steps]]\nop = \"chmod\"\npath = \"/x\"\nmode = \"17777\"", ["steps[0].mode", "out of range"]),
    ("[[image.layers]]\nfiles = 1\nsize = 1\nmode = \"9\"", ["image.layers[0].mode", "bad mode"]),
    # path globs (tests/workloads/test_globs.py has their matching rules)
    ('[[steps]]\nop = "read"\nglob = "/usr/lib*/libc.so.6"', ["steps[0].glob", "/usr/lib*/libc.so.6", "matches no file"]),
    ('[[steps]]\nop = "read"\nglob = "/usr/*.so"', ["steps[0].glob", "/usr/*.so", "matches no file"]),
    ('[[steps]]\nop = "chmod"\nglob = "/nowhere/*"', ["steps[0].glob", "matches no file or directory"]),
    ('[[steps]]\nop = "read"\nglob = "/usr/bin"', ["steps[0].glob", "matches no file"]),   # a directory
    ('[[steps]]\nop = "delete"\nglob = "/etc/debian_version"\n[[steps]]\nop = "read"\nglob = "/etc/debian_versio?"',
     ["steps[1].glob", "/etc/debian_versio?", "matches no file"]),
    ('[[steps]]\nop = "mkdir"\nglob = "/usr/*"', ["steps[0].glob", "makes its path"]),
    ('[[steps]]\nop = "create"\nsample = 3', ["steps[0].sample", "makes its path"]),
    ('[[steps]]\nop = "read"\nglob = "/"', ["steps[0].glob", "want a path pattern"]),
])
def test_errors_one_line(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(W.WorkloadError) as ei:
        W.load(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(path)
    for w in words:
        assert w in msg


def test_bad_toml_and_missing(tmp_path):
    with pytest.raises(WorkloadError, match="not valid TOML"):
        W.load(_write(tmp_path, "containers = ="))
    with pytest.raises(WorkloadError, match="no such workload file or built-in scenario"):
        W.load(str(tmp_path / "nope.toml"))


def test_unsupported_image(tmp_path):
    bad = tmp_path / "img.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ValueError) as ei:
        W.load(_write(tmp_path, f'[image]\narchive = "{bad}"'))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and "unsupported image" in msg
    with pytest.raises(ValueError, match="image.archive.*no such file"):
        W.load(_write(tmp_path, '[image]\narchive = "missing.tar"'))


def test_docker_save_archive(tmp_path, fixtures_dir):
    tar = fixtures_dir / "images" / "hello-world-v25.tar"
    w = W.load(_write(tmp_path, f'containers = 2\n[image]\narchive = "{tar}"\n'
                                '[[steps]]\nop = "create"\npath = "/new-{c}"\nsize = "8K"\n'))
    assert w.image.kind == "archive"
    r = W.run(w, "overlay2")
    assert r.error is None and r.metrics["containers"] == 2 and len(r.per_container) == 2


def test_extra_layer_on_an_archive_image(tmp_path, fixtures_dir):
    """``[[image.extra]]`` on a docker-save image adds one layer on top (it
    used to be ignored silently)."""
    tar = fixtures_dir / "images" / "hello-world-v25.tar"
    w = W.load(_write(tmp_path, f'containers = 1\n[image]\narchive = "{tar}"\n'
                                '[[image.extra]]\npath = "/srv/blob"\nsize = "64K"\n'
                                '[[steps]]\nop = "read"\nglob = "/srv/*"\n'))
    from thinp.workloads.images import build_image

    img = build_image(w.image)
    base = build_image(W.ImageSpec("archive", None, w.image.path))
    assert len(img.layers) == len(base.layers) + 1
    assert img.config["rootfs"]["diff_ids"][:-1] == base.config["rootfs"]["diff_ids"]
    r = W.run(w, "overlay2")
    assert r.error is None and r.phases["steps"]["page_cache_bytes"] >= 64 << 10


def test_profile_rows_match_fixture(fixtures_dir):
    import gzip

    rows = profile_rows("debian-minbase")
    with gzip.open(fixtures_dir / "rootfs" / "debian-bookworm-minbase.csv.gz", "rt") as f:
        n = sum(1 for _ in f) - 1
    kinds = {r[1] for r in rows}
    assert {"f", "d", "l", "h"} <= kinds
    assert n - 2 <= len(rows) <= n
    assert ("etc/hostname" in {r[0] for r in rows})


def test_scenarios_listed():
    assert W.scenarios() == ["webapp", "ci-build", "package-install", "big-file-update",
                             "many-small-files", "file-tree", "read-heavy"]
    w = W.load("webapp")
    assert w.containers == 50 and w.name == "webapp"
    assert W.load("many-small-files").steps[0].count == 10001
    assert sum(s.op == "commit" for s in W.load("ci-build").steps) == 10


def test_oci_layout_image(tmp_path, fixtures_dir):
    from thinp.image import load as load_archive, save

    [img] = load_archive(fixtures_dir / "images" / "test-docker-image.tar")
    layout = tmp_path / "oci"
    save(img, layout, format="oci", directory=True)
    w = W.load(_write(tmp_path, f'[image]\narchive = "{layout}"\n'
                                '[[steps]]\nop = "read"\nsample = 2\n'))
    r = W.run(w, "devicemapper")
    assert r.error is None and r.metrics["image_layers"] == len(img.layers)
    assert r.phases["image_load"]["layer_bytes_applied"] > 0
    # a glob that matches nothing in an archive image is caught when the file loads (the dry run
    # on the reference driver lists the image's files), and by a run of an unchecked load
    w2 = _write(tmp_path, f'[image]\narchive = "{layout}"\n[[steps]]\nop = "read"\nglob = "/nope/*"\n', "w2.toml")
    with pytest.raises(ValueError, match=r"w2.toml: steps\[0\].glob = '/nope/\*': matches no file"):
        W.load(w2)
    with pytest.raises(ValueError, match=r"w2.toml: steps\[0\].glob = '/nope/\*': matches no file"):
        W.run(W.load(w2, check=False), "devicemapper")


def test_python_api(fixtures_dir):
    from thinp.workloads import Step, Workload

    w = Workload("api", "debian-minbase", 2, [Step("append", path="/var/log/x.log", size=100, count=3)], seed=3)
    assert w.image.kind == "profile"
    r = W.run(w, "overlay2", scale=0.2)
    assert r.error is None and len(r.per_container) == 1
    assert r.per_container[0]["steps"]["bytes_written"] >= 300
    a = Workload("arch", str(fixtures_dir / "images" / "hello-world-v25.tar"))
    assert a.image.kind == "archive"
    with pytest.raises(ValueError, match="nope.tar: unsupported image"):
        Workload("bad", "nope.tar")

"""Real images and layers from ../shared/fixtures.

Expected names come from GNU tar (``data/*.names``, made by
``data/make_golden.sh``) or from ``tar tvf`` listings transcribed by hand
below, never from thinp's own output.
"""
import gzip
import hashlib
import json
import tarfile

import pytest
import zstandard

from thinp.image import Layer, flatten, load, save
from thinp.image.layer import FILE, HARDLINK, OPAQUE, WHITEOUT

from .conftest import fixture_path, golden, make_tar


def _sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- dive busybox
DIVE_DIFF_IDS_PREFIX = ["23bc2b70b201", "a65b7d7ac139", "93e208d47175", "4abad3abe3cb",
                        "14c9a6ffcb6a", "778fb5770ef4", "f275b8a31a71", "dd1effc5eb19",
                        "8d1869a0a066", "bc2e36423fa3", "7f648d45ee7b", "a4b8f95f266d",
                        "22a44d45780a", "ba689cac6a98"]
# Layers 1..13 from `tar tvf`, applied in order by hand: L7 whites out
# root/example/somefile3.txt, L9 whites out root/example entirely.
DIVE_ADDED = {"somefile.txt", "root/saved.txt", "root/.saved.txt", "root/.data",
              "root/.data/tag.sh", "root/.data/test.sh", "root/.data/saved.again2.txt",
              "tmp/saved.again1.txt"}


@pytest.fixture(scope="module")
def dive():
    [img] = load(fixture_path("images", "test-docker-image.tar"))
    return img


def test_dive_metadata(dive):
    assert dive.tags == ["dive-test:latest"]
    assert dive.id == "sha256:75ae28b8ebf89b203319069ddcbecdf5c3838503bbebc0d0d85e4b8589c5de3a"
    assert [d[7:19] for d in dive.diff_ids] == DIVE_DIFF_IDS_PREFIX
    assert len(dive.layers) == 14
    assert dive.layers[0].nr_entries == 415
    # L4 (chmod 444) re-ships the whole 6,405-byte file
    l4 = list(dive.layers[4].entries())
    assert [(e.path, e.kind, e.size, e.mode) for e in l4 if e.kind == FILE] == \
        [("root/example/somefile1.txt", FILE, 6405, 0o444)]


def test_dive_whiteouts_are_entries(dive):
    l7 = [(e.path, e.kind) for e in dive.layers[7].entries()]
    assert ("root/example/somefile3.txt", WHITEOUT) in l7
    l9 = [(e.path, e.kind) for e in dive.layers[9].entries()]
    assert l9 == [("root", "dir"), ("root/example", WHITEOUT)]


def test_dive_merged_rootfs(dive):
    fs = dive.rootfs()
    assert set(fs.paths()) == set(golden("dive-layer0.names")) | DIVE_ADDED
    assert len(fs) == 423
    assert "root/example" not in fs
    assert fs["root/saved.txt"].mode == 0o755   # L13 chmod +x
    assert fs["root/saved.txt"].layer == 13


def test_dive_hardlinks_share_an_inode(dive):
    fs = dive.rootfs()
    links = golden("dive-layer0-hardlinks.names")
    assert len(links) == 392
    ino = fs["bin/["].ino
    assert all(fs[p].ino == ino for p in links)
    assert fs["bin/getconf"].ino != ino
    kinds = {e.kind for e in dive.layers[0].entries()}
    assert HARDLINK in kinds


def test_dive_chain_ids(dive):
    diff_ids = dive.diff_ids
    expect = [diff_ids[0]]
    for d in diff_ids[1:]:
        expect.append(_sha(f"{expect[-1]} {d}".encode()))
    assert dive.chain_ids == expect
    assert [l.chain_id for l in dive.layers] == expect


def test_dive_history(dive):
    from thinp.image import history
    rows = history(dive)
    assert len(rows) == 15      # 14 layers + the CMD ["sh"] empty layer
    assert rows[0]["id"] == dive.id and rows[1]["id"] == "<missing>"
    assert rows[-2]["empty_layer"] and 'CMD ["sh"]' in rows[-2]["created_by"]
    assert rows[-2]["size"] == 0
    assert rows[0]["created_by"] == "/bin/sh -c chmod +x /root/saved.txt"
    assert rows[0]["size"] == 6405
    assert sum(r["size"] for r in rows) == dive.size


# ---------------------------------------------------------------- Docker 25
def test_hello_world_v25():
    [img] = load(fixture_path("images", "hello-world-v25.tar"))
    assert img.tags == []                      # RepoTags is null in this save
    assert img.id == "sha256:ee301c921b8aadc002973b2e0c3da17d701dcd994b606769a7e6eaa100b81d44"
    assert img.diff_ids == ["sha256:12660636fe55438cc3ae7424da7ac56e845cdb52493ff9cf949c47a7f57f8b43"]
    assert img.rootfs().paths() == ["hello"]
    assert img.config["config"]["Cmd"] == ["/hello"]
    assert [h.get("empty_layer", False) for h in img.history_entries] == [False, True]


# ---------------------------------------------------------------- ggcr images
def test_whiteout_image():
    [img] = load(fixture_path("images", "whiteout_image.tar"))
    assert img.tags == ["bazel/pkg/v1/mutate:whiteout_image"]
    assert len(img.layers) == 3
    assert list(img.layers[2].entries()) == []       # L2 is empty
    # L0: ./ ./bar.txt ./foo.txt ; L1: ./ ./.wh.foo.txt
    assert img.rootfs().paths() == ["bar.txt"]


def test_whiteout_dir_gzip_layers():
    [img] = load(fixture_path("images", "whiteout_dir.tar"))
    assert img.tags == ["localhost:5000/whiteout:latest"]
    assert all(l.blob_size < l.tar_size for l in img.layers)   # gzip read transparently
    # L0 a/ a/foo ; L1 b/ b/bar ; L2 .wh.a ; L3 a/ a/baz
    assert img.rootfs().paths() == ["a", "a/baz", "b", "b/bar"]


def test_overwritten_file():
    [img] = load(fixture_path("images", "overwritten_file.tar"))
    fs = img.rootfs()
    # L0 ./foo.txt ; L1 ./bar.txt ./foo.txt -> bar.txt ; L2 empty
    assert fs.paths() == ["bar.txt", "foo.txt"]
    assert fs["foo.txt"].kind == "symlink" and fs["foo.txt"].linkname == "bar.txt"


# ---------------------------------------------------------------- layers/
def test_regclient_opaque_and_whiteout():
    base = Layer.from_path(fixture_path("layers", "regclient-layer.tar"))
    lower = Layer.from_bytes(make_tar([("exdir/", "d"), ("exdir/old.txt", "f", b"old"),
                                       ("exdir/sub/", "d"), ("exdir/sub/x", "f", b"x")]))
    wh = Layer.from_path(fixture_path("layers", "layer-wh.tar"))
    kinds = [(e.path, e.kind) for e in wh.entries()]
    assert kinds == [("layer1.txt", "file"), ("layer2.txt", WHITEOUT), ("layer3.txt", "file"),
                     ("exdir", "dir"), ("exdir", OPAQUE)]
    fs = flatten([base, lower, wh])
    # regclient-layer: layer1.txt layer2.txt layer3.txt; layer-wh: layer1.txt
    # .wh.layer2.txt layer3.txt exdir/ exdir/.wh..wh..opq
    assert fs.paths() == ["exdir", "layer1.txt", "layer3.txt"]


def test_debian_package_layers_stack():
    names = [fixture_path("layers", f"{p}.data.tar") for p in
             ("debian-busybox", "debian-nginx-common", "debian-nginx")]
    layers = [Layer.from_path(p) for p in names]
    fs = flatten(layers)
    expect = set()
    for p in ("debian-busybox", "debian-nginx-common", "debian-nginx"):
        expect |= set(golden(f"{p}.names"))
    assert set(fs.paths()) == expect
    assert fs["usr/share/nginx/modules"].linkname == "../../lib/nginx/modules"
    for layer, path in zip(layers, names):
        assert layer.diff_id == _sha(path.read_bytes())
        assert layer.tar_size == path.stat().st_size


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_layer_same_diff_id(codec):
    raw = fixture_path("layers", "debian-nginx.data.tar").read_bytes()
    blob = gzip.compress(raw) if codec == "gzip" else zstandard.ZstdCompressor().compress(raw)
    plain, comp = Layer.from_bytes(raw), Layer.from_bytes(blob)
    assert [e.path for e in comp.entries()] == [e.path for e in plain.entries()]
    assert comp.diff_id == plain.diff_id == _sha(raw)
    assert comp.blob_size == len(blob)


# ---------------------------------------------------------------- every fixture
ALL_IMAGES = ["test-docker-image.tar", "hello-world-v25.tar", "whiteout_image.tar",
              "whiteout_dir.tar", "overwritten_file.tar"]


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_save_load_round_trip(name, tmp_path):
    imgs = load(fixture_path("images", name))
    out = tmp_path / "saved.tar"
    save(imgs, out)
    back = load(out)
    assert [b.id for b in back] == [i.id for i in imgs]
    assert [b.diff_ids for b in back] == [i.diff_ids for i in imgs]
    assert [b.chain_ids for b in back] == [i.chain_ids for i in imgs]
    assert [[l.chain_id for l in b.layers] for b in back] == [i.chain_ids for i in imgs]
    assert [b.tags for b in back] == [i.tags for i in imgs]
    assert [b.rootfs().paths() for b in back] == [i.rootfs().paths() for i in imgs]
    # the layout is what real tools expect
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        assert {"oci-layout", "index.json", "manifest.json"} <= names
        manifest = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
        for entry, img in zip(manifest, imgs):
            assert entry["Config"] == "blobs/sha256/" + img.id[7:]
            assert entry["Layers"] == ["blobs/sha256/" + d[7:] for d in img.diff_ids]
            for member in entry["Layers"] + [entry["Config"]]:
                data = tf.extractfile(member).read()
                assert hashlib.sha256(data).hexdigest() == member.rsplit("/", 1)[1]
        for desc in index["manifests"]:
            blob = tf.extractfile("blobs/sha256/" + desc["digest"][7:]).read()
            assert len(blob) == desc["size"] and _sha(blob) == desc["digest"]
            man = json.loads(blob)
            assert man["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_oci_form_as_directory_and_tar(name, tmp_path):
    imgs = load(fixture_path("images", name))
    save(imgs, tmp_path / "layout", format="oci", directory=True)
    assert not (tmp_path / "layout" / "manifest.json").exists()
    assert json.loads((tmp_path / "layout" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    back = load(tmp_path / "layout")
    assert [b.id for b in back] == [i.id for i in imgs]
    assert [b.tags for b in back] == [i.tags for i in imgs]
    save(imgs, tmp_path / "oci.tar", format="oci")
    assert [b.chain_ids for b in load(tmp_path / "oci.tar")] == [i.chain_ids for i in imgs]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_whole_archive_compressed(codec, tmp_path):
    raw = fixture_path("images", "test-docker-image.tar").read_bytes()
    p = tmp_path / "img.tar.gz"
    p.write_bytes(gzip.compress(raw, 1) if codec == "gzip" else zstandard.ZstdCompressor().compress(raw))
    [img] = load(p)
    assert img.id == "sha256:75ae28b8ebf89b203319069ddcbecdf5c3838503bbebc0d0d85e4b8589c5de3a"
    assert len(img.rootfs()) == 423


def test_export_is_flat_and_has_no_whiteouts(dive, tmp_path):
    out = tmp_path / "export.tar"
    n = dive.export(out)
    with tarfile.open(out) as tf:
        members = tf.getmembers()
    names = {m.name.rstrip("/") for m in members}
    assert names == set(golden("dive-layer0.names")) | DIVE_ADDED
    assert not any(".wh." in m.name for m in members)
    hard = [m for m in members if m.islnk()]
    assert len(hard) == 392 and {m.linkname for m in hard} == {"bin/["}
    assert n == dive.rootfs().content_bytes
    # exported contents are the top layer's bytes
    with tarfile.open(out) as tf:
        assert tf.extractfile("root/saved.txt").read() == dive.layers[13].read_file("root/saved.txt")


def test_dive_history_matches_its_dockerfile(dive):
    """Each RUN/ADD step of Dockerfile.test-image is a history entry, in order."""
    lines = [l.strip() for l in fixture_path("images", "Dockerfile.test-image").read_text().splitlines()
             if l.strip() and not l.startswith("FROM")]
    created_by = [h.get("created_by", "") for h in dive.history_entries][2:]   # after busybox's 2
    assert len(created_by) == len(lines) == 13
    for line, cb in zip(lines, created_by):
        instr, _, args = line.partition(" ")
        if instr == "RUN":
            assert cb == f"/bin/sh -c {args}"
        else:   # ADD src dst -> "#(nop) ADD file:<hash> in <dst>"
            assert cb.startswith("/bin/sh -c #(nop) ADD ")
            assert cb.rstrip().endswith(f"in {args.split()[-1]}")


def test_save_same_image_twice_writes_it_once(tmp_path):
    [img] = load(fixture_path("images", "whiteout_image.tar"))
    save([img, img], tmp_path / "x.tar")
    with tarfile.open(tmp_path / "x.tar") as tf:
        assert len(json.load(tf.extractfile("manifest.json"))) == 1
    assert [i.id for i in load(tmp_path / "x.tar")] == [img.id]

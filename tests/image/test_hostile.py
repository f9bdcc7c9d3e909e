"""Untrusted input: every hostile case is an ImageFormatError, nothing is left behind."""
import gzip
import io
import os
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinp.errors import ImageFormatError
from thinp.image import ImageStore, Layer, flatten, import_, load

from .builders import config_for, legacy_save, sha, tar_of
from .conftest import make_tar

GOOD = make_tar([("etc/", "d"), ("etc/passwd", "f", b"root:x:0:0\n"), ("bin", "l", "usr/bin"),
                 ("usr/", "d"), ("usr/bin/", "d"), ("usr/bin/sh", "f", b"#!" * 300),
                 ("usr/bin/ash", "h", "usr/bin/sh"), ("dev/", "d"), ("dev/null", "c", (1, 3)),
                 ("run/fifo", "p"), ("a/" * 60 + "long.txt", "f", b"long name")])


def _flat(data: bytes):
    return flatten([Layer.from_bytes(data, name="hostile.tar")])


def _load_save(tmp_path, layers, **kw):
    p = tmp_path / "save.tar"
    p.write_bytes(legacy_save(layers, **kw))
    return load(p)


def test_good_layer_is_fine():
    fs = _flat(GOOD)
    assert fs["usr/bin/ash"].ino == fs["usr/bin/sh"].ino
    assert fs["dev/null"].kind == "char" and (fs["dev/null"].devmajor, fs["dev/null"].devminor) == (1, 3)
    assert fs["run/fifo"].kind == "fifo"
    assert fs["a/" * 60 + "long.txt"].size == 9


@pytest.mark.parametrize("name, path", [("/etc/passwd", "etc/passwd"), ("/abs/dir/", "abs/dir"),
                                        ("a/b/../c", "a/c"), ("/../etc/x", "etc/x")])
def test_absolute_and_dotted_names_are_cleaned_as_docker_cleans_them(name, path):
    fs = _flat(make_tar([(name, "f", b"x")]))
    assert path in fs and fs[path].kind == "file"


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "..", "./../x"])
def test_dotdot_leaving_the_root(name):
    with pytest.raises(ImageFormatError, match=r"'\.\.' component that leaves the root"):
        _flat(make_tar([(name, "f", b"x")]))


@pytest.mark.parametrize("target", ["../../../../etc", "/etc", "a/../../.."])
def test_path_through_escaping_symlink(target):
    with pytest.raises(ImageFormatError, match="leaves the rootfs"):
        _flat(make_tar([("evil", "l", target), ("evil/passwd", "f", b"pwned")]))


def test_path_through_escaping_symlink_across_layers():
    l0 = Layer.from_bytes(make_tar([("x/", "d"), ("x/evil", "l", "../../host")]))
    l1 = Layer.from_bytes(make_tar([("x/evil/file", "f", b"pwned")]), name="upper.tar")
    with pytest.raises(ImageFormatError, match="upper.tar: entry 'x/evil/file' goes through symlink"):
        flatten([l0, l1])


def test_path_through_inside_symlink_is_followed():
    fs = _flat(make_tar([("usr/lib/", "d"), ("lib", "l", "usr/lib"), ("lib/libc.so", "f", b"elf")]))
    assert "usr/lib/libc.so" in fs and fs["lib"].kind == "symlink"


@pytest.mark.parametrize("target, why", [
    ("/etc/shadow", "does not exist"),            # rooted: etc/shadow, inside the layer
    ("/../etc", r"'\.\.' component"),               # Docker joins it to the root: it leaves
    ("../outside", r"'\.\.' component"),
    ("nothere", "target does not exist"),
    ("evil/shadow", "leaves the rootfs"),
])
def test_hardlink_outside(target, why):
    with pytest.raises(ImageFormatError, match=why):
        _flat(make_tar([("evil", "l", "/etc"), ("x", "h", target)]))


def test_layer_count_differs_from_diff_ids(tmp_path):
    a, b = make_tar([("a", "f", b"a")]), make_tar([("b", "f", b"b")])
    with pytest.raises(ImageFormatError, match="layer count 1 differs from the config's 2 diff_ids"):
        _load_save(tmp_path, [a], diff_ids=[sha(a), sha(b)])


def test_diff_id_mismatch_names_the_layer(tmp_path):
    a, b = make_tar([("a", "f", b"a")]), make_tar([("b", "f", b"b")])
    with pytest.raises(ImageFormatError, match=r"l0/layer.tar: DiffID mismatch"):
        _load_save(tmp_path, [a], diff_ids=[sha(b)])


def test_config_digest_mismatch(tmp_path):
    a = make_tar([("a", "f", b"a")])
    cfg = config_for([sha(a)])
    files = {"l0/layer.tar": a, "0" * 64 + ".json": cfg,
             "manifest.json": b'[{"Config":"' + b"0" * 64 + b'.json","RepoTags":[],"Layers":["l0/layer.tar"]}]'}
    p = tmp_path / "s.tar"
    p.write_bytes(tar_of(files))
    with pytest.raises(ImageFormatError, match="config 0000000000000000.*digest mismatch"):
        load(p)


@pytest.mark.parametrize("cut", [100, 512 + 100, 1024 + 10, None])
def test_truncated_layer(cut):
    one = make_tar([("f1", "f", b"1" * 700), ("f2", "f", b"2" * 10)])
    # None: cut exactly after the last member, losing the end-of-archive blocks
    n = cut if cut is not None else 512 + 1024 + 512 + 512
    with pytest.raises(ImageFormatError, match="truncated tar"):
        list(Layer.from_bytes(one[:n]).walk())


def test_truncated_outer_archive(tmp_path):
    data = legacy_save([GOOD])
    p = tmp_path / "cut.tar"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFormatError):
        load(p)


def test_declared_size_larger_than_data():
    buf = bytearray(make_tar([("f", "f", b"abc")], fmt=tarfile.USTAR_FORMAT))
    # rewrite the size field to 1 MiB and fix the checksum
    buf[124:136] = b"%011o\0" % (1 << 20)
    buf[148:156] = b"        "
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    with pytest.raises(ImageFormatError, match="truncated tar"):
        list(Layer.from_bytes(bytes(buf)).walk())


def test_legacy_layer_sources_size_mismatch(tmp_path):
    import json
    a = make_tar([("a", "f", b"a")])
    cfg = config_for([sha(a)])
    blob = "blobs/sha256/" + sha(a)[7:]
    man = [{"Config": "blobs/sha256/" + sha(cfg)[7:], "RepoTags": None, "Layers": [blob],
            "LayerSources": {sha(a): {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                      "size": len(a) + 512, "digest": sha(a)}}}]
    p = tmp_path / "s.tar"
    p.write_bytes(tar_of({blob: a, "blobs/sha256/" + sha(cfg)[7:]: cfg,
                          "manifest.json": json.dumps(man).encode()}))
    with pytest.raises(ImageFormatError, match="declared size"):
        load(p)


def test_decompression_bomb(tmp_path):
    zeros = make_tar([("zeros", "f", bytes(40 << 20))])
    bomb = gzip.compress(zeros, 9)
    assert len(zeros) / len(bomb) > 200
    with pytest.raises(ImageFormatError, match="decompression bomb.*expansion-ratio cap"):
        Layer.from_bytes(bomb).scan()
    # the same layer is accepted with a higher cap
    assert Layer.from_bytes(bomb, max_ratio=0).scan().size == 40 << 20


def test_whole_archive_bomb(tmp_path):
    p = tmp_path / "bomb.tar.gz"
    p.write_bytes(gzip.compress(legacy_save([make_tar([("z", "f", bytes(40 << 20))])]), 9))
    def ours():   # other processes may use the temp dir at the same time
        return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("thinp-load-")}
    before = ours()
    with pytest.raises(ImageFormatError, match="decompression bomb"):
        load(p)
    assert ours() - before == set()


def test_unsupported_entry_type():
    buf = bytearray(make_tar([("f", "f", b"abc")], fmt=tarfile.USTAR_FORMAT))
    buf[156:157] = b"S"     # GNU sparse
    buf[148:156] = b"        "
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    with pytest.raises(ImageFormatError, match="unsupported tar entry type"):
        list(Layer.from_bytes(bytes(buf)).walk())


@pytest.mark.parametrize("case", ["escape", "bomb", "count", "tampered"])
def test_failed_load_leaves_nothing(tmp_path, case):
    store = ImageStore(tmp_path / "store")
    good = make_tar([("ok", "f", b"ok")])
    if case == "escape":
        bad = make_tar([("evil", "l", "/etc"), ("evil/passwd", "f", b"x")])
        data = legacy_save([good, bad], tags=("a:1",))
    elif case == "bomb":
        data = legacy_save([good, gzip.compress(make_tar([("z", "f", bytes(40 << 20))]), 9)],
                           diff_ids=[sha(good), sha(make_tar([("z", "f", bytes(40 << 20))]))])
    elif case == "count":
        data = legacy_save([good], diff_ids=[sha(good), sha(good)])
    else:
        data = legacy_save([good, good], diff_ids=[sha(good), "sha256:" + "1" * 64])
    p = tmp_path / "bad.tar"
    p.write_bytes(data)
    with pytest.raises(ImageFormatError):
        store.load(p)
    assert len(store) == 0 and store.refs == {} and store.layers == {}
    assert os.listdir(tmp_path / "store") == ["layers"]
    assert os.listdir(tmp_path / "store" / "layers") == []
    # and a good archive still loads into the same store
    ok = tmp_path / "ok.tar"
    ok.write_bytes(legacy_save([good], tags=("a:1",)))
    [img] = store.load(ok)
    assert store.get("a:1") is img
    assert os.listdir(tmp_path / "store" / "layers") == [sha(good)[7:] + ".tar"]


def test_import_rejects_hostile_tar():
    with pytest.raises(ImageFormatError, match="leaves the rootfs"):
        import_(make_tar([("evil", "l", "../../.."), ("evil/x", "f", b"x")]))


# --------------------------------------------------------------------- fuzz
def _header_offsets(data: bytes) -> list[int]:
    """Offsets of every header block of a tar (data blocks excluded)."""
    out, pos = [], 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            out.append(m.offset)
            # PAX/GNU extension headers sit between offset and offset_data
            pos = m.offset + 512
            while pos < m.offset_data:
                out.append(pos)
                pos += 512
    return out


_FUZZ_BASE = make_tar([("etc/", "d"), ("etc/" + "x" * 120, "f", b"long name " * 20),
                       ("bin", "l", "usr/bin"), ("usr/bin/", "d"), ("usr/bin/sh", "f", b"sh"),
                       ("usr/bin/ash", "h", "usr/bin/sh"), ("dev/null", "c", (1, 3)),
                       ("x", "f", b"xattr", {"pax_headers": {"SCHILY.xattr.user.k": "v"}}),
                       ("d/.wh.gone", "f", b""), ("d/.wh..wh..opq", "f", b"")])
_FUZZ_HEADERS = _header_offsets(_FUZZ_BASE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_FUZZ_HEADERS), st.integers(0, 511), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.booleans(), st.integers(0, len(_FUZZ_BASE)))
def test_fuzz_mutated_headers(mutations, fix_checksum, cut):
    data = bytearray(_FUZZ_BASE)
    touched = set()
    for block, off, value in mutations:
        data[block + off] = value
        touched.add(block)
    if fix_checksum:
        for block in touched:
            data[block + 148:block + 156] = b"        "
            data[block + 148:block + 156] = b"%06o\0 " % sum(data[block:block + 512])
    for blob in (bytes(data), bytes(data[:cut])):
        try:
            _assert_contained(flatten([Layer.from_bytes(blob, name="fuzz.tar")]))
        except ImageFormatError as e:
            assert str(e)            # refused with a message, never some other exception


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 511), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_fuzz_mutated_outer_archive(mutations):
    base = legacy_save([_FUZZ_BASE], tags=("f:1",))
    offsets = _header_offsets(base)
    data = bytearray(base)
    for which, off, value in mutations:
        data[offsets[which % len(offsets)] + off] = value
    fd, path = tempfile.mkstemp(suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            for img in load(path):
                _assert_contained(img.rootfs())
        except ImageFormatError as e:
            assert str(e)            # refused with a message, never some other exception
    finally:
        os.unlink(path)


def _assert_contained(rootfs):
    """What a hostile input is allowed to produce: a tree whose every path is
    normalised and stays inside the root (no "..", no empty or "." names)."""
    for p in rootfs.paths():
        parts = p.strip("/").split("/")
        assert all(x not in ("", ".", "..") for x in parts), p
    return rootfs


# JSON documents (manifest.json, configs, index.json, manifests) with random
# values swapped for values of the wrong type or hostile paths.
_JSON_VALUES = [None, 1, -1, "x", "", [], {}, True, 1.5, ["x"], {"a": 1}, "sha256:" + "0" * 64,
                "../../etc/passwd", "/abs", "blobs/sha256/../../x"]


def _mutate_json(obj, rnd):
    import copy
    obj = copy.deepcopy(obj)
    nodes = []

    def walk(o):
        if isinstance(o, dict):
            for k in o:
                nodes.append((o, k))
                walk(o[k])
        elif isinstance(o, list):
            for i in range(len(o)):
                nodes.append((o, i))
                walk(o[i])
    walk(obj)
    if not nodes:
        return rnd.choice(_JSON_VALUES)
    for _ in range(rnd.randint(1, 2)):
        c, k = rnd.choice(nodes)
        c[k] = rnd.choice(_JSON_VALUES)
    return obj


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["legacy-manifest", "legacy-config", "oci-index", "oci-manifest"]),
       st.randoms(use_true_random=False))
def test_fuzz_json_documents(kind, rnd):
    import json
    from .builders import OCILayout
    layer = make_tar([("a", "f", b"a"), ("d/", "d")])
    if kind.startswith("legacy"):
        cfg = json.loads(config_for([sha(layer)]))
        if kind == "legacy-config":
            cfg = _mutate_json(cfg, rnd)
        man = [{"Config": "config.json", "RepoTags": ["a:1"], "Layers": ["l/layer.tar"]}]
        if kind == "legacy-manifest":
            man = _mutate_json(man, rnd)
        files = {"l/layer.tar": layer, "config.json": json.dumps(cfg).encode(),
                 "manifest.json": json.dumps(man).encode()}
    else:
        o = OCILayout()
        d = o.image([layer])
        if kind == "oci-manifest":
            m = _mutate_json(json.loads(o.blobs[d["digest"]]), rnd)
            d = {"mediaType": d["mediaType"], **o.blob(json.dumps(m).encode())}
        o.tag(d, "docker.io/library/x:1")
        files = o.files()
        if kind == "oci-index":
            files["index.json"] = json.dumps(_mutate_json(json.loads(files["index.json"]), rnd)).encode()
    fd, path = tempfile.mkstemp(suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(tar_of(files))
        try:
            for img in load(path):
                _assert_contained(img.rootfs())
        except ImageFormatError as e:
            assert str(e)            # refused with a message, never some other exception
    finally:
        os.unlink(path)


def test_deep_tree_whiteout_does_not_recurse():
    deep = "/".join(["d"] * 2000) + "/f"          # 4001 characters, under PATH_MAX
    fs = flatten([Layer.from_bytes(make_tar([(deep, "f", b"x")])),
                  Layer.from_bytes(make_tar([(".wh.d", "f", b"")]))])
    assert len(fs) == 0


def test_name_longer_than_path_max():
    with pytest.raises(ImageFormatError, match="longer than PATH_MAX"):
        _flat(make_tar([("x" * 5000, "f", b"x")]))

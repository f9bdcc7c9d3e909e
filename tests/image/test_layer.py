"""Layer semantics: whiteouts, opaque directories, replacement, hardlinks, ids."""
import hashlib
import io
import os
import tarfile

import pytest

from thinp.errors import ImageFormatError
from thinp.image import Layer, chain_id, chain_ids, export, flatten, load

from .builders import legacy_save, sha
from .conftest import make_tar


def L(*members, name="layer.tar"):
    return Layer.from_bytes(make_tar(list(members)), name=name)


def test_chain_id_definition():
    a, b, c = (sha(x) for x in (b"a", b"b", b"c"))
    assert chain_id(None, a) == a
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()]


def test_diff_id_is_sha256_of_uncompressed_tar():
    raw = make_tar([("x", "f", b"x")])
    assert Layer.from_bytes(raw).diff_id == sha(raw)


def test_opaque_applies_before_siblings_whatever_the_order():
    lower = L(("d/", "d"), ("d/old", "f", b"o"), ("d/sub/", "d"), ("d/sub/deep", "f", b"x"))
    # the marker comes after this layer's own children of d
    upper = L(("d/", "d"), ("d/new", "f", b"n"), ("d/sub/", "d"), ("d/sub/mine", "f", b"m"),
              ("d/.wh..wh..opq", "f", b""))
    fs = flatten([lower, upper])
    assert fs.paths() == ["d", "d/new", "d/sub", "d/sub/mine"]


def test_whiteout_never_hits_its_own_layer():
    lower = L(("a", "f", b"lower"), ("b", "f", b"b"))
    upper = L(("a", "f", b"upper"), (".wh.a", "f", b""), (".wh.b", "f", b""))
    fs = flatten([lower, upper])
    assert fs.paths() == ["a"] and fs["a"].layer == 1


def test_whiteout_of_absent_path_is_a_noop():
    fs = flatten([L(("x", "f", b"x")), L(("nodir/.wh.y", "f", b""), (".wh.zz", "f", b""))])
    assert fs.paths() == ["x"]


def test_directory_whiteout_removes_subtree_then_recreate():
    fs = flatten([L(("a/", "d"), ("a/b/", "d"), ("a/b/c", "f", b"c")),
                  L((".wh.a", "f", b"")),
                  L(("a/", "d"), ("a/new", "f", b"n"))])
    assert fs.paths() == ["a", "a/new"]


def test_file_replaces_directory_and_dir_replaces_symlink():
    fs = flatten([L(("x/", "d"), ("x/inner", "f", b"i"), ("bin", "l", "usr/bin"), ("usr/bin/", "d"),
                    ("usr/bin/sh", "f", b"sh")),
                  L(("x", "f", b"now a file"), ("bin/", "d"), ("bin/busybox", "f", b"bb"))])
    assert fs["x"].kind == "file" and "x/inner" not in fs
    # a directory entry over a symlink replaces it (Docker removes the non-dir)
    assert fs["bin"].kind == "dir" and fs.paths() == ["bin", "bin/busybox", "usr", "usr/bin",
                                                       "usr/bin/sh", "x"]


def test_dir_over_dir_keeps_children_updates_mode():
    fs = flatten([L(("d/", "d"), ("d/f", "f", b"f")), L(("d/", "d", None, {"mode": 0o700}))])
    assert fs.paths() == ["d", "d/f"] and fs["d"].mode == 0o700 and fs["d"].layer == 1


def test_missing_parents_are_created_0755():
    fs = flatten([L(("a/b/c", "f", b"c"))])
    assert fs["a"].kind == fs["a/b"].kind == "dir" and fs["a/b"].mode == 0o755


def test_path_under_a_file_is_an_error():
    with pytest.raises(ImageFormatError, match="'f' is a file, not a directory"):
        flatten([L(("f", "f", b"x")), L(("f/child", "f", b"y"))])


def test_hardlink_keeps_old_content_when_target_replaced(tmp_path):
    l0 = L(("a", "f", b"old"), ("b", "h", "a"))
    l1 = L(("a", "f", b"brand new"))
    fs = flatten([l0, l1])
    assert fs["b"].ino != fs["a"].ino and fs["b"].size == 3 and fs["a"].size == 9
    buf = io.BytesIO()
    export([l0, l1], buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        assert tf.extractfile("a").read() == b"brand new"
        assert tf.extractfile("b").read() == b"old"


def test_hardlink_across_layers_and_to_symlink():
    fs = flatten([L(("t", "f", b"t"), ("s", "l", "t")), L(("h1", "h", "t"), ("h2", "h", "s"))])
    assert fs["h1"].ino == fs["t"].ino and fs["h2"].kind == "symlink"


def test_hardlink_to_directory_rejected():
    with pytest.raises(ImageFormatError, match="target is a directory"):
        flatten([L(("d/", "d"), ("h", "h", "d"))])


def test_root_entry_sets_root_metadata():
    fs = flatten([L(("./", "d", None, {"mode": 0o700}), ("./x", "f", b"x"))])
    assert fs[""].mode == 0o700 and fs.paths() == ["x"]


def test_aufs_metadata_entries_ignored():
    layer = L((".wh..wh.plnk/", "d"), (".wh..wh.plnk/1.2", "f", b""), ("x", "f", b"x"))
    assert [e.path for e in layer.entries()] == ["x"]


def test_xattrs_devices_fifos_preserved():
    layer = L(("x", "f", b"x", {"pax_headers": {"SCHILY.xattr.security.capability": "\x01\x02",
                                                  "SCHILY.xattr.user.k": "v"}}),
              ("dev/sda", "b", (8, 0)), ("dev/tty", "c", (5, 0)), ("fifo", "p"))
    fs = flatten([layer])
    assert fs["x"].xattrs == {"security.capability": b"\x01\x02", "user.k": b"v"}
    assert (fs["dev/sda"].kind, fs["dev/sda"].devmajor) == ("block", 8)
    assert (fs["dev/tty"].kind, fs["dev/tty"].devmajor) == ("char", 5)
    assert fs["fifo"].kind == "fifo"


def test_gnu_long_names_and_ustar_prefix():
    long = "d/" + "n" * 150 + "/file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        name = long if fmt != tarfile.USTAR_FORMAT else "p" * 120 + "/q.txt"
        fs = flatten([Layer.from_bytes(make_tar([(name, "f", b"z")], fmt=fmt))])
        assert name in fs


def test_walk_content_streams():
    layer = L(("a", "f", b"A" * 5000), ("b", "f", b"B"), ("c", "l", "a"))
    got = {}
    for e, stream in layer.walk():
        got[e.path] = stream.read() if stream is not None else None
    assert got == {"a": b"A" * 5000, "b": b"B", "c": None}
    # partially read streams are skipped correctly
    got = {}
    for e, stream in layer.walk():
        got[e.path] = stream.read(3) if stream is not None else None
    assert got == {"a": b"AAA", "b": b"B", "c": None}


def test_legacy_save_with_symlinked_duplicate_layer(tmp_path):
    """docker save writes a repeated layer once and symlinks the second copy."""
    layer = make_tar([("same", "f", b"same")])
    data = legacy_save([layer, layer], tags=("dup:1",))
    # rewrite l1/layer.tar as a symlink to ../l0/layer.tar
    src = tarfile.open(fileobj=io.BytesIO(data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for m in src.getmembers():
            if m.name == "l1/layer.tar":
                link = tarfile.TarInfo("l1/layer.tar")
                link.type, link.linkname = tarfile.SYMTYPE, "../l0/layer.tar"
                tf.addfile(link)
            else:
                tf.addfile(m, src.extractfile(m))
    p = tmp_path / "dup.tar"
    p.write_bytes(out.getvalue())
    [img] = load(p)
    assert img.diff_ids == [sha(layer)] * 2
    assert img.chain_ids[1] == chain_id(sha(layer), sha(layer))
    assert img.rootfs().paths() == ["same"]


def test_layout_dir_symlink_outside_is_rejected(tmp_path):
    from .builders import OCILayout
    o = OCILayout()
    layer = make_tar([("x", "f", b"x")])
    o.tag(o.image([layer]), "docker.io/library/x:1")
    o.write_dir(tmp_path / "layout")
    outside = tmp_path / "outside"
    outside.write_bytes(layer)
    blob = tmp_path / "layout" / "blobs" / "sha256" / sha(layer)[7:]
    blob.unlink()
    os.symlink(outside, blob)
    with pytest.raises(ImageFormatError, match="resolves outside the layout"):
        load(tmp_path / "layout")

"""One body per behaviour, over the three block drivers."""
from __future__ import annotations

import errno

import pytest

from thinp import errors
from thinp.drivers import METRIC_KEYS, Change, get_driver
from thinp.image import Entry, Layer, load

from ._block_helpers import BLOCK_DRIVERS, fixture_path, load_image_chain, make_driver, start_container, tree


@pytest.fixture(params=BLOCK_DRIVERS)
def drv(request, tmp_path):
    d = make_driver(request.param, tmp_path)
    yield d
    d.cleanup()


def _layer(items):
    return Layer.from_entries(items)


def test_registered(drv):
    assert get_driver.__module__  # registry importable
    assert drv.name in BLOCK_DRIVERS
    assert set(drv.stats()) == set(METRIC_KEYS)


def test_create_remove_exists_parent(drv):
    drv.create("a", None)
    drv.create("b", "a")
    assert drv.exists("a") and drv.exists("b") and not drv.exists("c")
    assert set(drv.list_layers()) >= {"a", "b"}
    assert drv.parent("b") == "a" and drv.parent("a") is None
    with pytest.raises(errors.DeviceExistsError):
        drv.create("a", None)
    with pytest.raises(errors.DeviceNotFoundError):
        drv.create("x", "nope")
    with pytest.raises(OSError) as e:
        drv.remove("a")                      # has a child
    assert e.value.errno == errno.EBUSY
    drv.remove("b")
    drv.remove("a")
    assert not drv.exists("a")
    with pytest.raises(errors.DeviceNotFoundError):
        drv.get("a")


def test_get_put_refcounted_and_busy(drv):
    drv.create("a", None, read_write=True)
    v1 = drv.get("a")
    v2 = drv.get("a")
    assert v1 is v2
    assert drv.stats()["mount_ops"] == 1
    drv.put("a")
    with pytest.raises(OSError) as e:
        drv.remove("a")
    assert e.value.errno == errno.EBUSY
    drv.put("a")
    with pytest.raises(OSError):
        drv.put("a")
    drv.remove("a")


def test_image_layer_is_read_only(drv):
    drv.create("img", None)
    v = drv.get("img")
    with pytest.raises(OSError) as e:
        v.create("/x")
    assert e.value.errno == errno.EROFS
    drv.put("img")


def test_snapshot_isolation(drv):
    drv.create("a", None, read_write=True)
    v = drv.get("a")
    v.mkdir("/d")
    v.write("/d/f", 0, b"one" * 5000)
    drv.put("a")
    drv.create("b", "a", read_write=True)
    w = drv.get("b")
    a = drv.get("a")
    assert w.content("/d/f") == a.content("/d/f")          # the snapshot starts with a's file
    w.write("/d/f", 0, b"TWO")
    w.write("/d/g", 0, b"new")
    assert not a.exists("/d/g")
    assert a.content("/d/f") != w.content("/d/f")
    assert drv.changes("b", "a") == [Change("/d", "C"), Change("/d/f", "C"), Change("/d/g", "A")]


def test_apply_diff_whiteouts_and_changes(drv):
    base = _layer([(Entry("etc", "dir", mode=0o755), None), (Entry("etc/a", "file", size=3), b"aaa"),
                   (Entry("etc/b", "file", size=3), b"bbb"), (Entry("opt", "dir"), None),
                   (Entry("opt/x", "file", size=1), b"x"), (Entry("ln", "symlink", linkname="etc/a"), None),
                   (Entry("etc/hl", "hardlink", linkname="etc/a"), None)])
    top = _layer([(Entry("etc/b", "whiteout"), None), (Entry("opt", "opaque"), None),
                  (Entry("opt/y", "file", size=2), b"yy"), (Entry("new", "file", size=4), b"nnnn")])
    drv.create("l0", None)
    assert drv.apply_diff("l0", None, base) == 7
    drv.create("l1", "l0")
    drv.apply_diff("l1", "l0", top)
    v = drv.get("l1")
    t = tree(v)
    assert "/etc/b" not in t and "/opt/x" not in t and t["/opt/y"][1] == 2 and t["/new"][1] == 4
    assert v.stat("/etc/hl").st_ino == v.stat("/etc/a").st_ino
    assert v.readlink("/ln") == "etc/a"
    ch = drv.changes("l1", "l0")
    assert Change("/etc/b", "D") in ch and Change("/opt/x", "D") in ch and Change("/new", "A") in ch
    assert Change("/opt/y", "A") in ch
    drv.put("l1")
    d = drv.diff("l1", "l0")
    kinds = {(e.path, e.kind) for e in d.entries()}
    assert ("etc/b", "whiteout") in kinds and ("new", "file") in kinds
    assert drv.stats()["diff_work"] > 0


def test_diff_round_trip(drv):
    base = _layer([(Entry("a", "dir"), None), (Entry("a/f", "file", size=5000), b"q" * 5000),
                   (Entry("a/gone", "file", size=3), b"bye")])
    drv.create("p", None)
    drv.apply_diff("p", None, base)
    drv.create("x", "p", read_write=True)
    v = drv.get("x")
    v.write("/a/f", 100, b"changed")
    v.write("/a/g", 0, b"g" * 10)
    v.unlink("/a/gone")
    v.symlink("g", "/a/s")
    drv.put("x")
    d = drv.diff("x", "p")
    assert ("a/gone", "whiteout") in {(e.path, e.kind) for e in d.entries()}
    drv.create("y", "p")
    drv.apply_diff("y", "p", d)
    tx, ty = tree(drv.get("x")), tree(drv.get("y"))
    assert "/a/gone" not in ty and "/a/s" in ty and "/a/g" in ty
    assert {k: v[:2] for k, v in tx.items()} == {k: v[:2] for k, v in ty.items()}
    assert drv.diff_size("x", "p") == d.size


def test_dive_image_flattens_like_the_image_model(drv):
    img = load(fixture_path("images", "test-docker-image.tar"))[0]
    ids = load_image_chain(drv, img)
    view = drv.get(ids[-1])
    got = set(tree(view))
    from thinp.image import flatten

    flat = flatten(img.layers)
    want = {"/" + p for p in flat.paths() if p}
    assert got == want
    for p in flat.files():
        assert view.stat("/" + p).st_size == flat[p].size
    assert drv.stats()["create_ops"] == len(img.layers)


def test_containers_and_page_cache_kind(drv):
    drv.create("img", None)
    drv.apply_diff("img", None, _layer([(Entry("bin", "dir"), None),
                                        (Entry("bin/sh", "file", size=65536), b"s" * 65536)]))
    for i in range(3):
        v = start_container(drv, f"c{i}", "img")
        data = v.read("/bin/sh")
        if drv.payload:
            assert data == b"s" * 65536
        else:                            # accounting mode: one version stamp per 4 KiB block
            assert len(data) == 16 and len(set(data.tolist())) == 1 and data[0] != 0
    cached = drv.stats()["page_cache_bytes"]
    if drv.capabilities().shares_page_cache == "block":
        assert cached == 65536           # the ARC holds each record once
    else:
        assert cached == 3 * 65536       # a copy per device / subvolume inode


def test_stats_count_every_layer(drv):
    drv.create("a", None, read_write=True)
    v = drv.get("a")
    v.write("/f", 0, b"x" * 10000)
    v.write("/g", 0, b"y" * 300)
    drv.put("a")
    drv.create("b", "a", read_write=True)
    w = drv.get("b")
    w.write("/f", 0, b"z" * 20000)
    w.unlink("/g")
    w.write("/h", 0, b"h" * 7)
    s = drv.stats()
    assert s["logical_bytes"] == (10000 + 300) + (20000 + 7)
    assert s["create_ops"] == 2 and s["physical_bytes"] > 0 and s["bytes_written"] > 0
    fs_inodes = s["inodes"]
    drv.create("c", "b")
    assert drv.stats()["inodes"] > fs_inodes


def test_utime_nofollow_on_a_dangling_symlink(drv):
    """dpkg's utimensat(AT_SYMLINK_NOFOLLOW) on a symlink to a missing file
    (the nginx trace does it): the link itself is touched, no ENOENT."""
    import inspect

    drv.create("c", None, read_write=True)
    v = drv.get("c")
    v.symlink("/nowhere", "/l")
    assert "follow_symlinks" in inspect.signature(v.utime).parameters
    v.utime("/l", (1000, 2000), follow_symlinks=False)
    assert v.lstat("/l").st_mtime == 2000
    drv.put("c")

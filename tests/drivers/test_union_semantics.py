"""The union drivers' own behaviour: copy-up, whiteouts, opaque dirs, EXDEV,
metacopy, layer limits, lookup probes, hard-link farms, full copies, page
cache, and the Driver contract pieces they share."""
from __future__ import annotations

import errno
import stat

import pytest

from thinp.drivers import Change, METRIC_KEYS, get_driver
from thinp.drivers.union import OVL_OPAQUE, WH_OPAQUE
from thinp.errors import DeviceExistsError, DeviceNotFoundError, NotSupportedError, TooManyLayersError

from .union_helpers import COPY_UP, UNION, image, layer, make, tree

BIG = 1 << 20


def base_image(drv):
    return image(drv, layer(("etc", "dir"), ("etc/big", "file", BIG), ("etc/small", "file", 100),
                            ("d", "dir"), ("d/a", "file"), ("d/sub", "dir"), ("d/sub/b", "file"),
                            ("lib", "symlink", "usr/lib"), ("usr", "dir"), ("usr/lib", "dir"),
                            ("usr/lib/x", "file", 5000)))


def container(drv, name="c"):
    ids = base_image(drv)
    drv.create(name, ids[-1], read_write=True)
    return drv.get(name)


def upper(drv, cid="c"):
    return drv.upper_dir(cid)


@pytest.mark.parametrize("name", UNION)
def test_registry_and_metric_keys(name):
    drv = make(name)
    assert drv.name == name
    assert tuple(drv.stats()) == METRIC_KEYS
    with pytest.raises(NotSupportedError, match="overlay2"):
        get_driver("nope")


@pytest.mark.parametrize("name", COPY_UP)
def test_append_to_a_lower_file_copies_it_up_whole(name):
    drv = make(name)
    v = container(drv)
    before = drv.stats()
    v.write("/etc/big", BIG, 10)
    s = drv.stats()
    assert s["copy_up_count"] - before["copy_up_count"] == 2  # /etc (a directory), then /etc/big
    assert s["copy_up_bytes"] - before["copy_up_bytes"] == BIG
    assert v.stat("/etc/big").st_size == BIG + 10
    assert drv.fs.lstat(upper(drv) + "/etc/big").st_size == BIG + 10
    # the image layer still has its own copy
    lower = drv.get("L0")
    assert lower.stat("/etc/big").st_size == BIG


def test_vfs_never_copies_up_and_every_layer_is_a_full_copy():
    drv = make("vfs")
    v = container(drv)
    v.write("/etc/big", BIG, 10)
    assert drv.stats()["copy_up_count"] == 0
    assert drv.usage("c").size >= BIG
    drv.create("c2", "L0", read_write=True)
    assert drv.usage("c2").size >= BIG  # a second full tree


@pytest.mark.parametrize("name", COPY_UP)
def test_open_for_write_copies_up_and_o_trunc_copies_no_data(name):
    drv = make(name)
    v = container(drv)
    v.open("/etc/small", write=True)
    assert drv.stats()["copy_up_bytes"] == 100
    v.open("/etc/big", write=True, truncate=True)
    s = drv.stats()
    assert s["copy_up_bytes"] == 100 and s["copy_up_count"] == 3
    assert v.stat("/etc/big").st_size == 0
    v.open("/usr/lib/x")            # read-only: nothing
    assert drv.stats()["copy_up_count"] == 3


@pytest.mark.parametrize("name", ("overlay", "overlay2"))
def test_overlay_whiteout_is_a_char_0_0_device(name):
    drv = make(name)
    v = container(drv)
    v.unlink("/etc/small")
    st = drv.fs.lstat(upper(drv) + "/etc/small")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not v.exists("/etc/small") and "small" not in v.listdir("/etc")
    with pytest.raises(FileNotFoundError):
        v.stat("/etc/small")
    assert drv.changes("c", "L0") == [Change("/etc", "C"), Change("/etc/small", "D")]
    # a file created over the whiteout replaces it
    v.create("/etc/small")
    assert stat.S_ISREG(drv.fs.lstat(upper(drv) + "/etc/small").st_mode)
    assert v.stat("/etc/small").st_size == 0


def test_aufs_whiteouts_are_wh_files_linked_to_the_branch_base():
    drv = make("aufs")
    v = container(drv)
    v.unlink("/etc/small")
    v.unlink("/usr/lib/x")
    up = upper(drv)
    fs = drv.fs
    assert fs.exists(up + "/etc/.wh.small") and fs.exists(up + "/usr/lib/.wh.x")
    base = fs.lstat(up + "/.wh..wh.aufs")
    assert fs.lstat(up + "/etc/.wh.small").st_ino == base.st_ino and base.st_nlink == 3
    assert v.listdir("/etc") == ["big"]
    assert v.listdir("/") == ["d", "etc", "lib", "usr"]   # bookkeeping names hidden
    assert Change("/etc/small", "D") in drv.changes("c", "L0")


@pytest.mark.parametrize("name", COPY_UP)
def test_rmdir_then_mkdir_makes_an_opaque_dir(name):
    drv = make(name)
    v = container(drv)
    for p in ("/d/sub/b", "/d/a"):
        v.unlink(p)
    v.rmdir("/d/sub")
    v.rmdir("/d")
    assert not v.exists("/d")
    v.mkdir("/d")
    assert v.listdir("/d") == []
    fs = drv.fs
    if name == "aufs":
        assert fs.exists(upper(drv) + "/d/" + WH_OPAQUE)
    else:
        assert fs.getxattr(upper(drv) + "/d", OVL_OPAQUE) == b"y"
    v.create("/d/new")
    assert v.listdir("/d") == ["new"]
    # the diff says so in OCI form
    lay = drv.diff("c", "L0")
    kinds = {(e.path, e.kind) for e in lay.entries()}
    if drv.native_diff:
        assert ("d", "opaque") in kinds and ("d/new", "file") in kinds
    else:
        assert ("d/new", "file") in kinds and ("d/a", "whiteout") in kinds


@pytest.mark.parametrize("name", UNION)
def test_rmdir_of_a_non_empty_merged_dir_is_refused(name):
    v = container(make(name))
    with pytest.raises(OSError) as e:
        v.rmdir("/d")
    assert e.value.errno == errno.ENOTEMPTY


@pytest.mark.parametrize("name", COPY_UP)
def test_renaming_a_lower_dir_gives_exdev_but_an_upper_dir_moves(name):
    drv = make(name)
    v = container(drv)
    with pytest.raises(OSError) as e:
        v.rename("/d", "/d2")
    assert e.value.errno == errno.EXDEV
    v.mkdir("/new")
    v.create("/new/f")
    v.rename("/new", "/etc/new")
    assert v.listdir("/etc/new") == ["f"]
    # a lower file renamed: copied up, and a whiteout where it was
    v.rename("/etc/small", "/etc/small2")
    assert not v.exists("/etc/small") and v.stat("/etc/small2").st_size == 100
    assert drv.stats()["copy_up_bytes"] == 100


def test_vfs_renames_directories():
    v = container(make("vfs"))
    v.rename("/d", "/d2")
    assert v.listdir("/d2") == ["a", "sub"]


def test_overlay2_metacopy_chmod_copies_no_data_until_the_first_write():
    drv = make("overlay2", metacopy="on")
    v = container(drv)
    want = v.content("/etc/big")
    v.chmod("/etc/big", 0o600)
    s = drv.stats()
    assert s["copy_up_bytes"] == 0 and s["copy_up_count"] == 2
    node = drv.fs.inode(upper(drv) + "/etc/big")
    assert node.nr_data_blocks == 0 and node.delayed is None
    assert v.stat("/etc/big").st_size == BIG and v.stat("/etc/big").st_mode & 0o777 == 0o600
    assert v.content("/etc/big") == want          # data still read from the lower
    v.write("/etc/big", 0, 4096)
    assert drv.stats()["copy_up_bytes"] == BIG    # the data follows at the first write
    assert v.content("/etc/big") != want
    # without metacopy the same chmod copies the file
    drv2 = make("overlay2")
    v2 = container(drv2)
    v2.chmod("/etc/big", 0o600)
    assert drv2.stats()["copy_up_bytes"] == BIG
    with pytest.raises(ValueError):
        make("aufs", metacopy=True)


@pytest.mark.parametrize("name,limit", [("overlay2", 128), ("aufs", 126)])
def test_layer_depth_limits(name, limit):
    drv = make(name)
    parent = None
    for i in range(limit + 1):
        drv.create(f"l{i}", parent)
        parent = f"l{i}"
    assert len(drv.branches(parent)) == limit + 1
    with pytest.raises(TooManyLayersError, match=str(limit)):
        drv.create("deep", parent, read_write=True)
    assert not drv.exists("deep")


def test_aufs_lookup_probes_one_branch_after_another():
    drv = make("aufs")
    layers = [layer(("bottom", "file"))] + [layer((f"f{i}", "file")) for i in range(1, 10)]
    ids = image(drv, *layers)
    drv.create("c", ids[-1], read_write=True)
    v = drv.get("c")
    p0 = drv.stats()["lookup_probes"]
    v.stat("/f9")                       # in the top image layer: upper, then L9
    p1 = drv.stats()["lookup_probes"]
    v.stat("/bottom")                   # in L0: all 11 branches
    p2 = drv.stats()["lookup_probes"]
    assert (p1 - p0, p2 - p1) == (2, 11)
    with pytest.raises(FileNotFoundError):
        v.stat("/absent")
    assert drv.stats()["lookup_probes"] - p2 == 11


def test_overlay_image_layers_are_hardlink_farms():
    drv = make("overlay")
    files = [(f"bin/f{i}", "file", 100) for i in range(50)]
    ids = image(drv, layer(("bin", "dir"), *files), layer(("etc", "dir"), ("etc/a", "file")),
                layer(("etc/b", "file")))
    fs = drv.fs
    root = drv.upper_dir(ids[-1])
    # every image layer links the same 50 files: one inode, three names
    assert fs.lstat(root + "/bin/f0").st_nlink == 3
    u0, u2 = drv.usage(ids[0]), drv.usage(ids[2])
    assert u0.inodes >= 51 and u2.inodes < 10      # the farm's own inodes are its dirs and new files
    before = drv.stats()["inodes"]
    drv.create("L3", ids[-1])
    assert drv.stats()["inodes"] - before == 1 + 1 + 2   # <id>, root, and root's 2 directories
    drv.create("c", "L3", read_write=True)
    v = drv.get("c")
    assert v.listdir("/etc") == ["a", "b"]
    assert drv.metadata("c")["LowerDir"].endswith("L3/root")


def test_overlay_image_layer_replacing_a_file_keeps_the_parents_copy():
    drv = make("overlay")
    ids = image(drv, layer(("a", "file", 10)), layer(("a", "file", 20), ("b", "whiteout")))
    assert drv.get(ids[0]).stat("/a").st_size == 10
    assert drv.get(ids[1]).stat("/a").st_size == 20


@pytest.mark.parametrize("name", ("aufs", "overlay", "overlay2"))
def test_page_cache_is_shared_by_inode_until_copy_up(name):
    drv = make(name)
    ids = base_image(drv)
    views = []
    for i in range(5):
        drv.create(f"c{i}", ids[-1], read_write=True)
        views.append(drv.get(f"c{i}"))
    for v in views:
        v.read("/etc/big")
    assert drv.stats()["page_cache_bytes"] == BIG
    views[0].write("/etc/big", 0, 1)
    views[0].read("/etc/big")
    assert drv.stats()["page_cache_bytes"] == 2 * BIG


def test_vfs_page_cache_has_one_copy_per_layer():
    drv = make("vfs")
    ids = base_image(drv)
    for i in range(3):
        drv.create(f"c{i}", ids[-1], read_write=True)
        drv.get(f"c{i}").read("/etc/big")
    assert drv.stats()["page_cache_bytes"] == 3 * BIG


@pytest.mark.parametrize("name", UNION)
def test_layer_lifecycle_errors_and_refcounts(name):
    drv = make(name)
    ids = base_image(drv)
    with pytest.raises(DeviceExistsError):
        drv.create(ids[0], None)
    with pytest.raises(DeviceNotFoundError):
        drv.create("x", "missing")
    with pytest.raises(DeviceNotFoundError):
        drv.get("missing")
    drv.create("c", ids[0], read_write=True)
    v1, v2 = drv.get("c"), drv.get("c")
    assert v1 is v2 and drv.stats()["mount_ops"] == 1
    with pytest.raises(OSError) as e:
        drv.remove("c")
    assert e.value.errno == errno.EBUSY
    with pytest.raises(OSError) as e:
        drv.remove(ids[0])
    assert e.value.errno == errno.EBUSY            # has a child
    drv.put("c")
    drv.put("c")
    with pytest.raises(OSError):
        drv.put("c")
    inodes = drv.stats()["inodes"]
    drv.remove("c")
    assert not drv.exists("c") and drv.stats()["inodes"] < inodes
    drv.remove(ids[0])
    assert drv.list_layers() == []
    # image layers are read-only when mounted
    drv.create("i", None)
    with pytest.raises(OSError) as e:
        drv.get("i").create("/x")
    assert e.value.errno == errno.EROFS


@pytest.mark.parametrize("name", UNION)
def test_symlinks_in_the_merged_view_are_followed_across_layers(name):
    drv = make(name)
    v = container(drv)
    assert v.stat("/lib/x").st_size == 5000       # /lib -> usr/lib lives in the image
    v.write("/lib/new", 0, 7)                     # written through the lower symlink
    assert v.stat("/usr/lib/new").st_size == 7
    assert v.readlink("/lib") == "usr/lib"


@pytest.mark.parametrize("name", UNION)
def test_changes_and_diff_round_trip_into_a_new_layer(name):
    drv = make(name)
    v = container(drv)
    v.write("/etc/small", 0, b"x" * 50 if v.payload else 50)
    v.create("/etc/added")
    v.write("/etc/added", 0, 3000)
    v.unlink("/d/a")
    v.mkdir("/newdir")
    v.symlink("/etc/added", "/newdir/ln")
    v.chmod("/usr/lib/x", 0o700)
    got = {c.path: c.kind for c in drv.changes("c", "L0")}
    assert {p: got[p] for p in ("/etc/small", "/etc/added", "/d/a", "/newdir", "/newdir/ln", "/usr/lib/x")} == {
        "/etc/small": "C", "/etc/added": "A", "/d/a": "D", "/newdir": "A", "/newdir/ln": "A", "/usr/lib/x": "C"}
    lay = drv.diff("c", "L0")
    assert drv.diff_size("c", "L0") == lay.size == 100 + 3000 + 5000
    # commit: the diff applied as a new image layer gives the container's view
    drv.create("L1", "L0")
    drv.apply_diff("L1", "L0", lay)
    assert tree(drv.get("L1")) == tree(v)
    # and into another driver the same
    other = make("overlay2" if name != "overlay2" else "vfs")
    image(other, *[layer(("etc", "dir"), ("etc/big", "file", BIG), ("etc/small", "file", 100),
                         ("d", "dir"), ("d/a", "file"), ("d/sub", "dir"), ("d/sub/b", "file"),
                         ("lib", "symlink", "usr/lib"), ("usr", "dir"), ("usr/lib", "dir"),
                         ("usr/lib/x", "file", 5000))])
    other.create("L1", "L0")
    other.apply_diff("L1", "L0", lay)
    assert tree(other.get("L1")) == tree(drv.get("L1"))
    assert drv.stats()["diff_work"] > 0


@pytest.mark.parametrize("name", UNION)
def test_dive_image_applies_like_flatten(name, fixtures_dir):
    from thinp.image import flatten, load

    img = load(fixtures_dir / "images" / "test-docker-image.tar")[0]
    drv = make(name)
    parent = None
    for i, lay in enumerate(img.layers):
        drv.create(f"L{i}", parent)
        drv.apply_diff(f"L{i}", parent, lay)
        parent = f"L{i}"
    want = flatten(img.layers)
    v = drv.get(parent)
    got = tree(v)
    kinds = {"file": "file", "dir": "dir", "symlink": "symlink", "hardlink": "file"}
    expect = {"/" + p: (kinds.get(n.kind, "dev"), n.size if n.kind in ("file", "hardlink") else 0)
              for p, n in want.nodes.items() if p}
    assert {p: g[:2] for p, g in got.items()} == expect
    assert not v.exists("/root/example/somefile3.txt") and not v.exists("/root/example")
    if name == "overlay2":
        fs = drv.fs
        wh = drv.upper_dir("L9") + "/root/example"
        assert stat.S_ISCHR(fs.lstat(wh).st_mode)
    # changes of the last layer against its parent match its tar
    assert drv.changes(parent, f"L{len(img.layers) - 2}")


@pytest.mark.parametrize("fstype", ("ext4", "xfs"))
def test_backing_filesystem_choice_and_payload_mode(fstype):
    drv = make("overlay2", fstype=fstype, payload=True, size="512MiB")
    assert drv.fs.fstype == fstype and drv.device.payload
    ids = image(drv, layer(("a", "file", 5000)))
    drv.create("c", ids[0], read_write=True)
    v = drv.get("c")
    data = v.read("/a")
    v.write("/a", 5000, b"tail")
    assert v.read("/a") == data + b"tail"
    assert drv.get(ids[0]).read("/a") == data
    assert drv.status()[1] == ("Backing Filesystem", fstype)


@pytest.mark.parametrize("name", UNION)
def test_stats_count_physical_logical_and_creates(name):
    drv = make(name)
    ids = base_image(drv)
    s0 = drv.stats()
    drv.create("c", ids[-1], read_write=True)
    drv.get("c").write("/new", 0, 8192)
    s = drv.stats()
    assert s["create_ops"] == s0["create_ops"] + 1
    assert s["logical_bytes"] - s0["logical_bytes"] >= 8192
    assert s["physical_bytes"] >= s["metadata_bytes"] > 0
    assert s["bytes_written"] >= s0["bytes_written"] + 8192
    assert s["inodes"] > s0["inodes"]


def test_overlay_layers_on_a_container_copy_its_upper_and_share_its_lower():
    drv = make("overlay")
    ids = base_image(drv)
    drv.create("c", ids[-1], read_write=True)
    v = drv.get("c")
    v.unlink("/etc/small")
    v.write("/etc/new", 0, 1000)
    want = tree(v)
    drv.put("c")
    drv.create("c2", "c", read_write=True)       # moby: copy the upper, same lower-id
    assert tree(drv.get("c2")) == want
    assert drv.branches("c2")[1] == drv.branches("c")[1]
    drv.create("img", "c")                        # an image layer: a farm of the merged tree
    assert tree(drv.get("img")) == want
    root = drv.upper_dir("img")
    lower_root = drv.upper_dir(ids[-1])
    assert drv.fs.lstat(root + "/etc/big").st_ino == drv.fs.lstat(lower_root + "/etc/big").st_ino
    assert drv.fs.lstat(root + "/etc/new").st_ino != drv.fs.lstat(drv.upper_dir("c") + "/etc/new").st_ino


@pytest.mark.parametrize("name", ("vfs", "aufs", "overlay", "overlay2"))
def test_unlinked_file_leaves_the_page_cache(name):
    drv = make(name)
    ids = base_image(drv)
    drv.create("c", ids[-1], read_write=True)
    v = drv.get("c")
    v.read("/etc/big")
    before = drv.stats()["page_cache_bytes"]
    v.write("/tmpfile", 0, 3 * 4096)
    v.read("/tmpfile")
    assert drv.stats()["page_cache_bytes"] == before + 3 * 4096
    v.unlink("/tmpfile")
    assert drv.stats()["page_cache_bytes"] == before
    v.write("/tmpfile2", 0, 4096)          # may reuse the inode number: starts cold
    assert drv.stats()["page_cache_bytes"] == before

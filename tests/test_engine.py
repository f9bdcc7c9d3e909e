"""The Docker-like engine on the reference driver, over the real fixture images."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

import thinp
from thinp.drivers import METRIC_KEYS, Change
from thinp.engine import (ALL_METRIC_KEYS, ContainerConflictError, ContainerNotFoundError,
                          Engine, INIT_LAYER_PATHS)
from thinp.errors import (ImageConflictError, ImageNotFoundError, NotSupportedError,
                          TooManyLayersError)
from thinp.image import flatten

DIVE = "test-docker-image.tar"


@pytest.fixture
def images(fixtures_dir):
    d = fixtures_dir / "images"
    if not (d / DIVE).exists():
        pytest.skip(f"image fixtures missing in {d}")
    return d


@pytest.fixture
def engine(tmp_path):
    with Engine("reference", root=tmp_path / "engine", payload=True) as e:
        yield e


def _tree(view) -> dict:
    """path -> (kind, size of files) of a mounted view."""
    import stat as _stat

    out = {}
    for top, dirs, files in view.walk("/"):
        for name in dirs + files:
            p = top.rstrip("/") + "/" + name
            st = view.lstat(p)
            kind = {_stat.S_IFREG: "file", _stat.S_IFDIR: "dir", _stat.S_IFLNK: "symlink",
                    _stat.S_IFCHR: "char", _stat.S_IFBLK: "block", _stat.S_IFIFO: "fifo"}[
                _stat.S_IFMT(st.st_mode)]
            out[p] = (kind, st.st_size if kind == "file" else None)
    return out


def _rootfs_tree(layers) -> dict:
    fs = flatten(layers)
    return {"/" + p: (n.kind, n.size if n.kind == "file" else None) for p, n in
            ((p, fs.nodes[p]) for p in fs.paths())}


def _init_paths() -> set:
    out = set()
    for path, _ in INIT_LAYER_PATHS:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            out.add("/" + "/".join(parts[:i]))
    return out


# ------------------------------------------------------------------ basics
def test_engine_is_public_and_cleans_up_its_temp_root():
    assert thinp.Engine is Engine
    with Engine("reference") as e:
        root = e.root
        assert os.path.isdir(root)
        assert e.driver_name == "reference" and e.images() == [] and e.ps(all=True) == []
    assert not os.path.exists(root)
    e.close()   # idempotent


def test_unknown_driver_is_not_supported_and_leaves_nothing(tmp_path):
    with pytest.raises(NotSupportedError, match="floppy"):
        Engine("floppy")
    assert not any(p.name.startswith("thinp-engine-") for p in tmp_path.iterdir())


def test_default_driver_is_overlay2():
    import inspect

    assert inspect.signature(Engine).parameters["driver"].default == "overlay2"


def test_metrics_are_one_flat_dict_with_fixed_keys(engine, images):
    m = engine.metrics()
    assert tuple(m) == ALL_METRIC_KEYS and tuple(m)[:len(METRIC_KEYS)] == METRIC_KEYS
    assert all(isinstance(v, int) and v == 0 for k, v in m.items()
               if k not in ("inodes", "physical_bytes", "logical_bytes"))
    engine.load(images / DIVE)
    m = engine.metrics()
    assert tuple(m) == ALL_METRIC_KEYS
    assert m["images"] == 1 and m["layers"] == 14 and m["image_layers"] == 14
    assert m["create_ops"] == 14 and m["layers_created"] == 14
    assert m["image_layer_bytes"] == engine.image("dive-test").size == m["layer_bytes_applied"]


# ------------------------------------------------------------------ the round trip
def test_load_create_diff_commit_save_load_round_trip(engine, images, tmp_path):
    (img,) = engine.load(images / DIVE)
    assert img.tags == ["dive-test:latest"] and len(img.layers) == 14
    c = engine.run("dive-test", name="work")
    layers = set(engine.driver.list_layers())
    assert layers == {cid[7:] for cid in img.chain_ids} | {c.id, c.id + "-init"}
    assert engine.driver.parent(c.id) == c.init_id
    assert engine.driver.parent(c.init_id) == img.chain_ids[-1][7:]
    assert engine.diff(c) == []                          # init-layer files never show
    assert {ch.path for ch in engine.driver.changes(c.init_id, img.chain_ids[-1][7:])} >= {
        "/.dockerenv", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab", "/proc", "/sys"}
    assert c.exists("/.dockerenv") and c.readlink("/etc/mtab") == "/proc/mounts"
    before = _tree(c.view)
    image_tree = _rootfs_tree(img.layers)
    assert {p: v for p, v in before.items() if p not in _init_paths()} == \
        {p: v for p, v in image_tree.items() if p not in _init_paths()}
    c.write("/root/new.txt", 0, b"committed content\n")
    c.unlink("/somefile.txt")
    c.mkdir("/opt")
    c.symlink("/root/new.txt", "/opt/link")
    c.chmod("/bin", 0o700)
    rows = engine.diff("work")
    assert rows == sorted([Change("/bin", "C"), Change("/opt", "A"), Change("/opt/link", "A"),
                           Change("/root", "C"), Change("/root/new.txt", "A"),
                           Change("/somefile.txt", "D")])
    new = engine.commit(c, "dive-test:committed", message="a step", author="me <me@x>",
                        changes=['CMD ["/bin/sh", "-c", "cat /root/new.txt"]', "ENV MODE=test"])
    assert len(new.layers) == 15 and new.diff_ids[:14] == img.diff_ids
    assert new.parent == img.id and new.tags == ["dive-test:committed"]
    assert new.config["config"]["Cmd"] == ["/bin/sh", "-c", "cat /root/new.txt"]
    assert "MODE=test" in new.config["config"]["Env"]
    top = new.layers[-1]
    assert top.diff_id == engine.driver.diff(c.id, c.init_id).diff_id   # reproducible on the reference
    m = engine.metrics()
    assert m["commits"] == 1 and m["image_layers"] == 15 and m["layers_shared"] == 14
    out = tmp_path / "saved.tar"
    n = engine.save(["dive-test:committed"], out)
    assert n == out.stat().st_size and engine.metrics()["saved_bytes"] == n
    with Engine("reference", root=tmp_path / "second", payload=True) as e2:
        (again,) = e2.load(out)
        assert again.id == new.id and again.diff_ids == new.diff_ids
        assert again.tags == ["dive-test:committed"]
        c2 = e2.run("dive-test:committed")
        assert c2.read("/root/new.txt") == b"committed content\n"
        assert not c2.exists("/somefile.txt") and c2.readlink("/opt/link") == "/root/new.txt"
        assert oct(c2.stat("/bin").st_mode & 0o777) == oct(0o700)
        assert e2.diff(c2) == []
    # loading the same archive into the first engine shares every layer
    m0 = engine.metrics()
    engine.load(out)
    m1 = engine.metrics()
    assert m1["layers_created"] == m0["layers_created"] and m1["layers_shared"] == m0["layers_shared"] + 15
    assert m1["layers"] == m0["layers"]


def test_export_shares_nothing_save_shares_layers(engine, images, tmp_path):
    (img,) = engine.load(images / DIVE)
    c = engine.create("dive-test")
    buf = io.BytesIO()
    n_export = engine.export(c, buf)
    assert n_export == len(buf.getvalue())
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        names = tf.getnames()
    assert not any(os.path.basename(x).startswith(".wh.") for x in names)
    assert ".dockerenv" in names and "somefile.txt" in names
    n_save = engine.save("dive-test", tmp_path / "dive.tar")
    assert n_export < n_save        # the save keeps every layer, overwritten and whited-out bytes too
    m0 = engine.metrics()
    assert m0["exported_bytes"] == n_export and m0["saved_bytes"] == n_save
    flat = engine.import_(buf.getvalue(), "dive-flat:1", message="flattened")
    m1 = engine.metrics()
    assert len(flat.layers) == 1
    assert m1["layers_created"] == m0["layers_created"] + 1 and m1["layers_shared"] == m0["layers_shared"]
    assert m1["image_layer_bytes"] - m0["image_layer_bytes"] == flat.size > 0
    assert m1["imported_bytes"] == flat.size
    assert engine.history("dive-flat:1")[0]["comment"] == "flattened"
    # the flat image has the container's tree, init files included
    c2 = engine.create("dive-flat:1")
    assert _tree(c2.view) == _tree(c.view)
    # whereas loading the save shares all 14 layers
    engine.load(tmp_path / "dive.tar")
    m2 = engine.metrics()
    assert m2["layers_created"] == m1["layers_created"] and m2["image_layer_bytes"] == m1["image_layer_bytes"]


# ------------------------------------------------------------------ tag / rmi
def test_tag_and_rmi_rules(engine, images):
    (img,) = engine.load(images / DIVE)
    engine.tag("dive-test", "other:1")
    engine.tag("dive-test", "dive-test:two")
    assert {(r["repository"], r["tag"]) for r in engine.images()} == {
        ("dive-test", "latest"), ("dive-test", "two"), ("other", "1")}
    assert engine.rmi("dive-test:two") == [("Untagged", "dive-test:two")]
    with pytest.raises(ImageConflictError, match="multiple repositories"):
        engine.rmi(img.id)
    c = engine.create("dive-test")
    engine.rmi("other:1")
    with pytest.raises(ImageConflictError, match="container"):
        engine.rmi("dive-test")
    child = engine.commit(c, "child:1")
    assert child.id != img.id
    engine.rm(c)
    assert engine.metrics()["layers"] == 14          # the committed diff was empty: no new layer
    with pytest.raises(ImageConflictError, match="child"):
        engine.rmi("dive-test")
    rec = engine.rmi("child:1")
    assert ("Deleted", child.id) in rec and ("Deleted", img.id) not in rec   # the parent is tagged
    rec = engine.rmi("dive-test")
    assert rec == [("Untagged", "dive-test:latest"), ("Deleted", img.id)]
    m = engine.metrics()
    assert m["images"] == 0 and m["layers"] == 0 and m["layers_removed"] == 14
    assert engine.driver.list_layers() == []
    with pytest.raises(ImageNotFoundError):
        engine.rmi("dive-test")


def test_rmi_keeps_layers_a_container_needs(engine, images):
    engine.load(images / DIVE)
    c = engine.create("dive-test")
    engine.rmi("dive-test", force=True)
    assert engine.metrics()["images"] == 0
    assert c.exists("/somefile.txt") and engine.metrics()["layers"] == 16
    engine.rm(c)
    assert engine.driver.list_layers() == []


# ------------------------------------------------------------------ inspect / history
def test_inspect_and_history(engine, images):
    (img,) = engine.load(images / DIVE)
    info = engine.inspect("dive-test")
    assert info["Id"] == img.id and info["RepoTags"] == ["dive-test:latest"]
    assert info["RootFS"]["Layers"] == img.diff_ids
    assert info["GraphDriver"]["Name"] == "reference" and info["Size"] == img.size
    hist = engine.history("dive-test")
    assert len(hist) == len(img.history_entries)
    assert hist[0]["id"] == img.id and all(r["id"] == "<missing>" for r in hist[1:])
    assert sum(r["size"] for r in hist) == img.size
    c = engine.run("dive-test", [("write", "/x", 0, b"x" * 10)], name="insp")
    ci = engine.inspect("insp")
    assert ci["Id"] == c.id and ci["Name"] == "/insp" and ci["State"]["Running"]
    assert ci["GraphDriver"]["Data"]["Parent"] == c.init_id
    new = engine.commit(c, message="msg", author="someone")
    h = engine.history(new.id)
    assert h[0]["comment"] == "msg" and h[0]["author"] == "someone" and h[0]["size"] == 10
    assert h[1]["id"] == "<missing>" and len(h) == len(hist) + 1
    assert engine.inspect(new.id)["Parent"] == img.id


# ------------------------------------------------------------------ fixtures with whiteouts
@pytest.mark.parametrize("name", ["whiteout_image.tar", "whiteout_dir.tar", "overwritten_file.tar",
                                  "hello-world-v25.tar", DIVE])
def test_container_view_is_the_flattened_image(engine, images, name):
    (img,) = engine.load(images / name)
    c = engine.create(img.id)
    want = _rootfs_tree(img.layers)
    got = _tree(c.view)
    assert {p: v for p, v in got.items() if p not in _init_paths()} == \
        {p: v for p, v in want.items() if p not in _init_paths()}
    fs = flatten(img.layers)
    for p in fs.files()[:50]:
        if fs.nodes[p].source is not None and "/" + p not in _init_paths():
            assert c.read("/" + p) == _content_of(img.layers, fs, p), p
    engine.rm(c)
    engine.rmi(img.id, force=True)
    assert engine.driver.list_layers() == []


def _content_of(layers, fs, p):
    li, index = fs.nodes[p].source
    for i, (e, stream) in enumerate(layers[li].walk(verify=False)):
        if i == index:
            return stream.read()
    raise KeyError(p)


def test_whiteout_image_hides_files(engine, images):
    (img,) = engine.load(images / "whiteout_image.tar")
    c = engine.create(img.id)
    assert not c.exists("/foo.txt")
    (img2,) = engine.load(images / "whiteout_dir.tar")
    c2 = engine.create(img2.id)
    assert c2.listdir("/a") == ["baz"]          # L2 whites out a/, L3 makes it again


# ------------------------------------------------------------------ pull
def test_pull_from_a_local_registry(engine, images, tmp_path):
    (img,) = engine.load(images / DIVE)
    registry = tmp_path / "registry"
    (registry / "dive-test").mkdir(parents=True)
    engine.save("dive-test", registry / "dive-test" / "v1", format="oci", directory=True)
    engine.save("dive-test", registry / "dive-test" / "v2.tar")
    index_registry = tmp_path / "index-registry"
    engine.tag("dive-test", "library/other:7")
    engine.save(["other:7"], index_registry, format="oci", directory=True)
    with Engine("reference", root=tmp_path / "puller", payload=True) as e2:
        a = e2.pull("dive-test:v1", registry)
        assert a.id == img.id and e2.images()[0]["tag"] == "v1"
        b = e2.pull("dive-test:v2", registry)
        assert b.id == img.id and sorted(r["tag"] for r in e2.images()) == ["v1", "v2"]
        assert e2.metrics()["layers_created"] == 14 and e2.metrics()["layers_shared"] == 14
        o = e2.pull("other:7", index_registry)
        assert o.id == img.id and "other:7" in e2.image("other:7").tags
        with pytest.raises(ImageNotFoundError, match="manifest unknown"):
            e2.pull("dive-test:nope", registry)
        c = e2.run("dive-test:v2")
        assert c.exists("/somefile.txt")


# ------------------------------------------------------------------ containers
def test_containers_ps_rm_and_names(engine, images):
    engine.load(images / "hello-world-v25.tar")
    (row,) = engine.images()
    assert row["repository"] == "<none>"
    a = engine.create(row["image_id"], name="a")
    b = engine.run(row["image_id"], name="b")
    assert [r["name"] for r in engine.ps()] == ["b"]
    assert sorted(r["name"] for r in engine.ps(all=True)) == ["a", "b"]
    with pytest.raises(ContainerConflictError, match="already in use"):
        engine.create(row["image_id"], name="a")
    with pytest.raises(ContainerConflictError, match="running"):
        engine.rm("b")
    assert engine.container(b.id[:10]) is b
    engine.stop(b)
    assert engine.ps() == [] and engine.container("b").state == "exited"
    engine.rm("b")
    engine.rm(a)
    with pytest.raises(ContainerNotFoundError):
        engine.container("a")
    m = engine.metrics()
    assert m["containers"] == 0 and m["layers"] == 1
    assert engine.driver.list_layers() == [engine.image(row["image_id"]).chain_ids[0][7:]]


def test_too_many_layers_leaves_nothing_half_made(tmp_path, images):
    with Engine("reference", root=tmp_path / "small", max_layers=10) as e:
        with pytest.raises(TooManyLayersError):
            e.load(images / DIVE)
        assert e.images() == [] and e.driver.list_layers() == []
        assert os.listdir(os.path.join(e.root, "image", "layers")) == []
        # a tag the failed load would have moved stays where it was
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            ti = tarfile.TarInfo("only")
            ti.size = 1
            tf.addfile(ti, io.BytesIO(b"1"))
        flat = e.import_(buf.getvalue(), "dive-test:latest")
        with pytest.raises(TooManyLayersError):
            e.load(images / DIVE)
        assert e.image("dive-test:latest").id == flat.id and len(e.store) == 1
        assert e.image("dive-test:latest").tags == ["dive-test:latest"]
        assert e.driver.list_layers() == [flat.chain_ids[0][7:]]
    with Engine("reference", root=tmp_path / "fits", max_layers=15) as e:
        e.load(images / DIVE)
        with pytest.raises(TooManyLayersError):   # init layer fits (15), the container does not
            e.create("dive-test")
        assert e.ps(all=True) == [] and len(e.driver.list_layers()) == 14
        assert e.store.users == {}


def test_accounting_mode_engine(tmp_path, images):
    with Engine("reference", root=tmp_path / "acct") as e:
        (img,) = e.load(images / DIVE)
        c = e.run("dive-test")
        c.write("/big", 0, 1 << 20)
        c.write("/root/bytes", 0, b"abc")
        assert c.stat("/big").st_size == 1 << 20
        rows = e.diff(c)
        assert Change("/big", "A") in rows and Change("/root/bytes", "A") in rows
        new = e.commit(c, "acct:1")
        assert new.layers[-1].size == (1 << 20) + 3      # zeros stand in for the bytes
        c2 = e.create("acct:1")
        assert c2.stat("/big").st_size == 1 << 20
        buf = io.BytesIO()
        assert e.export(c2, buf) > 1 << 20


def test_run_applies_ops_and_exec(engine, images):
    engine.load(images / "hello-world-v25.tar")
    img_id = engine.images()[0]["image_id"]
    c = engine.run(img_id, lambda v: v.write("/from-callable", 0, b"1"))
    engine.exec(c, [("mkdir", "/d"), ("write", "/d/f", 0, b"22"), ("rename", "/d/f", "/d/g")])
    assert c.read("/d/g") == b"22" and c.read("/from-callable") == b"1"
    assert engine.diff(c) == [Change("/d", "A"), Change("/d/g", "A"), Change("/from-callable", "A")]
    assert engine.mount(c) is c.view
    df = engine.df()
    assert df["containers"][c.id]["size_rw"] == 3
    assert df["images"]["layers_bytes"] == engine.image(img_id).size
    assert "reference" in repr(engine)
    m = engine.metrics()
    assert m["running"] == 1 and m["mount_ops"] == 2     # the init layer once, the container once


# ------------------------------------------------------------------ every driver
def _driver_names():
    from tests.drivers.contract import driver_names

    return driver_names()


@pytest.mark.parametrize("name", _driver_names())
def test_engine_on_every_driver(name, images, tmp_path):
    """The same session on each registered driver: same views, same rows, same keys."""
    from tests.drivers.contract import DRIVER_TEST_OPTIONS

    with Engine(name, root=tmp_path / name, payload=True, **DRIVER_TEST_OPTIONS.get(name, {})) as e:
        (img,) = e.load(images / DIVE)
        c = e.run("dive-test")
        c.write("/root/new", 0, b"new")
        c.unlink("/somefile.txt")
        c.write("/tmp/x", 0, b"x" * 5000)
        assert {ch for ch in e.diff(c) if ch.kind in "AD"} == {
            Change("/root/new", "A"), Change("/somefile.txt", "D"), Change("/tmp/x", "A")}
        new = e.commit(c, "dive-test:next")
        assert len(new.layers) == 15
        c2 = e.create("dive-test:next")
        assert c2.read("/root/new") == b"new" and not c2.exists("/somefile.txt")
        assert e.diff(c2) == []
        m = e.metrics()
        assert tuple(m) == ALL_METRIC_KEYS and m["layers"] == 15 + 4 and m["containers"] == 2
        e.rm(c, force=True)
        e.rm(c2)
        e.rmi("dive-test:next")
        e.rmi("dive-test")
        assert e.driver.list_layers() == [] and e.metrics()["images"] == 0

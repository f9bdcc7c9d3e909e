"""commit / import_ / history / inspect / changes, as docker does them."""
import io
import json
import tarfile

import pytest

from thinp.image import (EMPTY_TAR_DIFF_ID, Entry, Layer, apply_changes, commit,
                         history, import_, inspect, load, save)

from .conftest import fixture_path, make_tar

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-01-02T00:00:00Z"


def test_empty_tar_diff_id_is_dockers():
    # layer.EmptyLayer's DiffID in moby: sha256 of 1024 zero bytes
    assert EMPTY_TAR_DIFF_ID == "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


@pytest.fixture
def base():
    [img] = load(fixture_path("images", "whiteout_image.tar"))
    return img


def test_commit_adds_layer_and_history(base):
    diff = make_tar([("bar.txt", "f", b"changed"), (".wh.nothing", "f", b""), ("new/", "d"),
                     ("new/file", "f", b"hello")])
    img = commit(base, diff, message="my change", author="Jane <j@example.com>",
                 changes=["CMD [\"/bin/app\", \"-v\"]", "ENV A=1 B=\"two words\"", "EXPOSE 80 53/udp",
                          "LABEL org.x=y", "USER app", "WORKDIR /srv", "VOLUME /data",
                          "ONBUILD RUN echo hi"],
                 created_by="/bin/sh -c make", created=T1)
    assert img.parent == base.id
    assert img.diff_ids[:3] == base.diff_ids and len(img.diff_ids) == 4
    assert img.chain_ids[:3] == base.chain_ids
    assert img.layers[3].chain_id == img.chain_ids[3]
    h = img.config["history"][-1]
    assert h == {"created": T1, "author": "Jane <j@example.com>", "created_by": "/bin/sh -c make",
                 "comment": "my change"}
    c = img.config["config"]
    assert c["Cmd"] == ["/bin/app", "-v"]
    assert c["Env"] == ["A=1", "B=two words"]
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Labels"] == {"org.x": "y"}
    assert c["User"] == "app" and c["WorkingDir"] == "/srv"
    assert c["Volumes"] == {"/data": {}} and c["OnBuild"] == ["RUN echo hi"]
    assert img.rootfs().paths() == ["bar.txt", "new", "new/file"]
    assert img.config["author"] == "Jane <j@example.com>"
    # the base image is untouched
    assert base.config["config"] == {} and len(base.layers) == 3


def test_commit_config_only_is_empty_layer(base):
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    img = commit(base, empty.getvalue(), changes=["CMD sleep 1"], created=T1)
    assert img.diff_ids == base.diff_ids
    assert img.config["history"][-1] == {"created": T1, "empty_layer": True}
    assert img.config["config"]["Cmd"] == ["/bin/sh", "-c", "sleep 1"]
    rows = history(img)
    assert rows[0]["empty_layer"] and rows[0]["size"] == 0 and rows[0]["id"] == img.id


def test_commit_rejects_unknown_change(base):
    with pytest.raises(ValueError, match="RUN is not a valid change command"):
        commit(base, make_tar([("a", "f", b"a")]), changes=["RUN rm -rf /"])


def test_commit_chain_history_and_inspect(base):
    a = commit(base, make_tar([("a", "f", b"aaaa")]), message="first", created=T0)
    b = commit(a, make_tar([("b", "f", b"bb")]), message="second", author="me", created=T1)
    rows = history(b)
    assert [r["comment"] for r in rows[:2]] == ["second", "first"]
    assert [r["size"] for r in rows[:2]] == [2, 4]
    assert [r["id"] for r in rows[:2]] == [b.id, "<missing>"]
    # with the local images known, parents' IDs show on their last step
    rows = history(b, {i.id: i for i in (base, a, b)})
    assert [r["id"] for r in rows[:4]] == [b.id, a.id, base.id, "<missing>"]
    info = inspect(b)
    assert info["Id"] == b.id and info["Parent"] == a.id
    assert info["Author"] == "me" and info["Comment"] == "second"
    assert info["RootFS"]["Layers"] == b.diff_ids
    assert info["Size"] == base.size + 6
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"


def test_commit_save_load_round_trip(base, tmp_path):
    img = commit(base, make_tar([("x", "f", b"x" * 3000)]), message="m", created=T1,
                 repository="example.com/team/app:v2")
    save([img, base], tmp_path / "out.tar")
    back = {i.id: i for i in load(tmp_path / "out.tar")}
    assert back[img.id].diff_ids == img.diff_ids
    assert back[img.id].chain_ids == img.chain_ids
    assert back[img.id].tags == ["example.com/team/app:v2"]
    with tarfile.open(tmp_path / "out.tar") as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        repos = json.load(tf.extractfile("repositories"))
        # shared base layers are stored once
        blobs = [n for n in tf.getnames() if n.startswith("blobs/sha256/") and len(n) > 14]
    assert len(blobs) == len(set(blobs))
    assert set(repos) == {"example.com/team/app", "bazel/pkg/v1/mutate"}
    assert len(manifest) == 2


def test_import_makes_one_layer_image(tmp_path):
    [dive] = load(fixture_path("images", "test-docker-image.tar"))
    flat = tmp_path / "rootfs.tar"
    dive.export(flat)
    img = import_(flat, changes=["CMD [\"sh\"]", "ENV PATH=/bin"], created=T0)
    assert len(img.layers) == 1 and len(img.diff_ids) == 1
    assert img.history_entries == [{"created": T0, "comment": "Imported from -"}]
    assert img.config["config"] == {"Cmd": ["sh"], "Env": ["PATH=/bin"]}
    assert img.rootfs().paths() == dive.rootfs().paths()
    # history and layer sharing are lost: the one layer holds everything once
    assert img.size == dive.rootfs().content_bytes < dive.size
    assert img.layers[0].chain_id == img.diff_ids[0]
    assert img.parent is None


def test_import_message_and_source():
    img = import_(make_tar([("a", "f", b"a")]), message="from scratch", created=T0)
    assert img.history_entries[0]["comment"] == "from scratch"
    img2 = import_(make_tar([("a", "f", b"a")]), source="http://x/y.tar", created=T0)
    assert img2.history_entries[0]["comment"] == "Imported from http://x/y.tar"


def test_layer_from_entries_round_trip():
    items = [(Entry("d", "dir", 0o750, 1, 2, 1000), None),
             (Entry("d/f", "file", 0o600, 1, 2, 1000, size=5, xattrs={"user.k": b"v"}), b"hello"),
             (Entry("d/l", "symlink", 0o777, linkname="f"), None),
             (Entry("d/h", "hardlink", linkname="d/f"), None),
             (Entry("d/c", "char", 0o600, devmajor=4, devminor=5), None),
             (Entry("d/p", "fifo", 0o600), None),
             (Entry("gone", "whiteout"), None), (Entry("d", "opaque"), None)]
    layer = Layer.from_entries(items)
    got = [(e.path, e.kind) for e in layer.entries()]
    assert got == [(e.path, e.kind) for e, _ in items]
    e = list(layer.entries())[1]
    assert (e.mode, e.uid, e.gid, e.size, e.xattrs) == (0o600, 1, 2, 5, {"user.k": b"v"})
    assert layer.read_file("d/f") == b"hello"
    assert layer.size == 5


# ------------------------------------------------------------------ changes
@pytest.mark.parametrize("changes, expect", [
    (["CMD echo hi"], {"Cmd": ["/bin/sh", "-c", "echo hi"]}),
    (['ENTRYPOINT ["/init"]'], {"Entrypoint": ["/init"], "Cmd": None}),
    (["CMD [\"a\"]", "ENTRYPOINT /e"], {"Cmd": ["a"], "Entrypoint": ["/bin/sh", "-c", "/e"]}),
    (["ENV PATH /usr/bin:/bin"], {"Env": ["PATH=/usr/bin:/bin"]}),
    (["ENV A=1", "ENV B=$A-${A}x C='$A'"], {"Env": ["A=1", "B=1-1x", "C=$A"]}),
    (["ENV A=1", "ENV A=2"], {"Env": ["A=2"]}),
    (["EXPOSE 8000-8002/tcp"], {"ExposedPorts": {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}}}),
    (['LABEL "a b"="c d" e=f'], {"Labels": {"a b": "c d", "e": "f"}}),
    (["WORKDIR /a", "WORKDIR b", "WORKDIR ../c"], {"WorkingDir": "/a/c"}),
    (["ENV D=/data", "VOLUME $D /logs"], {"Env": ["D=/data"], "Volumes": {"/data": {}, "/logs": {}}}),
    (['VOLUME ["/v1", "/v2"]'], {"Volumes": {"/v1": {}, "/v2": {}}}),
    (["onbuild add . /app"], {"OnBuild": ["ADD . /app"]}),
    (["user 1000:1000"], {"User": "1000:1000"}),
])
def test_changes(changes, expect):
    assert apply_changes({}, changes) == expect


def test_changes_keep_base_config():
    base = {"Env": ["PATH=/bin", "X=1"], "Cmd": ["sh"], "Labels": {"a": "1"}}
    out = apply_changes(base, ["ENV X=2", "LABEL b=2"])
    assert out == {"Env": ["PATH=/bin", "X=2"], "Cmd": ["sh"], "Labels": {"a": "1", "b": "2"}}
    assert base["Env"] == ["PATH=/bin", "X=1"]


@pytest.mark.parametrize("change, why", [
    ("FROM busybox", "FROM is not a valid change command"),
    ("EXPOSE 99999", "out of range"),
    ("EXPOSE 80/xyz", "invalid protocol"),
    ("LABEL novalue", "key=value"),
    ("ONBUILD ONBUILD RUN x", "isn't allowed"),
    ("ENV A='unterminated", "unterminated"),
])
def test_bad_changes(change, why):
    with pytest.raises(ValueError, match=why):
        apply_changes({}, [change])


def test_import_from_a_stream_spools_to_disk():
    data = make_tar([("s", "f", b"stream")])
    img = import_(io.BytesIO(data), created=T0)
    assert img.layers[0].source.path.endswith("layer.tar")
    assert img.layers[0].read_file("s") == b"stream"
    assert img.diff_ids[0] == "sha256:" + __import__("hashlib").sha256(data).hexdigest()


def test_layer_from_entries_to_a_file(tmp_path):
    big = bytes(range(256)) * 4096     # 1 MiB streamed from a file object
    items = [(Entry("big", "file", size=len(big)), io.BytesIO(big)), (Entry("gone", "whiteout"), None)]
    layer = Layer.from_entries(items, path=tmp_path / "diff.tar")
    assert (tmp_path / "diff.tar").exists() and not (tmp_path / "diff.tar.partial").exists()
    assert layer.size == len(big) and layer.read_file("big") == big
    with pytest.raises(ValueError, match="no content given"):
        Layer.from_entries([(Entry("x", "file", size=5), None)], path=tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists() and not (tmp_path / "bad.tar.partial").exists()

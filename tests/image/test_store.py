"""ImageStore: tag, untag, rmi with Docker's rules; users and children."""
import pytest

from thinp.errors import ImageConflictError, ImageNotFoundError
from thinp.image import ImageStore, commit, load

from .conftest import fixture_path, make_tar


@pytest.fixture
def store():
    s = ImageStore()
    s.load(fixture_path("images", "whiteout_image.tar"))
    return s


BASE = "bazel/pkg/v1/mutate:whiteout_image"


def test_load_tags_and_lookup(store):
    img = store.get(BASE)
    assert store.get(img.id) is img
    assert store.get(img.id[7:19]) is img
    assert store.get("docker.io/" + BASE) is img
    assert store.tags_of(img.id) == [BASE]
    with pytest.raises(ImageNotFoundError, match="No such image: nope:1"):
        store.get("nope:1")


def test_rmi_of_shared_tag_only_untags(store):
    img = store.get(BASE)
    store.tag(BASE, "other/repo:v1")
    store.tag(BASE, "busybox")
    assert img.tags == ["bazel/pkg/v1/mutate:whiteout_image", "busybox:latest", "other/repo:v1"]
    assert store.rmi("busybox") == [("Untagged", "busybox:latest")]
    assert img.id in store.images
    assert store.rmi("other/repo:v1") == [("Untagged", "other/repo:v1")]
    assert store.rmi(BASE) == [("Untagged", BASE), ("Deleted", img.id)]
    assert len(store) == 0 and store.layers == {}


def test_rmi_by_id_with_tags_in_several_repos_needs_force(store):
    img = store.get(BASE)
    store.tag(BASE, "other/repo:v1")
    with pytest.raises(ImageConflictError, match="referenced in multiple repositories"):
        store.rmi(img.id)
    records = store.rmi(img.id, force=True)
    assert records == [("Untagged", BASE), ("Untagged", "other/repo:v1"), ("Deleted", img.id)]


def test_rmi_by_id_with_tags_in_one_repo(store):
    img = store.get(BASE)
    store.tag(BASE, "bazel/pkg/v1/mutate:again")
    assert store.rmi(img.id)[-1] == ("Deleted", img.id)


def test_rmi_of_used_image_refuses_unless_forced(store):
    img = store.get(BASE)
    store.add_user(img.id, "c0ffee" * 10)
    with pytest.raises(ImageConflictError, match='unable to remove repository reference .* container c0ffeec0ffee'):
        store.rmi(BASE)
    with pytest.raises(ImageConflictError, match="being used by container"):
        store.rmi(img.id)
    assert store.tags_of(img.id) == [BASE]      # nothing changed
    # another tag can still be removed without force (it only untags)
    store.tag(BASE, "x:1")
    assert store.rmi("x:1") == [("Untagged", "x:1")]
    store.remove_user(img.id, "c0ffee" * 10)
    assert store.rmi(BASE)[-1] == ("Deleted", img.id)


def test_rmi_forced_on_used_image(store):
    img = store.get(BASE)
    store.add_user(img.id, "abc")
    assert store.rmi(BASE, force=True) == [("Untagged", BASE), ("Deleted", img.id)]


def test_rmi_with_children(store):
    base = store.get(BASE)
    child = store.add(commit(base, make_tar([("c", "f", b"c")]), created="2024-01-01T00:00:00Z"),
                      tags=["child:1"])
    assert store.children(base.id) == [child.id]
    with pytest.raises(ImageConflictError, match="dependent child images"):
        store.rmi(BASE)
    with pytest.raises(ImageConflictError, match="dependent child images"):
        store.rmi(base.id)
    # forced: untagged, but an image with children is never deleted
    assert store.rmi(BASE, force=True) == [("Untagged", BASE)]
    assert base.id in store.images and store.tags_of(base.id) == []
    # deleting the child prunes the now-dangling parent
    assert store.rmi("child:1") == [("Untagged", "child:1"), ("Deleted", child.id),
                                    ("Deleted", base.id)]
    assert len(store) == 0 and store.layers == {}


def test_prune_stops_at_tagged_parent(store):
    base = store.get(BASE)
    child = store.add(commit(base, make_tar([("c", "f", b"c")]), created="2024-01-01T00:00:00Z"),
                      tags=["child:1"])
    assert store.rmi("child:1") == [("Untagged", "child:1"), ("Deleted", child.id)]
    assert base.id in store.images
    # layers of the parent stay, the child's own layer is released
    assert set(store.layers) == set(base.chain_ids)


def test_retag_moves_tag(store):
    base = store.get(BASE)
    child = store.add(commit(base, make_tar([("c", "f", b"c")]), created="2024-01-01T00:00:00Z"))
    store.tag(child.id, BASE)
    assert store.get(BASE) is child
    assert store.tags_of(base.id) == [] and base.tags == []


def test_untag_and_bad_refs(store):
    with pytest.raises(ImageNotFoundError):
        store.untag("missing:1")
    with pytest.raises(ValueError, match="lowercase"):
        store.tag(BASE, "user/Case")


def test_store_save_only_named_tags(store, tmp_path):
    store.tag(BASE, "keep:1")
    store.save(["keep:1"], tmp_path / "out.tar")
    [img] = load(tmp_path / "out.tar")
    assert img.tags == ["keep:1"] and img.id == store.get(BASE).id


def test_store_root_ingests_layers(tmp_path):
    s = ImageStore(tmp_path / "root")
    [img] = s.load(fixture_path("images", "whiteout_dir.tar"))   # gzip layers
    files = sorted((tmp_path / "root" / "layers").iterdir())
    assert sorted(f.name for f in files) == sorted(d[7:] + ".tar" for d in img.diff_ids)
    assert img.rootfs().paths() == ["a", "a/baz", "b", "b/bar"]
    s.rmi(img.id)
    assert list((tmp_path / "root" / "layers").iterdir()) == []


def test_df_export_import_shares_nothing(tmp_path):
    """save/load shares layers between images; export/import does not."""
    s = ImageStore()
    [dive] = s.load(fixture_path("images", "test-docker-image.tar"))
    child = s.add(commit(dive, make_tar([("new", "f", b"n" * 100)]), created="2024-01-01T00:00:00Z"),
                  tags=["child:1"])
    df = s.df()
    assert df["images"][child.id] == {"size": dive.size + 100, "shared_size": dive.size,
                                      "unique_size": 100}
    assert df["layers_bytes"] == dive.size + 100
    flat = tmp_path / "flat.tar"
    child.export(flat)
    from thinp.image import import_
    imported = s.add(import_(flat, created="2024-01-01T00:00:00Z"), tags=["flat:1"])
    df2 = s.df()
    assert df2["images"][imported.id]["shared_size"] == 0
    # the flat copy stores the merged content again: no layer is shared
    assert df2["images"][imported.id]["unique_size"] == child.rootfs().content_bytes
    assert df2["layers_bytes"] == df["layers_bytes"] + child.rootfs().content_bytes


def test_rmi_no_prune_keeps_dangling_parent(store):
    base = store.get(BASE)
    child = store.add(commit(base, make_tar([("c", "f", b"c")]), created="2024-01-01T00:00:00Z"),
                      tags=["child:1"])
    store.untag(BASE)
    assert store.rmi("child:1", prune=False) == [("Untagged", "child:1"), ("Deleted", child.id)]
    assert base.id in store.images and store.tags_of(base.id) == []


def test_ambiguous_id_prefix(store):
    base = store.get(BASE)
    other = store.add(commit(base, make_tar([("c", "f", b"c")]), created="2024-01-01T00:00:00Z"))
    common = 0
    while base.id[7 + common] == other.id[7 + common]:
        common += 1
    if common:
        with pytest.raises(ValueError, match="ambiguous"):
            store.get(base.id[7:7 + common])
    assert store.get(other.id[7:7 + common + 1]) is other

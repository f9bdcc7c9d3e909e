"""devicemapper: loop-lvm pool defaults, snapshots per layer, naive diff cost, min_free_space, blkdiscard."""
from __future__ import annotations

import pytest

from thinp import errors
from thinp.drivers import Change
from thinp.image import Entry, Layer

from ._block_helpers import make_driver, start_container

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture
def dm(tmp_path):
    d = make_driver("devicemapper", tmp_path)
    yield d
    d.cleanup()


def test_loop_lvm_defaults(dm):
    st = dm.pool.status()
    assert dm.pool.block_size == 64 * KiB
    assert st.total_data_blocks * 64 * KiB == 100 * GiB
    assert st.total_metadata_blocks * 4096 == 2 * GiB
    assert dm.pool.low_water_mark == 32768
    assert st.counters["nr_zeroed"] == 0                 # skip_block_zeroing
    assert dm.fstype == "xfs" and dm._base_fs.device.size == 10 * GiB
    # mkfs.xfs of 10 GiB: 65,868 KiB (SOURCES.md), provisioned in 64 KiB blocks
    assert dm.stats()["physical_bytes"] == pytest.approx(65868 * KiB, rel=0.05)
    assert dict(dm.status())["Pool Blocksize"] == "64 kB"


def test_ext4_option_uses_dockers_mkfs_options(tmp_path):
    d = make_driver("devicemapper", tmp_path, **{"dm.fs": "ext4"})
    try:
        assert d._base_fs.fstype == "ext4"
        assert d._base_fs.options["lazy_itable_init"] is False
        assert d._base_fs.options["lazy_journal_init"] is False
        assert d._base_fs.options["nodiscard"] is True
        # SOURCES.md: ext4 with Docker's options, 10 GiB: 233,704 KiB after mkfs
        assert d.stats()["physical_bytes"] == pytest.approx(233704 * KiB, rel=0.05)
    finally:
        d.cleanup()
    with pytest.raises(ValueError):
        make_driver("devicemapper", tmp_path / "x", fs="btrfs")


def test_each_layer_is_a_snapshot_of_its_parent(dm):
    dm.create("l0", None)
    dm.create("l1", "l0")
    devs = dm.layers
    assert devs["l1"].thin_id != devs["l0"].thin_id
    # a fresh snapshot maps exactly its origin's blocks
    assert dm.pool.device(devs["l1"].thin_id).mapped_blocks == dm.pool.device(devs["l0"].thin_id).mapped_blocks
    assert dm.usage("l1").size == 0


def test_container_is_init_plus_rw_snapshot_and_cow_is_per_64k_block(dm):
    dm.create("img", None)
    dm.apply_diff("img", None, Layer.from_entries([(Entry("big", "file", size=4 * MiB), b"b" * (4 * MiB))]))
    v = start_container(dm, "c1", "img")
    assert dm.exists("c1-init") and dm.parent("c1") == "c1-init"
    before = dm.stats()
    v.write("/big", 100, b"x" * 10)
    v.fs.sync()
    after = dm.stats()
    assert after["cow_count"] - before["cow_count"] >= 1
    assert after["cow_bytes"] - before["cow_bytes"] >= 64 * KiB     # one pool block copied, not the file
    assert after["cow_bytes"] - before["cow_bytes"] < 4 * MiB
    assert after["copy_up_bytes"] == 0


def test_naive_diff_cost_grows_with_the_image_not_the_change(dm):
    def image(n):
        items = [(Entry("d", "dir"), None)] + [(Entry(f"d/f{i}", "file", size=1), b"x") for i in range(n)]
        return Layer.from_entries(items)

    costs = []
    for n in (10, 1000):
        dm.create(f"img{n}", None)
        dm.apply_diff(f"img{n}", None, image(n))
        dm.create(f"c{n}", f"img{n}", read_write=True)
        dm.get(f"c{n}").write("/d/f0", 0, b"changed")
        w0 = dm.stats()["diff_work"]
        assert dm.changes(f"c{n}", f"img{n}") == [Change("/d", "C"), Change("/d/f0", "C")]
        costs.append(dm.stats()["diff_work"] - w0)
    assert costs[1] > 50 * costs[0]      # two whole-tree walks
    assert dm.capabilities().native_diff is False


def test_min_free_space_refuses_new_devices(tmp_path):
    d = make_driver("devicemapper", tmp_path, loopdatasize="256M")
    try:
        d.create("c", None, read_write=True)
        d.get("c").write("/fill", 0, 180 * MiB)
        d.put("c")
        with pytest.raises(errors.NoSpaceError) as e:
            d.create("d", "c")
        assert "Thin Pool has" in str(e.value) and "dm.min_free_space" in str(e.value)
        assert not d.exists("d")
    finally:
        d.cleanup()
    d = make_driver("devicemapper", tmp_path / "b", loopdatasize="256M", min_free_space="0%")
    try:
        d.create("c", None, read_write=True)
        d.get("c").write("/fill", 0, 180 * MiB)
        d.put("c")
        d.create("d", "c")               # 0% turns the check off
    finally:
        d.cleanup()


def test_remove_discards_then_deletes(dm):
    dm.create("c", None, read_write=True)
    used0 = dm.pool.status().used_data_blocks
    dm.get("c").write("/f", 0, 8 * MiB)
    dm.put("c")
    assert dm.pool.status().used_data_blocks > used0
    discarded0 = dm.pool.status().counters["nr_discarded"]
    dm.remove("c")
    dm.pool.commit()
    assert dm.pool.status().counters["nr_discarded"] > discarded0
    assert dm.pool.status().used_data_blocks == used0


def test_every_container_loads_its_own_page_cache_copy(dm):
    dm.create("img", None)
    dm.apply_diff("img", None, Layer.from_entries([(Entry("lib.so", "file", size=MiB), b"l" * MiB)]))
    for i in range(5):
        start_container(dm, f"c{i}", "img").read("/lib.so")
    assert dm.stats()["page_cache_bytes"] == 5 * MiB
    assert dm.capabilities().shares_page_cache == "device"


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_layers_are_the_devices_rootfs_dir(tmp_path, fs):
    """Docker's Get returns <mnt>/rootfs: lost+found (ext4) is beside the layer,
    and absolute symlinks and ".." resolve inside it."""
    d = make_driver("devicemapper", tmp_path, fs=fs, payload=True)
    try:
        assert sorted(d._base_fs.listdir("/..")) == []           # the base fs is chrooted too
        d.create("L0", None, read_write=True)
        v = d.get("L0")
        assert v.listdir("/") == [] and not v.exists("/rootfs") and not v.exists("/lost+found")
        v.mkdir("/etc")
        v.write("/etc/a", 0, b"hi")
        v.symlink("/etc", "/abs")
        v.symlink("../../../etc/a", "/etc/up")
        assert v.read("/abs/a") == b"hi" and v.read("/etc/up") == b"hi" and v.listdir("/..") == ["abs", "etc"]
        d.put("L0")
        fs_ = d.layers["L0"].fs
        fs_.chroot_ino, top = None, fs_.chroot_ino
        try:                                                     # the device's own root
            assert sorted(fs_.listdir("/")) == (["lost+found", "rootfs"] if fs == "ext4" else ["rootfs"])
            assert fs_.read("/rootfs/etc/a") == b"hi"
        finally:
            fs_.chroot_ino = top
        assert [str(c) for c in d.changes("L0", None)] == ["A /abs", "A /etc", "A /etc/a", "A /etc/up"]
    finally:
        d.cleanup()


@pytest.mark.parametrize("body", ["create_remove", "apply_diff_view", "symlinks", "diff_roundtrip", "whiteouts"])
def test_contract_bodies_on_ext4(tmp_path, body):
    """The default devicemapper runs the whole contract (xfs); these bodies on ext4 too."""
    from . import contract

    made = []

    def make(payload=True, **options):
        d = contract.make_driver("devicemapper", tmp_path / f"d{len(made)}", payload=payload,
                                 fs="ext4", **options)
        made.append(d)
        return d

    try:
        assert contract.run_body(body, make)     # the body's asserts, then the invariants
    finally:
        for d in made:
            d.cleanup()

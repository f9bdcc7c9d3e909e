"""btrfs: 4 KiB extent CoW, bookending, qgroups, fi du (figures from SOURCES.md and this machine)."""
from __future__ import annotations

import os

import pytest

from thinp.drivers.btrfs import NODESIZE, BtrfsDriver

MiB = 1 << 20


def _snap_after_write(extra_files=0, **opts):
    d = BtrfsDriver(**opts)
    d.create("base", None, read_write=True)
    v = d.get("base")
    v.write("/f", 0, os.urandom(MiB))
    for i in range(extra_files):
        v.write(f"/small{i}", 0, b"x\n")
    d.put("base")
    d.create("snap", "base", read_write=True)
    assert d.qgroup("snap")["exclusive"] == NODESIZE          # a fresh snapshot: its own root
    assert d.qgroup("base")["exclusive"] == NODESIZE
    v = d.get("snap")
    v.write("/f", 10 * 4096, os.urandom(4096))
    d.put("snap")
    return d


def test_snapshot_4k_overwrite_is_4k_exclusive_and_bookends():
    d = _snap_after_write()
    du = d.filesystem_du("snap", "/f")
    assert du == {"total": MiB, "exclusive": 4096, "set_shared": MiB - 4096}
    assert d.filesystem_du("base", "/f")["exclusive"] == 0
    # the old 1 MiB extent stays whole on disk; the snapshot adds one 4 KiB extent
    assert d.extent_bytes("snap", "/f") == [MiB, 4096]
    q = d.qgroup("snap")
    assert q["exclusive_data"] == 4096
    # one-leaf fs tree: measured here 20,480 (4 KiB + one 16 KiB node)
    assert q["exclusive"] == 20480 and q["referenced"] == 1069056


def test_two_level_tree_leaf_with_room():
    """Measured here (two runs): root + the file's leaf, 36,864 bytes exclusive."""
    d = _snap_after_write(extra_files=300)
    q = d.qgroup("snap")
    assert q["exclusive_data"] == 4096
    assert q["exclusive"] == 36864
    assert q["referenced"] == pytest.approx(1232896, rel=0.05)   # real: 1,232,896


def test_two_level_tree_full_leaf_figure_from_sources():
    """SOURCES.md: 4,096 bytes of data plus about 48 KiB of tree metadata when the
    file's leaf is full: inserting the split extent items splits it (also seen
    here once, 53,248)."""
    d = _snap_after_write(extra_files=300, leaf_fill=1.0)
    q = d.qgroup("snap")
    assert q["exclusive_data"] == 4096
    assert q["exclusive_metadata"] == pytest.approx(48 * 1024, rel=0.05)
    assert q["exclusive"] == 53248
    with pytest.raises(ValueError):
        BtrfsDriver(leaf_fill=2)


def test_small_write_copies_one_block_not_the_file():
    d = _snap_after_write()
    s = d.stats()
    assert s["cow_count"] == 1
    assert s["cow_bytes"] == 0                 # a whole aligned 4 KiB block: nothing to read back
    v = d.get("snap")
    v.write("/f", 5 * 4096 + 100, b"z" * 10)   # partial block: read-modify-write of 4 KiB
    assert d.stats()["cow_bytes"] == 4096
    assert d.stats()["copy_up_bytes"] == 0


def test_extent_freed_only_when_no_part_is_referenced():
    d = _snap_after_write()
    phys0 = d.store.units_used
    # base overwrites the same block: the 1 MiB extent is still used by both elsewhere
    v = d.get("base")
    v.write("/f", 10 * 4096, os.urandom(4096))
    assert d.store.units_used == phys0 + 1
    # rewrite everything in both: the original extent finally goes
    for lid in ("base", "snap"):
        w = d.get(lid)
        w.write("/f", 0, os.urandom(MiB))
    d.sync()
    assert d.extent_bytes("base", "/f") == [MiB] and d.extent_bytes("snap", "/f") == [MiB]
    assert d.store.units_used * 4096 == 2 * MiB     # two fresh 1 MiB extents, nothing else


def test_remove_snapshot_frees_its_extents():
    d = _snap_after_write()
    before = d.store.units_used
    d.remove("snap")
    assert d.store.units_used == before - 1
    assert d.filesystem_du("base", "/f")["exclusive"] == MiB


def test_inline_small_files_take_no_data_extent():
    d = BtrfsDriver()
    d.create("a", None, read_write=True)
    v = d.get("a")
    v.write("/tiny", 0, b"x" * 100)
    assert d.store.units_used == 0
    v.write("/tiny", 100, b"y" * 5000)      # grows out of the leaf
    assert d.store.units_used == 2


def test_append_merges_into_one_extent():
    d = BtrfsDriver()
    d.create("a", None, read_write=True)
    v = d.get("a")
    for off in range(0, 4 * MiB, 65536):
        v.write("/big", off, 65536)
    assert d.extent_bytes("a", "/big") == [4 * MiB]


def test_every_subvolume_has_its_own_page_cache_copy():
    d = BtrfsDriver()
    d.create("img", None, read_write=True)
    d.get("img").write("/lib.so", 0, 1 << 16)
    for i in range(4):
        d.create(f"c{i}", "img")
        d.get(f"c{i}").read("/lib.so")
    assert d.stats()["page_cache_bytes"] == 4 << 16


@pytest.mark.parametrize("payload", [False, True])
def test_small_appends_in_one_transaction_rewrite_the_page_in_memory(payload):
    """200 appends of 200 B in one transaction: the file's dirty pages go out
    once (10 blocks), no 4 KiB CoW per append; after a commit the next append
    to the partial last block is a CoW (read, modify, write elsewhere)."""
    d = BtrfsDriver(payload=payload)
    d.create("c", None, read_write=True)
    v = d.get("c")
    v.create("/log")
    w0 = d.store.counters["units_written"]
    data = b""
    for i in range(200):
        chunk = (b"%03d" % i) * 66 + b"\n\n"      # 200 bytes
        v.write("/log", len(data), chunk if payload else len(chunk))
        data += chunk
    st = d.stats()
    assert st["cow_bytes"] == 0 and st["cow_count"] == 0
    # 2048 B inline, then rewritten from 0 as an extent; 40,000 B = 10 blocks
    assert d.store.counters["units_written"] - w0 == 10
    if payload:
        assert v.read("/log") == data
    d.sync()
    v.write("/log", len(data), b"z" * 100 if payload else 100)
    st = d.stats()
    assert st["cow_bytes"] == 4096 and d.store.counters["units_written"] - w0 == 11
    if payload:
        assert v.read("/log") == data + b"z" * 100


def test_a_snapshot_shares_the_source_tree_it_does_not_free_it():
    """Snapshotting a subvolume makes its tree nodes shared, not exclusive:
    they stay on disk (physical/metadata bytes), only qgroup exclusive drops."""
    d = BtrfsDriver()
    d.create("base", None, read_write=True)
    v = d.get("base")
    for i in range(3000):
        v.create(f"/f{i}")
        v.write(f"/f{i}", 0, 512)
    d.put("base")
    before = d.stats()
    assert before["metadata_bytes"] >= 100 * NODESIZE * 2          # ~3000 x 700 B of items
    d.create("snap", "base", read_write=True)
    after = d.stats()
    # the snapshot's root, and the source's root CoWed in place of its old one
    assert after["metadata_bytes"] == before["metadata_bytes"] + NODESIZE * 2
    assert after["physical_bytes"] >= before["physical_bytes"]
    assert d.qgroup("base")["exclusive"] == NODESIZE
    d.remove("snap")
    assert d.stats()["metadata_bytes"] >= before["metadata_bytes"]

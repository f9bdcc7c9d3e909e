"""zfs: recordsize CoW, clone ``used``, ARC sharing (figures from SOURCES.md and zfs-fuse here)."""
from __future__ import annotations

import os

import pytest

from thinp.drivers.zfs import ZfsDriver

MiB = 1 << 20


def _clone_after_write(recordsize="128K"):
    d = ZfsDriver(recordsize=recordsize)
    d.create("base", None, read_write=True)
    d.get("base").write("/f", 0, os.urandom(MiB))
    d.put("base")
    d.create("clone", "base", read_write=True)
    assert d.used("clone") == 0
    d.get("clone").write("/f", 10 * 4096, os.urandom(4096))
    d.put("clone")
    return d


def test_clone_4k_overwrite_used_216k():
    d = _clone_after_write()
    # SOURCES.md: about 216 KiB (one 128 KiB record plus indirect blocks); zfs-fuse here: 221,184
    assert d.used("clone") == pytest.approx(216 * 1024, rel=0.05)
    assert d.used("clone") == 221184
    assert d.used("base") == 1171456          # zfs-fuse here, the same dataset
    s = d.stats()
    assert s["cow_count"] == 1 and s["cow_bytes"] == 128 * 1024


def test_recordsize_option_changes_the_cow_unit():
    d = _clone_after_write("16K")
    assert d.used("clone") == 106496           # zfs-fuse here with recordsize=16K
    with pytest.raises(ValueError):
        ZfsDriver(recordsize="3K")


def test_rewrites_in_one_txg_allocate_once():
    d = _clone_after_write()
    v = d.get("clone")
    before = d.store.counters["extents_allocated"]
    v.write("/f", 0, b"a" * 10)
    v.write("/f", 20, b"b" * 10)
    assert d.store.counters["extents_allocated"] == before + 1
    d.put("clone")


def test_small_file_is_one_block_of_its_size():
    d = ZfsDriver()
    d.create("a", None, read_write=True)
    d.get("a").write("/s", 0, b"x" * 5000)
    assert d.store.units_used == 2             # 8 KiB at ashift=12


def test_arc_shares_records_between_clones():
    d = ZfsDriver()
    d.create("img", None, read_write=True)
    d.get("img").write("/lib.so", 0, os.urandom(MiB))
    d.put("img")
    for i in range(5):
        d.create(f"c{i}", "img", read_write=True)
        d.get(f"c{i}").read("/lib.so")
    assert d.stats()["page_cache_bytes"] == MiB
    d.get("c0").write("/lib.so", 0, os.urandom(4096))
    d.get("c0").read("/lib.so")
    assert d.stats()["page_cache_bytes"] == MiB + 128 * 1024


def test_removing_the_clone_frees_its_records():
    d = _clone_after_write()
    units = d.store.units_used
    d.remove("clone")
    assert d.store.units_used == units - 32

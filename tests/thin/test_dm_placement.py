"""Metadata blocks land where the kernel put them.

Two kernel images of ../shared/fixtures/dm-metadata came from short LVM
message sequences on an idle pool (4 GiB data, 4 MiB metadata, 64 KiB
blocks).  Replaying the same pool messages places every metadata block
where that kernel did, live and stale ones alike.  The images were written
by a kernel older than 5.14 (its cursor restarts at block 0 after each
commit: the first thin's root is block 1; its data space map index entry is
written before the second bitmap is allocated: the index root is block 10),
so they are replayed with ``split="halves"``, thinp's model of those
kernels.  ``tmeta_with_shared_internals_and_leaves`` came from a 5.14+
kernel (its data space map index was written after all nine bitmaps); its
4 GiB of sequential writes, snapshot and writes into the snapshot replay
to the whole image, byte for byte, through PoolMetadata and through
ThinPool: each data bitmap is shadowed where its first count changes in a
transaction, between the btree nodes.

The messages' order is read off the images: each device's details hold the
transaction id current when it was made, so LVM sent each create_thin,
create_snap or delete before the set_transaction_id that numbers it.
"""
from __future__ import annotations

import numpy as np
import pytest

from thinp import ThinPool
from thinp.pdata.block import BITMAP, BTREE_NODE, INDEX
from thinp.thin.dm_metadata import DmMetadata

from ._md_scenario import open_for, pool_for
from .dm_fixtures import unpack

BLOCK = 4096
#: the superblock bytes the kernel does not define: its checksum (which
#: covers the rest), and the padding after each 32-byte space-map root in
#: the 128-byte fields, copied from uninitialised kernel memory
UNDEFINED = np.zeros(BLOCK, dtype=bool)
UNDEFINED[0:4] = True
UNDEFINED[64 + 32:192] = True
UNDEFINED[192 + 32:320] = True


def _replay(path, messages, split="halves"):
    pool = ThinPool.create(path, "4GiB", "64KiB", metadata_size="4MiB", split=split)
    for m in messages:
        pool.message(m)
    pool.close()
    return path / "metadata"


def _blocks(path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8).reshape(-1, BLOCK)


def _roots(sb):
    return (sb.time, sb.trans_id, sb.held_root, sb.data_mapping_root, sb.device_details_root,
            sb.data_sm_root, sb.metadata_sm_root, sb.metadata_nr_blocks, sb.nr_data_blocks)



def _assert_images_equal(a, b) -> None:
    """Two runs' metadata images at each commit: every block byte for byte,
    the superblock but for its undefined bytes."""
    for k, (x, y) in enumerate(zip(a, b)):
        x = np.frombuffer(x, dtype=np.uint8).reshape(-1, BLOCK)
        y = np.frombuffer(y, dtype=np.uint8).reshape(-1, BLOCK)
        assert [i for i in range(1, len(x)) if not np.array_equal(x[i], y[i])] == [], f"commit {k}"
        assert not np.any((x[0] != y[0]) & ~UNDEFINED), f"commit {k}: superblock"

def test_deleted_snapshot_is_the_kernels_image(fixtures_dir, tmp_path):
    """a 1 GiB thin; reserve_metadata_snap; a snapshot of it; the thin removed"""
    kernel = unpack(fixtures_dir, "tmeta_with_deleted_snapshot", tmp_path)
    mine = _replay(tmp_path / "pool", ["create_thin 1", "set_transaction_id 0 1", "reserve_metadata_snap",
                                       "create_snap 2 1", "set_transaction_id 1 2", "delete 1",
                                       "set_transaction_id 2 3"])
    with DmMetadata.open(kernel) as k, DmMetadata.open(mine) as m:
        assert m.check().ok
        assert _roots(m.sb) == _roots(k.sb)
        assert (m.sb.held_root, m.sb.data_mapping_root, m.sb.device_details_root) == (7, 9, 2)
        assert np.array_equal(m.metadata_counts(), k.metadata_counts())  # the same blocks in use
        assert np.count_nonzero(m.metadata_counts()) == 17
    a, b = _blocks(kernel), _blocks(mine)
    assert a.shape == b.shape
    differ = [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])]
    assert differ == []  # every other block, stale ones too, byte for byte
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


def test_corrupted_image_was_placed_the_same(fixtures_dir, tmp_path):
    """a 1 GiB thin; reserve_metadata_snap; a second thin; the first
    removed; then the blocks at the roots were zeroed.  The superblock's
    roots and every block the zeroing spared match; the zeroed ones are our
    live roots."""
    kernel = unpack(fixtures_dir, "corrupted_tmeta_with_metadata_snap", tmp_path)
    mine = _replay(tmp_path / "pool", ["create_thin 1", "set_transaction_id 0 1", "reserve_metadata_snap",
                                       "create_thin 2", "set_transaction_id 1 2", "delete 1",
                                       "set_transaction_id 2 3"])
    with DmMetadata.open(mine) as m:
        assert m.check().ok
        sb = m.sb
        dev2_root = int(m.devices()[0].root)
    with DmMetadata.open(kernel) as k:
        assert _roots(k.sb) == _roots(sb)
    a, b = _blocks(kernel), _blocks(mine)
    zeroed = [i for i in range(1, len(a)) if not a[i].any() and b[i].any()]
    roots = {sb.data_mapping_root: BTREE_NODE, sb.device_details_root: BTREE_NODE, dev2_root: BTREE_NODE,
             sb.data_sm_root.bitmap_root: BTREE_NODE, sb.data_sm_root.ref_count_root: BTREE_NODE,
             sb.metadata_sm_root.bitmap_root: INDEX, sb.metadata_sm_root.ref_count_root: BTREE_NODE}
    assert sorted(zeroed) == sorted(roots) == [2, 3, 5, 6, 10, 20, 21]
    for blk, v in roots.items():
        assert v.check(b[blk], blk) is None
    spared = [i for i in range(1, len(a)) if i not in roots]
    assert [i for i in spared if not np.array_equal(a[i], b[i])] == []
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


def test_5_14_format_and_first_thin_are_the_kernels(fixtures_dir, tmp_path):
    """tmeta_with_shared_internals_and_leaves came from a 5.14+ kernel.  Its
    first 21 metadata blocks are still as the format and the first thin
    left them, stale or not: the format's empty data space map grown to 9
    bitmaps when the pool bound its data device (blocks 8, 10..17: the
    first one's allocation shadowed the metadata bitmap into 9), the index
    entries written from dm's cache at that commit (index root 18, metadata
    index 19); then, the pool reopened (the cursor starts at 0), create_thin
    took block 1 for the thin's root and 3 for the metadata bitmap's copy,
    4 for the mapping root, and 20, 21 at the commit.  A thinp pool made the
    same way holds the same 21 blocks, byte for byte."""
    kernel = unpack(fixtures_dir, "tmeta_with_shared_internals_and_leaves", tmp_path)
    ThinPool.create(tmp_path / "pool", "8GiB", "64KiB", metadata_size="4MiB").close()
    with DmMetadata.open(tmp_path / "pool" / "metadata") as m:
        assert (m.sb.data_sm_root.bitmap_root, m.sb.metadata_sm_root.bitmap_root) == (18, 19)
        assert [b for b, _, _ in m.check().space_maps[3]] == [8, 10, 11, 12, 13, 14, 15, 16, 17]
    pool = ThinPool.open(tmp_path / "pool")
    pool.message("create_thin 1")
    pool.message("set_transaction_id 0 1")
    pool.close()
    a, b = _blocks(kernel), _blocks(tmp_path / "pool" / "metadata")
    assert [i for i in range(1, 22) if not np.array_equal(a[i], b[i])] == []
    with DmMetadata.open(tmp_path / "pool" / "metadata") as m:
        assert m.check().ok
        assert (m.devices()[0].root, m.sb.data_mapping_root, m.sb.device_details_root) == (1, 4, 20)
    with DmMetadata.open(kernel) as k:  # the kernel's later writes moved on from there
        assert BITMAP.check(a[3], 3) is None and INDEX.check(a[21], 21) is None
        assert [b for b, _, _ in k.check().space_maps[3]][5:] == [14, 15, 16, 17]  # never written


def test_cursor_rule_follows_the_kernel(tmp_path):
    """Before 5.14 every commit restarts the metadata cursor at block 0, so
    a thin made right after the format takes the lowest free block; a 5.14+
    kernel's cursor goes on past the last allocation (until the pool is
    reopened)."""
    roots = {}
    for split in ("halves", "current"):
        pool = ThinPool.create(tmp_path / split, "4GiB", "64KiB", metadata_size="4MiB", split=split)
        pool.message("create_thin 1")
        pool.close()
        with DmMetadata.open(tmp_path / split / "metadata") as m:
            assert m.check().ok
            roots[split] = m.devices()[0].root
    assert roots == {"halves": 1, "current": 16}


@pytest.mark.parametrize("split", ["halves", "current"])
def test_placement_keeps_the_counts(tmp_path, split):
    # where blocks go never changes how many: a fresh 100 GiB pool still
    # uses dm's 109 blocks (test_dm_write), and this one its 13
    pool = ThinPool.create(tmp_path / "p", "4GiB", "64KiB", metadata_size="4MiB", split=split)
    pool.close()
    with DmMetadata.open(tmp_path / "p" / "metadata") as m:
        assert m.check().ok
        assert m.sb.metadata_sm_root.nr_allocated == 13


def test_grown_metadata_gets_its_bitmap_at_the_old_end(tmp_path):
    """sm_metadata_extend switches to its bootstrap allocator, which hands
    out blocks from the old end of the device: a second bitmap, needed past
    16,320 blocks, is the first new block."""
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=16000, nr_data_blocks=1000, data_block_sectors=128)
    md.sync = False
    md.resize_metadata(20000)
    md.commit()
    assert md.tm.bitmap_blocks.tolist()[1] == 16000
    md.close()
    with DmMetadata.open(tmp_path / "m") as m:
        assert m.check().ok
        assert [b for b, _, _ in m.check().space_maps[1]][1] == 16000


def _replay_shared_internals(path, write, split="current"):
    """The operations that made tmeta_with_shared_internals_and_leaves, in
    the order its stale blocks tell: the format (the pool reopened after
    it), then in one session a thin, 4 GiB written into it sequentially with
    one commit on the way (dm's periodic commit: the stale leaves show it
    came after 24,927 mappings), a commit, a snapshot, and 4 MiB (64 blocks)
    written into the snapshot past the origin's data."""
    from thinp.thin.pool_metadata import PoolMetadata

    ThinPool.create(path, "8GiB", "64KiB", metadata_size="4MiB", split=split).close()
    md = PoolMetadata.open(path / "metadata", split=split)
    md.sync = False
    md.create_thin(1)
    md.set_transaction_id(0, 1)
    md.commit()
    write(md, 1, 0, 24927)
    md.commit()
    write(md, 1, 24927, 65536)
    md.commit()
    md.create_snap(2, 1)
    md.set_transaction_id(1, 2)
    md.commit()
    write(md, 2, 65536, 65600)
    md.close()
    return path / "metadata"


def _insert_each(md, dev, lo, hi):
    # the data block first (dm's alloc_data_block), then the mapping
    for vb in range(lo, hi):
        md.insert(dev, vb, md.alloc_data())


def _write_blocks(md, dev, lo, hi):
    # the numba write path: it allocates each data block itself
    md.write_blocks(dev, np.arange(lo, hi))


@pytest.mark.parametrize("write", [_insert_each, _write_blocks], ids=["insert", "write_blocks"])
def test_shared_internals_is_the_kernels_image(fixtures_dir, tmp_path, write):
    """Every data bitmap is shadowed at the first change of one of its
    counts in a transaction, between the btree nodes: block 22 (bitmap 0,
    before the thin's first node), 92 (bitmap 1, when data block 16,320 was
    allocated, between two leaves), 131, 168, 235, 304 and 313.  The whole
    image, stale blocks included, is the kernel's."""
    kernel = unpack(fixtures_dir, "tmeta_with_shared_internals_and_leaves", tmp_path)
    mine = _replay_shared_internals(tmp_path / "pool", write)
    with DmMetadata.open(kernel) as k, DmMetadata.open(mine) as m:
        assert m.check().ok
        assert _roots(m.sb) == _roots(k.sb)
        assert np.array_equal(m.metadata_counts(), k.metadata_counts())
        assert [b for b, _, _ in m.check().space_maps[3]] == [22, 131, 168, 235, 313, 14, 15, 16, 17]
    a, b = _blocks(kernel), _blocks(mine)
    assert a.shape == b.shape
    assert [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])] == []
    assert BITMAP.check(b[92], 92) is None and BITMAP.check(b[304], 304) is None  # stale copies too
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


@pytest.mark.parametrize("split,first", [("halves", 5), ("current", 100)])
def test_data_cursor_follows_the_kernel(tmp_path, split, first):
    """sm_disk_commit restarted the data space map's cursor at 0 before
    "don't reset space map allocation cursor when committing" (5.14): a
    data block freed and committed is then the next one handed out.  Since,
    the cursor goes on from the last allocation."""
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=512, nr_data_blocks=1000, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.create_thin(0)
    assert md.write_blocks(0, np.arange(100)) == 100
    md.commit()
    assert md.remove(0, 5)
    md.commit()
    assert md.alloc_data() == first
    md.close(commit=False)


def test_shared_internals_through_the_pool(fixtures_dir, tmp_path):
    """The same operations through ThinPool (its index allocates the data
    blocks, apply_log inserts the mappings) give the kernel's image too."""
    kernel = unpack(fixtures_dir, "tmeta_with_shared_internals_and_leaves", tmp_path)
    bs = 64 * 1024
    ThinPool.create(tmp_path / "pool", "8GiB", "64KiB", metadata_size="4MiB", commit_interval=10 ** 9,
                    sync=False).close()
    pool = ThinPool.open(tmp_path / "pool")
    pool.message("create_thin 1")
    pool.message("set_transaction_id 0 1")
    pool.commit()
    pool.device(1).write(0, 24927 * bs)
    pool.commit()
    pool.device(1).write(24927 * bs, (65536 - 24927) * bs)
    pool.commit()
    pool.message("create_snap 2 1")
    pool.message("set_transaction_id 1 2")
    pool.commit()
    pool.device(2).write(65536 * bs, 64 * bs)
    pool.close()
    a, b = _blocks(kernel), _blocks(tmp_path / "pool" / "metadata")
    assert a.shape == b.shape
    assert [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])] == []
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


def test_older_kernels_save_the_index_entry_at_once(tmp_path):
    """Before 5.14 each data bitmap's index entry went into the index tree
    as its count changed, so the tree's root leaf is shadowed right after
    the transaction's first data bitmap, not at the commit: the write
    kernel (which copies the root itself, DST_INDEX) and the Python path
    (which inserts the entry) place every block alike."""
    a = _blocks(_replay_shared_internals(tmp_path / "a", _insert_each, "halves"))
    b = _blocks(_replay_shared_internals(tmp_path / "b", _write_blocks, "halves"))
    assert [i for i in range(len(a)) if not np.array_equal(a[i], b[i])] == []
    with DmMetadata.open(tmp_path / "b" / "metadata") as m:
        assert m.check().ok
        assert [d.mapped_blocks for d in m.devices()] == [65536, 65600]


# --------------------------------------------- count changes inside the btree
# dm shadows a data bitmap at the first change of one of its counts in a
# transaction wherever that change is made (sm_ll_inc, sm_ll_dec): where a
# data block is allocated, and also inside the btree operations -- the old
# block of a replaced mapping (dm_btree_insert's dec, after the spine), the
# block of a removed one (dm_btree_remove's dec, after the spine), and every
# block of a shared leaf when it is shadowed (inc_children, in the leaf's
# order).  20,000 data blocks span two bitmaps (16,320 entries each).
NR_DATA = 40000


def _bitmap_blocks(md) -> list[int]:
    return [int(b) for b in md.data_sm.index_entries["blocknr"]]


def _scenario(path, mode):
    """A thin over two data bitmaps; a discard; a snapshot; a CoW write into
    the origin (a shared leaf shadowed); one into the snapshot; discards in
    the snapshot; the snapshot deleted.  ``mode``: "kernel" (PoolMetadata's
    numba write and remove), "reference" (the Python btree, data block by
    data block) or "pool" (ThinPool: its index, apply_log).  Returns the
    image at each commit and the placement checks the kernel rules give."""
    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False).close()
    images = []
    seen = []
    if mode == "pool":
        pool, commit = pool_for(path, images)
        pool.message("create_thin 1")
        pool.device(1).write(0, 20000 * bs)
        commit()
        pool.device(1).discard(17000 * bs, 3 * bs)
        commit()
        pool.message("create_snap 2 1")
        commit()
        pool.device(1).write(5 * bs, bs)
        pool.device(2).write(16500 * bs, bs)
        commit()
        pool.device(2).discard(100 * bs, 40 * bs)
        pool.message("delete 2")
        pool.close()
        images.append((path / "metadata").read_bytes())
        return images, seen
    md, commit, write = open_for(path, mode, images)

    md.create_thin(1)
    md.commit()  # (the pool commits after each message, as dm-thin's pool_message)
    write(1, range(20000))
    commit()
    before = _bitmap_blocks(md)
    # the pool's discard passes down: one run of contiguous, unshared data
    # blocks, one dm_thin_remove_range
    cursor = md.tm.begin
    assert md.remove_range(1, 17000, 17003) == 3
    # the first removed mapping's block (in bitmap 1) shadows its bitmap
    # after the spine: the last block the removal took
    seen.append(("remove", _bitmap_blocks(md)[1], md.tm.begin - 1, cursor))
    assert _bitmap_blocks(md)[0] == before[0]  # untouched: no count of it changed
    commit()
    md.create_snap(2, 1)
    md.commit()
    commit()
    cursor = md.tm.begin
    write(1, [5])
    # the new data block (20,000: bitmap 1) shadows bitmap 1 first; the
    # origin's shared leaf, shadowed, takes a reference on each of its
    # blocks (bitmap 0) as it is copied: bitmap 0 is the last block taken
    seen.append(("cow", _bitmap_blocks(md)[1], cursor, None))
    seen.append(("inc_children", _bitmap_blocks(md)[0], md.tm.begin - 1, None))
    write(2, [16500])
    commit()
    assert md.remove_range(2, 100, 140) == 40  # one run, all shared
    md.delete(2)
    md.close()
    images.append((path / "metadata").read_bytes())
    return images, seen


def test_count_changes_in_the_btree_shadow_their_bitmap_there(tmp_path):
    """The placement the kernel's rules give, checked on the blocks: the
    bitmap copies are taken where dm takes them, not at the commit."""
    _, seen = _scenario(tmp_path / "k", "kernel")
    for what, bitmap, expected, _ in seen:
        assert bitmap == expected, what
    with DmMetadata.open(tmp_path / "k" / "metadata") as m:
        assert m.check().ok
        assert [d.mapped_blocks for d in m.devices()] == [20000 - 3]


@pytest.mark.parametrize("mode", ["reference", "pool"])
def test_count_changes_in_the_btree_match(tmp_path, mode):
    """The numba kernels, the Python btree (the reference: a value type's
    inc and dec shadow the bitmap as dm's sm_ll_inc/sm_ll_dec do) and
    ThinPool's apply_log write the same image at every commit, byte for
    byte, and the real thin_check accepts it."""
    from .dm_fixtures import real_tool

    a, _ = _scenario(tmp_path / "k", "kernel")
    b, seen = _scenario(tmp_path / mode, mode)
    assert len(a) == len(b) == 5
    _assert_images_equal(a, b)
    tool = real_tool("thin_check")
    import subprocess
    out = subprocess.run([tool, str(tmp_path / mode / "metadata")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_reinserting_the_same_block_changes_nothing(tmp_path):
    """An insert of a mapping that is there with the same data block (dm's
    data_block_equal) drops no reference and shadows no bitmap."""
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=1024, nr_data_blocks=NR_DATA, data_block_sectors=128)
    md.sync = False
    md.create_thin(1)
    md.write_blocks(1, np.arange(300))
    md.commit()
    before = (_bitmap_blocks(md), md.data_sm.count[:300].copy())
    assert md.insert(1, 7, 7) is False
    assert md.lookup(1, 7) == (7, 0)
    assert _bitmap_blocks(md) == before[0] and np.array_equal(md.data_sm.count[:300], before[1])
    md.close()
    with DmMetadata.open(tmp_path / "m") as m:
        assert m.check().ok


# ------------------------------------------- space-map allocation rules
def _tools_agree(path) -> None:
    """The real thin_check accepts the file and thin_dump prints what
    thinp's dump prints."""
    import io
    import subprocess

    from thinp.thin.dump import dump_xml

    from .dm_fixtures import real_tool

    out = subprocess.run([real_tool("thin_check"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with DmMetadata.open(path) as m:
        buf = io.StringIO()
        dump_xml(m.pool_view(False), buf)
    tool = subprocess.run([real_tool("thin_dump"), str(path)], capture_output=True, text=True, check=True)
    assert tool.stdout == buf.getvalue()


def _grow(path, split, new_nr, fast=True):
    """A thin written, committed; the metadata grown to ``new_nr`` blocks
    (right after a commit, as dm-thin's resize follows the suspend's
    commit), committed; then 300 more blocks written.  Returns the metadata
    bitmaps and index block after the resize, the lowest free block then,
    and the lowest block the next transaction took."""
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.format(path, nr_metadata_blocks=16000, nr_data_blocks=NR_DATA, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = fast
    md.create_thin(1)
    md.commit()
    _write_blocks(md, 1, 0, 2000) if fast else _insert_each(md, 1, 0, 2000)
    md.commit()
    md.resize_metadata(new_nr)
    md.commit()
    placed = (md.tm.bitmap_blocks.tolist(), md.tm.index_block)
    before = md.tm.count.copy()
    lowest_free = int(np.flatnonzero(before == 0)[0])
    _write_blocks(md, 1, 2000, 2300) if fast else _insert_each(md, 1, 2000, 2300)
    first = int(np.flatnonzero((md.tm.count != 0) & (before == 0))[0])
    md.close()
    return placed, lowest_free, first


@pytest.mark.parametrize("split", ["halves", "current"])
def test_grown_metadata_is_placed_as_sm_metadata_extend(tmp_path, split):
    """sm_metadata_extend moves the cursor to the old end and its bootstrap
    allocator hands out the new area in order: the new bitmaps (16000 and
    16001 for 40,000 blocks), then the copy of the old bitmap their counts
    go into (16002), then the index block's shadow (16003).  A 5.14+
    kernel's cursor stays there, so the next transaction allocates at
    16004; an older kernel's commit restarts it at block 0, where the
    lowest free block is."""
    (bitmaps, index), lowest_free, first = _grow(tmp_path / "m", split, 40000)
    assert bitmaps == [16002, 16000, 16001] and index == 16003
    with DmMetadata.open(tmp_path / "m") as m:
        assert m.check().ok
        assert [b for b, _, _ in m.check().space_maps[1]][1:3] == [16000, 16001]
    assert lowest_free < 16000
    assert first == (16004 if split == "current" else lowest_free)
    _tools_agree(tmp_path / "m")


@pytest.mark.parametrize("split", ["halves", "current"])
def test_grown_metadata_without_a_new_bitmap(tmp_path, split):
    """Growing within the last bitmap writes nothing (the index did not
    change, so sm_ll_commit leaves it), yet the cursor moved to the old
    end: a 5.14+ kernel's next block is the first new one."""
    (bitmaps, index), lowest_free, first = _grow(tmp_path / "m", split, 16300)
    with DmMetadata.open(tmp_path / "m") as m:
        assert m.check().ok
    assert len(bitmaps) == 1 and index < 16000 and lowest_free < 16000
    assert first == (16000 if split == "current" else lowest_free)
    _tools_agree(tmp_path / "m")


@pytest.mark.parametrize("split", ["halves", "current"])
def test_grown_metadata_kernels_and_python_alike(tmp_path, split):
    """The numba kernels and the Python btree place the grown device's
    blocks alike, byte for byte."""
    _grow(tmp_path / "k", split, 40000, fast=True)
    _grow(tmp_path / "p", split, 40000, fast=False)
    a, b = _blocks(tmp_path / "k"), _blocks(tmp_path / "p")
    assert [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])] == []
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


def test_grown_metadata_through_the_pool(tmp_path):
    """ThinPool.resize_metadata (commit, grow, commit, as dm-thin's
    suspend and resume) writes the same image as PoolMetadata."""
    from thinp.thin.pool_metadata import PoolMetadata

    bs = 64 * 1024
    ThinPool.create(tmp_path / "pool", NR_DATA * bs, "64KiB", metadata_size=16000 * BLOCK,
                    commit_interval=10 ** 9, sync=False).close()
    pool = ThinPool.open(tmp_path / "pool")
    pool.message("create_thin 1")
    pool.device(1).write(0, 2000 * bs)
    pool.resize_metadata(40000 * BLOCK)
    pool.device(1).write(2000 * bs, 300 * bs)
    pool.close()
    ThinPool.create(tmp_path / "ref", NR_DATA * bs, "64KiB", metadata_size=16000 * BLOCK).close()
    md = PoolMetadata.open(tmp_path / "ref" / "metadata")
    md.sync = False
    md.create_thin(1)
    md.commit()
    _write_blocks(md, 1, 0, 2000)
    md.commit()
    md.resize_metadata(40000)
    md.commit()
    _write_blocks(md, 1, 2000, 2300)
    md.close()
    a, b = _blocks(tmp_path / "ref" / "metadata"), _blocks(tmp_path / "pool" / "metadata")
    assert [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])] == []
    assert BITMAP.check(b[16000], 16000) is None and BITMAP.check(b[16001], 16001) is None
    assert INDEX.check(b[16003], 16003) is None  # the resize's index (stale now)
    _tools_agree(tmp_path / "pool" / "metadata")


@pytest.mark.parametrize("split,again", [("halves", None), ("current", 99)])
def test_a_block_freed_in_the_transaction_comes_back_only_by_wrapping(tmp_path, split, again):
    """All 100 data blocks allocated, the last one released in the same
    transaction: a 5.14+ kernel's search wraps to block 0 and finds it
    (free now and at the last commit); an older kernel's
    sm_ll_find_free_block stopped at the last block, so the pool is out
    of data space until the commit -- through the Python space map and
    through the write kernel alike."""
    from thinp.thin.pool_metadata import PoolMetadata

    for fast in (False, True):
        md = PoolMetadata.format(tmp_path / f"m{fast}", nr_metadata_blocks=512, nr_data_blocks=100,
                                 data_block_sectors=128, split=split)
        md.sync = False
        md.create_thin(0)
        md.commit()
        assert md.write_blocks(0, np.arange(100)) == 100
        assert md.remove(0, 99)
        if fast:
            from thinp import errors

            if again is None:
                with pytest.raises(errors.NoSpaceError, match="no free data block"):
                    md.write_blocks(0, np.array([500]))
            else:
                assert md.write_blocks(0, np.array([500])) == 1
                assert md.lookup(0, 500)[0] == again
        else:
            assert md.alloc_data() == again
        md.commit()
        # the commit frees it in the older rule (the newer took it again)
        assert md.alloc_data() == (99 if again is None else None)
        md.close(commit=False)


def test_metadata_search_stops_at_the_end_before_5_14(tmp_path):
    """The metadata allocator too: a block allocated and released in the
    transaction is behind the cursor, and only a wrap would find it."""
    from thinp.thin.pool_metadata import PoolMetadata

    got = {}
    for split in ("halves", "current"):
        md = PoolMetadata.format(tmp_path / split, nr_metadata_blocks=64, nr_data_blocks=100, data_block_sectors=128,
                                 split=split)
        md.sync = False
        tm = md.tm
        taken = []
        while (b := tm.alloc()) is not None:
            taken.append(b)
        tm.dec(taken[0])
        got[split] = tm.alloc()
        md.close(commit=False)
    assert got == {"halves": None, "current": taken[0]}


def test_the_kernels_read_the_no_wrap_flag_where_it_is_kept():
    from thinp.pdata import _btree_kernels as BK
    from thinp.pdata import disk_space_map, transaction

    assert BK.ST_NO_WRAP == transaction.ST_NO_WRAP
    assert BK.DST_NO_WRAP == disk_space_map.DST_NO_WRAP
    for name in ("DST_NR", "DST_INDEX", "DST_RC", "DST_RC_HALVES", "DST_SP", "DST_RC_LEAF", "DST_BITMAPS"):
        assert getattr(BK, name) == getattr(disk_space_map, name), name


# ------------------------------------------------- the details' order
NR_DEVS = 200  # two details leaves and more (126 entries a leaf)


def _details_leaf_of(path, dev: int) -> int:
    """The details tree's leaf that holds ``dev`` (its root is internal)."""
    with DmMetadata.open(path) as m:
        root = m.sb.device_details_root
    blk = _blocks(path)[root]
    m32, m64 = blk.view(np.uint32), blk.view(np.uint64)
    assert m32[1] & 1, "the details root is a leaf"
    n, mx = int(m32[4]), int(m32[5])
    i = int(np.searchsorted(m64[4:4 + n], dev, side="right")) - 1
    return int(m64[4 + mx + i])


def _details_scenario(path, mode, first, second):
    """NR_DEVS thins, each made by a message (dm commits after one) and
    activated; the pool reopened; ``first`` then ``second`` activated, and
    one block written into ``second``, then into ``first``, in one
    transaction.  ``mode``: "kernel" (PoolMetadata's write kernel),
    "reference" (the Python btree) or "pool" (ThinPool)."""
    from thinp.thin.pool_metadata import PoolMetadata

    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False).close()
    if mode == "pool":
        pool = ThinPool.open(path)
        for dev in range(NR_DEVS):
            pool.message(f"create_thin {dev}")
        pool.close()
        pool = ThinPool.open(path)
        a, b = pool.device(first), pool.device(second)
        b.write(0, bs)
        a.write(0, bs)
        pool.close()
        return path / "metadata"

    def session():
        md = PoolMetadata.open(path / "metadata")
        md.sync = False
        md.fast = mode == "kernel"
        return md

    md = session()
    for dev in range(NR_DEVS):
        md.create_thin(dev)
        md.commit()
        md.activate(dev)
    md.close()
    md = session()
    md.activate(first)
    md.activate(second)
    for dev in (second, first):
        if mode == "kernel":
            md.write_blocks(dev, np.array([0]))
        else:
            md.insert(dev, 0, md.alloc_data())
    md.close()
    return path / "metadata"


@pytest.mark.parametrize("first,second", [(10, 190), (190, 10)])
def test_details_are_written_in_dms_device_list_order(tmp_path, first, second):
    """__write_changed_details walks pmd->thin_devices, where __open_device
    puts a device at the head: the device activated last is written first,
    so its details leaf takes the lower block -- whatever the ids and the
    order of the writes."""
    p = _details_scenario(tmp_path / "k", "kernel", first, second)
    assert _details_leaf_of(p, second) < _details_leaf_of(p, first)
    with DmMetadata.open(p) as m:
        assert m.check().ok
        assert sorted(d.mapped_blocks for d in m.devices())[-2:] == [1, 1]
    _tools_agree(p)


@pytest.mark.parametrize("mode", ["reference", "pool"])
def test_details_order_is_the_same_on_every_path(tmp_path, mode):
    a = _blocks(_details_scenario(tmp_path / "k", "kernel", 10, 190))
    b = _blocks(_details_scenario(tmp_path / mode, mode, 10, 190))
    assert [i for i in range(1, len(a)) if not np.array_equal(a[i], b[i])] == []
    assert not np.any((a[0] != b[0]) & ~UNDEFINED)


def test_snapshot_opens_the_origin_after_the_snapshot():
    """__create_snap opens the new device, then __set_snapshot_details the
    origin: the origin goes to the list's head, unless it is on it."""
    import tempfile

    from thinp.thin.pool_metadata import PoolMetadata

    with tempfile.TemporaryDirectory() as d:
        md = PoolMetadata.format(f"{d}/m", nr_metadata_blocks=512, nr_data_blocks=100, data_block_sectors=128)
        md.sync = False
        md.create_thin(1)
        md.create_thin(2)
        assert list(md.thin_devices) == [2, 1]  # newest first, closed, changed
        md.commit()
        assert list(md.thin_devices) == []  # written and closed: off the list
        md.activate(2)
        md.create_snap(3, 1)
        assert list(md.thin_devices) == [1, 3, 2]
        md.create_snap(4, 2)  # 2 is on the list (open): it keeps its place
        assert list(md.thin_devices) == [4, 1, 3, 2]
        md.commit()
        assert md.thin_devices == {2: 1}
        md.delete(2)
        assert md.thin_devices == {}
        md.close()


@pytest.mark.parametrize("split,first", [("halves", 5), ("current", 100)])
def test_pool_data_cursor_follows_the_kernel(tmp_path, split, first):
    """ThinPool's data allocation as PoolMetadata's (test_data_cursor_
    follows_the_kernel): before 5.14 each commit restarts the cursor at 0,
    so a block freed and committed is the next one handed out; since, the
    cursor goes on.  Either kernel starts it at 0 when the pool is opened
    (sm_disk_open), so after a reopen the freed block comes first in both."""
    bs = 64 * 1024
    ThinPool.create(tmp_path / "p", 1000 * bs, "64KiB", metadata_size="4MiB", split=split, sync=False,
                    commit_interval=10 ** 9).close()
    pool = ThinPool.open(tmp_path / "p")
    pool.message("create_thin 0")
    dev = pool.device(0)
    dev.write(0, 100 * bs)
    pool.commit()
    dev.discard(5 * bs, bs)
    pool.commit()
    dev.write(300 * bs, bs)
    pool.commit()
    dev.discard(6 * bs, bs)
    pool.close()
    pool = ThinPool.open(tmp_path / "p")
    pool.device(0).write(301 * bs, bs)
    pool.close()
    with DmMetadata.open(tmp_path / "p" / "metadata") as m:
        assert m.check().ok
        vb, pb, _ = m.mappings(m.devices()[0])
    got = dict(zip(vb.tolist(), pb.tolist()))
    assert (got[300], got[301]) == (first, 5 if split == "current" else 6)
    assert 5 not in got and 6 not in got


# ------------------------------------------------ range discards (dm_thin_remove_range)
def _range_scenario(path, fast):
    """A thin of 20,000 blocks; a discard of three; a snapshot; a discard
    of 40 in the snapshot (its subtree root shared: count 2, 3 for a
    moment); discards across a gap and over the end, all through
    PoolMetadata.remove_range.  Returns (image at each commit, placement
    facts)."""
    from thinp.thin.pool_metadata import PoolMetadata

    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False).close()
    md = PoolMetadata.open(path / "metadata")
    md.sync = False
    md.fast = fast
    images, seen = [], {}

    def commit():
        md.commit()
        images.append((path / "metadata").read_bytes())

    md.create_thin(1)
    md.commit()
    md.write_blocks(1, np.arange(20000))
    commit()
    seen["cursor"] = md.tm.begin
    seen["sub"] = md.subtree_root(1)
    assert md.remove_range(1, 17000, 17003) == 3
    seen["meta_bitmap"] = int(md.tm.bitmap_blocks[0])
    seen["top"] = md.sb.data_mapping_root
    seen["sub_after"] = md.subtree_root(1)
    commit()
    md.create_snap(2, 1)
    md.commit()
    commit()
    shared = md.subtree_root(2)
    seen["shared_count"] = int(md.tm.count[shared])
    assert md.remove_range(2, 100, 140) == 40
    seen["shared_count_after"] = int(md.tm.count[shared])
    # a gap (17000..17002 is unmapped in 1) and a range past the last mapping
    assert md.remove_range(1, 16990, 17010) == 17
    assert md.remove_range(1, 19990, 1 << 40) == 10
    assert md.remove_range(1, 30000, 30100) == 0
    commit()
    md.close()
    images.append((path / "metadata").read_bytes())
    return images, seen


def test_range_discard_takes_the_kernels_blocks(tmp_path):
    """__remove_range first takes a reference on the device's subtree root:
    the first count change of the transaction, so the metadata bitmap's
    copy is the first block it takes (at the cursor), before the top-level
    root's shadow (the next), then the subtree root's.  A snapshot's
    shared root is shadowed for the snapshot, which keeps the copy."""
    _, seen = _range_scenario(tmp_path / "k", True)
    c = seen["cursor"]
    assert seen["meta_bitmap"] == c
    assert seen["top"] == c + 1
    assert seen["sub_after"] == c + 2  # the subtree root shadowed next
    assert seen["shared_count"] == 2
    assert seen["shared_count_after"] == 1  # its shadow took the snapshot's own copy
    with DmMetadata.open(tmp_path / "k" / "metadata") as m:
        assert m.check().ok
        assert [d.mapped_blocks for d in m.devices()] == [20000 - 3 - 17 - 10, 20000 - 3 - 40]


def test_range_discard_kernel_and_python_alike(tmp_path):
    """The numba remove_leaves_range and the Python btree's write the same
    image at every commit, byte for byte; the real thin_check accepts it and
    thin_dump prints what thinp's dump prints."""
    a, _ = _range_scenario(tmp_path / "k", True)
    b, _ = _range_scenario(tmp_path / "r", False)
    assert len(a) == len(b) == 5
    _assert_images_equal(a, b)
    _tools_agree(tmp_path / "k" / "metadata")


def test_range_discard_differs_from_block_by_block(tmp_path):
    """dm_thin_remove_range is not a run of dm_thin_remove_block: removing
    block by block, the top-level root's shadow comes first and the
    metadata bitmap's copy after it."""
    from thinp.thin.pool_metadata import PoolMetadata

    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=1024, nr_data_blocks=NR_DATA, data_block_sectors=128)
    md.sync = False
    md.create_thin(1)
    md.write_blocks(1, np.arange(600))
    md.commit()
    c = md.tm.begin
    for vb in range(10, 13):
        assert md.remove(1, vb)
    assert (md.sb.data_mapping_root, int(md.tm.bitmap_blocks[0])) == (c, c + 1)
    md.close()


#: the thin of _discard_cuts: (vblocks written, in order); the data blocks
#: follow the order: vb 0..1099 -> 0..1099, 3000..3009 -> 1100..1109,
#: 1100..2999 -> 1110..3009, 3010..3099 -> 3010..3099
_CUT_WRITES = [(0, 1100), (3000, 3010), (1100, 3100)]
#: the discard of vb 500..3499 as dm-thin cuts it into dm_thin_remove_range
#: calls.  Since Linux 6.5 the thin device's bios are cut at 1,024-block
#: virtual boundaries (BIO_PRISON_MAX_RANGE, max_discard_granularity), with
#: or without passdown.  Without passdown: each bio's range.  With
#: passdown: the runs of contiguous data blocks in each bio
#: (dm_thin_find_mapped_range), at 1,024-block data boundaries too
#: (break_up_discard_bio).
_CUTS = {
    ("current", False): [(500, 1024), (1024, 2048), (2048, 3072), (3072, 3500)],
    ("halves", False): [(500, 3500)],
    ("current", True): [(500, 1024), (1024, 1100), (1100, 2038), (2038, 2048), (2048, 3000), (3000, 3010),
                        (3010, 3072), (3072, 3100)],
    ("halves", True): [(500, 1100), (1100, 3000), (3000, 3010), (3010, 3100)],
}


def _written(path, mode, split, writes):
    """A thin 1 with ``writes`` (vblock ranges, in order) written and
    committed, the data blocks following that order: a ThinPool
    (``mode="pool"``) or a PoolMetadata (sync off) at ``path``."""
    from thinp.thin.pool_metadata import PoolMetadata

    bs = 64 * 1024
    if mode == "pool":
        pool = ThinPool.open(path)
        pool.message("create_thin 1")
        for lo, hi in writes:
            pool.device(1).write(lo * bs, (hi - lo) * bs)
        pool.commit()
        return pool
    md = PoolMetadata.open(path / "metadata", split=split)
    md.sync = False
    md.create_thin(1)
    md.commit()
    for lo, hi in writes:
        md.write_blocks(1, np.arange(lo, hi))
    md.commit()
    return md


def _discard_cuts(path, mode, split, passdown, cuts=None, each=False):
    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False,
                    split=split, discard_passdown=passdown).close()
    if mode == "pool":
        pool = _written(path, mode, split, _CUT_WRITES)
        pool.device(1).discard(500 * bs, 3000 * bs)
        pool.close()
    else:
        md = _written(path, mode, split, _CUT_WRITES)
        if each:
            assert sum(md.remove(1, b) for b, _ in cuts) == 3100 - 500
        else:
            assert sum(md.remove_range(1, b, e) for b, e in cuts) == 3100 - 500
        md.close()
    return (path / "metadata").read_bytes()


@pytest.mark.parametrize("passdown", [False, True])
@pytest.mark.parametrize("split", ["current", "halves"])
def test_pool_discards_are_cut_as_dm_thin_cuts_them(tmp_path, split, passdown):
    """ThinPool's discard removes its mappings with the dm_thin_remove_range
    calls dm-thin makes (each one the top-level entry out and back in, and
    its own descents), so its image is the one PoolMetadata writes making
    those calls."""
    mine = _discard_cuts(tmp_path / "pool", "pool", split, passdown)
    ref = _discard_cuts(tmp_path / "ref", "md", split, passdown, _CUTS[split, passdown])
    x = np.frombuffer(mine, dtype=np.uint8).reshape(-1, BLOCK)
    y = np.frombuffer(ref, dtype=np.uint8).reshape(-1, BLOCK)
    assert [i for i in range(1, len(x)) if not np.array_equal(x[i], y[i])] == []
    assert not np.any((x[0] != y[0]) & ~UNDEFINED)
    # dm_thin_remove_block one mapping at a time (what the pool did before)
    # places the blocks otherwise: its first shadow is the top-level root's
    assert _discard_cuts(tmp_path / "each", "md", split, passdown, [(vb, vb + 1) for vb in range(500, 3100)],
                         each=True) != ref
    _tools_agree(tmp_path / "pool" / "metadata")


@pytest.mark.parametrize("passdown", [False, True])
@pytest.mark.parametrize("split", ["current", "halves"])
def test_discard_rows_are_cut_at_dms_pieces(split, passdown):
    """The cut itself, on the replay's rows for _discard_cuts' discard (a
    cut seldom shows in the image: each piece's last descent is repeated by
    the next piece's first).  Each piece's rows run from its first mapped
    vblock to its last."""
    from thinp.thin import _kernels as TK
    from thinp.thin import _mirror as MIR

    pblock = {}
    p = 0
    for lo, hi in _CUT_WRITES:
        for vb in range(lo, hi):
            if vb not in pblock:
                pblock[vb] = p
                p += 1
    flags = TK.UNMAP_PASSDOWN if passdown else 0
    log = np.array([(1, vb, -1 - ((pblock[vb] << TK.UNMAP_BLOCK_SHIFT) | flags), 7) for vb in range(500, 3100)],
                   dtype=np.int64)
    got, k = [], 0
    while k < len(log):
        j = MIR._discard_piece_end(log, k, len(log), split == "halves")
        got.append((int(log[k, 1]), int(log[j - 1, 1]) + 1))
        k = j
    assert got == [(b, min(e, 3100)) for b, e in _CUTS[split, passdown]]
    # dm's shared test cuts a passdown run too; the next request starts anew
    log[10:, 2] -= TK.UNMAP_SHARED
    log[20:, 3] = 8
    assert MIR._discard_piece_end(log, 0, len(log), split == "halves") == (10 if passdown else 20)


def _dm_discard_pieces(md, dev: int, first: int, end: int, split: str, passdown: bool) -> list[tuple[int, int]]:
    """The reference: dm-thin's dm_thin_remove_range calls for a discard of
    blocks [first, end) of ``dev`` (PoolMetadata ``md`` as it is before the
    discard).  dm core cuts a thin's discard into bios at 1,024-block
    virtual boundaries since Linux 6.5 (``split="halves"`` models older
    kernels: one bio).  Without passdown each bio is one call, mapped or
    not (process_discard_cell_no_passdown); with passdown
    (break_up_discard_bio) each run dm_thin_find_mapped_range finds in the
    bio -- contiguous vblocks on contiguous data blocks, all shared or
    none -- is, cut at 1,024-block data boundaries since 6.5."""
    if first >= end:
        return []
    if split == "halves":
        bios = [(first, end)]
    else:
        cuts = list(range((first // 1024 + 1) * 1024, end, 1024))
        bios = list(zip([first] + cuts, cuts + [end]))
    if not passdown:
        return bios
    snap = md.details(dev).snapshotted_time
    out = []
    for lo, hi in bios:
        v = lo
        while v < hi:
            m = md.lookup(dev, v)
            if m is None:
                v += 1
                continue
            p0, shared = m[0], snap > m[1]
            e = v + 1
            while e < hi:
                n = md.lookup(dev, e)
                if n is None or n[0] != p0 + (e - v) or (snap > n[1]) != shared:
                    break
                e += 1
            d = p0
            while v < e:
                k = e - v if split == "halves" else min(e - v, (d // 1024 + 1) * 1024 - d)
                out.append((v, v + k))
                v += k
                d += k
    return out


#: _unmapped_discards' writes (vblock ranges, in order) and discards (in
#: blocks: a piece of nothing mapped alone, in its own transaction, then
#: random ones with long runs across 1,024-block boundaries; the random
#: ones empty the thin, its subtree losing levels as they go)
_HOLE_WRITES = [(0, 1500), (2600, 4000), (6000, 6100)]
_ALL_EMPTY = (1600, 2500)


def _random_discards(seed=11) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(4000):
        b = int(rng.integers(0, 7000))
        n = int(rng.integers(1, 17)) if rng.random() < 0.97 else int(rng.integers(500, 3000))
        out.append((b, b + n))
    return out + [(0, 7000)]


def _unmapped_discards(path, mode, split, passdown=False):
    """The image after each commit of _HOLE_WRITES, the all-unmapped
    discard, then _random_discards: through ThinPool (``mode="pool"``) or
    through PoolMetadata.remove_range on _dm_discard_pieces (the reference)."""
    from thinp.trace import DISCARD, TRACE_DTYPE

    bs = 64 * 1024
    ThinPool.create(path, NR_DATA * bs, "64KiB", metadata_size="4MiB", commit_interval=10 ** 9, sync=False,
                    split=split, discard_passdown=passdown).close()
    images = []
    batches = [[_ALL_EMPTY], _random_discards()]
    if mode == "pool":
        pool = _written(path, mode, split, _HOLE_WRITES)
        images.append((path / "metadata").read_bytes())
        for batch in batches:
            t = np.zeros(len(batch), dtype=TRACE_DTYPE)
            t["dev_id"] = 1
            t["op"] = DISCARD
            t["offset"] = [b * bs for b, _ in batch]
            t["length"] = [(e - b) * bs for b, e in batch]
            pool.replay(t)
            pool.commit()
            images.append((path / "metadata").read_bytes())
        pool.close()
    else:
        md = _written(path, mode, split, _HOLE_WRITES)
        images.append((path / "metadata").read_bytes())
        for batch in batches:
            for b, e in batch:
                for lo, hi in _dm_discard_pieces(md, 1, b, e, split, passdown):
                    md.remove_range(1, lo, hi)
            md.commit()
            images.append((path / "metadata").read_bytes())
        md.close()
    return images


@pytest.mark.parametrize("split", ["current", "halves"])
def test_discards_of_unmapped_pieces_churn_as_dms(tmp_path, split):
    """Without passdown dm-thin calls dm_thin_remove_range on every piece of
    a discard, mapped or not: the top-level entry comes out and goes back
    (shadowing the top-level spine and the metadata bitmap) and the device's
    details are rewritten at the commit (td->changed).  The pool's discards
    write the reference's image at every commit, the one of nothing mapped
    included, and random discards that empty the thin (its subtree losing
    levels without a block allocated: the mirror's cached subtree height
    must follow) too; the real thin_check and thin_dump agree."""
    mine = _unmapped_discards(tmp_path / "pool", "pool", split)
    ref = _unmapped_discards(tmp_path / "ref", "md", split)
    assert len(mine) == len(ref) == 3
    _assert_images_equal(mine, ref)
    # the discard of nothing mapped changed the metadata, as dm's does
    assert mine[1] != mine[0]
    _tools_agree(tmp_path / "pool" / "metadata")


@pytest.mark.parametrize("split", ["current", "halves"])
def test_random_discards_with_passdown_are_dms_removals(tmp_path, split):
    """With passdown a discard of nothing mapped removes nothing (no run
    found: dm calls nothing, and the commit writes the image unchanged);
    random discards remove dm's runs, cut at virtual and data boundaries
    (the reference finds them with lookups, as dm_thin_find_mapped_range
    does), down to an empty thin; the real tools agree."""
    mine = _unmapped_discards(tmp_path / "pool", "pool", split, passdown=True)
    ref = _unmapped_discards(tmp_path / "ref", "md", split, passdown=True)
    assert len(mine) == len(ref) == 3
    _assert_images_equal(mine, ref)
    assert mine[1] == mine[0]
    _tools_agree(tmp_path / "pool" / "metadata")

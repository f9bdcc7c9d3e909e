"""The simulated mkfs and file writes against SOURCES.md's reference figures."""
import pytest

from thinp.blockdev import PlainDevice
from thinp.fs import Ext4Geometry, mkfs
from thinp.validate.fs import CALIBRATION, calibration_rows, format_table

ROWS = calibration_rows()


def test_every_row_is_covered():
    expected = sum(1 for *_x, real in CALIBRATION for r in real if r is not None)
    assert len(ROWS) == expected == 15


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['fs']}-{r['size']}-{'lazy0' if r['options'] else 'default'}-{r['workload']}")
def test_within_ten_percent(row):
    assert abs(row["sim_kib"] - row["real_kib"]) <= 0.10 * row["real_kib"], format_table([row])


def test_ext4_10g_geometry():
    g = Ext4Geometry.compute(10 << 30)
    assert (g.nr_groups, g.inodes_per_group, g.itable_blocks) == (80, 8192, 512)
    assert (g.gdt_blocks, g.reserved_gdt_blocks, g.journal_blocks) == (2, 1024, 16384)
    assert g.backup_groups == [1, 3, 5, 7, 9, 25, 27, 49]
    # flex_bg: group 0's bitmaps and tables follow the reserved GDT blocks (dumpe2fs)
    assert (g.block_bitmap[0], g.inode_bitmap[0], g.inode_table[0]) == (1027, 1043, 1059)
    assert (g.block_bitmap[17], g.inode_table[16]) == (524289, 524320)


def test_ext4_100g_geometry():
    g = Ext4Geometry.compute(100 << 30)
    assert (g.nr_groups, g.gdt_blocks, g.journal_blocks) == (800, 13, 131072)
    assert g.block_bitmap[0] == 1038


def test_ext4_journal_in_middle_group():
    fs = mkfs(PlainDevice("10G"), "ext4")
    assert fs.journal_start == 33 * 32768          # as dumpe2fs/FIEMAP show
    fs = mkfs(PlainDevice("100G"), "ext4")
    assert fs.journal_start == 401 * 32768


def test_xfs_geometry():
    fs = mkfs(PlainDevice("10G"), "xfs")
    assert (fs.agcount, fs.agblocks, fs.log_blocks) == (4, 655360, 16384)
    assert fs.log_start == 2 * 655360 + 6
    assert fs.inodes[fs.ROOT_INO].loc == 16        # root chunk: blocks 16-23 of AG 0
    fs = mkfs(PlainDevice("100G"), "xfs", agcount=8)
    assert fs.agcount == 8 and fs.log_start == 4 * fs.agblocks + 6


def test_options_are_mkfs_options():
    with pytest.raises(ValueError, match="agcount"):
        mkfs(PlainDevice("1G"), "ext4", agcount=4)
    with pytest.raises(ValueError, match="fstype"):
        mkfs(PlainDevice("1G"), "btrfs")


def test_lazy_journal_init_skips_journal_zeroing():
    d = PlainDevice("10G")
    mkfs(d, "ext4", lazy_journal_init=True)
    assert d.physical_bytes // 1024 == 4332        # measured: mke2fs -E lazy_journal_init=1


def test_nodiscard_sends_no_discard_and_discard_does():
    d = PlainDevice("1G")
    mkfs(d, "ext4", nodiscard=True)
    assert d.stats.nr_discards == 0
    d = PlainDevice("1G")
    mkfs(d, "xfs")
    assert d.stats.nr_discards == 1 and d.stats.bytes_discarded == 1 << 30


def test_small_and_odd_sizes_format():
    for size in ("64M", "300M", "1G", "3G", "1000M", "5121M"):
        for fst in ("ext4", "xfs"):
            if fst == "xfs" and size == "64M":
                continue
            dev = PlainDevice(size)
            fs = mkfs(dev, fst)
            fs.write("a", 0, 5000)
            fs.umount()
            counts = fs.check()
            assert fs.stat("a").st_size == 5000 and fs.stat("a").st_blocks == 16, (size, fst)
            assert counts["inodes"] >= 2 and 0 < counts["blocks_in_use"] * 4096 < dev.size, (size, fst)


def test_xfs_refuses_below_300mb_like_mkfs_xfs():
    with pytest.raises(ValueError, match="300MB"):
        mkfs(PlainDevice("299M"), "xfs")


@pytest.mark.parametrize("size,real_kib", [("1G", 33424), ("3G", 67228), ("20G", 135492), ("50G", 266864),
                                           ("200G", 1054768), ("1T", 1064660)])
def test_ext4_mkfs_other_sizes(size, real_kib):
    """du -k after mke2fs 1.47 on a loop file of these sizes, measured here."""
    d = PlainDevice(size)
    mkfs(d, "ext4")
    assert abs(d.physical_bytes // 1024 - real_kib) <= 0.01 * real_kib


@pytest.mark.parametrize("size,real_kib", [("300M", 65864), ("50G", 65864), ("200G", 102728), ("1T", 524616)])
def test_xfs_mkfs_other_sizes(size, real_kib):
    """du -k after mkfs.xfs 6.1 on a loop file of these sizes, measured here."""
    d = PlainDevice(size)
    mkfs(d, "xfs")
    assert abs(d.physical_bytes // 1024 - real_kib) <= 0.01 * real_kib

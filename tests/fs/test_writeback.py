"""Dirty pages are written back once: a rewrite of a mapped block dirties its
page, as a write to a delayed block does (ext4 and xfs alike, payload and
accounting alike)."""
import pytest

from thinp.blockdev import PlainDevice
from thinp.fs import mkfs


def _appends(fstype, payload, n=800, sync_at=10):
    d = PlainDevice("1GiB", payload=payload)
    fs = mkfs(d, fstype)
    fs.create("/log", 0o644)
    fs.sync()
    before = d.stats.bytes_written
    off = 0
    for i in range(n):
        fs.write("/log", off, b"hello" if payload else 5)
        off += 5
        if i == sync_at:            # the block is mapped from here on
            fs.sync()
    fs.sync()
    return fs, d.stats.bytes_written - before


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_small_appends_to_a_mapped_block_coalesce(fstype):
    fs, written = _appends(fstype, payload=False)
    # 4,000 bytes in one block, written back twice (the mid-run sync and the
    # last); the rest is the journal.  Write-through would be 789 x 4 KiB.
    assert fs.counters["data_blocks_written"] >= 800
    assert written < 40 * 4096


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_payload_and_accounting_write_the_same_bytes(fstype):
    fs, w_payload = _appends(fstype, payload=True)
    assert fs.read("/log", 0, 15) == b"hellohellohello"
    assert fs.read("/log", 3995, 5) == b"hello"
    _fs, w_acct = _appends(fstype, payload=False)
    assert w_payload == w_acct


def test_fsync_writes_the_dirty_pages_and_truncate_drops_them():
    d = PlainDevice("1GiB", payload=True)
    fs = mkfs(d, "ext4")
    fs.create("/f", 0o644)
    fs.write("/f", 0, b"a" * 3 * 4096)
    fs.sync()
    fs.write("/f", 4096 + 10, b"bbbb")
    fs.write("/f", 2 * 4096, b"c" * 4096)
    fs.truncate("/f", 4096 + 12)           # the third page goes, the second is cut
    before = d.stats.bytes_written
    fs.fsync("/f")
    data_written = d.stats.bytes_written - before
    assert data_written >= 4096            # the dirty second page
    assert fs.read("/f", 4096, 100) == b"a" * 10 + b"bb"
    fs.check()

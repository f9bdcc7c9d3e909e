"""Filesystem.clone: the state of a filesystem seen through a snapshot of its device."""
from __future__ import annotations

import pytest

from thinp.blockdev import PlainDevice
from thinp.fs import mkfs
from thinp.fs.core import CowInodes


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_clone_is_independent_and_consistent(fstype):
    fs = mkfs(PlainDevice("1G"), fstype)
    fs.mkdir("/d")
    for i in range(50):
        fs.write(f"/d/f{i}", 0, 5000 + i)
    fs.link("/d/f0", "/d/hl")
    fs.symlink("f1", "/d/s")
    c = fs.clone(PlainDevice("1G"))
    assert isinstance(c.inodes, CowInodes) and isinstance(fs.inodes, CowInodes)
    assert c.bitmap is fs.bitmap                     # shared until one side allocates
    assert sorted(c.listdir("/d")) == sorted(fs.listdir("/d"))
    assert c.content("/d/f3") == fs.content("/d/f3")
    c.write("/d/f3", 0, 10)
    c.unlink("/d/f4")
    c.mkdir("/d/new")
    fs.unlink("/d/f5")
    assert c.content("/d/f3") != fs.content("/d/f3")
    assert fs.exists("/d/f4") and not c.exists("/d/f4")
    assert c.exists("/d/f5") and not fs.exists("/d/f5")
    assert not fs.exists("/d/new")
    assert len(c.inodes) == len(list(c.inodes.values()))
    c.sync()
    fs.sync()
    assert c.bitmap is not fs.bitmap
    c.check()
    fs.check()
    # a clone of a clone
    g = c.clone(PlainDevice("1G"))
    g.unlink("/d/hl")
    assert c.stat("/d/f0").st_nlink == 2 and g.stat("/d/f0").st_nlink == 1
    g.check()
    c.check()


def test_clone_needs_a_device_of_the_same_size():
    fs = mkfs(PlainDevice("1G"), "ext4")
    with pytest.raises(ValueError):
        fs.clone(PlainDevice("2G"))

"""File operations, errno, content, discard: one body, both filesystems."""
import errno
import stat

import numpy as np
import pytest

from thinp.blockdev import PlainDevice
from thinp.errors import MetadataCorruptError
from thinp.fs import mkfs

FSTYPES = ["ext4", "xfs"]


def make(fstype, size="1G", payload=False, **kw):
    dev = PlainDevice(size, payload=payload)
    return dev, mkfs(dev, fstype, **kw)


def errno_of(fn, *a, **kw):
    with pytest.raises(OSError) as e:
        fn(*a, **kw)
    return e.value.errno


@pytest.fixture(params=FSTYPES)
def fs(request):
    return make(request.param)[1]


@pytest.fixture(params=FSTYPES)
def pfs(request):
    return make(request.param, payload=True)[1]


def test_posix_errors(fs):
    fs.mkdir("d")
    fs.create("d/f")
    assert errno_of(fs.mkdir, "d") == errno.EEXIST
    assert errno_of(fs.create, "d/f") == errno.EEXIST
    assert errno_of(fs.stat, "nope") == errno.ENOENT
    assert errno_of(fs.create, "nope/f") == errno.ENOENT
    assert errno_of(fs.rmdir, "d") == errno.ENOTEMPTY
    assert errno_of(fs.unlink, "d") == errno.EISDIR
    assert errno_of(fs.write, "d", 0, 10) == errno.EISDIR
    assert errno_of(fs.read, "d") == errno.EISDIR
    assert errno_of(fs.rmdir, "d/f") == errno.ENOTDIR
    assert errno_of(fs.create, "d/f/g") == errno.ENOTDIR
    assert errno_of(fs.listdir, "d/f") == errno.ENOTDIR
    assert errno_of(fs.link, "d", "d2") == errno.EPERM
    assert errno_of(fs.rename, "d", "d/sub") == errno.EINVAL
    assert errno_of(fs.getxattr, "d/f", "user.x") == errno.ENODATA
    assert errno_of(fs.create, "x" * 256) == errno.ENAMETOOLONG
    assert errno_of(fs.truncate, "missing", 0) == errno.ENOENT
    fs.mkdir("e")
    fs.create("e/x")
    assert errno_of(fs.rename, "d/f", "e") == errno.EISDIR
    assert errno_of(fs.rename, "e", "d/f") == errno.ENOTDIR
    assert errno_of(fs.rename, "d", "e") == errno.ENOTEMPTY
    fs.check()


def test_namespace_and_links(fs):
    fs.mkdir("a")
    fs.mkdir("a/b")
    fs.write("a/b/f", 0, 10000)
    fs.link("a/b/f", "a/g")
    assert fs.stat("a/g").st_nlink == 2 and fs.stat("a/g").st_ino == fs.stat("a/b/f").st_ino
    assert fs.stat("a").st_nlink == 3
    fs.symlink("b/f", "a/s")
    assert fs.readlink("a/s") == "b/f"
    assert fs.stat("a/s").st_size == 10000 and stat.S_ISLNK(fs.lstat("a/s").st_mode)
    fs.mknod("a/wh", stat.S_IFCHR, 0)
    st = fs.lstat("a/wh")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    fs.rename("a/b", "c")
    assert fs.listdir("/") == ["a", "c", "lost+found"] if fs.fstype == "ext4" else ["a", "c"]
    assert fs.stat("a").st_nlink == 2 and fs.stat("c/f").st_size == 10000
    fs.unlink("c/f")
    assert fs.stat("a/g").st_nlink == 1
    walked = list(fs.walk("/"))
    assert walked[0][0] == "/" and ("/a", [], ["g", "s", "wh"]) in walked
    fs.chmod("a/g", 0o600)
    fs.chown("a/g", 1000, 1001)
    fs.utime("a/g", (1.0, 2.0))
    st = fs.stat("a/g")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o600, 1000, 1001, 2.0)
    fs.setxattr("a", "trusted.overlay.opaque", b"y")
    assert fs.getxattr("a", "trusted.overlay.opaque") == b"y"
    assert fs.listxattr("a") == ["trusted.overlay.opaque"]
    fs.check()


def test_payload_bytes_exact(pfs):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    pfs.write("f", 0, data)
    pfs.write("f", 5000, b"HELLO")
    want = bytearray(data)
    want[5000:5005] = b"HELLO"
    assert pfs.read("f") == bytes(want)
    pfs.write("sparse", 1 << 20, b"tail")
    assert pfs.read("sparse", (1 << 20) - 2, 6) == b"\0\0tail"
    assert pfs.stat("sparse").st_blocks == 8      # only the one 4 KiB block is allocated
    pfs.truncate("f", 4097)
    assert pfs.read("f") == bytes(want[:4097])
    pfs.truncate("f", 10000)
    assert pfs.read("f") == bytes(want[:4097]) + bytes(10000 - 4097)
    with pytest.raises(ValueError):
        pfs.write("g", 0, 100)
    pfs.umount()
    pfs.check()


def test_accounting_stamps(fs):
    fs.write("a", 0, 3 * 4096, stamp=7)
    fs.write("b", 0, 3 * 4096, stamp=7)
    assert fs.content("a") == fs.content("b")
    assert list(fs.read("a")) == [7, 7, 7]
    fs.write("b", 4096 + 10, 20, stamp=8)       # partial overwrite changes one block's stamp
    st = fs.read("b")
    assert st[0] == 7 and st[2] == 7 and st[1] not in (7, 8)
    assert fs.content("a") != fs.content("b")
    fs.write("c", 0, b"\0" * 4096 + b"x" * 4096)  # bytes get content-addressed stamps
    fs.write("d", 0, b"\0" * 4096 + b"x" * 4096)
    assert fs.content("c") == fs.content("d") and fs.read("c")[0] == 0
    assert fs.stat("a").st_size == 12288


def test_cross_filesystem_equality_in_accounting_mode():
    _, e = make("ext4")
    _, x = make("xfs")
    for f in (e, x):
        f.mkdir("etc")
        f.write("etc/passwd", 0, b"root:x:0:0::/root:/bin/sh\n" * 100)
        f.write("big", 0, 1 << 20, stamp=99)
    for p in ("etc/passwd", "big"):
        assert e.content(p) == x.content(p)


@pytest.mark.parametrize("fstype", FSTYPES)
def test_rm_leaves_blocks_provisioned_until_fstrim(fstype):
    dev, fs = make(fstype, "4G")
    fs.umount()
    base = dev.physical_bytes
    fs.write("f", 0, 50 << 20)
    fs.umount()
    grown = dev.physical_bytes
    assert grown >= base + (50 << 20) - 128 * 1024   # xfs reuses part of mkfs's zeroed head
    fs.unlink("f")
    fs.umount()
    assert dev.physical_bytes == grown                  # no discard: still provisioned
    fs.fstrim()
    assert fs.counters["blocks_discarded"] * 4096 >= 50 << 20
    assert dev.physical_bytes <= base
    fs.check()


@pytest.mark.parametrize("fstype", FSTYPES)
def test_mount_discard_passes_frees_down(fstype):
    dev, fs = make(fstype, "4G", discard=True)
    fs.umount()
    base = dev.physical_bytes
    fs.write("f", 0, 20 << 20)
    fs.sync()
    fs.unlink("f")
    fs.sync()
    assert dev.physical_bytes <= base + 64 * 1024
    assert fs.counters["blocks_discarded"] >= (20 << 20) // 4096


@pytest.mark.parametrize("fstype", FSTYPES)
def test_enospc(fstype):
    dev, fs = make(fstype, "320M")
    with pytest.raises(OSError) as e:
        fs.write("f", 0, 330 << 20)
    assert e.value.errno == errno.ENOSPC


def test_ext4_runs_out_of_inodes():
    dev, fs = make("ext4", "64M", inode_ratio=1 << 20)   # 64 inodes
    with pytest.raises(OSError) as e:
        for i in range(100):
            fs.create(f"f{i}")
    assert e.value.errno == errno.ENOSPC
    fs.check()


def test_ext4_spreads_top_level_dirs_and_keeps_files_near():
    _, fs = make("ext4", "10G")
    groups = {fs.inodes[fs.mkdir(f"top{i}")].zone // 16 for i in range(10)}
    assert len(groups) >= 3                       # Orlov spreads them over the fs's 5 flex groups
    d = fs.inodes[fs.mkdir("top0/sub")]
    assert d.zone // 16 == fs.inodes[fs.stat("top0").st_ino].zone // 16
    fs.write("top0/sub/big", 0, 1 << 20)
    fs.sync()
    node = fs.inodes[fs.stat("top0/sub/big").st_ino]
    assert node.extents[0][1] // 32768 == (node.zone & ~15) + 1   # data in flex group's 2nd group


def test_delalloc_merges_sequential_appends():
    for fstype in FSTYPES:
        _, fs = make(fstype, "1G")
        for i in range(64):
            fs.write("log", i * 65536, 65536)
        assert fs.inodes[fs.stat("log").st_ino].extents == []      # nothing allocated yet
        assert fs.stat("log").st_blocks == 1024 * 8
        fs.sync()
        node = fs.inodes[fs.stat("log").st_ino]
        assert len(node.extents) == 1 and node.extents[0][2] == 1024


def test_xfs_rotates_directories_across_ags():
    _, fs = make("xfs", "10G")
    ags = [fs.inodes[fs.mkdir(f"d{i}")].zone for i in range(8)]
    assert ags == [1, 2, 3, 0, 1, 2, 3, 0]
    f = fs.inodes[fs.create("d1/x")]
    assert f.zone == ags[1]


def test_metadata_goes_through_the_journal():
    dev, fs = make("ext4", "1G")
    j0 = fs.counters["journal_blocks_written"]
    fs.mkdir("a")
    fs.sync()
    assert fs.counters["journal_blocks_written"] > j0
    dev, fs = make("ext4", "1G", journal=False)
    fs.mkdir("a")
    fs.sync()
    assert fs.counters["journal_blocks_written"] == 0 and fs.counters["metadata_blocks_written"] > 0


def test_check_detects_corruption():
    _, fs = make("ext4", "1G")
    fs.write("f", 0, 8192)
    fs.sync()
    fs.check()
    node = fs.inodes[fs.stat("f").st_ino]
    fs.bitmap[node.extents[0][1]] = 0
    with pytest.raises(MetadataCorruptError, match="owned but marked free"):
        fs.check()
    fs.bitmap[node.extents[0][1]] = 1
    node.nlink = 5
    with pytest.raises(MetadataCorruptError, match="nlink"):
        fs.check()


class ProtocolOnly:
    """A device with nothing but the BlockDevice protocol, to catch reaching past it."""

    def __init__(self, inner):
        self._inner = inner
        self.size = inner.size
        self.block_size = 65536
        self.payload = inner.payload

    def read(self, offset, length):
        return self._inner.read(offset, length)

    def write(self, offset, data):
        self._inner.write(offset, data)

    def discard(self, offset, length):
        self._inner.discard(offset, length)


@pytest.mark.parametrize("fstype", FSTYPES)
@pytest.mark.parametrize("payload", [False, True])
def test_uses_only_the_block_device_protocol(fstype, payload):
    inner = PlainDevice("1G", payload=payload)
    fs = mkfs(ProtocolOnly(inner), fstype)
    fs.mkdir("d")
    fs.write("d/f", 0, b"x" * 10000 if payload else 10000)
    fs.symlink("f", "d/l")
    fs.unlink("d/f")
    fs.fstrim()
    fs.umount()
    fs.check()
    assert inner.stats.nr_writes > 0 and inner.stats.nr_discards > 0


@pytest.mark.parametrize("fstype", FSTYPES)
def test_trace_of_a_run_replays_to_the_same_blocks(fstype):
    from thinp.trace import DISCARD, WRITE, TraceRecorder

    rec = TraceRecorder(dev_id=3)
    dev = PlainDevice("2G", trace=rec)
    fs = mkfs(dev, fstype)
    for i in range(50):
        fs.write(f"f{i}", 0, 70000)
    fs.unlink("f7")
    fs.fstrim()
    fs.umount()
    replay = PlainDevice("2G")
    for row in rec.trace():
        if row["op"] == WRITE:
            replay.write(int(row["offset"]), int(row["length"]))
        elif row["op"] == DISCARD:
            replay.discard(int(row["offset"]), int(row["length"]))
    assert replay.allocated_blocks() == dev.allocated_blocks()


def test_payload_on_a_sparse_file(tmp_path):
    import os

    p = tmp_path / "disk.img"
    with PlainDevice("1G", path=p, payload=True) as dev:
        fs = mkfs(dev, "xfs")
        data = os.urandom(200_000)
        fs.write("f", 0, data)
        fs.umount()
        assert fs.read("f") == data
        assert os.stat(p).st_blocks * 512 >= dev.physical_bytes
        fs.unlink("f")
        fs.fstrim()
        assert os.stat(p).st_blocks * 512 < 70 << 20


@pytest.mark.parametrize("payload", [False, True])
def test_copy_file_between_filesystems(payload):
    from thinp.fs import copy_file

    _, e = make("ext4", payload=payload)
    _, x = make("xfs", payload=payload)
    data = b"\x01" * 5000 + bytes(3 * 4096) + b"\x02" * 100
    e.write("f", 0, data if payload else len(data), **({} if payload else {"stamp": 5}))
    if not payload:
        e.truncate("f", 4096 * 5 + 100)
    e.chmod("f", 0o640)
    e.chown("f", 7, 8)
    e.setxattr("f", "user.k", b"v")
    copy_file(e, "f", x, "g")
    assert x.content("g") == e.content("f")
    st = x.stat("g")
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (e.stat("f").st_size, 0o640, 7, 8)
    assert x.getxattr("g", "user.k") == b"v"
    x.umount()
    x.check()
    if payload:
        assert x.read("g") == data and st.st_blocks < e.stat("f").st_blocks   # zero blocks became holes


def test_same_workload_same_content_across_fstypes():
    from thinp.fs.populate import wl_smallfiles
    from thinp.validate.target import SimTarget

    fss = []
    for fstype in FSTYPES:
        _, fs = make(fstype, "1G")
        wl_smallfiles(SimTarget(fs), n=300, per_dir=50)
        fss.append(fs)
    for dpath, _dirs, files in fss[0].walk("/"):
        for f in files:
            p = f"{dpath}/{f}"
            assert fss[0].content(p) == fss[1].content(p)


def test_mkfs_option_checks():
    with pytest.raises(ValueError, match="inode_ratio"):
        make("ext4", inode_ratio=100)
    with pytest.raises(ValueError, match="journal_size"):
        make("ext4", journal_size="1M")
    _, fs = make("ext4", "10G", journal_size="128M")
    assert fs.geometry.journal_blocks == 32768
    _, fs = make("ext4", "10G", journal_size=32)          # a bare number is MiB, as -J size=
    assert fs.geometry.journal_blocks == 8192


@pytest.mark.parametrize("fstype", FSTYPES)
def test_enospc_leaves_nothing_half_made(fstype):
    dev, fs = make(fstype, "512M" if fstype == "ext4" else "320M")
    made = 0
    with pytest.raises(OSError) as e:
        for i in range(1_000_000):
            fs.mkdir(f"d{i}")          # every directory costs a block (ext4) or grows the root
            fs.write(f"d{i}/f", 0, 256 * 1024)
            made += 1
    assert e.value.errno == errno.ENOSPC and made > 100
    fs.check()
    fs.sync()
    fs.check()


def test_ext4_second_fstrim_trims_only_what_was_freed_since():
    _, fs = make("ext4", "2G")
    first = fs.fstrim()
    assert first > 1 << 30
    assert fs.fstrim() == 0                   # every group is marked trimmed
    fs.write("f", 0, 1 << 20)
    fs.sync()
    fs.unlink("f")
    again = fs.fstrim()
    assert 1 << 20 <= again < 200 << 20       # only the group that saw frees
    fs.umount()                               # the flags are in memory only
    assert fs.fstrim() > 1 << 30
    _, x = make("xfs", "2G")
    x.fstrim()
    n = x.counters["blocks_discarded"]
    assert x.fstrim() == 2 << 30                   # xfs reports the range, as fstrim -v shows
    assert x.counters["blocks_discarded"] == 2 * n  # and trims every free run each time


@pytest.mark.parametrize("payload", [False, True])
def test_copy_tree_is_cp_a(payload, rootfs_manifest):
    from thinp.fs import copy_tree
    from thinp.fs.populate import wl_rootfs
    from thinp.validate.fixtures import load_manifest
    from thinp.validate.target import SimTarget

    rows = [r for r in load_manifest(rootfs_manifest) if r["path"].startswith(("etc", "usr/bin", "dev"))]
    _, src = make("ext4", "2G", payload=payload)
    for top in ("usr",):
        src.mkdir(top)
    wl_rootfs(SimTarget(src), rows)
    src.setxattr("etc", "trusted.overlay.opaque", b"y")
    _, dst = make("xfs", "2G", payload=payload)
    n = copy_tree(src, "/", dst, "/copy")
    assert n == sum(1 for _ in src.walk("/") for _ in [0]) + sum(len(f) for _d, _s, f in src.walk("/"))
    for dpath, dirs, files in src.walk("/"):
        for name in files:
            p = f"{dpath.rstrip('/')}/{name}"
            a, b = src.lstat(p), dst.lstat("/copy" + p)
            assert (a.st_mode, a.st_uid, a.st_gid, a.st_nlink, a.st_rdev) == (b.st_mode, b.st_uid, b.st_gid, b.st_nlink, b.st_rdev), p
            if stat.S_ISREG(a.st_mode):
                assert src.content(p) == dst.content("/copy" + p)
            elif stat.S_ISLNK(a.st_mode):
                assert src.readlink(p) == dst.readlink("/copy" + p)
    assert dst.getxattr("/copy/etc", "trusted.overlay.opaque") == b"y"
    dst.umount()
    dst.check()
    removed = dst.rmtree("/copy")
    assert removed == n and dst.listdir("/") == []
    dst.check()

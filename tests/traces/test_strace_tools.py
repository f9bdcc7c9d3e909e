"""The strace reader on the calls modern tools make: ACL modes (cp -p, mv),
fchmodat2, futimens, copy_file_range, FICLONE, renameat2 flags, linkat,
symlinkat and O_TMPFILE.  The lines are in strace 6's own format (taken from
runs of coreutils 9 and Python under ``strace -f -tt -y``)."""
from __future__ import annotations

import stat as _stat

import pytest

from thinp.drivers import get_driver
from thinp.traces import strace


def _acl(user: int, group: int, other: int, mask: int | None = None, named_user: int | None = None) -> bytes:
    out = (2).to_bytes(4, "little")
    ents = [(0x01, user, 0xFFFFFFFF)]
    if named_user is not None:
        ents.append((0x02, named_user, 1000))
    ents.append((0x04, group, 0xFFFFFFFF))
    if mask is not None:
        ents.append((0x10, mask, 0xFFFFFFFF))
    ents.append((0x20, other, 0xFFFFFFFF))
    for tag, perm, ident in ents:
        out += tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
    return out


def _strace_str(b: bytes) -> str:
    """Bytes as strace prints them (octal escapes for the unprintable)."""
    return '"' + "".join(chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else f"\\{c:o}" for c in b) + '"'


def _ops(text: str):
    return strace.parse(text.strip().splitlines())


def test_decode_acl_mode():
    assert strace.decode_acl_mode(_acl(6, 4, 0)) == (0o640, True)
    assert len(_acl(6, 4, 0)) == 28
    assert strace.decode_acl_mode(_acl(7, 5, 1, mask=7, named_user=6)) == (0o771, False)
    assert strace.decode_acl_mode(b"\x01\x00\x00\x00" + bytes(24)) is None
    assert strace.decode_acl_mode(b"short") is None


def test_printed_acl_values_are_decoded():
    minimal, full = _acl(6, 4, 4), _acl(7, 5, 0, mask=5, named_user=7)
    t = _ops(f"""
7 10:00:00.1 fsetxattr(4</d/b>, "system.posix_acl_access", {_strace_str(minimal)}, 28, 0) = 0
7 10:00:00.2 setxattr("/d/dir", "system.posix_acl_access", {_strace_str(full)}, {len(full)}, 0) = 0
7 10:00:00.3 lsetxattr("/d/c", "user.comment", "hi", 2, 0) = 0
""")
    rows = [(o.kind, o.path, o.path2, o.mode, o.flags, o.data) for o in t.ops]
    assert rows == [("chmod", "/d/b", "", 0o644, strace.CHMOD_ACL, b""),
                    ("chmod", "/d/dir", "", 0o750, strace.CHMOD_ACL, b""),
                    ("setxattr", "/d/dir", "system.posix_acl_access", -1, 0, full),
                    ("setxattr", "/d/c", "user.comment", -1, 0, b"hi")]
    assert t.nr_modes_inferred == 0


# cp -a of a directory under -s 0 (coreutils 9.1, strace 6.1): names and values elided
CP_A = """
10794 08:29:02.365398 newfstatat(AT_FDCWD</s>, "src/sub", {st_mode=S_IFDIR|0750, st_size=4096, ...}, 0) = 0
10794 08:29:02.365458 getxattr("src/sub", ""..., 0x7ffcbe6db6d0, 132) = -1 ENODATA (No data available)
10794 08:29:02.365500 mkdir("dst/sub", 0700) = 0
10794 08:29:02.365503 newfstatat(AT_FDCWD</s>, "src/sub", {st_mode=S_IFDIR|0750, st_size=4096, ...}, 0) = 0
10794 08:29:02.365552 setxattr("dst/sub", ""..., ""..., 28, 0) = 0
10794 08:29:02.365615 removexattr("dst/sub", ""...) = 0
10794 08:29:02.365706 openat(AT_FDCWD</s>, "src/b", O_RDONLY|O_NOFOLLOW) = 3</s/src/b>
10794 08:29:02.365756 newfstatat(3</s/src/b>, "", {st_mode=S_IFREG|0640, st_size=3, ...}, AT_EMPTY_PATH) = 0
10794 08:29:02.365800 openat(AT_FDCWD</s>, "dst/b", O_WRONLY|O_CREAT|O_EXCL, 0600) = 4</s/dst/b>
10794 08:29:02.365896 ioctl(4</s/dst/b>, BTRFS_IOC_CLONE or FICLONE, 3) = -1 EOPNOTSUPP (Operation not supported)
10794 08:29:02.365946 newfstatat(4</s/dst/b>, "", {st_mode=S_IFREG|0600, st_size=0, ...}, AT_EMPTY_PATH) = 0
10794 08:29:02.366024 copy_file_range(3</s/src/b>, NULL, 4</s/dst/b>, NULL, 9223372035781033984, 0) = 3
10794 08:29:02.366087 copy_file_range(3</s/src/b>, NULL, 4</s/dst/b>, NULL, 9223372035781033984, 0) = 0
10794 08:29:02.366126 utimensat(4</s/dst/b>, NULL, [...], 0) = 0
10794 08:29:02.366264 newfstatat(3</s/src/b>, "", {st_mode=S_IFREG|0640, st_size=3, ...}, AT_EMPTY_PATH) = 0
10794 08:29:02.366301 fsetxattr(4</s/dst/b>, ""..., ""..., 28, 0) = 0
10794 08:29:02.366439 linkat(AT_FDCWD</s>, "dst/b", AT_FDCWD</s>, "dst/a", 0) = 0
10794 08:29:02.366561 symlinkat("a", AT_FDCWD</s>, "dst/l") = 0
10794 08:29:02.368526 fchownat(AT_FDCWD</s>, "dst/l", 0, 0, AT_SYMLINK_NOFOLLOW) = 0
"""


def test_elided_acl_modes_come_from_the_source_the_process_just_stated():
    t = _ops(CP_A)
    rows = [(o.kind, o.path, o.path2, o.mode, o.size, o.flags) for o in t.ops]
    inferred = strace.CHMOD_ACL | strace.MODE_INFERRED
    assert rows == [
        ("mkdir", "/s/dst/sub", "", 0o700, 0, 0),
        ("chmod", "/s/dst/sub", "", 0o750, 0, inferred),
        ("open", "/s/dst/b", "", 0o600, 0, strace.O_CREAT | strace.O_EXCL | strace.O_WRONLY),
        ("write", "/s/dst/b", "", -1, 3, 0),
        ("utime", "/s/dst/b", "", -1, 0, 0),
        ("chmod", "/s/dst/b", "", 0o640, 0, inferred),
        ("link", "/s/dst/b", "/s/dst/a", -1, 0, 0),
        ("symlink", "/s/dst/l", "a", -1, 0, 0),
        ("chown", "/s/dst/l", "", -1, 0, 1),
    ]
    assert t.nr_modes_inferred == 2 and t.nr_failed == 2   # getxattr ENODATA, FICLONE EOPNOTSUPP
    drv = get_driver("overlay2", size="1GiB")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    v.mkdir("/s", 0o755)
    v.mkdir("/s/dst", 0o755)
    res = strace.replay(t, v)
    assert res["errors"] == {} and res["modes_inferred"] == 2
    assert _stat.S_IMODE(v.stat("/s/dst/sub").st_mode) == 0o750
    st = v.stat("/s/dst/a")
    assert _stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 3 and st.st_nlink == 2
    assert v.readlink("/s/dst/l") == "a"


def test_the_inferred_mode_is_never_the_targets_own():
    t = _ops("""
1 10:00:00.1 newfstatat(3</src>, "", {st_mode=S_IFREG|0751, st_size=3, ...}, AT_EMPTY_PATH) = 0
1 10:00:00.2 openat(AT_FDCWD</>, "/dst", O_WRONLY|O_CREAT|O_EXCL, 0600) = 4</dst>
1 10:00:00.3 newfstatat(4</dst>, "", {st_mode=S_IFREG|0600, st_size=0, ...}, AT_EMPTY_PATH) = 0
1 10:00:00.4 fsetxattr(4</dst>, ""..., ""..., 28, 0) = 0
""")
    assert [(o.kind, o.mode) for o in t.ops] == [("open", 0o600), ("chmod", 0o751)]


def test_an_elided_acl_with_named_entries_is_skipped_not_guessed():
    t = _ops("""
1 10:00:00.1 newfstatat(AT_FDCWD</>, "/src", {st_mode=S_IFREG|0640, st_size=3, ...}, 0) = 0
1 10:00:00.2 setxattr("/dst", ""..., ""..., 44, 0) = 0
""")
    assert t.ops == [] and t.nr_skipped == 1 and t.nr_modes_inferred == 0


def test_fchmodat2_futimens_and_statx():
    t = _ops("""
1 10:00:00.1 fchmodat2(AT_FDCWD</etc>, "a", 0600, 0) = 0
1 10:00:00.2 openat(AT_FDCWD</>, "/etc/b", O_RDONLY|O_PATH) = 5</etc/b>
1 10:00:00.3 fchmodat2(5</etc/b>, "", 0444, AT_EMPTY_PATH) = 0
1 10:00:00.4 utimensat(5</etc/b>, NULL, [UTIME_NOW, UTIME_NOW], 0) = 0
1 10:00:00.5 utimensat(5</etc/b>, "", [UTIME_NOW, UTIME_NOW], AT_EMPTY_PATH) = 0
1 10:00:00.6 statx(AT_FDCWD</>, "/etc/c", AT_STATX_SYNC_AS_STAT, STATX_ALL, {stx_mask=STATX_ALL, stx_attributes=0, stx_mode=S_IFREG|0644, stx_size=77, ...}) = 0
""")
    assert [(o.kind, o.path, o.mode) for o in t.ops] == [
        ("chmod", "/etc/a", 0o600), ("chmod", "/etc/b", 0o444), ("utime", "/etc/b", -1), ("utime", "/etc/b", -1)]
    assert t.stats["/etc/c"] == (0o100644, 77)


def test_renameat2_flags():
    t = _ops("""
1 10:00:00.1 renameat2(AT_FDCWD</>, "/a.tmp", AT_FDCWD</>, "/a", RENAME_NOREPLACE) = 0
1 10:00:00.2 renameat2(AT_FDCWD</>, "/x", AT_FDCWD</>, "/y", RENAME_EXCHANGE) = 0
1 10:00:00.3 renameat2(AT_FDCWD</>, "/p", AT_FDCWD</>, "/q", RENAME_NOREPLACE) = -1 EEXIST (File exists)
""")
    assert [(o.kind, o.path, o.path2) for o in t.ops] == [("rename", "/a.tmp", "/a"), ("exchange", "/x", "/y")]
    drv = get_driver("overlay2", size="1GiB")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    for p, n in (("/a.tmp", 1), ("/x", 10), ("/y", 20)):
        v.create(p, 0o644)
        v.write(p, 0, n)
    assert strace.replay(t, v)["errors"] == {}
    assert (v.stat("/a").st_size, v.stat("/x").st_size, v.stat("/y").st_size) == (1, 20, 10)
    assert sorted(v.listdir("/")) == ["a", "x", "y"]


def test_ficlone_that_succeeds_copies_the_source():
    t = _ops("""
1 10:00:00.1 openat(AT_FDCWD</>, "/src", O_RDONLY) = 3</src>
1 10:00:00.2 openat(AT_FDCWD</>, "/dst", O_WRONLY|O_CREAT|O_EXCL, 0644) = 4</dst>
1 10:00:00.3 ioctl(4</dst>, BTRFS_IOC_CLONE or FICLONE, 3) = 0
""")
    assert [(o.kind, o.path, o.path2) for o in t.ops] == [("open", "/dst", ""), ("clone", "/dst", "/src")]
    drv = get_driver("overlay2", size="1GiB")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    v.create("/src", 0o644)
    v.write("/src", 0, 12345)
    assert strace.replay(t, v)["errors"] == {}
    assert v.stat("/dst").st_size == 12345


@pytest.mark.parametrize("deleted", ["<{p}>(deleted)", "<{p} (deleted)>"])
def test_o_tmpfile_then_linkat_is_an_exclusive_create_with_what_was_held_back(deleted):
    fd3 = "3" + deleted.format(p="/var/#2163092")
    fd4 = "4" + deleted.format(p="/var/#2163093")
    t = _ops(f"""
9 10:00:00.1 openat(AT_FDCWD</var>, "/var", O_WRONLY|O_CLOEXEC|O_TMPFILE, 0640) = {fd3}
9 10:00:00.2 write({fd3}, ""..., 5000) = 5000
9 10:00:00.3 fchmod({fd3}, 0604) = 0
9 10:00:00.4 fsync({fd3}) = 0
9 10:00:00.5 openat(AT_FDCWD</var>, "/var", O_RDWR|O_TMPFILE, 0600) = {fd4}
9 10:00:00.6 write({fd4}, ""..., 100) = 100
9 10:00:00.7 linkat({fd4}, "", AT_FDCWD</var>, "/var/viaempty", AT_EMPTY_PATH) = 0
9 10:00:00.8 write({fd4}, ""..., 10) = 10
9 10:00:00.9 linkat(AT_FDCWD</>, "/proc/self/fd/3", AT_FDCWD</var>, "viaproc", AT_SYMLINK_FOLLOW) = 0
9 10:00:01.0 close(3</var/viaproc>) = 0
""")
    rows = [(o.kind, o.path, o.offset, o.size, o.mode) for o in t.ops]
    assert rows == [
        ("open", "/var/viaempty", 0, 0, 0o600), ("write", "/var/viaempty", 0, 100, -1),
        ("write", "/var/viaempty", 100, 10, -1),
        ("open", "/var/viaproc", 0, 0, 0o604), ("write", "/var/viaproc", 0, 5000, -1),
        ("chmod", "/var/viaproc", 0, 0, 0o604),
    ]
    drv = get_driver("overlay2", size="1GiB")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    v.mkdir("/var", 0o755)
    assert strace.replay(t, v)["errors"] == {}
    assert v.stat("/var/viaempty").st_size == 110
    st = v.stat("/var/viaproc")
    assert st.st_size == 5000 and _stat.S_IMODE(st.st_mode) == 0o604
    assert sorted(v.listdir("/var")) == ["viaempty", "viaproc"]


def test_openat2_and_fallocate():
    t = _ops("""
1 10:00:00.1 openat2(AT_FDCWD</>, "/var/f", {flags=O_WRONLY|O_CREAT|O_CLOEXEC, mode=0640, resolve=0}, 24) = 3</var/f>
1 10:00:00.2 fallocate(3</var/f>, 0, 0, 8192) = 0
1 10:00:00.3 fallocate(3</var/f>, FALLOC_FL_KEEP_SIZE, 0, 65536) = 0
1 10:00:00.4 fallocate(3</var/f>, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) = 0
1 10:00:00.5 write(3</var/f>, ""..., 100) = 100
""")
    assert [(o.kind, o.path, o.size, o.mode) for o in t.ops] == [
        ("open", "/var/f", 0, 0o640), ("fallocate", "/var/f", 8192, -1), ("write", "/var/f", 100, -1)]
    drv = get_driver("overlay2", size="1GiB")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    v.mkdir("/var", 0o755)
    assert strace.replay(t, v)["errors"] == {}
    st = v.stat("/var/f")
    assert st.st_size == 8192 and _stat.S_IMODE(st.st_mode) == 0o640

"""Tar member names and header types as Docker's ``Unpack`` takes them.

Every tar here is built by hand, header by header (v7, ustar, GNU, PAX), so
the readers are tested against bytes no thinp writer produced.
"""
from __future__ import annotations

import io
import stat
import tarfile

import pytest

from thinp.drivers import get_driver
from thinp.errors import ImageFormatError
from thinp.image import Layer, flatten
from thinp.image import fastscan

from .builders import legacy_save
from .conftest import make_tar


def _header(name: str, typeflag: bytes, *, mode=0o644, uid=0, gid=0, size=0, link="",
            magic=b"ustar\x0000", prefix="", dev=(0, 0)) -> bytes:
    """One 512-byte header, checksum computed; ``magic=b""`` makes a v7 header."""
    h = bytearray(512)

    def put(off, length, value: bytes):
        h[off:off + len(value)] = value[:length]

    put(0, 100, name.encode())
    put(100, 8, b"%07o\0" % mode)
    put(108, 8, b"%07o\0" % uid)
    put(116, 8, b"%07o\0" % gid)
    put(124, 12, b"%011o\0" % size)
    put(136, 12, b"%011o\0" % 1_700_000_000)
    put(156, 1, typeflag)
    put(157, 100, link.encode())
    if magic:
        put(257, 8, magic)
        put(329, 8, b"%07o\0" % dev[0])
        put(337, 8, b"%07o\0" % dev[1])
        put(345, 155, prefix.encode())
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _member(name, typeflag, data=b"", **kw) -> bytes:
    out = _header(name, typeflag, size=len(data), **kw)
    if data:
        out += data + b"\0" * (-len(data) % 512)
    return out


def _tar(*members: bytes) -> bytes:
    return b"".join(members) + b"\0" * 1024


def _both(data: bytes):
    """(rows of the streaming reader, rows of the fast scanner): must agree."""
    slow = [(e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.linkname)
            for e, _ in Layer.from_bytes(data).walk()]
    fast = [(e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.linkname)
            for e in Layer.from_bytes(data).entries()]
    assert slow == fast
    return slow


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("root", ["/", "./", ".", "//", "/./"])
def test_root_entries_name_the_root_and_carry_its_mode_and_owner(root):
    data = _tar(_member(root, b"5", mode=0o700, uid=1000, gid=100), _member("etc/", b"5", mode=0o755),
                _member("etc/x", b"0", b"hi", mode=0o600))
    rows = _both(data)
    assert rows[0][:5] == ("", "dir", 0o700, 1000, 100)
    fs = flatten([Layer.from_bytes(data)])
    root_node = fs[""]
    assert (root_node.mode, root_node.uid, root_node.gid) == (0o700, 1000, 100)
    assert fs["etc/x"].size == 2


@pytest.mark.parametrize("name, path", [("/etc/passwd", "etc/passwd"), ("./etc/passwd", "etc/passwd"),
                                        ("/./etc//passwd", "etc/passwd"), ("etc/a/../passwd", "etc/passwd"),
                                        ("/../etc/passwd", "etc/passwd")])
def test_absolute_and_dot_names_are_cleaned(name, path):
    rows = _both(_tar(_member(name, b"0", b"root\n")))
    assert rows == [(path, "file", 0o644, 0, 0, 5, "")]


def test_kaniko_style_layer_with_an_absolute_root_and_absolute_names():
    data = _tar(_member("/", b"5", mode=0o755), _member("/etc/", b"5"), _member("/etc/os-release", b"0", b"ID=x\n"),
                _member("/bin/", b"5"), _member("/bin/sh", b"0", b"elf"), _member("/bin/ash", b"1", link="/bin/sh"),
                _member("/usr/", b"5"), _member("/usr/bin", b"2", link="/bin"))
    rows = _both(data)
    assert [r[0] for r in rows] == ["", "etc", "etc/os-release", "bin", "bin/sh", "bin/ash", "usr", "usr/bin"]
    assert rows[5][1:] == ("hardlink", 0o644, 0, 0, 0, "bin/sh")
    assert rows[7][-1] == "/bin"   # a symlink target stays verbatim
    fs = flatten([Layer.from_bytes(data)])
    assert fs["bin/ash"].ino == fs["bin/sh"].ino


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "./../x"])
def test_dotdot_out_of_the_root_is_refused_by_both_readers(name):
    data = _tar(_member(name, b"0", b"x"))
    for read in (lambda: list(Layer.from_bytes(data).walk()), lambda: list(Layer.from_bytes(data).entries())):
        with pytest.raises(ImageFormatError, match="leaves the root"):
            read()


@pytest.mark.parametrize("target, why", [("../a", "leaves the root"), ("/../a", "leaves the root"),
                                          ("/", "points at the root")])
def test_hardlink_targets_leaving_the_root_are_refused(target, why):
    data = _tar(_member("a", b"0", b"x"), _member("b", b"1", link=target))
    with pytest.raises(ImageFormatError, match=why):
        list(Layer.from_bytes(data).walk())


def test_symlink_escapes_are_still_refused_when_names_are_absolute():
    data = _tar(_member("/evil", b"2", link="../../../etc"), _member("/evil/passwd", b"0", b"pwned"))
    with pytest.raises(ImageFormatError, match="leaves the rootfs"):
        flatten([Layer.from_bytes(data)])


# ---------------------------------------------------------------- header types
def test_v7_headers_mark_directories_by_their_trailing_slash():
    data = _tar(_member("etc/", b"\0", magic=b"", mode=0o750), _member("etc/f", b"\0", b"abc", magic=b""),
                _member("etc/g", b"0", b"de", magic=b""), _member("etc/h", b"1", link="etc/f", magic=b""),
                _member("etc/l", b"2", link="f", magic=b""))
    rows = _both(data)
    assert rows == [("etc", "dir", 0o750, 0, 0, 0, ""), ("etc/f", "file", 0o644, 0, 0, 3, ""),
                    ("etc/g", "file", 0o644, 0, 0, 2, ""), ("etc/h", "hardlink", 0o644, 0, 0, 0, "etc/f"),
                    ("etc/l", "symlink", 0o644, 0, 0, 0, "f")]
    # the prefix field is ignored without the ustar magic
    assert fastscan is not None


def test_ustar_prefix_joins_long_names():
    long_dir = "/".join(["d" * 50] * 3)          # 152 characters: needs the prefix field
    data = _tar(_member("file.txt", b"0", b"x", prefix="/" + long_dir))
    assert _both(data) == [(long_dir + "/file.txt", "file", 0o644, 0, 0, 1, "")]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_gnu_and_pax_long_names_and_link_targets(fmt):
    long_name = "/" + "/".join(["n" * 60] * 5) + "/f"
    long_target = "/" + "/".join(["t" * 60] * 5)
    data = make_tar([("/", "d", None, {"mode": 0o711, "uid": 7}), (long_target, "f", b"data"),
                     (long_name, "h", long_target), ("./s", "l", long_target)], fmt=fmt)
    rows = _both(data)
    assert rows[0][:4] == ("", "dir", 0o711, 7)
    assert rows[1][0] == long_target[1:]
    assert rows[2][0] == long_name[1:] and rows[2][-1] == long_target[1:]
    assert rows[3] == ("s", "symlink", 0o777, 0, 0, 0, long_target)


def test_pax_path_record_overrides_the_header_name_and_is_cleaned():
    data = make_tar([("placeholder", "f", b"x", {"pax_headers": {"path": "/opt/./app//bin"}})])
    assert _both(data)[0][0] == "opt/app/bin"


def test_every_header_type_in_one_layer():
    data = make_tar([("./", "d", None, {"mode": 0o755}), ("/dev/", "d"), ("/dev/null", "c", (1, 3)),
                     ("/dev/sda", "b", (8, 0)), ("/run/", "d"), ("/run/p", "p"), ("/f", "f", b"x"),
                     ("/h", "h", "/f"), ("/l", "l", "f")], fmt=tarfile.USTAR_FORMAT)
    kinds = {r[0]: r[1] for r in _both(data)}
    assert kinds == {"": "dir", "dev": "dir", "dev/null": "char", "dev/sda": "block", "run": "dir",
                     "run/p": "fifo", "f": "file", "h": "hardlink", "l": "symlink"}


# ---------------------------------------------------------------- the container root
#: where the container's root is a copy or snapshot of the image's, it keeps the
#: root entry's metadata; overlay2 and aufs mount the container's own upper
#: ``diff`` directory as the root, which Docker creates 0755 root:root
#: (moby ``overlay2.create``), so the kernel shows that instead.
ROOT_SEEN = {"vfs": (0o750, 1000, 1000), "btrfs": (0o750, 1000, 1000), "devicemapper": (0o750, 1000, 1000),
             "overlay2": (0o755, 0, 0), "aufs": (0o755, 0, 0)}


@pytest.mark.parametrize("driver", sorted(ROOT_SEEN))
def test_root_entry_mode_and_owner_apply_to_the_layer_root_as_docker_applies_them(driver, tmp_path):
    from thinp.engine import Engine

    layer = _tar(_member("/", b"5", mode=0o750, uid=1000, gid=1000), _member("/a", b"0", b"x"))
    p = tmp_path / "img.tar"
    p.write_bytes(legacy_save([layer], tags=("rooted:1",)))
    with Engine(driver, root=tmp_path / "e") as eng:
        img = eng.load(p)[0]
        top = img.chain_ids[-1][7:]
        lay = eng.driver.get(top)
        st = lay.lstat("/")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1000)
        eng.driver.put(top)
        c = eng.create("rooted:1")
        view = eng.mount(c)
        st = view.lstat("/")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == ROOT_SEEN[driver]
        assert view.lstat("/a").st_size == 1

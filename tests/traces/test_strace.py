"""thinp.traces.strace: the reader on handwritten snippets and on the real dpkg trace."""
from __future__ import annotations

import collections
import errno

import pytest

from thinp.traces import strace
from tests.drivers.union_helpers import make


def ops(text: str):
    return [(o.kind, o.path, o.path2, o.offset, o.size) for o in strace.parse(text.strip().splitlines())]


def test_unfinished_and_resumed_lines_make_one_call_at_the_resumed_line():
    t = strace.parse("""
100 10:00:00.000001 openat(AT_FDCWD</>, "/a", O_WRONLY|O_CREAT|O_TRUNC, 0644 <unfinished ...>
101 10:00:00.000002 write(1</outside/log>, ""..., 5) = 5
100 10:00:00.000003 <... openat resumed>) = 3</a>
100 10:00:00.000004 write(3</a>, ""..., 100 <unfinished ...>
101 10:00:00.000005 close(1</outside/log>) = 0
100 10:00:00.000006 <... write resumed>) = 100
""".strip().splitlines())
    assert [(o.kind, o.path, o.size, o.lineno) for o in t.ops] == [("open", "/a", 0, 3), ("write", "/a", 100, 6)]
    assert t.ops[0].flags & strace.O_CREAT and t.ops[0].flags & strace.O_TRUNC
    assert t.ops[0].mode == 0o644


def test_write_offsets_follow_the_file_position():
    got = ops("""
1 10:00:00.1 openat(AT_FDCWD</>, "/f", O_RDWR|O_CREAT, 0600) = 3</f>
1 10:00:00.2 write(3</f>, ""..., 4096) = 4096
1 10:00:00.3 write(3</f>, ""..., 10) = 10
1 10:00:00.4 lseek(3</f>, 0, SEEK_SET) = 0
1 10:00:00.5 read(3</f>, ""..., 100) = 100
1 10:00:00.6 write(3</f>, ""..., 7) = 7
1 10:00:00.7 pwrite64(3</f>, ""..., 9, 8192) = 9
1 10:00:00.8 pwritev(3</f>, [...], 2, 65536) = 20
1 10:00:00.9 dup2(3</f>, 5</f>) = 5
1 10:00:01.0 write(5</f>, ""..., 1) = 1
1 10:00:01.1 write(3</f>, ""..., 2) = 2
""")
    assert [(k, off, n) for k, _p, _q, off, n in got if k == "write"] == [
        ("write", 0, 4096), ("write", 4096, 10), ("write", 100, 7), ("write", 8192, 9),
        ("write", 65536, 20), ("write", 107, 1), ("write", 108, 2)]


def test_append_writes_have_no_offset_and_readonly_opens_are_not_ops():
    got = ops("""
7 10:00:00.1 openat(AT_FDCWD</>, "/var/log/x.log", O_WRONLY|O_CREAT|O_APPEND, 0644) = 8</var/log/x.log>
7 10:00:00.2 write(8</var/log/x.log>, ""..., 45) = 45
7 10:00:00.3 openat(AT_FDCWD</>, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 4</etc/passwd>
7 10:00:00.4 openat(AT_FDCWD</>, "/etc/shadow", O_RDWR) = 5</etc/shadow>
""")
    assert got == [("open", "/var/log/x.log", "", 0, 0), ("write", "/var/log/x.log", "", -1, 45),
                   ("open", "/etc/shadow", "", 0, 0)]


def test_relative_paths_use_dirfd_annotation_and_the_working_directory():
    got = ops("""
5 10:00:00.1 mkdir("/var", 0777) = -1 EEXIST (File exists)
5 10:00:00.2 chdir("/var") = 0
5 10:00:00.3 mkdir("www", 0777) = 0
5 10:00:00.4 openat(AT_FDCWD</var>, "www", O_RDONLY|O_DIRECTORY) = 4</var/www>
5 10:00:00.5 fchdir(4</var/www>) = 0
5 10:00:00.6 mkdir("html", 0777) = 0
5 10:00:00.7 unlinkat(4</var/www>, "old", 0) = 0
5 10:00:00.8 unlinkat(AT_FDCWD</>, "/var/lib/dpkg/tmp.ci", AT_REMOVEDIR) = 0
5 10:00:00.9 mkdirat(AT_FDCWD</tmp>, "t", 0700) = 0
5 10:00:01.0 renameat2(AT_FDCWD</etc>, "a.new", AT_FDCWD</etc>, "a", RENAME_NOREPLACE) = 0
5 10:00:01.1 renameat(4</var/www>, "x", AT_FDCWD</>, "/y") = 0
""")
    assert got == [("mkdir", "/var/www", "", 0, 0), ("mkdir", "/var/www/html", "", 0, 0),
                   ("unlink", "/var/www/old", "", 0, 0), ("rmdir", "/var/lib/dpkg/tmp.ci", "", 0, 0),
                   ("mkdir", "/tmp/t", "", 0, 0), ("rename", "/etc/a.new", "/etc/a", 0, 0),
                   ("rename", "/var/www/x", "/y", 0, 0)]


def test_metadata_links_truncate_fsync():
    t = strace.parse(r"""
9 10:00:00.1 fchmod(3</usr/bin/x.dpkg-new>, 0755) = 0
9 10:00:00.2 fchown(3</usr/bin/x.dpkg-new>, 0, 0) = 0
9 10:00:00.3 chmod("/etc/f", 0600) = 0
9 10:00:00.4 fchmodat(AT_FDCWD</>, "/var/log/nginx", 0755) = 0
9 10:00:00.5 fchownat(AT_FDCWD</>, "/var/log/nginx", 0, 4, 0) = 0
9 10:00:00.6 lchown("/usr/share/m.dpkg-new", 0, 0) = 0
9 10:00:00.7 symlink("../init.d/nginx", "/etc/rc2.d/S01nginx") = 0
9 10:00:00.8 symlinkat("/lib/x", AT_FDCWD</>, "/etc/y") = 0
9 10:00:00.9 link("/var/lib/dpkg/status", "/var/lib/dpkg/status-old") = 0
9 10:00:01.0 linkat(AT_FDCWD</>, "/a", AT_FDCWD</>, "/b", 0) = 0
9 10:00:01.1 ftruncate(5</var/lib/dpkg/updates/tmp.i>, 143) = 0
9 10:00:01.2 truncate("/t", 7) = 0
9 10:00:01.3 fsync(5</var/lib/dpkg/updates/tmp.i>) = 0
9 10:00:01.4 fdatasync(5</var/lib/dpkg/updates/tmp.i>) = 0
9 10:00:01.5 unlink("/a\"b\\c\303\251") = 0
9 10:00:01.6 utimensat(AT_FDCWD</>, "/u", [UTIME_NOW, {tv_sec=1, tv_nsec=0}], AT_SYMLINK_NOFOLLOW) = 0
""".strip().splitlines())
    rows = [(o.kind, o.path, o.path2, o.mode, o.uid, o.gid, o.size, o.flags) for o in t.ops]
    assert rows == [
        ("chmod", "/usr/bin/x.dpkg-new", "", 0o755, -1, -1, 0, 0),
        ("chown", "/usr/bin/x.dpkg-new", "", -1, 0, 0, 0, 0),
        ("chmod", "/etc/f", "", 0o600, -1, -1, 0, 0),
        ("chmod", "/var/log/nginx", "", 0o755, -1, -1, 0, 0),
        ("chown", "/var/log/nginx", "", -1, 0, 4, 0, 0),
        ("chown", "/usr/share/m.dpkg-new", "", -1, 0, 0, 0, 1),
        ("symlink", "/etc/rc2.d/S01nginx", "../init.d/nginx", -1, -1, -1, 0, 0),
        ("symlink", "/etc/y", "/lib/x", -1, -1, -1, 0, 0),
        ("link", "/var/lib/dpkg/status", "/var/lib/dpkg/status-old", -1, -1, -1, 0, 0),
        ("link", "/a", "/b", -1, -1, -1, 0, 0),
        ("truncate", "/var/lib/dpkg/updates/tmp.i", "", -1, -1, -1, 143, 0),
        ("truncate", "/t", "", -1, -1, -1, 7, 0),
        ("fsync", "/var/lib/dpkg/updates/tmp.i", "", -1, -1, -1, 0, 0),
        ("fsync", "/var/lib/dpkg/updates/tmp.i", "", -1, -1, -1, 0, 0),
        ("unlink", '/a"b\\c\u00e9', "", -1, -1, -1, 0, 0),
        ("utime", "/u", "", -1, -1, -1, 0, 1),
    ]


def test_outside_deleted_failed_and_pipes_are_skipped_and_stats_are_kept():
    t = strace.parse("""
3 10:00:00.1 write(1</outside/dpkg.log>, ""..., 10) = 10
3 10:00:00.2 write(4<pipe:[1234]>, ""..., 10) = 10
3 10:00:00.3 write(5</tmp/gone (deleted)>, ""..., 10) = 10
3 10:00:00.4 unlink("/nope") = -1 ENOENT (No such file or directory)
3 10:00:00.5 write(6</dev/null>, ""..., 3) = 3
3 10:00:00.6 newfstatat(AT_FDCWD</>, "/tmp/debs/a.deb", {st_mode=S_IFREG|0644, st_size=452120, ...}, 0) = 0
3 10:00:00.7 openat(AT_FDCWD</>, "/new", O_WRONLY|O_CREAT, 0644) = 7</new>
3 10:00:00.8 newfstatat(7</new>, "", {st_mode=S_IFREG|0644, st_size=0, ...}, AT_EMPTY_PATH) = 0
3 10:00:00.9 +++ exited with 0 +++
--- SIGCHLD {si_signo=SIGCHLD} ---
""".strip().splitlines())
    assert [(o.kind, o.path) for o in t.ops] == [("open", "/new")]
    assert t.nr_failed == 1 and t.nr_skipped >= 4
    assert t.stats == {"/tmp/debs/a.deb": (0o100644, 452120)}


def test_replay_applies_ops_to_a_view_and_counts_refusals():
    drv = make("overlay2")
    drv.create("c", None, read_write=True)
    v = drv.get("c")
    t = strace.parse("""
1 10:00:00.1 mkdir("/d", 0777) = 0
1 10:00:00.2 openat(AT_FDCWD</>, "/d/f.new", O_WRONLY|O_CREAT|O_EXCL, 0644) = 3</d/f.new>
1 10:00:00.3 write(3</d/f.new>, ""..., 5000) = 5000
1 10:00:00.4 fchmod(3</d/f.new>, 0600) = 0
1 10:00:00.5 rename("/d/f.new", "/d/f") = 0
1 10:00:00.6 symlink("f", "/d/l") = 0
1 10:00:00.7 unlink("/d/missing") = 0
""".strip().splitlines())
    res = strace.replay(t, v)
    assert res["applied"] == 6 and res["errors"] == {"ENOENT": 1} and res["bytes_written"] == 5000
    assert sorted(v.listdir("/d")) == ["f", "l"]
    st = v.stat("/d/f")
    assert st.st_size == 5000 and st.st_mode & 0o7777 == 0o600
    assert v.readlink("/d/l") == "f"
    with pytest.raises(OSError) as e:
        strace.replay(t.ops[-1:], v, strict=True)
    assert e.value.errno == errno.ENOENT


def test_real_dpkg_trace_parses_to_the_expected_operations(fixtures_dir):
    t = strace.read(fixtures_dir / "workloads" / "dpkg-install-nginx.strace.gz")
    assert t.nr_lines == 14797
    kinds = collections.Counter(o.kind for o in t.ops)
    assert kinds == {"write": 367, "open": 201, "fsync": 132, "rename": 131, "chmod": 98, "chown": 95,
                     "utime": 94, "unlink": 40, "truncate": 35, "mkdir": 33, "symlink": 10, "rmdir": 3,
                     "link": 1}
    assert all(o.path.startswith("/") and not o.path.startswith("/outside") for o in t.ops)
    # dpkg writes its status database as status-new and renames it into place
    assert any(o.kind == "rename" and o.path == "/var/lib/dpkg/status-new" and o.path2 == "/var/lib/dpkg/status"
               for o in t.ops)
    # the .deb files copied in before the trace show only as stat results
    debs = {p: s for p, (_m, s) in t.stats.items() if p.startswith("/tmp/debs/")}
    assert sorted(debs.values()) == [115544, 452120, 532468]
    # bytes the trace writes: every write's size, appends included
    assert sum(o.size for o in t.ops if o.kind == "write") == 3520715


def test_line_formats_without_f_or_tt_and_with_pid_brackets():
    t = strace.parse([
        'openat(AT_FDCWD, "/a", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 3</a>',
        '12:00:00.000001 write(3</a>, ""..., 10) = 10',
        '[pid  4242] 12:00:00.000002 mkdir("/b", 0755) = 0',
        '4243 unlink("/c") = 0',
    ])
    assert [(o.kind, o.path, o.pid) for o in t.ops] == [("open", "/a", 0), ("write", "/a", 0),
                                                       ("mkdir", "/b", 4242), ("unlink", "/c", 4243)]

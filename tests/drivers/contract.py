"""The driver contract: one body per behaviour, run on every driver.

As containers/storage's ``drivers/graphtest``: each function takes a
``make`` factory (``make(**options) -> Driver``, in payload mode unless
``payload=False`` is passed) and checks one behaviour.  Expectations that
differ between drivers are read from ``driver.capabilities()``:

* ``max_layers``: chains deeper than this raise TooManyLayersError;
* ``dir_rename_exdev``: renaming a lower directory gives EXDEV;
* ``breaks_lower_hardlinks``: copy-up separates hardlinked lower names;
* ``changes``: "naive" drivers give exactly the reference's A/C/D list;
  "upper" drivers agree by the rules of :func:`changes_disagree`;
* ``changes_by_stat``: "C" from lstat alone (Docker's naive diff); the
  equivalence suite then runs the reference by the same rule.

Where a result is compared with "the reference" it is the
``"reference"`` driver (thinp/drivers/reference.py) doing the same operations.

What the bodies assume of every driver, beyond thinp/drivers/base.py:

* ``get_driver(name, root, payload=...)`` works on an empty directory
  (per-driver test options go in :data:`DRIVER_TEST_OPTIONS`);
* a new base layer is empty (no ``lost+found``: mount the fs's ``rootfs``
  subdirectory, as Docker's devicemapper does);
* a view of a layer created without ``read_write`` raises EROFS on writes;
* ``apply_diff`` returns the layer's content bytes (``Layer.size``) and
  writes file bytes even in accounting mode, in chunks that are multiples of
  4 KiB, so version stamps are the blocks' hashes, as the reference's;
  copy-up/CoW keeps stamps, so ``content()`` stays comparable;
* ``changes`` is sorted by path and never lists "/"; ``diff_size`` equals
  ``diff().size``; xattrs travel in diffs; failed ``create`` calls do not
  count in ``create_ops``; ``mount_ops`` counts only real mounts;
* paths resolve like ``thinp.fs``: symlinked parents are followed, absolute
  targets stay inside the layer, ELOOP after 40 links; errnos as ``thinp.fs``.
"""
from __future__ import annotations

import errno
import stat as _stat

import pytest

from thinp.drivers import METRIC_KEYS, Change, get_driver, known_drivers
from thinp.errors import DeviceExistsError, DeviceNotFoundError, TooManyLayersError
from thinp.image import Entry, Layer

#: extra options per driver for the test suites (e.g. a smaller pool), so
#: tests stay fast without changing a driver's Docker defaults
DRIVER_TEST_OPTIONS: dict[str, dict] = {}

DEFAULT_DEPTH = 130   # deep-chain length for drivers without a limit (past overlay2's 128)


def driver_names() -> list[str]:
    """Every registered driver plus the (hidden) reference oracle."""
    return sorted(set(known_drivers()) | {"reference"})


# ------------------------------------------------------------------ layers
def F(path, data=b"", mode=0o644, uid=0, gid=0, xattrs=None):
    return Entry(path, "file", mode, uid, gid, 1_600_000_000, len(data), xattrs=xattrs or {}), data


def D(path, mode=0o755, uid=0, gid=0):
    return Entry(path, "dir", mode, uid, gid, 1_600_000_000), None


def S(path, target):
    return Entry(path, "symlink", 0o777, mtime=1_600_000_000, linkname=target), None


def H(path, target):
    return Entry(path, "hardlink", 0o644, mtime=1_600_000_000, linkname=target), None


def W(path):
    return Entry(path, "whiteout"), None


def O(path):  # noqa: E743 - the opaque marker
    return Entry(path, "opaque"), None


def CH(path, major, minor, mode=0o666):
    return Entry(path, "char", mode, mtime=1_600_000_000, devmajor=major, devminor=minor), None


def FIFO(path, mode=0o644):
    return Entry(path, "fifo", mode, mtime=1_600_000_000), None


def layer(*items) -> Layer:
    return Layer.from_entries(list(items))


MOTD = b"hello from the base layer\n" * 200            # 5,200 bytes: two 4 KiB blocks
TOOL = b"\x7fELF" + bytes(range(256)) * 40               # 10,244 bytes
BIG = bytes((i * 7) & 0xFF for i in range(300_000))     # 300 KB: several 128 KiB records

BASE = [
    D("etc"), F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), F("etc/motd", MOTD),
    D("usr"), D("usr/bin"), F("usr/bin/tool", TOOL, mode=0o755), H("usr/bin/tool2", "usr/bin/tool"),
    S("usr/bin/sh", "tool"), D("var"), D("var/lib"), D("var/lib/d"),
    F("var/lib/d/a", b"a" * 100), F("var/lib/d/b", b"b" * 200),
    D("data"), F("data/big", BIG), D("dev"), CH("dev/null", 1, 3), FIFO("var/fifo"),
    D("home", 0o750, 1000, 1000), F("home/owned", b"mine", 0o600, 1000, 1000),
]
#: a second image layer: changes a file, adds one, whites out a file and makes a dir opaque
UPPER = [
    D("etc"), F("etc/motd", b"new motd\n"), F("etc/added", b"added in L1"),
    D("var"), D("var/lib"), D("var/lib/d"), W("var/lib/d/a"),
    D("data"), O("data"), F("data/only", b"only child"),
]


def base_size() -> int:
    return sum(e.size for e, _ in BASE if e.kind == "file")


def load_base(d, top="L0", parent=None, items=BASE):
    d.create(top, parent)
    return d.apply_diff(top, parent, layer(*items))


def load_two(d):
    load_base(d)
    load_base(d, "L1", "L0", UPPER)


# ------------------------------------------------------------------ views
def kind_of(mode: int) -> str:
    return {_stat.S_IFREG: "file", _stat.S_IFDIR: "dir", _stat.S_IFLNK: "symlink",
            _stat.S_IFCHR: "char", _stat.S_IFBLK: "block", _stat.S_IFIFO: "fifo"}.get(
        _stat.S_IFMT(mode), "other")


def snapshot(view, payload: bool = True) -> dict:
    """path -> (kind, perms, uid, gid, size or None for dirs, content, rdev);
    plus ``"#links"``: the sets of paths sharing an inode."""
    out = {}
    groups: dict[int, list[str]] = {}
    for top, dirs, files in view.walk("/"):
        for name in dirs + files:
            p = top.rstrip("/") + "/" + name
            st = view.lstat(p)
            k = kind_of(st.st_mode)
            if k == "file":
                content = view.read(p) if payload else view.content(p)
                if st.st_nlink > 1:
                    groups.setdefault(st.st_ino, []).append(p)
            elif k == "symlink":
                content = view.readlink(p)
            else:
                content = None
            rdev = st.st_rdev if k in ("char", "block") else 0
            out[p] = (k, _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      None if k == "dir" else st.st_size, content, rdev)
    out["#links"] = sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)
    return out


def read(view, path):
    data = view.read(path)
    return bytes(data)


def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: errno {info.value.errno}, want {code}"


def make_driver(name: str, root, payload: bool = True, **options):
    """``get_driver`` with the suite's per-driver options."""
    return get_driver(name, root, payload=payload, **{**DRIVER_TEST_OPTIONS.get(name, {}), **options})


def reference(payload=True, **opts):
    return get_driver("reference", None, payload=payload, **opts)


def same_on_reference(d, script, payload=True):
    """Run ``script(driver)`` on ``d`` and on a fresh reference; return both results."""
    ref = reference(payload)
    return script(d), script(ref)


def changes_disagree(got, want, caps, view) -> list[str]:
    """How a driver's ``changes()`` rows ``got`` disagree with the reference's
    ``want`` (empty when they agree).  "naive" drivers must match exactly.
    "upper" drivers (a walk of the layer's own directory) must have

    * exactly the reference's "A" rows;
    * every reference "D" row, or a "D" row of an ancestor (an opaque
      directory is reported "D" and hides the whiteouts below it);
    * no other "D" rows, except for directories the view has (opaque ones);
    * every reference "C" row of a non-directory (extra "C" rows are copied-up
      paths, which an upper walk cannot tell from changed ones);
    and directory "C" rows are free (the walk adds only immediate parents)."""
    if caps.changes == "naive":
        return [] if list(got) == list(want) else [f"rows {list(got)} != reference {list(want)}"]
    problems = []
    got_s, want_s = set(got), set(want)
    adds_g = {c.path for c in got_s if c.kind == "A"}
    adds_w = {c.path for c in want_s if c.kind == "A"}
    if adds_g != adds_w:
        problems.append(f"A rows: extra {sorted(adds_g - adds_w)}, missing {sorted(adds_w - adds_g)}")
    dels_g = {c.path for c in got_s if c.kind == "D"}
    for c in want_s:
        if c.kind == "D":
            parts = c.path.split("/")
            if not any("/".join(parts[:i]) in dels_g for i in range(2, len(parts) + 1)):
                problems.append(f"missing D {c.path}")
    dels_w = {c.path for c in want_s if c.kind == "D"}
    for p in dels_g - dels_w:
        try:
            isdir = _stat.S_ISDIR(view.lstat(p).st_mode)
        except OSError:
            isdir = False
        if not isdir:
            problems.append(f"extra D {p}")
    for c in want_s:
        if c.kind == "C" and c not in got_s:
            try:
                isdir = _stat.S_ISDIR(view.lstat(c.path).st_mode)
            except OSError:
                isdir = False
            if not isdir:
                problems.append(f"missing C {c.path}")
    return problems


# ================================================================== bodies
def run_body(body: str, make) -> list:
    """Run contract body ``body`` with ``make``, then hold every driver it
    made to the invariants any behaviour must leave: the full set of metric
    keys, each a non-negative integer.  Returns the drivers made."""
    made = []

    def recording(*a, **kw):
        d = make(*a, **kw)
        made.append(d)
        return d

    globals()[body](recording)
    assert made, f"contract body {body} made no driver"
    for d in made:
        s = d.stats()
        assert set(s) == set(METRIC_KEYS), (body, sorted(set(s) ^ set(METRIC_KEYS)))
        assert all(int(v) == v and v >= 0 for v in s.values()), (body, s)
    return made


def stats_keys(make):
    d = make()
    s = d.stats()
    assert set(s) == set(METRIC_KEYS), sorted(set(s) ^ set(METRIC_KEYS))
    assert all(int(v) == v and v >= 0 for v in s.values()), s
    load_base(d)
    s = d.stats()
    assert set(s) == set(METRIC_KEYS)
    assert s["create_ops"] >= 1 and s["bytes_written"] >= base_size()


def create_remove(make):
    d = make()
    ops0 = d.stats()["create_ops"]
    assert not d.exists("L0")
    d.create("L0", None)
    assert d.exists("L0") and "L0" in d.list_layers() and d.parent("L0") is None
    with pytest.raises(DeviceExistsError):
        d.create("L0", None)
    with pytest.raises(DeviceNotFoundError):
        d.create("orphan", "no-such-parent")
    assert not d.exists("orphan")
    d.create("L1", "L0")
    assert d.parent("L1") == "L0"
    assert d.stats()["create_ops"] - ops0 == 2
    expect_errno(errno.EBUSY, d.remove, "L0")          # has a child
    v = d.get("L0")
    assert v.listdir("/") == []                          # a new base layer is empty
    d.put("L0")
    d.remove("L1")
    d.remove("L0")
    assert not d.exists("L0") and "L0" not in d.list_layers()
    with pytest.raises(DeviceNotFoundError):
        d.remove("L0")
    with pytest.raises(DeviceNotFoundError):
        d.get("L0")


def apply_diff_view(make):
    d = make()
    n = load_base(d)
    assert n == base_size()
    v = d.get("L0")
    assert v.listdir("/") == ["data", "dev", "etc", "home", "usr", "var"]
    assert read(v, "/etc/motd") == MOTD and read(v, "/usr/bin/tool") == TOOL
    assert read(v, "/data/big") == BIG
    assert bytes(v.read("/etc/motd", 4096, 10)) == MOTD[4096:4106]
    st = v.stat("/usr/bin/tool")
    assert _stat.S_IMODE(st.st_mode) == 0o755 and st.st_size == len(TOOL) and st.st_nlink == 2
    assert v.stat("/usr/bin/tool2").st_ino == st.st_ino
    assert v.readlink("/usr/bin/sh") == "tool"
    assert _stat.S_ISLNK(v.lstat("/usr/bin/sh").st_mode)
    assert v.stat("/usr/bin/sh").st_ino == st.st_ino
    h = v.stat("/home/owned")
    assert (h.st_uid, h.st_gid, _stat.S_IMODE(h.st_mode)) == (1000, 1000, 0o600)
    assert _stat.S_IMODE(v.stat("/home").st_mode) == 0o750
    null = v.lstat("/dev/null")
    assert _stat.S_ISCHR(null.st_mode) and null.st_rdev == __import__("os").makedev(1, 3)
    assert _stat.S_ISFIFO(v.lstat("/var/fifo").st_mode)
    ref = reference()
    load_base(ref)
    assert snapshot(v) == snapshot(ref.get("L0"))
    # an image layer is read-only
    expect_errno(errno.EROFS, v.create, "/new")
    expect_errno(errno.EROFS, v.write, "/etc/motd", 0, b"x")
    d.put("L0")


def snapshot_chain(make):
    d = make()
    load_two(d)
    d.create("c1", "L1", read_write=True)
    d.create("c2", "L1", read_write=True)
    l0, l1, c1, c2 = d.get("L0"), d.get("L1"), d.get("c1"), d.get("c2")
    assert read(l0, "/etc/motd") == MOTD and l0.exists("/var/lib/d/a")
    assert sorted(l0.listdir("/data")) == ["big"]
    assert read(l1, "/etc/motd") == b"new motd\n" and read(l1, "/etc/added") == b"added in L1"
    assert not l1.exists("/var/lib/d/a") and l1.listdir("/var/lib/d") == ["b"]
    assert l1.listdir("/data") == ["only"]                  # opaque: the lower child is hidden
    c1.write("/etc/passwd", 0, b"ROOT")
    c1.write("/c1-only", 0, b"one")
    c1.unlink("/var/lib/d/b")
    assert read(c1, "/etc/passwd").startswith(b"ROOT:x") and c1.exists("/c1-only")
    assert read(c2, "/etc/passwd").startswith(b"root:x") and not c2.exists("/c1-only")
    assert c2.exists("/var/lib/d/b") and l1.exists("/var/lib/d/b") and l0.exists("/var/lib/d/b")
    assert read(l1, "/etc/passwd").startswith(b"root:x")
    ref = reference()
    load_two(ref)
    ref.create("c1", "L1", read_write=True)
    r = ref.get("c1")
    r.write("/etc/passwd", 0, b"ROOT")
    r.write("/c1-only", 0, b"one")
    r.unlink("/var/lib/d/b")
    assert snapshot(c1) == snapshot(r)
    assert snapshot(l1) == snapshot(ref.get("L1"))
    for i in ("L0", "L1", "c1", "c2"):
        d.put(i)


def _workload(v):
    v.write("/etc/new", 0, b"fresh file")
    v.write("/etc/passwd", 5, b"XX")                         # in place, same size
    v.write("/etc/motd", len(MOTD), b"appended")            # append to a 2-block file
    v.truncate("/data/big", 5000)
    v.unlink("/var/lib/d/a")
    v.mkdir("/opt")
    v.mkdir("/opt/x", 0o700)
    v.symlink("../etc/passwd", "/opt/pw")
    v.link("/etc/new", "/opt/x/new-link")
    v.chmod("/home/owned", 0o640)
    v.chown("/etc/passwd", 5, 6)
    v.setxattr("/etc/new", "user.note", b"v1")
    v.rename("/var/lib/d/b", "/var/lib/d/b2")
    v.create("/var/lib/empty", 0o600)
    v.mknod("/opt/fifo", _stat.S_IFIFO | 0o600)
    v.write("/opt/x/big", 0, BIG[:150_000])


def diff_roundtrip(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    _workload(v)
    want = snapshot(v)
    t = d.diff("c", "L0")
    names = {e.path for e in t.entries()}
    assert "etc/new" in names and "var/lib/d/a" in names and "usr/bin/tool" not in names
    assert {e.path for e in t.entries() if e.kind == "whiteout"} >= {"var/lib/d/a", "var/lib/d/b"}
    assert d.diff_size("c", "L0") == t.size
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert snapshot(n) == want
    assert n.getxattr("/etc/new", "user.note") == b"v1"
    assert not changes_disagree(d.changes("N", "L0"), d.changes("c", "L0"), d.capabilities(), v)
    # the same workload on the reference gives the same view, and the diff
    # of the driver applies on the reference to the same tree
    ref = reference()
    load_base(ref)
    ref.create("c", "L0", read_write=True)
    _workload(ref.get("c"))
    assert snapshot(ref.get("c")) == want
    ref.create("N", "L0")
    ref.apply_diff("N", "L0", t)
    assert snapshot(ref.get("N")) == want
    d.put("c")
    d.put("N")


def changes_docker_semantics(make):
    def script(drv):
        load_base(drv)
        drv.create("c", "L0", read_write=True)
        v = drv.get("c")
        v.write("/etc/new", 0, b"n")
        v.write("/etc/passwd", 0, b"R")
        v.chmod("/etc/motd", 0o600)
        v.unlink("/var/lib/d/a")
        v.mkdir("/opt")
        v.mkdir("/opt/x")
        v.mkdir("/opt/x/y")
        out = drv.changes("c", "L0")
        drv.put("c")
        return out

    d = make()
    got, ref = same_on_reference(d, script)
    assert ref == sorted([
        Change("/etc", "C"), Change("/etc/motd", "C"), Change("/etc/new", "A"),
        Change("/etc/passwd", "C"), Change("/opt", "A"), Change("/opt/x", "A"),
        Change("/opt/x/y", "A"), Change("/var", "C"), Change("/var/lib", "C"),
        Change("/var/lib/d", "C"), Change("/var/lib/d/a", "D")])
    assert got == sorted(got), "changes() must be sorted by path"
    view = d.get("c")
    assert not changes_disagree(got, ref, d.capabilities(), view)
    d.put("c")
    files = {"/etc/motd", "/etc/passwd"}
    assert {c.path for c in got if c.kind == "C" and c.path in files} == files
    assert str(Change("/etc", "C")) == "C /etc"
    # a whole base layer is all "A"
    d2 = make()
    load_base(d2)
    rows = d2.changes("L0", None)
    assert {c.kind for c in rows} == {"A"} and Change("/usr/bin/tool", "A") in rows


def whiteouts(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.unlink("/etc/motd")
    assert not v.exists("/etc/motd") and "motd" not in v.listdir("/etc")
    expect_errno(errno.ENOENT, v.stat, "/etc/motd")
    for name in v.listdir("/var/lib/d"):
        v.unlink("/var/lib/d/" + name)
    v.rmdir("/var/lib/d")
    assert v.listdir("/var/lib") == []
    rows = d.changes("c", "L0")
    assert Change("/etc/motd", "D") in rows and Change("/var/lib/d", "D") in rows
    t = d.diff("c", "L0")
    wh = {e.path for e in t.entries() if e.kind == "whiteout"}
    assert "etc/motd" in wh and "var/lib/d" in wh
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert not n.exists("/etc/motd") and not n.exists("/var/lib/d") and n.exists("/etc/passwd")
    # re-creating a deleted lower file: a plain file again, reported "C"
    v.write("/etc/motd", 0, b"again")
    assert read(v, "/etc/motd") == b"again"
    assert Change("/etc/motd", "C") in d.changes("c", "L0")
    # applying a layer that whites out a whole directory
    d.create("W", "L0")
    # (st_nlink of the other name is not checked: overlayfs reports the lower inode's)
    d.apply_diff("W", "L0", layer(D("var"), W("var/lib"), W("usr/bin/tool2")))
    w = d.get("W")
    assert w.listdir("/var") == ["fifo"] and not w.exists("/usr/bin/tool2")
    assert read(w, "/usr/bin/tool") == TOOL
    for i in ("c", "N", "W"):
        d.put(i)


def apply_mtimes_and_same_layer_whiteouts(make):
    """One layer-apply routine for every driver: each entry keeps the tar's
    mtime (directories too, though entries were made inside them after), and
    whiteouts and opaque markers act on lower layers only, never on what the
    same layer unpacked (the OCI image spec's rule)."""
    d = make()
    t0, t1, t2 = 1_500_000_000, 1_500_000_100, 1_500_000_200
    d.create("L0", None)
    d.apply_diff("L0", None, layer(
        (Entry("srv", "dir", 0o755, mtime=t0), None),
        (Entry("srv/old", "file", 0o644, mtime=t1, size=3), b"old"),
        (Entry("srv/keep", "dir", 0o755, mtime=t1), None),
        (Entry("srv/keep/lower", "file", 0o644, mtime=t1, size=1), b"l"),
        (Entry("srv/link", "symlink", 0o777, mtime=t1, linkname="old"), None)))
    v = d.get("L0")
    assert v.lstat("/srv").st_mtime == t0               # set after its children were made
    assert v.lstat("/srv/old").st_mtime == t1 and v.lstat("/srv/keep").st_mtime == t1
    d.put("L0")
    d.create("L1", "L0")
    d.apply_diff("L1", "L0", layer(
        (Entry("srv", "dir", 0o755, mtime=t2), None),
        (Entry("srv/new", "file", 0o600, mtime=t2, size=3), b"new"),
        W("srv/new"),                                   # the same layer's file: stays
        W("srv/old"),                                   # the lower's: goes
        (Entry("srv/keep", "dir", 0o755, mtime=t2), None),
        (Entry("srv/keep/mine", "file", 0o644, mtime=t2, size=1), b"m"),
        O("srv/keep")))                                 # empties the lower's, keeps "mine"
    v = d.get("L1")
    assert sorted(v.listdir("/srv")) == ["keep", "link", "new"]
    assert v.listdir("/srv/keep") == ["mine"]
    assert read(v, "/srv/new") == b"new" and v.lstat("/srv/new").st_mtime == t2
    assert _stat.S_IMODE(v.lstat("/srv/new").st_mode) == 0o600
    assert v.lstat("/srv").st_mtime == t2
    d.put("L1")


def opaque_dirs(make):
    d = make()
    load_base(d)
    d.create("L1", "L0")
    d.apply_diff("L1", "L0", layer(D("var"), D("var/lib"), O("var/lib/d"), F("var/lib/d/new", b"n")))
    v = d.get("L1")
    assert v.listdir("/var/lib/d") == ["new"]
    d.put("L1")
    # in a container: empty a lower dir, remove it and make it again
    d.create("c", "L0", read_write=True)
    c = d.get("c")
    for name in c.listdir("/var/lib/d"):
        c.unlink("/var/lib/d/" + name)
    c.rmdir("/var/lib/d")
    c.mkdir("/var/lib/d", 0o700)
    c.write("/var/lib/d/c", 0, b"ccc")
    assert c.listdir("/var/lib/d") == ["c"]
    assert _stat.S_IMODE(c.stat("/var/lib/d").st_mode) == 0o700
    rows = d.changes("c", "L0")
    assert Change("/var/lib/d/c", "A") in rows
    if d.capabilities().changes == "naive":
        assert {Change("/var/lib/d/a", "D"), Change("/var/lib/d/b", "D")} <= set(rows)
    t = d.diff("c", "L0")
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert n.listdir("/var/lib/d") == ["c"] and read(n, "/var/lib/d/c") == b"ccc"
    d.put("c")
    d.put("N")


def hardlinks(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.link("/etc/passwd", "/etc/passwd2")
    a, b = v.stat("/etc/passwd"), v.stat("/etc/passwd2")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    v.write("/etc/passwd2", 0, b"ROOT")
    assert read(v, "/etc/passwd").startswith(b"ROOT")
    expect_errno(errno.EEXIST, v.link, "/etc/passwd", "/etc/motd")
    expect_errno(errno.EPERM, v.link, "/etc", "/etc2")
    # a write through one name of a hardlinked lower file
    v.write("/usr/bin/tool", 0, b"PATCHED")
    if d.capabilities().breaks_lower_hardlinks:
        assert read(v, "/usr/bin/tool2") == TOOL
    else:
        assert read(v, "/usr/bin/tool2").startswith(b"PATCHED")
        assert v.stat("/usr/bin/tool2").st_ino == v.stat("/usr/bin/tool").st_ino
    # unlinking one name keeps the other
    v.unlink("/etc/passwd")
    assert read(v, "/etc/passwd2").startswith(b"ROOT") and v.stat("/etc/passwd2").st_nlink == 1
    v.link("/etc/passwd2", "/etc/passwd3")
    t = d.diff("c", "L0")
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert n.stat("/etc/passwd2").st_ino == n.stat("/etc/passwd3").st_ino
    assert read(n, "/etc/passwd3").startswith(b"ROOT")
    d.put("c")
    d.put("N")


def symlinks(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    assert read(v, "/usr/bin/sh") == TOOL
    v.symlink("/etc/passwd", "/abs")
    assert v.readlink("/abs") == "/etc/passwd"
    assert read(v, "/abs") == read(v, "/etc/passwd")      # absolute targets stay in the layer
    v.symlink("nowhere", "/dangling")
    assert v.exists("/dangling")
    expect_errno(errno.ENOENT, v.stat, "/dangling")
    assert _stat.S_ISLNK(v.lstat("/dangling").st_mode)
    v.write("/usr/bin/sh", 0, b"#!")                       # writes the target
    assert read(v, "/usr/bin/tool").startswith(b"#!") and v.readlink("/usr/bin/sh") == "tool"
    v.symlink("lib/d", "/var/dlink")
    assert sorted(v.listdir("/var/dlink")) == ["a", "b"]   # a symlinked parent is followed
    v.write("/var/dlink/c", 0, b"via link")
    assert read(v, "/var/lib/d/c") == b"via link"
    v.symlink("/loop2", "/loop1")
    v.symlink("/loop1", "/loop2")
    expect_errno(errno.ELOOP, v.stat, "/loop1")
    rows = d.changes("c", "L0")
    assert Change("/usr/bin/tool", "C") in rows and Change("/usr/bin/sh", "C") not in rows
    assert Change("/abs", "A") in rows and Change("/var/lib/d/c", "A") in rows
    t = d.diff("c", "L0")
    kinds = {e.path: (e.kind, e.linkname) for e in t.entries()}
    assert kinds["abs"] == ("symlink", "/etc/passwd") and kinds["dangling"] == ("symlink", "nowhere")
    d.put("c")


def rename(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.rename("/etc/motd", "/etc/motd2")
    assert not v.exists("/etc/motd") and read(v, "/etc/motd2") == MOTD
    v.rename("/etc/motd2", "/etc/passwd")                   # over an existing file
    assert read(v, "/etc/passwd") == MOTD and not v.exists("/etc/motd2")
    rows = d.changes("c", "L0")
    assert Change("/etc/motd", "D") in rows and Change("/etc/passwd", "C") in rows
    # a directory made in the container renames everywhere, children and all
    v.mkdir("/new")
    v.mkdir("/new/sub")
    v.write("/new/sub/f", 0, b"f")
    v.rename("/new", "/moved")
    assert not v.exists("/new") and read(v, "/moved/sub/f") == b"f"
    expect_errno(errno.EINVAL, v.rename, "/moved", "/moved/sub/inside")
    expect_errno(errno.ENOENT, v.rename, "/nope", "/x")
    expect_errno(errno.EISDIR, v.rename, "/etc/passwd", "/moved")
    expect_errno(errno.ENOTDIR, v.rename, "/moved", "/etc/passwd")
    v.mkdir("/full")
    v.create("/full/x")
    expect_errno(errno.ENOTEMPTY, v.rename, "/moved", "/full")
    # a directory of the image: EXDEV where the driver says so, else a move
    if d.capabilities().dir_rename_exdev:
        expect_errno(errno.EXDEV, v.rename, "/var/lib/d", "/var/lib/e")
        assert sorted(v.listdir("/var/lib/d")) == ["a", "b"] and not v.exists("/var/lib/e")
    else:
        v.rename("/var/lib/d", "/var/lib/e")
        assert sorted(v.listdir("/var/lib/e")) == ["a", "b"] and not v.exists("/var/lib/d")
        assert read(v, "/var/lib/e/a") == b"a" * 100
    t = d.diff("c", "L0")
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    assert snapshot(d.get("N")) == snapshot(v)
    d.put("c")
    d.put("N")


def deep_chain(make):
    d = make()
    limit = d.capabilities().max_layers
    depth = limit if limit is not None else DEFAULT_DEPTH
    parent = None
    for i in range(depth):
        lid = f"deep{i}"
        d.create(lid, parent)
        items = [F(f"f{i}", f"layer {i}".encode())]
        if i == depth // 2:
            items.append(W("f0"))
        d.apply_diff(lid, parent, layer(*items))
        parent = lid
    v = d.get(parent)
    names = v.listdir("/")
    assert len(names) == depth - 1 and "f0" not in names
    assert read(v, f"/f{depth - 1}") == f"layer {depth - 1}".encode()
    assert read(v, "/f1") == b"layer 1"
    d.put(parent)
    if limit is not None:
        with pytest.raises(TooManyLayersError):
            d.create("too-deep", parent)
        assert not d.exists("too-deep")
        # the limit counts the chain, not the number of layers
        d.create("sibling", f"deep{depth - 2}")
        assert d.exists("sibling")


def layer_bookkeeping(make):
    """The layer table every driver composes: ids, listing order, put, messages."""
    d = make()
    for bad in ("", "a/b", None, 7):
        with pytest.raises(ValueError, match="layer id"):
            d.create(bad, None)
    with pytest.raises(ValueError, match="option"):
        d.create("x", None, no_such_option=1)
    assert not d.exists("x") and d.list_layers() == []
    for lid in ("m", "b", "z", "a"):
        d.create(lid, None)
    assert d.list_layers() == ["a", "b", "m", "z"]          # sorted by id, whatever the order made
    with pytest.raises(DeviceExistsError, match=rf"^{d.name}: layer 'a' already exists$"):
        d.create("a", None)
    for call in (d.get, d.put, d.remove, d.parent):
        with pytest.raises(DeviceNotFoundError, match=rf"^{d.name}: no such layer 'nope'$"):
            call("nope")
    with pytest.raises(OSError, match=rf"{d.name}: layer 'a' is not mounted") as info:
        d.put("a")
    assert info.value.errno == errno.EINVAL
    v = d.get("a")
    assert d.get("a") is v
    d.put("a")
    with pytest.raises(OSError, match=rf"{d.name}: layer 'a' is mounted \(1 users\)") as info:
        d.remove("a")
    assert info.value.errno == errno.EBUSY
    d.put("a")                                             # the last user: the view goes
    with pytest.raises(OSError) as info:
        d.put("a")
    assert info.value.errno == errno.EINVAL
    assert d.get("a") is not v                            # a new mount, a new view
    d.put("a")
    d.create("child", "a")
    with pytest.raises(OSError, match=rf"{d.name}: layer 'a' has 1 child layer\(s\)"):
        d.remove("a")
    d.remove("child")
    d.remove("a")
    assert d.list_layers() == ["b", "m", "z"]


def remove_in_use(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    expect_errno(errno.EBUSY, d.remove, "c")
    expect_errno(errno.EBUSY, d.remove, "L0")
    v.write("/f", 0, b"x")
    d.put("c")
    expect_errno(errno.EBUSY, d.remove, "L0")
    d.remove("c")
    d.remove("L0")
    assert d.list_layers() == []


def get_put_refcount(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    m0 = d.stats()["mount_ops"]
    v1 = d.get("c")
    v2 = d.get("c")
    assert v1 is v2
    assert d.stats()["mount_ops"] - m0 == 1
    d.put("c")
    assert v1.listdir("/etc")                               # still mounted by one user
    expect_errno(errno.EBUSY, d.remove, "c")
    d.put("c")
    d.remove("c")
    d.create("c2", "L0", read_write=True)
    d.get("c2")
    d.put("c2")
    d.get("c2")
    assert d.stats()["mount_ops"] - m0 == 3
    d.put("c2")


def errnos(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    expect_errno(errno.EEXIST, v.create, "/etc/passwd")
    expect_errno(errno.EEXIST, v.mkdir, "/etc")
    expect_errno(errno.EEXIST, v.symlink, "x", "/etc/motd")
    expect_errno(errno.ENOTEMPTY, v.rmdir, "/etc")
    expect_errno(errno.EISDIR, v.unlink, "/etc")
    expect_errno(errno.ENOTDIR, v.rmdir, "/etc/passwd")
    expect_errno(errno.ENOENT, v.stat, "/missing")
    expect_errno(errno.ENOENT, v.unlink, "/missing")
    expect_errno(errno.ENOENT, v.rmdir, "/missing")
    expect_errno(errno.ENOENT, v.read, "/missing")
    expect_errno(errno.ENOENT, v.create, "/missing/f")
    expect_errno(errno.ENOTDIR, v.create, "/etc/passwd/f")
    expect_errno(errno.EISDIR, v.write, "/etc", 0, b"x")
    expect_errno(errno.EISDIR, v.truncate, "/etc", 0)
    expect_errno(errno.EINVAL, v.readlink, "/etc/passwd")
    expect_errno(errno.ENODATA, v.getxattr, "/etc/passwd", "user.none")
    expect_errno(errno.ENOTDIR, v.listdir, "/etc/passwd")
    assert v.exists("/etc/passwd") and not v.exists("/missing")
    # nothing above changed the layer
    assert d.changes("c", "L0") == []
    d.put("c")


def metadata_ops(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.chmod("/etc/motd", 0o600)
    v.chown("/etc/passwd", 7, 8)
    v.setxattr("/etc/motd", "user.x", b"y")
    v.chmod("/var/lib/d", 0o700)
    st = v.stat("/etc/motd")
    assert _stat.S_IMODE(st.st_mode) == 0o600 and read(v, "/etc/motd") == MOTD
    assert (v.stat("/etc/passwd").st_uid, v.stat("/etc/passwd").st_gid) == (7, 8)
    assert v.getxattr("/etc/motd", "user.x") == b"y"
    rows = set(d.changes("c", "L0"))
    assert {Change("/etc/motd", "C"), Change("/etc/passwd", "C")} <= rows
    t = d.diff("c", "L0")
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert _stat.S_IMODE(n.stat("/etc/motd").st_mode) == 0o600 and read(n, "/etc/motd") == MOTD
    assert n.getxattr("/etc/motd", "user.x") == b"y"
    assert _stat.S_IMODE(n.stat("/var/lib/d").st_mode) == 0o700
    assert n.stat("/etc/passwd").st_uid == 7
    d.put("c")
    d.put("N")


def usage_and_counters(make):
    d = make()
    load_base(d)
    d.create("c", "L0", read_write=True)
    w0 = d.stats()["bytes_written"]
    v = d.get("c")
    v.write("/blob", 0, bytes(range(256)) * 4096)           # 1 MiB
    u = d.usage("c")
    assert u.size >= 1 << 20 and u.inodes >= 1
    assert d.stats()["bytes_written"] - w0 >= 1 << 20
    lu = d.usage("L0")
    assert lu.size >= 0 and lu.inodes >= 0
    assert d.stats()["inodes"] > 0
    d.put("c")


def stat_only_changes(make):
    """A rename over an equal-sized file with the same mtime: a content
    change lstat cannot see.  ``changes_by_stat`` drivers (Docker's naive
    diff) report only the "D", and their commit keeps the old content;
    the others report the "C" and carry the new bytes."""
    d = make()
    d.create("L0", None)
    d.apply_diff("L0", None, layer(F("x", b"1" * 10), F("y", b"2" * 10)))
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.rename("/y", "/x")
    assert read(v, "/x") == b"2" * 10
    rows = d.changes("c", "L0")
    t = d.diff("c", "L0")
    d.create("N", "L0")
    d.apply_diff("N", "L0", t)
    n = d.get("N")
    assert not n.exists("/y")
    if d.capabilities().changes_by_stat:
        assert rows == [Change("/y", "D")]
        assert read(n, "/x") == b"1" * 10
    else:
        assert Change("/x", "C") in rows and Change("/y", "D") in rows
        assert read(n, "/x") == b"2" * 10
    d.put("c")
    d.put("N")


def accounting_content(make):
    """Without payload, content() still compares equal with the reference."""
    d = make(payload=False)
    assert not d.payload
    load_base(d)
    d.create("c", "L0", read_write=True)
    v = d.get("c")
    v.write("/etc/motd", 100, b"changed in place")
    v.write("/new", 0, b"z" * 10_000)
    assert v.write("/sized", 0, 8192) == 8192 and v.stat("/sized").st_size == 8192
    v.truncate("/data/big", 70_000)
    ref = reference(payload=False)
    load_base(ref)
    ref.create("c", "L0", read_write=True)
    r = ref.get("c")
    r.write("/etc/motd", 100, b"changed in place")
    r.write("/new", 0, b"z" * 10_000)
    r.truncate("/data/big", 70_000)
    for p in ("/etc/motd", "/new", "/data/big", "/usr/bin/tool", "/etc/passwd"):
        assert v.content(p) == r.content(p), p
    assert v.content("/etc/motd") != ref.get("L0").content("/etc/motd")
    assert v.content("/sized")[0] == 8192
    d.put("c")


#: how many copies N containers reading one image file keep in page cache,
#: by ``Capabilities.shares_page_cache``: one where the cache is keyed by
#: something the containers share, N where each has its own
SHARED_PAGE_CACHE = {"inode": True, "block": True, "device": False, "none": False}


def page_cache_sharing(make, n=4):
    """N containers reading the same image file: one copy in the page cache
    for drivers that share it (union lower inode, zfs ARC records), N copies
    for those that don't (a device or subvolume per container, vfs's full
    copies).  Reading it again costs nothing more; a container's rewrite
    gives it its own copy on every driver."""
    d = make(payload=False)
    size = 256 * 1024                                   # two zfs records, 64 pages
    d.create("L0", None)
    d.apply_diff("L0", None, layer(D("usr"), F("usr/lib.so", bytes(range(256)) * (size // 256))))
    assert d.stats()["page_cache_bytes"] == 0
    views = []
    for i in range(n):
        d.create(f"c{i}", "L0", read_write=True)
        views.append(d.get(f"c{i}"))
    for v in views:
        v.read("/usr/lib.so")
    shared = SHARED_PAGE_CACHE[d.capabilities().shares_page_cache]
    want = size if shared else n * size
    assert d.stats()["page_cache_bytes"] == want
    for v in views:                                     # warm: no new pages
        v.read("/usr/lib.so", 4096, 8192)
    assert d.stats()["page_cache_bytes"] == want
    views[0].write("/usr/lib.so", 0, b"\1" * size)      # whole rewrite
    views[0].read("/usr/lib.so")
    # shared: c0 now reads its own copy besides the shared one; not shared:
    # c0's copy was already its own, and the rewrite reuses its pages
    assert d.stats()["page_cache_bytes"] == (want + size if shared else want)
    for i in range(n):
        d.put(f"c{i}")

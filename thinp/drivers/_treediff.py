"""Docker's naive diff over two mounted trees, and applying a layer tar to one.

Drivers with no native diff (devicemapper, and here btrfs and zfs) do what
``NaiveDiffDriver`` does: mount the layer and its parent, walk both whole
trees and compare ``lstat`` results (mode, uid, gid, rdev; size and mtime for
non-directories; symlink targets; the ``security.capability`` xattr).  A
directory that contains a change is reported changed itself, an added
directory's children are all added, and a deleted directory is one "D".

Everything here goes through :class:`~thinp.drivers.base.MountedView`
methods only, so any driver can use it.  ``work`` counts what the walk
costs: one per entry visited in either tree plus the content bytes read
to build a diff tar (Docker's naive diff reads every added/changed file).
"""
from __future__ import annotations

import errno
import hashlib
import stat as _stat

from .base import Change

CAP = "security.capability"


class Work:
    """A mutable counter handed through the walks."""

    __slots__ = ("entries", "bytes")

    def __init__(self):
        self.entries = 0
        self.bytes = 0

    @property
    def total(self) -> int:
        return self.entries + self.bytes


def _xattr(view, path, name):
    try:
        return view.getxattr(path, name)
    except (OSError, AttributeError, NotImplementedError):
        return None


def scan(view, work: Work | None = None) -> dict:
    """path -> (StatResult, link target or None, capability xattr or None)."""
    out = {}
    for dpath, dirs, files in view.walk("/"):
        base = dpath.rstrip("/")
        for name in dirs + files:
            p = base + "/" + name
            st = view.lstat(p)
            tgt = view.readlink(p) if _stat.S_ISLNK(st.st_mode) else None
            out[p] = (st, tgt, _xattr(view, p, CAP) if not _stat.S_ISLNK(st.st_mode) else None)
    if work is not None:
        work.entries += len(out) + 1
    return out


def _differs(a, b) -> bool:
    sa, ta, ca = a
    sb, tb, cb = b
    if (sa.st_mode != sb.st_mode or sa.st_uid != sb.st_uid or sa.st_gid != sb.st_gid
            or sa.st_rdev != sb.st_rdev):
        return True
    if not _stat.S_ISDIR(sa.st_mode) and (sa.st_mtime != sb.st_mtime or sa.st_size != sb.st_size):
        return True
    return ta != tb or ca != cb


def changes(view, parent_view, work: Work | None = None) -> list[Change]:
    """Docker's ``ChangesDirs``: the A/C/D list of ``view`` against ``parent_view``
    (None = an empty parent), sorted by path."""
    new = scan(view, work)
    old = scan(parent_view, work) if parent_view is not None else {}
    kinds: dict[str, str] = {}
    for p, info in new.items():
        o = old.get(p)
        if o is None:
            kinds[p] = "A"
        elif _differs(o, info):
            kinds[p] = "C"
    for p in old:
        if p not in new:
            parent = p.rsplit("/", 1)[0]
            if parent == "" or parent in new:   # only the top of a deleted subtree
                kinds[p] = "D"
    # a directory holding a change is changed itself (Docker keeps its metadata)
    for p in list(kinds):
        q = p.rsplit("/", 1)[0]
        while q and q not in kinds:
            if q in new and _stat.S_ISDIR(new[q][0].st_mode):
                kinds[q] = "C"
            q = q.rsplit("/", 1)[0]
    return sorted(Change(p, k) for p, k in kinds.items())


def filler(digest_source, size: int) -> bytes:
    """Deterministic bytes standing in for content an accounting-mode
    filesystem does not keep: equal content summaries give equal bytes."""
    if size <= 0:
        return b""
    seed = hashlib.blake2b(repr(digest_source).encode(), digest_size=32).digest()
    reps = size // len(seed) + 1
    return (seed * reps)[:size]


def file_bytes(view, path: str, size: int) -> bytes:
    data = view.read(path)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return filler(view.content(path), size)


def diff(view, parent_view, work: Work | None = None, chs: list[Change] | None = None):
    """The layer tar of ``view`` against ``parent_view`` as a :class:`thinp.image.Layer`
    (OCI whiteouts; hard links within the layer as tar hard links)."""
    from ..image.layer import Entry, Layer

    if chs is None:
        chs = changes(view, parent_view, work)
    items = []
    first_of_ino: dict[int, str] = {}
    for ch in chs:
        rel = ch.path.lstrip("/")
        if ch.kind == "D":
            items.append((Entry(rel, "whiteout"), None))
            continue
        st = view.lstat(ch.path)
        mode = st.st_mode
        common = dict(mode=_stat.S_IMODE(mode), uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime))
        cap = _xattr(view, ch.path, CAP)
        if cap is not None:
            common["xattrs"] = {CAP: cap}
        if _stat.S_ISDIR(mode):
            items.append((Entry(rel, "dir", **common), None))
        elif _stat.S_ISREG(mode):
            if st.st_nlink > 1 and st.st_ino in first_of_ino:
                items.append((Entry(rel, "hardlink", linkname=first_of_ino[st.st_ino], **common), None))
                continue
            first_of_ino[st.st_ino] = rel
            data = file_bytes(view, ch.path, st.st_size)
            if work is not None:
                work.bytes += len(data)
            items.append((Entry(rel, "file", size=len(data), **common), data))
        elif _stat.S_ISLNK(mode):
            common["mode"] = 0o777
            items.append((Entry(rel, "symlink", linkname=view.readlink(ch.path), **common), None))
        elif _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode):
            kind = "char" if _stat.S_ISCHR(mode) else "block"
            items.append((Entry(rel, kind, devmajor=st.st_rdev >> 8 & 0xFFF, devminor=(st.st_rdev & 0xFF) | (st.st_rdev >> 12 & 0xFFF00), **common), None))
        elif _stat.S_ISFIFO(mode):
            items.append((Entry(rel, "fifo", **common), None))
    return Layer.from_entries(items)


def remove_tree(view, path: str) -> None:
    """``rm -rf path`` through the view."""
    st = view.lstat(path)
    if _stat.S_ISDIR(st.st_mode):
        for name in view.listdir(path):
            remove_tree(view, path.rstrip("/") + "/" + name)
        view.rmdir(path)
    else:
        view.unlink(path)


def _exists(view, path) -> bool:
    try:
        view.lstat(path)
        return True
    except OSError:
        return False


def apply_diff(view, layer) -> int:
    """Docker's ``applyLayer`` through a writable view: whiteouts and opaque
    markers remove lower entries (never ones this layer unpacked), an entry
    replaces what is there unless both are directories.  Returns the
    content bytes applied."""
    import os

    size = 0
    unpacked: set[str] = set()
    opaque: list[str] = []
    for entry, stream in layer.walk(verify=False):
        p = "/" + entry.path if entry.path else "/"
        if entry.kind == "whiteout":
            if _exists(view, p):
                remove_tree(view, p)
            continue
        if entry.kind == "opaque":
            opaque.append(p)
            if _exists(view, p):
                for name in view.listdir(p):
                    c = p.rstrip("/") + "/" + name
                    if c not in unpacked:
                        remove_tree(view, c)
            continue
        if p == "/":
            view.chmod("/", entry.mode)
            view.chown("/", entry.uid, entry.gid)
            continue
        unpacked.add(p)
        try:
            st = view.lstat(p)
        except OSError as e:
            if e.errno not in (errno.ENOENT,):
                raise
            st = None
        if st is not None and not (entry.kind == "dir" and _stat.S_ISDIR(st.st_mode)):
            remove_tree(view, p)
            st = None
        k = entry.kind
        if k == "dir":
            if st is None:
                view.mkdir(p, entry.mode)
        elif k == "file":
            view.create(p, entry.mode)
            data = stream.read() if stream is not None else b""
            if data:
                view.write(p, 0, data)
            size += len(data)
        elif k == "hardlink":
            view.link("/" + entry.linkname, p)
            continue   # a hard link shares the target's attributes
        elif k == "symlink":
            view.symlink(entry.linkname, p, uid=entry.uid, gid=entry.gid)
            continue
        elif k in ("char", "block"):
            kind = _stat.S_IFCHR if k == "char" else _stat.S_IFBLK
            view.mknod(p, kind | entry.mode, os.makedev(entry.devmajor, entry.devminor))
        elif k == "fifo":
            view.mknod(p, _stat.S_IFIFO | entry.mode, 0)
        else:
            continue
        view.chmod(p, entry.mode)
        if entry.uid or entry.gid:
            view.chown(p, entry.uid, entry.gid)
        for name, value in (entry.xattrs or {}).items():
            view.setxattr(p, name, value if isinstance(value, bytes) else str(value).encode())
        view.utime(p, (entry.mtime, entry.mtime))
    return size

"""Docker's naive diff, the one implementation every driver uses.

Drivers with no native diff (vfs and the legacy overlay, devicemapper, btrfs,
zfs; aufs and overlay2 against a layer that is not their parent) do what
``NaiveDiffDriver`` does: mount the layer and its parent, walk both whole
trees and compare.  Two rules for "changed" (``Capabilities.changes_by_stat``):

* ``by_stat=True``, Docker's own (moby ``changes_unix.go`` statDifferent):
  mode, uid, gid, rdev; size and mtime for non-directories; symlink
  targets; the ``security.capability`` xattr.  Content replaced at the same
  size and mtime is no change;
* ``by_stat=False``: type, mode, uid, gid, rdev, symlink targets, and for
  regular files the size and then the content itself (the exact rule the
  union drivers and the reference keep).

A directory that contains a change is reported changed itself, an added
directory's children are all added, and a deleted directory is one "D".
:func:`layer` turns a change list into the layer tar: every xattr of a
changed entry, hard links within the layer as tar hard links, OCI
whiteouts, and opaque markers for the directories a native walk names.
Applying a layer tar is :mod:`.apply`'s.

Everything goes through :class:`~thinp.drivers.base.MountedView` methods
only.  :class:`Work` counts what a walk costs: one per entry visited in
either tree (each root included), plus the content bytes compared or read
to build the tar -- the drivers' ``diff_work``.
"""
from __future__ import annotations

import os
import stat as _stat

import numpy as np

from ..config import PAGE_SIZE
from ..image.stamps import StampedContent, decode_stamps, stamp_block   # noqa: F401 (re-exported)
from .base import Change

CAP = "security.capability"
BLOCK = PAGE_SIZE


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


def scan(view, work: Work | None = None, *, caps: bool = True) -> dict:
    """path -> (lstat, link target or None, capability xattr or None) of every
    entry below the root of ``view`` (None: an empty tree)."""
    out = {}
    if view is None:
        return out
    for dpath, dirs, files in view.walk("/"):
        base = dpath.rstrip("/")
        for name in dirs + files:
            p = base + "/" + name
            st = view.lstat(p)
            link = _stat.S_ISLNK(st.st_mode)
            out[p] = (st, view.readlink(p) if link else None,
                      _xattr(view, p, CAP) if caps and not link else None)
    if work is not None:
        work.entries += len(out) + 1
    return out


def _stat_differs(a, b) -> bool:
    """Docker's statDifferent (plus link target and security.capability)."""
    sa, ta, ca = a
    sb, tb, cb = b
    if (sa.st_mode != sb.st_mode or sa.st_uid != sb.st_uid or sa.st_gid != sb.st_gid
            or sa.st_rdev != sb.st_rdev):
        return True
    if not _stat.S_ISDIR(sa.st_mode) and (sa.st_mtime != sb.st_mtime or sa.st_size != sb.st_size):
        return True
    return ta != tb or ca != cb


def _content_differs(p, a, b, view, parent_view, work: Work | None) -> bool:
    """Type, mode, owner, device, link target; a regular file's size, then
    its content (``2 * size`` bytes of work)."""
    s, ta, _ = a
    o, tb, _ = b
    if s.st_mode != o.st_mode or s.st_uid != o.st_uid or s.st_gid != o.st_gid or s.st_rdev != o.st_rdev:
        return True
    if _stat.S_ISREG(s.st_mode):
        if s.st_size != o.st_size:
            return True
        if not s.st_size:
            return False
        if work is not None:
            work.bytes += 2 * s.st_size
        return view.content(p) != parent_view.content(p)
    return ta != tb


def changes(view, parent_view, work: Work | None = None, *, by_stat: bool = True) -> list[Change]:
    """Docker's ``ChangesDirs``: the A/C/D list of ``view`` against
    ``parent_view`` (None = an empty parent), sorted by path."""
    new = scan(view, work, caps=by_stat)
    old = scan(parent_view, work, caps=by_stat) if parent_view is not None else {}
    kinds: dict[str, str] = {}
    for p, info in new.items():
        o = old.get(p)
        if o is None:
            kinds[p] = "A"
        elif (_stat_differs(o, info) if by_stat
              else _content_differs(p, info, o, view, parent_view, work)):
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


# ---------------------------------------------------------------- content bytes
def view_content(view, path: str, size: int):
    """A file's content for a layer tar: bytes on a payload backend; on an
    accounting one a :class:`~thinp.image.stamps.StampedContent` of its
    version stamps, expanded to bytes only when the tar is read."""
    data = view.read(path)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return StampedContent(size, np.asarray(data, dtype=np.uint64))


# ---------------------------------------------------------------- the layer tar
def entry_kind(mode: int) -> str:
    if _stat.S_ISDIR(mode):
        return "dir"
    if _stat.S_ISREG(mode):
        return "file"
    if _stat.S_ISLNK(mode):
        return "symlink"
    if _stat.S_ISCHR(mode):
        return "char"
    if _stat.S_ISBLK(mode):
        return "block"
    return "fifo"


def layer(view, chs, *, opaque=(), work: Work | None = None):
    """A :class:`thinp.image.Layer` holding changes ``chs`` read from ``view``:
    added/changed entries with their content and every xattr, deletions as
    OCI ``.wh.`` whiteouts, ``opaque`` directories with ``.wh..wh..opq``,
    hard links within the layer as tar hard links."""
    from ..image import Entry, Layer

    items = []
    opaque = set(opaque)
    links: dict = {}
    for ch in sorted(chs):
        rel = ch.path.lstrip("/")
        if ch.kind == "D":
            items.append((Entry(rel, "whiteout", 0), None))
            continue
        st = view.lstat(ch.path)
        kind = entry_kind(st.st_mode)
        e = Entry(rel, kind, _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime))
        if hasattr(view, "listxattr") and kind != "symlink":
            e.xattrs = {k: bytes(view.getxattr(ch.path, k)) for k in view.listxattr(ch.path)}
        content = None
        if kind == "file":
            key = st.st_ino
            if st.st_nlink > 1 and key in links:
                e.kind, e.linkname = "hardlink", links[key]
            else:
                if st.st_nlink > 1:
                    links[key] = rel
                e.size = st.st_size
                content = view_content(view, ch.path, st.st_size)
                if work is not None:
                    work.bytes += len(content)
        elif kind == "symlink":
            e.linkname = view.readlink(ch.path)
        elif kind in ("char", "block"):
            e.devmajor, e.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        items.append((e, content))
        if kind == "dir" and ch.path in opaque:
            items.append((Entry(rel, "opaque"), None))
    return Layer.from_entries(items)


def diff(view, parent_view, work: Work | None = None, *, by_stat: bool = True):
    """The layer tar of ``view`` against ``parent_view``: :func:`changes`
    then :func:`layer`."""
    return layer(view, changes(view, parent_view, work, by_stat=by_stat), work=work)

"""Applying a layer tar: the one routine every driver uses (Docker's ``ApplyDiff``,
moby ``pkg/archive`` ``UnpackLayer``), with the whiteout format as a plug-in
(``pkg/archive``'s ``WhiteoutConverter``).

:func:`apply_layer` writes a :class:`thinp.image.Layer`'s entries through a
writable :class:`~thinp.drivers.base.MountedView`:

* an entry replaces what is at its path unless both are directories (then
  the directory's mode, owner and xattrs are updated); missing parents are
  made 0755;
* a regular file's content is written in one call, or in 16 MiB pieces
  above 16 MiB (a view with ``write_content(path, data)`` -- the union view
  in accounting mode -- may keep the version stamps a thinp diff carries,
  and takes them without their bytes from a stamped layer); hard links link
  to an entry already applied;
* every entry but a symlink or hard link gets its mode, owner, xattrs and
  mtime; directories get their mtimes last, deepest first, as ``tar`` and
  Docker do, so entries made inside them do not move them;
* whiteouts and opaque markers act on lower layers only, never on what this
  layer unpacked (the OCI image spec's rule).  What they do is the plug-in's:

  - :class:`DeleteWhiteouts` -- the view holds the whole tree (vfs and the
    legacy overlay's image layers, every container layer, devicemapper,
    btrfs, zfs): a whiteout deletes the path, an opaque marker empties the
    directory;
  - the union drivers' native formats (overlay2's character device 0/0 and
    ``trusted.overlay.opaque``, aufs's ``.wh.`` hard links), written into the
    layer's own branch: :class:`thinp.drivers.union.NativeWhiteouts`.

Returns the content bytes applied (the layer's ``size``).
"""
from __future__ import annotations

import errno
import os
import stat as _stat

__all__ = ["apply_layer", "DeleteWhiteouts", "ensure_parents", "remove_tree"]

_NODE_KINDS = {"char": _stat.S_IFCHR, "block": _stat.S_IFBLK, "fifo": _stat.S_IFIFO}


def remove_tree(view, path: str) -> None:
    """``rm -rf path`` through the view."""
    st = view.lstat(path)
    if _stat.S_ISDIR(st.st_mode):
        for name in view.listdir(path):
            remove_tree(view, path.rstrip("/") + "/" + name)
        view.rmdir(path)
    else:
        view.unlink(path)


def _lstat(view, path):
    try:
        return view.lstat(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        return None


class DeleteWhiteouts:
    """Whiteouts applied by deleting through a view of the whole tree."""

    def whiteout(self, view, path: str, unpacked: set) -> None:
        if _lstat(view, path) is not None:
            remove_tree(view, path)

    def opaque(self, view, path: str, unpacked: set) -> None:
        st = _lstat(view, path)
        if st is None or not _stat.S_ISDIR(st.st_mode):
            return
        keep = _kept_children(path, unpacked)
        base = path.rstrip("/")
        for name in view.listdir(path):
            if name not in keep:
                remove_tree(view, base + "/" + name)


def _kept_children(path: str, unpacked: set) -> set:
    """Names of ``path``'s children this layer unpacked, or unpacked something below."""
    prefix = path.rstrip("/") + "/"
    return {p[len(prefix):].split("/", 1)[0] for p in unpacked if p.startswith(prefix)}


def ensure_parents(view, path: str, unpacked: set, known_dirs: set | None = None) -> None:
    """Make the missing parent directories of ``path`` (0755, counted as
    unpacked); a non-directory in the way is replaced.  ``known_dirs``:
    directories already seen in this apply (skips their lstat)."""
    cur = ""
    for part in path.strip("/").split("/")[:-1]:
        cur += "/" + part
        if known_dirs is not None and cur in known_dirs:
            continue
        st = _lstat(view, cur)
        if st is None or not _stat.S_ISDIR(st.st_mode):
            if st is not None:
                remove_tree(view, cur)
            view.mkdir(cur, 0o755)
            unpacked.add(cur)
        if known_dirs is not None:
            known_dirs.add(cur)


def _xattrs(view, path: str, xattrs) -> None:
    for k, v in (xattrs or {}).items():
        view.setxattr(path, k, v if isinstance(v, bytes) else str(v).encode())


#: a file bigger than this is written in pieces of :data:`PIECE_BYTES` (a
#: 1 GiB file is never held whole), as ``tar`` writes it in pieces
WHOLE_MAX_BYTES = 16 << 20
PIECE_BYTES = 16 << 20


def _write_file(view, write_content, p: str, size: int, stream) -> None:
    """Write a file's ``size`` bytes of content from ``stream``.  Stamped
    content (a :class:`~thinp.image.stamps.StampReader` of a thinp diff)
    goes whole to a view that takes it (``write_content``), without
    expanding a byte; otherwise a file of up to :data:`WHOLE_MAX_BYTES` is
    written in one call, a bigger one in pieces."""
    stamped = getattr(stream, "content", None)
    if write_content is not None and stamped is not None:
        write_content(p, stamped)
        return
    if size <= WHOLE_MAX_BYTES:
        data = stream.read()
        if write_content is not None:
            write_content(p, data)
        else:
            view.write(p, 0, data)
        return
    off = 0
    while off < size:
        piece = stream.read(min(PIECE_BYTES, size - off))
        if not piece:
            break
        view.write(p, off, piece)
        off += len(piece)


def apply_layer(view, layer, whiteouts=None) -> int:
    """Write ``layer``'s entries through the writable ``view`` (see the module
    docstring); ``whiteouts`` is the plug-in (default :class:`DeleteWhiteouts`).
    Returns the layer's content bytes."""
    whiteouts = whiteouts or DeleteWhiteouts()
    write_content = getattr(view, "write_content", None)
    size = 0
    unpacked: set[str] = set()
    known_dirs: set[str] = set()     # directories seen in this apply; cleared by any removal
    dir_times: list[tuple[str, float]] = []
    # a layer is verified where it enters (thinp.image's loaders check every
    # DiffID once); a layer whose DiffID is unknown is still hashed here
    for e, stream in layer.walk(verify=False):
        p = "/" + e.path.strip("/")
        kind = e.kind
        if kind == "whiteout":
            if p not in unpacked:
                whiteouts.whiteout(view, p, unpacked)
                known_dirs.clear()
            continue
        if kind == "opaque":
            whiteouts.opaque(view, p, unpacked)
            known_dirs.clear()
            continue
        if p == "/":
            if kind == "dir":
                view.chmod("/", e.mode)
                view.chown("/", e.uid, e.gid)
                _xattrs(view, "/", e.xattrs)
                dir_times.append(("/", e.mtime))
            continue
        ensure_parents(view, p, unpacked, known_dirs)
        st = _lstat(view, p)
        if st is not None:
            if kind == "dir" and _stat.S_ISDIR(st.st_mode):
                view.chmod(p, e.mode)
                view.chown(p, e.uid, e.gid)
                _xattrs(view, p, e.xattrs)
                unpacked.add(p)
                known_dirs.add(p)
                dir_times.append((p, e.mtime))
                continue
            remove_tree(view, p)
            known_dirs.clear()
        unpacked.add(p)
        if kind == "dir":
            view.mkdir(p, e.mode, uid=e.uid, gid=e.gid)
            known_dirs.add(p)
            dir_times.append((p, e.mtime))
        elif kind == "file":
            view.create(p, e.mode, uid=e.uid, gid=e.gid)
            if e.size:
                _write_file(view, write_content, p, e.size, stream)
            size += e.size
        elif kind == "symlink":
            view.symlink(e.linkname, p, uid=e.uid, gid=e.gid)
            continue
        elif kind == "hardlink":
            view.link("/" + e.linkname.strip("/"), p)
            continue       # a hard link shares its target's attributes
        elif kind in _NODE_KINDS:
            view.mknod(p, _NODE_KINDS[kind] | (e.mode & 0o7777), os.makedev(e.devmajor, e.devminor),
                       uid=e.uid, gid=e.gid)
        else:
            continue
        _xattrs(view, p, e.xattrs)
        if kind != "dir":
            view.utime(p, (e.mtime, e.mtime))
    for p, mtime in reversed(dir_times):
        view.utime(p, (mtime, mtime))
    return size

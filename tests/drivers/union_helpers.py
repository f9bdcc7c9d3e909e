"""Helpers for the union-driver tests: small images built through the driver API."""
from __future__ import annotations

import stat

from thinp.drivers import get_driver
from thinp.image import Entry, Layer

UNION = ("vfs", "aufs", "overlay", "overlay2")
COPY_UP = ("aufs", "overlay", "overlay2")


def make(name: str, **opts):
    return get_driver(name, size=opts.pop("size", "2GiB"), **opts)


def layer(*items) -> Layer:
    """A layer from (path, kind[, size|target]) tuples; files get bytes."""
    out = []
    for it in items:
        path, kind = it[0], it[1]
        if kind == "file":
            size = it[2] if len(it) > 2 else 10
            data = bytes((i * 7 + len(path)) % 251 for i in range(size))
            out.append((Entry(path, "file", 0o644, size=size), data))
        elif kind == "dir":
            out.append((Entry(path, "dir", 0o755), None))
        elif kind == "symlink":
            out.append((Entry(path, "symlink", 0o777, linkname=it[2]), None))
        elif kind == "hardlink":
            out.append((Entry(path, "hardlink", 0o644, linkname=it[2]), None))
        else:
            out.append((Entry(path, kind), None))
    return Layer.from_entries(out)


def image(drv, *layers, prefix="L"):
    """Create image layers L0..Ln from ``layers`` (Layer objects); returns the ids."""
    ids, parent = [], None
    for i, lay in enumerate(layers):
        lid = f"{prefix}{i}"
        drv.create(lid, parent)
        drv.apply_diff(lid, parent, lay)
        ids.append(lid)
        parent = lid
    return ids


def tree(view, top="/") -> dict:
    """path -> (kind, size, content or symlink target) of a merged view."""
    out = {}
    for d, dirs, files in view.walk(top):
        base = d.rstrip("/")
        for n in dirs + files:
            p = base + "/" + n
            st = view.lstat(p)
            m = st.st_mode
            if stat.S_ISDIR(m):
                out[p] = ("dir", 0, None)
            elif stat.S_ISREG(m):
                out[p] = ("file", st.st_size, view.content(p))
            elif stat.S_ISLNK(m):
                out[p] = ("symlink", 0, view.readlink(p))
            else:
                out[p] = ("dev", 0, st.st_rdev)
    return out

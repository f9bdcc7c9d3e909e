"""Helpers for the block-driver tests (devicemapper, btrfs, zfs)."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from thinp.drivers import get_driver

FIXTURES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures").resolve()
BLOCK_DRIVERS = ("devicemapper", "btrfs", "zfs")


def fixture_path(*parts: str) -> Path:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"fixture {p} not found (expected the shared fixtures at {FIXTURES})")
    return p


def make_driver(name, tmp_path, **opts):
    return get_driver(name, tmp_path / name, **opts)


def tree(view) -> dict:
    """path -> (type, size, content summary or link target, mode) of a mounted view."""
    out = {}
    for dpath, dirs, files in view.walk("/"):
        base = dpath.rstrip("/")
        for name in dirs + files:
            p = base + "/" + name
            st = view.lstat(p)
            m = st.st_mode
            if stat.S_ISREG(m):
                out[p] = ("f", st.st_size, view.content(p), stat.S_IMODE(m))
            elif stat.S_ISDIR(m):
                out[p] = ("d", 0, None, stat.S_IMODE(m))
            elif stat.S_ISLNK(m):
                out[p] = ("l", 0, view.readlink(p), 0)
            else:
                out[p] = ("o", 0, st.st_rdev, stat.S_IMODE(m))
    return out


def load_image_chain(drv, image, prefix="L"):
    """Create one driver layer per image layer, applying each diff; returns ids."""
    ids, parent = [], None
    for i, layer in enumerate(image.layers):
        lid = f"{prefix}{i}"
        drv.create(lid, parent)
        drv.apply_diff(lid, parent, layer)
        ids.append(lid)
        parent = lid
    return ids


def start_container(drv, cid, image_top):
    """What Docker's layer store does: ``<id>-init`` with the init files, then the rw layer."""
    drv.create(cid + "-init", image_top)
    v = drv._rw_view(drv._devs[cid + "-init"]) if hasattr(drv, "_devs") else drv._rw_view(drv.layers[cid + "-init"])
    for d in ("/dev", "/proc", "/sys", "/etc"):
        if not v.exists(d):
            v.mkdir(d)
    for f in ("/.dockerenv", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"):
        v.create(f) if not v.exists(f) else None
    drv.create(cid, cid + "-init", read_write=True)
    return drv.get(cid)

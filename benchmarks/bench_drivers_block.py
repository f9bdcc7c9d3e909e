"""Block-driver benchmarks (devicemapper, btrfs, zfs), accounting mode.

Run: ``pytest benchmarks/bench_drivers_block.py --benchmark-only -s``.

* ``test_load_dive``: create and fill the 14 layers of the dive test image
  (``images/test-docker-image.tar``) with ``apply_diff``;
* ``test_start_100_containers``: on an image holding the Debian bookworm
  minbase rootfs (6,668 entries, applied from the manifest), start 100
  containers as Docker's layer store does (``<id>-init`` with the init
  files, a read-write layer on it, mount) and have each read /bin/bash.
"""
from __future__ import annotations

import os
import stat as _stat
from pathlib import Path

import pytest

from thinp.drivers import get_driver
from thinp.engine import _setup_init_layer

FIXTURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures").resolve()
DRIVERS = ("devicemapper", "btrfs", "zfs")


def _need(*parts):
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"fixture {p} missing")
    return p


def _report(benchmark, n, what):
    rate = n / benchmark.stats.stats.mean
    benchmark.extra_info[f"{what}_per_s"] = rate
    print(f"\n{benchmark.name}: {rate:,.1f} {what}/s")


def _view(drv, lid):
    return drv._rw_view(drv.layers[lid])


def apply_manifest(view, rows):
    """The rootfs manifest through a mounted view (sizes only: accounting mode)."""
    first: dict[str, str] = {}
    for i, r in enumerate(rows):
        p, kind = r["path"], r["type"]
        p = p[2:] if p.startswith("./") else p
        if not p or p == ".":
            continue
        p = "/" + p
        if kind == "d":
            if not view.exists(p):
                view.mkdir(p, _stat.S_IMODE(r["mode"]))
        elif kind == "f":
            g = r["inode_group"]
            if g and g in first:
                view.link(first[g], p)
                continue
            view.create(p, _stat.S_IMODE(r["mode"]))
            if r["size"]:
                view.write(p, 0, r["size"])
            if g:
                first[g] = p
        elif kind == "l":
            view.symlink(r["target"], p)
            continue
        elif kind == "c":
            maj, _, mnr = (r["target"] or "0:0").partition(":")
            view.mknod(p, _stat.S_IFCHR | _stat.S_IMODE(r["mode"]), os.makedev(int(maj), int(mnr or 0)))
        elif kind == "p":
            view.mknod(p, _stat.S_IFIFO | _stat.S_IMODE(r["mode"]), 0)
        else:
            continue
        if r["uid"] or r["gid"]:
            view.chown(p, r["uid"], r["gid"])


def debian_driver(name, root):
    from thinp.validate.fixtures import load_manifest

    rows = load_manifest(_need("rootfs", "debian-bookworm-minbase.csv.gz"))
    drv = get_driver(name, root)
    drv.create("debian", None)
    apply_manifest(_view(drv, "debian"), rows)
    if hasattr(drv, "sync"):
        drv.sync()
    else:
        drv.layers["debian"].fs.sync()
    return drv


def start_containers(drv, image, n):
    for i in range(n):
        cid = f"c{i:03d}"
        drv.create(cid + "-init", image, read_write=True)      # as Engine.create does
        _setup_init_layer(drv.get(cid + "-init"))
        drv.put(cid + "-init")
        drv.create(cid, cid + "-init", read_write=True)
        m = drv.get(cid)
        m.read("/usr/bin/bash")


@pytest.mark.benchmark(group="drivers-block-dive")
@pytest.mark.parametrize("name", DRIVERS)
def test_load_dive(benchmark, name, tmp_path):
    from thinp.image import load

    img = load(_need("images", "test-docker-image.tar"))[0]
    state = {}

    def setup():
        if "drv" in state:
            state["drv"].cleanup()
        state["n"] = state.get("n", 0) + 1
        state["drv"] = get_driver(name, tmp_path / f"r{state['n']}")
        return (state["drv"],), {}

    def run(drv):
        parent = None
        for i, layer in enumerate(img.layers):
            drv.create(f"L{i}", parent)
            drv.apply_diff(f"L{i}", parent, layer)
            parent = f"L{i}"

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1, warmup_rounds=1)
    _report(benchmark, len(img.layers), "layers")
    state["drv"].cleanup()


@pytest.mark.benchmark(group="drivers-block-100-containers")
@pytest.mark.parametrize("name", DRIVERS)
def test_start_100_containers(benchmark, name, tmp_path):
    state = {}

    def setup():
        if "drv" in state:
            state["drv"].cleanup()
        state["n"] = state.get("n", 0) + 1
        state["drv"] = debian_driver(name, tmp_path / f"r{state['n']}")
        return (state["drv"],), {}

    benchmark.pedantic(lambda drv: start_containers(drv, "debian", 100), setup=setup, rounds=1,
                       iterations=1, warmup_rounds=0)
    _report(benchmark, 100, "containers")
    s = state["drv"].stats()
    benchmark.extra_info.update({k: s[k] for k in ("physical_bytes", "metadata_bytes", "page_cache_bytes",
                                                    "inodes", "create_ops")})
    print(f"  physical {s['physical_bytes'] / 2**20:,.1f} MiB, metadata {s['metadata_bytes'] / 2**20:,.1f} MiB, "
          f"page cache {s['page_cache_bytes'] / 2**20:,.2f} MiB, inodes {s['inodes']:,}")
    state["drv"].cleanup()

"""Payload mode of the block drivers: the bytes read back are the bytes
written, through CoW, snapshots, truncates and removals.

A plain-Python model (path -> bytearray per layer, a snapshot is a copy)
runs the same random operations; every layer's every file is compared after
each step of the chain.  For btrfs and zfs the reads go through the layer's
CoW trees to the per-extent/record bytes, so a wrong mapping shows here."""
from __future__ import annotations

import random

import pytest

from thinp.drivers import get_driver

from .test_block_cowstore import check as check_refcounts

SIZES = [0, 1, 100, 2048, 2049, 4095, 4096, 4097, 5000, 65536, 131072, 131072 + 7, 200_000, 300_000]


def _bytes(rng, n):
    return bytes([rng.randrange(1, 256)]) * n if rng.random() < 0.5 else rng.randbytes(n)


def _step(rng, v, model):
    files = sorted(model)
    op = rng.random()
    if op < 0.5 or not files:
        p = rng.choice(files) if files and rng.random() < 0.75 else f"/f{rng.randrange(40)}"
        size = len(model.get(p, b""))
        off = rng.choice([0, 1, 100, 4095, 4096, 5000, 131072 - 3, 131072, size, size + 3000,
                          rng.randrange(0, 400_000)])
        data = _bytes(rng, rng.choice([1, 10, 3000, 4096, 5000, 70_000, 140_000]))
        v.write(p, off, data)
        buf = model.setdefault(p, bytearray())
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
    elif op < 0.7:
        p = rng.choice(files)
        n = rng.choice(SIZES)
        v.truncate(p, n)
        buf = model[p]
        del buf[n:]
        buf.extend(bytes(n - len(buf)))
    elif op < 0.8:
        p = rng.choice(files)
        v.unlink(p)
        del model[p]
    else:
        a = rng.choice(files)
        b = f"/f{rng.randrange(40)}"
        if a != b:
            v.rename(a, b)
            model[b] = model.pop(a)


def _compare(drv, lid, model):
    v = drv.get(lid)
    try:
        names = sorted("/" + n for n in v.listdir("/"))
        assert names == sorted(model), (lid, names, sorted(model))
        for p, want in model.items():
            got = v.read(p)
            assert v.stat(p).st_size == len(want), (lid, p)
            if got != bytes(want):
                i = next(k for k in range(len(want)) if got[k] != want[k])
                pytest.fail(f"{lid}:{p} differs first at byte {i} of {len(want)}")
            # a read in the middle returns the same slice
            if len(want) > 10:
                assert v.read(p, 3, len(want) // 2) == bytes(want[3:3 + len(want) // 2])
    finally:
        drv.put(lid)


@pytest.mark.parametrize("name,opts", [("btrfs", {}), ("zfs", {}), ("zfs", {"recordsize": "16K"}),
                                       ("devicemapper", {"loopdatasize": "2G", "loopmetadatasize": "64M"})])
@pytest.mark.parametrize("seed", [1, 2])
def test_bytes_survive_cow_and_snapshots(tmp_path, name, opts, seed):
    rng = random.Random(seed)
    drv = get_driver(name, tmp_path / name, payload=True, **opts)
    try:
        models = {}
        ids = []
        for i in range(5):
            lid = f"l{i}"
            parent = rng.choice(ids) if ids else None
            drv.create(lid, parent, read_write=True)
            model = {p: bytearray(b) for p, b in models[parent].items()} if parent else {}
            v = drv.get(lid)
            for k in range(40):
                _step(rng, v, model)
                if k % 13 == 12 and hasattr(drv, "sync"):
                    drv.sync()
            drv.put(lid)
            models[lid] = model
            ids.append(lid)
            for other in ids:                      # the new layer changed nothing below it
                _compare(drv, other, models[other])
            if hasattr(drv, "store"):
                check_refcounts(drv)
        for lid in reversed(ids):
            if drv.parent(lid) is not None and not any(drv.parent(x) == lid for x in drv.list_layers()):
                drv.remove(lid)
                ids.remove(lid)
                for other in ids:
                    _compare(drv, other, models[other])
        if hasattr(drv, "store"):
            check_refcounts(drv)
    finally:
        drv.cleanup()


@pytest.mark.parametrize("name", ["btrfs", "zfs"])
def test_unaligned_truncate_then_grow_reads_zeros(tmp_path, name):
    """The tail past a truncate is zero after the file grows again, in the
    layer and never changed in its snapshot (the tail block/record is CoWed)."""
    drv = get_driver(name, tmp_path / name, payload=True)
    try:
        drv.create("a", None, read_write=True)
        v = drv.get("a")
        v.write("/f", 0, b"\xff" * 300_000)
        v.write("/small", 0, b"\xee" * 1000)                # btrfs: inline
        drv.put("a")
        drv.create("b", "a", read_write=True)
        w = drv.get("b")
        w.truncate("/f", 5000)
        w.truncate("/small", 10)
        w.truncate("/f", 9000)
        w.write("/small", 3000, b"x")                       # btrfs: out of the leaf
        assert w.read("/f") == b"\xff" * 5000 + bytes(4000)
        assert w.read("/small") == b"\xee" * 10 + bytes(2990) + b"x"
        w.write("/f", 200_000, b"y")
        assert w.read("/f") == b"\xff" * 5000 + bytes(195_000) + b"y"
        drv.put("b")
        v = drv.get("a")
        assert v.read("/f") == b"\xff" * 300_000 and v.read("/small") == b"\xee" * 1000
        drv.put("a")
    finally:
        drv.cleanup()


def test_payload_needs_bytes(tmp_path):
    for name in ("btrfs", "zfs"):
        drv = get_driver(name, tmp_path / name, payload=True)
        drv.create("a", None, read_write=True)
        with pytest.raises(ValueError):
            drv.get("a").write("/f", 0, 4096)
        drv.put("a")
        drv.cleanup()


@pytest.mark.parametrize("payload", [True, False])
@pytest.mark.parametrize("name", ["btrfs", "zfs", "devicemapper"])
def test_truncate_into_a_hole_grown_by_truncate(tmp_path, name, payload):
    """Shrinking to an unaligned size inside a hole made by an earlier
    growing truncate (past the last written block) keeps the hole."""
    def run(v):
        v.write("/f", 0, b"q" * 150_000)
        v.truncate("/f", 300_000)
        v.truncate("/f", 200_000)
        v.write("/f", 199_990, b"z" * 20)
        return v.content("/f"), v.read("/f") if payload else None

    drv = get_driver(name, tmp_path / name, payload=payload)
    ref = get_driver("reference", None, payload=payload)
    try:
        for d in (drv, ref):
            d.create("a", None, read_write=True)
        got, want = run(drv.get("a")), run(ref.get("a"))
        assert got == want
        if payload:
            assert got[1] == b"q" * 150_000 + bytes(49_990) + b"z" * 20
    finally:
        drv.cleanup()

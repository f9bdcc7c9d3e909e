"""Reference counts of the btrfs/zfs CoW store after random workloads over
snapshot chains, recounted from scratch (an oracle walk in plain Python)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from thinp.drivers.btrfs import BtrfsDriver
from thinp.drivers.zfs import ZfsDriver
from thinp.pdata import _kernels as K

from ._block_helpers import tree


def recount(drv):
    st = drv.store
    meta, nm, nd = st.sp.meta, st.sp.mrc.shape[0], st.sp.drc.shape[0]
    mrc = np.zeros(nm, dtype=np.int64)
    drc = np.zeros(nd, dtype=np.int64)
    mrc[0] = 1
    seen = set()
    for layer in drv.layers.values():
        for t in layer.trees.values():
            if not t.root:
                continue
            mrc[t.root] += 1
            stack = [(t.root, t.levels)]
            while stack:
                b, lv = stack.pop()
                if b in seen:
                    continue
                seen.add(b)
                for v in meta[b][meta[b] != 0]:
                    if lv == 1:
                        drc[int(v >> np.uint64(24)) - 1] += 1
                    else:
                        c = int(v & np.uint64(K.CHILD_MASK))
                        mrc[c] += 1
                        stack.append((c, lv - 1))
    return mrc, drc


def check(drv):
    st = drv.store
    mrc, drc = recount(drv)
    assert np.array_equal(mrc, st.sp.mrc.astype(np.int64)), np.flatnonzero(mrc != st.sp.mrc)[:5]
    assert np.array_equal(drc, st.sp.drc.astype(np.int64)), np.flatnonzero(drc != st.sp.drc)[:5]
    live = drc > 0
    assert np.all(st.ext_len[: len(drc)][~live] == 0)            # freed extents gave their space back
    assert int(st.ext_len[: len(drc)][live].sum()) == st.units_used
    assert int(st.disk.sum()) == st.units_used
    # no file maps data beyond its end
    for layer in drv.layers.values():
        for ino, t in layer.trees.items():
            node = layer.fs.inodes.peek(ino) if hasattr(layer.fs.inodes, "peek") else layer.fs.inodes[ino]
            unit = getattr(drv, "recordsize", 4096)
            n = -(-node.size // unit) if node.size > unit or unit == 4096 else 1
            assert not st.lookup(t, n, n + 300).any(), (layer.id, ino, node.size)


def workload(drv, lid, rng):
    v = drv.get(lid)
    files = [p for p, (kind, *_r) in tree(v).items() if kind == "f"]
    for _ in range(60):
        op = rng.random()
        if op < 0.45 or not files:
            p = rng.choice(files) if files and rng.random() < 0.7 else f"/f{rng.randrange(1000)}"
            off = rng.choice([0, 100, 4096, 65536, 200000, rng.randrange(1 << 20)])
            v.write(p, off, rng.randrange(1, 300000))
            if p not in files:
                files.append(p)
        elif op < 0.6:
            p = rng.choice(files)
            v.truncate(p, rng.choice([0, 1, 5000, 131072 + 7, 1 << 20]))
        elif op < 0.75:
            p = files.pop(rng.randrange(len(files)))
            v.unlink(p)
        elif op < 0.85 and len(files) > 1:
            a, b = rng.sample(files, 2)
            v.rename(a, b)
            files.remove(a)
        else:
            a = rng.choice(files)
            b = f"/l{rng.randrange(1000)}"
            if not v.exists(b):
                v.link(a, b)
                files.append(b)
        if rng.random() < 0.1:
            drv.sync()
    drv.put(lid)


@pytest.mark.parametrize("cls", [BtrfsDriver, ZfsDriver])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refcounts_after_random_snapshot_workloads(cls, seed):
    rng = random.Random(seed)
    drv = cls()
    drv.create("l0", None, read_write=True)
    workload(drv, "l0", rng)
    check(drv)
    ids = ["l0"]
    for i in range(1, 6):
        parent = rng.choice(ids)
        drv.create(f"l{i}", parent, read_write=True)
        workload(drv, f"l{i}", rng)
        ids.append(f"l{i}")
        check(drv)
    used_before = drv.store.units_used
    for lid in reversed(ids):
        if drv.layers[lid].children == 0:
            drv.remove(lid)
            check(drv)
    drv.sync()
    check(drv)
    assert drv.store.units_used <= used_before     # removing layers never costs space

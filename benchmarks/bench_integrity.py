"""[integrity] benchmarks (pytest-benchmark): commit cost against msync of
the same pages, thinp check on 10 M mappings, dump and restore of 1 M.

Run: ``PYTHONPATH=. pytest benchmarks/bench_integrity.py --benchmark-only -s``.
Targets from issue [integrity]: commit within 2x of msync of the same pages;
check of 10 M mappings < 10 s; dump and restore of 1 M mappings < 5 s each.
"""
from __future__ import annotations

import mmap
import os
import shutil
import time

import numpy as np
import pytest

from thinp.config import METADATA_BLOCK_SIZE
from thinp.thin import ThinPool
from thinp.thin.check import check
from thinp.thin.dump import dump
from thinp.thin.restore import restore
from thinp.trace import TRACE_DTYPE, WRITE

BS = 64 * 1024
SEED = 20261128


def _writes(dev_id, vblocks):
    t = np.zeros(len(vblocks), dtype=TRACE_DTYPE)
    t["dev_id"] = dev_id
    t["op"] = WRITE
    t["offset"] = np.asarray(vblocks, dtype=np.uint64) * BS
    t["length"] = BS
    return t


def _report(benchmark, n, what):
    mean = benchmark.stats.stats.mean
    benchmark.extra_info[f"{what}_per_s"] = n / mean
    print(f"\n{benchmark.name}: mean {mean:.3f} s, {n / mean:,.0f} {what}/s")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_integrity")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.benchmark(group="integrity-commit")
@pytest.mark.parametrize("nr_leaves", [64, 1024, 8192])
def test_commit_vs_msync(benchmark, workdir, nr_leaves):
    """commit() of a transaction that dirtied ``nr_leaves`` leaf nodes (one
    write each, 512 vblocks apart), sync=True; against msync of the very
    blocks that commit wrote, in a scratch file, with the same run merging,
    then of the superblock (the second, ordered msync every commit needs)."""
    path = str(workdir / f"commit{nr_leaves}")
    pool = ThinPool.create(path, data_size=4 * nr_leaves * 4 * BS, metadata_size="256M", sync=True)
    pool.create_thin(0, nr_leaves * 4 * 512 * BS)
    rng = np.random.default_rng(SEED)
    md = pool._md
    written = []

    def setup():
        vbs = rng.choice(nr_leaves * 4, nr_leaves, replace=False) * 512 + rng.integers(0, 512)
        pool.replay(_writes(0, vbs))
        sb = md.sb
        copy = (sb.generation + 1) % 2
        sm = np.concatenate([sb.msm_start + 2 * np.flatnonzero(md.sp.mdirty | md.mdirty_prev) + copy,
                             sb.dsm_start + 2 * np.flatnonzero(md.sp.ddirty | md.ddirty_prev) + copy])
        written.append(np.union1d(np.flatnonzero(md.sp.mnew), sm))
        return (), {}

    pool.replay(_writes(0, [0]))
    pool.commit()  # warm
    benchmark.pedantic(pool.commit, setup=setup, rounds=10, iterations=1)
    blocks = np.concatenate(written)
    per_commit = len(blocks) / len(written)
    # baseline: dirty and msync the same blocks in a scratch file
    scratch = str(workdir / f"scratch{nr_leaves}")
    nm = md.sb.nr_metadata_blocks
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, nm * METADATA_BLOCK_SIZE)
    mm = mmap.mmap(fd, nm * METADATA_BLOCK_SIZE)
    arr = np.frombuffer(mm, dtype=np.uint64).reshape(nm, 512)
    times = []
    for b in written:
        arr[b, :] = rng.integers(1, 1 << 62, size=(len(b), 512), dtype=np.uint64)
        t0 = time.perf_counter()
        breaks = np.flatnonzero(np.diff(b) > 64)
        starts = np.concatenate([[b[0]], b[breaks + 1]])
        ends = np.concatenate([b[breaks], [b[-1]]]) + 1
        for a, e in zip(starts.tolist(), ends.tolist()):
            mm.flush(a * METADATA_BLOCK_SIZE, (e - a) * METADATA_BLOCK_SIZE)
        # then the superblock, in its own msync, as any ordered commit must
        arr[1, 0] += np.uint64(1)
        mm.flush(0, 2 * METADATA_BLOCK_SIZE)
        times.append(time.perf_counter() - t0)
    del arr
    mm.close()
    os.close(fd)
    msync = float(np.mean(times))
    ratio = benchmark.stats.stats.mean / msync
    benchmark.extra_info.update(blocks_per_commit=per_commit, msync_s=msync, ratio_to_msync=ratio)
    print(f"\ncommit of {per_commit:.0f} dirty blocks ({nr_leaves} leaves): "
          f"{benchmark.stats.stats.mean * 1e3:.2f} ms; msync of the same blocks {msync * 1e3:.2f} ms; "
          f"ratio {ratio:.2f}")
    pool.close()


@pytest.fixture(scope="module")
def pool_10m(workdir):
    path = str(workdir / "p10m")
    n = 10_000_000
    pool = ThinPool.create(path, data_size=n * BS, sync=False)
    pool.create_thin(0, n * BS)
    pool.replay(_writes(0, np.arange(n)))
    pool.create_snap(1, 0)
    pool.replay(_writes(1, np.arange(0, n, 97)))  # some CoW so trees share and differ
    pool.close()
    return path


@pytest.mark.benchmark(group="integrity-check")
def test_check_10m_mappings(benchmark, pool_10m):
    check(pool_10m)  # warm the JIT
    rep = benchmark.pedantic(check, args=(pool_10m,), rounds=3, iterations=1)
    assert rep.ok and rep.nr_mappings >= 10_000_000
    _report(benchmark, rep.nr_mappings, "mappings")


@pytest.fixture(scope="module")
def pool_1m(workdir):
    """1 M mappings in random order: data blocks are allocated in write
    order, so almost every mapping is its own single_mapping (the XML's
    worst case, ~73 MB)."""
    path = str(workdir / "p1m")
    rng = np.random.default_rng(SEED)
    pool = ThinPool.create(path, data_size=2_000_000 * BS, sync=False)
    pool.create_thin(0, 2_000_000 * BS)
    pool.replay(_writes(0, rng.permutation(2_000_000)[:1_000_000]))
    pool.close()
    xml = str(workdir / "p1m.xml")
    dump(path, output=xml)
    return path, xml


@pytest.mark.benchmark(group="integrity-xml")
def test_dump_1m_mappings(benchmark, pool_1m, workdir):
    path, _ = pool_1m
    out = str(workdir / "d1m.xml")
    benchmark.pedantic(dump, args=(path,), kwargs={"output": out}, rounds=3, iterations=1)
    benchmark.extra_info["xml_bytes"] = os.path.getsize(out)
    _report(benchmark, 1_000_000, "mappings")


@pytest.mark.benchmark(group="integrity-xml")
def test_restore_1m_mappings(benchmark, pool_1m, workdir):
    _, xml = pool_1m
    target = str(workdir / "r1m")

    def setup():
        shutil.rmtree(target, ignore_errors=True)
        return (xml, target), {}

    restore(*setup()[0])  # warm
    benchmark.pedantic(restore, setup=setup, rounds=3, iterations=1)
    _report(benchmark, 1_000_000, "mappings")

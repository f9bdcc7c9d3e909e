"""dm's persistent-data structures under PoolMetadata (pytest-benchmark).

Run: ``pytest benchmarks/bench_pdata.py --benchmark-only -s``.  Each figure
is printed beside a ceiling measured in the same run: a bare numba loop over
the same data size for the btree kernels, fdatasync / msync of the same
blocks for commits.  Defaults are the pool's (sync on, split "current").
Targets are from issue #12.
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

import numpy as np
import pytest

from thinp.config import njit
from thinp.pdata.mapping_tree import lookup_mapping
from thinp.thin.pool_metadata import MAX_METADATA_BLOCKS, PoolMetadata

BS = 64 * 1024
THIN_1TIB = 1 << 24  # 64 KiB blocks in a 1 TiB thin
SEED = 20261206


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="thinp-bench-pdata-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _pool(path, nr_metadata_blocks=1 << 17, nr_data_blocks=THIN_1TIB + 4096):
    md = PoolMetadata.format(path, nr_metadata_blocks=nr_metadata_blocks, nr_data_blocks=nr_data_blocks,
                             data_block_sectors=BS // 512)
    md.create_thin(0)
    md.create_thin(1)
    md.write_blocks(1, np.arange(4))  # compile (or load) outside the timing, in another thin
    md.commit()
    return md


@njit
def _store_ceiling(keys, vals, vblocks):
    """The bare cost of recording n (vblock -> pblock) pairs in order."""
    for i in range(vblocks.shape[0]):
        keys[i] = vblocks[i]
        vals[i] = (np.uint64(i) << np.uint64(24)) | np.uint64(1)


@njit
def _rmw_ceiling(table, idx):
    """A read-modify-write per index into a table of 1 TiB's blocks."""
    for i in idx:
        table[i] = (table[i] + np.uint64(1)) | np.uint64(i)


@njit
def _lookup_all(m64, m32, root, dev, vblocks):
    """dm's lookup of each vblock, in order: the descent alone, the floor
    under an insert at the same keys (cold leaves, as the inserts meet them)."""
    s = np.uint64(0)
    for vb in vblocks:
        v, found = lookup_mapping(m64, m32, root, dev, vb)
        s += v
    return s


def _best(fn, *args, rounds=3):
    fn(*args)
    t = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


def _provision(benchmark, workdir, vblocks, ceiling_s, what):
    state = {"round": 0}

    def setup():
        if "md" in state:
            state["md"].close(commit=False)
            os.unlink(state["path"])
        state["round"] += 1
        state["path"] = os.path.join(workdir, f"{what}{state['round']}")
        state["md"] = _pool(state["path"])
        return (), {}

    cpu, sys_s = [], []

    def run():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        state["md"].write_blocks(0, vblocks)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        sys_s.append(r1.ru_stime - r0.ru_stime)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    md = state["md"]
    m64, m32 = md.bm.blocks.view(np.uint64), md.bm.blocks.view(np.uint32)
    lookup_s = _best(_lookup_all, m64, m32, np.int64(md.sb.data_mapping_root), np.int64(0), vblocks)
    t0 = time.perf_counter()
    md.commit()
    commit_s = time.perf_counter() - t0
    n = len(vblocks)
    best = benchmark.stats.stats.min
    ratio = ceiling_s / best
    best_cpu = min(cpu)
    benchmark.extra_info.update(per_s=n / best, ceiling_per_s=n / ceiling_s, ratio=ratio, commit_s=commit_s,
                                cpu_per_s=n / best_cpu, lookup_per_s=n / lookup_s, system_s=min(sys_s),
                                load=os.getloadavg()[0])
    print(f"\n  {what} provisioning of {n} blocks into a 1 TiB thin: {n / best / 1e6:.2f} M/s (best of 3; "
          f"mean {n / benchmark.stats.stats.mean / 1e6:.2f} M/s; by CPU time {n / best_cpu / 1e6:.2f} M/s, of "
          f"which system {min(sys_s) * 1e3:.0f} ms; load {os.getloadavg()[0]:.1f}); "
          f"ceiling {n / ceiling_s / 1e6:.0f} M/s; ratio {ratio:.3f}; the commit after it (sync on) "
          f"{commit_s * 1e3:.0f} ms; a bare lookup of the same keys in the result {n / lookup_s / 1e6:.2f} M/s")
    md.close(commit=False)


@pytest.mark.benchmark(group="pdata-provision")
def test_sequential_provisioning(benchmark, workdir):
    """4 M first writes in order (target >= 20 M/s)."""
    vb = np.arange(1 << 22, dtype=np.int64)
    ceiling = _best(_store_ceiling, np.empty(len(vb), np.uint64), np.empty(len(vb), np.uint64), vb)
    _provision(benchmark, workdir, vb, ceiling, "sequential")


@pytest.mark.benchmark(group="pdata-provision")
def test_random_provisioning(benchmark, workdir):
    """1 M first writes at random vblocks of a 1 TiB thin (target >= 5 M/s)."""
    vb = np.random.default_rng(SEED).choice(THIN_1TIB, 1 << 20, replace=False).astype(np.int64)
    ceiling = _best(_rmw_ceiling, np.zeros(THIN_1TIB, np.uint64), vb)
    _provision(benchmark, workdir, vb, ceiling, "random")


# ------------------------------------------------------------------ commits
def _fdatasync_floor(path, nr_blocks=1):
    """One fdatasync after rewriting ``nr_blocks`` 4 KiB blocks of a file
    on the same filesystem: the cost of one flush barrier here (median of
    9; the first, which allocates the blocks, is left out)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        buf = np.random.default_rng(SEED).integers(0, 255, 4096 * nr_blocks, dtype=np.uint8).tobytes()
        os.pwrite(fd, buf, 0)
        os.fdatasync(fd)
        times = []
        for _ in range(9):
            os.pwrite(fd, buf, 0)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return float(np.median(times))


def _cpu_timed(fn, cpu):
    def run():
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
    return run


def _counting_fdatasync(monkeypatch):
    calls = []
    real = os.fdatasync

    def fdatasync(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


def _touch_and_sync(md, blocks):
    """The ceiling of a commit: dirty the same blocks (rewrite a byte of
    each in place, through the mapping), then one fdatasync."""
    for b in blocks.tolist():
        md.bm.blocks[b, 100] = md.bm.blocks[b, 100]
    t0 = time.perf_counter()
    os.fdatasync(md.bm.fd)
    return time.perf_counter() - t0


@pytest.mark.benchmark(group="pdata-commit")
def test_commit_after_cow(benchmark, workdir, monkeypatch):
    """Commit (sync on) after a snapshot of a 1 M-block thin took 10,000
    CoW writes, beside fdatasync of the same dirty blocks (target: 2x)."""
    md = _pool(os.path.join(workdir, "cow"))
    md.write_blocks(0, np.arange(1_000_000))
    md.commit()
    rng = np.random.default_rng(SEED)
    state = {"snap": 100}
    written = []
    seal = md.tm.seal_dirty

    def recording_seal():
        blocks = seal()
        written.append(np.array(blocks, dtype=np.int64))
        return blocks

    def setup():
        state["snap"] += 1
        md.create_snap(state["snap"], 0)
        md.write_blocks(state["snap"], rng.choice(1_000_000, 10_000, replace=False))
        return (), {}

    md.tm.seal_dirty = recording_seal
    calls = _counting_fdatasync(monkeypatch)
    cpu = []

    def commit():
        c0 = time.process_time()
        md.commit()
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(commit, setup=setup, rounds=5, iterations=1)
    nr_syncs = len(calls) / 5
    monkeypatch.undo()
    md.tm.seal_dirty = seal
    commit_s = benchmark.stats.stats.mean
    ceiling_s = float(np.mean([_touch_and_sync(md, w) for w in written]))
    dirty = int(np.mean([len(w) for w in written]))
    ratio = commit_s / ceiling_s
    benchmark.extra_info.update(dirty_blocks=dirty, ceiling_s=ceiling_s, ratio=ratio, fdatasyncs=nr_syncs)
    print(f"\n  commit of {dirty} dirty blocks: {commit_s * 1e3:.1f} ms ({nr_syncs:.0f} fdatasyncs); "
          f"fdatasync of the same blocks dirtied again {ceiling_s * 1e3:.1f} ms: {ratio:.2f}x "
          f"(the commit's own CPU time {np.mean(cpu) * 1e3:.1f} ms)")
    md.close(commit=False)


@pytest.mark.benchmark(group="pdata-commit")
@pytest.mark.parametrize("size", ["small", "16GiB"])
def test_commit_one_dirty_block(benchmark, workdir, monkeypatch, size):
    """Commit of one changed mapping in a 4 MiB vs a 15.9 GiB (dm's largest)
    metadata file: flat (sync on)."""
    nr = 1024 if size == "small" else MAX_METADATA_BLOCKS
    md = _pool(os.path.join(workdir, size), nr_metadata_blocks=nr, nr_data_blocks=1 << 20)
    md.write_blocks(0, np.arange(100))
    md.commit()
    state = {"vb": 1000}

    def setup():
        state["vb"] += 1
        md.write_blocks(0, np.array([state["vb"]]))
        return (), {}

    calls = _counting_fdatasync(monkeypatch)
    cpu = []
    benchmark.pedantic(_cpu_timed(md.commit, cpu), setup=setup, rounds=20, iterations=1)
    nr_syncs = len(calls) / 20
    monkeypatch.undo()
    floor = _fdatasync_floor(os.path.join(workdir, "floor"))
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(fdatasync_s=floor, fdatasyncs=nr_syncs, cpu_s=float(np.median(cpu)))
    print(f"\n  commit of 1 mapping, {nr} metadata blocks: median {median * 1e3:.2f} ms (CPU "
          f"{np.median(cpu) * 1e3:.2f} ms), {nr_syncs:.0f} fdatasyncs; one fdatasync here (median) "
          f"{floor * 1e3:.2f} ms: {median / (nr_syncs * floor):.2f}x the fdatasync floor")
    md.close(commit=False)


@pytest.fixture(scope="module")
def big():
    d = tempfile.mkdtemp(prefix="thinp-bench-pdata-")
    md = _pool(os.path.join(d, "big"))
    md.sync = False
    md.write_blocks(0, np.arange(THIN_1TIB))
    md.commit()
    md.sync = True
    yield md
    md.close(commit=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.benchmark(group="pdata-snap")
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
@pytest.mark.parametrize("mapped", ["1k", "16m"])
def test_create_snap_commit(benchmark, workdir, big, monkeypatch, mapped, sync):
    """create_snap + commit with 1 K and 16 M mapped blocks: flat, < 1 ms."""
    if mapped == "16m":
        md = big
    else:
        md = _pool(os.path.join(workdir, "small"))
        md.write_blocks(0, np.arange(1000))
        md.commit()
    md.sync = sync
    state = {"dev": 1000 if sync else 2000}

    def run():
        state["dev"] += 1
        md.create_snap(state["dev"], 0)
        md.commit()

    run()
    calls = _counting_fdatasync(monkeypatch)
    cpu = []
    benchmark.pedantic(_cpu_timed(run, cpu), rounds=10, iterations=1)
    nr_syncs = len(calls) / 10
    monkeypatch.undo()
    floor = _fdatasync_floor(os.path.join(workdir, "floor"))
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(fdatasyncs=nr_syncs, fdatasync_s=floor, cpu_s=float(np.median(cpu)))
    print(f"\n  create_snap + commit, {mapped} mapped, sync={sync}: median {median * 1e3:.2f} ms (CPU "
          f"{np.median(cpu) * 1e3:.2f} ms), {nr_syncs:.0f} fdatasyncs; one fdatasync here (median) "
          f"{floor * 1e3:.2f} ms")
    md.sync = True
    if mapped == "1k":
        md.close(commit=False)

"""dm's persistent-data structures under PoolMetadata (pytest-benchmark).

Run: ``pytest benchmarks/bench_pdata.py --benchmark-only -s``.  Each figure
is printed beside a ceiling measured in the same run: a bare numba loop over
the same data size for the btree kernels; for commits, the bare cost of
making the same blocks durable: they are dirtied again through the mapping
(their page faults untimed), then one fdatasync of the file is timed, and
one msync(MS_SYNC) of their span.  Defaults are the pool's (sync on, split
"current").
Targets are from issue #12.
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import threading
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
def _cpu_timed(fn, cpu):
    def run():
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
    return run


def _counting_fdatasync(monkeypatch):
    """Count os.fdatasync calls of the main thread; each entry is the
    seconds the call took (the disk's part of a commit: its flush barriers)."""
    calls = []
    real = os.fdatasync

    def fdatasync(fd):
        if threading.current_thread() is not threading.main_thread():
            return real(fd)  # the zeroing behind a commit (BlockManager.zero_holes_behind)
        t0 = time.perf_counter()
        try:
            return real(fd)
        finally:
            calls.append(time.perf_counter() - t0)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


def _touch(md, blocks):
    """Dirty ``blocks`` again: rewrite a byte of each in place, through the
    mapping (their write faults happen here, outside what is timed)."""
    for b in blocks.tolist():
        md.bm.blocks[b, 100] = md.bm.blocks[b, 100]


def _commit_ceilings(md, blocks):
    """The ceiling of a commit that wrote ``blocks``: the bare cost of
    making the same blocks durable, timed alone after dirtying them again.
    (fdatasync, msync) seconds: one fdatasync of the file, and one
    msync(MS_SYNC) of the span from the lowest to the highest block (on
    Linux both are one vfs_fsync_range; an msync per run of adjacent
    blocks would be one device flush per run, and no commit needs that)."""
    _touch(md, blocks)
    t0 = time.perf_counter()
    os.fdatasync(md.bm.fd)
    fsync_s = time.perf_counter() - t0
    _touch(md, blocks)
    lo, hi = int(blocks.min()), int(blocks.max()) + 1
    t0 = time.perf_counter()
    md.bm.mm.flush(lo * 4096, (hi - lo) * 4096)
    return fsync_s, time.perf_counter() - t0


def _bare_barriers(md, n=2):
    """The floor of a crash-safe commit on this file, timed between the
    commits' rounds (a flush's cost swings 0.1-8 ms with the host's other
    I/O, so a floor measured apart from them is not comparable): ``n``
    times, the committed superblock rewritten as it is, then fdatasync.
    dm's order needs two such barriers: everything the new superblock
    references, then the superblock."""
    sb = os.pread(md.bm.fd, 4096, 0)
    t0 = time.perf_counter()
    for _ in range(n):
        os.pwrite(md.bm.fd, sb, 0)
        os.fdatasync(md.bm.fd)
    return time.perf_counter() - t0


def _fresh_blocks_ceiling(path, nr_blocks):
    """A second ceiling: ``nr_blocks`` never-written blocks of a new sparse
    file (as the commit's shadows are, where dm's rolling cursor has not
    been yet) written through a shared mapping, faults included, then one
    fdatasync: what any writer of that many fresh blocks through a mapping
    pays on this filesystem.  (wall, CPU) seconds."""
    import mmap

    size = (nr_blocks + 16) * 4096
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm.madvise(mmap.MADV_RANDOM)  # as the block manager advises its mapping
        blocks = np.frombuffer(mm, dtype=np.uint8).reshape(-1, 4096)
        c0 = time.process_time()
        t0 = time.perf_counter()
        blocks[:nr_blocks, 100] = 1
        os.fdatasync(fd)
        out = time.perf_counter() - t0, time.process_time() - c0
        del blocks
        mm.close()
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def _runs(blocks):
    b = np.unique(blocks)
    return int(np.count_nonzero(np.diff(b) != 1)) + 1 if len(b) else 0


def _faults():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_minflt, r.ru_majflt])


def _cpu_model():
    from thinp.validate.timing import cpu_model

    return cpu_model() or "unknown CPU"


@pytest.mark.benchmark(group="pdata-commit")
def test_commit_after_cow(benchmark, workdir, monkeypatch):
    """Commit (sync on) after a snapshot of a 1 M-block thin took 10,000
    CoW writes, beside the bare fdatasync (and msync) of the same dirty
    blocks, timed alone (target: 2x).

    Each round snapshots the same origin again, so from the third round on
    nearly all of its 1 M data blocks reach a count >= 3 as the snapshot's
    writes shadow the leaves holding them (dm increments a shared leaf's
    children): about 900 K updates of the data ref-count tree a commit,
    as dm makes them (it makes them at each increment)."""
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

    for _ in range(2):  # the ref-count kernels compile (or load) here; counts reach 3
        setup()
        md.commit()
    md.tm.seal_dirty = recording_seal
    calls = _counting_fdatasync(monkeypatch)
    zeroing = []
    real_zero_ahead = md.tm.zero_ahead

    def zero_ahead(nr, *args, **kw):
        t0 = time.perf_counter()
        try:
            return real_zero_ahead(nr, *args, **kw)
        finally:
            zeroing[-1] += time.perf_counter() - t0

    monkeypatch.setattr(md.tm, "zero_ahead", zero_ahead)
    cpu, faults, syncs = [], [], []

    def commit():
        f0 = _faults()
        zeroing.append(0.0)
        n0 = len(calls)
        c0 = time.process_time()
        md.commit()
        cpu.append(time.process_time() - c0)
        faults.append(_faults() - f0)
        syncs.append(sum(calls[n0:]))

    zs0 = list(md.bm.zero_stats)
    benchmark.pedantic(commit, setup=setup, rounds=5, iterations=1)
    md.bm.wait_zeroing()
    # the zeroing the commits left to a thread: blocks, seconds it ran, and
    # seconds the next transactions waited for it, a round
    zb, zrun, zwait = (np.array(md.bm.zero_stats) - np.array(zs0)) / 5
    nr_syncs = len(calls) / 5
    monkeypatch.undo()
    md.tm.seal_dirty = seal
    commit_s = benchmark.stats.stats.median
    ceilings = np.array([_commit_ceilings(md, w) for w in written])
    fsync_s, msync_s = np.median(ceilings, axis=0)
    dirty = int(np.median([len(w) for w in written]))
    runs = int(np.median([_runs(w) for w in written]))
    minflt, majflt = np.median(faults, axis=0)
    fresh_s, fresh_cpu = np.median([_fresh_blocks_ceiling(os.path.join(workdir, "fresh"), dirty)
                                    for _ in range(3)], axis=0)
    ratio = commit_s / fsync_s
    times = np.array(benchmark.stats.stats.data)
    zero_s, sync_s = float(np.median(zeroing)), float(np.median(syncs))
    # the commit less its zeroing ahead (the next transaction's blocks made
    # to exist in the sparse file: a real metadata device has them)
    bare_s = float(np.median(times - np.array(zeroing)))
    benchmark.extra_info.update(zero_ahead_s=zero_s, fdatasyncs_s=sync_s, ratio_without_zeroing=bare_s / fsync_s,
                                rounds_s=times.tolist(), zero_behind_blocks=float(zb), zero_behind_s=float(zrun),
                                zero_behind_waited_s=float(zwait))
    benchmark.extra_info.update(dirty_blocks=dirty, ceiling_s=float(fsync_s), msync_s=float(msync_s), ratio=ratio,
                                ratio_msync=commit_s / msync_s, fdatasyncs=nr_syncs, cpu_s=float(np.median(cpu)),
                                majflt=float(majflt), fresh_s=float(fresh_s), fresh_cpu_s=float(fresh_cpu),
                                load=os.getloadavg()[0], cpu_model=_cpu_model())
    print(f"\n  commit of {dirty} dirty blocks ({runs} runs of adjacent blocks): median {commit_s * 1e3:.1f} ms "
          f"(CPU {np.median(cpu) * 1e3:.1f} ms, {majflt:.0f} major + {minflt:.0f} minor page faults; "
          f"{nr_syncs:.0f} fdatasyncs taking {sync_s * 1e3:.1f} ms; zeroing holes ahead of the cursor "
          f"{zero_s * 1e3:.1f} ms; without it {bare_s * 1e3:.1f} ms, {bare_s / fsync_s:.2f}x; rounds "
          f"{', '.join(f'{t * 1e3:.0f}' for t in times)} ms)"
          f"\n  zeroing behind the commit, in a thread: {zb:.0f} blocks, {zrun * 1e3:.1f} ms a round, of which "
          f"the next transaction waited {zwait * 1e3:.1f} ms"
          f"\n  ceiling, the same blocks dirtied again then synced alone: fdatasync {fsync_s * 1e3:.1f} ms "
          f"({ratio:.2f}x), one msync of their span {msync_s * 1e3:.1f} ms ({commit_s / msync_s:.2f}x)"
          f"\n  as many never-written blocks of a sparse file written through a mapping, faults included, then "
          f"fdatasync: {fresh_s * 1e3:.1f} ms (CPU {fresh_cpu * 1e3:.1f} ms; {commit_s / fresh_s:.2f}x); "
          f"load {os.getloadavg()[0]:.1f}, {_cpu_model()}")
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

    floors = []

    def setup():
        floors.append(_bare_barriers(md))
        state["vb"] += 1
        md.write_blocks(0, np.array([state["vb"]]))
        return (), {}

    calls = _counting_fdatasync(monkeypatch)
    cpu, syncs = [], []

    def commit():
        n0 = len(calls)
        _cpu_timed(md.commit, cpu)()
        syncs.append(sum(calls[n0:]))

    benchmark.pedantic(commit, setup=setup, rounds=20, iterations=1)
    nr_syncs = len(calls) / 20 - 2  # less the floor's own
    monkeypatch.undo()
    floor = float(np.median(floors))
    median = benchmark.stats.stats.median
    sync_s = float(np.median(syncs))
    benchmark.extra_info.update(barriers_s=floor, fdatasyncs=nr_syncs, cpu_s=float(np.median(cpu)),
                                fdatasyncs_s=sync_s, ratio=median / floor, load=os.getloadavg()[0],
                                cpu_model=_cpu_model())
    print(f"\n  commit of 1 mapping, {nr} metadata blocks: median {median * 1e3:.2f} ms (CPU "
          f"{np.median(cpu) * 1e3:.2f} ms), {nr_syncs:.0f} fdatasyncs taking {sync_s * 1e3:.2f} ms; two bare "
          f"barriers (superblock "
          f"rewritten, fdatasync, twice) between the rounds, median {floor * 1e3:.2f} ms: {median / floor:.2f}x; "
          f"load {os.getloadavg()[0]:.1f}")
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
    floors = []

    def setup():
        # (with sync off no flush runs between the rounds: one would leave
        # the pages the next commit writes write-protected, and it would
        # pay their faults, which sync off never does)
        if sync:
            floors.append(_bare_barriers(md))
        return (), {}

    calls = _counting_fdatasync(monkeypatch)
    cpu, syncs = [], []

    def timed_run():
        n0 = len(calls)
        _cpu_timed(run, cpu)()
        syncs.append(sum(calls[n0:]))

    benchmark.pedantic(timed_run, setup=setup, rounds=10, iterations=1)
    nr_syncs = len(calls) / 10 - (2 if sync else 0)  # less the floor's own
    monkeypatch.undo()
    # the disk's part: the commit's own fdatasyncs, timed inside it
    times = np.array(benchmark.stats.stats.data)
    sync_s = float(np.median(syncs))
    thinp_s = float(np.median(times - np.array(syncs)))
    if not sync:
        floors = [_bare_barriers(md) for _ in range(10)]
    floor = float(np.median(floors))
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(fdatasyncs=nr_syncs, barriers_s=floor, cpu_s=float(np.median(cpu)),
                                fdatasyncs_s=sync_s, without_fdatasyncs_s=thinp_s, rounds_s=times.tolist(),
                                load=os.getloadavg()[0], cpu_model=_cpu_model())
    # the floor of a crash-safe commit (sync on): two flush barriers alone
    print(f"\n  create_snap + commit, {mapped} mapped, sync={sync}: median {median * 1e3:.2f} ms (CPU "
          f"{np.median(cpu) * 1e3:.2f} ms), {nr_syncs:.0f} fdatasyncs taking {sync_s * 1e3:.2f} ms (the disk), "
          f"the rest {thinp_s * 1e3:.2f} ms (thinp); rounds {', '.join(f'{t * 1e3:.2f}' for t in times)} ms; "
          f"two bare barriers (superblock rewritten, fdatasync, twice) between the rounds, median "
          f"{floor * 1e3:.2f} ms; load {os.getloadavg()[0]:.1f}, {_cpu_model()}")
    md.sync = True
    if mapped == "1k":
        md.close(commit=False)

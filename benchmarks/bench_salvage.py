"""[metadata] benchmarks of the tree walks a big pool's tools make:
shapes() and thinp repair of a fuzzed image, on a 1 TiB thin with 16 M
mappings and a snapshot of it with 1% rewritten (about 33.5 M leaf entries,
130 K leaves).

Each is measured beside its ceiling in the same run: a bare numba pass
computing the checksum of the same blocks (the nodes walked; every block of
the image for repair's scan), plus, for repair, a bare numba store of the
salvaged (vblock -> value) pairs into a table.

Run: ``PYTHONPATH=. pytest benchmarks/bench_salvage.py --benchmark-only -s``.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest

from thinp.config import njit
from thinp.pdata.crc32c import HAS_CRC32_INSTRUCTION, TABLE8, block_crc_hw, crc32c_update8
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.pool_metadata import PoolMetadata
from thinp.thin.repair import repair
from thinp.validate.timing import cpu_model

THIN_1TIB = 1 << 24  # 64 KiB blocks
SEED = 20261207


@njit
def _crc_ceiling(blocks, bs):
    """The bare checksum of blocks ``bs`` (a walk's verified reads)."""
    m64, m32 = blocks.view(np.uint64), blocks.view(np.uint32)
    s = np.uint64(0)
    for b in bs:
        if HAS_CRC32_INSTRUCTION:
            s += np.uint64(block_crc_hw(m64, m32, b))
        else:
            s += np.uint64(crc32c_update8(TABLE8, np.uint32(0xFFFFFFFF), blocks[b], 4, 4096))
    return s


@njit
def _store_ceiling(keys, vals, n):
    """The bare store of n (vblock -> value) pairs."""
    for i in range(n):
        keys[i] = i
        vals[i] = (np.uint64(i) << np.uint64(24)) | np.uint64(1)


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(fn, *args, rounds=3):
    fn(*args)
    t = np.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args)
        t = min(t, time.perf_counter() - t0)
    return t


@pytest.fixture(scope="module")
def big():
    d = tempfile.mkdtemp(prefix="thinp-bench-salvage-")
    path = os.path.join(d, "metadata")
    md = PoolMetadata.format(path, nr_metadata_blocks=1 << 18, nr_data_blocks=THIN_1TIB + THIN_1TIB // 50,
                             data_block_sectors=128)
    md.create_thin(0)
    md.write_blocks(0, np.arange(THIN_1TIB))
    md.commit()
    md.create_snap(1, 0)
    md.commit()
    rng = np.random.default_rng(SEED)
    md.write_blocks(1, np.sort(rng.choice(THIN_1TIB, THIN_1TIB // 100, replace=False)))
    md.commit()
    md.close()
    yield d, path
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.benchmark(group="pdata-walk")
def test_shapes_16m(benchmark, big):
    _, path = big
    with DmMetadata.open(path) as md:
        sh = md.shapes()  # compile outside the timing
        nodes = np.array(sh.subtrees.blocks, dtype=np.int64)
        cpu = []

        def run():
            c0 = _cpu()
            md.shapes()
            cpu.append(_cpu() - c0)

        benchmark.pedantic(run, rounds=3, iterations=1)
        ceiling_s = _best(_crc_ceiling, md.bm.blocks, nodes)
    best = benchmark.stats.stats.min
    n = len(nodes)
    benchmark.extra_info.update(nodes_per_s=n / best, ceiling_per_s=n / ceiling_s, ratio=ceiling_s / best,
                                cpu_s=min(cpu), load=os.getloadavg()[0], cpu_model=cpu_model())
    print(f"\n  shapes() of {sh.subtrees.nr_entries} entries in {n} subtree nodes: {best:.2f} s wall, "
          f"{min(cpu):.2f} s CPU (best of 3; load {os.getloadavg()[0]:.1f}); ceiling (a bare checksum of the same "
          f"nodes) {ceiling_s:.3f} s; ratio {ceiling_s / best:.3f} by wall, {ceiling_s / min(cpu):.3f} by CPU; "
          f"{cpu_model()}")
    assert sh.subtrees.nr_entries >= THIN_1TIB
    assert sh.subtrees.nr_leaves > THIN_1TIB // 252


@pytest.mark.benchmark(group="pdata-walk")
def test_repair_fuzzed_16m(benchmark, big):
    d, path = big
    fuzzed = os.path.join(d, "fuzzed")
    out = os.path.join(d, "repaired")
    shutil.copy(path, fuzzed)
    with DmMetadata.open(path) as md:
        roots = [dv.root for dv in md.devices()]
        nodes = np.array(md.shapes().subtrees.blocks, dtype=np.int64)
        leaves = nodes[(md.bm.blocks.view(np.uint32)[nodes, 1] & 2) != 0]
    rng = np.random.default_rng(SEED)
    victims = rng.choice(np.setdiff1d(leaves, roots), 40, replace=False)
    raw = np.memmap(fuzzed, dtype=np.uint8, mode="r+")
    for b in victims.tolist():
        raw[b * 4096 + int(rng.integers(40, 4096))] ^= 0xFF
    raw.flush()
    del raw
    cpu, reps = [], []

    def setup():
        if os.path.exists(out):
            os.unlink(out)
        return (), {}

    def run():
        c0 = _cpu()
        reps.append(repair(fuzzed, out))
        cpu.append(_cpu() - c0)

    # one small repair first: compile outside the timing
    small = os.path.join(d, "small")
    PoolMetadata.format(small, nr_metadata_blocks=1024, nr_data_blocks=1000, data_block_sectors=128).close()
    repair(small, small + ".out")
    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    rep = reps[-1]
    with DmMetadata.open(fuzzed) as md:
        nb = md.bm.blocks.shape[0]
        scan_s = _best(_crc_ceiling, md.bm.blocks, np.arange(1, nb, dtype=np.int64), rounds=1)
    k = np.empty(rep.nr_mappings, dtype=np.uint64)
    v = np.empty(rep.nr_mappings, dtype=np.uint64)
    store_s = _best(_store_ceiling, k, v, rep.nr_mappings, rounds=1)
    ceiling_s = scan_s + store_s
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(mappings_per_s=rep.nr_mappings / best, ceiling_s=ceiling_s,
                                ratio=ceiling_s / best, cpu_s=cpu[-1], load=os.getloadavg()[0],
                                cpu_model=cpu_model())
    print(f"\n  thinp repair of a 1 TiB thin and its snapshot ({rep.nr_mappings} mappings salvaged, "
          f"{len(victims)} leaves fuzzed, {len(rep.damaged)} damaged nodes): {best:.1f} s wall, {cpu[-1]:.1f} s CPU "
          f"(load {os.getloadavg()[0]:.1f}); ceiling (a bare checksum of all {nb} blocks, {scan_s:.2f} s, and a "
          f"bare store of the mappings, {store_s:.2f} s) {ceiling_s:.2f} s; ratio {ceiling_s / best:.3f} by wall, "
          f"{ceiling_s / cpu[-1]:.3f} by CPU; {cpu_model()}")
    ok = subprocess.run(["thin_check", out], capture_output=True) if shutil.which("thin_check") else None
    assert ok is None or ok.returncode == 0, ok.stderr
    assert rep.nr_mappings >= 2 * THIN_1TIB - 40 * 252 * 2

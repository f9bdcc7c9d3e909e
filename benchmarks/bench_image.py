"""Loading and flattening a real-sized rootfs layer, against ``tar -tf``.

The layer is built at test time from the debootstrap minbase manifest
(``../shared/fixtures/rootfs/debian-bookworm-minbase.csv.gz``: 6,668
entries, 120,359,585 file bytes) with deterministic pseudo-random contents
(never all-zero), hardlinks for shared inode groups, devices and symlinks.

Run: ``python -m pytest benchmarks/bench_image.py --benchmark-only -s``
(``-k report`` for the one-run comparison: ``tar -tf FILE``, hashlib sha256
and ``sha256sum FILE``, verified and unverified load+flatten, with both
ratios, CPU times and the load average).  The memory checks run without
``--benchmark-only``: they are tracemalloc-only, never timed.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import resource
import shutil
import subprocess
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from thinp.image import Layer, flatten

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = (REPO_ROOT / ".." / "shared" / "fixtures" / "rootfs" / "debian-bookworm-minbase.csv.gz").resolve()
POOL_BYTES = 16 << 20


class _PoolReader(io.RawIOBase):
    """``size`` pseudo-random bytes starting at ``offset`` of a repeating pool."""

    def __init__(self, pool: bytes, offset: int, size: int):
        self.pool, self.pos, self.remaining = pool, offset % len(pool), size

    def readable(self):
        return True

    def read(self, n=-1):
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        parts = []
        while n > 0:
            step = min(n, len(self.pool) - self.pos)
            parts.append(self.pool[self.pos:self.pos + step])
            self.pos = (self.pos + step) % len(self.pool)
            self.remaining -= step
            n -= step
        return b"".join(parts)


def build_rootfs_tar(manifest: Path, out: Path) -> dict:
    pool = np.random.default_rng(20240101).integers(0, 256, POOL_BYTES, dtype=np.uint8).tobytes()
    first_of_group: dict[str, str] = {}
    nr_entries = nr_file_bytes = 0
    with gzip.open(manifest, "rt", newline="") as f, open(out, "wb") as raw, \
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for row in csv.DictReader(f):
            ti = tarfile.TarInfo(row["path"])
            ti.mode = int(row["mode"], 8)
            ti.uid, ti.gid = int(row["uid"]), int(row["gid"])
            ti.mtime = 1_700_000_000
            kind = row["type"]
            content = None
            if kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, row["target"]
            elif kind == "c":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = (int(x) for x in row["target"].split(":"))
            elif kind == "p":
                ti.type = tarfile.FIFOTYPE
            elif kind == "f":
                group = row["inode_group"]
                if group and group in first_of_group:
                    ti.type, ti.linkname = tarfile.LNKTYPE, first_of_group[group]
                else:
                    if group:
                        first_of_group[group] = row["path"]
                    ti.size = int(row["size"])
                    nr_file_bytes += ti.size
                    content = _PoolReader(pool, zlib.crc32(row["path"].encode()) * 4099, ti.size)
            else:
                raise ValueError(f"unknown type {kind!r}")
            tf.addfile(ti, content)
            nr_entries += 1
    return {"nr_entries": nr_entries, "nr_file_bytes": nr_file_bytes, "tar_bytes": out.stat().st_size}


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory):
    if not MANIFEST.exists():
        pytest.skip(f"rootfs manifest {MANIFEST} not found (shared fixtures absent)")
    out = tmp_path_factory.mktemp("bench-image") / "minbase.tar"
    stats = build_rootfs_tar(MANIFEST, out)
    assert stats["nr_entries"] == 6668
    return out, stats


def _tar_tf(path: Path) -> None:
    subprocess.run(["tar", "-tf", str(path)], check=True, stdout=subprocess.DEVNULL)


def _tar_tf_stream(path: Path) -> None:
    """``cat FILE | tar -tf -``: tar listing a stream it cannot seek, as a loader reading
    ``docker save`` from a pipe must; a second reference, not the issue's target."""
    subprocess.run(f"cat '{path}' | tar -tf -", shell=True, check=True, stdout=subprocess.DEVNULL)


def _sha256sum(path: Path) -> None:
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)


def _hashlib_sha256(path: Path) -> str:
    """hashlib sha256 over the file in 1 MiB reads: the floor for any verified load."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (tar, sha256sum)."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _best_of(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _interleaved(cands: dict, rounds: int) -> tuple[dict, dict]:
    """Best wall and CPU time of each candidate, run in turn round after round
    so that all see the same machine load."""
    wall = dict.fromkeys(cands, float("inf"))
    cpu = dict.fromkeys(cands, float("inf"))
    for fn in cands.values():
        fn()                     # warm: page cache, numba cache, imports
    for _ in range(rounds):
        for k, fn in cands.items():
            c, t = _cpu(), time.perf_counter()
            fn()
            wall[k] = min(wall[k], time.perf_counter() - t)
            cpu[k] = min(cpu[k], _cpu() - c)
    return wall, cpu


def _load_flatten(path: Path, verify: bool = True, diff_id: str | None = None):
    layer = Layer.from_path(path, diff_id=diff_id)
    fs = flatten([layer], verify=verify)
    return layer, fs


def _peak_traced(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _transient_traced(fn) -> tuple[int, int]:
    """``(peak - retained, retained)`` Python allocation of ``fn()``, its result
    kept alive: what reading needed on top of the tree it built."""
    tracemalloc.start()
    try:
        result = fn()
        current, peak = tracemalloc.get_traced_memory()
        del result
        return peak - current, current
    finally:
        tracemalloc.stop()


@pytest.mark.benchmark(group="image-layer")
def test_layer_report(benchmark, rootfs_tar):
    """Everything in one run, interleaved: ``tar -tf FILE``, sha256 (hashlib and
    ``sha256sum``), load+flatten verified (DiffID computed over all 120 MB) and
    unverified (DiffID already known, data skipped: how a driver re-reads a
    stored layer), with both ratios, CPU times, the machine's load and the
    peak Python memory of each path."""
    path, stats = rootfs_tar
    if shutil.which("tar") is None or shutil.which("sha256sum") is None:
        pytest.skip("GNU tar / coreutils not installed")
    layer, fs = _load_flatten(path)
    assert len(fs) == 6668 and layer.nr_entries == 6668
    diff_id = layer.diff_id
    assert diff_id == "sha256:" + _hashlib_sha256(path)
    cands = {
        "tar -tf FILE": lambda: _tar_tf(path),
        "cat FILE | tar -tf -": lambda: _tar_tf_stream(path),
        "sha256 (hashlib)": lambda: _hashlib_sha256(path),
        "sha256sum FILE": lambda: _sha256sum(path),
        "verified": lambda: _load_flatten(path),
        "unverified": lambda: _load_flatten(path, False, diff_id),
    }
    load_before = os.getloadavg()
    wall, cpu = _interleaved(cands, rounds=9)
    # the two short ones get more turns: on a busy machine a 15 ms run is
    # preempted often, and the best of 9 may not have had a quiet slot
    quick = ("tar -tf FILE", "unverified")
    w2, c2 = _interleaved({k: cands[k] for k in quick}, rounds=30)
    for k in quick:
        wall[k], cpu[k] = min(wall[k], w2[k]), min(cpu[k], c2[k])
    load_after = os.getloadavg()
    benchmark.pedantic(_load_flatten, args=(path, False, diff_id), rounds=5, iterations=1)
    peak_verified = _peak_traced(lambda: _load_flatten(path))
    peak_unverified = _peak_traced(lambda: _load_flatten(path, False, diff_id))
    t_tar, t_sha, t_sum = wall["tar -tf FILE"], wall["sha256 (hashlib)"], wall["sha256sum FILE"]
    ratios = {
        "verified_vs_tar_tf": wall["verified"] / t_tar,
        "verified_vs_sha256sum": wall["verified"] / t_sum,
        "verified_vs_hashlib_sha256": wall["verified"] / t_sha,
        "unverified_vs_tar_tf": wall["unverified"] / t_tar,
        # CPU ratios barely move with the machine's load; wall ratios do
        "cpu_verified_vs_tar_tf": cpu["verified"] / cpu["tar -tf FILE"],
        "cpu_verified_vs_sha256sum": cpu["verified"] / cpu["sha256sum FILE"],
        "cpu_verified_vs_hashlib_sha256": cpu["verified"] / cpu["sha256 (hashlib)"],
        "cpu_unverified_vs_tar_tf": cpu["unverified"] / cpu["tar -tf FILE"],
    }
    benchmark.extra_info.update({f"{k}_s": v for k, v in wall.items()})
    benchmark.extra_info.update({f"{k}_cpu_s": v for k, v in cpu.items()})
    benchmark.extra_info.update(ratios, load_avg_1m=(load_before[0], load_after[0]), nr_cpus=os.cpu_count(),
                                peak_traced_verified=peak_verified,
                                peak_traced_unverified=peak_unverified)
    mb = stats["tar_bytes"] / 1e6
    lines = [f"\n{stats['nr_entries']} entries, {mb:.0f} MB; load average {load_before[0]:.1f} -> "
             f"{load_after[0]:.1f} on {os.cpu_count()} CPUs; best of 9 interleaved (tar -tf FILE "
             f"and unverified: of 39)"]
    for k in cands:
        lines.append(f"  {k:24s} {wall[k] * 1e3:7.1f} ms wall {cpu[k] * 1e3:7.1f} ms CPU")
    lines.append(f"  verified:   {ratios['verified_vs_tar_tf']:.2f}x tar -tf, "
                 f"{ratios['verified_vs_sha256sum']:.2f}x sha256sum, "
                 f"{ratios['verified_vs_hashlib_sha256']:.2f}x hashlib sha256")
    lines.append(f"  unverified: {ratios['unverified_vs_tar_tf']:.2f}x tar -tf")
    lines.append(f"  CPU time:   verified {ratios['cpu_verified_vs_tar_tf']:.2f}x tar -tf, "
                 f"{ratios['cpu_verified_vs_sha256sum']:.2f}x sha256sum, "
                 f"{ratios['cpu_verified_vs_hashlib_sha256']:.2f}x hashlib sha256; "
                 f"unverified {ratios['cpu_unverified_vs_tar_tf']:.2f}x tar -tf")
    lines.append(f"  peak traced memory: verified {peak_verified / 2**20:.1f} MiB, "
                 f"unverified {peak_unverified / 2**20:.1f} MiB")
    print("\n".join(lines))


@pytest.mark.benchmark(group="image-layer")
def test_load_and_flatten_verified(benchmark, rootfs_tar):
    """DiffID verified (sha256 of all 120 MB), every header checked, tree merged."""
    path, _ = rootfs_tar
    layer, fs = _load_flatten(path)
    assert len(fs) == 6668 and layer.nr_entries == 6668
    benchmark.pedantic(_load_flatten, args=(path,), rounds=5, iterations=1)


@pytest.mark.benchmark(group="image-layer")
def test_flatten_unverified(benchmark, rootfs_tar):
    """Listing and merging only (DiffID already known, so data is skipped)."""
    path, _ = rootfs_tar
    diff_id = Layer.from_path(path).scan().diff_id
    benchmark.pedantic(_load_flatten, args=(path, False, diff_id), rounds=5, iterations=1)


@pytest.mark.benchmark(group="image-layer")
def test_sha256_floor(benchmark, rootfs_tar):
    """hashlib sha256 over the same bytes: the floor for any verified load."""
    path, _ = rootfs_tar
    benchmark.pedantic(_hashlib_sha256, args=(path,), rounds=5, iterations=1)


@pytest.mark.benchmark(group="image-layer")
def test_tar_tf(benchmark, rootfs_tar):
    path, _ = rootfs_tar
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    benchmark.pedantic(_tar_tf, args=(path,), rounds=5, iterations=1)


@pytest.mark.parametrize("verify", [True, False])
def test_memory_does_not_grow_with_layer_size(rootfs_tar, tmp_path, verify):
    """The Python memory that reading needs beyond the tree it builds (peak
    minus what the result retains) is the same for a 30 MB prefix of the
    layer (re-terminated) as for all 120 MB: streaming, flat in layer size."""
    path, stats = rootfs_tar
    small = tmp_path / "prefix.tar"
    with open(path, "rb") as src, open(small, "wb") as out, tarfile.open(fileobj=src) as tf:
        cut = 0
        for m in tf:
            if m.offset >= 30 << 20:
                cut = m.offset
                break
        src.seek(0)
        out.write(src.read(cut) + b"\0" * 1024)
    transient, retained = {}, {}
    for p in (small, path):
        diff_id = None if verify else Layer.from_path(p).scan().diff_id
        _load_flatten(p, verify, diff_id)     # warm
        size = p.stat().st_size
        transient[size], retained[size] = _transient_traced(lambda: _load_flatten(p, verify, diff_id))
    print(f"\n{'verified' if verify else 'unverified'}: " + ", ".join(
        f"{k / 2**20:.0f} MiB layer: reading {transient[k] / 2**20:.2f} MiB, tree {retained[k] / 2**20:.1f} MiB"
        for k in transient))
    big, little = path.stat().st_size, small.stat().st_size
    assert big > 3 * little
    assert transient[big] < transient[little] + (1 << 20)
    assert transient[big] < 4 << 20

"""Loading and flattening a real-sized rootfs layer, against ``tar -tf``.

The layer is built at test time from the debootstrap minbase manifest
(``../shared/fixtures/rootfs/debian-bookworm-minbase.csv.gz``: 6,668
entries, 120,359,585 file bytes) with deterministic pseudo-random contents
(never all-zero), hardlinks for shared inode groups, devices and symlinks.

Run: ``python -m pytest benchmarks/bench_image.py --benchmark-only -s``
"""
from __future__ import annotations

import csv
import gzip
import io
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


def _best_of(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _load_flatten(path: Path, verify: bool = True, diff_id: str | None = None):
    layer = Layer.from_path(path, diff_id=diff_id)
    fs = flatten([layer], verify=verify)
    return layer, fs


@pytest.mark.benchmark(group="image-layer")
def test_load_and_flatten_verified(benchmark, rootfs_tar):
    """DiffID verified (sha256 of all 120 MB), every header checked, tree merged."""
    path, stats = rootfs_tar
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    _tar_tf(path)            # warm the page cache for both sides
    layer, fs = _load_flatten(path)
    assert len(fs) == 6668 and layer.nr_entries == 6668
    t_tar = _best_of(lambda: _tar_tf(path), 5)
    t_stream = _best_of(lambda: _tar_tf_stream(path), 5)
    benchmark.pedantic(_load_flatten, args=(path,), rounds=5, iterations=1)
    t_thinp = benchmark.stats.stats.min
    ratio = t_thinp / t_tar
    mb = stats["tar_bytes"] / 1e6
    benchmark.extra_info.update(tar_tf_s=t_tar, ratio_vs_tar_tf=ratio, tar_mb=mb,
                                tar_tf_stream_s=t_stream, ratio_vs_tar_tf_stream=t_thinp / t_stream)
    print(f"\nload+flatten (verified): {t_thinp*1e3:.1f} ms ({mb / t_thinp:.0f} MB/s, "
          f"{stats['nr_entries'] / t_thinp:.0f} entries/s); tar -tf FILE: {t_tar*1e3:.1f} ms, "
          f"ratio {ratio:.2f}x; cat FILE | tar -tf -: {t_stream*1e3:.1f} ms, "
          f"ratio {t_thinp / t_stream:.2f}x")


@pytest.mark.benchmark(group="image-layer")
def test_flatten_unverified(benchmark, rootfs_tar):
    """Listing and merging only (DiffID already known, so data is seeked over),
    the same work ``tar -tf`` does; this is how a driver re-reads a loaded layer."""
    path, stats = rootfs_tar
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    diff_id = Layer.from_path(path).scan().diff_id
    _tar_tf(path)
    t_tar = _best_of(lambda: _tar_tf(path), 5)
    benchmark.pedantic(_load_flatten, args=(path, False, diff_id), rounds=5, iterations=1)
    t_thinp = benchmark.stats.stats.min
    ratio = t_thinp / t_tar
    benchmark.extra_info.update(tar_tf_s=t_tar, ratio_vs_tar_tf=ratio)
    print(f"\nflatten (no digest): {t_thinp*1e3:.1f} ms; tar -tf: {t_tar*1e3:.1f} ms; ratio {ratio:.2f}x")


@pytest.mark.benchmark(group="image-layer")
def test_sha256_floor(benchmark, rootfs_tar):
    """hashlib sha256 over the same bytes: the floor for any verified load."""
    import hashlib
    path, _ = rootfs_tar

    def digest():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    benchmark.pedantic(digest, rounds=5, iterations=1)


@pytest.mark.benchmark(group="image-layer")
def test_tar_tf(benchmark, rootfs_tar):
    path, _ = rootfs_tar
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    benchmark.pedantic(_tar_tf, args=(path,), rounds=5, iterations=1)


def test_memory_does_not_grow_with_layer_size(rootfs_tar):
    """Peak Python allocation while verifying+flattening 120 MB stays a few MiB."""
    path, stats = rootfs_tar
    tracemalloc.start()
    try:
        _load_flatten(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\npeak traced memory: {peak / 2**20:.1f} MiB for a {stats['tar_bytes'] / 2**20:.0f} MiB layer")
    assert peak < 24 << 20

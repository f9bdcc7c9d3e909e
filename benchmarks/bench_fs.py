"""File-layer benchmarks (pytest-benchmark).

    python -m pytest benchmarks/bench_fs.py --benchmark-only
"""
import pytest

from thinp.blockdev import PlainDevice
from thinp.fs import mkfs
from thinp.fs.populate import wl_rootfs
from thinp.validate.fixtures import ROOTFS_MANIFEST, fixtures_dir, load_manifest
from thinp.validate.target import SimTarget

FSTYPES = ["ext4", "xfs"]


def _warm():
    fs = mkfs(PlainDevice("1G"), "ext4")
    fs.write("w", 0, 100000)
    fs.umount()
    fs.fstrim()


@pytest.mark.benchmark(group="fs-mkfs")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_mkfs_10g(benchmark, fstype):
    _warm()
    fs = benchmark.pedantic(lambda: mkfs(PlainDevice("10G"), fstype), rounds=5, iterations=1)
    print(f"\nmkfs {fstype} 10 GiB: {1 / benchmark.stats['mean']:.1f} ops/s")
    assert fs.nr_blocks == 2621440


@pytest.mark.benchmark(group="fs-rootfs")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_rootfs_laydown(benchmark, fstype):
    path = fixtures_dir() / ROOTFS_MANIFEST
    if not path.exists():
        pytest.skip(f"{path} missing")
    rows = load_manifest(path)
    _warm()

    def setup():
        return (SimTarget(mkfs(PlainDevice("10G"), fstype)),), {}

    def run(t):
        wl_rootfs(t, rows)
        t.fs.umount()

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    print(f"\nrootfs {fstype}: {len(rows) / benchmark.stats['mean']:.0f} entries/s")
    assert benchmark.stats["mean"] < 5.0


@pytest.mark.benchmark(group="fs-smallfiles")
@pytest.mark.parametrize("fstype", FSTYPES)
def test_100k_small_file_creates(benchmark, fstype):
    _warm()
    n = 100_000

    def setup():
        fs = mkfs(PlainDevice("10G"), fstype)
        for d in range(1000):
            fs.mkdir(f"d{d}")
        return (fs,), {}

    def run(fs):
        for i in range(n):
            p = f"d{i % 1000}/f{i}"
            fs.create(p)
            fs.write(p, 0, 1 + (i * 7919) % 8192)
        fs.umount()

    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    print(f"\n{fstype}: {n / benchmark.stats['mean']:.0f} creates/s")

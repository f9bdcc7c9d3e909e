"""With SidecarFile.RIDE_ON_METADATA_FLUSH on (off by default), the sidecar
slot's flush rides on the metadata's first barrier where one
device flush covers both files (ext4 or xfs on one block device): a commit
with sync on then flushes only the metadata file, twice (the second behind
the commit's bookkeeping), the slot having been written back before the
first.  Elsewhere, and for
the first synced write of a sidecar file (its blocks may not be allocated
yet), the slot gets an fdatasync of its own."""
from __future__ import annotations

import os
import threading

import pytest

import thinp
from thinp.pdata import block
from thinp.thin import sidecar

BS = 64 << 10


def _flush_log(monkeypatch):
    """Every fdatasync/fsync and written_back call, as (name, file name)."""
    log = []
    lock = threading.Lock()

    def record(name, fn):
        def call(fd, *a):
            with lock:
                log.append((name, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            return fn(fd, *a)
        return call

    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", record("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", record("fsync", os.fsync))
    monkeypatch.setattr(sidecar, "written_back", record("written_back", block.written_back))
    behind = block.BlockManager.flush_behind

    def flush_behind(bm):
        record("flush_behind", lambda fd: None)(bm.fd)
        with monkeypatch.context() as m:  # (its thread's fdatasync is this, logged once)
            m.setattr(block, "_fdatasync", real)
            return behind(bm)

    monkeypatch.setattr(block.BlockManager, "flush_behind", flush_behind)
    return log


def _covered_fs(tmp_path) -> bool:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return block.flush_covers(fd, fd)
    finally:
        os.close(fd)


def test_synced_commit_flushes_the_device_twice_where_one_flush_covers_both(tmp_path, monkeypatch):
    if not _covered_fs(tmp_path):
        pytest.skip("the test directory is not on ext4/xfs over a block device")
    monkeypatch.setattr(sidecar.SidecarFile, "RIDE_ON_METADATA_FLUSH", True)
    p = tmp_path / "p"
    with thinp.ThinPool.create(p, "1G", sync=True) as pool:
        pool.create_thin(1, "256M")
        pool.device(1).write(0, 4 * BS)
        pool.commit()  # the sidecar's first synced write: its own fdatasync
        log = _flush_log(monkeypatch)
        pool.create_snap(2, 1)
        # the slot written back, then dm's two barriers on the metadata file
        # (the superblock's flush runs behind the commit's bookkeeping)
        assert log == [("written_back", "pool.json"), ("fdatasync", "metadata"), ("flush_behind", "metadata")]
        assert pool._sidecar.covered
        log.clear()
        pool.device(2).write(0, BS)  # CoW: a mapping commit rewrites the slot too
        pool.commit()
        assert log == [("written_back", "pool.json"), ("fdatasync", "metadata"), ("flush_behind", "metadata")]
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2] and pool.device(2).mapped_blocks == 4


@pytest.mark.parametrize("ride", [True, False], ids=["ride", "default"])
def test_first_synced_write_and_unknown_file_systems_fdatasync_the_slot(tmp_path, monkeypatch, ride):
    monkeypatch.setattr(sidecar.SidecarFile, "RIDE_ON_METADATA_FLUSH", ride)
    p = tmp_path / "p"
    with thinp.ThinPool.create(p, "1G", sync=True) as pool:
        log = _flush_log(monkeypatch)
        pool.create_thin(1, "256M")  # the sidecar file as the creation left it: fdatasync
        assert ("fdatasync", "pool.json") in log and not pool._sidecar.covered
        if ride:  # (by default the slot never rides)
            monkeypatch.setattr(sidecar, "flush_covers", lambda fd, other: False)
            pool._sidecar.flush_with(pool._dm.bm.fd)
        log.clear()
        pool.create_snap(2, 1)
        assert sorted(log) == [("fdatasync", "metadata"), ("fdatasync", "pool.json"), ("flush_behind", "metadata")]
        assert not pool._sidecar.covered


def test_flush_covers_only_one_known_block_device(tmp_path):
    a = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.path.isdir("/dev/shm"):
            b = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert not block.flush_covers(a, b)  # two devices (and tmpfs has no device flush)
            finally:
                os.close(b)
        covered = block.flush_covers(a, a)
        mounts = open("/proc/self/mountinfo").read().splitlines()
        dev = os.fstat(a).st_dev
        fs = [line.partition(" - ")[2].split()[0] for line in mounts
              if line.split()[2] == f"{os.major(dev)}:{os.minor(dev)}"]
        assert covered == bool(fs and fs[0] in block.DEVICE_FLUSHING_FS)
    finally:
        os.close(a)


#: the child: one synced commit (the sidecar file is then known allocated),
#: then kill -9 itself once the next commit's slot is written back, before
#: the metadata's flush and its superblock
CHILD = """
import os, signal, sys
import thinp
from thinp.thin import sidecar

real = sidecar.SidecarFile.write
sidecar.SidecarFile.RIDE_ON_METADATA_FLUSH = True

def write(self, side, sync):
    wait = real(self, side, sync)
    assert self.covered
    wait()
    os.kill(os.getpid(), signal.SIGKILL)

pool = thinp.ThinPool.open(sys.argv[1])
pool.create_snap(3, 1)
sidecar.SidecarFile.write = write
pool.create_snap(4, 1)
"""


def test_kill9_after_a_covered_slot_is_written_back(tmp_path):
    import signal
    import subprocess
    import sys

    from .test_sidecar_crash import ROOT

    if not _covered_fs(tmp_path):
        pytest.skip("the test directory is not on ext4/xfs over a block device")
    p = tmp_path / "p"
    with thinp.ThinPool.create(p, "1G", sync=True) as pool:
        pool.create_thin(1, "256M")
        pool.device(1).write(0, 8 * BS)
        pool.create_snap(2, 1)
    r = subprocess.run([sys.executable, "-c", CHILD, str(p)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert sorted(sidecar.read_sidecar(p)["devices"]) == ["1", "2", "3", "4"]  # the slot of the lost commit
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2, 3] and pool.device(3).mapped_blocks == 8
        pool.create_snap(4, 1)
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2, 3, 4]

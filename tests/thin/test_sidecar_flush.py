"""Which flushes a synced commit makes: the sidecar slot's fdatasync (behind,
beside the metadata's pre-superblock one), the metadata's, then the
superblock's (behind the commit's bookkeeping); and a process killed once
the slot is durable, before the superblock, reopens at the last commit."""
from __future__ import annotations

import os
import threading

import thinp
from thinp.pdata import block

BS = 64 << 10


def _flush_log(monkeypatch):
    """Every fdatasync/fsync and flush behind of the metadata, as (name, file name)."""
    log = []
    lock = threading.Lock()

    def record(name, fn):
        def call(fd, *a):
            with lock:
                log.append((name, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            return fn(fd, *a)
        return call

    monkeypatch.setattr(os, "fdatasync", record("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", record("fsync", os.fsync))
    behind = block.BlockManager.flush_behind

    def flush_behind(bm, *a, **k):
        # (its flush thread's fdatasync is logged too, once the commit's
        # wait for it has returned)
        record("flush_behind", lambda fd: None)(bm.fd)
        return behind(bm, *a, **k)

    monkeypatch.setattr(block.BlockManager, "flush_behind", flush_behind)
    return log


#: a synced commit's flushes: the slot's, barrier 1 and the superblock's
#: barrier 2, both of those on a flush thread (flush_behind)
BARRIERS = [("fdatasync", "metadata"), ("fdatasync", "metadata"), ("fdatasync", "pool.json"),
            ("flush_behind", "metadata"), ("flush_behind", "metadata")]


def test_synced_commits_fdatasync_the_slot_beside_the_metadata(tmp_path, monkeypatch):
    p = tmp_path / "p"
    with thinp.ThinPool.create(p, "1G", sync=True) as pool:
        log = _flush_log(monkeypatch)
        pool.create_thin(1, "256M")  # the sidecar file as the creation left it: fdatasync
        assert ("fdatasync", "pool.json") in log
        pool.device(1).write(0, 4 * BS)
        pool.commit()
        log.clear()
        pool.create_snap(2, 1)
        assert sorted(log) == BARRIERS
        log.clear()
        pool.device(2).write(0, BS)  # CoW: a mapping commit rewrites the slot too
        pool.commit()
        assert sorted(log) == BARRIERS
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2] and pool.device(2).mapped_blocks == 4


#: the child: one synced commit, then kill -9 itself once the next commit's
#: slot is durable (its flush waited for), before the superblock
CHILD = """
import os, signal, sys
import thinp
from thinp.thin import sidecar

real = sidecar.SidecarFile.write

def write(self, side, sync):
    wait = real(self, side, sync)
    wait()
    os.kill(os.getpid(), signal.SIGKILL)

pool = thinp.ThinPool.open(sys.argv[1])
pool.create_snap(3, 1)
sidecar.SidecarFile.write = write
pool.create_snap(4, 1)
"""


def test_kill9_after_the_slot_is_durable_reopens_at_the_last_commit(tmp_path):
    import signal
    import subprocess
    import sys

    from thinp.thin import sidecar

    from .test_sidecar_crash import ROOT

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

"""A process killed between the sidecar's write and the superblock's: the
new slot holds the commit that never landed (LVM's pending change), the
other slot the one that did, and the open goes back to it."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

import thinp
from thinp.thin.sidecar import read_sidecar, read_slots

from .dm_fixtures import real_tool

ROOT = pathlib.Path(__file__).resolve().parents[2]
BS = 64 << 10

#: the child: open the pool, and once the next commit's sidecar slot is
#: written (and, sync on, flushed) kill -9 itself, before the superblock
CHILD = """
import os, signal, sys
import thinp
from thinp.thin import sidecar

real = sidecar.SidecarFile.write

def write(self, side, sync):
    wait = real(self, side, sync)
    if wait is not None:
        wait()
    os.kill(os.getpid(), signal.SIGKILL)

pool = thinp.ThinPool.open(sys.argv[1])
sidecar.SidecarFile.write = write
getattr(pool, sys.argv[2])(*map(int, sys.argv[3:]))
"""


def _kill_in_commit(path, *call):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), *map(str, call)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_kill9_between_sidecar_and_superblock(tmp_path, sync):
    p = tmp_path / "p"
    with thinp.ThinPool.create(p, "1G", sync=sync) as pool:
        pool.create_thin(1, "256M")
        pool.device(1).write(0, 8 * BS)
        pool.create_snap(2, 1)
    superblock = (p / "metadata").read_bytes()[:4096]
    _kill_in_commit(p, "create_snap", 3, 1)
    # the commit's other blocks are out, its superblock is not; the
    # sidecar's newest slot is the commit that never landed (the intent)
    assert (p / "metadata").read_bytes()[:4096] == superblock
    side = read_sidecar(p)
    assert sorted(side["devices"]) == ["1", "2", "3"]
    assert sorted(side["previous"]["devices"]) == ["1", "2"]
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2]
        assert pool.device(2).mapped_blocks == 8
        pool.create_snap(3, 1)                  # the next commit takes the stale slot
    out = subprocess.run([real_tool("thin_check"), str(p / "metadata")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    slots, size = read_slots(p)
    assert size >= 4096 and all(s is not None for s in slots)
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2, 3] and pool.device(3).size == 256 << 20
    # a delete killed the same way goes back too
    _kill_in_commit(p, "delete", 2)
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2, 3]

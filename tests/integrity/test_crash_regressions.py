"""Crash-consistency regressions found by the kill -9 test, made deterministic."""
from __future__ import annotations

import os

from thinp.thin import ThinPool

BS = 64 * 1024


def test_passdown_waits_for_the_commit(tmp_path):
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=64 * BS, payload=True, sync=False, discard_passdown=True)
    dev = pool.create_thin(0, 16 * BS)
    dev.write(0, b"x" * BS)
    pool.commit()
    pb = dev.lookup(0)[0]
    dev.discard(0, BS)
    with open(os.path.join(path, "data"), "rb") as f:
        f.seek(pb * BS)
        assert f.read(BS) == b"x" * BS, "discarded block punched before the commit that frees it"
    assert pool.status().nr_passdown == 1
    pool.commit()
    with open(os.path.join(path, "data"), "rb") as f:
        f.seek(pb * BS)
        assert f.read(BS) == bytes(BS), "freed block not punched after the commit"
    pool.close()


def _crash(pool):
    """Drop the pool as a kill -9 would: no commit on the way out."""
    pool._failed = True
    pool.close()


def test_commit_after_reopen_rewrites_pages_the_last_transaction_changed(tmp_path):
    """kill after commit g, reopen, commit g+1 elsewhere, kill: the space
    map copy g+1 reads must include g's changes."""
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=4096 * BS, sync=False)
    pool.create_thin(0, 16 * BS)
    pool.device(0).write(0, BS)  # data space-map page 0 changes in this transaction
    pool.commit()
    _crash(pool)
    pool = ThinPool.open(path)
    pool.create_thin(1, 16 * BS)  # a commit that changes no data count
    _crash(pool)
    with ThinPool.open(path) as pool:
        assert pool.device(0).mapped_blocks == 1 and 1 in pool.devices()

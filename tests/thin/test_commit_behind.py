"""A replay's periodic commit whose end (first barrier, superblock, second
barrier) runs behind while the next transaction goes on: until it is
durable, the metadata file as a kill -9 would leave it is the last durable
commit, whole; the next transaction never writes a block that commit still
references (PoolMetadata.commit's ``behind``)."""
from __future__ import annotations

import shutil
import subprocess
import threading

import numpy as np
import pytest

import thinp
from thinp.pdata.block import FlushBehind
from thinp.thin import pool as P
from thinp.thin import pool_metadata as PM
from thinp.thin.dm_metadata import DmMetadata
from thinp.trace import TRACE_DTYPE, WRITE

BS = 64 * 1024


def _sequential(n):
    t = np.zeros(n, dtype=TRACE_DTYPE)
    t["dev_id"] = 0
    t["op"] = WRITE
    t["offset"] = np.arange(n, dtype=np.uint64) * BS
    t["length"] = 4096
    return t


@pytest.mark.parametrize("split", ["current", "halves"])
def test_image_while_a_commit_runs_behind_is_the_last_durable_one(tmp_path, monkeypatch, split):
    # each commit's end waits until someone waits for it: everything the
    # next transaction does before then happens with it not yet durable
    gate = threading.Event()
    real_end, real_wait = PM._commit_end, FlushBehind.wait

    def held_end(*a):
        job = real_end(*a)

        def run():
            gate.wait(30)
            job()
        return run

    def wait(self):
        gate.set()
        try:
            real_wait(self)
        finally:
            gate.clear()

    monkeypatch.setattr(PM, "_commit_end", held_end)
    monkeypatch.setattr(FlushBehind, "wait", wait)

    commits = []  # (trans_id, blocks mapped) of each commit, made or under way
    real_commit = P.ThinPool._commit

    def commit(self, *a, **kw):
        real_commit(self, *a, **kw)
        commits.append((self._dm.sb.trans_id, int(self._md.dv.mapped[0])))

    snaps = []  # (the last durable commit, the file's bytes then)
    real_apply = P.ThinPool._apply_log_kernel

    def apply(self, log, n, reserve, tool, res):
        r = real_apply(self, log, n, reserve, tool, res)
        if self._in_held and not self._dm.bm.flush_done() and len(snaps) < 4:
            # a run of rows applied while the last commit is behind: the
            # file as a kill -9 now leaves it (page cache and all)
            with open(path / "metadata", "rb") as f:
                snaps.append((commits[-2], f.read()))
        return r

    monkeypatch.setattr(P.ThinPool, "_commit", commit)
    monkeypatch.setattr(P.ThinPool, "_apply_log_kernel", apply)
    path = tmp_path / "p"
    pool = thinp.ThinPool.create(str(path), "4G", commit_interval=3000, split=split)
    pool.create_thin(0, "1G")
    assert pool.replay(_sequential(15_000))["nr_provisioned"] == 15_000
    assert [m for _, m in commits[-4:]] == [3000, 6000, 9000, 12000]
    pool.close()
    if split == "current":
        assert len(snaps) == 4  # (4 commits behind; each next transaction's rows go in runs)
    tool = shutil.which("thin_check")
    for i, ((trans, mapped), image) in enumerate(snaps):
        f = tmp_path / f"snap{i}"
        f.write_bytes(image)
        with DmMetadata.open(str(f)) as r:
            assert r.check().ok
            assert r.sb.trans_id == trans
            (d,) = r.devices()
            v, _, _ = r.mappings(d)
            assert len(v) == mapped and (len(v) == 0 or int(v.max()) == mapped - 1)
        if tool:
            assert subprocess.run([tool, str(f)], capture_output=True).returncode == 0


def test_the_next_transaction_keeps_clear_of_what_the_commit_freed(tmp_path):
    """behind_room counts the free blocks from the cursor up to the first
    block the commit freed; the rows of a replay go in runs that cannot
    reach it (META_PER_CHANGE a row), and with no room a run waits."""
    pool = thinp.ThinPool.create(str(tmp_path / "p"), "64G", commit_interval=0)
    pool.create_thin(0, "16G")
    pool.replay(_sequential(5000))
    dm = pool._dm
    tm = dm.tm
    freed = tm.freed_by_commit()
    assert len(freed)  # (the leaves' and space maps' shadows replaced blocks of the last commit)
    pool.commit()
    # the cursor is past every block the transaction took; the freed ones
    # lie behind it, reached only after the wrap
    assert tm.begin > int(freed.max())
    free = tm.free
    room = tm.allocs_before(freed)
    assert room == int(np.count_nonzero(free[tm.begin:])) + int(np.count_nonzero(free[:int(freed[0])]))
    tm.rolling_cursor = False  # (before 5.14 the search stops at the end)
    assert tm.allocs_before(freed) == -1
    tm.rolling_cursor = True
    cursor, tm.begin = tm.begin, int(freed[0])
    assert tm.allocs_before(freed) == 0
    tm.begin = cursor
    pool.close()

"""The superblock's flush run behind (FlushBehind: an fdatasync on a flush
thread): the same bytes on disk as a synchronous commit, errors surface at
the wait, and nothing is left pending at close."""
from __future__ import annotations

import os

import numpy as np
import pytest

from thinp.pdata.block import FlushBehind
from thinp.thin.pool_metadata import PoolMetadata


def _pool(path):
    md = PoolMetadata.format(str(path), nr_metadata_blocks=4096, nr_data_blocks=1 << 16, data_block_sectors=128)
    md.sync = True
    md.create_thin(0)
    return md


def test_commit_with_its_superblock_flush_behind_writes_the_same_bytes(tmp_path):
    a, b = _pool(tmp_path / "a"), _pool(tmp_path / "b")
    rng = np.random.default_rng(3)
    for step in range(4):
        blocks = rng.choice(1 << 15, 500, replace=False)
        for md in (a, b):
            md.write_blocks(0, blocks)
            md.create_snap(step + 1, 0)
        a.commit()
        b.commit(durable_later=True)
        b.wait_durable()
        assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    b.commit(durable_later=True)  # left running: close waits for it
    b.close(commit=False)
    a.close(commit=False)


def test_a_failed_flush_behind_raises(tmp_path):
    r, w = os.pipe()  # no fsync there: EINVAL, at the submit or the wait
    fb = FlushBehind()
    try:
        with pytest.raises(OSError):
            fb.start(w)
            fb.wait()
        fb.wait()  # nothing pending any more
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"x" * 4096, 0)
            fb.start(fd)
            fb.start(fd)  # the first is waited for before the second begins
            fb.wait()
        finally:
            os.close(fd)
    finally:
        fb.close()
        os.close(r)
        os.close(w)


def test_flush_threads_are_reused(tmp_path):
    """A waited-for flush gives its thread back: two flushes at a time, many
    times over, take two threads, not one each."""
    import threading

    fds = [os.open(tmp_path / n, os.O_RDWR | os.O_CREAT, 0o644) for n in "ab"]
    fbs = [FlushBehind(), FlushBehind()]
    try:
        fbs[0].start(fds[0])
        fbs[1].start(fds[1], handoff=False)
        for fb in fbs:
            fb.wait()
        before = sum(t.name == "thinp-flush" for t in threading.enumerate())
        for _ in range(20):
            for fd, fb in zip(fds, fbs):
                os.pwrite(fd, b"x" * 4096, 0)
                fb.start(fd, handoff=False)
            for fb in fbs:
                fb.wait()
        assert sum(t.name == "thinp-flush" for t in threading.enumerate()) == before
    finally:
        for fd, fb in zip(fds, fbs):
            fb.close()
            os.close(fd)

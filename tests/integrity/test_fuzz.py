"""Fuzz the metadata: flipped bytes and truncations of a populated pool give
MetadataCorruptError, or open and read exactly as before (a flip in an
unused block or the older superblock).  Never a crash, hang or wrong read.

Cases run in a worker process so a segfault or hang is a clean failure.
``scripts/fuzz_metadata.py`` runs the same case function for longer.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinp.config import METADATA_BLOCK_SIZE

from thinp.thin import ThinPool

from .fuzzcase import run_case, snapshot
from .populate import populate

NR_CASES = 300


@pytest.fixture(scope="module")
def fuzz_pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    src = str(base / "pool")
    pool = populate(src, seed=3, metadata_size="2M")
    pool.reserve_metadata_snap()  # a held snapshot too
    pool.close()
    previous = snapshot(src)
    pool = ThinPool.open(src)
    pool.device(0).write(0, 4096)  # a CoW: the last commit differs from the one before
    pool.close()
    from thinp.thin.dm_metadata import DmMetadata

    with DmMetadata.open(os.path.join(src, "metadata")) as md:
        used = np.flatnonzero(md.metadata_counts() > 0)
        size = md.sb.metadata_nr_blocks * METADATA_BLOCK_SIZE
    ctx = multiprocessing.get_context("forkserver")
    ex = cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx)
    yield src, str(base), used, size, (snapshot(src), previous), ex
    ex.shutdown(wait=True, cancel_futures=True)


@st.composite
def mutation(draw, used, size):
    if draw(st.integers(0, 9)) == 0:
        return [], draw(st.integers(0, size - 1))
    flips = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            block = int(used[draw(st.integers(0, len(used) - 1))])
            off = block * METADATA_BLOCK_SIZE + draw(st.integers(0, METADATA_BLOCK_SIZE - 1))
        else:
            off = draw(st.integers(0, size - 1))
        flips.append((off, draw(st.integers(1, 255))))
    return flips, None


def test_fuzz_metadata(fuzz_pool):
    src, base, used, size, expected, ex = fuzz_pool
    outcomes = {"corrupt": 0, "ok": 0, "rollback": 0, "inconsistent": 0}
    counter = [0]

    @settings(max_examples=NR_CASES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutation(used, size))
    def one(case):
        flips, trunc = case
        counter[0] += 1
        work = os.path.join(base, f"case{counter[0] % 4}")
        fut = ex.submit(run_case, src, work, flips, trunc, expected)
        try:
            res = fut.result(timeout=120)
        except cf.process.BrokenProcessPool:
            pytest.fail(f"worker crashed (segfault?) on flips={flips} truncate={trunc}")
        except cf.TimeoutError:
            pytest.fail(f"open/check hung on flips={flips} truncate={trunc}")
        outcomes[res.split(":")[0]] += 1

    one()
    assert counter[0] >= NR_CASES
    # most mutations land in live blocks and must be caught
    assert outcomes["corrupt"] > NR_CASES // 3, outcomes
    assert outcomes["inconsistent"] == 0, outcomes
    print("fuzz outcomes:", outcomes)

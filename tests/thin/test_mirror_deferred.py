"""apply_log's deferred rows write exactly what its row-by-row apply writes.

A row flagged LOG_NEW_KEY (a provision: the vblock was unmapped) whose
leaf dm's insert only descends to waits for one sorted merge into that
leaf (_mirror's WAIT).  Hypothesis draws random logs -- provisions (runs
up or down, or random) into a small or wide key space (leaves fill, rebalance and split), overwrites of
mapped blocks (replacements, CoW after a snapshot), discards, several
devices, snapshots and commits between logs, near the metadata reserve
or not -- and applies each twice: with the flags, and with them masked
(every row through dm's insert in request order, which test_mirror checks
against the Python btree).  The two runs' apply_log results (rows done,
the row where free metadata crossed the low water mark or reached the
reserve, mappings added and removed) and every commit's image must be
equal, byte for byte.  Rows may also wait across calls (apply_log_kept,
as ThinPool's overlapped logs do): each log cut into pieces applied one
after the other, merged only before the commit, writes those images too.
"""
from __future__ import annotations

import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinp.thin import _kernels as TK
from thinp.thin import _mirror as MIR
from thinp.thin.format import pack_block_time
from thinp.thin.pool_metadata import PoolMetadata

from ._mirror_call import apply_log

NR_DATA = 400_000


def _logs(seed: int, space: int, new_share: float, nlogs: int) -> list:
    """(log, snapshot before it or None) for each step: rows flagged as the
    replay kernel flags them (LOG_NEW_KEY exactly when the vblock is
    unmapped in that device), the mapped sets followed through
    snapshots and discards."""
    rng = random.Random(seed)
    mapped = {0: set(), 7: set()}
    next_p = 0
    steps = []
    for step in range(nlogs):
        snap = None
        if step % 3 == 2:
            snap = (100 + step, rng.choice(sorted(mapped)))
            mapped[snap[0]] = set(mapped[snap[1]])
        rows = []
        for op in range(rng.randrange(1, 6)):
            dev = rng.choice(sorted(mapped))
            kind = rng.random()
            if kind < 0.12 and mapped[dev]:  # a discard (its own request)
                b = rng.randrange(space)
                for vb in range(b, min(space, b + rng.randrange(1, 300))):
                    if vb in mapped[dev]:
                        mapped[dev].discard(vb)
                        rows.append((dev, vb, -1 - (next_p << TK.UNMAP_BLOCK_SHIFT), op))
                continue
            seq = kind < 0.3
            # (ascending runs and descending ones: a leaf's waiting rows
            # are sorted in its merge, fastest for ascending order)
            sign = -1 if kind < 0.2 else 1
            b = rng.randrange(space)
            for i in range(rng.randrange(1, 1200)):
                if seq:
                    vb = (b + sign * i) % space
                elif mapped[dev] and rng.random() > new_share:
                    vb = rng.choice(sorted(mapped[dev])) if len(mapped[dev]) < 64 else rng.randrange(space)
                else:
                    vb = rng.randrange(space)
                new = vb not in mapped[dev]
                mapped[dev].add(vb)
                rows.append((dev, vb, pack_block_time(next_p % NR_DATA, step), op | (TK.LOG_NEW_KEY if new else 0)))
                next_p += 1
        steps.append((np.array(rows, dtype=np.int64).reshape(-1, 4), snap))
    return steps


def _new_pool(path, split: str, nr_meta: int) -> PoolMetadata:
    """The metadata the steps run on: thins 0 and 7, no sync."""
    md = PoolMetadata.format(path, nr_metadata_blocks=nr_meta, nr_data_blocks=NR_DATA, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.fast = True
    md.create_thin(0)
    md.create_thin(7)
    return md


def _run(path, steps, deferred: bool, split: str, nr_meta: int, reserve: int, lwm: int) -> tuple:
    md = _new_pool(path, split, nr_meta)
    results, images = [], []
    for log, snap in steps:
        if snap is not None:
            md.create_snap(*snap)
        if not deferred:
            log = log.copy()
            log[:, 3] &= TK.LOG_OP
        got = apply_log(md, log, reserve, lwm)
        results.append(got)
        md.commit()
        images.append(path.read_bytes())
        if got[0] != 0:  # the reserve reached, or metadata out: dm commits and stops here
            break
    md.close()
    return results, images


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), space=st.sampled_from([700, 6000, 60_000]),
       new_share=st.sampled_from([0.5, 0.9, 1.0]), split=st.sampled_from(["current", "halves"]),
       tight=st.booleans())
def test_deferred_rows_write_what_row_by_row_writes(tmp_path_factory, seed, space, new_share, split, tight):
    steps = _logs(seed, space, new_share, 7)
    # tight: so little metadata that the reserve is reached part-way (the
    # low water mark before it)
    nr_meta, reserve, lwm = (48, 8, 14) if tight else (8192, 0, -1)
    d = tmp_path_factory.mktemp("deferred")
    got = _run(d / "deferred", steps, True, split, nr_meta, reserve, lwm)
    want = _run(d / "rows", steps, False, split, nr_meta, reserve, lwm)
    assert got[0] == want[0]
    assert len(got[1]) == len(want[1])
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert a == b, f"image after log {i} differs"


def test_a_tight_pool_stops_at_the_same_row_deferred_or_not(tmp_path):
    """The check has teeth: random provisions into a pool with little
    metadata reach the reserve part-way through a log, with rows
    deferred before that row."""
    steps = _logs(3, 60_000, 1.0, 7)
    got = _run(tmp_path / "a", steps, True, "current", 48, 8, 14)
    want = _run(tmp_path / "b", steps, False, "current", 48, 8, 14)
    assert got == want
    r, _root, done, lwm_row = got[0][-1][:4]
    assert r == -1 and 0 < done and lwm_row >= 0


def _run_kept(path, steps, split: str, nr_meta: int, reserve: int, lwm: int, seed: int, leaves: int) -> tuple:
    """_run's steps, each log cut at random (not inside a discard) into
    pieces applied with rows kept waiting from one to the next (a list of
    ``leaves`` leaves: a full one merges them all) and merged (a call of no
    rows) before the commit.
    Per log: (result, rows done), and every commit's image."""
    rng = random.Random(seed)
    md = _new_pool(path, split, nr_meta)
    waiting = MIR.new_waiting(leaves)
    results, images = [], []
    for log, snap in steps:
        if snap is not None:
            md.create_snap(*snap)
        marks = (md.tm.nr_used, md.tm.nr_allocs)  # (as dm counts free metadata: from the last commit)
        # (a log never ends inside a discard: its unmaps are cut into
        # dm_thin_remove_range calls within one log)
        can = [c for c in range(1, len(log)) if not (log[c, 2] < 0 and log[c - 1, 2] < 0 and log[c, 3] == log[c - 1, 3])]
        cuts = sorted(rng.sample(can, min(len(can), rng.randrange(1, 6))))
        r, done = 0, 0
        for a, b in zip([0, *cuts], [*cuts, len(log)]):
            got = apply_log(md, log[a:b], reserve, lwm, waiting, keep=True, marks=marks)
            if got[0] != 0:
                r, done = got[0], a + got[2]
                break
            done = b
        assert waiting[1][0] == 0 or r == 0
        apply_log(md, log[:0], reserve, lwm, waiting, marks=marks)  # (the rows still waiting)
        assert waiting[1][0] == 0
        results.append((r, done))
        md.commit()
        images.append(path.read_bytes())
        if r != 0:
            break
    md.close()
    return results, images


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), space=st.sampled_from([700, 6000, 60_000]),
       split=st.sampled_from(["current", "halves"]), tight=st.booleans(), leaves=st.sampled_from([3, 4096]))
def test_rows_kept_waiting_across_calls_write_what_row_by_row_writes(tmp_path_factory, seed, space, split, tight,
                                                                      leaves):
    steps = _logs(seed, space, 1.0, 7)
    nr_meta, reserve, lwm = (48, 8, 14) if tight else (8192, 0, -1)
    d = tmp_path_factory.mktemp("kept")
    got = _run_kept(d / "kept", steps, split, nr_meta, reserve, lwm, seed, leaves)
    want = _run(d / "rows", steps, False, split, nr_meta, reserve, lwm)
    assert got[0] == [(w[0], w[2]) for w in want[0]]
    assert len(got[1]) == len(want[1])
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert a == b, f"image after log {i} differs"


def test_rows_wait_across_calls(tmp_path):
    """The check has teeth: after a kept call of random provisions, leaves
    hold waiting rows in their tails (the tree is not yet the row-by-row
    one) until the next call merges them."""
    steps = _logs(5, 60_000, 1.0, 1)
    md = _new_pool(tmp_path / "m", "current", 8192)
    waiting = MIR.new_waiting(4096)
    assert apply_log(md, steps[0][0], 0, -1, waiting, keep=True)[0] == 0
    assert waiting[1][0] > 0
    leaves = waiting[0][:waiting[1][0]]
    assert (md.bm.blocks.view(np.uint32)[leaves, MIR.WAIT] > 0).any()
    apply_log(md, steps[0][0][:0], 0, -1, waiting)
    assert waiting[1][0] == 0
    assert (md.bm.blocks.view(np.uint32)[leaves, MIR.WAIT] == 0).all()

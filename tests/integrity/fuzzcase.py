"""One fuzz case, run in a worker process: mutate a copy of a pool's
metadata, then open, check and read it.  Shared by the fuzz test and
scripts/fuzz_metadata.py."""
from __future__ import annotations

import os
import shutil


from thinp import errors


def snapshot(pool_dir):
    """{dev: (vblocks, pblocks, times)} read from a pool (as lists)."""
    from thinp.thin import ThinPool

    out = {}
    with ThinPool.open(pool_dir, read_only=True) as pool:
        for d in pool.devices():
            v, p, t = pool.device(d).mapping()
            out[d] = (v.tolist(), p.tolist(), t.tolist())
    return out


def run_case(src_dir, work_dir, flips, truncate_to, expected):
    """Returns "corrupt: <message>", "ok" or "rollback"; raises
    AssertionError when the mutated pool opened but read differently from
    ``expected`` = (state at the last commit, state at the one before).

    "rollback": the newest superblock was hit, so open fell back to the
    other slot, the previous commit, exactly as after a torn superblock
    write; that state must then read back exactly."""
    from thinp.thin.check import check

    os.makedirs(work_dir, exist_ok=True)
    meta = os.path.join(work_dir, "metadata")
    shutil.copyfile(os.path.join(src_dir, "metadata"), meta)
    shutil.copyfile(os.path.join(src_dir, "pool.json"), os.path.join(work_dir, "pool.json"))
    data = os.path.join(work_dir, "data")
    if not os.path.lexists(data):
        os.symlink(os.path.join(src_dir, "data"), data)
    with open(meta, "r+b") as f:
        for off, x in flips:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ x]))
        if truncate_to is not None:
            f.truncate(truncate_to)
    try:
        rep = check(work_dir)
        got = snapshot(work_dir)
    except errors.MetadataCorruptError as e:
        assert str(e), "empty error message"
        return "corrupt: " + str(e)
    if not rep.ok:
        return "inconsistent: " + "; ".join(rep.problems)
    if got == expected[0]:
        return "ok"
    assert got == expected[1], "metadata opened after corruption but reads differently"
    assert any(off < 2 * 4096 for off, _ in flips), "rolled back without touching a superblock"
    return "rollback"

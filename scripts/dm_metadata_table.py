"""Metadata blocks dm-thin uses in the scenarios of issue #12's table.

Each scenario runs dm's own operations through :class:`thinp.thin.pool_metadata.PoolMetadata`
(the kernel's btree split rule, shadowing and space maps) on a 100 GiB pool
of 64 KiB blocks, and reports the allocated metadata blocks and Meta% with
thinp's default metadata size (thin_metadata_size's, for 1000 thins), the
reserve min(4096, 10%) counted as used as dm's status line does.  Writes of
4 KiB land in 64 KiB blocks, so a block is provisioned by its first write.

    PYTHONPATH=. python scripts/dm_metadata_table.py [--split halves] [--via thinpool]

``--via thinpool`` runs the same scenarios through :class:`thinp.ThinPool`
(what users run: the replay kernel, its in-RAM index, and the mapping log
applied to dm's btree), committing every 100,000 requests as well, and
reports the blocks its ``metadata`` file uses: the same figures.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from thinp.thin.metadata_size import metadata_size
from thinp.thin.pool_metadata import PoolMetadata

GiB = 1 << 30
BS = 64 << 10
NR_DATA = 100 * GiB // BS
DEFAULT_META = metadata_size(100 * GiB, BS, 1000) // 4096


VIA_POOL = False


def _pool(tmp, name, split, nr_meta=DEFAULT_META):
    if VIA_POOL:
        return _ViaPool(tmp, name, split, nr_meta)
    md = PoolMetadata.format(os.path.join(tmp, name), nr_metadata_blocks=nr_meta, nr_data_blocks=NR_DATA,
                             data_block_sectors=BS // 512, split=split)
    md.sync = False
    return md


def _write(md, dev, vblocks, commit_every=100_000):
    """dm-thin's write path for each block in order (a new data block when
    unmapped or shared), one kernel call per commit interval."""
    if isinstance(md, _ViaPool):
        return md.write(dev, vblocks)
    vblocks = np.fromiter(vblocks, dtype=np.int64) if not isinstance(vblocks, np.ndarray) else vblocks
    for lo in range(0, len(vblocks), commit_every):
        md.write_blocks(dev, vblocks[lo:lo + commit_every])
        if lo + commit_every <= len(vblocks):
            md.commit()
    md.commit()


def fresh(tmp, split):
    return _pool(tmp, "fresh", split)


def thin_10g_sequential(tmp, split):
    md = _pool(tmp, "seq", split)
    md.create_thin(0)
    _write(md, 0, range(10 * GiB // BS))
    return md


def thin_1t_random(tmp, split, nr_meta=4 * DEFAULT_META):
    md = _pool(tmp, "rand", split, nr_meta)
    md.create_thin(0)
    rng = np.random.default_rng(12)
    offsets = rng.integers(0, (1 << 40) // 4096, size=100_000) * 4096
    _write(md, 0, dict.fromkeys((offsets // BS).tolist()))  # first write provisions, in request order
    return md


def base_plus_100_snapshots(tmp, split, nr_meta=16 * DEFAULT_META):
    md = _pool(tmp, "snaps", split, nr_meta)
    md.create_thin(0)
    nr = 10 * GiB // BS
    _write(md, 0, range(nr))
    rng = np.random.default_rng(7)
    for s in range(1, 101):
        md.create_snap(s, 0)
        _write(md, s, rng.choice(nr, size=nr // 100, replace=False))  # CoW: a new block, the old one dec'd
    return md


class _ViaPool:
    """The scenarios' PoolMetadata calls, made as ThinPool requests."""

    def __init__(self, tmp, name, split, nr_meta=DEFAULT_META):
        import thinp

        self.pool = thinp.ThinPool.create(os.path.join(tmp, name), NR_DATA * BS, metadata_size=nr_meta * 4096,
                                          split=split, sync=False, commit_interval=100_000)

    @property
    def nr_used_metadata_blocks(self):
        return self.pool._dm.nr_used_metadata_blocks

    def create_thin(self, dev):
        self.pool.create_thin(dev, 1 << 40)

    def create_snap(self, dev, origin):
        self.pool.create_snap(dev, origin)

    def write(self, dev, vblocks):
        from thinp.trace import TRACE_DTYPE, WRITE

        vb = np.fromiter(vblocks, dtype=np.uint64)
        t = np.zeros(len(vb), dtype=TRACE_DTYPE)
        t["dev_id"], t["op"], t["offset"], t["length"] = dev, WRITE, vb * BS, 4096
        self.pool.replay(t)
        self.pool.commit()

    def close(self):
        self.pool.close()


def meta_percent(md, total=DEFAULT_META) -> float:
    return 100.0 * (md.nr_used_metadata_blocks + min(4096, total // 10)) / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="current", choices=("current", "halves"))
    ap.add_argument("--via", default="pool-metadata", choices=("pool-metadata", "thinpool"))
    args = ap.parse_args()
    global VIA_POOL
    VIA_POOL = args.via == "thinpool"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("fresh pool, default metadata size", fresh),
                         ("one 10 GiB thin filled sequentially", thin_10g_sequential),
                         ("one 1 TiB thin, 100,000 random 4 KiB writes", thin_1t_random),
                         ("a 10 GiB base plus 100 snapshots, each writing 1% at random", base_plus_100_snapshots)):
            t0 = time.perf_counter()
            md = fn(tmp, args.split)
            used = md.nr_used_metadata_blocks
            fits = used + min(4096, DEFAULT_META // 10) <= DEFAULT_META
            pct = f"{meta_percent(md):.1f}" if fits else "does not fit"
            rows.append((name, used, pct, time.perf_counter() - t0))
            md.close()
    print(f"default metadata size: {DEFAULT_META} blocks; split rule: {args.split}; via {args.via}")
    print("| scenario (100 GiB pool, 64 KiB blocks) | metadata blocks | Meta% at the default size | seconds |")
    print("|---|---|---|---|")
    for name, used, pct, secs in rows:
        print(f"| {name} | {used:,} | {pct} | {secs:.0f} |")


if __name__ == "__main__":
    main()

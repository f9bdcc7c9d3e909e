"""Block maps: which pool data block each thin device maps, and who shares it.

:func:`block_map` walks the mappings of every device in a pool (as thin_ls
does, not the space map) and returns a :class:`BlockMap` of plain arrays:

* ``dev_ids``   int64 ``(n,)``: the devices shown, in the order asked for;
* ``pblocks``   int64 ``(n, end - begin)``: the data block that virtual
  block ``begin + j`` of device ``i`` maps to, ``-1`` where it is unmapped
  or past the device's end;
* ``refs``      int64, same shape: how many mappings in the whole pool (all
  devices, shown or not, every virtual block) point at that data block; 0
  where unmapped;
* ``nr_blocks`` int64 ``(n,)``: each device's size in data blocks.

A mapped block is *exclusive* when ``refs == 1`` and *shared* otherwise,
exactly thin_ls's EXCLUSIVE_BLOCKS / SHARED_BLOCKS.  Sharing is counted per
mapping, so a block shared by an origin and its snapshot stays shared until
one of them writes it (copy-on-write gives the writer a new block and leaves
the other side's block exclusive).  The space map's reference counts are not
used: dm-thin counts references per leaf node, and a snapshot shares whole
subtrees until they are shadowed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Cell values of :attr:`BlockMap.state`.
UNMAPPED, EXCLUSIVE, SHARED = 0, 1, 2
STATE_NAMES = {UNMAPPED: "unmapped", EXCLUSIVE: "exclusive", SHARED: "shared"}


@dataclass
class BlockMap:
    """Per-device mappings over the virtual block window ``[begin, end)``."""

    dev_ids: np.ndarray
    pblocks: np.ndarray
    refs: np.ndarray
    nr_blocks: np.ndarray
    begin: int
    end: int
    block_size: int

    @property
    def state(self) -> np.ndarray:
        """int8 ``(n, end - begin)``: 0 unmapped, 1 exclusive, 2 shared."""
        s = np.zeros(self.pblocks.shape, dtype=np.int8)
        s[self.refs == 1] = EXCLUSIVE
        s[self.refs > 1] = SHARED
        return s

    def mapped_blocks(self) -> np.ndarray:
        """Mapped blocks per device inside the window."""
        return np.count_nonzero(self.pblocks >= 0, axis=1)

    def exclusive_blocks(self) -> np.ndarray:
        """Blocks per device (inside the window) that no other mapping points at."""
        return np.count_nonzero(self.refs == 1, axis=1)

    def shared_blocks(self) -> np.ndarray:
        """Blocks per device (inside the window) that some other mapping points at too."""
        return np.count_nonzero(self.refs > 1, axis=1)

    def shared_matrix(self) -> np.ndarray:
        """int64 ``(n, n)``: entry ``[i, j]`` is how many distinct data blocks
        devices ``i`` and ``j`` both map (inside the window, at any virtual
        block); the diagonal is each device's distinct mapped blocks."""
        n = len(self.dev_ids)
        sets = [np.unique(row[row >= 0]) for row in self.pblocks]
        out = np.zeros((n, n), dtype=np.int64)
        for i in range(n):
            for j in range(i, n):
                out[i, j] = out[j, i] = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        return out

    def to_frame(self):
        """A pandas DataFrame, one row per device: ``dev_id``,
        ``mapped_blocks``, ``exclusive_blocks``, ``shared_blocks`` (inside the
        window) and the same three in bytes."""
        import pandas as pd

        mapped, excl, shared = self.mapped_blocks(), self.exclusive_blocks(), self.shared_blocks()
        return pd.DataFrame({
            "dev_id": self.dev_ids, "mapped_blocks": mapped, "exclusive_blocks": excl,
            "shared_blocks": shared, "mapped_bytes": mapped * self.block_size,
            "exclusive_bytes": excl * self.block_size, "shared_bytes": shared * self.block_size,
        })


def block_map(pool, dev_ids=None, begin: int = 0, end: int | None = None) -> BlockMap:
    """The :class:`BlockMap` of an open :class:`~thinp.ThinPool`.

    ``dev_ids`` picks and orders the devices shown (default: all, ascending);
    sharing is always counted over every device of the pool.  ``begin`` and
    ``end`` bound the virtual blocks shown (default: 0 up to the largest
    shown device's size); the arrays hold ``len(dev_ids) * (end - begin)``
    cells, so window a large device rather than asking for all of it."""
    all_ids = pool.devices()
    shown = list(all_ids) if dev_ids is None else [int(d) for d in dev_ids]
    for d in shown:
        pool.device(d)   # DeviceNotFoundError for an unknown id
    maps = {d: pool.device(d).mapping() for d in all_ids}
    nr_blocks = np.array([-(-pool.device(d).size // pool.block_size) for d in shown], dtype=np.int64)
    if end is None:
        end = int(nr_blocks.max(initial=0))
    begin, end = int(begin), int(end)
    if not 0 <= begin <= end:
        raise ValueError(f"block window [{begin}, {end}) must have 0 <= begin <= end")
    allp = [maps[d][1] for d in all_ids]
    counts = (np.bincount(np.concatenate(allp), minlength=pool.nr_data_blocks) if allp
              else np.zeros(pool.nr_data_blocks, dtype=np.int64))
    pblocks = np.full((len(shown), end - begin), -1, dtype=np.int64)
    refs = np.zeros(pblocks.shape, dtype=np.int64)
    for i, d in enumerate(shown):
        v, p, _ = maps[d]
        keep = (v >= begin) & (v < end)
        pblocks[i, v[keep] - begin] = p[keep]
        refs[i, v[keep] - begin] = counts[p[keep]]
    return BlockMap(np.array(shown, dtype=np.int64), pblocks, refs, nr_blocks, begin, end, pool.block_size)

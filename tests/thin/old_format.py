"""Build a pool in thinp's old metadata format (512-slot radix trees, uint16
space maps), which ThinPool no longer writes: ``thinp convert``'s input.

It drives the old format's own pieces -- :class:`thinp.thin.metadata.Metadata`
and the replay kernel -- as the old ThinPool did."""
from __future__ import annotations

import os

import numpy as np

from thinp.config import SECTOR_SIZE
from thinp.pdata import _kernels as K
from thinp.thin import _kernels as TK
from thinp.thin.metadata import OPT_PASSDOWN, OPT_ZERO, Metadata
from thinp.trace import DISCARD, TRACE_DTYPE, WRITE

BLOCK = 64 << 10


class OldPool:
    """create_thin / create_snap / write / discard / set_transaction_id on an old-format pool."""

    def __init__(self, path, data_size: int, metadata_size: int = 8 << 20):
        os.makedirs(path, exist_ok=True)
        self.path = os.fspath(path)
        nr_data = data_size // BLOCK
        with open(os.path.join(self.path, "data"), "wb") as f:
            f.truncate(nr_data * BLOCK)
        self.md = Metadata.create(os.path.join(self.path, "metadata"), nr_meta_blocks=metadata_size // 4096,
                                  nr_data_blocks=nr_data, block_size=BLOCK, options=OPT_ZERO | OPT_PASSDOWN,
                                  low_water_mark=0, commit_interval=0)
        self.log = np.zeros((1 << 16, 4), dtype=np.int64)

    def create_thin(self, dev: int, size: int) -> None:
        md = self.md
        s = md.free_slot()
        dv = md.dv
        nr = -(-size // BLOCK)
        dv.dev_id[s], dv.root[s], dv.nr_blocks[s], dv.size_sectors[s] = dev, 0, nr, size // SECTOR_SIZE
        dv.levels[s] = TK.levels_for(nr)
        dv.mapped[s] = 0
        dv.create_time[s] = dv.snap_time[s] = md.sp.scal[K.S_TIME]
        dv.changed[s] = 1
        md.slot_of[dev] = s
        md.commit()

    def create_snap(self, dev: int, origin: int) -> None:
        md = self.md
        o = md.slot_of[origin]
        s = md.free_slot()
        dv, sp = md.dv, md.sp
        if dv.root[o]:
            K.inc_meta(sp, int(dv.root[o]))
        sp.scal[K.S_TIME] += 1
        t = sp.scal[K.S_TIME]
        for a in (dv.root, dv.nr_blocks, dv.size_sectors, dv.levels, dv.mapped, dv.root_crc):
            a[s] = a[o]
        dv.dev_id[s] = dev
        dv.create_time[s] = dv.snap_time[s] = dv.snap_time[o] = t
        dv.changed[s] = dv.changed[o] = 1
        md.slot_of[dev] = s
        md.commit()

    def _io(self, op: int, dev: int, offset: int, length: int) -> None:
        md = self.md
        row = np.zeros(1, dtype=TRACE_DTYPE)
        row[0] = (dev, op, offset, length)
        out = np.zeros(4, dtype=np.int64)
        slots = np.array([md.slot_of[dev]], dtype=np.int64)
        start, start_vb = 0, -1
        while True:
            out[3] = 0
            r = TK.replay(md.sp, md.dv, slots, row["op"], row["offset"], row["length"], start, start_vb,
                          np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.uint8), 0, out, self.log,
                          np.zeros(1, dtype=np.uint8))
            if r == TK.R_DONE:
                return
            assert r in (TK.R_FLUSH, TK.R_NEED_COMMIT), r
            if r == TK.R_NEED_COMMIT:
                md.commit()
            start, start_vb = int(out[1]), int(out[2])

    def write(self, dev: int, offset: int, length: int) -> None:
        self._io(WRITE, dev, offset, length)

    def discard(self, dev: int, offset: int, length: int) -> None:
        self._io(DISCARD, dev, offset, length)

    def set_transaction_id(self, new: int) -> None:
        self.md.sb.transaction_id = new
        self.md.commit()

    def close(self) -> None:
        self.md.commit()
        self.md.close()

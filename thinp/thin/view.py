"""What the metadata tools print: a pool's superblock fields and its devices'
mappings as arrays, from thinp's own format or a dm-thin image alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import SECTOR_SIZE


@dataclass
class DeviceView:
    """One thin device as the tools see it (mappings sorted by vblock)."""

    dev_id: int
    mapped_blocks: int
    transaction: int
    creation_time: int
    snap_time: int
    nr_blocks: int
    vblocks: np.ndarray = field(repr=False)
    pblocks: np.ndarray = field(repr=False)
    times: np.ndarray = field(repr=False)


@dataclass
class PoolView:
    """The superblock fields thin_dump prints and every device."""

    uuid: str
    time: int
    transaction: int
    flags: int
    data_block_size: int  # bytes
    nr_data_blocks: int
    devices: list
    held_root: int = 0

    @property
    def data_block_sectors(self) -> int:
        return self.data_block_size // SECTOR_SIZE



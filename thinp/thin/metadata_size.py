"""thin_metadata_size's estimate, as Debian's thin-provisioning-tools 0.9.0 computes it.

bytes = 4096 * (1 + floor(2 * nr_data_blocks / 252) + max_thins): one
superblock, two btree entries' worth of space per data block (mapping tree
and space map) at 252 entries per node, and one block per thin device.
"""
from __future__ import annotations

from ..config import METADATA_BLOCK_SIZE
from ..units import check_block_size, parse_size


def metadata_size(data_size, block_size="64KiB", max_thins: int = 1) -> int:
    """Metadata bytes for a pool, as ``thin_metadata_size -u b -n`` gives.

    >>> metadata_size("100G", "64k", 1000)
    57360384
    """
    bs = check_block_size(block_size)
    size = parse_size(data_size, what="data_size")
    if isinstance(max_thins, bool) or not isinstance(max_thins, int) or max_thins < 1:
        raise ValueError(f"max_thins must be a positive integer, not {max_thins!r}")
    nr_blocks = size // bs
    return METADATA_BLOCK_SIZE * (1 + (2 * nr_blocks) // 252 + max_thins)

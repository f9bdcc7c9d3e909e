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


UNITS = {"b": (1, "bytes"), "s": (512, "sectors"), "k": (1 << 10, "kibibytes"), "m": (1 << 20, "mebibytes"),
         "g": (1 << 30, "gibibytes"), "t": (1 << 40, "tebibytes"), "p": (1 << 50, "pebibytes")}


def format_estimate(nbytes: int, unit: str = "s", numeric_only: bool = False) -> str:
    """``nbytes`` as thin_metadata_size prints it in ``unit`` (b, s, k, m,
    g, t, p): ``"112032 sectors"``, or the number alone."""
    u = str(unit).lower()
    if u not in UNITS:
        raise ValueError(f"unit {unit!r}: want one of {', '.join(UNITS)}")
    div, name = UNITS[u]
    value = nbytes / div
    text = f"{value:g}" if value != int(value) else str(int(value))
    return text if numeric_only else f"{text} {name}"

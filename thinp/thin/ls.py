"""``thinp ls``: thin_ls's table of devices.

A block is *exclusive* to a device when no other mapping in the pool (of
this or any other device) points at it, and *shared* otherwise, as thin_ls
counts them: by walking every device's mappings, not from the space map.
HIGHEST_BLOCK is the highest mapped virtual block (``-`` for none), as the
Rust thin_ls has it; 0.9.0's thin_ls does not know this column.
"""
from __future__ import annotations

import numpy as np

from ..config import SECTOR_SIZE
from .dump import PoolView, load_pool_view

#: thin_ls 0.9.0's default columns (``thin_ls METADATA`` with no ``-o``)
DEFAULT_FIELDS = ("DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME")
_BASE = ("MAPPED", "EXCLUSIVE", "SHARED")
FIELDS = (("DEV",) + tuple(f"{b}_{u}" for u in ("BLOCKS", "SECTORS", "BYTES") for b in _BASE) + _BASE
          + ("HIGHEST_BLOCK", "TRANSACTION", "CREATE_TIME", "SNAP_TIME"))


def human_size(nbytes: int) -> str:
    """thin_ls's MAPPED/EXCLUSIVE/SHARED cells: the largest binary unit the
    value exceeds eight times, rounded half up ("8192KiB", "9MiB", "63MiB"
    for 62.5 MiB), or "0"; measured against thin_ls 0.9.0."""
    if nbytes == 0:
        return "0"
    for name, u in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes > 8 * u:
            return f"{(2 * nbytes + u) // (2 * u)}{name}"
    return f"{nbytes}B"


def parse_format(text: str | None) -> tuple:
    if not text:
        return DEFAULT_FIELDS
    out = tuple(f.strip().upper() for f in text.split(","))
    for f in out:
        if f not in FIELDS:
            raise ValueError(f"--format: unknown field {f!r} (known: {', '.join(FIELDS)})")
    return out


def rows(view: PoolView, fields=DEFAULT_FIELDS) -> list[list[str]]:
    """One list of cell strings per device, in ``fields`` order."""
    allp = [d.pblocks for d in view.devices]
    counts = np.bincount(np.concatenate(allp), minlength=view.nr_data_blocks) if allp else np.zeros(0, np.int64)
    bs = view.data_block_size
    out = []
    for d in view.devices:
        excl = int(np.count_nonzero(counts[d.pblocks] == 1)) if len(d.pblocks) else 0
        blocks = {"MAPPED": d.mapped_blocks, "EXCLUSIVE": excl, "SHARED": d.mapped_blocks - excl}
        row = []
        for f in fields:
            base, _, unit = f.partition("_")
            if f == "DEV":
                row.append(str(d.dev_id))
            elif f == "HIGHEST_BLOCK":
                row.append(str(int(d.vblocks[-1])) if len(d.vblocks) else "-")
            elif f == "TRANSACTION":
                row.append(str(d.transaction))
            elif f == "CREATE_TIME":
                row.append(str(d.creation_time))
            elif f == "SNAP_TIME":
                row.append(str(d.snap_time))
            elif unit == "BLOCKS":
                row.append(str(blocks[base]))
            elif unit == "SECTORS":
                row.append(str(blocks[base] * bs // SECTOR_SIZE))
            elif unit == "BYTES":
                row.append(str(blocks[base] * bs))
            else:
                row.append(human_size(blocks[base] * bs))
        out.append(row)
    return out


def format_table(fields, table, headers: bool = True) -> str:
    """thin_ls's layout: every cell right-aligned to its column and
    followed by one space."""
    all_rows = ([list(fields)] if headers else []) + table
    if not all_rows:
        return ""
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(fields))]
    return "".join("".join(c.rjust(w) + " " for c, w in zip(r, widths)) + "\n" for r in all_rows)


def ls(pool_dir, fields=DEFAULT_FIELDS, headers: bool = True, metadata_snap: bool = False) -> str:
    view = load_pool_view(pool_dir, metadata_snap=metadata_snap)
    return format_table(fields, rows(view, fields), headers)


def ls_rows(pool_dir, fields=DEFAULT_FIELDS, metadata_snap: bool = False) -> list[dict]:
    """:func:`ls`'s table as one dict per device, field name to cell."""
    view = load_pool_view(pool_dir, metadata_snap=metadata_snap)
    return [{f: int(c) if c.isdigit() else c for f, c in zip(fields, r)} for r in rows(view, fields)]

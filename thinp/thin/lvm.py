"""What LVM and dmsetup do around a pool: a new pool's directory rules,
``lvs``-like rows, ``dmsetup table`` lines and ``lvextend``-style resizes.

Every function takes a pool directory and opens the pool itself, so the
``thinp pool`` commands are one call each.
"""
from __future__ import annotations

import os

from ..config import SECTOR_SIZE
from ..units import format_size, parse_size

def create_pool(path, **kw):
    """:meth:`ThinPool.create` as ``thinp pool create`` runs it: ``path``'s
    parent must exist and ``path`` must be absent or an empty directory."""
    from .pool import ThinPool

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{path}: parent directory {parent} does not exist")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FileExistsError(f"{path}: exists and is not a directory")
        if os.listdir(path):
            raise FileExistsError(f"{path}: directory is not empty")
    return ThinPool.create(path, **kw)


def lvs_rows(pool) -> list[dict]:
    """The pool and each thin device as ``lvs`` shows them: size, Data%,
    Meta% (pool only), mapped blocks and the highest mapped block."""
    st = pool.status(observer=True)
    rows = [{"lv": "pool", "lsize": format_size(st.total_data_blocks * st.data_block_size),
             "data_percent": f"{st.data_percent:.2f}", "metadata_percent": f"{st.metadata_percent:.2f}",
             "mapped_blocks": st.used_data_blocks, "highest_block": None}]
    for dev_id in pool.devices():
        d = pool.device(dev_id)
        pct = 100.0 * d.mapped_blocks * pool.block_size / d.size if d.size else 0.0
        rows.append({"lv": f"thin{dev_id}", "lsize": format_size(d.size), "data_percent": f"{pct:.2f}",
                     "metadata_percent": None, "mapped_blocks": d.mapped_blocks,
                     "highest_block": d.highest_mapped_block()})
    return rows


def table_lines(pool_dir) -> list[dict]:
    """``dmsetup table`` for the pool and its thin devices, with the pool
    directory's files standing for the metadata and data devices.

    thin-pool: ``0 LEN thin-pool META DATA BLOCK_SECTORS LOW_WATER_MARK N FEATURES...``;
    thin: ``0 LEN thin POOL DEV_ID`` (see the kernel's thin-provisioning.rst)."""
    from .pool import ThinPool

    pool_dir = os.fspath(pool_dir)
    with ThinPool.open(pool_dir, read_only=True, check_trees=False) as pool:
        st = pool.status(observer=True)
        features = []
        if not pool.zero_new_blocks:
            features.append("skip_block_zeroing")
        if st.discard == "ignore_discard":
            features.append("ignore_discard")
        elif st.discard == "no_discard_passdown":
            features.append("no_discard_passdown")
        if st.no_space == "error_if_no_space":
            features.append("error_if_no_space")
        bs = pool.block_size // SECTOR_SIZE
        data_sectors = pool.nr_data_blocks * pool.block_size // SECTOR_SIZE
        lines = [{"name": "pool", "table": " ".join(
            ["0", str(data_sectors), "thin-pool", os.path.join(pool_dir, "metadata"), os.path.join(pool_dir, "data"),
             str(bs), str(pool.low_water_mark), str(len(features)), *features])}]
        for dev_id in pool.devices():
            lines.append({"name": f"thin{dev_id}",
                          "table": f"0 {pool.device(dev_id).size // SECTOR_SIZE} thin {pool_dir} {dev_id}"})
    return lines


def _new_size(text, current: int, what: str) -> int:
    text = str(text).strip()
    if text.startswith("+"):
        return current + parse_size(text[1:], what=what)
    if text.startswith("-"):
        return current - parse_size(text[1:], what=what)
    return parse_size(text, what=what)


def resize(pool_dir, *, data_size=None, metadata_size=None, thin=None, thin_size=None):
    """Grow the pool's data or metadata device or resize thin device
    ``thin``, as ``lvextend -L``/``--poolmetadatasize`` do.  Each size is
    absolute (``"20G"``) or relative (``"+5G"``, ``"-1G"`` for a thin).
    Returns the pool's status after the resize."""
    from .pool import ThinPool

    with ThinPool.open(pool_dir) as pool:
        if data_size is not None:
            cur = pool.nr_data_blocks * pool.block_size
            pool.resize_data(_new_size(data_size, cur, "--data-size"))
        if metadata_size is not None:
            cur = pool.nr_metadata_blocks * 4096
            pool.resize_metadata(_new_size(metadata_size, cur, "--metadata-size"))
        if thin is not None:
            dev = pool.device(thin)
            dev.resize(_new_size(thin_size, dev.size, "--size"))
        return pool.status()

"""A PoolMetadata opened for a placement scenario, with its commit and
write helpers, for the placement tests that replay one scenario through
the numba kernels ("kernel") and through the Python btree ("reference")."""
import numpy as np

from thinp.thin.pool_metadata import PoolMetadata


def open_for(path, mode: str, images: list):
    """``(md, commit, write)``: ``commit()`` commits and appends the image
    to ``images``; ``write(dev, vblocks)`` maps each to a new data block
    (write_blocks in "kernel" mode, else one insert at a time)."""
    md = PoolMetadata.open(path / "metadata")
    md.sync = False
    md.fast = mode == "kernel"

    def commit():
        md.commit()
        images.append((path / "metadata").read_bytes())

    def write(dev, vbs):
        if mode == "kernel":
            md.write_blocks(dev, np.asarray(vbs))
        else:
            for vb in vbs:
                md.insert(dev, vb, md.alloc_data())

    return md, commit, write


def pool_for(path, images: list):
    """``(pool, commit)``: the scenario's ThinPool ("pool" mode), whose
    ``commit()`` commits and appends the image to ``images``."""
    from thinp import ThinPool

    pool = ThinPool.open(path)

    def commit():
        pool.commit()
        images.append((path / "metadata").read_bytes())

    return pool, commit

"""One call of the mirror's ``apply_log`` kernel on a PoolMetadata, for the
mirror's tests: the pool's own arrays in, the data space map and the
mapping root taken back."""
import numpy as np

from thinp.thin import _mirror as MIR
from thinp.thin.pool_metadata import PoolMetadata


def apply_log(md: PoolMetadata, log: np.ndarray, reserve: int = 0, lwm: int = -1) -> tuple:
    """``(result, *out)``: the kernel's return and its six out words
    (root, rows done, the row where free metadata crossed the low water
    mark or reached the reserve and the free count there, added, removed)."""
    tm, dsm = md.tm, md.data_sm
    blocks = md.bm.blocks
    out = np.zeros(6, dtype=np.int64)
    r = MIR.apply_log(blocks.view(np.uint64), blocks.view(np.uint32), tm.count, tm.committed, tm.free, tm.txn,
                      tm.kind, md.bm.fresh, tm.st, dsm.count, dsm.committed, dsm.free, dsm.kernel_state(),
                      np.int64(md.sb.data_mapping_root), log, np.int64(len(log)), md.split == "halves",
                      np.int64(reserve), np.int64(lwm), lwm >= 0, np.int64(tm.nr_used), np.int64(tm.nr_allocs), out)
    dsm.from_kernel()
    md.sb.data_mapping_root = int(out[0])
    return (r, *out.tolist())

"""One call of the mirror's ``apply_log`` kernel on a PoolMetadata, for the
mirror's tests: the pool's own arrays in, the data space map and the
mapping root taken back."""
import numpy as np

from thinp.thin import _mirror as MIR
from thinp.thin.pool_metadata import PoolMetadata


def apply_log(md: PoolMetadata, log: np.ndarray, reserve: int = 0, lwm: int = -1, waiting=None,
              keep: bool = False, marks: tuple | None = None) -> tuple:
    """``(result, *out)``: the kernel's return and its six out words
    (root, rows done, the row where free metadata crossed the low water
    mark or reached the reserve and the free count there, added, removed).
    With ``waiting`` (_mirror.new_waiting): apply_log_kept, rows left
    waiting by earlier calls in it, and left so at the end with ``keep``.
    ``marks``: the metadata blocks used and allocated at the last commit
    (for a call after others since it; default: now)."""
    tm, dsm = md.tm, md.data_sm
    used, allocs = (tm.nr_used, tm.nr_allocs) if marks is None else marks
    blocks = md.bm.blocks
    out = np.zeros(6, dtype=np.int64)
    args = (blocks.view(np.uint64), blocks.view(np.uint32), tm.count, tm.committed, tm.free, tm.txn, tm.kind,
            md.bm.fresh, tm.st, dsm.count, dsm.committed, dsm.free, dsm.kernel_state(),
            np.int64(md.sb.data_mapping_root), log, np.int64(len(log)), md.split == "halves", np.int64(reserve),
            np.int64(lwm), lwm >= 0, np.int64(used), np.int64(allocs), out)
    if waiting is None:
        r = MIR.apply_log(*args)
    else:
        r = MIR.apply_log_kept(*args, waiting, keep)
    dsm.from_kernel()
    md.sb.data_mapping_root = int(out[0])
    return (r, *out.tolist())

"""The built-in scenario behind ``thinp demo``: Docker's loop-lvm pool (100 GiB
data, 2 GiB metadata, 64 KiB blocks, no zeroing), a 10 GiB base device
holding a 1.2 GiB image, a chain of image-layer snapshots, and containers
(an ``-init`` snapshot and a read-write snapshot of it each) writing random
4 KiB blocks into their own snapshots."""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass


@dataclass
class DemoResult:
    title: str
    status: str          # the dm status line
    rows: list           # (metric, value) pairs
    seconds: float


def demo(layers: int = 8, containers: int = 200, writes: int = 2000, seed: int = 1, dir=None) -> DemoResult:
    """Run the scenario in ``dir`` (kept) or a temporary directory (removed)."""
    import numpy as np

    from ..thin import ThinPool
    from ..trace import TRACE_DTYPE, WRITE
    from ..units import human_size

    for name, v, lo in (("layers", layers, 0), ("containers", containers, 0), ("writes", writes, 0),
                        ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
    workdir = dir or tempfile.mkdtemp(prefix="thinp-demo-")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    try:
        with ThinPool.create(f"{workdir}/pool", "100G", "64k", metadata_size="2G", low_water_mark=32768,
                             zero_new_blocks=False, sync=False) as pool:
            events = []
            pool.on_low_water_mark(events.append)
            bs = pool.block_size
            base = pool.create_thin(1, "10G")
            nr = base.size // bs

            def random_writes(dev_id, n, span, size=4096):
                t = np.zeros(n, dtype=TRACE_DTYPE)
                t["dev_id"] = dev_id
                t["op"] = WRITE
                t["offset"] = (rng.integers(0, span // size, n) * size).astype(np.uint64)
                t["length"] = size
                return t

            # the base image: 1.2 GiB laid down sequentially in 64 KiB writes
            image = np.zeros(int(1.2 * (1 << 30)) // bs, dtype=TRACE_DTYPE)
            image["dev_id"] = 1
            image["op"] = WRITE
            image["offset"] = np.arange(len(image), dtype=np.uint64) * bs
            image["length"] = bs
            pool.replay(image)
            parent = 1
            for i in range(2, 2 + layers):          # image layers: a snapshot of the parent plus changes
                pool.create_snap(i, parent)
                pool.replay(random_writes(i, 2000, nr * bs, 65536))
                parent = i
            ids = []
            for c in range(containers):             # <id>-init and the container's read-write snapshot
                init, rw = 1000 + 2 * c, 1001 + 2 * c
                pool.create_snap(init, parent)
                pool.create_snap(rw, init)
                ids.append(rw)
            for rw in ids:
                pool.replay(random_writes(rw, writes, 2 << 30))
            st = pool.status()
            virtual = sum(pool.device(d).size for d in pool.devices())
            rows = [
                ("thin devices", str(len(pool.devices()))),
                ("Data%", f"{st.data_percent:.2f} ({st.used_data_blocks} of {st.total_data_blocks} blocks)"),
                ("Meta%", f"{st.metadata_percent:.2f}"),
                ("overcommit (virtual / pool)", f"{virtual / (st.total_data_blocks * bs):.1f}x"),
                ("blocks provisioned", str(st.nr_provisioned)),
                ("CoW copies", f"{st.nr_cow_copies} ({human_size(st.bytes_copied)} copied)"),
                ("low water mark events", str(len(events))),
            ]
    finally:
        if not dir:
            shutil.rmtree(workdir, ignore_errors=True)
    title = f"{containers} containers on {layers} image layers, {writes} random 4 KiB writes each"
    return DemoResult(title, str(st), rows, time.perf_counter() - t0)

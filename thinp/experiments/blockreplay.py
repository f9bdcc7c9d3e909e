"""``thinp pool replay``: a block trace file replayed into one thin device."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class ReplayReport:
    notes: list = field(default_factory=list)      # for stderr
    lines: list = field(default_factory=list)      # the result, for stdout


def replay_file(pool_dir, trace_path, *, fmt=None, dev_id: int = 0, device=None) -> ReplayReport:
    """Replay ``trace_path`` (ftrace block_rq_issue or blkparse text) into
    thin device ``dev_id`` of the pool in ``pool_dir``, creating the device
    sized to the trace when the pool lacks it.  Without ``device`` the
    busiest traced device is replayed."""
    from ..thin import ThinPool
    from ..traces import blocktrace

    trace_path = os.fspath(trace_path)
    if not os.path.isfile(trace_path):
        raise FileNotFoundError(f"{trace_path}: no such trace file")
    rep = ReplayReport()
    fmt = fmt or blocktrace.detect_format(trace_path)
    if device is None:
        devs = blocktrace.devices(trace_path, fmt)
        if len(devs) > 1:
            device = devs.most_common(1)[0][0]
            rep.notes.append(f"{trace_path}: {len(devs)} devices; replaying {device} (choose with --trace-device)")
    trace = blocktrace.read(trace_path, fmt, dev_id=dev_id, device=device)
    if not len(trace):
        raise ValueError(f"{trace_path}: no {fmt} block requests to replay")
    end = int((trace["offset"] + trace["length"]).max())
    with ThinPool.open(pool_dir) as pool:
        if dev_id not in pool.devices():
            bs = pool.block_size
            pool.create_thin(dev_id, -(-end // bs) * bs)
        elif pool.device(dev_id).size < end:
            raise ValueError(f"{trace_path}: requests reach byte {end}, beyond thin device "
                             f"{dev_id} ({pool.device(dev_id).size} bytes)")
        r = pool.replay(trace)
        pool.commit()
        ops = {0: "reads", 1: "writes", 2: "discards"}
        counts = ", ".join(f"{int((trace['op'] == k).sum())} {v}" for k, v in ops.items())
        rep.lines.append(f"replayed {len(trace)} requests ({counts}) from {trace_path} ({fmt}) into thin {dev_id}")
        rep.lines += [f"  {k}: {v}" for k, v in r.counters.items() if v]
        rep.lines.append(str(pool.status()))
    return rep

"""Concurrent timing: a workload run's operation log (:mod:`.oplog`) replayed
as processes on a machine's cores, locks, page cache and device
(:mod:`.model`, over the event loop of :mod:`.sim`).

>>> from thinp.workloads import run
>>> from thinp.timing import simulate
>>> res = run("webapp", "overlay2", scale=0.1)          # doctest: +SKIP
>>> rep = simulate(res.oplog, device="nvme")            # doctest: +SKIP
>>> rep.time_s, rep.wait_shares()                       # doctest: +SKIP
"""
from .model import SOURCES, TimingConstants, TimingReport, locks_for, simulate
from ..workloads.oplog import OpLog, Recorder

__all__ = ["OpLog", "Recorder", "SOURCES", "TimingConstants", "TimingReport", "locks_for", "simulate"]

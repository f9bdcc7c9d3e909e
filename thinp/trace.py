"""The block I/O trace format shared by the engine, the file layer and readers.

A trace is a numpy structured array of :data:`TRACE_DTYPE`, one row per
request, in issue order:

=========  ========  ==========================================================
field      dtype     meaning
=========  ========  ==========================================================
dev_id     uint32    thin device id (24-bit, as dm-thin) the request targets
op         uint8     :data:`READ`, :data:`WRITE` or :data:`DISCARD`
offset     uint64    byte offset into the device
length     uint64    bytes; a request crossing block boundaries is split per
                     block by the engine, as dm-thin splits bios
=========  ========  ==========================================================
"""
from __future__ import annotations

import numpy as np

READ = 0
WRITE = 1
DISCARD = 2

OP_NAMES = {READ: "read", WRITE: "write", DISCARD: "discard"}

TRACE_DTYPE = np.dtype(
    [("dev_id", np.uint32), ("op", np.uint8), ("offset", np.uint64), ("length", np.uint64)],
    align=True,
)


def make_trace(n: int) -> np.ndarray:
    """An all-zero trace of ``n`` requests (fill the fields in place)."""
    return np.zeros(n, dtype=TRACE_DTYPE)


class TraceRecorder:
    """Collects requests in :data:`TRACE_DTYPE` form, growing geometrically."""

    def __init__(self, dev_id: int = 0, capacity: int = 1024):
        self.dev_id = dev_id
        self._buf = np.zeros(max(capacity, 16), dtype=TRACE_DTYPE)
        self._n = 0

    def record(self, op: int, offset: int, length: int) -> None:
        if self._n == len(self._buf):
            self._buf = np.concatenate([self._buf, np.zeros(len(self._buf), dtype=TRACE_DTYPE)])
        row = self._buf[self._n]
        row["dev_id"] = self.dev_id
        row["op"] = op
        row["offset"] = offset
        row["length"] = length
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def trace(self) -> np.ndarray:
        """A copy of what was recorded so far."""
        return self._buf[: self._n].copy()

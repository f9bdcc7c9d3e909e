"""Block-trace readers: ftrace ``block_rq_issue`` text and blkparse text -> ``thinp.TRACE_DTYPE``.

ftrace (``/sys/kernel/tracing/trace`` with ``events/block/block_rq_issue`` enabled)::

    kworker/u4:2-57 [001] ..... 812.123456: block_rq_issue: 7,0 WS 4096 () 2048 + 8 [kworker/u4:2]

(kernels >= 6.x may add an ``ioprio`` field before ``[comm]``; it is ignored).
blkparse default output::

      7,0    1        3     0.000123456   512  D  WS 2048 + 8 [jbd2/loop0-8]

Only blkparse ``D`` (issue) actions are kept by default, matching
``block_rq_issue``.  ``rwbs`` decides the op: ``D`` discard, ``W`` write, ``R``
read; flushes and zero-length requests (``FF``, ``N``) are dropped.  Offsets are
512-byte sectors * 512.  ``device="7,0"`` keeps one device's requests.
"""
from __future__ import annotations

import gzip
import os
import re
from collections import Counter

import numpy as np

from ..trace import DISCARD, READ, TRACE_DTYPE, WRITE

__all__ = ["read_ftrace", "read_blkparse", "read", "parse_ftrace", "parse_blkparse", "detect_format",
           "devices"]

_FTRACE = re.compile(r"block_rq_issue:\s+(\d+),(\d+)\s+(\S+)\s+(\d+)\s+\((.*?)\)\s+(\d+)\s+\+\s+(\d+)")
_BLKPARSE = re.compile(r"^\s*(\d+),(\d+)\s+\d+\s+\d+\s+[\d.]+\s+\d+\s+([A-Za-z]+)\s+([A-Z]+)\s+(\d+)\s+\+\s+(\d+)")


def _op(rwbs: str) -> int | None:
    if "D" in rwbs:
        return DISCARD
    if "W" in rwbs:
        return WRITE
    if "R" in rwbs:
        return READ
    return None


def _lines(src):
    if isinstance(src, (str, os.PathLike)) and os.path.exists(src):
        opener = gzip.open if os.fspath(src).endswith(".gz") else open
        with opener(src, "rt", errors="replace") as f:
            yield from f
    elif isinstance(src, str):
        yield from src.splitlines()
    else:
        yield from src


def _rows(it, device, dev_id):
    rows = [(dev_id, op, s * 512, n * 512) for (dev, op, s, n) in it
            if op is not None and n > 0 and (device is None or dev == device)]
    out = np.zeros(len(rows), dtype=TRACE_DTYPE)
    if rows:
        a = np.array(rows, dtype=np.uint64)
        out["dev_id"], out["op"], out["offset"], out["length"] = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    return out


def parse_ftrace(src):
    """Yield ``(device "maj,min", op, sector, nr_sectors)`` per ``block_rq_issue`` line."""
    for line in _lines(src):
        m = _FTRACE.search(line)
        if m:
            yield f"{m.group(1)},{m.group(2)}", _op(m.group(3)), int(m.group(6)), int(m.group(7))


def parse_blkparse(src, action: str = "D"):
    """Yield ``(device, op, sector, nr_sectors)`` per blkparse line with ``action``."""
    for line in _lines(src):
        m = _BLKPARSE.match(line)
        if m and m.group(3) == action:
            yield f"{m.group(1)},{m.group(2)}", _op(m.group(4)), int(m.group(5)), int(m.group(6))


def read_ftrace(src, *, dev_id: int = 0, device: str | None = None) -> np.ndarray:
    """An ftrace ``block_rq_issue`` text (path, text or lines) as a TRACE_DTYPE array."""
    return _rows(parse_ftrace(src), device, dev_id)


def read_blkparse(src, *, dev_id: int = 0, device: str | None = None, action: str = "D") -> np.ndarray:
    """blkparse text (path, text or lines) as a TRACE_DTYPE array (``action`` rows only)."""
    return _rows(parse_blkparse(src, action), device, dev_id)


def detect_format(src) -> str:
    for i, line in enumerate(_lines(src)):
        if "block_rq_issue:" in line:
            return "ftrace"
        if _BLKPARSE.match(line):
            return "blkparse"
        if i > 1000:
            break
    raise ValueError(f"{src}: neither ftrace block_rq_issue nor blkparse text")


def devices(src, format: str | None = None) -> Counter:
    """How many requests each ``maj,min`` device has in the trace."""
    fmt = format or detect_format(src)
    it = parse_ftrace(src) if fmt == "ftrace" else parse_blkparse(src)
    return Counter(d for d, op, _s, n in it if op is not None and n > 0)


def read(src, format: str | None = None, **kw) -> np.ndarray:
    fmt = format or detect_format(src)
    if fmt == "ftrace":
        return read_ftrace(src, **kw)
    if fmt == "blkparse":
        return read_blkparse(src, **kw)
    raise ValueError(f"unknown block trace format {fmt!r} (ftrace, blkparse)")

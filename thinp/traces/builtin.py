"""Traces shipped inside the package, as thinp's own compact operation list.

A built-in trace is what :func:`thinp.traces.strace.read` makes of a
captured strace -- the :class:`~thinp.traces.strace.FileOp` rows and the
``stats`` of paths the trace found already there -- stored so that a fresh
clone or ``pip install`` replays it without the capture.  Each file is
derived by ``scripts/make_traces.py`` from ``../shared/fixtures`` and says so
in its header.

File format (``thinp/data/traces/<name>.ops.gz``, gzip'd text, one JSON
array a line after ``#`` comment lines):

* ``["S", path, st_mode, st_size]``: a path the trace saw before creating it;
* ``["O", kind, path, path2, offset, size, mode, uid, gid, flags, lineno]``:
  one operation, in trace order.
"""
from __future__ import annotations

import gzip
import json
from importlib import resources

#: built-in trace name -> the fixture it was derived from (relative to ../shared/fixtures)
BUILTIN = {"dpkg-install-nginx": "workloads/dpkg-install-nginx.strace.gz"}

_FIELDS = ("kind", "path", "path2", "offset", "size", "mode", "uid", "gid", "flags", "lineno")


def builtin_name(trace: str) -> str | None:
    """The built-in trace ``trace`` names: its own name, or the fixture path
    it was derived from (``workloads/dpkg-install-nginx.strace.gz``)."""
    t = str(trace)
    if t in BUILTIN:
        return t
    for name, src in BUILTIN.items():
        if t == src or t.endswith("/" + src):
            return name
    return None


def load(name: str):
    """The built-in trace ``name`` as a :class:`~thinp.traces.strace.Trace`."""
    from .strace import FileOp, Trace

    if name not in BUILTIN:
        raise ValueError(f"unknown built-in trace {name!r} (known: {', '.join(BUILTIN)})")
    tr = Trace()
    ref = resources.files("thinp") / "data" / "traces" / f"{name}.ops.gz"
    with gzip.open(ref.open("rb"), "rt", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("#"):
                continue
            row = json.loads(line)
            if row[0] == "S":
                tr.stats[row[1]] = (row[2], row[3])
            else:
                tr.ops.append(FileOp(**dict(zip(_FIELDS, row[1:]))))
    return tr


def write(trace, out, header: str) -> None:
    """Write ``trace`` (ops and stats) to ``out`` in the format above, with
    ``header`` (provenance) as comment lines.  Byte-reproducible (gzip mtime 0)."""
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        def put(text):
            gz.write(text.encode("utf-8", "surrogateescape"))

        for ln in header.splitlines():
            put(f"# {ln}\n")
        for path, (mode, size) in trace.stats.items():
            put(json.dumps(["S", path, mode, size], ensure_ascii=False) + "\n")
        for op in trace.ops:
            put(json.dumps(["O", *(getattr(op, k) for k in _FIELDS)], ensure_ascii=False) + "\n")

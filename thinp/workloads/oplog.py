"""The operation log a workload run leaves for the timing model.

One row per operation a container's process made, in the order the run made
them, with what the driver did for it: the deltas of
:meth:`thinp.drivers.base.Driver.op_counters` around the call, and the page
cache reads (``(key, first_page, end_page)``, keyed as the driver keys its
page cache) it caused.  Columns (parallel lists, one entry per op):

``pid``       process index (``procs[pid]`` is ``(container, process)``)
``kind``      operation name (``stat``, ``read``, ``write``, ``create``, ...,
              ``container_start``, ``container_rm``, ``sync``, ``exec``)
``phase``     the run's phase (``containers_create``, ``steps``, ``commit``, ...)
``nbytes``    bytes the process asked to read or write
``path``      the path operated on ("" for container operations)
``deltas``    tuple of :data:`~thinp.drivers.OP_COUNTER_KEYS` deltas (or None)
``pc``        ``(begin, end)`` into ``reads``: this op's page-cache reads
"""
from __future__ import annotations

import posixpath

#: MountedView methods the log records, by the kind the model prices
VIEW_OPS = {
    "stat": "stat", "lstat": "stat", "exists": "stat", "readlink": "readlink", "listdir": "readdir",
    "read": "read", "write": "write", "create": "create", "mkdir": "mkdir", "unlink": "unlink",
    "rmdir": "unlink", "rename": "rename", "chmod": "setattr", "chown": "setattr", "utime": "setattr",
    "setxattr": "setattr", "fsync": "fsync", "open": "open", "truncate": "write", "symlink": "create",
    "link": "create", "mknod": "create",
}


class OpLog:
    """Parallel lists of the operations of one run (see the module docstring)."""

    def __init__(self, driver: str):
        self.driver = driver
        self.procs: list[tuple[int, int]] = []
        self._pid: dict = {}
        self.pid: list[int] = []
        self.kind: list[str] = []
        self.phase: list[str] = []
        self.nbytes: list[int] = []
        self.path: list[str] = []
        self.deltas: list = []
        self.pc: list[tuple[int, int]] = []
        self.reads: list = []

    def proc(self, container: int, process: int = 0) -> int:
        key = (container, process)
        p = self._pid.get(key)
        if p is None:
            p = self._pid[key] = len(self.procs)
            self.procs.append(key)
        return p

    def add(self, pid: int, kind: str, phase: str, nbytes: int = 0, path: str = "", deltas=None,
            pc=(0, 0)) -> None:
        self.pid.append(pid)
        self.kind.append(kind)
        self.phase.append(phase)
        self.nbytes.append(int(nbytes))
        self.path.append(path)
        self.deltas.append(deltas)
        self.pc.append(pc)

    def __len__(self) -> int:
        return len(self.kind)

    def by_pid(self) -> list[list[int]]:
        """Op indices per process, in log order."""
        out = [[] for _ in self.procs]
        for i, p in enumerate(self.pid):
            out[p].append(i)
        return out


def _delta(a, b):
    if a is None or b is None:
        return None
    return tuple(y - x for x, y in zip(a, b))


class Recorder:
    """Records operations of a driver into an :class:`OpLog`: wrap a mounted
    view with :meth:`view`, bracket engine calls with :meth:`around`."""

    def __init__(self, driver_obj, log: OpLog):
        self.drv = driver_obj
        self.log = log
        self.phase = "steps"
        self.pid = 0
        cache = getattr(driver_obj, "page_cache", None)
        self._cache = cache
        if cache is not None:
            cache.log = log.reads

    def counters(self):
        return self.drv.op_counters()

    def around(self, kind: str, fn, *a, path: str = "", nbytes: int = 0, **kw):
        """Call ``fn(*a, **kw)`` and log it as one ``kind`` operation."""
        before = self.drv.op_counters()
        r0 = len(self.log.reads)
        try:
            return fn(*a, **kw)
        finally:
            self.log.add(self.pid, kind, self.phase, nbytes, path, _delta(before, self.drv.op_counters()),
                         (r0, len(self.log.reads)))

    def view(self, v):
        return _RecordingView(v, self)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.log = None


class _RecordingView:
    """A mounted view whose file operations go to the op log."""

    def __init__(self, view, rec: Recorder):
        self._view, self._rec = view, rec

    def __getattr__(self, name):
        attr = getattr(self._view, name)
        kind = VIEW_OPS.get(name)
        if kind is None or not callable(attr):
            return attr
        rec = self._rec

        def op(*a, **kw):
            path = a[0] if a and isinstance(a[0], str) else ""
            n = 0
            if kind == "write" and name == "write":
                d = a[2] if len(a) > 2 else kw.get("data", 0)
                n = d if isinstance(d, int) else len(d)
            return rec.around(kind, attr, *a, path=path, nbytes=n, **kw)
        return op

    def walk(self, top: str = "/"):
        """A tree walk as ``find`` makes it: readdir of every directory and
        an lstat of every entry, each logged."""
        stack = [top]
        while stack:
            d = stack.pop()
            names = self.listdir(d)
            dirs, files = [], []
            for n in names:
                p = posixpath.join(d, n)
                st = self.lstat(p)
                (dirs if (st.st_mode & 0o170000) == 0o040000 else files).append(n)
            yield d, dirs, files
            stack.extend(posixpath.join(d, n) for n in reversed(dirs))

"""Run a :class:`Workload` on one storage driver through :class:`thinp.Engine`."""
from __future__ import annotations

import dataclasses
import errno
import io
import os
import posixpath
import stat as _stat
from dataclasses import dataclass, field

import numpy as np

from ..engine import Engine
from ..errors import ThinpError
from .format import SELECTS_DIRS, Selectable, Step, Workload, WorkloadError, check_globs, setting_error
from .images import build_image, content

__all__ = ["RunResult", "run", "scaled"]

PHASE_OF = {"commit": "commit", "diff": "diff", "export": "export", "rm": "rm"}


@dataclass
class RunResult:
    driver: str
    workload: str
    metrics: dict = field(default_factory=dict)
    per_container: list[dict] = field(default_factory=list)
    phases: dict[str, dict] = field(default_factory=dict)
    error: str | None = None
    #: the operations the containers made, for the timing model
    #: (:class:`thinp.workloads.oplog.OpLog`; None when the run was not recorded)
    oplog: object = None


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in b if isinstance(b[k], (int, float))}


def _add(acc: dict, d: dict) -> None:
    for k, v in d.items():
        acc[k] = acc.get(k, 0) + v


#: sizes below this are never scaled: a 5-byte append or a 4 KiB write
#: stays what it is (scaling it would change what the kernel does with it)
SCALE_MIN_BYTES = 64 << 10


def scaled(w: Workload, scale: float) -> Workload:
    """A copy of ``w`` with container and repetition counts times ``scale``,
    and sizes of :data:`SCALE_MIN_BYTES` or more times ``scale`` (never
    below it); smaller sizes stay as they are."""
    if scale == 1.0:
        return w
    s = lambda n, lo=1: max(lo, int(round(n * scale)))   # noqa: E731

    def sz(n):
        return n if n < SCALE_MIN_BYTES else max(SCALE_MIN_BYTES, int(round(n * scale)))
    layers = [dataclasses.replace(l, size=sz(l.size)) if isinstance(l.size, int) else l
              for l in w.image.layers]
    img = dataclasses.replace(w.image, extra=[(p, sz(n)) for p, n in w.image.extra],
                              layers=layers)
    steps = []
    for st in w.steps:
        st = dataclasses.replace(st, count=s(st.count), size=sz(st.size),
                                 depth=max(1, int(round(st.depth * scale ** 0.5))) if st.depth else 0)
        steps.append(st)
    return dataclasses.replace(w, image=img, containers=s(w.containers), steps=steps)


class _Runner:
    def __init__(self, eng: Engine, w: Workload, image_ref: str, files: list[str], scale: float,
                 dirs=()):
        self.eng, self.w, self.ref, self.files, self.scale = eng, w, image_ref, files, scale
        self.payload = bool(getattr(eng.driver, "payload", False))
        self.phase: dict[str, dict] = {}
        self._image = Selectable(files, dirs)     # the image's paths; its match cache is shared
        self.app_bytes_written = 0                # bytes the steps passed to write(2)
        self.sel: dict[int, Selectable] = {}      # container index -> its selectable paths
        self.rec = None                           # thinp.timing.Recorder, when recording
        self.p = 0                                # the process running the current step

    def data(self, n: int, seed: int):
        return content(seed, n) if self.payload else n

    def paths(self, st: Step, ci: int, rng, i: int = 0, si: int = 0) -> list[str]:
        if st.path:
            return [st.path.format(c=ci, i=i, p=self.p)]
        pool = self.selectable(ci).select(st.glob, dirs=st.op in SELECTS_DIRS)
        if not pool:
            key, val = (f"steps[{si}].glob", st.glob) if st.glob else (f"steps[{si}].sample", st.sample)
            raise setting_error(self.w.source, key, val, f"selects nothing in container {ci} (earlier steps "
                       f"deleted or renamed every match)")
        if st.sample:
            k = min(st.sample, len(pool))
            return [pool[j] for j in sorted(rng.choice(len(pool), k, replace=False))]
        return pool

    def selectable(self, ci: int) -> Selectable:
        sel = self.sel.get(ci)
        if sel is None:
            sel = self.sel[ci] = self._image.copy()
        return sel

    def engine_op(self, kind: str, fn, *a, **kw):
        """An engine call (commit, diff, export, rm), logged when recording."""
        if self.rec is None:
            return fn(*a, **kw)
        return self.rec.around(kind, fn, *a, **kw)

    def step(self, c, ci: int, si: int, st: Step, rng):
        p = self.p          # the process running this step (set by the caller)
        raw = self.eng.mount(c)
        view = raw if self.rec is None else self.rec.view(raw)
        v = _CountingView(view, self)
        op = st.op
        if op in ("files", "tree"):
            self.selectable(ci).record(st, [], ci, p)
        seed = self.w.seed * 1_000_003 + ci * 1009 + si + p * 100_003
        if op in ("stat", "readdir", "readlink", "walk", "exec"):
            for i in range(st.count):
                for q in self.paths(st, ci, rng, i, si):
                    if op == "stat":
                        v.stat(q)
                    elif op == "readdir":
                        v.listdir(q)
                    elif op == "readlink":
                        v.readlink(q)
                    elif op == "walk":
                        for _ in v.walk(q):
                            pass
                    elif self.rec is not None:
                        self.rec.around("exec", _exec, raw, q, path=q)
                    else:
                        _exec(raw, q)
            return c
        if op in ("commit", "diff", "export", "rm"):
            if ci % st.every:
                return c
            if op == "commit":
                img = self.engine_op("commit", self.eng.commit, c, f"thinp-wl/{self.w.name}-{ci}:{si}",
                                     created="2024-01-01T00:00:00Z")
                if st.chain:
                    self.eng.rm(c, force=True)
                    c = self.eng.create(img.id)
                    self.eng.start(c)
            elif op == "diff":
                self.engine_op("diff", self.eng.diff, c)
            elif op == "export":
                self.engine_op("export", self.eng.export, c, io.BytesIO() if not self.payload else _Null())
            else:
                self.engine_op("container_rm", self.eng.rm, c, force=True)
                return None
            return c
        if op == "strace":
            self.strace(v, st)
            return c
        if op == "tree":
            base = (st.path or "/tree").format(c=ci, i=0, p=p)
            self._mkdirs(v, base)
            level = [base]
            for d in range(st.depth):
                nxt = []
                for p in level:
                    for k in range(st.fanout):
                        q = f"{p}/{k}"
                        v.mkdir(q, 0o755)
                        nxt.append(q)
                    if st.size:
                        v.create(p + "/f", 0o644)
                        v.write(p + "/f", 0, self.data(st.size, seed + d))
                level = nxt
            return c
        if op == "files":
            base = st.path.format(c=ci, i=0, p=p)
            self._mkdirs(v, base)
            per = 1000
            for i in range(st.count):
                d = f"{base}/d{i // per:03d}"
                if i % per == 0:
                    v.mkdir(d, 0o755)
                v.create(f"{d}/f{i:05d}", st.mode)
                if st.size:
                    v.write(f"{d}/f{i:05d}", 0, self.data(st.size, seed + i))
            return c
        reps = 1 if op in ("mkdir", "chmod", "delete", "rename", "fsync", "overwrite") else st.count
        done: list[str] = []
        try:
            for i in range(reps):
                for p in self.paths(st, ci, rng, i, si):
                    self._op(v, st, p, ci, i, rng, seed)
                    done.append(p)
        finally:    # what the step did, even if it stopped half-way (ENOSPC)
            if op in ("create", "append", "mkdir", "delete", "rename"):
                self.selectable(ci).record(st, done, ci, p)
        return c

    def _op(self, v, st: Step, p: str, ci: int, i: int, rng, seed: int) -> None:
        op = st.op
        if op == "read":
            v.read(p, 0, st.size or None)
        elif op == "write":
            n = st.size or st.block
            if st.offset == "random":
                size = v.stat(p).st_size
                nblk = max(1, (size - n) // st.block + 1)
                off = int(rng.integers(0, nblk)) * st.block
            elif st.offset == "end":
                off = v.stat(p).st_size
            else:
                off = st.offset
            v.write(p, off, self.data(n, seed + i))
        elif op == "append":
            off = v.stat(p).st_size if v.exists(p) else 0
            if not v.exists(p):
                self._mkdirs(v, posixpath.dirname(p))
                v.create(p, st.mode)
            v.write(p, off, self.data(st.size or st.block, seed + i))
        elif op == "overwrite":
            n = st.size or v.stat(p).st_size
            v.open(p, write=True, truncate=True)
            v.write(p, 0, self.data(n, seed + i))
        elif op == "create":
            self._mkdirs(v, posixpath.dirname(p))
            v.create(p, st.mode)
            if st.size:
                v.write(p, 0, self.data(st.size, seed + i))
        elif op == "delete":
            v.unlink(p)
        elif op == "rename":
            v.rename(p, (st.to or p + ".renamed").format(c=ci, i=i, p=self.p))
        elif op == "chmod":
            v.chmod(p, st.mode)
        elif op == "mkdir":
            self._mkdirs(v, p)
        elif op == "fsync":
            v.fsync(p)

    @staticmethod
    def _mkdirs(v, p):
        parts = [x for x in p.split("/") if x]
        cur = ""
        for x in parts:
            cur += "/" + x
            if not v.exists(cur):
                v.mkdir(cur, 0o755)

    def strace(self, v, st: Step):
        from ..traces import strace as _strace

        path = st.trace
        key = path
        tr = _TRACES.get(key)
        if tr is None:
            from ..traces import builtin as builtin_traces

            name = None if os.path.exists(path) else builtin_traces.builtin_name(path)
            tr = _TRACES[key] = builtin_traces.load(name) if name else _strace.read(path)
        debs = {p: size for p, (mode, size) in tr.stats.items()
                if p.startswith("/tmp/") and _stat.S_ISREG(mode)}
        for p, size in debs.items():
            self._mkdirs(v, posixpath.dirname(p))
            if not v.exists(p):
                v.create(p, 0o644)
                v.write(p, 0, self.data(size, len(p)))
        if any(op.path == "/var/log/dpkg.log" for op in tr.ops):
            # dpkg appends to a log its image already had (the fixture's lower did);
            # a trace that never touches it gets no such file
            self._mkdirs(v, "/var/log")
            if not v.exists("/var/log/dpkg.log"):
                v.create("/var/log/dpkg.log", 0o644)
        _strace.replay(tr.ops, v)


_TRACES: dict = {}

#: the key under which phases and per-container deltas carry the bytes the
#: workload itself wrote (the cost model's write-amplification denominator)
APP_BYTES = "app_bytes_written"


class _CountingView:
    """A mounted view that counts the bytes the workload asks to write."""

    def __init__(self, view, runner):
        self._view, self._runner = view, runner

    def write(self, path, offset, data):
        self._runner.app_bytes_written += data if isinstance(data, int) else len(data)
        return self._view.write(path, offset, data)

    def __getattr__(self, name):
        return getattr(self._view, name)


class PoolFullError(ThinpError):
    """The driver's thin pool ran out of data space (writes queued, as dm-thin
    does with queue_if_no_space); the run stops here."""


def _check_pool(eng: Engine) -> None:
    pool = getattr(eng.driver, "pool", None)
    if pool is None or not hasattr(pool, "status"):
        return
    st = pool.status()
    queued = int(getattr(pool, "nr_queued", 0) or 0)
    if queued or st.used_data_blocks >= st.total_data_blocks or st.mode != "rw":
        bs = st.data_block_size
        raise PoolFullError(
            f"{eng.driver.name} thin pool is full: {st.used_data_blocks * bs >> 20} of "
            f"{st.total_data_blocks * bs >> 20} MiB data used, {queued} requests queued, mode {st.mode}")


class _Null(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        return len(b)


def _image_files(eng: Engine, ref: str) -> tuple[list[str], list[str]]:
    """``(files, dirs)``: the regular files and directories a container of
    ``ref`` sees (absolute paths, "/" left out)."""
    c = eng.create(ref, name="thinp-wl-probe")
    v = eng.mount(c)
    out, dirs_out = [], []
    for d, dirs, files in v.walk("/"):
        dirs_out += [posixpath.join(d, x) for x in dirs]
        for f in files:
            p = posixpath.join(d, f)
            try:
                if _stat.S_ISREG(v.stat(p, follow_symlinks=False).st_mode):
                    out.append(p)
            except OSError:
                pass
    eng.rm(c, force=True)
    return out, dirs_out


#: the driver a workload is checked on when it loads (:func:`dry_run`)
REFERENCE = "reference"

_WHY = {FileNotFoundError: "nothing made it before this step", NotADirectoryError: "a parent is not a directory",
        IsADirectoryError: "it is a directory", FileExistsError: "it exists already"}


def _path_error(w: Workload, si: int, st: Step, ci: int, e: OSError) -> WorkloadError:
    path = st.path or e.filename or st.glob        # the path as the user wrote it
    why = next((t for c, t in _WHY.items() if isinstance(e, c)), "")
    where = f"steps[{si}]" + (f" in container {ci}" if w.containers > 1 else "")
    return WorkloadError(f"{w.source}: {where} ({st.op} {path}): {e.strerror or e}"
                         + (f"; {why}" if why else ""))


def run(workload: Workload | str, driver: str, *, root=None, scale: float = 1.0, progress=None,
        record: bool = True, **driver_options) -> RunResult:
    """Run ``workload`` (a :class:`Workload`, a TOML path or a scenario name) on ``driver``.

    Phases: ``image_load`` (build the image, add its layers), ``containers_create``
    (create + start every container), then each container's steps, whose metric
    deltas go to ``steps`` or, for those ops, ``commit``/``diff``/``export``/``rm``
    (metrics are read where the phase changes, not after every step: some drivers'
    stats walk every inode).  Every reading is taken after :meth:`Engine.sync`
    (``sync(1)``), as a user measuring a container's writes would: a mounted
    filesystem's delayed data counts in the phase that wrote it, and
    ``metrics`` (the end of the run) is after a final sync.  Phase and
    per-container deltas also carry ``app_bytes_written``: the bytes the
    workload's steps passed to ``write`` (the same on every driver; the cost
    model's write-amplification denominator).  ``per_container[i]`` holds ``create`` and ``steps``
    deltas.  ``scale`` multiplies container counts, step repetitions and sizes and
    synthetic file counts, and keeps every ``round(1/scale)``-th file of a profile.

    ``record`` keeps the containers' operations in ``oplog`` for the timing
    model (:func:`thinp.timing.simulate`).

    A driver limit (``TooManyLayersError``, a devicemapper ``NoSpaceError``, a
    thin pool that fills up: :class:`PoolFullError`, ENOSPC) stops the run and is
    recorded in ``error``, never raised; a malformed workload raises
    :class:`~thinp.workloads.WorkloadError`."""
    from .scenarios import load

    w = load(workload) if isinstance(workload, (str, os.PathLike)) else workload
    w = scaled(w, scale)
    res = RunResult(driver, w.name)
    with Engine(driver, root=root, **driver_options) as eng:
        last = eng.metrics()

        runner = None

        def measure(quiet=False):
            # what a user measures: ``sync`` first, so data a mounted
            # filesystem still holds (delayed allocation on devicemapper's
            # xfs/ext4) counts as written, in the phase that wrote it
            try:
                eng.sync()
            except (ThinpError, OSError):
                if not quiet:
                    raise
            m = eng.metrics()
            m[APP_BYTES] = runner.app_bytes_written if runner is not None else 0
            return m

        rec = None

        def mark(phase, per=None, quiet=False):
            nonlocal last
            if rec is not None and phase != "image_load":
                rec.phase = phase
                now = rec.around("sync", measure, quiet)
            else:
                now = measure(quiet)
            d = _delta(last, now)
            _add(res.phases.setdefault(phase, {}), d)
            if per is not None:
                _add(per, d)
            last = now
            return d

        try:
            big = sum(n for _p, n in w.image.extra) + sum(
                l.files * l.size for l in w.image.layers if isinstance(l.size, int)) > (64 << 20)
            img = build_image(w.image, seed=w.seed, scale=scale, workdir="cache" if big else None,
                              src=w.source)
            ref = f"thinp-wl/{w.name}:latest"
            eng.add_images([img], tags_for=lambda _i: [ref])
            if w.image.kind == "archive" or scale != 1 or any(s.sample and not s.glob for s in w.steps):
                files, dirs = _image_files(eng, ref)
            else:
                from .format import image_tree
                files, dirs = image_tree(w.image)
            check_globs(w, files, dirs)
            mark("image_load")
            r = runner = _Runner(eng, w, ref, files, scale, dirs)
            if record and hasattr(eng.driver, "op_counters"):
                from .oplog import OpLog, Recorder

                rec = r.rec = Recorder(eng.driver, OpLog(driver))
                res.oplog = rec.log
            conts = []
            for ci in range(w.containers):
                per = {"container": ci}
                res.per_container.append(per)
                if rec is not None:
                    rec.pid, rec.phase = rec.log.proc(ci), "containers_create"
                    if w.run_rm:
                        rec.log.add(rec.pid, "engine_run", rec.phase)
                    conts.append(rec.around("container_start", _create_start, eng, ref, f"wl{ci}"))
                    _barrier(rec, ci, w.processes, "start")
                else:
                    conts.append(_create_start(eng, ref, f"wl{ci}"))
                _check_pool(eng)
                d = mark("containers_create")
                per["create"] = d
                if progress:
                    progress(ci + 1, w.containers * 2)
            for ci, c in enumerate(conts):
                rngs = [np.random.default_rng([w.seed, ci] if p == 0 else [w.seed, ci, p])
                        for p in range(w.processes)]
                steps_d = {}
                pending = None      # metrics are read only where the phase changes (stats can be slow)
                if rec is not None:
                    rec.pid = rec.log.proc(ci)
                for si, st in enumerate(w.steps):
                    if c is None:
                        break
                    ph = PHASE_OF.get(st.op, "steps")
                    if pending is not None and ph != pending:
                        if rec is not None:
                            rec.pid = rec.log.proc(ci)
                        _add(steps_d, mark(pending))
                    pending = ph
                    try:
                        if rec is not None:
                            rec.phase = ph
                        if st.op in PHASE_OF:       # an engine step: once, when every process got here
                            _barrier(rec, ci, w.processes, f"step{si}")
                            if rec is not None:
                                rec.pid = rec.log.proc(ci)
                            r.p = 0
                            c = r.step(c, ci, si, st, rngs[0])
                            _barrier(rec, ci, w.processes, f"step{si}-done")
                        else:
                            for p in range(w.processes):
                                if rec is not None:
                                    rec.pid = rec.log.proc(ci, p)
                                r.p = p
                                c = r.step(c, ci, si, st, rngs[p])
                    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
                        if driver != REFERENCE:
                            raise       # the reference ran it: this driver is wrong, not the workload
                        raise _path_error(w, si, st, ci, e) from None
                    _check_pool(eng)
                if rec is not None:
                    rec.pid = rec.log.proc(ci)
                if w.run_rm and c is not None:
                    _barrier(rec, ci, w.processes, "rm")
                    if pending != "rm":
                        if pending is not None:
                            _add(steps_d, mark(pending))
                        pending = "rm"
                    if rec is not None:
                        rec.phase = "rm"
                    r.engine_op("container_rm", eng.rm, c, force=True)
                    if rec is not None:
                        rec.log.add(rec.pid, "engine_rm", "rm")
                    c = None
                if pending is not None:
                    _add(steps_d, mark(pending))
                per = res.per_container[ci]
                per["steps"] = steps_d
                if progress:
                    progress(w.containers + ci + 1, w.containers * 2)
        except WorkloadError:
            raise
        except (ThinpError, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, ThinpError) and e.errno not in (
                    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMLINK):
                raise
            res.error = f"{type(e).__name__}: {e}"
            mark("error", quiet=True)      # a full pool may refuse the writeback too
        res.metrics = measure(quiet=True)
        res.metrics.pop(APP_BYTES)
        if rec is not None:
            rec.close()
    return res


def _barrier(rec, ci: int, n: int, name: str) -> None:
    """Every process of container ``ci`` waits here for the others (logged
    only: the runner itself runs them one after another)."""
    if rec is None or n <= 1:
        return
    for p in range(n):
        rec.log.add(rec.log.proc(ci, p), "barrier", rec.phase, n, f"{ci}:{name}")


def _exec(view, path: str) -> None:
    """fork/exec of ``path``: the lookup, then the binary's pages through
    the page cache (the loader maps and faults in what it runs; here, the
    whole file)."""
    view.stat(path)
    view.read(path, 0, None)


def _create_start(eng: Engine, ref: str, name: str):
    c = eng.create(ref, name=name)
    eng.start(c)
    return c

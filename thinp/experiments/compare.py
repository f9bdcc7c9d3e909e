"""``thinp.compare``: one workload on several storage drivers, its bytes
counted (:mod:`thinp.cost`) and its times simulated (:mod:`thinp.timing`),
as a DataFrame (one row per driver) and a figure
(:func:`thinp.plot.compare_figure`).

The runs come from ``thinp.workloads.run(workload, driver, scale=...)``,
which returns a ``RunResult`` with ``driver``, ``workload``, ``metrics``
(:meth:`thinp.Engine.metrics`), ``per_container`` (metric deltas per
container), ``phases`` (metric deltas per phase: ``"image_load"``,
``"containers_create"``, ``"steps"``, ...) and ``error`` (``None`` or why the
driver could not run the workload).  A failing driver keeps its row: the
metric columns are empty and ``error`` says why; the other drivers go on.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time

from ..drivers.base import DRIVER_NAMES as ALL_DRIVERS  # the seven drivers, in the table's order
from ..timing.model import SIM_COLUMNS, SIM_TEXT_COLUMNS

#: Columns of the DataFrame after ``driver`` (units in the names): the byte
#: accounting (:func:`thinp.cost.estimate`); the page cache, from the timing
#: model's simulated LRU (:func:`thinp.cost.page_cache_columns`:
#: ``page_cache_bytes`` the memory the containers' reads occupy,
#: ``page_cache_miss_bytes``/``page_cache_hit_bytes`` what they missed and
#: hit); then every time, from the concurrent timing model
#: (:data:`thinp.timing.model.SIM_COLUMNS`: ``sim_time_s`` the run's wall
#: time; per container, mean over containers, ``sim_start_s`` its start,
#: ``sim_first_write_s`` its first write call (the first that copied up or
#: CoW'd, else the first), ``sim_steps_s`` its steps; the shares of process
#: time waiting on the CPU, the device and locks; ``sim_phases`` seconds of
#: process time per phase and ``sim_waits`` the share per resource, as JSON
#: text); last ``sim_per_container``, each container's own simulated times
#: as JSON text (a list of ``{"container", "start_s", "first_write_s",
#: "steps_s", "end_s"}``, ``first_write_s`` null when it wrote nothing):
#: :func:`per_container_frame` turns it into a DataFrame to plot.
COLUMNS = (
    "disk_used_bytes", "disk_data_bytes", "disk_metadata_bytes", "bytes_written",
    "copy_up_bytes", "cow_bytes", "zeroing_bytes", "lookup_probes", "write_amplification",
    "page_cache_bytes", "page_cache_miss_bytes", "page_cache_hit_bytes", "containers",
    "inodes", "run_s",
    *SIM_COLUMNS, "sim_per_container",
)
#: the text columns (JSON) of :data:`COLUMNS`; empty strings in a failed row
TEXT_COLUMNS = (*SIM_TEXT_COLUMNS, "sim_per_container")
#: the per-container times in ``sim_per_container``, seconds
PER_CONTAINER_TIMES = ("start_s", "first_write_s", "steps_s", "end_s")

#: Key columns for the terminal table; lower is better for all of them.
KEY_COLUMNS = ("disk_used_bytes", "bytes_written", "write_amplification", "page_cache_bytes",
               "sim_start_s", "sim_first_write_s", "sim_steps_s", "sim_time_s")


#: The terminal table: (column, header with its unit, divisor); lower is better in each.
VIEW = (
    ("disk_used_bytes", "disk MiB", 1 << 20),
    ("bytes_written", "written MiB", 1 << 20),
    ("write_amplification", "write ampl. x", 1),
    ("page_cache_bytes", "page cache MiB", 1 << 20),
    ("sim_start_s", "start/ctr ms", 1e-3),
    ("sim_first_write_s", "1st write ms", 1e-3),
    ("sim_steps_s", "steps/ctr ms", 1e-3),
    ("sim_time_s", "total s", 1),
)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def table_view(df):
    """The terminal table of a :func:`compare` DataFrame: ``(rows, best)``,
    ``rows`` one dict per driver that ran (``"driver"`` and each header of
    :data:`VIEW`, values scaled to the header's unit), ``best`` the set of
    ``(row index, header)`` cells lowest in their column."""
    ok = [r for r in df.to_dict(orient="records") if not (isinstance(r.get("error"), str) and r["error"])]
    rows = [{"driver": r["driver"], **{h: (None if _missing(r[c]) else r[c] / div) for c, h, div in VIEW}}
            for r in ok]
    best = set()
    for _c, h, _d in VIEW:
        vals = [r[h] for r in rows if r[h] is not None]
        if vals:
            lo = min(vals)
            best |= {(i, h) for i, r in enumerate(rows) if r[h] == lo}
    return rows, best


def waits_view(df) -> tuple[list[dict], list[str]]:
    """The timing model's breakdown per driver: ``(rows, columns)``, a row
    per driver that ran with its simulated wall time and the share of all
    process time spent waiting on each resource (``cpu``, ``device``, each
    lock class; columns ordered by the largest share anywhere)."""
    import json

    rows, totals = [], {}
    for r in df.to_dict(orient="records"):
        if r.get("error") or not r.get("sim_waits"):
            continue
        waits = json.loads(r["sim_waits"])
        for k, v in waits.items():
            totals[k] = max(totals.get(k, 0.0), v)
        rows.append({"driver": r["driver"], "sim total s": r["sim_time_s"], **waits})
    cols = sorted(totals, key=lambda k: -totals[k])
    for row in rows:
        for c in cols:
            row.setdefault(c, 0.0)
    return rows, ["driver", "sim total s", *cols]


def phases_view(df) -> tuple[list[dict], list[str]]:
    """The timing model's time per phase per driver: ``(rows, columns)``, a
    row per driver that ran with the seconds of process time each phase
    took (``containers_create``, ``steps``, ``commit``, ``rm``, ... in the
    order the run made them), summed over its processes."""
    import json

    rows, cols = [], []
    for r in df.to_dict(orient="records"):
        if r.get("error") or not r.get("sim_phases"):
            continue
        phases = json.loads(r["sim_phases"])
        cols += [p for p in phases if p not in cols]
        rows.append({"driver": r["driver"], **phases})
    for row in rows:
        for c in cols:
            row.setdefault(c, 0.0)
    return rows, ["driver", *cols]


def failures(df) -> list[str]:
    """Each distinct driver error once: ``"aufs, vfs: OSError: ..."``."""
    by_error: dict[str, list] = {}
    for r in df.to_dict(orient="records"):
        if isinstance(r.get("error"), str) and r["error"]:
            by_error.setdefault(r["error"], []).append(r["driver"])
    return [f"{', '.join(ds)}: {e}" for e, ds in by_error.items()]


class CompareError(ValueError):
    """Bad arguments to compare (unknown driver, empty list)."""


def parse_drivers(drivers) -> list[str]:
    """``"all"``, ``"a,b"`` or a list -> a checked list of driver names."""
    if drivers is None or drivers == "all":
        return list(ALL_DRIVERS)
    if isinstance(drivers, str):
        drivers = [d.strip() for d in drivers.split(",") if d.strip()]
    drivers = list(drivers)
    if not drivers:
        raise CompareError("no drivers given (use 'all' or a comma-separated list)")
    from ..drivers import known_drivers

    known = set(known_drivers(hidden=True))
    for d in drivers:
        if d not in known:
            raise CompareError(f"unknown driver {d!r} (known: {', '.join(ALL_DRIVERS)})")
    return drivers


def _default_runner():
    """:mod:`thinp.workloads` (``load`` and ``run``)."""
    from .. import workloads

    return workloads


def row_from_result(result, *, device="nvme", constants=None, run_s=float("nan"), timing=None) -> dict:
    """One DataFrame row (a dict) from a RunResult-shaped object."""
    from ..cost import estimate

    row = {"driver": result.driver, "workload": getattr(result, "workload", None),
           "error": getattr(result, "error", None)}
    if row["error"]:
        row.update({c: float("nan") for c in COLUMNS})
        row.update({c: "" for c in TEXT_COLUMNS})
        row["run_s"] = run_s
        return row
    m = result.metrics or {}
    est = estimate(result.driver, m, per_container=list(result.per_container or []),
                   phases=dict(result.phases or {}), constants=constants)
    row.update(est)
    row["inodes"] = float(m.get("inodes", 0) or 0)
    row["run_s"] = run_s
    row.update(_timing_columns(result, device, timing))
    return row


def _timing_columns(result, device, timing) -> dict:
    """The concurrent timing model's columns (:mod:`thinp.timing`): its
    times, per container, and the page cache its LRU priced the reads with;
    empty where the run left no operation log."""
    import json

    from ..cost import PAGE_CACHE_COLUMNS, page_cache_columns
    from ..timing import TimingConstants
    from ..timing.model import simulate

    log = getattr(result, "oplog", None)
    if log is None:
        return {c: (float("nan") if c not in TEXT_COLUMNS else "")
                for c in (*SIM_COLUMNS, *PAGE_CACHE_COLUMNS, "sim_per_container")}
    k = timing or TimingConstants()
    rep = simulate(log, device=device, constants=k)
    per = [{"container": int(c["container"]),
            **{t: (None if _missing(c.get(t)) else float(c[t])) for t in PER_CONTAINER_TIMES}}
           for c in rep.per_container]
    return {**rep.row(), **page_cache_columns(rep, k.cache_bytes), "sim_per_container": json.dumps(per)}


def per_container_frame(df):
    """Each container's simulated times from a :func:`compare` DataFrame, one
    row per (driver, container): ``driver``, ``container`` and the seconds of
    :data:`PER_CONTAINER_TIMES` (``start_s`` its start, ``first_write_s`` its
    first write call, NaN when it wrote nothing, ``steps_s`` its steps,
    ``end_s`` when its last operation ended, from the run's start).  Drivers
    that failed have no rows.  For instance, to plot each driver's spread::

        pc = per_container_frame(df)
        pc.boxplot(column="steps_s", by="driver")
    """
    import json

    import pandas as pd

    rows = []
    for r in df.to_dict(orient="records"):
        text = r.get("sim_per_container")
        if not isinstance(text, str) or not text:
            continue
        for c in json.loads(text):
            rows.append({"driver": r["driver"], "container": c["container"],
                         **{t: (float("nan") if c.get(t) is None else c[t]) for t in PER_CONTAINER_TIMES}})
    return pd.DataFrame(rows, columns=["driver", "container", *PER_CONTAINER_TIMES])


def compare(workload="webapp", drivers="all", device="nvme", out=None, scale=1.0, progress=True,
            *, jobs=None, runner=None, constants=None, timing=None, root=None, figure=True, **driver_options):
    """Run ``workload`` on each driver; return ``(DataFrame, Figure)``.

    ``workload`` is a scenario name, a TOML path or a loaded Workload;
    ``drivers`` ``"all"``, ``"a,b"`` or a list; ``device`` a profile name,
    TOML path or :class:`~thinp.cost.DeviceProfile`; ``out`` a directory that
    receives ``compare.csv``, ``compare.parquet`` and ``compare.png``.
    ``progress`` is True (a rich progress bar on stderr), False, or a
    callable ``progress(driver, i, n)``.  ``jobs`` is how many drivers run at
    once, each in its own process (default: the CPUs, at most one per
    driver; 1 runs everything in this process); the drivers are independent,
    so the rows are the same whatever ``jobs`` is.  ``runner`` is an object
    with ``load(source)`` and ``run(workload, driver, *, root, scale,
    progress, **driver_options)`` (default :mod:`thinp.workloads`; a runner
    that is not an importable module runs in this process).  ``constants``
    is a :class:`~thinp.cost.CostConstants` or a TOML file with a
    ``[constants]`` table (the byte accounting's page-cache size, ...) and an
    optional ``[timing]`` table; ``timing`` a
    :class:`~thinp.timing.TimingConstants` (or a TOML file with a
    ``[timing]`` table) for the timing model behind every time column
    (cores, per-op CPU costs, locks' costs, container start and removal).
    ``figure=False`` skips the figure (the Figure returned is None) unless
    ``out`` asks for its PNG: drawing it is most of a second after the
    drivers are done."""
    import types

    import pandas as pd

    from ..cost import load_device
    dev = load_device(device)
    if isinstance(constants, (str, os.PathLike)):
        from ..cost import CostConstants
        from ..timing import TimingConstants

        path = os.fspath(constants)
        constants = CostConstants.from_toml(path)
        if timing is None:
            timing = TimingConstants.from_toml(path)    # its [timing] table, if any
    if isinstance(timing, (str, os.PathLike)):
        from ..timing import TimingConstants

        timing = TimingConstants.from_toml(os.fspath(timing))
    names = parse_drivers(drivers)
    runner = runner or _default_runner()
    wl = runner.load(workload) if isinstance(workload, (str, os.PathLike)) else workload
    wname = getattr(wl, "name", str(workload))
    if jobs is None:
        from .workers import cpus

        jobs = min(cpus(), len(names))
    if jobs < 1:
        raise CompareError(f"jobs must be at least 1, not {jobs}")
    runner_name = runner.__name__ if isinstance(runner, types.ModuleType) else None
    if runner_name is None:
        jobs = 1
    fatal = tuple(c for c in (getattr(runner, "WorkloadError", None),) if isinstance(c, type))
    job = dict(wl=wl, wname=wname, scale=scale, device=dev, constants=constants, root=root,
               driver_options=driver_options, timing=timing)
    rows: dict[str, dict] = {}

    if jobs == 1:
        def run_all(step, tick, describe):
            for i, d in enumerate(names):
                step(d, i)
                describe(d)
                rows[d] = _one(runner, fatal, d, job, lambda k, m, i=i: tick(i + k / max(m, 1)))
                tick(i + 1)
    else:
        # the worker processes are forked now, before the progress bar's thread exists
        pool = _start_pool(runner_name, jobs)

        def run_all(step, tick, describe):
            try:
                _parallel(pool, names, job, rows, step, tick, describe)
            except BaseException:       # a malformed workload, Ctrl-C: stop the workers now
                from .workers import stop_pool

                stop_pool(pool[0])
                raise
            pool[0].shutdown()

    if progress is True:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed:.0f}/{task.total}"), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("compare", total=len(names))
            run_all(lambda d, i: None, lambda done: bar.update(task, completed=done),
                    lambda running: bar.update(task, description=f"compare: {running}"))
    else:
        run_all((lambda d, i: progress(d, i, len(names))) if callable(progress) else (lambda d, i: None),
                lambda done: None, lambda running: None)
    df = pd.DataFrame([rows[d] for d in names], columns=["driver", "workload", *COLUMNS, "error"])
    df["device"] = dev.name
    fig = None
    if figure or out is not None:
        from ..plot import compare_figure

        fig = compare_figure(df, title=f"{wname} on {dev.name}")
    if out is not None:
        save(df, fig, out)
    return df, fig


def _one(runner, fatal, d, job, sub_progress=None) -> dict:
    """One driver's run -> its row (a driver failing gives an error row;
    a malformed workload -- ``fatal`` -- is raised)."""
    t0 = time.perf_counter()
    root = job["root"]
    sub = None if root is None else os.path.join(os.fspath(root), d)
    with _young_collections_only():
        try:
            res = runner.run(job["wl"], d, root=sub, scale=job["scale"], progress=sub_progress,
                             **job["driver_options"])
        except fatal:
            raise                   # the workload itself is wrong (a glob matching nothing)
        except Exception as e:  # a driver failing must not abort the comparison
            res = _Failed(d, job["wname"], f"{type(e).__name__}: {e}")
        row = row_from_result(res, device=job["device"], constants=job["constants"],
                              run_s=time.perf_counter() - t0, timing=job.get("timing"))
    # A closed engine's state (a vfs filesystem: 2.5 M objects) is freed by
    # reference counting as it goes; what cyclic garbage outlived the young
    # collections goes now, so the next driver this process runs does not
    # start beside it.
    del res
    gc.collect()
    return row


@contextlib.contextmanager
def _young_collections_only():
    """The cyclic collector's full (oldest-generation) passes off for one
    driver's run, its young ones kept.  A run's heap is mostly long-lived
    (a vfs run holds 2.7 M objects at its peak), so each full pass rescans
    it all and finds next to nothing: 1.4 s of a vfs run's 11 s.  The young
    passes still free the run's short-lived cycles; :func:`_one` collects
    in full once, at the end."""
    threshold = gc.get_threshold()
    gc.set_threshold(threshold[0], threshold[1], 1 << 30)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


# drivers known to take longest on the built-in scenarios start first, so
# the others fill the remaining processes around them
_SLOW_FIRST = ("vfs", "devicemapper", "zfs", "btrfs")


def _start_pool(runner_name, jobs):
    """``jobs`` started worker processes and the queue they report progress on."""
    from .workers import mp_context, process_pool

    ctx = mp_context()
    q = ctx.Queue()
    return process_pool(jobs, initializer=_init_worker, initargs=(runner_name, q), ctx=ctx), q


def _parallel(pool, names, job, rows, step, tick, describe) -> None:
    import concurrent.futures as cf
    import queue as _queue

    ex, q = pool
    order = sorted(names, key=lambda d: (_SLOW_FIRST.index(d) if d in _SLOW_FIRST else len(_SLOW_FIRST)))
    done = {d: 0.0 for d in names}
    futs = {}
    for d in order:
        futs[ex.submit(_worker_one, d, job)] = d
        step(d, names.index(d))
    pending = set(futs)
    while pending:
        fin, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
        while True:
            try:
                d, k, m = q.get_nowait()
            except _queue.Empty:
                break
            done[d] = max(min(k / max(m, 1), 0.999), 1e-3)
        for f in fin:
            d = futs[f]
            try:
                rows[d] = f.result()        # re-raises a malformed-workload error
            except cf.process.BrokenProcessPool as e:   # a worker died (killed, out of memory)
                rows[d] = row_from_result(_Failed(d, job["wname"], f"worker process died: {e}"))
            done[d] = 1.0
        tick(sum(done.values()))
        describe(", ".join(d for d in order if 0 < done[d] < 1) or "starting")


_W: dict = {}


def _init_worker(runner_name, q) -> None:
    import importlib

    _W["runner"] = importlib.import_module(runner_name)
    _W["queue"] = q


def _worker_one(d, job) -> dict:
    runner, q = _W["runner"], _W["queue"]
    fatal = tuple(c for c in (getattr(runner, "WorkloadError", None),) if isinstance(c, type))
    last = [0.0]
    q.put((d, 0, 1))        # started

    def sub(k, m):
        now = time.monotonic()
        if now - last[0] > 0.2 or k >= m:
            last[0] = now
            q.put((d, k, m))

    return _one(runner, fatal, d, job, sub)


def save(df, fig, out) -> dict:
    """Write ``compare.csv``, ``compare.parquet`` and ``compare.png`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"compare.{ext}") for ext in ("csv", "parquet", "png")}
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"], index=False)
    fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
    return paths


class _Failed:
    def __init__(self, driver, workload, error):
        self.driver, self.workload, self.error = driver, workload, error
        self.metrics, self.per_container, self.phases = {}, [], {}

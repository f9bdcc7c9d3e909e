"""``thinp.compare``: one workload on several storage drivers, priced by the
cost model (:mod:`thinp.cost`), as a DataFrame (one row per driver) and a
figure (:func:`thinp.plot.compare_figure`).

The runs come from ``thinp.workloads.run(workload, driver, scale=...)``,
which returns a ``RunResult`` with ``driver``, ``workload``, ``metrics``
(:meth:`thinp.Engine.metrics`), ``per_container`` (metric deltas per
container), ``phases`` (metric deltas per phase: ``"image_load"``,
``"containers_create"``, ``"steps"``, ...) and ``error`` (``None`` or why the
driver could not run the workload).  A failing driver keeps its row: the
metric columns are empty and ``error`` says why; the other drivers go on.
"""
from __future__ import annotations

import os
import time

#: The seven Docker storage drivers, in the order the table shows them.
ALL_DRIVERS = ("overlay2", "overlay", "aufs", "devicemapper", "btrfs", "zfs", "vfs")

#: Columns of the DataFrame after ``driver`` (units in the names).
COLUMNS = (
    "disk_used_bytes", "disk_data_bytes", "disk_metadata_bytes", "bytes_written",
    "copy_up_bytes", "cow_bytes", "zeroing_bytes", "lookup_probes",
    "start_time_s", "first_write_s", "teardown_s", "workload_s_per_container", "write_amplification",
    "page_cache_bytes", "page_cache_miss_bytes", "page_cache_hit_bytes", "containers",
    "inodes", "run_s",
)

#: Key columns for the terminal table; lower is better for all of them.
KEY_COLUMNS = ("disk_used_bytes", "bytes_written", "start_time_s", "first_write_s",
               "workload_s_per_container", "write_amplification", "page_cache_bytes")


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
    """:mod:`thinp.workloads`, or the module named by ``THINP_COMPARE_RUNNER``
    (a test hook: any module with ``load`` and ``run``)."""
    import importlib

    name = os.environ.get("THINP_COMPARE_RUNNER")
    if name:
        return importlib.import_module(name)
    from .. import workloads  # the workloads branch provides load/run

    if not hasattr(workloads, "run"):
        raise CompareError("thinp.workloads.run is not available in this build")
    return workloads


def row_from_result(result, *, device="nvme", constants=None, run_s=float("nan")) -> dict:
    """One DataFrame row (a dict) from a RunResult-shaped object."""
    from ..cost import estimate

    row = {"driver": result.driver, "workload": getattr(result, "workload", None),
           "error": getattr(result, "error", None)}
    if row["error"]:
        row.update({c: float("nan") for c in COLUMNS})
        row["run_s"] = run_s
        return row
    m = result.metrics or {}
    est = estimate(result.driver, m, per_container=list(result.per_container or []),
                   phases=dict(result.phases or {}), device=device, constants=constants)
    row.update(est)
    row["inodes"] = float(m.get("inodes", 0) or 0)
    row["run_s"] = run_s
    return row


def compare(workload="webapp", drivers="all", device="nvme", out=None, scale=1.0, progress=True,
            *, runner=None, constants=None, root=None, **driver_options):
    """Run ``workload`` on each driver; return ``(DataFrame, Figure)``.

    ``workload`` is a scenario name, a TOML path or a loaded Workload;
    ``drivers`` ``"all"``, ``"a,b"`` or a list; ``device`` a profile name,
    TOML path or :class:`~thinp.cost.DeviceProfile`; ``out`` a directory that
    receives ``compare.csv``, ``compare.parquet`` and ``compare.png``.
    ``progress`` is True (a rich progress bar on stderr), False, or a
    callable ``progress(driver, i, n)``.  ``runner`` is an object with
    ``load(source)`` and ``run(workload, driver, *, root, scale, progress,
    **driver_options)`` (default :mod:`thinp.workloads`).  ``constants`` is a
    :class:`~thinp.cost.CostConstants` or a TOML file with a
    ``[constants]`` table (cache size, per-driver costs, ...)."""
    import pandas as pd

    from ..cost import load_device
    from ..plot import compare_figure

    dev = load_device(device)
    if isinstance(constants, (str, os.PathLike)):
        from ..cost import CostConstants

        constants = CostConstants.from_toml(os.fspath(constants))
    names = parse_drivers(drivers)
    runner = runner or _default_runner()
    wl = runner.load(workload) if isinstance(workload, (str, os.PathLike)) else workload
    rows = []

    fatal = tuple(c for c in (getattr(runner, "WorkloadError", None),) if isinstance(c, type))

    def one(d, i, sub_progress=None):
        t0 = time.perf_counter()
        sub = None if root is None else os.path.join(os.fspath(root), d)
        try:
            res = runner.run(wl, d, root=sub, scale=scale, progress=sub_progress, **driver_options)
        except fatal:
            raise                   # the workload itself is wrong (a glob matching nothing)
        except Exception as e:  # a driver failing must not abort the comparison
            res = _Failed(d, getattr(wl, "name", str(workload)), f"{type(e).__name__}: {e}")
        rows.append(row_from_result(res, device=dev, constants=constants,
                                    run_s=time.perf_counter() - t0))

    if progress is True:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("compare", total=len(names))
            # the runner reports progress(k, m) inside one driver's run
            for i, d in enumerate(names):
                bar.update(task, description=f"compare: {d}")
                one(d, i, lambda k, m, i=i: bar.update(task, completed=i + k / max(m, 1)))
                bar.update(task, completed=i + 1)
    else:
        for i, d in enumerate(names):
            if callable(progress):
                progress(d, i, len(names))
            one(d, i)
    df = pd.DataFrame(rows, columns=["driver", "workload", *COLUMNS, "error"])
    df["device"] = dev.name
    fig = compare_figure(df, title=f"{getattr(wl, 'name', workload)} on {dev.name}")
    if out is not None:
        save(df, fig, out)
    return df, fig


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

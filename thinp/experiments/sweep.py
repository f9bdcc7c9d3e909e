"""Parameter sweeps: a grid from TOML, every point an independent task.

A sweep file::

    experiment = "overcommit"        # optional; the default
    [grid]                           # every combination of these lists
    driver = ["devicemapper", "overlay2"]
    block_size = ["64k", "1m"]
    seed = [0, 1]
    [fixed]                          # the same for every point
    pool = "4G"
    containers = 50
    write_per_container = "64M"

Each point runs :func:`run_point` (the overcommit experiment without a plot)
and yields one summary row.  Points run in a local process pool
(``workers``, default the machine's CPUs) or, given ``scheduler`` (or a
``client``), on an existing Dask distributed cluster.

``out`` is a Parquet dataset (a directory): each finished point is written as
its own part file named by the point's parameter hash, so an interrupted
sweep loses nothing finished, and a rerun skips points whose hash is already
there.  A failing point records its error (``error`` column) and the sweep
goes on; rerunning retries only the failed points if ``retry_failed``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import traceback

#: summary columns, all float or str so part files share one schema
RESULT_COLUMNS = ("containers_started", "first_low_water_mark", "first_min_free_space",
                  "first_out_of_data_space", "first_out_of_metadata_space", "first_metadata_failure",
                  "autoextends",
                  "final_data_pct", "final_meta_pct", "max_data_pct", "max_overcommit_ratio",
                  "final_pool_bytes", "final_host_bytes", "enospc_writes")


def load_spec(path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None


#: experiment name -> the function that checks one point's parameters
EXPERIMENTS = ("overcommit",)


def check_spec(spec: dict, source: str = "sweep spec") -> list[dict]:
    """Check a spec before any point runs and return its points: only
    ``experiment``, ``[grid]`` and ``[fixed]`` at the top; a known
    experiment; every parameter known to it and every point's values
    valid.  Errors are ``ValueError`` naming ``source`` and the key."""
    from .overcommit import check_params

    for k in spec:
        if k not in ("experiment", "grid", "fixed"):
            raise ValueError(f"{source}: unknown key {k!r} (a sweep has experiment, [grid] and [fixed])")
    exp = spec.get("experiment", "overcommit")
    if exp not in EXPERIMENTS:
        raise ValueError(f"{source}: experiment = {exp!r}: unknown (known: {', '.join(EXPERIMENTS)})")
    for table in ("grid", "fixed"):
        if not isinstance(spec.get(table, {}), dict):
            raise ValueError(f"{source}: {table} must be a table")
    for k, v in spec.get("grid", {}).items():
        if isinstance(v, list) and not v:
            raise ValueError(f"{source}: grid.{k} is an empty list (no points)")
    import difflib
    import inspect

    from .overcommit import overcommit

    known = set(inspect.signature(overcommit).parameters) - {"progress", "plot"}
    for t in ("grid", "fixed"):
        for k in spec.get(t, {}):
            if k not in known:
                near = difflib.get_close_matches(k, sorted(known), n=1)
                raise ValueError(f"{source}: {t}.{k}: unknown parameter of {exp}"
                                 + (f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(known))})"))
    points = expand(spec)
    for p in points:
        try:
            check_params(**{k: v for k, v in p.items() if k != "experiment"})
        except ValueError as e:
            msg = str(e)
            key = next((f"{t}.{k}" for t in ("grid", "fixed") for k in spec.get(t, {})
                        if msg.startswith(k) or repr(k) in msg or f" {k} " in f" {msg} "), None)
            if key and key.startswith("grid."):
                key += f" = {p[key[5:]]!r}"
            raise ValueError(f"{source}: {key + ': ' if key else ''}{msg}") from None
    return points


def expand(spec: dict) -> list[dict]:
    """Every grid point, ``fixed`` merged in, in a stable order."""
    grid = dict(spec.get("grid", {}))
    fixed = dict(spec.get("fixed", {}))
    for k, v in grid.items():
        if not isinstance(v, list):
            grid[k] = [v]
    keys = sorted(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        p = dict(fixed)
        p.update(zip(keys, combo))
        if "experiment" in spec:
            p.setdefault("experiment", spec["experiment"])
        points.append(p)
    return points


def point_hash(params: dict) -> str:
    """A stable hash of a point's parameters (key order does not matter)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _first(df, kind):
    hit = df[df["events"].str.split(",").apply(lambda e: kind in e)]
    return float(hit["container"].iloc[0]) if len(hit) else float("nan")


def run_point(params: dict) -> dict:
    """Run one point; returns its row (never raises: errors are recorded)."""
    params = dict(params)
    h = point_hash(params)
    row = {"hash": h, "params": json.dumps(params, sort_keys=True, default=str), "error": ""}
    for k, v in params.items():
        row[f"p_{k}"] = str(v)
    t0 = time.perf_counter()
    try:
        exp = params.pop("experiment", "overcommit")
        if exp != "overcommit":
            raise ValueError(f"unknown experiment {exp!r}")
        import warnings

        from .overcommit import UnionOptionsWarning, overcommit

        params["progress"] = False
        params["plot"] = False
        with warnings.catch_warnings():
            # a grid crosses union drivers with pool options on purpose
            warnings.simplefilter("ignore", UnionOptionsWarning)
            df, _ = overcommit(**params)
        row.update({
            "containers_started": float(df["started"].sum()),
            "first_low_water_mark": _first(df, "low_water_mark"),
            "first_min_free_space": _first(df, "min_free_space"),
            "first_out_of_data_space": _first(df, "out_of_data_space"),
            "first_out_of_metadata_space": _first(df, "out_of_metadata_space"),
            "first_metadata_failure": _first(df, "metadata_failure"),
            "autoextends": float(df["events"].str.count("autoextend").sum()),
            "final_data_pct": float(df["data_pct"].iloc[-1]) if len(df) else float("nan"),
            "final_meta_pct": float(df["meta_pct"].iloc[-1]) if len(df) else float("nan"),
            "max_data_pct": float(df["data_pct"].max()) if len(df) else float("nan"),
            "max_overcommit_ratio": float(df["overcommit_ratio"].max()) if len(df) else float("nan"),
            "final_pool_bytes": float(df["data_total_bytes"].iloc[-1]) if len(df) else float("nan"),
            "final_host_bytes": float(df["host_bytes"].iloc[-1]) if len(df) else float("nan"),
            "enospc_writes": float(df["enospc"].sum()),
        })
    except Exception as e:  # a failing point is a result, not the end of the sweep
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=5)
    for c in RESULT_COLUMNS:
        row.setdefault(c, float("nan"))
    row.setdefault("traceback", "")
    row["seconds"] = time.perf_counter() - t0
    return row


def done_hashes(out, include_failed: bool = True) -> set:
    """Hashes of the points already in the ``out`` dataset."""
    if not os.path.isdir(out):
        return set()
    hashes = set()
    for name in os.listdir(out):
        if not name.endswith(".parquet") or not name.startswith("part-"):
            continue
        h = name[len("part-"):-len(".parquet")]
        if not include_failed and h.endswith("-failed"):
            continue
        hashes.add(h.removesuffix("-failed"))
    return hashes


def _write(out, row: dict) -> None:
    import pandas as pd

    os.makedirs(out, exist_ok=True)
    name = f"part-{row['hash']}{'-failed' if row['error'] else ''}.parquet"
    # a retried point replaces its failure
    for stale in (f"part-{row['hash']}.parquet", f"part-{row['hash']}-failed.parquet"):
        if stale != name and os.path.exists(os.path.join(out, stale)):
            os.unlink(os.path.join(out, stale))
    df = pd.DataFrame([row])
    for k in df.columns:
        if k.startswith("p_") or k in ("hash", "params", "error", "traceback"):
            df[k] = df[k].astype(str)
    tmp = os.path.join(out, f".{name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, os.path.join(out, name))


def read_results(out):
    """The dataset as one DataFrame (sorted by hash)."""
    import pandas as pd

    files = sorted(f for f in os.listdir(out) if f.startswith("part-") and f.endswith(".parquet"))
    if not files:
        return pd.DataFrame()
    df = pd.concat([pd.read_parquet(os.path.join(out, f)) for f in files], ignore_index=True)
    return df.sort_values("hash", ignore_index=True)


class _Bar:
    def __init__(self, total, done, enabled):
        self.enabled = enabled
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            from rich.console import Console

            self.p = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[rate]} points/s"), TextColumn("ETA"),
                              TimeRemainingColumn(), TimeElapsedColumn(), TextColumn("{task.fields[failed]}"),
                              console=Console(stderr=True), transient=True)
            self.t0 = time.perf_counter()
            self.n = 0
            self.p.start()
            self.task = self.p.add_task("sweep", total=total, completed=done, rate="-", failed="")
            self.failed = 0

    def advance(self, row):
        if not self.enabled:
            return
        self.n += 1
        self.failed += bool(row["error"])
        rate = self.n / max(1e-9, time.perf_counter() - self.t0)
        self.p.update(self.task, advance=1, rate=f"{rate:.2f}",
                      failed=f"{self.failed} failed" if self.failed else "")

    def stop(self):
        if self.enabled:
            self.p.stop()


def run_sweep(spec, out, *, workers=None, scheduler=None, client=None, progress=True,
              retry_failed=False) -> dict:
    """Run every point of ``spec`` (a dict or a TOML path) not yet in ``out``.

    Returns counts: ``points``, ``skipped``, ``ran``, ``failed``, ``seconds``.
    """
    source = "sweep spec"
    if not isinstance(spec, dict):
        source = os.fspath(spec)
        spec = load_spec(spec)
    points = check_spec(spec, source)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0, not {workers!r}")
    have = done_hashes(out, include_failed=not retry_failed)
    todo, seen = [], set()
    for p in points:
        h = point_hash(p)
        if h in have or h in seen:
            continue
        seen.add(h)
        todo.append(p)
    stats = {"points": len(points), "skipped": len(points) - len(todo), "ran": 0, "failed": 0}
    os.makedirs(out, exist_ok=True)
    ex = None
    if todo and client is None and scheduler is None and workers != 0:
        from .workers import cpus, process_pool

        ex = process_pool(workers or cpus())
    bar = _Bar(len(points), stats["skipped"], progress)
    t0 = time.perf_counter()

    def finish(row):
        _write(out, row)
        stats["ran"] += 1
        stats["failed"] += bool(row["error"])
        bar.advance(row)

    try:
        if not todo:
            pass
        elif client is not None or scheduler is not None:
            from dask.distributed import Client, as_completed

            own = client is None
            c = Client(scheduler) if own else client
            try:
                futs = [c.submit(run_point, p, pure=False, key=f"thinp-point-{point_hash(p)}-{os.getpid()}")
                        for p in todo]
                for fut in as_completed(futs):
                    finish(fut.result())
            finally:
                if own:
                    c.close()
        elif workers == 0:   # in this process (tests, debugging)
            for p in todo:
                finish(run_point(p))
        else:
            import concurrent.futures as cf

            futs = [ex.submit(run_point, p) for p in todo]
            for fut in cf.as_completed(futs):
                finish(fut.result())
            ex.shutdown()
            ex = None
    finally:
        bar.stop()
        if ex is not None:          # Ctrl-C or an error: stop the workers now, not after their points
            from .workers import stop_pool

            stop_pool(ex)
    stats["seconds"] = time.perf_counter() - t0
    return stats


def failures(out) -> list[str]:
    """Each distinct error recorded in the ``out`` dataset once, with how many points had it."""
    df = read_results(out)
    if df is None or not len(df) or "error" not in df:
        return []
    errs = df["error"][df["error"].astype(bool)]
    return [f"{n} point{'s' if n > 1 else ''}: {e}" for e, n in errs.value_counts(sort=False).items()]

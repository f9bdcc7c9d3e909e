"""``thinp sweep``: a parameter grid from TOML (:mod:`thinp.experiments.sweep`)."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import EXIT_ERROR, add_json, add_quiet, hidden_alias, int_range


def register(sub) -> None:
    s = sub.add_parser("sweep", help="run a parameter grid from TOML; resumable Parquet results",
                       description="Every point of the grid is checked before any runs.")
    s.add_argument("spec", help="sweep.toml: experiment, [grid] lists and [fixed] values")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="Parquet dataset (a directory), appended to as points finish")
    s.add_argument("-j", "--jobs", type=int_range(1), default=None,
                   help="points run at once, one process each (default: the CPUs; 1 = in this process)")
    hidden_alias(s, "--workers", dest="jobs", use="--jobs", type=int_range(0))
    s.add_argument("--scheduler", default=None, metavar="URL",
                   help="run on an existing Dask cluster, e.g. tcp://HOST:8786 (instead of --jobs)")
    s.add_argument("--retry-failed", action="store_true", help="rerun points that recorded an error")
    add_json(s, "the counts")
    add_quiet(s)
    s.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from ..experiments.sweep import failures, run_sweep

    if args.jobs is not None and args.scheduler:
        raise ValueError("--jobs and --scheduler exclude each other")
    workers = None if args.jobs is None else (0 if args.jobs <= 1 else args.jobs)
    stats = run_sweep(args.spec, args.out, workers=workers, scheduler=args.scheduler,
                      progress=not (args.quiet or args.json), retry_failed=args.retry_failed)
    stats["rate_points_per_s"] = stats["ran"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    if args.json:
        out.write_json(stats)
    else:
        out.line(f"{stats['points']} points: {stats['skipped']} already done, {stats['ran']} ran "
                 f"({stats['failed']} failed) in {stats['seconds']:.1f} s "
                 f"({stats['rate_points_per_s']:.2f} points/s); results in {args.out}")
    errs = failures(args.out) if stats["failed"] else []
    for e in errs:
        sys.stderr.write(f"thinp: error: {e}\n")
    return EXIT_ERROR if errs else 0

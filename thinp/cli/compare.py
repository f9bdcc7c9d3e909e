"""``thinp compare``: one workload on several storage drivers (:mod:`thinp.experiments.compare`)."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import EXIT_ERROR, add_drivers, add_jobs, add_json, add_quiet, float_range, hidden_alias, int_range


def register(sub) -> None:
    cp = sub.add_parser("compare", help="one workload on several storage drivers: table, CSV, Parquet, figure")
    cp.add_argument("workload", nargs="?", default="webapp",
                    help="a built-in scenario name or a workload .toml (default: webapp)")
    add_drivers(cp, "all", "overlay2, overlay, aufs, devicemapper, btrfs, zfs, vfs")
    cp.add_argument("--disk", default="nvme",
                    help="the disk under the drivers: hdd, sata-ssd, nvme, ram, or a device .toml (default: nvme)")
    hidden_alias(cp, "--device", dest="disk", use="--disk")
    cp.add_argument("--out", default=None, metavar="DIR", help="write compare.csv, compare.parquet, compare.png here")
    add_json(cp, "the rows")
    cp.add_argument("--scale", type=float_range(0, 1000, lo_open=True), default=1.0,
                    help="scale the workload's sizes and counts (default 1.0)")
    add_jobs(cp, "drivers")
    cp.add_argument("--constants", default=None, metavar="TOML",
                    help="a .toml with a [timing] table overriding the timing model's constants "
                         "(every time column) and/or a [constants] table (the byte accounting's)")
    add_quiet(cp)
    _timing_options(cp)
    cp.set_defaults(func=_compare)


def _timing_options(cp) -> None:
    """The concurrent timing model's options (``sim_*`` columns)."""
    cp.add_argument("--cores", type=int_range(1), default=None,
                    help="cores of the simulated host for the timing model (default 4)")
    cp.add_argument("--waits", action="store_true",
                    help="also print the timing model's breakdown: the share of time waiting on each lock, "
                         "the cpu, the device, and the time per phase")


def _timing(args):
    if args.cores is None:
        return None
    from ..timing import TimingConstants

    base = TimingConstants.from_toml(args.constants) if args.constants else TimingConstants()
    import dataclasses

    return dataclasses.replace(base, cores=args.cores)


def _compare(args) -> int:
    from ..experiments.compare import VIEW, compare, failures, table_view

    df, _fig = compare(args.workload, drivers=args.drivers, device=args.disk, out=args.out, scale=args.scale,
                       progress=not (args.json or args.quiet), constants=args.constants, jobs=args.jobs,
                       timing=_timing(args), figure=False)
    if args.json:
        out.write_json(df)
    else:
        rows, best = table_view(df)
        out.table(rows, ["driver", *(h for _c, h, _d in VIEW)], best=best,
                  title=f"thinp compare: {args.workload} on {args.disk} (best per column in green)")
        if args.waits:
            from ..experiments.compare import phases_view, waits_view

            wrows, wcols = waits_view(df)
            out.table(wrows, wcols, title="timing model: share of process time waiting on each resource")
            prows, pcols = phases_view(df)
            out.table(prows, pcols, title="timing model: seconds per phase, all processes")
        if args.out and not args.quiet:
            sys.stderr.write(f"wrote {args.out}/compare.csv, compare.parquet, compare.png\n")
    errs = failures(df)
    for e in errs:
        sys.stderr.write(f"thinp: error: {e}\n")
    return EXIT_ERROR if errs else 0

"""``thinp calibrate`` and ``thinp validate timing``: the concurrent timing
model against the real kernel (:mod:`thinp.validate.timing`,
:mod:`thinp.validate.calibrate`)."""
from __future__ import annotations

import os
import sys
import time

from . import _output as out
from ._common import add_json


def register(sub) -> None:
    c = sub.add_parser("calibrate", help="measure the timing model's per-op costs with the real kernel")
    c.add_argument("--out", default="thinp-constants.toml", metavar="TOML",
                   help="the constants file to write (default thinp-constants.toml); "
                        "use it with thinp compare --constants TOML [--disk TOML]")
    c.add_argument("--runs", type=int, default=1, metavar="N",
                   help="measure N times and keep each figure's least (default 1)")
    c.add_argument("--refit", default=None, metavar="TOML",
                   help="measure nothing: fit the constants again from the measurements kept in TOML "
                        "(an earlier calibrate file) and write them to --out")
    c.set_defaults(func=_calibrate)


def register_validate(vsub) -> None:
    """``thinp validate timing`` (called by :mod:`.validate`)."""
    vt = vsub.add_parser("timing", help="the timing model's predictions vs the same workloads run for real")
    vt.add_argument("--sim-only", action="store_true", help="skip the real runs")
    vt.add_argument("--constants", default=None, metavar="TOML", help="a [timing] table to predict with")
    vt.add_argument("--reps", type=int, default=None, metavar="N",
                    help="real runs per cell, the drivers taking turns (default 5); the median is shown")
    vt.add_argument("--cases", default=None, metavar="LIST",
                    help="comma-separated cases to run (default all: append-small, append-big, tree, "
                         "read-big, read-small, start)")
    vt.add_argument("--measured", default=None, metavar="JSON",
                    help="take the real side from an earlier --json output instead of running it")
    vt.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    add_json(vt, "the rows")
    vt.set_defaults(func=_validate)


def _calibrate(args) -> int:
    from ..validate.calibrate import calibrate, refit

    if args.refit:
        refit(args.refit, args.out)
        sys.stderr.write(f"wrote {args.out}\n")
        return 0
    if args.runs < 1:
        raise ValueError(f"--runs {args.runs}: must be 1 or more")
    calibrate(args.out, runs=args.runs, progress=lambda msg: sys.stderr.write(f"calibrate: {msg}\n"))
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


def _progress(row: dict) -> None:
    """One stderr line per measured cell as its case/N group ends, every run
    in it with the measuring processes' CPU, and the ratio to overlay2's
    runs beside them: a long real run that fails later still leaves what it
    measured."""
    runs = " ".join(f"{t:.4f}" for t in row["runs_s"])
    cpu = " ".join(f"{t:.4f}" for t in row.get("cpu_s") or () if t is not None)
    rel = ""
    if row["driver"] != "overlay2" and row.get("measured_rel") is not None:
        rel = (f", x overlay2 {row['measured_rel']:.3g} ({row['rel_lo']:.3g}-{row['rel_hi']:.3g}"
               f"{'' if row.get('rel_paired') else ', unpaired'}) vs predicted {row['predicted_rel']:.3g}: "
               f"{row['rel_verdict']}")
    sys.stderr.write(f"validate timing: {row['case']} N={row['n']} {row['driver']}: runs {runs or '-'} s"
                     f"{' (CPU ' + cpu + ' s)' if cpu else ''}, predicted {row['predicted_s']:.4f} s{rel}"
                     f"{' (' + row['note'] + ')' if row['note'] else ''}\n")


def _validate(args) -> int:
    from ..timing import TimingConstants
    from ..validate import timing as vt

    k = TimingConstants.from_toml(args.constants) if args.constants else None
    device = "ram"
    if args.constants:
        import tomllib

        with open(args.constants, "rb") as f:
            if "device" in tomllib.load(f):
                device = args.constants         # the loop device thinp calibrate measured
    cases = vt.CASES
    if args.cases:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
        bad = [c for c in names if c not in {x.name for x in vt.CASES}]
        if bad or not names:
            raise ValueError(f"--cases {args.cases!r}: unknown case {bad[0] if bad else ''!r} "
                             f"(cases: {', '.join(x.name for x in vt.CASES)})")
        cases = [c for c in vt.CASES if c.name in names]
    if args.reps is not None and args.reps < 1:
        raise ValueError(f"--reps {args.reps}: must be 1 or more")
    measured = None
    if args.measured:
        import json

        try:
            with open(args.measured) as f:
                measured = json.load(f)["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--measured {args.measured!r}: not a validate timing --json file ({e})")
    rows = vt.validate_timing(real=not args.sim_only, timing=k, device=device, cases=cases,
                              reps=args.reps or vt.REPS, measured=measured,
                              progress=None if (args.sim_only or measured) else _progress)
    if args.markdown:
        sys.stdout.write(vt.markdown(rows) + "\n")
    if args.markdown:
        return 0
    if args.json:
        out.write_json({"rows": rows, "summary": vt.summary(rows), "cores": len(os.sched_getaffinity(0)),
                        "cpu": vt.cpu_model(), "loadavg_end": os.getloadavg(),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        return 0
    out.table(rows, [("case", "case"), ("n", "N"), ("driver", "driver"), ("measured_s", "measured s"),
                     ("predicted_s", "predicted s"), ("measured_rel", "meas./overlay2"),
                     ("rel_lo", "middle runs from"), ("rel_hi", "to"),
                     ("predicted_rel", "pred./overlay2"), ("rel_verdict", "1.5x target"), ("note", "note")],
              text_columns={"case", "driver", "note", "rel_verdict"}, title=f"thinp validate timing (device {device})")
    s = vt.summary(rows)
    sys.stderr.write(vt.summary_sentence(s) + "\n")
    return 0

"""``thinp calibrate`` and ``thinp validate timing``: the concurrent timing
model against the real kernel (:mod:`thinp.validate.timing`,
:mod:`thinp.validate.calibrate`)."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import add_json


def register(sub) -> None:
    c = sub.add_parser("calibrate", help="measure the timing model's per-op costs with the real kernel")
    c.add_argument("--out", default="thinp-constants.toml", metavar="TOML",
                   help="the constants file to write (default thinp-constants.toml); "
                        "use it with thinp compare --constants TOML [--disk TOML]")
    c.set_defaults(func=_calibrate)


def register_validate(vsub) -> None:
    """``thinp validate timing`` (called by :mod:`.validate`)."""
    vt = vsub.add_parser("timing", help="the timing model's predictions vs the same workloads run for real")
    vt.add_argument("--sim-only", action="store_true", help="skip the real runs")
    vt.add_argument("--constants", default=None, metavar="TOML", help="a [timing] table to predict with")
    add_json(vt, "the rows")
    vt.set_defaults(func=_validate)


def _calibrate(args) -> int:
    from ..validate.calibrate import calibrate

    calibrate(args.out, progress=lambda msg: sys.stderr.write(f"calibrate: {msg}\n"))
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


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
    rows = vt.validate_timing(real=not args.sim_only, timing=k, device=device)
    if args.json:
        out.write_json({"rows": rows, "summary": vt.summary(rows)})
        return 0
    out.table(rows, [("case", "case"), ("n", "N"), ("driver", "driver"), ("measured_s", "measured s"),
                     ("predicted_s", "predicted s"), ("measured_rel", "meas./overlay2"),
                     ("predicted_rel", "pred./overlay2"), ("note", "note")],
              text_columns={"case", "driver", "note"}, title=f"thinp validate timing (device {device})")
    s = vt.summary(rows)
    sys.stderr.write(f"same driver ranking in {s['same_ranking']} of {s['groups']} case/N groups; time relative "
                     f"to overlay2 within 1.5x in {s['rel_within_1_5x']} of {s['rel_rows']} rows\n")
    return 0

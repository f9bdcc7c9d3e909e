"""``thinp demo``: the built-in loop-lvm scenario (:mod:`thinp.experiments.demo`)."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import add_json, add_seed, int_range


def register(sub) -> None:
    d = sub.add_parser("demo", help="the built-in scenario: a loop-lvm pool with image layers and containers")
    d.add_argument("--dir", default=None, help="keep the pool in this new directory (default: a temporary one)")
    d.add_argument("--layers", type=int_range(0, 10000), default=8, help="image layers (default 8)")
    d.add_argument("--containers", type=int_range(0, 100000), default=200, help="containers (default 200)")
    d.add_argument("--writes", type=int_range(0), default=2000,
                   help="random 4 KiB writes per container (default 2000)")
    add_seed(d, 1)
    add_json(d)
    d.set_defaults(func=_demo)


def _demo(args) -> int:
    from ..experiments.demo import demo

    r = demo(layers=args.layers, containers=args.containers, writes=args.writes, seed=args.seed, dir=args.dir)
    if args.json:
        out.write_json({"status": r.status, **dict(r.rows), "seconds": r.seconds})
        return 0
    out.line(f"dmsetup status: {r.status}")
    out.table(r.rows, [("metric", "metric"), ("value", "value")], title=r.title, text_columns={"value"})
    sys.stderr.write(f"done in {r.seconds:.1f} s\n")
    return 0

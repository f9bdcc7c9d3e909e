"""``thinp validate``: the models side by side with the real kernel and tools."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import add_json, size


def register(sub) -> None:
    v = sub.add_parser("validate", help="compare the models with the real kernel and tools")
    v.set_defaults(func=lambda args: (v.print_help(), 2)[1])
    vsub = v.add_subparsers(dest="validate_cmd", metavar="WHAT", parser_class=type(v))

    vf = vsub.add_parser("fs", help="ext4/xfs allocation: simulated vs a real loop-mounted filesystem")
    vf.add_argument("--size", default="10G", type=size(16 << 20), help="filesystem size (default 10G)")
    vf.add_argument("--sim-only", action="store_true", help="skip the real kernel runs")
    add_json(vf, "the rows")
    vf.set_defaults(func=_fs)

    vd = vsub.add_parser("drivers", help="storage drivers vs kernel overlayfs, real btrfs and zfs-fuse")
    vd.add_argument("--sim-only", action="store_true", help="skip the real btrfs/zfs runs")
    add_json(vd, "the rows")
    vd.set_defaults(func=_drivers)

    from .timing import register_validate

    register_validate(vsub)


_FS_COLUMNS = [("fs", "fs"), ("size", "size"), ("options", "options"), ("workload", "workload"),
               ("real_kib", "real KiB"), ("sim_kib", "sim KiB"), ("err_kib_pct", "err %"),
               ("real_64k", "real 64K"), ("sim_64k", "sim 64K"), ("err_64k_pct", "err %"),
               ("real_512k", "real 512K"), ("sim_512k", "sim 512K"), ("note", "note")]


def _present(cols, rows):
    return [c for c in cols if any(c[0] in r for r in rows)]


def _fs(args) -> int:
    from ..validate import fs as validate

    cal = validate.calibration_rows()
    real = validate.validate_fs(size=args.size, real=not args.sim_only)
    if args.json:
        out.write_json({"calibration": cal, "real": real})
        return 0
    text = {"fs", "options", "workload", "note"}
    out.table(cal, _present(_FS_COLUMNS, cal), title="SOURCES.md reference figures (du -k of the backing file)",
              text_columns=text)
    out.table(real, _present(_FS_COLUMNS, real), text_columns=text,
              title=f"real kernel vs simulation, {args.size} (64K/512K = chunks a thin pool would provision)")
    return 0


def _drivers(args) -> int:
    from ..validate import block as validate_block, capture, union as validate_union

    union = validate_union.validate_union_drivers() + [capture.scenario_row()]
    block = validate_block.validate_block_drivers(real=not args.sim_only)
    if args.json:
        out.write_json({"union": union, "block": block})
        return 0
    for r in union:
        if "skipped" in r:
            r["match"] = f"skipped: {r['skipped']}"
        else:
            r["match"] = "yes" if r.get("match") else "NO"
    others = sorted({k for r in union for k in r} - {"check", "kernel", "match", "skipped"})
    out.table(union, ["check", "kernel", *others, "match"], text_columns={"match"},
              title="union drivers vs kernel overlayfs (lower/upper on tmpfs) and the real dpkg upper directory")
    out.table(block, [("driver", "driver"), ("scenario", "scenario"), ("metric", "metric"), ("real", "real"),
                      ("sim", "sim"), ("err_pct", "err %"), ("note", "note")],
              text_columns={"scenario", "metric", "note"},
              title="block drivers vs real btrfs / zfs-fuse and SOURCES.md")
    return 0

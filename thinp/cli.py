"""The ``thinp`` command.

Every user mistake prints one line, ``thinp: error: ...``, and exits 1; a
traceback means a bug.  numba is imported only by commands that need it.
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as argparse does, without the usage dump
        sys.stderr.write(f"thinp: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _console():
    from rich.console import Console

    return Console()


# ------------------------------------------------------------------ pool
def _cmd_pool_create(args) -> int:
    from .thin import ThinPool

    with ThinPool.create(
        args.dir,
        data_size=args.data_size,
        block_size=args.block_size,
        metadata_size=args.metadata_size,
        low_water_mark=args.low_water_mark,
        zero_new_blocks=not args.skip_block_zeroing,
        discard_passdown=not args.no_discard_passdown,
        ignore_discard=args.ignore_discard,
        error_if_no_space=args.error_if_no_space,
        payload=args.payload,
        max_thins=args.max_thins,
    ) as pool:
        print(pool.status())
    return 0


def _cmd_pool_message(args) -> int:
    from .thin import ThinPool

    with ThinPool.open(args.dir) as pool:
        pool.message(" ".join(args.message))
        print(pool.status())
    return 0


def _lvs_table(pool):
    from rich.table import Table

    from .units import format_size

    st = pool.status(observer=True)
    t = Table(title=f"thin pool {pool.path}", title_justify="left")
    for col in ("LV", "LSize", "Data%", "Meta%", "Mapped", "Highest"):
        t.add_column(col, justify="left" if col == "LV" else "right")
    t.add_row("pool", format_size(st.total_data_blocks * st.data_block_size), f"{st.data_percent:.2f}",
              f"{st.metadata_percent:.2f}", f"{st.used_data_blocks}", "")
    for dev_id in pool.devices():
        d = pool.device(dev_id)
        pct = 100.0 * d.mapped_blocks * pool.block_size / d.size if d.size else 0.0
        hi = d.highest_mapped_block()
        t.add_row(f"thin{dev_id}", format_size(d.size), f"{pct:.2f}", "", f"{d.mapped_blocks}",
                  "-" if hi is None else str(hi))
    return t


def _cmd_pool_status(args) -> int:
    from .thin import ThinPool

    with ThinPool.open(args.dir, read_only=True, check_trees=False) as pool:
        print(pool.status(observer=True))
        if not args.line:
            _console().print(_lvs_table(pool))
    return 0


def _cmd_metadata_size(args) -> int:
    from .thin.metadata_size import metadata_size
    from .units import parse_size

    nbytes = metadata_size(args.pool_size, args.block_size, args.max_thins)
    unit = args.unit.lower()
    units = {"b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    if unit not in units:
        raise ValueError(f"-u {args.unit!r}: unit must be one of b, s, k, m, g, t, p")
    value = nbytes / units[unit]
    text = f"{value:g}" if value != int(value) else str(int(value))
    if args.numeric_only:
        print(text)
    else:
        names = {"b": "bytes", "s": "sectors", "k": "kibibytes", "m": "mebibytes", "g": "gibibytes",
                 "t": "tebibytes", "p": "pebibytes"}
        print(f"{text} {names[unit]}")
    parse_size(args.pool_size)
    return 0


def _cmd_demo(args) -> int:
    """The built-in scenario: Docker's loop-lvm pool, a base device, a chain of
    image snapshots and containers writing into their own snapshots."""
    import shutil
    import tempfile
    import time

    import numpy as np

    from .thin import ThinPool
    from .trace import TRACE_DTYPE, WRITE
    from .units import human_size

    con = _console()
    workdir = args.dir or tempfile.mkdtemp(prefix="thinp-demo-")
    path = f"{workdir}/pool"
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    try:
        with ThinPool.create(path, "100G", "64k", metadata_size="2G", low_water_mark=32768,
                             zero_new_blocks=False, sync=False) as pool:
            events = []
            pool.on_low_water_mark(lambda ev: events.append(ev))
            bs = pool.block_size
            base = pool.create_thin(1, "10G")
            nr = base.size // bs

            def writes(dev_id, n, span, size=4096):
                t = np.zeros(n, dtype=TRACE_DTYPE)
                t["dev_id"] = dev_id
                t["op"] = WRITE
                t["offset"] = (rng.integers(0, span // size, n) * size).astype(np.uint64)
                t["length"] = size
                return t

            # the base image: 1.2 GiB laid down sequentially in 64 KiB writes
            layer = np.zeros(int(1.2 * (1 << 30)) // bs, dtype=TRACE_DTYPE)
            layer["dev_id"] = 1
            layer["op"] = WRITE
            layer["offset"] = np.arange(len(layer), dtype=np.uint64) * bs
            layer["length"] = bs
            pool.replay(layer)
            # image layers: each a snapshot of its parent plus some changes
            parent = 1
            for i in range(2, 2 + args.layers):
                pool.create_snap(i, parent)
                pool.replay(writes(i, 2000, nr * bs, 65536))
                parent = i
            # containers: <id>-init and a read-write snapshot of it, then random writes
            ids = []
            for c in range(args.containers):
                init, rw = 1000 + 2 * c, 1001 + 2 * c
                pool.create_snap(init, parent)
                pool.create_snap(rw, init)
                ids.append(rw)
            per = args.writes
            for rw in ids:
                pool.replay(writes(rw, per, 2 << 30))
            st = pool.status()
            print(f"dmsetup status: {st}")
            from rich.table import Table

            t = Table(title=f"{args.containers} containers on {args.layers} image layers, "
                            f"{per} random 4 KiB writes each", title_justify="left")
            for col in ("metric", "value"):
                t.add_column(col)
            virtual = sum(pool.device(d).size for d in pool.devices())
            rows = [
                ("thin devices", str(len(pool.devices()))),
                ("Data%", f"{st.data_percent:.2f} ({st.used_data_blocks} of {st.total_data_blocks} blocks)"),
                ("Meta%", f"{st.metadata_percent:.2f}"),
                ("overcommit (virtual / pool)", f"{virtual / (st.total_data_blocks * bs):.1f}x"),
                ("blocks provisioned", str(st.nr_provisioned)),
                ("CoW copies", f"{st.nr_cow_copies} ({human_size(st.bytes_copied)} copied)"),
                ("low water mark events", str(len(events))),
            ]
            for r in rows:
                t.add_row(*r)
            con.print(t)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    con.print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0



# ------------------------------------------------- metadata tools [integrity]
# thin_check / thin_dump / thin_restore / thin_ls / thin_delta / thin_trim.
# Kept together (commands, then _add_metadata_tools) so merges stay easy.
def _cmd_check(args) -> int:
    from .thin.check import check

    rep = check(args.dir, repair=args.repair)
    for p in rep.problems:
        print(f"  {p}")
    print(f"TRANSACTION_ID={rep.transaction_id}")
    print(f"METADATA_FREE_BLOCKS={rep.metadata_free_blocks}")
    print(f"devices {rep.nr_devices}, mappings {rep.nr_mappings}")
    if rep.repaired:
        print("repaired: space maps and device counts rebuilt from the mappings, needs_check cleared")
        return 0
    if rep.needs_check:
        print("needs_check is set: run 'thinp check --repair' to clear it")
    if not rep.ok:
        sys.stderr.write(f"thinp: error: {args.dir}: {len(rep.problems)} metadata problems; "
                         "'thinp check --repair' rebuilds the counts\n")
        return EXIT_ERROR
    return 0


def _cmd_dump(args) -> int:
    from .thin.dump import dump

    text = dump(args.dir, output=args.output, metadata_snap=args.metadata_snap)
    if text is not None:
        sys.stdout.write(text)
    return 0


def _cmd_restore(args) -> int:
    from .thin.restore import restore

    sizes = {}
    for item in args.size:
        dev, sep, size = item.partition("=")
        if not sep or not dev.strip().isdigit() or not size.strip():
            raise ValueError(f"--size {item!r}: want DEV=SIZE, e.g. 3=20G")
        sizes[int(dev)] = size.strip()
    n = restore(args.input, args.dir, payload=args.payload, sizes=sizes or None,
                metadata_size=args.metadata_size, low_water_mark=args.low_water_mark,
                error_if_no_space=args.error_if_no_space)
    print(f"restored {n} mappings into {args.dir}")
    return 0


def _cmd_ls(args) -> int:
    from .thin.ls import ls, parse_format

    fields = parse_format(args.format)
    sys.stdout.write(ls(args.dir, fields, headers=not args.no_headers, metadata_snap=args.metadata_snap))
    return 0


def _cmd_delta(args) -> int:
    from .thin.delta import delta

    sys.stdout.write(delta(args.dir, args.snap1, args.snap2, verbose=args.verbose,
                           metadata_snap=args.metadata_snap))
    return 0


def _cmd_rmap(args) -> int:
    from .thin.rmap import parse_region, rmap

    regions = [parse_region(r) for r in args.region]
    sys.stdout.write(rmap(args.dir, regions, metadata_snap=args.metadata_snap))
    return 0


def _cmd_repair(args) -> int:
    from .thin.repair import repair

    rep = repair(args.input, args.output, data_block_sectors=args.data_block_sectors,
                 nr_data_blocks=args.nr_data_blocks)
    for d in rep.damaged:
        print(f"  lost: {d}")
    print(f"salvaged {rep.nr_mappings} mappings of {rep.nr_devices} devices into {args.output}"
          + (f" ({rep.adopted_leaves} orphaned leaves found by scanning)" if rep.adopted_leaves else ""))
    return 0


def _cmd_pack(args) -> int:
    from .thin.pack import pack, unpack

    if args.command == "pack":
        n = pack(args.input, args.output)
        print(f"packed {n} metadata blocks into {args.output}")
    else:
        n = unpack(args.input, args.output)
        print(f"unpacked {n} metadata blocks into {args.output}")
    return 0


def _cmd_trim(args) -> int:
    from .thin.trim import trim

    nruns, nblocks = trim(args.dir)
    print(f"discarded {nblocks} free blocks in {nruns} runs")
    return 0


def _add_metadata_tools(sub) -> None:
    c = sub.add_parser("check", help="thin_check: verify metadata; --repair rebuilds the counts")
    c.add_argument("dir")
    c.add_argument("--repair", action="store_true", help="rebuild space maps from the mappings, clear needs_check")
    c.set_defaults(func=_cmd_check)
    d = sub.add_parser("dump", help="thin_dump: the metadata as XML")
    d.add_argument("dir")
    d.add_argument("-o", "--output", default=None, help="write to FILE instead of stdout")
    d.add_argument("-m", "--metadata-snap", action="store_true", help="dump the held metadata snapshot")
    d.set_defaults(func=_cmd_dump)
    r = sub.add_parser("restore", help="thin_restore: build a new pool DIR from thin_dump XML")
    r.add_argument("-i", "--input", required=True)
    r.add_argument("dir")
    r.add_argument("--payload", action="store_true", help="make a payload pool (data reads as zeros)")
    r.add_argument("--size", action="append", default=[], metavar="DEV=SIZE",
                   help="a thin device's size, e.g. 3=20G (thin_dump XML has none; default: the data "
                        "device's size); repeat for more devices")
    r.add_argument("--metadata-size", default=None, help="metadata device size (default: thin_metadata_size's)")
    r.add_argument("--low-water-mark", type=int, default=0, help="low water mark in data blocks (default 0)")
    r.add_argument("--error-if-no-space", action="store_true", help="fail writes on a full pool (default: queue)")
    r.set_defaults(func=_cmd_restore)
    ls = sub.add_parser("ls", help="thin_ls: a table of thin devices")
    ls.add_argument("dir")
    ls.add_argument("-o", "--format", default=None,
                    help="comma-separated fields, e.g. DEV,MAPPED_BYTES,EXCLUSIVE_SECTORS,HIGHEST_BLOCK")
    ls.add_argument("--no-headers", action="store_true")
    ls.add_argument("-m", "--metadata-snap", action="store_true")
    ls.set_defaults(func=_cmd_ls)
    dl = sub.add_parser("delta", help="thin_delta: XML diff of two thin devices")
    dl.add_argument("dir")
    dl.add_argument("--snap1", type=int, required=True)
    dl.add_argument("--snap2", type=int, required=True)
    dl.add_argument("--verbose", action="store_true")
    dl.add_argument("-m", "--metadata-snap", action="store_true")
    dl.set_defaults(func=_cmd_delta)
    rm = sub.add_parser("rmap", help="thin_rmap: which thin blocks map the given data blocks")
    rm.add_argument("dir", help="a pool directory or a dm-thin metadata image")
    rm.add_argument("--region", action="append", required=True, help="data blocks BEGIN..END (one past the end)")
    rm.add_argument("-m", "--metadata-snap", action="store_true")
    rm.set_defaults(func=_cmd_rmap)
    rp = sub.add_parser("repair", help="thin_repair: salvage a damaged dm-thin metadata image into a new one")
    rp.add_argument("-i", "--input", required=True)
    rp.add_argument("-o", "--output", required=True, help="the new metadata file (must not exist)")
    rp.add_argument("--data-block-sectors", type=int, default=None, help="only when the superblock is lost")
    rp.add_argument("--nr-data-blocks", type=int, default=None, help="only when the superblock is lost")
    rp.set_defaults(func=_cmd_repair)
    for name, what in (("pack", "thin_metadata_pack: archive a dm-thin metadata image"),
                       ("unpack", "thin_metadata_unpack: a metadata image from a pack archive")):
        pk = sub.add_parser(name, help=what)
        pk.add_argument("-i", "--input", required=True)
        pk.add_argument("-o", "--output", required=True)
        pk.set_defaults(func=_cmd_pack, command=name)
    t = sub.add_parser("trim", help="thin_trim: punch free data blocks out of the data file")
    t.add_argument("dir")
    t.set_defaults(func=_cmd_trim)


def _cmd_validate_fs(args) -> int:
    from .fs import validate

    print("SOURCES.md reference figures (du -k of the backing file):")
    print(validate.format_table(validate.calibration_rows()))
    print()
    print(f"Real kernel vs simulation, {args.size} (64K/512K = chunks a thin pool would provision):")
    print(validate.format_table(validate.validate_fs(size=args.size, real=not args.sim_only)))
    return 0


def _plain_table(header, rows) -> str:
    table = [list(header)] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def _cmd_validate_drivers(args) -> int:
    from .drivers import validate_block, validate_union

    rows = validate_union.validate_union_drivers()
    others = sorted({k for r in rows for k in r} - {"check", "kernel", "match", "skipped"})
    header = ["check", "kernel", *others, "match"]
    body = []
    for r in rows:
        if "skipped" in r:
            body.append([r["check"], *["" for _ in others], "", f"skipped: {r['skipped']}"])
        else:
            body.append([r["check"], r.get("kernel", ""), *[r.get(c, "") for c in others],
                         "yes" if r.get("match") else "NO"])
    print("union drivers vs kernel overlayfs (lower/upper on tmpfs) and the real dpkg upper directory:")
    print(_plain_table(header, body))
    print()
    print("block drivers vs real btrfs / zfs-fuse and SOURCES.md:")
    print(validate_block.format_rows(validate_block.validate_block_drivers(real=not args.sim_only)))
    return 0


def _cmd_pool_replay(args) -> int:
    """Replay a block trace (ftrace block_rq_issue or blkparse text) into thin device --dev-id
    (created, sized to the trace, when the pool lacks it)."""
    from .thin import ThinPool
    from .workloads import blocktrace

    fmt = args.format or blocktrace.detect_format(args.trace)
    trace = blocktrace.read(args.trace, fmt, dev_id=args.dev_id, device=args.device)
    if args.device is None:
        devs = blocktrace.devices(args.trace, fmt)
        if len(devs) > 1:
            dev = devs.most_common(1)[0][0]
            print(f"{args.trace}: {len(devs)} devices; replaying {dev} (choose with --device)")
            trace = blocktrace.read(args.trace, fmt, dev_id=args.dev_id, device=dev)
    if not len(trace):
        raise ValueError(f"{args.trace}: no {fmt} block requests to replay")
    end = int((trace["offset"] + trace["length"]).max())
    with ThinPool.open(args.dir) as pool:
        if args.dev_id not in pool.devices():
            bs = pool.block_size
            pool.create_thin(args.dev_id, -(-end // bs) * bs)
        elif pool.device(args.dev_id).size < end:
            raise ValueError(f"{args.trace}: requests reach byte {end}, beyond thin device "
                             f"{args.dev_id} ({pool.device(args.dev_id).size} bytes)")
        r = pool.replay(trace)
        pool.commit()
        ops = {0: "reads", 1: "writes", 2: "discards"}
        counts = ", ".join(f"{int((trace['op'] == k).sum())} {v}" for k, v in ops.items())
        print(f"replayed {len(trace)} requests ({counts}) from {args.trace} ({fmt}) into thin {args.dev_id}")
        for k, v in r.counters.items():
            if v:
                print(f"  {k}: {v}")
        print(pool.status())
    return 0


def _add_pool_replay(psub) -> None:
    r = psub.add_parser("replay", help="replay a block trace (ftrace block_rq_issue or blkparse text)")
    r.add_argument("dir")
    r.add_argument("trace")
    r.add_argument("--format", choices=("ftrace", "blkparse"), default=None, help="default: detected")
    r.add_argument("--dev-id", type=int, default=0, help="thin device (created if missing; default 0)")
    r.add_argument("--device", default=None, help="keep one traced device MAJ,MIN (default: the busiest)")
    r.set_defaults(func=_cmd_pool_replay)



# ------------------------------------------------------------------ compare
def _add_compare(sub) -> None:
    cp = sub.add_parser("compare", help="one workload on several storage drivers: table, CSV, Parquet, figure")
    cp.add_argument("workload", nargs="?", default="webapp",
                    help="a built-in scenario name or a workload .toml (default: webapp)")
    cp.add_argument("--drivers", default="all", help="all, or a comma-separated list (default: all)")
    cp.add_argument("--device", default="nvme",
                    help="hdd, sata-ssd, nvme, ram, or a device .toml (default: nvme)")
    cp.add_argument("--out", default=None, help="write compare.csv, compare.parquet, compare.png here")
    cp.add_argument("--json", action="store_true", help="print the rows as a JSON list, nothing else")
    cp.add_argument("--scale", type=float, default=1.0, help="scale the workload (default 1.0)")
    cp.add_argument("--jobs", "-j", type=int, default=None,
                    help="drivers run at once, one process each (default: the CPUs; 1 = in this process)")
    cp.add_argument("--constants", default=None,
                    help="a .toml with a [constants] table overriding the cost model's constants")
    cp.set_defaults(func=_cmd_compare)


#: (column, header with its unit, divisor) for the terminal table
_COMPARE_VIEW = (
    ("disk_used_bytes", "disk MiB", 1 << 20),
    ("bytes_written", "written MiB", 1 << 20),
    ("start_time_s", "start ms", 1e-3),
    ("first_write_s", "1st write ms", 1e-3),
    ("workload_s_per_container", "work/ctr ms", 1e-3),
    ("write_amplification", "write ampl. x", 1),
    ("page_cache_bytes", "page cache MiB", 1 << 20),
)


def _compare_cell(v, div) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    x = v / div
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def _cmd_compare(args) -> int:
    import json
    import os
    import math

    from .experiments.compare import compare

    if not args.scale > 0:
        raise ValueError(f"--scale must be > 0, not {args.scale}")
    src = args.workload
    if src.endswith(".toml") and not os.path.exists(src):
        raise ValueError(f"{src}: no such workload file")
    try:
        df, fig = compare(src, drivers=args.drivers, device=args.device, out=args.out,
                          scale=args.scale, progress=not args.json, constants=args.constants,
                          jobs=args.jobs)
    except (ValueError, OSError, KeyError, TypeError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if src not in msg and (src.endswith(".toml") or isinstance(e, KeyError)):
            msg = f"{src}: {msg}"
        raise ValueError(msg) from None
    if args.json:
        rows = []
        for rec in df.to_dict(orient="records"):
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
        print(json.dumps(rows, indent=1, default=str))
        return 0
    from rich.table import Table

    t = Table(title=f"thinp compare: {src} on {args.device} (best per column in green)")
    t.add_column("driver", style="bold", no_wrap=True)
    for _col, head, _div in _COMPARE_VIEW:
        t.add_column(head, justify="right")
    errors = any(isinstance(e, str) and e for e in df["error"])
    if errors:
        t.add_column("error", overflow="fold")
    best = {}
    for col, _h, _d in _COMPARE_VIEW:
        vals = [v for v in df[col] if not (isinstance(v, float) and math.isnan(v))]
        best[col] = min(vals) if vals else None
    for rec in df.to_dict(orient="records"):
        cells = []
        for col, _h, div in _COMPARE_VIEW:
            s = _compare_cell(rec[col], div)
            cells.append(f"[bold green]{s}[/]" if best[col] is not None and rec[col] == best[col] else s)
        if errors:
            err = rec.get("error")
            cells.append(f"[red]{err}[/]" if isinstance(err, str) and err else "")
        t.add_row(rec["driver"], *cells)
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con = Console(width=120)      # a pipe or file gets the whole table, not 80 columns
    con.print(t)
    if args.out:
        con.print(f"wrote {args.out}/compare.csv, compare.parquet, compare.png")
    return 0



def _cmd_overcommit(args) -> int:
    """thinp overcommit: the overcommit experiment; writes CSV/Parquet and a PNG."""
    import os

    from .experiments.overcommit import overcommit

    import warnings

    from .experiments.overcommit import UnionOptionsWarning

    drivers = args.driver.split(",") if "," in args.driver else args.driver
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UnionOptionsWarning)
        df, fig = _overcommit_call(overcommit, args, drivers)
    for n in notes:
        if issubclass(n.category, UnionOptionsWarning):
            sys.stderr.write(f"thinp: note: {n.message}\n")
        else:
            warnings.showwarning(n.message, n.category, n.filename, n.lineno)
    return _overcommit_report(args, df, fig)


def _overcommit_call(overcommit, args, drivers):
    return overcommit(pool=args.pool, block_size=args.block_size, image=args.image,
                      containers=args.containers, write_per_container=args.write_per_container,
                      zeroing=args.zeroing, discard=args.discard, fstrim_after_delete=args.fstrim_after_delete,
                      autoextend_threshold=args.autoextend_threshold, autoextend_percent=args.autoextend_percent,
                      no_space=args.no_space, lifetime=args.lifetime, driver=drivers, seed=args.seed,
                      progress=not args.quiet, plot=not args.no_plot, min_free_space=args.min_free_space)


def _overcommit_report(args, df, fig) -> int:
    import os

    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(args.out, f"overcommit.{args.format}")
    if args.format == "csv":
        df.to_csv(data, index=False)
    else:
        df.to_parquet(data, index=False)
    print(f"data: {data} ({len(df)} rows)")
    if fig is not None:
        png = os.path.join(args.out, "overcommit.png")
        fig.savefig(png, dpi=120)
        print(f"plot: {png}")
    for driver, g in df.groupby("driver", sort=False):
        hits = []
        for kind in ("low_water_mark", "min_free_space", "out_of_data_space", "out_of_metadata_space",
                     "autoextend", "queued_hang"):
            h = g[g["events"].str.split(",").apply(lambda e, k=kind: k in e)]
            if len(h):
                hits.append(f"{kind} at container {int(h['container'].iloc[0])} "
                            f"(Data% {h['data_pct'].iloc[0]:.1f})")
        ok = int((g["started"] & (g["enospc"] == 0)).sum())
        print(f"{driver}: {int(g['started'].sum())} containers started, {ok} wrote all their data, final Data% "
              f"{g['data_pct'].iloc[-1]:.2f}, Meta% {g['meta_pct'].iloc[-1]:.2f}; "
              + ("; ".join(hits) if hits else "no events"))
    return 0


def _add_overcommit(sub) -> None:
    o = sub.add_parser("overcommit", help="start containers until the pool runs out; Data%%/Meta%% with events")
    o.add_argument("--pool", default="100G", help="thin pool data size (default 100G)")
    o.add_argument("--block-size", default="64k", help="pool block size, 64k..1g (default 64k)")
    o.add_argument("--image", default="debian-minbase", help="debian-minbase, scratch, or a size such as 200M")
    o.add_argument("--containers", type=int, default=2000, help="containers started in turn (default 2000)")
    o.add_argument("--write-per-container", default="200M",
                   help="bytes of random 4 KiB writes per container (default 200M)")
    o.add_argument("--zeroing", action="store_true", help="zero new blocks (loop-lvm default: off)")
    o.add_argument("--discard", default="passdown", choices=["passdown", "nopassdown", "ignore"])
    o.add_argument("--fstrim-after-delete", action="store_true",
                   help="discard a container's devices before deleting them")
    o.add_argument("--autoextend-threshold", type=int, default=100, help="percent; 100 = off, <50 acts as 50")
    o.add_argument("--autoextend-percent", type=int, default=20, help="grow by this percent (default 20)")
    o.add_argument("--no-space", default="error", choices=["error", "queue"])
    o.add_argument("--lifetime", type=int, default=None, help="remove each container after N more started")
    o.add_argument("--min-free-space", type=int, default=10, help="dm.min_free_space percent (default 10; 0 = never refuse)")
    o.add_argument("--driver", default="devicemapper",
                   help="devicemapper, overlay2, overlay, aufs, vfs, a comma list, or all")
    o.add_argument("--seed", type=int, default=0, help="random write order (default 0)")
    o.add_argument("--out", default=".", help="directory for overcommit.csv/.parquet and overcommit.png")
    o.add_argument("--format", default="csv", choices=["csv", "parquet"])
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    o.set_defaults(func=_cmd_overcommit)


def _cmd_sweep(args) -> int:
    """thinp sweep: a parameter grid from TOML, locally or on a Dask cluster."""
    from .experiments.sweep import run_sweep

    if args.workers is not None and args.scheduler:
        raise ValueError("--workers and --scheduler exclude each other")
    stats = run_sweep(args.spec, args.out, workers=args.workers, scheduler=args.scheduler,
                      progress=not args.quiet, retry_failed=args.retry_failed)
    rate = stats["ran"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    print(f"{stats['points']} points: {stats['skipped']} already done, {stats['ran']} ran "
          f"({stats['failed']} failed) in {stats['seconds']:.1f} s ({rate:.2f} points/s); results in {args.out}")
    return 0


def _add_sweep(sub) -> None:
    s = sub.add_parser("sweep", help="run a parameter grid from TOML; resumable Parquet results")
    s.add_argument("spec", help="sweep.toml: [grid] lists and [fixed] values")
    s.add_argument("--out", required=True, help="Parquet dataset (a directory), appended as points finish")
    s.add_argument("--workers", type=int, default=None, help="local processes (default: CPUs; 0 = in-process)")
    s.add_argument("--scheduler", default=None, help="an existing Dask cluster, e.g. tcp://HOST:8786")
    s.add_argument("--retry-failed", action="store_true", help="rerun points that recorded an error")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="thinp", description="A block-level thin-provisioning simulator (dm-thin in numba).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    pool = sub.add_parser("pool", help="create a thin pool, send it messages, show its status")
    psub = pool.add_subparsers(dest="pool_cmd", metavar="POOL_COMMAND", parser_class=_Parser)
    c = psub.add_parser("create", help="make DIR with sparse data and metadata files")
    c.add_argument("dir")
    c.add_argument("--data-size", required=True, help="e.g. 100G")
    c.add_argument("--block-size", default="64k", help="64k..1g, a multiple of 64k (default 64k)")
    c.add_argument("--metadata-size", default=None, help="default: thin_metadata_size's estimate")
    c.add_argument("--max-thins", type=int, default=1000, help="devices the default metadata size allows for")
    c.add_argument("--low-water-mark", type=int, default=0, help="in data blocks")
    c.add_argument("--skip-block-zeroing", action="store_true")
    c.add_argument("--no-discard-passdown", action="store_true")
    c.add_argument("--ignore-discard", action="store_true")
    c.add_argument("--error-if-no-space", action="store_true")
    c.add_argument("--payload", action="store_true", help="store written bytes (default: accounting only)")
    c.set_defaults(func=_cmd_pool_create)
    m = psub.add_parser("message", help="a dmsetup pool message, e.g. 'create_thin 0'")
    m.add_argument("dir")
    m.add_argument("message", nargs="+")
    m.set_defaults(func=_cmd_pool_message)
    s = psub.add_parser("status", help="the dm status line and an lvs-like table")
    s.add_argument("dir")
    s.add_argument("--line", action="store_true", help="only the dm status line")
    s.set_defaults(func=_cmd_pool_status)
    _add_pool_replay(psub)

    d = sub.add_parser("demo", help="the built-in scenario: a loop-lvm pool with image layers and containers")
    d.add_argument("--dir", default=None, help="keep the pool here (default: a temporary directory)")
    d.add_argument("--layers", type=int, default=8)
    d.add_argument("--containers", type=int, default=200)
    d.add_argument("--writes", type=int, default=2000, help="random 4 KiB writes per container")
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(func=_cmd_demo)

    v = sub.add_parser("validate", help="compare the models with the real kernel and tools")
    vsub = v.add_subparsers(dest="validate_cmd", metavar="WHAT", parser_class=_Parser)
    vf = vsub.add_parser("fs", help="ext4/xfs allocation: simulated vs a real loop-mounted filesystem")
    vf.add_argument("--size", default="10G")
    vf.add_argument("--sim-only", action="store_true", help="skip the real kernel runs")
    vf.set_defaults(func=_cmd_validate_fs)
    vd = vsub.add_parser("drivers", help="storage drivers vs kernel overlayfs, real btrfs and zfs-fuse")
    vd.add_argument("--sim-only", action="store_true", help="skip the real btrfs/zfs runs")
    vd.set_defaults(func=_cmd_validate_drivers)

    ms = sub.add_parser("metadata-size", help="thin_metadata_size's estimate")
    ms.add_argument("-b", "--block-size", required=True)
    ms.add_argument("-s", "--pool-size", required=True)
    ms.add_argument("-m", "--max-thins", type=int, required=True)
    ms.add_argument("-u", "--unit", default="s", help="b, s, k, m, g, t, p (default s: sectors)")
    ms.add_argument("-n", "--numeric-only", action="store_true")
    ms.set_defaults(func=_cmd_metadata_size)
    _add_metadata_tools(sub)
    _add_compare(sub)

    _add_overcommit(sub)
    _add_sweep(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .errors import ThinpError

    try:
        return args.func(args) or 0
    except (ThinpError, ValueError, OSError) as e:
        msg = str(e) or e.__class__.__name__
        if isinstance(e, OSError) and not isinstance(e, ThinpError) and e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        sys.stderr.write(f"thinp: error: {msg}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("thinp: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``thinp pool``: create a pool, send it messages, show its status and
table lines, resize it, replay a block trace into it."""
from __future__ import annotations

from . import _output as out
from ._common import add_json, add_pool_dir, block_size, int_range, removed_option, size


def register(sub) -> None:
    pool = sub.add_parser("pool", help="create a thin pool, send it messages, show its status, resize it",
                          description="A dm-thin pool in a directory: 'metadata' (dm's on-disk format, "
                                      "readable by thin_check/thin_dump/thin_ls) and a sparse 'data' file.")
    pool.set_defaults(func=lambda args: _help(pool))
    psub = pool.add_subparsers(dest="pool_cmd", metavar="POOL_COMMAND", parser_class=type(pool))

    c = psub.add_parser("create", help="make DIR (a new or empty directory) with sparse data and metadata files")
    c.add_argument("dir", help="the new pool directory; its parent must exist, and it must be empty or absent")
    c.add_argument("--data-size", required=True, type=size(1), help="data device size, e.g. 100G")
    c.add_argument("--block-size", default="64k", type=block_size,
                   help="data block size, 64k..1g, a multiple of 64k (default 64k)")
    c.add_argument("--metadata-size", default=None, type=size(2 << 20, 16 << 30),
                   help="metadata device size, 2M..16G (default: thin_metadata_size's estimate)")
    c.add_argument("--max-thins", type=int_range(1), default=1000,
                   help="devices the default metadata size allows for (default 1000)")
    c.add_argument("--low-water-mark", type=int_range(0), default=0,
                   help="free data blocks at which the pool raises its event (default 0)")
    c.add_argument("--skip-block-zeroing", action="store_true", help="do not zero newly provisioned blocks")
    c.add_argument("--no-discard-passdown", action="store_true",
                   help="unmap discarded blocks but do not pass discards down to the data device")
    c.add_argument("--ignore-discard", action="store_true", help="ignore discards altogether")
    c.add_argument("--error-if-no-space", action="store_true", help="fail writes on a full pool (default: queue)")
    c.add_argument("--payload", action="store_true", help="store written bytes (default: accounting only)")
    c.set_defaults(func=_create)

    m = psub.add_parser("message", help="send a dmsetup pool message, e.g. 'create_thin 0'",
                        description="Send one of dm-thin's pool messages, as 'dmsetup message POOL 0 ...' "
                                    "does, then print the status line.",
                        epilog=MESSAGES_HELP, formatter_class=_raw())
    add_pool_dir(m)
    m.add_argument("message", nargs="+", help="the message and its arguments (see below)")
    m.set_defaults(func=_message)

    s = psub.add_parser("status", help="the dm status line and an lvs-like table")
    add_pool_dir(s)
    s.add_argument("--line", action="store_true", help="print only the dm status line")
    s.add_argument("--reconcile", action="store_true",
                   help="adopt the metadata's view when pool.json does not belong to it (rewrites pool.json)")
    add_json(s, "the status and the table")
    s.set_defaults(func=_status)

    t = psub.add_parser("table", help="the dmsetup table lines of the pool and its thin devices")
    add_pool_dir(t)
    t.add_argument("--json", action="store_true", help="print the lines as a JSON list of objects")
    t.set_defaults(func=_table)

    r = psub.add_parser("resize", help="grow the data or metadata device, or resize a thin device (as lvextend)",
                        description="Sizes are absolute (20G) or relative (+5G).  The pool's data and "
                                    "metadata only grow, as dm-thin's; a thin device may grow or shrink.")
    add_pool_dir(r)
    r.add_argument("--data-size", default=None, metavar="[+]SIZE", help="the data device's new size")
    r.add_argument("--metadata-size", default=None, metavar="[+]SIZE", help="the metadata device's new size")
    r.add_argument("--thin", type=int_range(0, (1 << 24) - 1), default=None, metavar="DEV_ID",
                   help="the thin device --size applies to")
    r.add_argument("--size", default=None, metavar="[+]SIZE", help="the thin device's new size (with --thin)")
    r.set_defaults(func=_resize)

    rp = psub.add_parser("replay", help="replay a block trace (ftrace block_rq_issue or blkparse text)",
                         description="Replay a block trace into thin device --dev-id (created, sized to "
                                     "the trace, when the pool lacks it).")
    add_pool_dir(rp)
    rp.add_argument("trace", help="the trace file: ftrace block_rq_issue lines or blkparse text")
    rp.add_argument("--trace-format", choices=("ftrace", "blkparse"), default=None,
                    help="the trace's format (default: detected)")
    removed_option(rp, "--format", "use --trace-format (--format is an output format elsewhere)")
    rp.add_argument("--dev-id", type=int_range(0, (1 << 24) - 1), default=0,
                    help="thin device to replay into (created if missing; default 0)")
    rp.add_argument("--trace-device", default=None, metavar="MAJ,MIN",
                    help="replay only this traced device (default: the busiest)")
    removed_option(rp, "--device", "use --trace-device MAJ,MIN (--device is compare's disk profile)")
    rp.set_defaults(func=_replay)


#: dm-thin's six pool messages, for ``pool message --help`` (``dmsetup message POOL 0 ...``)
MESSAGES = (
    ("create_thin DEV_ID [SIZE]", "a new empty thin device (SIZE, a thinp extension, defaults to the data size)"),
    ("create_snap DEV_ID ORIGIN_ID", "a snapshot of ORIGIN_ID sharing all its blocks"),
    ("delete DEV_ID", "delete a thin device or snapshot, freeing the blocks only it held"),
    ("set_transaction_id OLD NEW", "set the userspace transaction id (OLD must match)"),
    ("reserve_metadata_snap", "hold a snapshot of the metadata for thin_dump -m / thin_ls -m"),
    ("release_metadata_snap", "release the held metadata snapshot"),
)

MESSAGES_HELP = "messages:\n" + "\n".join(f"  {m:<30} {h}" for m, h in MESSAGES)


def _raw():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def _help(parser) -> int:
    parser.print_help()
    return 2


def _create(args) -> int:
    from ..thin.lvm import create_pool

    with create_pool(args.dir, data_size=args.data_size, block_size=args.block_size,
                         metadata_size=args.metadata_size, low_water_mark=args.low_water_mark,
                         zero_new_blocks=not args.skip_block_zeroing,
                         discard_passdown=not args.no_discard_passdown, ignore_discard=args.ignore_discard,
                         error_if_no_space=args.error_if_no_space, payload=args.payload,
                         max_thins=args.max_thins) as pool:
        out.line(str(pool.status()))
    return 0


def _message(args) -> int:
    from ..thin import ThinPool

    with ThinPool.open(args.dir) as pool:
        pool.message(" ".join(args.message))
        out.line(str(pool.status()))
    return 0


def _status(args) -> int:
    from ..thin import ThinPool
    from ..thin.lvm import lvs_rows

    if args.reconcile:
        ThinPool.open(args.dir, reconcile=True).close()
    with ThinPool.open(args.dir, read_only=True, check_trees=False) as pool:
        st = pool.status(observer=True)
        rows = [] if args.line else lvs_rows(pool)
    if args.json:
        out.write_json({"status": str(st), "data_percent": st.data_percent,
                        "metadata_percent": st.metadata_percent, "devices": rows})
        return 0
    out.line(str(st))
    if not args.line:
        out.table(rows, [("lv", "LV"), ("lsize", "LSize"), ("data_percent", "Data%"),
                         ("metadata_percent", "Meta%"), ("mapped_blocks", "Mapped"),
                         ("highest_block", "Highest")], title=f"thin pool {args.dir}")
    return 0


def _table(args) -> int:
    from ..thin.lvm import table_lines

    lines = table_lines(args.dir)
    if args.json:
        out.write_json(lines)
    else:
        for ln in lines:
            out.line(f"{ln['name']}: {ln['table']}")
    return 0


def _resize(args) -> int:
    from ..thin.lvm import resize

    if args.data_size is None and args.metadata_size is None and args.thin is None:
        raise ValueError("pool resize: give --data-size, --metadata-size or --thin ID --size SIZE")
    if (args.thin is None) != (args.size is None):
        raise ValueError("pool resize: --thin DEV_ID and --size SIZE go together")
    out.line(str(resize(args.dir, data_size=args.data_size, metadata_size=args.metadata_size,
                        thin=args.thin, thin_size=args.size)))
    return 0


def _replay(args) -> int:
    from ..experiments.blockreplay import replay_file

    rep = replay_file(args.dir, args.trace, fmt=args.trace_format, dev_id=args.dev_id,
                      device=args.trace_device)
    for n in rep.notes:
        out.note(n)
    for ln in rep.lines:
        out.line(ln)
    return 0

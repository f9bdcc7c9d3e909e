"""The metadata tools, as thin-provisioning-tools names them: ``check``,
``dump``, ``restore``, ``ls``, ``delta``, ``rmap``, ``repair``, ``pack``,
``unpack``, ``convert``, ``trim``, ``metadata-size``."""
from __future__ import annotations

import sys

from . import _output as out
from ._common import EXIT_ERROR, add_pool_dir, block_size, int_range, size


def register(sub) -> None:
    c = sub.add_parser("check", help="thin_check: verify metadata; --repair rebuilds the counts")
    add_pool_dir(c)
    c.add_argument("--repair", action="store_true", help="rebuild space maps from the mappings, clear needs_check")
    c.set_defaults(func=_check)

    d = sub.add_parser("dump", help="thin_dump: the metadata as XML")
    add_pool_dir(d)
    d.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    d.add_argument("-m", "--metadata-snap", action="store_true", help="dump the held metadata snapshot")
    d.set_defaults(func=_dump)

    r = sub.add_parser("restore", help="thin_restore: build a new pool DIR from thin_dump XML")
    r.add_argument("-i", "--input", required=True, metavar="FILE", help="thin_dump XML to restore")
    r.add_argument("dir", help="the new pool directory")
    r.add_argument("--payload", action="store_true", help="make a payload pool (data reads as zeros)")
    r.add_argument("--size", action="append", default=[], metavar="DEV=SIZE",
                   help="a thin device's size, e.g. 3=20G (thin_dump XML has none; default: the data "
                        "device's size); repeat for more devices")
    r.add_argument("--metadata-size", default=None, type=size(2 << 20, 16 << 30),
                   help="metadata device size (default: thin_metadata_size's)")
    r.add_argument("--low-water-mark", type=int_range(0), default=0, help="low water mark in data blocks (default 0)")
    r.add_argument("--error-if-no-space", action="store_true", help="fail writes on a full pool (default: queue)")
    r.set_defaults(func=_restore)

    ls = sub.add_parser("ls", help="thin_ls: a table of thin devices")
    add_pool_dir(ls)
    ls.add_argument("-o", "--format", default=None, metavar="FIELDS",
                    help="comma-separated fields, as thin_ls's --format, e.g. DEV,MAPPED_BYTES,EXCLUSIVE_SECTORS "
                         "(default: thin_ls's DEV,MAPPED,CREATE_TIME,SNAP_TIME)")
    ls.add_argument("--no-headers", action="store_true", help="leave out the header line")
    ls.add_argument("-m", "--metadata-snap", action="store_true", help="list the held metadata snapshot")
    ls.add_argument("--json", action="store_true", help="print the rows as a JSON list, nothing else")
    ls.set_defaults(func=_ls)

    dl = sub.add_parser("delta", help="thin_delta: XML diff of two thin devices")
    add_pool_dir(dl)
    dl.add_argument("--snap1", type=int_range(0), required=True, metavar="DEV_ID", help="the older device")
    dl.add_argument("--snap2", type=int_range(0), required=True, metavar="DEV_ID", help="the newer device")
    dl.add_argument("--verbose", action="store_true", help="list every block, not ranges")
    dl.add_argument("-m", "--metadata-snap", action="store_true", help="use the held metadata snapshot")
    dl.set_defaults(func=_delta)

    rm = sub.add_parser("rmap", help="thin_rmap: which thin blocks map the given data blocks")
    rm.add_argument("dir", help="a pool directory or a dm-thin metadata image")
    rm.add_argument("--region", action="append", required=True, metavar="BEGIN..END",
                    help="data blocks BEGIN..END (one past the end); repeat for more")
    rm.add_argument("-m", "--metadata-snap", action="store_true", help="use the held metadata snapshot")
    rm.set_defaults(func=_rmap)

    rp = sub.add_parser("repair", help="thin_repair: salvage a damaged dm-thin metadata image into a new one")
    rp.add_argument("-i", "--input", required=True, metavar="FILE", help="the damaged metadata image")
    rp.add_argument("-o", "--output", required=True, metavar="FILE", help="the new metadata file (must not exist)")
    rp.add_argument("--data-block-sectors", type=int_range(128), default=None, help="only when the superblock is lost")
    rp.add_argument("--nr-data-blocks", type=int_range(1), default=None, help="only when the superblock is lost")
    rp.set_defaults(func=_repair)

    for name, what in (("pack", "thin_metadata_pack: archive a dm-thin metadata image"),
                       ("unpack", "thin_metadata_unpack: a metadata image from a pack archive")):
        pk = sub.add_parser(name, help=what)
        pk.add_argument("-i", "--input", required=True, metavar="FILE",
                        help="the metadata image to pack" if name == "pack" else "the pack archive to unpack")
        pk.add_argument("-o", "--output", required=True, metavar="FILE", help="the new file (must not exist for unpack)")
        pk.set_defaults(func=_pack, pack_command=name)

    cv = sub.add_parser("convert", help="a pool in thinp's own metadata layout -> a new pool with dm-thin metadata")
    cv.add_argument("dir", help="the pool directory to read")
    cv.add_argument("new_dir", help="the new pool directory (metadata, data, pool.json)")
    cv.add_argument("--split", choices=("current", "halves"), default="current",
                    help="btree split rule: the kernel's since 2021, or even halves (thin_restore 0.9.0)")
    cv.set_defaults(func=_convert)

    t = sub.add_parser("trim", help="thin_trim: punch free data blocks out of the data file")
    add_pool_dir(t)
    t.set_defaults(func=_trim)

    ms = sub.add_parser("metadata-size", help="thin_metadata_size's estimate")
    ms.add_argument("-b", "--block-size", required=True, type=block_size, help="data block size, e.g. 64k")
    ms.add_argument("-s", "--pool-size", required=True, type=size(1), help="data device size, e.g. 100G")
    ms.add_argument("-m", "--max-thins", type=int_range(1), required=True, help="thin devices to allow for")
    ms.add_argument("-u", "--unit", default="s", choices=("b", "s", "k", "m", "g", "t", "p"),
                    help="unit of the answer (default s: sectors)")
    ms.add_argument("-n", "--numeric-only", action="store_true", help="print the number alone")
    ms.set_defaults(func=_metadata_size)


def _check(args) -> int:
    from ..thin.check import check

    rep = check(args.dir, repair=args.repair)
    for p in rep.problems:
        out.line(f"  {p}")
    for p in rep.notes:
        out.line(f"  {p} (non-fatal)")
    out.line(f"TRANSACTION_ID={rep.transaction_id}")
    out.line(f"METADATA_FREE_BLOCKS={rep.metadata_free_blocks}")
    out.line(f"devices {rep.nr_devices}, mappings {rep.nr_mappings}")
    if rep.repaired:
        out.line("repaired: space maps and device counts rebuilt from the mappings, needs_check cleared")
        return 0
    if rep.needs_check:
        out.line("needs_check is set: run 'thinp check --repair' to clear it")
    if not rep.ok:
        sys.stderr.write(f"thinp: error: {args.dir}: {len(rep.problems)} metadata problems; "
                         "'thinp check --repair' rebuilds the counts\n")
        return EXIT_ERROR
    return 0


def _dump(args) -> int:
    from ..thin.dump import dump

    text = dump(args.dir, output=args.output, metadata_snap=args.metadata_snap)
    if text is not None:
        sys.stdout.write(text)
    return 0


def _restore(args) -> int:
    from ..thin.restore import parse_sizes, restore

    n = restore(args.input, args.dir, payload=args.payload, sizes=parse_sizes(args.size, "--size") or None,
                metadata_size=args.metadata_size, low_water_mark=args.low_water_mark,
                error_if_no_space=args.error_if_no_space)
    out.line(f"restored {n} mappings into {args.dir}")
    return 0


def _ls(args) -> int:
    from ..thin.ls import ls, ls_rows, parse_format

    fields = parse_format(args.format)
    if args.json:
        out.write_json(ls_rows(args.dir, fields, metadata_snap=args.metadata_snap))
    else:
        sys.stdout.write(ls(args.dir, fields, headers=not args.no_headers, metadata_snap=args.metadata_snap))
    return 0


def _delta(args) -> int:
    from ..thin.delta import delta

    sys.stdout.write(delta(args.dir, args.snap1, args.snap2, verbose=args.verbose,
                           metadata_snap=args.metadata_snap))
    return 0


def _rmap(args) -> int:
    from ..thin.rmap import parse_region, rmap

    sys.stdout.write(rmap(args.dir, [parse_region(r) for r in args.region], metadata_snap=args.metadata_snap))
    return 0


def _repair(args) -> int:
    from ..thin.repair import repair

    rep = repair(args.input, args.output, data_block_sectors=args.data_block_sectors,
                 nr_data_blocks=args.nr_data_blocks)
    for d in rep.damaged:
        out.line(f"  lost: {d}")
    out.line(f"salvaged {rep.nr_mappings} mappings of {rep.nr_devices} devices into {args.output}"
             + (f" ({rep.adopted_leaves} orphaned leaves found by scanning)" if rep.adopted_leaves else ""))
    return 0


def _pack(args) -> int:
    from ..thin.pack import pack, unpack

    fn = pack if args.pack_command == "pack" else unpack
    n = fn(args.input, args.output)
    out.line(f"{args.pack_command}ed {n} metadata blocks into {args.output}")
    return 0


def _convert(args) -> int:
    from ..thin.convert import convert_pool

    n = convert_pool(args.dir, args.new_dir, split=args.split)
    out.line(f"converted {n} mappings into {args.new_dir} (dm-thin metadata; thin sizes in pool.json)")
    return 0


def _trim(args) -> int:
    from ..thin.trim import trim

    nruns, nblocks = trim(args.dir)
    out.line(f"discarded {nblocks} free blocks in {nruns} runs")
    return 0


def _metadata_size(args) -> int:
    from ..thin.metadata_size import format_estimate, metadata_size

    out.line(format_estimate(metadata_size(args.pool_size, args.block_size, args.max_thins),
                             args.unit, args.numeric_only))
    return 0

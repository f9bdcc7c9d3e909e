"""``thinp overcommit``: start containers until the pool runs out (:mod:`thinp.experiments.overcommit`)."""
from __future__ import annotations

import sys
import warnings

from . import _output as out
from ._common import (add_drivers, add_json, add_quiet, add_seed, block_size, hidden_alias, int_range,
                      removed_option, size)


def register(sub) -> None:
    o = sub.add_parser("overcommit", help="start containers until the pool runs out; Data%% and Meta%% with events")
    o.add_argument("--data-size", default="100G", type=size(64 << 10), help="thin pool data size (default 100G)")
    hidden_alias(o, "--pool", dest="data_size", use="--data-size", type=size(64 << 10))
    o.add_argument("--block-size", default="64k", type=block_size, help="pool block size, 64k..1g (default 64k)")
    o.add_argument("--image", default="debian-minbase", help="debian-minbase, scratch, or a size such as 200M")
    o.add_argument("--containers", type=int_range(1, 10_000_000), default=2000,
                   help="containers started in turn (default 2000)")
    o.add_argument("--write-per-container", default="200M", type=size(0),
                   help="bytes of random 4 KiB writes per container (default 200M)")
    o.add_argument("--metadata-size", default=None, type=size(4096),
                   help="thin pool metadata size (default 2G, Docker's loop-lvm)")
    o.add_argument("--zeroing", action="store_true", help="zero new blocks (loop-lvm default: off)")
    o.add_argument("--discard", default="passdown", choices=["passdown", "nopassdown", "ignore"],
                   help="the pool's discard mode (default passdown)")
    o.add_argument("--fstrim-after-delete", action="store_true",
                   help="discard a container's devices before deleting them")
    o.add_argument("--autoextend-threshold", type=int_range(0, 100), default=100,
                   help="LVM's thin_pool_autoextend_threshold, percent: 100 = off, below 50 acts as 50")
    o.add_argument("--autoextend-percent", type=int_range(1, 1000), default=20,
                   help="grow the pool by this percent when it autoextends (default 20)")
    o.add_argument("--no-space", default="error", choices=["error", "queue"],
                   help="a full pool fails writes (error_if_no_space) or queues them (default error)")
    o.add_argument("--no-space-timeout", type=int_range(0), default=60, metavar="SECONDS",
                   help="with --no-space queue: dm_thin_pool's no_space_timeout, after which queued writes fail "
                        "with ENOSPC (default 60; 0 = queue for ever, the run stops at the first hang)")
    o.add_argument("--lifetime", type=int_range(1), default=None,
                   help="remove each container after N more have started (default: never)")
    o.add_argument("--min-free-space", type=int_range(0, 99), default=10,
                   help="Docker's dm.min_free_space, percent (default 10; 0 = never refuse)")
    add_drivers(o, "devicemapper", "devicemapper, overlay2, overlay, aufs, vfs")
    hidden_alias(o, "--driver", dest="drivers", use="--drivers")
    add_seed(o, 0)
    o.add_argument("--out", default=None, metavar="DIR",
                   help="write overcommit.csv, overcommit.parquet and overcommit.png here (default: nothing written)")
    removed_option(o, "--format", "--out writes overcommit.csv and overcommit.parquet both")
    o.add_argument("--no-plot", action="store_true", help="skip the figure")
    add_json(o, "the per-driver summary")
    add_quiet(o)
    o.set_defaults(func=_overcommit)


def _overcommit(args) -> int:
    from ..experiments.overcommit import UnionOptionsWarning, overcommit, save, summary

    drivers = args.drivers.split(",") if "," in args.drivers else args.drivers
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UnionOptionsWarning)
        df, fig = overcommit(pool=args.data_size, block_size=args.block_size, image=args.image,
                             containers=args.containers, write_per_container=args.write_per_container,
                             zeroing=args.zeroing, discard=args.discard, fstrim_after_delete=args.fstrim_after_delete,
                             autoextend_threshold=args.autoextend_threshold,
                             autoextend_percent=args.autoextend_percent, no_space=args.no_space,
                             lifetime=args.lifetime, driver=drivers, seed=args.seed,
                             progress=not (args.quiet or args.json),
                             plot=bool(args.out) and not args.no_plot, min_free_space=args.min_free_space,
                             metadata_size=args.metadata_size, no_space_timeout=args.no_space_timeout)
    for n in notes:
        if issubclass(n.category, UnionOptionsWarning):
            out.note(str(n.message))
        else:
            warnings.showwarning(n.message, n.category, n.filename, n.lineno)
    rows = summary(df)
    if args.out:
        paths = save(df, fig, args.out)
        if not args.quiet:
            sys.stderr.write(f"wrote {', '.join(paths.values())}\n")
    if args.json:
        out.write_json(rows)
    else:
        out.table(rows, [("driver", "driver"), ("started", "started"), ("completed", "wrote all"),
                         ("data_pct", "Data%"), ("meta_pct", "Meta%"), ("events", "first events")],
                  title="thinp overcommit", text_columns={"events"})
    return 0

"""``thinp capture``: strace a command in a real overlay mount of an image (:mod:`thinp.validate.capture`)."""
from __future__ import annotations

from . import _output as out
from ._common import int_range


def register(sub) -> None:
    c = sub.add_parser("capture", help="strace a command in a real overlay mount of an image (root)")
    c.add_argument("image", help="a docker save tar or OCI layout holding one image")
    c.add_argument("out", help="a new directory: trace.strace, upper.csv.gz, image.tar, workload.toml")
    c.add_argument("command", nargs="+", help="a shell command line, run with the image's /bin/sh -c")
    c.add_argument("--platform", default=None, help="os/arch when the archive offers several images")
    c.add_argument("--driver", default="overlay2", help="the driver to replay with and compare (default overlay2)")
    c.add_argument("--string-bytes", type=int_range(0, 1 << 20), default=64,
                   help="strace -s: bytes of each string kept (default 64: xattr names and ACLs whole)")
    c.set_defaults(func=_capture)


def _capture(args) -> int:
    from ..validate import capture as cap

    res = cap.capture(args.image, " ".join(args.command), args.out, platform=args.platform,
                      string_bytes=args.string_bytes, replay_driver=args.driver)
    ours, _counts = cap.replay_upper(res.image, res.trace, driver=args.driver)
    cmp = cap.compare_upper(cap.read_upper_csv(res.upper), ours)
    out.line(f"{res.nr_ops} file operations (exit {res.returncode}, {res.modes_inferred} ACL modes inferred); "
             f"kernel upper: {res.nr_upper_paths} paths; wrote {res.trace}, {res.upper}, {res.workload}")
    out.line(f"replayed on {args.driver}: {cmp['paths_matched']} of {cmp['paths_expected']} upper paths match, "
             f"{len(cmp['missing'])} missing, {len(cmp['extra'])} extra")
    return 0

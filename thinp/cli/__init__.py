"""The ``thinp`` command: parse, call the library, print.

One module per command group, each with a ``register(sub)`` that adds its
sub-commands and points them at small functions: they parse nothing
themselves, call one library function and print through :mod:`._output`
(the one table renderer and the one JSON writer).  Option names, argument
types and range checks shared by several groups live in :mod:`._common`.

To add a command group, write ``thinp/cli/<group>.py`` with ``register``
and add ``<group>`` to :data:`GROUPS`.

Every user mistake prints one line, ``thinp: error: ...``, and exits 1
(2 for a usage error); a traceback means a bug.  numba is imported only by
commands that need it, so ``--help`` is instant.
"""
from __future__ import annotations

import importlib
import sys

from ._common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser

#: command groups, in the order ``thinp --help`` lists them
GROUPS = ("pool", "tools", "demo", "compare", "capture", "docker", "overcommit", "sweep", "validate", "timing")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("thinp")
    except Exception:           # run from a source tree, not installed
        from .. import __version__

        return __version__


def build_parser() -> Parser:
    p = Parser(prog="thinp", description="A block-level thin-provisioning simulator: dm-thin in numba, "
                                         "filesystems and Docker's storage drivers above it.")
    p.add_argument("--version", action="version", version=f"thinp {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv=None) -> int:
    from .errors import report  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from ..jitnotice import announce_compiles

    try:
        with announce_compiles():
            return args.func(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write("thinp: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:
        line = report(e)
        if line is None:
            raise           # a bug: the traceback is for us
        sys.stderr.write(f"thinp: error: {line}\n")
        return EXIT_ERROR


__all__ = ["main", "build_parser", "GROUPS", "EXIT_ERROR", "EXIT_USAGE"]

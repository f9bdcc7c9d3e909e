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

    hit, restore = _note_interrupts()
    try:
        with announce_compiles():
            rc = args.func(args) or 0
    except KeyboardInterrupt:
        hit.append(True)
    except Exception as e:
        if not hit:
            line = report(e)
            if line is None:
                raise           # a bug: the traceback is for us
            sys.stderr.write(f"thinp: error: {line}\n")
            return EXIT_ERROR
    finally:
        restore()
    if hit:
        # also when the KeyboardInterrupt itself was lost: raised inside a
        # finaliser or a library callback it is reported as "ignored" and the
        # run goes on, but Ctrl-C still ends the command as interrupted
        sys.stderr.write("thinp: interrupted\n")
        return EXIT_INTERRUPTED
    return rc


def _note_interrupts():
    """SIGINT raises KeyboardInterrupt as Python's own handler does, and is
    also noted, so that :func:`main` reports an interrupt that some
    callee swallowed.  Left alone when SIGINT is ignored or someone else
    handles it.  Returns (the note, a function restoring the handler)."""
    import signal

    hit: list = []
    prev = signal.getsignal(signal.SIGINT)
    if prev is not signal.default_int_handler:
        return hit, lambda: None

    def on_interrupt(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:          # not the main thread
        return hit, lambda: None
    return hit, lambda: signal.signal(signal.SIGINT, prev)


__all__ = ["main", "build_parser", "GROUPS", "EXIT_ERROR", "EXIT_USAGE"]

"""What every command group shares: the parser class, the option vocabulary
and argument types that check ranges at parse time.

One name means one thing in every command:

==================  ==========================================================
``--data-size``     a pool's data device size (``100G``)
``--block-size``    a pool's data block size (``64k``)
``--metadata-size`` a pool's metadata device size
``--drivers``       storage drivers: ``all`` or a comma list
``--disk``          the cost profile of the disk under the drivers
``--seed``          the random seed
``--jobs``/``-j``   processes run at once
``--out``           the only place a command writes files
``--json``          the table as JSON on stdout, nothing else
``-q``/``--quiet``  no progress on stderr
==================  ==========================================================
"""
from __future__ import annotations

import argparse
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) and no usage dump."""

    def error(self, message):
        sys.stderr.write(f"thinp: error: {message}\n")
        sys.exit(EXIT_USAGE)


def hidden_alias(p, *names, dest, use, **kw) -> None:
    """An old spelling kept working but left out of ``--help``; using it
    prints one line on stderr naming the option to ``use`` instead.  An old
    spelling is kept only where it means what the new one means: one that
    meant something else elsewhere is :func:`removed_option`."""
    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            sys.stderr.write(f"thinp: warning: {option_string} is deprecated; use {use}\n")
            setattr(namespace, self.dest, values)

    p.add_argument(*names, dest=dest, help=argparse.SUPPRESS, action=Deprecated, **kw)


def removed_option(p, name, why) -> None:
    """An old spelling that is no longer accepted: one usage-error line
    saying ``why`` (what to use instead), left out of ``--help``."""
    class Removed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} was removed: {why}")

    p.add_argument(name, dest=f"_removed_{name.lstrip('-').replace('-', '_')}", nargs="?",
                   help=argparse.SUPPRESS, action=Removed)


# ------------------------------------------------------------ argument types
def _type(name, func):
    func.__name__ = name          # argparse says "invalid <name> value: 'x'"
    return func


def int_range(lo=None, hi=None):
    """An integer in ``[lo, hi]`` (either end open when None)."""
    def conv(text):
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want an integer, not {text!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}" + _range(lo, hi))
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{v} is above {hi}" + _range(lo, hi))
        return v
    return _type("int", conv)


def float_range(lo=None, hi=None, *, lo_open=False):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a number, not {text!r}") from None
        if v != v or (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            want = f"> {lo}" if lo_open else _range(lo, hi).strip(" ()")
            raise argparse.ArgumentTypeError(f"{text} is out of range (want {want})")
        return v
    return _type("float", conv)


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" (want {lo}..{hi})"
    return f" (want >= {lo})" if lo is not None else f" (want <= {hi})"


def size(min_bytes: int = 0, max_bytes: int | None = None):
    """A size such as ``64k`` or ``10G`` (binary units, as LVM), checked here
    and passed on as the text the user typed."""
    def conv(text):
        from ..units import format_size, parse_size

        try:
            v = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if v < min_bytes:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {format_size(min_bytes)}")
        if max_bytes is not None and v > max_bytes:
            raise argparse.ArgumentTypeError(f"{text} is above the maximum {format_size(max_bytes)}")
        return text
    return _type("size", conv)


def block_size(text):
    from ..units import check_block_size

    try:
        check_block_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


block_size = _type("block size", block_size)


# ------------------------------------------------------- shared option groups
def add_json(p, what="the table") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout, nothing else")


def add_quiet(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def add_seed(p, default) -> None:
    p.add_argument("--seed", type=int_range(0), default=default, help=f"random seed (default {default})")


def add_jobs(p, what) -> None:
    p.add_argument("-j", "--jobs", type=int_range(1), default=None,
                   help=f"{what} run at once, one process each (default: the CPUs; 1 = in this process)")


def add_drivers(p, default, choices_help) -> None:
    p.add_argument("--drivers", default=default,
                   help=f"{choices_help}, a comma-separated list, or all (default {default})")


def add_pool_dir(p) -> None:
    p.add_argument("dir", help="the pool directory (made by 'thinp pool create')")

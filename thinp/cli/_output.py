"""The one table renderer (rich) and the one JSON writer every command uses.

Tables and JSON go to stdout; notes, warnings and progress go to stderr, so
``thinp ... --json | jq`` and ``thinp ... > table.txt`` get only the result.
"""
from __future__ import annotations

import json
import math
import sys


def _plain(v):
    """A value JSON can hold: NaN becomes null, numpy scalars plain numbers."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return _plain(v.item())
        except (TypeError, ValueError):
            return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_json(obj) -> None:
    """``obj`` (rows, a dict, a DataFrame) as indented JSON on stdout."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict(orient="records")
    sys.stdout.write(json.dumps(_plain(obj), indent=1, default=str) + "\n")


def cell(v) -> str:
    """A table cell: ``-`` for nothing, thousands separators for integers."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items()) or "default"
    return str(v)


def console(stderr: bool = False):
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, width=160, highlight=False)   # a pipe gets whole lines
    return con


def table(rows, columns=None, *, title=None, best=None, text_columns=()) -> None:
    """Print ``rows`` as one rich table on stdout.

    ``rows`` is a list of dicts (or of lists when ``columns`` gives headers).
    ``columns`` is a list of ``(key, header)`` pairs or of keys; by default
    every key any row has, in first-seen order.  Cells already strings are
    printed as they are, others through :func:`cell`.  ``best`` is a set of
    ``(row index, key)`` cells to show in bold green.  Numbers are
    right-aligned, ``text_columns`` and the first column left-aligned.
    """
    from rich.markup import escape
    from rich.table import Table

    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            for k in (r if isinstance(r, dict) else ()):
                if k not in columns:
                    columns.append(k)
    cols = [c if isinstance(c, tuple) else (c, str(c)) for c in columns]
    t = Table(title=title, title_justify="left")
    for i, (key, head) in enumerate(cols):
        left = i == 0 or key in text_columns
        t.add_column(escape(head), justify="left" if left else "right", no_wrap=i == 0,
                     overflow="fold")
    best = best or set()
    for j, r in enumerate(rows):
        values = [r.get(k) for k, _h in cols] if isinstance(r, dict) else list(r)
        cells = []
        for (key, _h), v in zip(cols, values):
            s = escape(v if isinstance(v, str) else cell(v))
            cells.append(f"[bold green]{s}[/]" if (j, key) in best else s)
        t.add_row(*cells)
    console().print(t)


def line(text: str = "") -> None:
    """One line of the result on stdout."""
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """Something the user should know, on stderr."""
    sys.stderr.write(f"thinp: note: {text}\n")

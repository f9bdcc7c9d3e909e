"""Loading a workload checks it: a file is dry-run on the reference driver."""
from __future__ import annotations

import dataclasses
import os

from .format import Workload, WorkloadError
from .run import REFERENCE, run
from .scenarios import SCENARIOS
from .scenarios import load as parse

__all__ = ["load", "dry_run"]


def dry_run(w: Workload) -> None:
    """Check ``w`` by running one container of it on the reference driver
    (an in-memory model, no bytes kept): a step that reads, writes, renames
    or deletes a path nothing has made yet is a :class:`WorkloadError`
    naming the file, the step and the path."""
    res = run(dataclasses.replace(w, containers=1), REFERENCE)
    if res.error:
        raise WorkloadError(f"{w.source}: on the reference driver: {res.error}")


def load(source, check: bool = True) -> Workload:
    """A workload from a TOML path or a built-in scenario name.  A file is
    checked by :func:`dry_run` unless ``check=False``; the built-in
    scenarios are checked by the tests."""
    w = parse(source)
    if check and os.fspath(source) not in SCENARIOS:
        dry_run(w)
    return w

"""What every driver composes: the layer table and the naive diff.

:class:`LayerTable` is the bookkeeping containers/storage splits between its
layer store and ``RefCounter`` (``drivers/counter.go``): which layers exist,
their parents, how many children each has, and how many users have each one
mounted.  Every driver keeps its layers in one, so ids are validated, layers
listed, mounts counted and errors worded the same way everywhere:

* an id is a non-empty string without "/" (Docker's are 64 hex digits, or
  that plus ``-init``), else ``ValueError``;
* ``create`` of an existing id raises DeviceExistsError, an unknown id
  DeviceNotFoundError, a chain deeper than ``max_layers`` TooManyLayersError,
  an unknown option ``ValueError``;
* ``remove`` of a mounted layer or of one with children raises EBUSY;
* ``put`` of a layer nobody mounted raises EINVAL;
* :meth:`LayerTable.ids` lists layers sorted by id.

A driver's own per-layer state (a branch directory, a thin device, a
subvolume's trees) goes on the :class:`LayerRecord` as extra attributes.

:class:`NaiveDiff` is moby's ``NaiveDiffDriver`` (``drivers/fsdiff.go``):
changes and diff by mounting the layer and its parent and walking both trees
(:mod:`._treediff`), each walk's work added to the driver's ``diff_work``.
"""
from __future__ import annotations

import errno

from ..errors import DeviceExistsError, DeviceNotFoundError, TooManyLayersError
from . import _treediff as td

__all__ = ["LayerRecord", "LayerTable", "NaiveDiff", "check_layer_id"]


def check_layer_id(id) -> None:
    """``ValueError`` unless ``id`` is a non-empty string without "/"."""
    if not isinstance(id, str) or not id or "/" in id or "\0" in id:
        raise ValueError(f"layer id {id!r} is not a non-empty string without '/'")


class LayerRecord:
    """One layer: ``id``, ``parent`` (an id or None), ``read_write`` (a
    container's layer), ``depth`` (number of ancestors), ``mounts`` (users
    holding it mounted), ``view`` (the mounted view while ``mounts > 0``) and
    ``children`` (layers made on top of it).  Drivers add their own fields."""

    def __init__(self, id: str, parent: str | None, read_write: bool, depth: int):
        self.id, self.parent, self.read_write, self.depth = id, parent, bool(read_write), depth
        self.mounts = 0
        self.view = None
        self.children = 0

    def __repr__(self) -> str:
        return f"<layer {self.id!r} parent={self.parent!r} mounts={self.mounts} children={self.children}>"


class LayerTable(dict):
    """id -> :class:`LayerRecord` for driver ``name``; ``table[id]`` of an
    unknown id raises DeviceNotFoundError.  ``max_layers``: the longest chain
    :meth:`new` accepts, the layer itself included (None: no limit)."""

    def __init__(self, name: str, max_layers: int | None = None):
        super().__init__()
        self.name = name
        self.max_layers = max_layers

    def __getitem__(self, id) -> LayerRecord:
        try:
            return dict.__getitem__(self, id)
        except (KeyError, TypeError):
            raise DeviceNotFoundError(f"{self.name}: no such layer {id!r}") from None

    def ids(self) -> list[str]:
        """Every layer id, sorted."""
        return sorted(self)

    def chain(self, id: str) -> list[LayerRecord]:
        """The layer and its ancestors, the layer first."""
        out = [self[id]]
        while out[-1].parent is not None:
            out.append(self[out[-1].parent])
        return out

    # -- create / remove ----------------------------------------------------
    def new(self, id: str, parent: str | None, read_write: bool = False, opts: dict | None = None,
            record=LayerRecord) -> LayerRecord:
        """Check a ``create(id, parent, read_write=, **opts)`` and return the
        new record (a ``record`` instance), not yet in the table: the driver
        makes the layer on disk, then calls :meth:`add`, so a failed create
        leaves nothing behind."""
        if opts:
            raise ValueError(f"{self.name}: create() takes no option(s) {sorted(opts)}")
        check_layer_id(id)
        if id in self:
            raise DeviceExistsError(f"{self.name}: layer {id!r} already exists")
        depth = 0 if parent is None else self[parent].depth + 1
        if self.max_layers is not None and depth + 1 > self.max_layers:
            raise TooManyLayersError(
                f"{self.name}: layer {id!r} would have {depth} lower layers, "
                f"more than the maximum {self.max_layers - 1}")
        return record(id, parent, read_write, depth)

    def add(self, rec: LayerRecord) -> LayerRecord:
        dict.__setitem__(self, rec.id, rec)
        if rec.parent is not None:
            self[rec.parent].children += 1
        return rec

    def removable(self, id: str) -> LayerRecord:
        """The record of ``id`` if it may be removed: EBUSY while it is
        mounted or has child layers."""
        rec = self[id]
        if rec.mounts:
            raise OSError(errno.EBUSY, f"{self.name}: layer {id!r} is mounted ({rec.mounts} users)")
        if rec.children:
            raise OSError(errno.EBUSY, f"{self.name}: layer {id!r} has {rec.children} child layer(s)")
        return rec

    def drop(self, id: str) -> None:
        rec = dict.pop(self, id)
        if rec.parent is not None:
            self[rec.parent].children -= 1

    # -- get / put (containers/storage's RefCounter) -------------------------
    def mount(self, id: str, make_view) -> tuple:
        """One more user of layer ``id``: ``(view, first)``; the first user's
        ``make_view(record)`` makes the view every later user shares."""
        rec = self[id]
        first = rec.mounts == 0
        if first:
            rec.view = make_view(rec)
        rec.mounts += 1
        return rec.view, first

    def unmount(self, id: str) -> bool:
        """One user fewer; True when that was the last (the view is gone).
        EINVAL when nobody has it mounted."""
        rec = self[id]
        if rec.mounts <= 0:
            raise OSError(errno.EINVAL, f"{self.name}: layer {id!r} is not mounted")
        rec.mounts -= 1
        if rec.mounts == 0:
            rec.view = None
            return True
        return False

    def busy(self, id: str) -> None:
        """EBUSY if layer ``id`` is mounted (it cannot be written as a whole)."""
        rec = self[id]
        if rec.mounts:
            raise OSError(errno.EBUSY, f"{self.name}: layer {id!r} is mounted ({rec.mounts} users)")

    def unmount_all(self) -> None:
        for rec in self.values():
            rec.mounts, rec.view = 0, None


class NaiveDiff:
    """Docker's ``NaiveDiffDriver`` over mounted views: ``counters`` is the
    driver's counter dict (its ``diff_work`` grows by each walk's cost) and
    ``by_stat`` the rule for "changed" (:attr:`Capabilities.changes_by_stat`)."""

    def __init__(self, counters: dict, by_stat: bool = False):
        self.counters = counters
        self.by_stat = by_stat

    def _run(self, fn):
        w = td.Work()
        try:
            return fn(w)
        finally:
            self.counters["diff_work"] += w.total

    def changes(self, view, parent_view) -> list:
        """The A/C/D rows of ``view`` against ``parent_view`` (None: empty)."""
        return self._run(lambda w: td.changes(view, parent_view, w, by_stat=self.by_stat))

    def diff(self, view, parent_view):
        """The layer tar of ``view`` against ``parent_view``."""
        return self._run(lambda w: td.diff(view, parent_view, w, by_stat=self.by_stat))

    def layer(self, view, changes, opaque=()):
        """The layer tar of change rows a native walk found (aufs, overlay2)."""
        return self._run(lambda w: td.layer(view, changes, opaque=opaque, work=w))

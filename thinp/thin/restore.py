"""``thinp restore``: build a pool from thin_dump XML.

Accepts what :mod:`thinp.thin.dump` writes and what the real ``thin_dump``
writes (0.9.0 and the Rust tools): ``uuid``, ``flags`` and ``version`` on
``<superblock>`` are optional, and shared runs may be written once inside
``<def name="...">`` and used by ``<ref name="..."/>`` from any device.

The XML is streamed through expat into flat arrays (one row per mapping
element), checked completely, and only then is a pool created, so bad XML
never leaves a half-made pool behind.  Each device's tree is built in one
pass by :func:`thinp.thin._tool_kernels.build_tree`, then one commit seals it.

XML has no device sizes.  A restored device is as big as the data device, or
as its highest mapped block if that is larger, unless ``sizes`` gives it its
size (LVM keeps the sizes in its own metadata, not in dm-thin's).
``mapped_blocks`` is checked against the mappings that follow it.  Nor does
the XML hold the pool's table parameters (low water mark, ``error_if_no_space``):
:func:`restore` takes them as arguments, as the table line would give them.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid as _uuid
from xml.parsers import expat

import numpy as np

from .. import errors
from ..config import METADATA_BLOCK_SIZE, SECTOR_SIZE
from ..units import check_block_size
from . import _kernels as TK
from . import _tool_kernels as TTK
from .metadata import RECORDS_PER_TABLE, sm_pages
from .metadata_size import metadata_size as _default_metadata_size

MAX_TIME = (1 << 24) - 1  # a leaf's time is 24 bits, as in dm-thin
MAX_THIN_ID = (1 << 24) - 1


class RestoreError(errors.ThinpError, ValueError):
    """The XML is not a thin_dump the pool can be built from."""


_SB_REQUIRED = ("time", "transaction", "data_block_size", "nr_data_blocks")
_DEV_REQUIRED = ("dev_id", "mapped_blocks", "transaction", "creation_time", "snap_time")
_ALLOWED = {
    "superblock": set(_SB_REQUIRED) | {"uuid", "flags", "version"},
    "device": set(_DEV_REQUIRED),
    "range_mapping": {"origin_begin", "data_begin", "length", "time"},
    "single_mapping": {"origin_block", "data_block", "time"},
    "def": {"name"},
    "ref": {"name"},
}


class _Run:
    """Mapping elements of one device or def, as growable Python lists."""

    __slots__ = ("origin", "data", "length", "time", "line", "refs", "chunks")

    def __init__(self):
        self.origin, self.data, self.length, self.time, self.line = [], [], [], [], []
        self.refs = []  # (name, line)
        self.chunks = []  # (origin, data, length, time, line) arrays from the fast scanner


class _Reader:
    def __init__(self, source_name: str):
        self.name = source_name
        self.p = expat.ParserCreate()
        self.p.StartElementHandler = self._start
        self.p.EndElementHandler = self._end
        self.p.buffer_text = True
        self.sb = None
        self.sb_line = 0
        self.stack: list[str] = []
        self.devices: list = []  # (attrs, line, _Run)
        self.defs: dict = {}
        self.cur: _Run | None = None
        self.cur_dev = None
        self.seen_ids: dict = {}

    fast_line = None  # set by the fast scanner; None = ask expat

    def _line(self) -> int:
        return self.p.CurrentLineNumber if self.fast_line is None else self.fast_line

    def fail(self, msg: str, line: int | None = None):
        line = self._line() if line is None else line
        raise RestoreError(f"{self.name}:{line}: {msg}")

    def _num(self, tag, attrs, key):
        s = attrs.get(key)
        if s is None:
            self.fail(f"<{tag}> has no {key} attribute")
        if not (s.isascii() and s.isdigit()):
            self.fail(f"<{tag}> {key}={s!r} is not a non-negative integer")
        return int(s)

    def _check_attrs(self, tag, attrs):
        extra = set(attrs) - _ALLOWED[tag]
        if extra:
            self.fail(f"<{tag}> has unknown attribute {sorted(extra)[0]!r}")

    def _start(self, tag, attrs):
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        if tag in ("single_mapping", "range_mapping"):
            if self.cur is None or parent not in ("device", "def"):
                self.fail(f"<{tag}> outside a <device> or <def>")
            r = self.cur
            if tag == "single_mapping":
                if len(attrs) != 3:
                    self._check_attrs(tag, attrs)
                r.origin.append(self._num(tag, attrs, "origin_block"))
                r.data.append(self._num(tag, attrs, "data_block"))
                r.length.append(1)
            else:
                if len(attrs) != 4:
                    self._check_attrs(tag, attrs)
                r.origin.append(self._num(tag, attrs, "origin_begin"))
                r.data.append(self._num(tag, attrs, "data_begin"))
                n = self._num(tag, attrs, "length")
                if n == 0:
                    self.fail("<range_mapping> length=0")
                r.length.append(n)
            r.time.append(self._num(tag, attrs, "time"))
            r.line.append(self._line())
            return
        if tag not in _ALLOWED:
            self.fail(f"unknown element <{tag}>")
        self._check_attrs(tag, attrs)
        if tag == "superblock":
            if parent is not None or self.sb is not None:
                self.fail("<superblock> must be the one top-level element")
            vals = {k: self._num(tag, attrs, k) for k in _SB_REQUIRED}
            vals["flags"] = self._num(tag, attrs, "flags") if "flags" in attrs else 0
            if "version" in attrs:
                v = self._num(tag, attrs, "version")
                if v not in (1, 2):
                    self.fail(f"<superblock> version={v}: only dm-thin metadata versions 1 and 2 exist")
            vals["uuid"] = attrs.get("uuid", "")
            self.sb = vals
            self.sb_line = self._line()
            return
        if tag == "ref":
            if parent not in ("device", "def"):
                self.fail("<ref> outside a <device> or <def>")
        elif parent != "superblock":
            self.fail(f"<{tag}> must be directly inside <superblock>")
        if tag == "device":
            vals = {k: self._num(tag, attrs, k) for k in _DEV_REQUIRED}
            d = vals["dev_id"]
            if d > MAX_THIN_ID:
                self.fail(f"dev_id {d} is outside dm-thin's 24-bit range")
            if d in self.seen_ids:
                self.fail(f"duplicate dev_id {d} (first at line {self.seen_ids[d]})")
            self.seen_ids[d] = self._line()
            self.cur = _Run()
            self.devices.append((vals, self._line(), self.cur))
        elif tag == "def":
            name = attrs.get("name")
            if name is None:
                self.fail("<def> has no name attribute")
            if name in self.defs:
                self.fail(f"<def name={name!r}> defined twice")
            self.cur = _Run()
            self.defs[name] = self.cur
        else:  # ref
            name = attrs.get("name")
            if name is None:
                self.fail("<ref> has no name attribute")
            self.cur.refs.append((name, self._line()))

    def _end(self, tag):
        self.stack.pop()
        if tag in ("device", "def"):
            self.cur = None

    def parse_file(self, f):
        try:
            self.p.ParseFile(f)
        except expat.ExpatError as e:
            raise RestoreError(f"{self.name}:{e.lineno}: malformed XML: {expat.ErrorString(e.code)}") from None
        if self.sb is None:
            raise RestoreError(f"{self.name}: no <superblock> element")


class _Fallback(Exception):
    """The fast scanner met something outside thin_dump's plain layout;
    the expat reader takes over (it gives the precise error, if any)."""


_TAG_NAME = re.compile(rb"^([A-Za-z_][-\w.]*)")
_ATTR = re.compile(rb'\s+([A-Za-z_][-\w.]*)="([^"&<]*)"')
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 13, 32]] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True
_SINGLE_PARTS = (b"<single_mapping origin_block=", b" data_block=", b" time=", b"/>")
_RANGE_PARTS = (b"<range_mapping origin_begin=", b" data_begin=", b" length=", b" time=", b"/>")


def _numbers(a, q, lt, gt, parts, what):
    """Parse mapping tags written exactly as thin_dump writes them (``parts``
    are the fixed texts around the quoted numbers) with a numba kernel.
    Returns int64[len(lt), len(parts) - 1] or raises _Fallback."""
    nv = len(parts) - 1
    out = np.zeros((len(lt), nv), dtype=np.int64)
    if len(lt) == 0:
        return out
    joined = np.frombuffer(b"".join(parts), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in parts])]).astype(np.int64)
    if TTK.parse_mapping_tags(a, lt, gt, joined, offsets, out) >= 0:
        raise _Fallback(what)
    return out


def _fast_scan(name: str, raw: bytes) -> "_Reader":
    """Parse XML laid out as thin_dump lays it out, with numpy: one pass of
    vectorised checks over every byte, Python only for the few non-mapping
    elements.  Raises _Fallback on anything else (comments, prologue,
    entities, other quoting or spacing), never guessing."""
    a = np.frombuffer(raw, dtype=np.uint8)
    lt = np.flatnonzero(a == 60)
    gt = np.flatnonzero(a == 62)
    if len(lt) == 0 or len(lt) != len(gt) or (gt < lt).any() or (lt[1:] < gt[:-1]).any():
        raise _Fallback("tags")
    # text between tags (indentation and newlines) must be whitespace
    gap0 = gt[:-1] + 1
    gap_len = lt[1:] - gap0
    total = int(gap_len.sum())
    if total:
        at = np.repeat(gap0 - (np.cumsum(gap_len) - gap_len), gap_len) + np.arange(total)
        if not _WS[a[at]].all():
            raise _Fallback("text")
    if not _WS[a[:lt[0]]].all() or not _WS[a[gt[-1] + 1:]].all():
        raise _Fallback("text")
    nl = np.flatnonzero(a == 10)
    first = a[lt + 1]
    is_single = (first == ord("s")) & (a[np.minimum(lt + 2, len(a) - 1)] == ord("i"))
    is_range = (first == ord("r")) & (a[np.minimum(lt + 2, len(a) - 1)] == ord("a"))
    q = np.flatnonzero(a == 34)
    singles = _numbers(a, q, lt[is_single], gt[is_single], _SINGLE_PARTS, "single_mapping")
    ranges = _numbers(a, q, lt[is_range], gt[is_range], _RANGE_PARTS, "range_mapping")
    other = np.flatnonzero(~(is_single | is_range))
    reader = _Reader(name)
    # the container (a _Run or None) open after each non-mapping tag
    owners = []
    for i in other.tolist():
        body = raw[int(lt[i]) + 1:int(gt[i])]
        reader.fast_line = int(np.searchsorted(nl, lt[i])) + 1
        if body.startswith(b"/"):
            tag = body[1:].strip().decode("ascii", "replace")
            if not reader.stack or reader.stack[-1] != tag:
                raise _Fallback("nesting")
            reader._end(tag)
        else:
            empty = body.endswith(b"/")
            if empty:
                body = body[:-1]
            m = _TAG_NAME.match(body)
            if not m:
                raise _Fallback("tag name")
            attrs = {}
            pos = m.end()
            for am in _ATTR.finditer(body, pos):
                if am.start() != pos:
                    raise _Fallback("attributes")
                key = am.group(1).decode("ascii")
                if key in attrs:
                    raise _Fallback("duplicate attribute")
                attrs[key] = am.group(2).decode("utf-8")
                pos = am.end()
            if body[pos:].strip():
                raise _Fallback("attributes")
            reader._start(m.group(1).decode("ascii"), attrs)
            if empty:
                reader._end(m.group(1).decode("ascii"))
        owners.append(reader.cur if reader.stack and reader.stack[-1] in ("device", "def") else None)
    if reader.stack or reader.sb is None:
        raise _Fallback("unclosed")
    for kind, mask, nums in (("single", is_single, singles), ("range", is_range, ranges)):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        which = np.searchsorted(other, idx) - 1  # the last non-mapping tag before each
        lines = np.searchsorted(nl, lt[idx]) + 1
        if (which < 0).any() or any(owners[w] is None for w in np.unique(which).tolist()):
            raise _Fallback("mapping outside a device")
        order = np.argsort(which, kind="stable")
        bounds = np.flatnonzero(np.diff(which[order])) + 1
        for grp in np.split(order, bounds):
            run = owners[int(which[grp[0]])]
            g = nums[grp]
            if kind == "single":
                run.chunks.append((g[:, 0], g[:, 1], np.ones(len(grp), dtype=np.int64), g[:, 2], lines[grp]))
            else:
                if (g[:, 2] == 0).any():
                    raise _Fallback("length 0")
                run.chunks.append((g[:, 0], g[:, 1], g[:, 2], g[:, 3], lines[grp]))
    reader.fast_line = None
    return reader


def _expand(reader: _Reader, run: _Run, seen: tuple = ()):
    """A run's mappings, refs expanded: (origin, data, time, line) per block."""
    cols = [np.array(c, dtype=np.int64) for c in (run.origin, run.data, run.length, run.time, run.line)]
    if run.chunks:
        cols = [np.concatenate([cols[k]] + [ch[k] for ch in run.chunks]) for k in range(5)]
    o, d, ln, t, li = cols
    if len(ln) and int(ln.max()) >= 1 << 40:
        k = int(np.argmax(ln))
        reader.fail(f"range_mapping length={int(ln[k])} is past 2^40", int(li[k]))
    o = np.repeat(o, ln)
    d = np.repeat(d, ln)
    t = np.repeat(t, ln)
    li = np.repeat(li, ln)
    if len(ln):
        step = np.arange(len(o), dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
        o += step
        d += step
    parts = [(o, d, t, li)]
    for name, line in run.refs:
        if name not in reader.defs:
            reader.fail(f"<ref name={name!r}> names no <def>", line)
        if name in seen:
            reader.fail(f"<ref name={name!r}> refers to itself", line)
        parts.append(_expand(reader, reader.defs[name], seen + (name,)))
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))


def parse(xml_path):
    """Parse and check a thin_dump XML file; returns (superblock dict,
    [(device attrs, vblocks, pblocks, times)]) or raises RestoreError."""
    name = os.fspath(xml_path)
    with open(name, "rb") as f:
        raw = f.read()
    try:
        reader = _fast_scan(name, raw)
    except _Fallback:
        reader = _Reader(name)
        try:
            reader.p.Parse(raw, True)
        except expat.ExpatError as e:
            raise RestoreError(f"{name}:{e.lineno}: malformed XML: {expat.ErrorString(e.code)}") from None
        if reader.sb is None:
            raise RestoreError(f"{name}: no <superblock> element")
    del raw
    sb = reader.sb
    try:
        bs = check_block_size(sb["data_block_size"] * SECTOR_SIZE)
    except ValueError as e:
        reader.fail(f"data_block_size={sb['data_block_size']} sectors: {e}", reader.sb_line)
    sb["block_size"] = bs
    nd = sb["nr_data_blocks"]
    if not 1 <= nd < (1 << 40):
        reader.fail(f"nr_data_blocks={nd} is outside 1..2^40-1", reader.sb_line)
    if sb["time"] > MAX_TIME:
        reader.fail(f"time={sb['time']} does not fit dm-thin's 24-bit time", reader.sb_line)
    if sb["transaction"] >= 1 << 64:
        reader.fail(f"transaction={sb['transaction']} is not a 64-bit value", reader.sb_line)
    devices = []
    for attrs, dline, run in reader.devices:
        o, d, t, li = _expand(reader, run)
        dev = attrs["dev_id"]
        for key in ("creation_time", "snap_time"):
            if attrs[key] > sb["time"]:
                reader.fail(f"device {dev}: {key}={attrs[key]} is later than the superblock's time={sb['time']}", dline)
        if len(o):
            bad = np.flatnonzero(d >= nd)
            if len(bad):
                k = int(bad[0])
                reader.fail(f"device {dev}: data block {int(d[k])} is past nr_data_blocks={nd}", int(li[k]))
            bad = np.flatnonzero(t > sb["time"])
            if len(bad):
                k = int(bad[0])
                reader.fail(f"device {dev}: mapping time {int(t[k])} is later than the superblock's time={sb['time']}",
                            int(li[k]))
            bad = np.flatnonzero(o >= 1 << 40)
            if len(bad):
                k = int(bad[0])
                reader.fail(f"device {dev}: origin block {int(o[k])} is past 2^40", int(li[k]))
            if len(o) > 1 and not (np.diff(o) > 0).all():
                order = np.argsort(o, kind="stable")
                o, d, t, li = o[order], d[order], t[order], li[order]
                dup = np.flatnonzero(np.diff(o) == 0)
                if len(dup):
                    k = int(dup[0]) + 1
                    reader.fail(f"device {dev}: origin block {int(o[k])} is mapped twice "
                                f"(also at line {int(li[k - 1])})", int(max(li[k], li[k - 1])))
        if attrs["mapped_blocks"] != len(o):
            reader.fail(f"device {dev}: mapped_blocks={attrs['mapped_blocks']} but {len(o)} blocks are mapped", dline)
        devices.append((attrs, o, d, t))
    devices.sort(key=lambda x: x[0]["dev_id"])
    return sb, devices


def _device_blocks(nd: int, bs: int, attrs, o, sizes) -> int:
    """A restored device's size in blocks: from ``sizes`` if it names the
    device, else the data device's size or the highest mapped block."""
    highest = int(o[-1]) + 1 if len(o) else 0
    dev = attrs["dev_id"]
    if sizes and dev in sizes:
        nbytes = sizes[dev]
        nrb = -(-nbytes // bs)
        if nrb < highest:
            raise RestoreError(f"device {dev}: size {nbytes} bytes ({nrb} blocks) is smaller than its "
                               f"highest mapped block {highest - 1}")
        return nrb
    return max(nd, highest)


def _metadata_blocks_needed(nd: int, devices, nr_meta_default: int, bs: int = 0, sizes=None) -> int:
    nodes = 0
    for attrs, o, d, t in devices:
        nrb = _device_blocks(nd, bs, attrs, o, sizes)
        nodes += int(TTK.count_nodes(o, TK.levels_for(nrb)))
    tables = -(-len(devices) // RECORDS_PER_TABLE)
    nm = max(nr_meta_default, 64)
    for _ in range(3):
        fixed = 2 + 2 * sm_pages(nm) + 2 * sm_pages(nd)
        need = fixed + nodes + 2 * tables + 2 + 64
        nm = max(nr_meta_default, need + min(4096, need // 9 + 1) + need // 16)
    return nm


def restore(xml_path, pool_dir, *, payload: bool = False, metadata_size=None, sync: bool = True,
            sizes=None, low_water_mark: int = 0, error_if_no_space: bool = False):
    """Build a new pool in ``pool_dir`` from thin_dump XML at ``xml_path``.

    ``sizes`` maps dev_id to the device's size in bytes (or a size string
    such as ``"20G"``); devices it leaves out are as big as the data device
    (see the module).  ``low_water_mark`` (data blocks) and
    ``error_if_no_space`` are the pool's table parameters, as in
    :meth:`thinp.ThinPool.create`.

    Raises :class:`RestoreError` (with ``file:line``) for bad XML, before
    anything is created; on any later failure the new files are removed.
    Returns the number of mappings restored."""
    from ..units import parse_size
    from .pool import ThinPool

    sb, devices = parse(xml_path)
    bs, nd = sb["block_size"], sb["nr_data_blocks"]
    if sizes:
        sizes = {int(k): parse_size(v, what=f"size of device {k}") for k, v in sizes.items()}
        for k, v in sizes.items():
            if v <= 0 or v % SECTOR_SIZE:
                raise ValueError(f"size of device {k}: {v} bytes must be a positive multiple of 512")
        unknown = sorted(set(sizes) - {attrs["dev_id"] for attrs, *_ in devices})
        if unknown:
            raise ValueError(f"sizes names device {unknown[0]}, which is not in {os.fspath(xml_path)}")
    default = max(_default_metadata_size(nd * bs, bs, 1000), 2 << 20) // METADATA_BLOCK_SIZE
    nm = _metadata_blocks_needed(nd, devices, default, bs, sizes)
    if metadata_size is not None:
        nm = max(nm, parse_size(metadata_size, what="metadata_size") // METADATA_BLOCK_SIZE)
    pool_dir = os.fspath(pool_dir)
    made_dir = not os.path.isdir(pool_dir)
    pool = ThinPool.create(pool_dir, data_size=nd * bs, block_size=bs, metadata_size=nm * METADATA_BLOCK_SIZE,
                           payload=payload, sync=sync, low_water_mark=low_water_mark,
                           error_if_no_space=error_if_no_space)
    try:
        total = _fill(pool, sb, devices, sizes)
        pool.commit()
        pool.close()
    except BaseException:
        pool._failed = True  # close without committing
        pool.close()
        for fname in ("data", "metadata", "pool.json"):
            try:
                os.unlink(os.path.join(pool_dir, fname))
            except FileNotFoundError:
                pass
        if made_dir:
            shutil.rmtree(pool_dir, ignore_errors=True)
        raise
    return total


def _fill(pool, sb, devices, sizes=None) -> int:
    """Build every device's dm tree by inserting its mappings in order (as
    thin_restore does; devices share nothing), and the pool's index beside
    it (:meth:`ThinPool.restore_devices`)."""
    nd = sb["nr_data_blocks"]
    bs = sb["block_size"]
    uuid = None
    if sb["uuid"]:
        try:
            uuid = str(_uuid.UUID(sb["uuid"]))
        except ValueError:
            pass  # dm's uuid is free text; thinp keeps its own
    out = []
    for attrs, o, d, t in devices:
        if len(d) and int(d.max()) >= nd:
            raise RestoreError(f"restore: device {attrs['dev_id']} maps data block {int(d.max())} "
                               f"of a pool of {nd} blocks")
        nrb = _device_blocks(nd, bs, attrs, o, sizes)
        dev = attrs["dev_id"]
        dev_bytes = sizes[dev] if sizes and dev in sizes else nrb * bs
        out.append((dev, nrb, dev_bytes, attrs["transaction"], attrs["creation_time"], attrs["snap_time"],
                    *(np.asarray(a, dtype=np.int64) for a in (o, d, t))))
    return pool.restore_devices(uuid=uuid, transaction_id=sb["transaction"], flags=sb["flags"], time=sb["time"],
                                devices=out)


def parse_sizes(items, what: str = "sizes") -> dict:
    """``["3=20G", "4=1T"]`` as ``{3: "20G", 4: "1T"}`` for :func:`restore`'s ``sizes``."""
    sizes = {}
    for item in items:
        dev, sep, size = str(item).partition("=")
        if not sep or not dev.strip().isdigit() or not size.strip():
            raise ValueError(f"{what} {item!r}: want DEV=SIZE, e.g. 3=20G")
        sizes[int(dev)] = size.strip()
    return sizes

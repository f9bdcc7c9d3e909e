"""The declarative workload format: TOML (Python 3.11 ``tomllib``) plus a Python API.

A workload file::

    name = "my-app"
    description = "..."
    containers = 10
    seed = 1

    [image]
    profile = "debian-minbase"          # or: archive = "img.tar" (docker save / OCI layout
                                        #     dir or tar); or [[image.layers]] (synthetic)
    # [[image.layers]]
    # files = 1000                      # regular files in this layer
    # size = "4K"                       # or {dist = "lognormal", median = "4K", sigma = 1.0}
    # dirs = 10                         #     or {dist = "uniform", min = "1K", max = "64K"}
    # prefix = "/data/l0"

    [[steps]]
    op = "append"                       # read write append overwrite create delete rename
    path = "/var/log/app-{c}.log"       # chmod mkdir fsync commit diff export rm, plus the
    size = "512"                        # extensions strace, tree and files
    count = 100

    [[steps]]
    op = "write"
    sample = 5                          # 5 files drawn with the seed from those matching glob
    glob = "/usr/bin/*"
    offset = "random"                   # an int, "random" (block-aligned) or "end"
    size = "4K"

Paths: ``path`` (``{c}`` = container index, ``{i}`` = repetition), ``glob``
(every matching image file, fnmatch rules) or ``sample = N`` (N of them, with the
seed).  Globs match the image's regular files.  Errors name the file, key and value.
"""
from __future__ import annotations

import fnmatch
import gzip
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from ..units import parse_size

__all__ = ["Workload", "ImageSpec", "LayerSpec", "Step", "load", "loads", "parse_workload",
           "OPS", "PROFILES", "profile_rows", "WorkloadError"]

OPS = ("read", "write", "append", "overwrite", "create", "delete", "rename", "chmod", "mkdir",
       "fsync", "commit", "diff", "export", "rm", "strace", "tree", "files")
PROFILES = ("debian-minbase",)


class WorkloadError(ValueError):
    """A malformed workload: one line naming the file, key and value."""


@dataclass
class LayerSpec:
    """A synthetic layer: ``files`` regular files under ``prefix`` spread over ``dirs`` dirs."""
    files: int = 0
    size: object = 4096           # int bytes or a distribution dict (parsed)
    dirs: int = 1
    prefix: str = ""
    mode: int = 0o644


@dataclass
class ImageSpec:
    """``kind``: "profile" (``profile``), "archive" (``path``: docker save tar / OCI
    layout) or "synthetic" (``layers``); ``extra`` is one more synthetic layer on top
    (scenarios use it for their large files), as ``[(path, size)]``."""
    kind: str = "profile"
    profile: str | None = "debian-minbase"
    path: str | None = None
    layers: list[LayerSpec] = field(default_factory=list)
    extra: list[tuple[str, int]] = field(default_factory=list)

    @classmethod
    def of(cls, image) -> "ImageSpec":
        """A built-in profile name, or a docker-save tar / OCI layout path."""
        s = os.fspath(image)
        if s in PROFILES:
            return cls("profile", s)
        if not os.path.exists(s):
            raise WorkloadError(f"{s}: unsupported image: neither a built-in profile "
                                f"({', '.join(PROFILES)}) nor an existing archive or OCI layout")
        return cls("archive", None, s)


@dataclass
class Step:
    op: str
    path: str | None = None
    glob: str | None = None
    sample: int | None = None
    size: int = 0
    offset: object = 0            # int, "random" or "end"
    count: int = 1
    block: int = 4096
    mode: int = 0o644
    to: str | None = None
    trace: str | None = None      # strace: the trace file
    depth: int = 0                # tree
    fanout: int = 2               # tree
    every: int = 1                # run in every N-th container only (commit/export on a few)
    chain: bool = False           # commit: continue in a new container from the new image


@dataclass
class Workload:
    name: str
    image: ImageSpec = field(default_factory=ImageSpec)
    containers: int = 1
    steps: list[Step] = field(default_factory=list)
    seed: int = 0
    description: str = ""
    source: str = "<api>"

    def __post_init__(self):
        # the Python API takes a profile name or an archive path for ``image``
        if isinstance(self.image, (str, os.PathLike)):
            self.image = ImageSpec.of(self.image)


_TOP_KEYS = {"name", "description", "containers", "seed", "image", "steps"}
_IMAGE_KEYS = {"profile", "archive", "layers", "extra"}
_LAYER_KEYS = {"files", "size", "dirs", "prefix", "mode"}
_STEP_KEYS = {"op", "path", "glob", "sample", "size", "offset", "count", "block", "mode", "to",
              "trace", "depth", "fanout", "every", "chain"}


def _err(src, key, value, why) -> WorkloadError:
    return WorkloadError(f"{src}: {key} = {value!r}: {why}")


def _keys(src, where, d, allowed):
    if not isinstance(d, dict):
        raise _err(src, where, d, "must be a table")
    for k in d:
        if k not in allowed:
            raise _err(src, f"{where}.{k}" if where else k, d[k],
                       f"unknown key (known: {', '.join(sorted(allowed))})")


def _size(src, key, v):
    try:
        return parse_size(v if not isinstance(v, float) else str(v))
    except ValueError:
        raise _err(src, key, v, "bad size (want bytes or a string like '4K', '10MiB')") from None


def _int(src, key, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _err(src, key, v, f"want an integer >= {lo}")
    return v


def _mode(src, key, v):
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    try:
        return int(str(v).removeprefix("0o"), 8)
    except ValueError:
        raise _err(src, key, v, "bad mode (want octal like \"0644\")") from None


def _dist(src, key, v):
    if isinstance(v, dict):
        d = v.get("dist")
        if d == "lognormal":
            _keys(src, key, v, {"dist", "median", "sigma", "max"})
            return {"dist": d, "median": _size(src, key + ".median", v.get("median", 4096)),
                    "sigma": float(v.get("sigma", 1.0)),
                    "max": _size(src, key + ".max", v.get("max", "64M"))}
        if d == "uniform":
            _keys(src, key, v, {"dist", "min", "max"})
            return {"dist": d, "min": _size(src, key + ".min", v.get("min", 0)),
                    "max": _size(src, key + ".max", v.get("max", 4096))}
        raise _err(src, key + ".dist", d, "unknown distribution (lognormal, uniform)")
    return _size(src, key, v)


def parse_workload(d: dict, src: str = "<dict>") -> Workload:
    """A :class:`Workload` from the TOML's dict; raises :class:`WorkloadError`."""
    _keys(src, "", d, _TOP_KEYS)
    name = d.get("name") or os.path.splitext(os.path.basename(src))[0]
    img = ImageSpec()
    if "image" in d:
        i = d["image"]
        _keys(src, "image", i, _IMAGE_KEYS)
        if "archive" in i:
            p = i["archive"]
            if not os.path.isabs(p) and os.path.exists(src):
                p = os.path.join(os.path.dirname(os.path.abspath(src)), p)
            if not os.path.exists(p):
                raise _err(src, "image.archive", i["archive"], "no such file or directory")
            img = ImageSpec("archive", None, p)
            from .images import build_image
            build_image(img, src=src)     # unsupported images fail here, naming the file
        elif "layers" in i:
            layers = []
            for n, l in enumerate(i["layers"]):
                k = f"image.layers[{n}]"
                _keys(src, k, l, _LAYER_KEYS)
                layers.append(LayerSpec(_int(src, k + ".files", l.get("files", 0)),
                                        _dist(src, k + ".size", l.get("size", 4096)),
                                        _int(src, k + ".dirs", l.get("dirs", 1), 1),
                                        "/" + str(l.get("prefix", f"layer{n}")).strip("/"),
                                        _mode(src, k + ".mode", l.get("mode", "644"))))
            img = ImageSpec("synthetic", None, None, layers)
        elif "profile" in i:
            if i["profile"] not in PROFILES:
                raise _err(src, "image.profile", i["profile"], f"unknown profile (known: {', '.join(PROFILES)})")
            img = ImageSpec("profile", i["profile"])
        for n, e in enumerate(i.get("extra", [])):
            _keys(src, f"image.extra[{n}]", e, {"path", "size"})
            img.extra.append((e["path"], _size(src, f"image.extra[{n}].size", e.get("size", 0))))
    steps = []
    for n, s in enumerate(d.get("steps", [])):
        k = f"steps[{n}]"
        _keys(src, k, s, _STEP_KEYS)
        op = s.get("op")
        if op not in OPS:
            raise _err(src, k + ".op", op, f"unknown op (known: {', '.join(OPS)})")
        off = s.get("offset", 0)
        if not (off in ("random", "end") or (isinstance(off, int) and off >= 0)):
            off = _size(src, k + ".offset", off)
        st = Step(op, s.get("path"), s.get("glob"),
                  _int(src, k + ".sample", s["sample"], 1) if "sample" in s else None,
                  _size(src, k + ".size", s.get("size", 0)), off,
                  _int(src, k + ".count", s.get("count", 1)), _size(src, k + ".block", s.get("block", 4096)),
                  _mode(src, k + ".mode", s.get("mode", "644")), s.get("to"), s.get("trace"),
                  _int(src, k + ".depth", s.get("depth", 0)), _int(src, k + ".fanout", s.get("fanout", 2), 1),
                  _int(src, k + ".every", s.get("every", 1), 1), bool(s.get("chain", False)))
        if st.trace and not os.path.isabs(st.trace) and os.path.exists(src):
            here = os.path.join(os.path.dirname(os.path.abspath(src)), st.trace)
            if os.path.exists(here):
                st.trace = here
        if op == "strace":
            if not st.trace:
                raise _err(src, k + ".trace", None, "op 'strace' needs trace = \"file.strace[.gz]\"")
            if not _trace_exists(st.trace):
                raise _err(src, k + ".trace", s["trace"], "no such strace file (here or in the fixtures)")
        if op in ("read", "write", "append", "overwrite", "create", "delete", "rename", "chmod",
                  "mkdir", "fsync", "files") and not (st.path or st.glob or st.sample):
            raise _err(src, k + ".path", None, f"op {op!r} needs path, glob or sample")
        steps.append(st)
    wl = Workload(name, img, _int(src, "containers", d.get("containers", 1), 1), steps,
                  _int(src, "seed", d.get("seed", 0)), d.get("description", ""), src)
    check_globs(wl)
    return wl


def _trace_exists(path: str) -> bool:
    if os.path.exists(path):
        return True
    try:
        from ..fs.workloads import fixtures_dir

        return os.path.exists(os.path.join(fixtures_dir(), path))
    except Exception:   # no fixtures directory
        return False


def check_globs(wl: Workload, files: list[str] | None = None) -> None:
    """Every glob must match an image file (known for profile/synthetic images)."""
    if files is None:
        if wl.image.kind == "archive":
            return
        files = image_files(wl.image)
    for n, s in enumerate(wl.steps):
        if s.glob and not any(fnmatch.fnmatchcase(f, s.glob) for f in files):
            raise _err(wl.source, f"steps[{n}].glob", s.glob, "matches no file in the image")


def loads(text: str, src: str = "<string>") -> Workload:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"{src}: not valid TOML: {e}") from None
    return parse_workload(d, src)


def load(source) -> Workload:
    """A workload from a TOML path or a built-in scenario name."""
    from .scenarios import SCENARIOS, scenario

    s = os.fspath(source)
    if s in SCENARIOS:
        return scenario(s)
    if not os.path.exists(s):
        raise WorkloadError(f"{s}: no such workload file or built-in scenario "
                            f"(scenarios: {', '.join(SCENARIOS)})")
    with open(s, "rb") as f:
        data = f.read()
    try:
        return loads(data.decode(), s)
    except UnicodeDecodeError:
        raise WorkloadError(f"{s}: not a UTF-8 TOML file") from None


# ------------------------------------------------------------------ image file lists
_PROFILE_CACHE: dict[str, list[tuple]] = {}


def profile_rows(name: str) -> list[tuple]:
    """``(path, type, size, mode, uid, gid, target)`` rows of a built-in profile."""
    if name not in _PROFILE_CACHE:
        ref = resources.files("thinp") / "data" / "profiles" / f"{name}.tsv.gz"
        rows = []
        with gzip.open(ref.open("rb"), "rt") as f:
            for line in f:
                if line.startswith("#"):
                    continue
                p, t, size, mode, uid, gid, target = line.rstrip("\n").split("\t")
                rows.append((p, t, int(size), int(mode, 8), int(uid), int(gid), target))
        _PROFILE_CACHE[name] = rows
    return _PROFILE_CACHE[name]


def image_files(spec: ImageSpec) -> list[str]:
    """Absolute paths of the regular files a profile/synthetic image holds."""
    out = []
    if spec.kind == "profile":
        out = ["/" + r[0] for r in profile_rows(spec.profile) if r[1] in "fh"]
    elif spec.kind == "synthetic":
        for l in spec.layers:
            out += [f"{l.prefix}/d{i % l.dirs:04d}/f{i:06d}" for i in range(l.files)]
    out += [p for p, _ in spec.extra]
    return out

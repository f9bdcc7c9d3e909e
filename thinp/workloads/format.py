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
(every matching path) or ``sample = N`` (N of the matching paths, or of all
selectable paths without ``glob``, drawn with the seed).  Errors name the file,
key and value; a glob that matches nothing is an error.

Globs (:func:`glob_match`) are those of the shell and of
``glob.glob(recursive=True, include_hidden=True)``: they match whole paths one
component at a time, so ``*`` and ``?`` never cross ``/``; ``[...]`` and
``[!...]`` are character classes; a component that is exactly ``**`` matches
any number of directories, none included (``/usr/lib/**`` is everything below
``/usr/lib``, ``/usr/**/*.so`` every ``.so`` under ``/usr``); names starting
with ``.`` match like any other.  Matching is case-sensitive.  A glob not
starting with ``/`` is taken from ``/`` (the container's working directory).

What a glob or sample selects:

* regular files, for ``read``, ``write``, ``append``, ``overwrite``,
  ``fsync``, ``delete`` and ``rename`` (a directory is renamed or removed by
  ``path`` only: renaming a lower directory is EXDEV on aufs and overlay);
* regular files and directories for ``chmod``;
* ``create``, ``mkdir``, ``files`` and ``tree`` make their ``path``: they take
  no ``glob`` or ``sample``.

The selectable paths of a container are the image's, plus those earlier steps
of the workload made in that container -- ``create``/``append``/``mkdir``
paths (and their parent directories), ``files`` and ``tree`` contents, a
``rename`` target -- minus those it deleted or renamed away.  The files an
``strace`` replay makes are not selectable.
"""
from __future__ import annotations

import fnmatch
import gzip
import os
import posixpath
from dataclasses import dataclass, field
from importlib import resources

from ..units import parse_size

try:
    import tomllib
except ImportError:     # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

__all__ = ["Workload", "ImageSpec", "LayerSpec", "Step", "loads", "parse_workload",
           "archive_image", "OPS", "PROFILES", "profile_rows", "WorkloadError", "glob_match", "Selectable"]

OPS = ("read", "write", "append", "overwrite", "create", "delete", "rename", "chmod", "mkdir",
       "fsync", "commit", "diff", "export", "rm", "strace", "tree", "files",
       "stat", "readdir", "readlink", "walk", "exec")
#: ops that act on a ``path`` only (a directory, a symlink or a tree top)
PATH_ONLY = ("readdir", "readlink", "walk")
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
    #: processes per container, each running the steps at once (``{p}`` in
    #: paths is the process index); engine steps run once per container
    processes: int = 1
    #: each container is a ``docker run --rm``: the engine's fixed costs of
    #: create, start, stop and remove are priced, and the container is
    #: removed after its steps
    run_rm: bool = False

    def __post_init__(self):
        # the Python API takes a profile name or an archive path for ``image``
        if isinstance(self.image, (str, os.PathLike)):
            self.image = ImageSpec.of(self.image)


_TOP_KEYS = {"name", "description", "containers", "seed", "image", "steps", "processes", "run_rm"}
_IMAGE_KEYS = {"profile", "archive", "layers", "extra"}
_LAYER_KEYS = {"files", "size", "dirs", "prefix", "mode"}
_STEP_KEYS = {"op", "path", "glob", "sample", "size", "offset", "count", "block", "mode", "to",
              "trace", "depth", "fanout", "every", "chain"}


def setting_error(src, key, value, why) -> WorkloadError:
    """The error for one bad setting: ``<file>: <key> = <value>: <why>``."""
    return WorkloadError(f"{src}: {key} = {value!r}: {why}")


_err = setting_error


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
        # TOML reads 644 as decimal (0o1204) and 0o644 as 420: a bare integer
        # cannot say which the writer meant, so only strings are taken
        raise _err(src, key, v, "write a mode as an octal string, like \"0644\" (a TOML integer "
                   "644 is decimal, i.e. 0o1204)")
    try:
        m = int(str(v).removeprefix("0o"), 8)
    except ValueError:
        raise _err(src, key, v, "bad mode (want octal like \"0644\")") from None
    if not 0 <= m <= 0o7777:
        raise _err(src, key, v, "mode out of range (0000..7777)")
    return m


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
            archive_image(p)     # unsupported images fail here, naming the file
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
                raise _err(src, k + ".trace", s["trace"], "no such strace file or built-in trace")
        if op in ("read", "write", "append", "overwrite", "create", "delete", "rename", "chmod",
                  "mkdir", "fsync", "files", "stat", "exec") and not (st.path or st.glob or st.sample):
            raise _err(src, k + ".path", None, f"op {op!r} needs path, glob or sample")
        if op in PATH_ONLY:
            if st.glob or st.sample:
                key, val = (k + ".glob", st.glob) if st.glob else (k + ".sample", st.sample)
                raise _err(src, key, val, f"op {op!r} takes a path, not glob or sample")
            if not st.path:
                raise _err(src, k + ".path", None, f"op {op!r} needs path")
        if op in MAKES_PATH and (st.glob or st.sample):
            key, val = (k + ".glob", st.glob) if st.glob else (k + ".sample", st.sample)
            raise _err(src, key, val, f"op {op!r} makes its path: give path, not glob or sample")
        if st.glob is not None and not (isinstance(st.glob, str) and st.glob.strip("/")):
            raise _err(src, k + ".glob", st.glob, "want a path pattern like \"/usr/lib/**/*.so\"")
        steps.append(st)
    run_rm = d.get("run_rm", False)
    if not isinstance(run_rm, bool):
        raise _err(src, "run_rm", run_rm, "want true or false")
    wl = Workload(name, img, _int(src, "containers", d.get("containers", 1), 1), steps,
                  _int(src, "seed", d.get("seed", 0)), d.get("description", ""), src,
                  _int(src, "processes", d.get("processes", 1), 1), run_rm)
    check_globs(wl)
    return wl


def _trace_exists(path: str) -> bool:
    """A trace file, or a trace shipped in the package (by name or by the fixture path it came from)."""
    from ..traces.builtin import builtin_name

    return os.path.exists(path) or builtin_name(path) is not None


# ------------------------------------------------------------------ path selection
#: ops that make their path (no glob/sample); ops whose glob also selects directories
MAKES_PATH = ("create", "mkdir", "files", "tree")
SELECTS_DIRS = ("chmod",)


def _parts(p: str) -> list[str]:
    return [x for x in p.split("/") if x]


def glob_match(pattern: str, path: str, is_dir: bool = False) -> bool:
    """Whether absolute ``path`` matches ``pattern`` under the rules of the module
    docstring (``glob.glob(recursive=True, include_hidden=True)``'s): each path
    component is matched by :func:`fnmatch.fnmatchcase` against one pattern
    component, so ``*`` stays inside a component, and a ``**`` component takes
    zero or more components -- a final ``**`` takes zero only after a
    directory (``/usr/lib/**`` matches ``/usr/lib``; ``/etc/hosts/**`` does
    not match the file ``/etc/hosts``): pass ``is_dir`` for directories."""
    return _match_parts(tuple(_parts(pattern)), tuple(_parts(path)), is_dir)


def _match_parts(pp: tuple, fp: tuple, is_dir: bool = False) -> bool:
    memo: dict = {}
    last = len(pp) - 1

    def m(i, j):
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(pp):
            r = j == len(fp)
        elif pp[i] == "**" and i == last:
            r = j < len(fp) or is_dir
        elif pp[i] == "**":
            r = any(m(i + 1, k) for k in range(j, len(fp) + 1))
        else:
            r = j < len(fp) and fnmatch.fnmatchcase(fp[j], pp[i]) and m(i + 1, j + 1)
        memo[key] = r
        return r
    return m(0, 0)


def _matching(pattern: str, cands: list) -> list:
    """The ``(path, is_dir)`` of ``cands`` that :func:`glob_match` ``pattern``.
    The pattern's leading literal components (no ``*?[``) must equal the
    path's first ones, so they are compared as one string and only the rest
    goes through :func:`_match_parts`: ``/usr/lib/**`` over an image's 6000
    paths takes 5 ms, not 110."""
    pp = tuple(_parts(pattern))
    k = 0
    while k < len(pp) and not any(ch in pp[k] for ch in "*?["):
        k += 1
    prefix = "/" + "/".join(pp[:k])
    rest = pp[k:]
    out = []
    for c in cands:
        p = c[0]
        normal = p[:1] == "/" and "//" not in p and p[-1:] != "/"
        if k and not (p == prefix or p.startswith(prefix + "/")):
            if normal:
                continue               # its first k components differ
            if tuple(_parts(p))[:k] != pp[:k]:
                continue
        if normal and k and rest == ("**",):    # a final "**": below the prefix, or the directory itself
            if p != prefix or c[1]:
                out.append(c)
        elif _match_parts(rest, tuple(_parts(p))[k:], c[1]):
            out.append(c)
    return out


def _parents(p: str):
    d = posixpath.dirname(p)
    while d not in ("/", ""):
        yield d
        up = posixpath.dirname(d)
        if up == d:                # "//": dirname's fixed point
            break
        d = up


class Selectable:
    """The paths a container's steps can select: the image's regular files and
    directories, plus what earlier steps made, minus what they removed.

    ``files``/``dirs`` are the image's (absolute paths, shared by every
    container; "/" is never selectable); ``cache`` (shared too) holds the
    image's matches per (glob, kinds)."""

    def __init__(self, files, dirs=(), cache: dict | None = None):
        self.files, self.dirs = files, dirs
        self.cache = {} if cache is None else cache
        self.new_files: dict[str, None] = {}    # insertion-ordered sets
        self.new_dirs: dict[str, None] = {}
        self.gone: set[str] = set()

    def copy(self) -> "Selectable":
        c = Selectable(self.files, self.dirs, self.cache)
        c.new_files, c.new_dirs, c.gone = dict(self.new_files), dict(self.new_dirs), set(self.gone)
        return c

    def add_dir(self, p: str) -> None:
        for d in (p, *_parents(p)):
            if d not in ("/", ""):
                self.new_dirs[d] = None
                self.gone.discard(d)

    def add_file(self, p: str) -> None:
        self.new_files[p] = None
        self.gone.discard(p)
        parent = posixpath.dirname(p)
        if parent not in ("/", ""):
            self.add_dir(parent)

    def remove(self, p: str) -> None:
        self.new_files.pop(p, None)
        self.new_dirs.pop(p, None)
        self.gone.add(p)

    def rename(self, src: str, dst: str) -> None:
        if src in self.new_dirs or (src not in self.gone and src in self._dir_set()):
            pre = src.rstrip("/") + "/"
            for p in [p for p in self.select(pre + "**", dirs=True) if p != src]:
                is_dir = p in self.new_dirs or p in self._dir_set()
                self.remove(p)
                q = dst + p[len(src):]
                if is_dir:
                    self.add_dir(q)
                else:
                    self.add_file(q)
            self.remove(src)
            self.add_dir(dst)
        else:
            self.remove(src)
            self.add_file(dst)

    def _dir_set(self):
        s = self.cache.get(("dirset",))
        if s is None:
            s = self.cache[("dirset",)] = frozenset(self.dirs)
        return s

    def select(self, pattern: str | None, dirs: bool = False) -> list[str]:
        """Sorted selectable paths matching ``pattern`` (all with None):
        regular files, and directories too with ``dirs``."""
        key = (pattern, dirs)
        base = self.cache.get(key)
        if base is None:
            cands = [(p, False) for p in self.files] + ([(p, True) for p in self.dirs] if dirs else [])
            if pattern is not None:
                cands = _matching(pattern, cands)
            base = self.cache[key] = sorted(set(p for p, _d in cands))
        new = [(p, False) for p in self.new_files] + ([(p, True) for p in self.new_dirs] if dirs else [])
        if pattern is not None and new:
            new = _matching(pattern, new)
        new = [p for p, _d in new]
        if not new and not self.gone:
            return base
        out = set(base)
        out.update(new)
        out -= self.gone
        return sorted(out)

    def record(self, st: Step, paths: list[str], ci: int = 0, p: int = 0) -> None:
        """What step ``st`` changed, given the concrete paths it acted on
        (``paths[i]`` per repetition; for ``rename`` the sources, renamed to
        ``st.to`` or ``<path>.renamed``)."""
        op = st.op
        if op in ("create", "append"):
            for q in paths:
                self.add_file(q)
        elif op == "mkdir":
            for q in paths:
                self.add_dir(q)
        elif op == "delete":
            for q in paths:
                self.remove(q)
        elif op == "rename":
            for q in paths:     # one repetition: i = 0, as the runner renames
                self.rename(q, (st.to or q + ".renamed").format(c=ci, i=0, p=p))
        elif op == "files":
            base = st.path.format(c=ci, i=0, p=p)
            self.add_dir(base)
            for i in range(st.count):
                self.add_file(f"{base}/d{i // 1000:03d}/f{i:05d}")
        elif op == "tree":
            level = [(st.path or "/tree").format(c=ci, i=0, p=p)]
            self.add_dir(level[0])
            for _d in range(st.depth):
                nxt = []
                for top in level:
                    nxt += [f"{top}/{k}" for k in range(st.fanout)]
                    if st.size:
                        self.add_file(top + "/f")
                for q in nxt:
                    self.add_dir(q)
                level = nxt


def static_paths(st: Step, sel: Selectable, ci: int = 0) -> list[str] | None:
    """The paths a step acts on when they are known without running it (a
    ``path``, or every match of a ``glob`` without ``sample``); None when
    drawn at random."""
    if st.path:
        reps = st.count if st.op in ("create", "append") else 1
        return [st.path.format(c=ci, i=i, p=0) for i in range(reps)]
    if st.glob and not st.sample:
        return sel.select(st.glob, dirs=st.op in SELECTS_DIRS)
    return None


def check_globs(wl: Workload, files: list[str] | None = None, dirs=None) -> None:
    """Every glob must match: the image's files (known here for profile and
    synthetic images, listed by the run for archives) and what earlier steps
    of the first container made.  One line naming the file, key and value."""
    if files is None:
        if wl.image.kind == "archive":
            return
        files, dirs = image_tree(wl.image)
    sel = Selectable(files, dirs or ())
    for n, s in enumerate(wl.steps):
        if s.glob and not sel.select(s.glob, dirs=s.op in SELECTS_DIRS):
            what = "file or directory" if s.op in SELECTS_DIRS else "file"
            raise _err(wl.source, f"steps[{n}].glob", s.glob,
                       f"matches no {what} in the image or made by earlier steps")
        if s.op in ("commit", "diff", "export", "rm", "strace", "fsync", "read", "write",
                    "overwrite", "chmod", "stat", "readdir", "readlink", "walk", "exec"):
            continue
        paths = static_paths(s, sel)
        if paths is not None:
            sel.record(s, paths)


def loads(text: str, src: str = "<string>") -> Workload:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"{src}: not valid TOML: {e}") from None
    return parse_workload(d, src)


def archive_image(path: str):
    """The first image of a docker-save tar / OCI layout at ``path``, or a
    :class:`WorkloadError` naming the file when thinp cannot read it."""
    from ..image import load as archive_load

    try:
        images = archive_load(path)
    except (ValueError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WorkloadError(f"{path}: unsupported image: {why}") from None
    if not images:
        raise WorkloadError(f"{path}: unsupported image: the archive holds no image")
    return images[0]


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


def image_tree(spec: ImageSpec) -> tuple[list[str], list[str]]:
    """``(files, dirs)``: :func:`image_files` and the directories of a
    profile/synthetic image (absolute paths, "/" left out)."""
    files = image_files(spec)
    dirs: dict[str, None] = {}
    if spec.kind == "profile":
        dirs.update(("/" + r[0].strip("/"), None) for r in profile_rows(spec.profile)
                    if r[1] == "d" and r[0].strip("/"))
    for f in files:
        for d in _parents(f):
            if d in dirs:
                break
            dirs[d] = None
    return files, list(dirs)

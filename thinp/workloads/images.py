"""Build the :class:`~thinp.image.Image` of an :class:`ImageSpec` (deterministic content)."""
from __future__ import annotations

import json
import os

import numpy as np

from ..image import Entry, Image, Layer
from ..image.image import canonical_json
from .format import ImageSpec, archive_image, profile_rows

_BUF = np.random.default_rng(0x7417).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
_CACHE: dict = {}
_CACHE_DIR: list = []


_PREFIX = "thinp-wl-layers-"
_LOCK = ".owner"


def cache_dir() -> str:
    """A per-process directory for large built layers (removed at exit), so that
    running one workload on several drivers builds its image once.

    The process holds an flock on a file inside it for its lifetime.  A
    process killed before its exit handler ran (SIGKILL, a pool worker
    terminated on Ctrl-C) leaves its directory behind with the lock released,
    so each new directory first removes the ones whose lock it can take."""
    # keyed by pid: a worker forked from a process that already made one (compare's
    # process pool) gets its own, or two workers would write the same layer tars
    if not _CACHE_DIR or _CACHE_DIR[0][0] != os.getpid():
        import fcntl
        import shutil
        import tempfile
        from multiprocessing import util

        remove_orphans(tempfile.gettempdir())
        d = tempfile.mkdtemp(prefix=_PREFIX)
        # locked before it is named, so a sweep never finds it unlocked
        fd = os.open(os.path.join(d, _LOCK + ".new"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(os.path.join(d, _LOCK + ".new"), os.path.join(d, _LOCK))
        # removed at exit, by the main process's atexit or a pool worker's own exit
        util.Finalize(None, shutil.rmtree, args=(d, True), exitpriority=0)
        _CACHE_DIR[:] = [(os.getpid(), d, fd)]
    return _CACHE_DIR[0][1]


def remove_orphans(top: str) -> list[str]:
    """Remove the layer directories under ``top`` whose owner is gone (its
    lock is free); returns them.  A directory without the lock file is being
    set up, or predates it, and is left alone."""
    import fcntl
    import shutil

    gone = []
    try:
        names = [n for n in os.listdir(top) if n.startswith(_PREFIX)]
    except OSError:
        return gone
    for n in names:
        d = os.path.join(top, n)
        try:
            fd = os.open(os.path.join(d, _LOCK), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)        # its owner is alive
            continue
        try:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
        finally:
            os.close(fd)
    return gone


def content(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes: a stamp of the seed, then a window of a fixed buffer."""
    stamp = f"thinp:{seed}:{size}\n".encode()
    if size <= len(stamp):
        return stamp[:size]
    out = bytearray(stamp)
    off = (seed * 2654435761) % (len(_BUF) - 4096)
    while len(out) < size:
        chunk = _BUF[off: off + size - len(out)]
        out += chunk
        off = 0
    return bytes(out)


class _Stream:
    """A reader of ``size`` deterministic bytes (for large files, never held whole)."""

    def __init__(self, seed, size):
        self.left = size
        self.pos = (seed * 2654435761) % len(_BUF)

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            chunk = _BUF[self.pos: self.pos + n - len(out)]
            out += chunk
            self.pos = (self.pos + len(chunk)) % len(_BUF)
        self.left -= n
        return bytes(out)


def _dirs_for(paths, seen):
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                yield (Entry(d, "dir", 0o755), None)


def _profile_items(name, scale):
    keep_every = max(1, round(1 / scale)) if scale < 1 else 1
    kept = set()
    for i, (p, t, size, mode, uid, gid, target) in enumerate(profile_rows(name)):
        if t == "d":
            yield Entry(p, "dir", mode, uid, gid), None
        elif t == "f":
            if i % keep_every:
                continue
            kept.add(p)
            yield Entry(p, "file", mode, uid, gid, size=size), content(i, size)
        elif t == "h":
            if target in kept:
                yield Entry(p, "hardlink", mode, uid, gid, linkname=target), None
        elif t == "l":
            yield Entry(p, "symlink", 0o777, uid, gid, linkname=target), None
        elif t == "c":
            maj, _, mnr = (target or "0:0").partition(":")
            yield Entry(p, "char", mode, uid, gid, devmajor=int(maj), devminor=int(mnr or 0)), None
        elif t == "p":
            yield Entry(p, "fifo", mode, uid, gid), None


def _sizes(dist, n, rng):
    if isinstance(dist, int):
        return np.full(n, dist, dtype=np.int64)
    if dist["dist"] == "uniform":
        return rng.integers(dist["min"], dist["max"] + 1, n)
    s = rng.lognormal(np.log(max(dist["median"], 1)), dist["sigma"], n)
    return np.minimum(s.astype(np.int64), dist["max"])


def _synthetic_items(layer, n, seed, scale):
    rng = np.random.default_rng(seed * 1000 + n)
    files = max(1, int(layer.files * scale)) if layer.files else 0
    sizes = _sizes(layer.size, files, rng)
    paths = [f"{layer.prefix.strip('/')}/d{i % layer.dirs:04d}/f{i:06d}" for i in range(files)]
    seen = set()
    for i, p in enumerate(paths):
        yield from _dirs_for([p], seen)
        yield Entry(p, "file", layer.mode, size=int(sizes[i])), content(seed + i, int(sizes[i]))


def _extra_items(extra, seed):
    seen = set()
    for i, (p, size) in enumerate(extra):
        p = p.strip("/")
        yield from _dirs_for([p], seen)
        yield Entry(p, "file", 0o644, size=size), (_Stream(seed + i, size) if size > (8 << 20)
                                                    else content(seed + i, size))


def _layer(items, workdir, name):
    if workdir is None:
        return Layer.from_entries(items)
    return Layer.from_entries(items, path=os.path.join(workdir, name + ".tar"))


def build_image(spec: ImageSpec, *, seed: int = 0, scale: float = 1.0, workdir=None,
                src: str = "<api>") -> Image:
    """The image of ``spec``.  ``workdir=None``: layers in memory; ``"cache"``: layer
    tars in :func:`cache_dir`; both cached per (spec, seed, scale).  A directory:
    layer tars there, not cached."""
    if spec.kind == "archive":
        img = archive_image(spec.path)
        if spec.extra:     # one more layer on top, as a Dockerfile's next step would add
            extra = _layer(_extra_items(spec.extra, seed), None, "extra")
            cfg = json.loads(img.config_bytes)
            cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"] = \
                [l.diff_id for l in img.layers] + [extra.diff_id]
            cfg["history"] = list(cfg.get("history") or []) + [
                {"created": "2024-01-01T00:00:00Z", "created_by": "thinp workload: image.extra"}]
            img = Image(canonical_json(cfg), list(img.layers) + [extra])
        return img
    key = (repr(spec), seed, scale)
    cached = workdir is None or workdir == "cache"
    if cached and key in _CACHE:
        return _CACHE[key]
    if workdir == "cache":
        workdir = os.path.join(cache_dir(), f"img{len(_CACHE)}")
        os.makedirs(workdir, exist_ok=True)
    layers = []
    if spec.kind == "profile":
        layers.append(_layer(_profile_items(spec.profile, scale), workdir, "profile"))
    elif spec.kind == "synthetic":
        for n, l in enumerate(spec.layers):
            layers.append(_layer(_synthetic_items(l, n, seed, scale), workdir, f"layer{n}"))
    if spec.extra:
        layers.append(_layer(_extra_items(spec.extra, seed), workdir, "extra"))
    diff_ids = [l.diff_id for l in layers]
    cfg = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
           "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "thinp workload"}
                       for _ in layers]}
    img = Image(canonical_json(cfg), layers)
    if cached:
        _CACHE[key] = img
    return img

"""Drop numba's on-disk caches of thinp's kernels when a kernel source changed.

numba keys each cached function on its own file's modification time and
size only.  A cached kernel that calls or inlines a kernel of another
module keeps the compiled code of the callee it was built with: after a
``git pull`` that edits ``pdata/_btree_kernels.py`` alone, the cached
``thin/_mirror.apply_log`` would go on running the old btree insert.

So before the first kernel compiles or loads, :func:`drop_stale` compares
the sources of every module that defines kernels (any ``.py`` under the
package mentioning ``njit``) with a stamp kept beside the caches, and when
any of them changed removes every ``.nbi``/``.nbc`` file under the package:
the next kernels compile afresh (about a minute, announced by
``thinp.jitnotice``).  A cheap check of every file's size and modification
time comes first, so the common case reads no source.  Nothing happens
where the package directory is not writable (numba then caches elsewhere,
or not at all).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
STAMP = PACKAGE / "__pycache__" / "thinp-kernel-sources.json"


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _stat_key(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _kernel_key(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        text = p.read_bytes()
        if b"njit" in text:
            h.update(str(p.relative_to(root)).encode() + b"\0" + hashlib.sha256(text).digest())
    return h.hexdigest()


def drop_stale(root: Path = PACKAGE, stamp: Path | None = None) -> bool:
    """Remove the package's numba cache files when a kernel module's source
    differs from the one the caches were made from; True when it removed
    them.  The stamp is written afresh in either case."""
    stamp = stamp or root / "__pycache__" / STAMP.name
    try:
        files = _sources(root)
        skey = _stat_key(root, files)
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("stat") == skey:
            return False
        kkey = _kernel_key(root, files)
        dropped = False
        if old.get("kernels") != kkey:
            for p in root.rglob("__pycache__/*.nb[ic]"):
                try:
                    p.unlink()
                    dropped = True
                except FileNotFoundError:
                    pass            # another process dropped it first
        stamp.parent.mkdir(exist_ok=True)
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stat": skey, "kernels": kkey}))
        os.replace(tmp, stamp)
        return dropped
    except PermissionError:
        return False
    except OSError as e:
        if e.errno in (30, 13):     # EROFS, EACCES: an installed, read-only package
            return False
        raise

"""Capture a real trace: a command run in a kernel overlay mount of an image.

``capture(image, command, out)`` does what a user would do by hand to get a
trace :mod:`thinp.traces.strace` can replay, and keeps what the kernel
made of it:

1. each layer of the image (``docker save`` tar or OCI layout) is unpacked
   into its own directory on a fresh tmpfs (GNU ``tar -xp``, owners, modes
   and xattrs kept), its whiteouts turned into overlayfs's own (char 0/0,
   ``trusted.overlay.opaque=y``), as Docker's overlay2 keeps layers;
2. overlayfs is mounted over them as Docker's overlay2 mounts a container
   (``index=off``, ``redirect_dir=off``, ``metacopy=off``); ``/dev`` (a
   tmpfs with null, zero, random, urandom) and ``/proc`` are mounted on top
   when the image has those directories, so they never reach the upper;
3. ``strace -f -tt -y -s 64`` (:func:`strace_flags`) runs
   ``chroot MERGED /bin/sh -c COMMAND`` with umask 022, as root: 64 bytes
   of each string keep every xattr name and a minimal ACL's 28-byte value
   whole (``string_bytes=0`` records the terser ``-s 0`` form, where the
   reader infers ACL modes instead);
4. the trace is rewritten into container paths: lines before the
   ``chroot`` are dropped, ``-y`` annotations under the mount lose its
   prefix and any other host path becomes ``/outside/...`` (the reader
   skips those);
5. the kernel's upper directory is recorded (``upper_rows``, that is
   :func:`thinp.validate.union.real_upper_rows`: path, type, size, mode,
   owner, nlink, link target or device, xattr names) in the CSV form of the
   shared fixtures;
6. the trace is checked against that upper (:func:`uncovered`): every upper
   path must be named by an operation the reader took from the trace, or be
   a directory above one; otherwise the flags missed something and capture
   fails, saying which paths;
7. ``out/`` receives ``trace.strace``, ``upper.csv.gz``, ``image.tar`` (a
   copy of the image) and ``workload.toml`` (``[image] archive`` and one
   ``strace`` step), which ``thinp compare`` and the workload format take.

Where it cannot run, :func:`refusal` says why in one line (not root, no
strace, no chroot), and a refused tmpfs or overlay mount raises
``NotSupportedError`` with the mount's own message.  Every mount is made on a new temporary
directory and unmounted by its own path, newest first, in ``finally``.

:func:`replay_upper` replays a captured trace with a simulated union driver
over the same image, and ``compare_upper`` (:mod:`thinp.validate.union`'s)
compares the two uppers;
:func:`build_tools_image` makes a small image from the host's own
``/bin/sh``, coreutils and their libraries (nothing third-party is shipped:
the files are read from the machine at run time).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import shutil
import stat as _stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotSupportedError, ThinpError
from .union import compare_upper, read_upper_csv, real_upper_rows as upper_rows

__all__ = ["STRACE_FLAGS", "STRACE_SYSCALLS", "strace_flags", "CaptureResult", "capture", "refusal", "rewrite_trace",
           "upper_rows", "read_upper_csv", "uncovered", "replay_upper", "compare_upper",
           "build_tools_image", "TOOLS", "SCENARIO_FILES", "SCENARIO_COMMAND", "scenario_row"]

#: the syscalls the reader needs (``%file`` and ``%desc`` cover paths and
#: descriptors; the rest are named so no strace version leaves them out)
STRACE_SYSCALLS = ("%file,%desc,write,writev,pwrite64,pwritev,pwritev2,truncate,ftruncate,fsync,fdatasync,"
                   "copy_file_range,sendfile,ioctl,setxattr,lsetxattr,fsetxattr,renameat2,linkat,symlinkat,"
                   "fchmodat,chroot,chdir,fchdir,dup,dup2,dup3,fcntl,lseek,read,readv,close")


def strace_flags(string_bytes: int = 64) -> tuple:
    """Follow forks, microsecond times, fd paths, ``string_bytes`` of each string."""
    return ("-f", "-tt", "-y", "-s", str(int(string_bytes)), "-e", "trace=" + STRACE_SYSCALLS)


#: the flags :func:`capture` uses by default
STRACE_FLAGS = strace_flags()
#: what Docker's overlay2 mounts with, written out (kernel defaults vary)
OVERLAY_OPTIONS = "index=off,redirect_dir=off,metacopy=off"
#: the commands :func:`build_tools_image` copies from the host
TOOLS = ("sh", "cp", "mv", "chmod", "rm", "dd", "mkdir", "ln", "cat", "touch")
_DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9))
_CSV_FIELDS = ("path", "type", "size", "mode", "uid", "gid", "nlink", "inode_group", "target", "xattrs")


@dataclass
class CaptureResult:
    """Where :func:`capture` wrote its outputs, and what it saw."""

    out: Path
    trace: Path
    upper: Path
    workload: Path
    image: Path
    returncode: int
    nr_ops: int
    nr_upper_paths: int
    modes_inferred: int
    stdout: str = ""     # what the command printed (``thinp docker run`` shows it)
    stderr: str = ""


# ---------------------------------------------------------------- can it run here
def refusal() -> str | None:
    """One line saying why capture cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "thinp capture needs root: it mounts overlayfs and chroots into it"
    for tool in ("strace", "chroot", "mount", "umount", "tar"):
        if shutil.which(tool) is None:
            return f"thinp capture needs {tool!r} on PATH"
    # overlayfs itself is tried by the mount (the kernel loads the module on
    # demand); a refusal then names the reason in NotSupportedError
    return None


def _run(args: list[str], what: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise NotSupportedError(f"{what} refused: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")


@contextlib.contextmanager
def _mounts():
    """A fresh tmpfs on a new temporary directory; yields ``(base, mount)``
    where ``mount(args, target, what)`` mounts and remembers the target.
    Everything is unmounted by its own path, newest first, on the way out."""
    base = tempfile.mkdtemp(prefix="thinp-capture-")
    mounted: list[str] = []

    def mount(args, target, what):
        _run(["mount", *args, target], what)
        mounted.append(target)

    try:
        mount(["-t", "tmpfs", "-o", "size=2g,mode=0755", "tmpfs"], base, "tmpfs mount")
        yield base, mounted, mount
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", m], capture_output=True)
        try:
            os.rmdir(base)
        except OSError:
            pass


# ---------------------------------------------------------------- the trace
_ANN = re.compile(r"<(/[^<>]*)>")


def rewrite_trace(lines, merged: str):
    """Container paths for a trace of ``chroot MERGED ...`` (see the module
    docstring, step 4).  Yields the rewritten lines."""
    merged = merged.rstrip("/")
    started = False

    def fix(m):
        p = m.group(1)
        if p == merged:
            return "</>"
        if p.startswith(merged + "/"):
            return "<" + p[len(merged):] + ">"
        return "</outside" + p + ">"

    for line in lines:
        if not started:
            if re.search(r"\bchroot\(.*\)\s+=\s+0\b", line):
                started = True
            continue
        yield _ANN.sub(fix, line)


# ---------------------------------------------------------------- the upper
def _write_upper_csv(rows: dict, path: Path) -> None:
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(_CSV_FIELDS)
        for p in sorted(rows):
            r = rows[p]
            w.writerow([p, r["type"], r["size"], f"0o{r['mode']:o}", r["uid"], r["gid"], r["nlink"], "",
                        r["target"], ";".join(r["xattrs"])])


def uncovered(ops, rows: dict) -> list[str]:
    """Upper paths no operation of ``ops`` names, nor lies under (see step 6);
    what sits under a renamed directory's new name came with it."""
    named: set[str] = set()
    moved: list[str] = []
    for op in ops:
        for p in (op.path, op.path2 if op.kind in ("rename", "link", "exchange") else ""):
            if not p:
                continue
            p = p.strip("/")
            if op.kind in ("rename", "exchange"):
                moved.append(p + "/")
            while p:
                named.add(p)
                p = p.rpartition("/")[0]
    return sorted(p for p in rows if p not in named and not any(p.startswith(m) for m in moved))


# ---------------------------------------------------------------- capture
def _native_whiteouts(root: str) -> None:
    """Turn a layer's OCI whiteouts into overlayfs's own, as Docker's overlay2
    ``ApplyDiff`` does: ``.wh.NAME`` becomes a char 0/0 (mode 000) named NAME,
    ``.wh..wh..opq`` becomes ``trusted.overlay.opaque=y`` on its directory,
    other ``.wh..wh.`` (aufs bookkeeping) goes."""
    for d, dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(".wh."):
                continue
            os.unlink(os.path.join(d, name))
            if name == ".wh..wh..opq":
                os.setxattr(d, "trusted.overlay.opaque", b"y", follow_symlinks=False)
            elif not name.startswith(".wh..wh."):
                os.mknod(os.path.join(d, name[4:]), _stat.S_IFCHR, os.makedev(0, 0))


def _unpack_layers(img, into: str) -> list[str]:
    """Each layer into its own directory (GNU tar, owners, modes and xattrs
    kept; then native whiteouts), bottom first, as overlay2 keeps them:
    lower inodes keep their own link counts and whiteouts."""
    os.mkdir(into)
    dirs = []
    for i, layer in enumerate(img.layers):
        d = os.path.join(into, str(i))
        os.mkdir(d, 0o755)
        blob = os.path.join(into, "layer.tar")
        with layer.open_uncompressed() as f, open(blob, "wb") as out:
            shutil.copyfileobj(f, out)
        _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", blob, "-C", d],
             f"tar -x of layer {i}")
        os.unlink(blob)
        _native_whiteouts(d)
        dirs.append(d)
    return dirs


def _workload_toml(command: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", command).strip("-")[:40] or "captured"
    quoted = command.replace("\\", "\\\\").replace('"', '\\"')
    return (f'name = "capture-{name}"\n'
            f'description = "captured with thinp capture: {quoted}"\n'
            f"containers = 1\n\n[image]\narchive = \"image.tar\"\n\n"
            f"[[steps]]\nop = \"strace\"\ntrace = \"trace.strace\"\n")


def _pick_image(image_path: str, platform: str | None):
    from ..image import load

    images = load(image_path, **({"platform": platform} if platform else {}))
    if len(images) != 1:
        raise ThinpError(f"{image_path}: holds {len(images)} images; capture takes an archive of one")
    return images[0]


def capture(image, command: str, out, *, platform: str | None = None, shell: str = "/bin/sh",
            string_bytes: int = 64, replay_driver: str | None = None) -> CaptureResult:
    """Run ``command`` (a shell command line) in a kernel overlay mount of
    ``image``'s rootfs under strace and write the outputs to the directory
    ``out`` (see the module docstring); ``replay_driver``, if given, is checked
    up front (the caller replays with it afterwards).  Raises ``NotSupportedError`` with
    the reason where the machine refuses, ``ThinpError`` when the trace does
    not cover the upper directory."""
    from ..traces import strace as _strace

    if string_bytes < 0:
        raise ValueError(f"string_bytes {string_bytes} is negative")
    if replay_driver is not None:
        from ..drivers import known_drivers

        if replay_driver not in known_drivers():
            raise ValueError(f"driver {replay_driver!r} is not one of {', '.join(sorted(known_drivers()))}")
    flags = strace_flags(string_bytes)
    image = os.fspath(image)
    if not os.path.exists(image):
        raise ThinpError(f"{image}: no such image archive or OCI layout")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ThinpError(f"{out}: exists and is not an empty directory")
    why = refusal()
    if why:
        raise NotSupportedError(why)
    img = _pick_image(image, platform)
    with _mounts() as (base, _mounted, mount):
        upper, work, merged = (os.path.join(base, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            os.mkdir(d)
        lowers = _unpack_layers(img, os.path.join(base, "layers"))
        mount(["-t", "overlay", "overlay", "-o",
               f"{OVERLAY_OPTIONS},lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"],
              merged, "overlay mount")
        if not os.path.lexists(merged + shell):
            raise ThinpError(f"{image}: has no {shell} to run the command with")
        if os.path.isdir(merged + "/dev"):
            mount(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], merged + "/dev", "/dev tmpfs")
            for name, major, minor in _DEV_NODES:
                os.mknod(f"{merged}/dev/{name}", _stat.S_IFCHR | 0o666, os.makedev(major, minor))
        if os.path.isdir(merged + "/proc"):
            mount(["-t", "proc", "proc"], merged + "/proc", "/proc mount")
        raw = os.path.join(base, "raw.strace")
        old = os.umask(0o022)
        try:
            r = subprocess.run(["strace", *flags, "-o", raw, "chroot", merged, shell, "-c", command],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                    "HOME": "/root", "LANG": "C"})
        finally:
            os.umask(old)
        for m in (merged + "/proc", merged + "/dev", merged):
            if m in _mounted:
                subprocess.run(["umount", m], capture_output=True)
                _mounted.remove(m)
        rows = upper_rows(upper)
        with open(raw, encoding="utf-8", errors="surrogateescape") as f:
            text = list(rewrite_trace(f, merged))
    if r.returncode == 127 or not text:
        raise ThinpError(f"the command did not run in the image: {(r.stderr or '').strip()[:200]}")
    trace = _strace.parse(text)
    missing = uncovered(trace.ops, rows)
    if missing:
        raise ThinpError(f"the trace does not cover {len(missing)} upper path(s), e.g. {missing[:5]}: "
                         f"run the command with the flags {' '.join(flags)}")
    # written beside ``out`` and renamed into place: a failure leaves nothing
    out.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    names = (("trace", "trace.strace"), ("upper", "upper.csv.gz"), ("workload", "workload.toml"),
             ("image", "image.tar"))
    try:
        tmp = {k: part / v for k, v in names}
        tmp["trace"].write_text("".join(text), encoding="utf-8", errors="surrogateescape")
        _write_upper_csv(rows, tmp["upper"])
        tmp["workload"].write_text(_workload_toml(command))
        if os.path.isdir(image):
            from ..image import save
            save([img], tmp["image"])
        else:
            shutil.copyfile(image, tmp["image"])
        if out.exists():
            out.rmdir()
        os.replace(part, out)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    os.chmod(out, 0o755)
    paths = {k: out / v for k, v in names}
    return CaptureResult(out, paths["trace"], paths["upper"], paths["workload"], paths["image"],
                         r.returncode, len(trace.ops), len(rows), trace.nr_modes_inferred,
                         stdout=r.stdout or "", stderr=r.stderr or "")


# ---------------------------------------------------------------- replay and compare
def replay_upper(image, trace, *, driver: str = "overlay2", **driver_options) -> tuple[dict, dict]:
    """Replay ``trace`` (a path or a parsed ``Trace``) with the simulated
    ``driver`` in a container over ``image``; ``(upper rows, replay counts)``."""
    from ..drivers import get_driver
    from .union import upper_manifest
    from ..traces import strace as _strace

    img = _pick_image(os.fspath(image), None)
    tr = _strace.read(trace) if isinstance(trace, (str, os.PathLike)) else trace
    drv = get_driver(driver, size=driver_options.pop("size", "4GiB"), **driver_options)
    parent = None
    for layer, cid in zip(img.layers, img.chain_ids):
        drv.create(cid[7:], parent)
        drv.apply_diff(cid[7:], parent, layer)
        parent = cid[7:]
    drv.create("capture", parent, read_write=True)
    view = drv.get("capture")
    counts = _strace.replay(tr.ops, view)
    rows = {p: {k: r[k] for k in ("type", "size", "mode", "uid", "gid", "nlink", "target", "xattrs")}
            for p, r in upper_manifest(drv, "capture").items()}
    for r in rows.values():
        r["xattrs"] = tuple(sorted(r["xattrs"]))
    drv.put("capture")
    return rows, counts


# ---------------------------------------------------------------- a test image from the host
def _libs(binary: str) -> list[str]:
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if r.returncode:
        return []   # static
    out = []
    for line in r.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            out.append(m.group(1))
    return out


def build_tools_image(path, files: dict | None = None, *, tools=TOOLS, tag: str = "thinp-capture:latest"):
    """Write a one-layer ``docker save`` archive to ``path`` holding the host's
    ``/bin/sh`` and ``tools`` (with the libraries ``ldd`` names, at their
    paths), ``/dev``, ``/proc``, ``/tmp`` and ``files``: ``{path: spec}`` where
    spec is bytes (a 0644 file), ``("dir", mode)``, ``("file", bytes, mode)``,
    ``("link", target)`` (a hard link) or ``("symlink", target)``.  Returns the
    ``Image``.  Raises ``NotSupportedError`` when a tool is missing."""
    from ..image import import_, save

    want: dict[str, str] = {}
    for t in tools:
        p = shutil.which(t)
        if p is None:
            raise NotSupportedError(f"the host has no {t!r} to build the capture image from")
        real = os.path.realpath(p)
        want["bin/" + t] = real
        for lib in _libs(real):
            want[lib.lstrip("/")] = os.path.realpath(lib)
    buf = io.BytesIO()
    dirs_done: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add_dir(d, mode=0o755):
            if d in dirs_done or not d:
                return
            add_dir(d.rpartition("/")[0])
            ti = tarfile.TarInfo(d + "/")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 1_700_000_000
            tf.addfile(ti)
            dirs_done.add(d)

        for d in ("bin", "dev", "proc", "tmp"):
            add_dir(d, 0o1777 if d == "tmp" else 0o755)
        for name in sorted(want):
            add_dir(name.rpartition("/")[0])
            with open(want[name], "rb") as f:
                data = f.read()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
        for name, spec in sorted((files or {}).items()):
            name = name.strip("/")
            add_dir(name.rpartition("/")[0])
            if isinstance(spec, (bytes, bytearray)):
                spec = ("file", bytes(spec), 0o644)
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            kind = spec[0]
            if kind == "dir":
                ti.name, ti.type, ti.mode = name + "/", tarfile.DIRTYPE, spec[1]
                dirs_done.add(name)
                tf.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = len(spec[1]), spec[2]
                tf.addfile(ti, io.BytesIO(spec[1]))
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, spec[1].strip("/")
                tf.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, spec[1], 0o777
                tf.addfile(ti)
            else:
                raise ValueError(f"unknown file spec {spec!r} for {name!r}")
    img = import_(buf.getvalue(), tags=[tag], message="thinp capture test image from host tools")
    save([img], os.fspath(path))
    return img


# ---------------------------------------------------------------- the reference scenario
#: the lower of the reference capture: a tree to copy, a directory to move
#: across directories, a hard-linked file, a tree to remove
SCENARIO_FILES = {
    "data/tree/a": b"a" * 100, "data/tree/sub/b": ("file", b"b" * 5000, 0o600),
    "data/tree/l": ("symlink", "a"), "data/tree/h": ("link", "data/tree/a"),
    "data/from/moving/x": b"x" * 10, "data/from/moving/deep/y": ("file", b"y" * 7000, 0o640),
    "data/to/.keep": b"",
    "data/hl1": ("file", b"h" * 300, 0o644), "data/hl2": ("link", "data/hl1"),
    "data/gone/p": b"p", "data/gone/q/r": b"rr",
}
#: ``cp -a`` of a directory, ``mv`` of a lower directory across directories,
#: ``chmod`` of a lower hard-linked file, ``rm -rf`` of a lower directory and
#: ``dd`` into a new file
SCENARIO_COMMAND = ("cp -a /data/tree /data/copy && mv /data/from/moving /data/to/ && chmod 600 /data/hl1"
                    " && rm -rf /data/gone && dd if=/dev/zero of=/data/new bs=4096 count=3")


def scenario_row(driver: str = "overlay2") -> dict:
    """``thinp validate drivers``' row for the reference scenario: capture it
    on the kernel (an image built from the host's tools), replay it with
    ``driver``, compare the uppers.  A ``skipped`` row says why where the
    machine refuses."""
    check = "captured cp -a / mv / chmod / rm -rf / dd trace, replayed: upper paths"
    why = refusal()
    if why:
        return {"check": check, "skipped": why}
    with tempfile.TemporaryDirectory(prefix="thinp-capture-run-") as tmp:
        try:
            build_tools_image(os.path.join(tmp, "image.tar"), SCENARIO_FILES)
            res = capture(os.path.join(tmp, "image.tar"), SCENARIO_COMMAND, os.path.join(tmp, "out"))
        except NotSupportedError as e:
            return {"check": check, "skipped": str(e)}
        ours, counts = replay_upper(res.image, res.trace, driver=driver)
        cmp = compare_upper(read_upper_csv(res.upper), ours)
    return {"check": check, "kernel": f"{cmp['paths_expected']} paths",
            driver: f"{cmp['paths_matched']} matched, {len(cmp['missing'])} missing, {len(cmp['extra'])} extra, "
                    f"{len(cmp['mismatched'])} differing ({counts['modes_inferred']} modes inferred)",
            "match": cmp["paths_matched"] == cmp["paths_expected"] and not cmp["extra"]}

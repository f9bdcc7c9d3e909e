"""Validation of the union drivers against the real kernel and real traces.

Two checks, each returning rows for ``thinp validate drivers``:

* :func:`overlay2_replay_calibration`: replay the captured ``dpkg -i nginx``
  strace (``workloads/dpkg-install-nginx.strace.gz``) with overlay2 over a
  lower built from the Debian rootfs manifest, and compare the upper
  directory with the one the kernel left
  (``dpkg-install-nginx.overlay-upper.csv.gz``): paths, types, sizes, modes,
  owners, whiteouts, opaque markers, overlay xattr names, and the ``du -sk``
  (4,620 KiB).
* :func:`kernel_replay`: the same replay of the strace reader's operations
  on a real kernel overlayfs mount, compared with the same fixture: a check
  of the reader and replay that does not involve the simulated drivers.
* the reference capture (:func:`thinp.validate.capture.scenario_row`): a
  trace recorded with ``thinp capture`` on a real overlay mount, replayed
  with overlay2 and compared with the kernel's upper directory;
* :func:`real_overlay_rows`: run one scripted workload on a real kernel
  overlayfs mount (lower and upper on tmpfs) and on the simulated overlay2,
  aufs and overlay, and compare what each upper holds: full copy-up of a
  4 MiB file on append, a whiteout on delete, an opaque directory on
  rmdir+mkdir, EXDEV on a directory rename, and 0 bytes copied by a
  ``metacopy=on`` chmod of a 2 MiB file.  Skipped, with the reason, where the
  machine refuses the mounts.

:func:`validate_union_drivers` runs both and returns all rows.  Every mount
is made on a fresh temporary directory and unmounted by its own path in a
``finally`` block.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import os
import stat as _stat
import subprocess
import tempfile
from pathlib import Path

from .target import RealDir, RealView, SimTarget, can_mount

__all__ = ["read_upper_csv", "real_upper_rows", "compare_upper", "validate_union_drivers", "overlay2_replay_calibration",
           "real_overlay_rows", "kernel_replay",
           "upper_manifest", "build_debian_lower", "KERNEL_UPPER_DU_KIB"]

KERNEL_UPPER_DU_KIB = 4620
MiB = 1 << 20

# The manifest leaves out logs (SOURCES.md), but the kernel's lower had
# /var/log/dpkg.log: its upper copy carries trusted.overlay.origin, so it was
# copied up, not created.  Its size there is the upper's 46,436 bytes minus
# the 1,378 bytes the trace appends.
DPKG_LOG_LOWER_BYTES = 46436 - 1378


def _fixtures(fixtures=None) -> Path:
    if fixtures is not None:
        return Path(fixtures)
    from .fixtures import fixtures_dir

    return fixtures_dir()


# ---------------------------------------------------------------- the replay calibration
def build_debian_lower(drv, layer_id: str = "debian", rows=None) -> None:
    """Create layer ``layer_id`` holding the Debian minbase manifest (files as
    pseudo-random bytes or version stamps of the recorded sizes); ``rows``
    default to the fixtures' manifest."""
    from ..fs.populate import wl_rootfs
    from .fixtures import load_manifest

    rows = load_manifest() if rows is None else rows
    drv.create(layer_id, None)
    drv.fill(layer_id, lambda view: wl_rootfs(SimTarget(view), rows))


def upper_manifest(drv, layer_id: str) -> dict:
    """The layer's own branch as ``{path: row}`` in the fixture's CSV terms:
    type (f d l c p), size, mode, uid, gid, nlink, target, xattr names, and
    ``blocks`` (512-byte units, as ``du`` counts them)."""
    fs = drv.fs
    top = drv.upper_dir(layer_id)
    out = {}
    for d, dirs, files in fs.walk(top):
        for n in dirs + files:
            p = d + "/" + n
            st = fs.lstat(p)
            m = st.st_mode
            typ = ("d" if _stat.S_ISDIR(m) else "f" if _stat.S_ISREG(m) else "l" if _stat.S_ISLNK(m)
                   else "c" if _stat.S_ISCHR(m) else "b" if _stat.S_ISBLK(m) else "p")
            out[p[len(top) + 1:]] = {
                "type": typ, "size": st.st_size if typ == "f" else 0, "mode": _stat.S_IMODE(m),
                "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
                "target": fs.readlink(p) if typ == "l" else
                (f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if typ in "cb" else ""),
                "xattrs": tuple(fs.listxattr(p, follow_symlinks=False)), "blocks": st.st_blocks,
                "data_kib": _data_kib(fs, p) if typ == "f" else 0}
    return out


def _data_kib(fs, p: str) -> int:
    node = fs.inode(p, follow=False)
    delayed = sum(r1 - r0 for r0, r1 in node.delayed) if node.delayed else 0
    return (node.nr_data_blocks + delayed) * 4


def read_upper_csv(path) -> dict:
    """An upper-directory CSV (the shared fixture's, or one ``thinp capture``
    wrote) as ``{path: row}``: ints for size, mode, uid, gid and nlink, a
    sorted tuple of xattr names."""
    with gzip.open(path, "rt", newline="") as f:
        rows = {}
        for r in csv.DictReader(f):
            r["size"] = int(r["size"] or 0)
            r["mode"] = int(r["mode"], 8) if not r["mode"].startswith("0o") else int(r["mode"][2:], 8)
            r["uid"], r["gid"] = int(r["uid"] or 0), int(r["gid"] or 0)
            r["nlink"] = int(r.get("nlink") or 1)
            r["xattrs"] = tuple(sorted(x.split("=", 1)[0] for x in r["xattrs"].split(";") if x))
            rows[r["path"]] = r
    return rows


_read_csv = read_upper_csv


def overlay2_replay_calibration(fixtures=None, *, fstype: str = "ext4", driver: str = "overlay2") -> dict:
    """Replay the dpkg strace with ``driver`` and compare with the kernel's upper.

    The lower is the Debian manifest plus ``/var/log/dpkg.log`` (see
    :data:`DPKG_LOG_LOWER_BYTES`).  The three ``.deb`` files the trace reads
    from ``/tmp/debs`` were copied in through the mount before tracing, so
    they are written into the container first (sizes from the trace's own
    ``stat`` results) and removed again afterwards, as they were before the
    kernel's upper was measured; ``/tmp`` stays copied up, as in the kernel's.

    Returns ``paths_expected``, ``paths_matched`` (path, type, size, mode,
    owner, symlink target, whiteouts, overlay xattr names all equal),
    ``missing``, ``extra``, ``mismatched``, ``du_kib`` and ``kernel_du_kib``,
    ``replay`` (the replay counts) and ``stats`` (driver metrics).
    """
    from ..traces import strace
    from ..drivers import get_driver

    fx = _fixtures(fixtures)
    trace_path = fx / "workloads" / "dpkg-install-nginx.strace.gz"
    ref_path = fx / "workloads" / "dpkg-install-nginx.overlay-upper.csv.gz"
    trace = strace.read(trace_path)
    drv = get_driver(driver, fstype=fstype)
    build_debian_lower(drv, "debian")
    def add_log(view):
        view.create("/var/log/dpkg.log", 0o644)
        view.write("/var/log/dpkg.log", 0, DPKG_LOG_LOWER_BYTES)

    drv.fill("debian", add_log)
    drv.create("c", "debian", read_write=True)
    view = drv.get("c")
    debs = {p: size for p, (mode, size) in trace.stats.items()
            if p.startswith("/tmp/debs/") and _stat.S_ISREG(mode)}
    view.mkdir("/tmp/debs", 0o755)
    for p, size in debs.items():
        view.create(p, 0o644)
        view.write(p, 0, size)
    result = strace.replay(trace.ops, view)
    for p in debs:
        view.unlink(p)
    view.rmdir("/tmp/debs")
    ours = upper_manifest(drv, "c")
    ref = _read_csv(ref_path)
    cmp = _compare(ref, ours)
    top = drv.upper_dir("c")
    du_kib = (sum(o["blocks"] for o in ours.values()) + drv.fs.lstat(top).st_blocks) // 2
    stats = drv.stats()
    drv.put("c")
    return {
        **cmp, "du_kib": du_kib, "kernel_du_kib": KERNEL_UPPER_DU_KIB,
        "whiteouts": sum(1 for o in ours.values() if o["type"] == "c" and o["target"] == "0:0"),
        "opaque_dirs": sum(1 for o in ours.values() if "trusted.overlay.opaque" in o["xattrs"]),
        "replay": result, "nr_ops": len(trace.ops), "stats": stats,
    }


# ---------------------------------------------------------------- the scripted workload
def _lower_script(t) -> None:
    t.write_file("/big", 4 * MiB)
    t.write_file("/meta", 2 * MiB)
    t.write_file("/del", 4096)
    t.mkdir("/d")
    t.write_file("/d/a", 100)
    t.mkdir("/rd")
    t.write_file("/rd/x", 100)


def _upper_script(t, *, metacopy: bool) -> dict:
    """The container workload; returns errno names of the steps that failed."""
    errs = {}
    if metacopy:
        t.chmod("/meta", 0o600)
        return errs
    t.append("/big", 10)
    t.unlink("/del")
    t.unlink("/d/a")
    t.rmdir("/d")
    t.mkdir("/d")
    try:
        t.rename("/rd", "/rd2")
        errs["rename"] = "ok"
    except OSError as e:
        errs["rename"] = errno.errorcode.get(e.errno, str(e.errno))
    return errs


def _observe_real(upper: str) -> dict:
    """What a kernel upper dir holds, in the comparison's terms."""
    out = {}
    for d, dirs, files in os.walk(upper):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = "/" + os.path.relpath(p, upper)
            st = os.lstat(p)
            opaque = False
            if _stat.S_ISDIR(st.st_mode):
                try:
                    opaque = os.getxattr(p, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
                except OSError:
                    pass
            try:
                metacopy = "trusted.overlay.metacopy" in os.listxattr(p, follow_symlinks=False)
            except OSError:
                metacopy = False
            wh = _stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            out[rel] = {"kind": "whiteout" if wh else "dir" if _stat.S_ISDIR(st.st_mode) else "file",
                        "size": st.st_size, "alloc_kib": st.st_blocks // 2, "opaque": opaque,
                        "metacopy": metacopy}
    return out


def _observe_sim(drv, layer_id: str) -> dict:
    out = {}
    aufs = drv.whiteout_style == "aufs"
    for rel, r in upper_manifest(drv, layer_id).items():
        path = "/" + rel
        base = rel.rsplit("/", 1)[-1]
        if aufs and base.startswith(".wh."):
            if base == ".wh..wh..opq":
                parent = "/" + rel.rsplit("/", 1)[0] if "/" in rel else "/"
                out.setdefault(parent, {})["opaque"] = True
            elif not base.startswith(".wh..wh."):
                tgt = path[: len(path) - len(base)] + base[4:]
                out[tgt] = {"kind": "whiteout", "size": 0, "alloc_kib": 0, "opaque": False, "metacopy": False}
            continue
        wh = r["type"] == "c" and r["target"] == "0:0"
        d = out.setdefault(path, {})
        d.update({"kind": "whiteout" if wh else "dir" if r["type"] == "d" else "file", "size": r["size"],
                  "alloc_kib": r["data_kib"],
                  "metacopy": "trusted.overlay.metacopy" in r["xattrs"]})
        d["opaque"] = d.get("opaque", False) or "trusted.overlay.opaque" in r["xattrs"]
    return out


def _summary(obs: dict) -> str:
    """The upper dir as one comparable line: each entry's path, kind, file size, opacity."""
    parts = []
    for p in sorted(obs):
        o = obs[p]
        k = "opaque dir" if o.get("opaque") else o.get("kind", "?")
        parts.append(f"{p} {k}" + (f" {o['size']:,}" if k == "file" else ""))
    return "; ".join(parts)


def _checks(obs: dict, errs: dict, copied: int | None) -> dict:
    big = obs.get("/big", {})
    return {
        "upper directory after the workload": _summary(obs),
        "append to a 4 MiB lower file": f"copy-up {big.get('alloc_kib', 0):,} KiB, size {big.get('size', 0):,}"
        if big else "no copy-up",
        "delete a lower file": obs.get("/del", {}).get("kind", "nothing"),
        "delete a lower dir, mkdir it again": "opaque dir" if obs.get("/d", {}).get("opaque") else "plain dir",
        "rename(2) of a lower dir": errs.get("rename", "?"),
    }


def _mount(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise PermissionError(r.stderr.strip() or f"{' '.join(args)} failed ({r.returncode})")


def _umount(path: str) -> None:
    subprocess.run(["umount", path], capture_output=True)


@contextlib.contextmanager
def _scratch(tmpfs_size: str):
    """A fresh tmpfs on a new temporary directory; yields (base, mounted list).
    Whatever is still in the list is unmounted by its own path on the way
    out, newest first, and the directory removed."""
    base = tempfile.mkdtemp(prefix="thinp-ovl-")
    mounted: list[str] = []
    try:
        _mount(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", base])
        mounted.append(base)
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(base, d))
        yield base, mounted
    finally:
        for m in reversed(mounted):
            _umount(m)
        try:
            os.rmdir(base)
        except OSError:
            pass


def _kernel_run(metacopy: bool) -> tuple[dict, dict]:
    """Run the script on a real overlay mount on tmpfs; (observations, errors)."""
    with _scratch("64m") as (base, mounted):
        _lower_script(RealDir(os.path.join(base, "lower")))
        opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
        if metacopy:
            opts += ",metacopy=on"
        merged = os.path.join(base, "merged")
        _mount(["mount", "-t", "overlay", "overlay", "-o", opts, merged])
        mounted.append(merged)
        errs = _upper_script(RealDir(merged), metacopy=metacopy)
        os.sync()
        _umount(merged)
        mounted.remove(merged)
        return _observe_real(os.path.join(base, "upper")), errs


def _sim_run(name: str, metacopy: bool) -> tuple[dict, dict, dict]:
    from ..drivers import get_driver

    opts = {"metacopy": True} if metacopy else {}
    drv = get_driver(name, size="1GiB", **opts)
    drv.create("lower", None)
    drv.fill("lower", lambda v: _lower_script(SimTarget(v)))
    drv.create("c", "lower", read_write=True)
    v = drv.get("c")
    errs = _upper_script(SimTarget(v), metacopy=metacopy)
    drv.fs.sync()
    obs = _observe_sim(drv, "c")
    drv.put("c")
    return obs, errs, drv.stats()


def overlay_mountable() -> tuple[bool, str]:
    """Can this process mount tmpfs and overlayfs (see :func:`.target.can_mount`)?"""
    return can_mount(loop=False, what="mounting tmpfs and overlay")


def real_overlay_rows(drivers=("overlay2", "aufs", "overlay")) -> list[dict]:
    """Side-by-side rows: ``check``, ``kernel``, one column per driver, and
    ``match`` (every driver equal to the kernel).  When the machine refuses
    the mounts, one row says so in ``skipped``."""
    ok, why = overlay_mountable()
    if not ok:
        return [{"check": "kernel overlayfs", "skipped": why}]
    try:
        kobs, kerrs = _kernel_run(False)
    except (PermissionError, FileNotFoundError) as e:
        return [{"check": "kernel overlayfs", "skipped": f"mount refused: {e}"}]
    rows = {k: {"check": k, "kernel": v} for k, v in _checks(kobs, kerrs, None).items()}
    for name in drivers:
        obs, errs, _st = _sim_run(name, False)
        for k, v in _checks(obs, errs, None).items():
            rows[k][name] = v
    out = list(rows.values())
    try:
        kmeta, _ = _kernel_run(True)
        m = kmeta.get("/meta", {})
        krow = f"{m.get('alloc_kib', 0)} KiB data copied" + (" (metacopy)" if m.get("metacopy") else "")
    except (PermissionError, FileNotFoundError) as e:
        krow = f"skipped: metacopy mount refused: {e}"
    row = {"check": "chmod of a 2 MiB file, metacopy=on", "kernel": krow}
    obs, _e, st = _sim_run("overlay2", True)
    m = obs.get("/meta", {})
    row["overlay2"] = f"{m.get('alloc_kib', 0)} KiB data copied" + (" (metacopy)" if m.get("metacopy") else "")
    for name in drivers:
        if name != "overlay2":
            row[name] = "n/a (no metacopy)"
    out.append(row)
    for r in out:
        r["match"] = all(r.get(n) == r["kernel"] for n in drivers if not str(r.get(n, "")).startswith("n/a")
                         and n in r)
    return out


def real_upper_rows(upper: str) -> dict:
    """A real (kernel) upper directory as ``{path: row}`` in the CSV's terms:
    type (f d l c b p s), size (files), mode, uid, gid, nlink, target (symlink
    text, or ``major:minor`` of a device), sorted xattr names, and ``blocks``."""
    out = {}
    for d, dirs, files in os.walk(upper):
        dirs.sort()
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            m = st.st_mode
            typ = ("d" if _stat.S_ISDIR(m) else "f" if _stat.S_ISREG(m) else "l" if _stat.S_ISLNK(m)
                   else "c" if _stat.S_ISCHR(m) else "b" if _stat.S_ISBLK(m) else "p" if _stat.S_ISFIFO(m)
                   else "s")
            out[os.path.relpath(p, upper)] = {
                "type": typ, "size": st.st_size if typ == "f" else 0, "mode": _stat.S_IMODE(m),
                "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
                "target": os.readlink(p) if typ == "l" else
                (f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if typ in "cb" else ""),
                "xattrs": tuple(sorted(os.listxattr(p, follow_symlinks=False))), "blocks": st.st_blocks}
    return out


_real_manifest = real_upper_rows


def compare_upper(ref: dict, ours: dict) -> dict:
    """Two uppers side by side: ``missing``/``extra`` paths and ``mismatched``
    ``(path, want, got)`` over type, size (files), mode, owner, link target
    or device, and xattr names; ``paths_matched`` of ``paths_expected``."""
    mism = []
    for p in sorted(set(ref) & set(ours)):
        r, o = ref[p], ours[p]
        want = (r["type"], r["size"] if r["type"] == "f" else 0, r["mode"], r["uid"], r["gid"],
                r["target"] if r["type"] in "lcb" else "", tuple(sorted(r["xattrs"])))
        got = (o["type"], o["size"], o["mode"], o["uid"], o["gid"], o["target"], tuple(sorted(o["xattrs"])))
        if want != got:
            mism.append((p, want, got))
    return {"missing": sorted(set(ref) - set(ours)), "extra": sorted(set(ours) - set(ref)), "mismatched": mism,
            "paths_matched": len(set(ref) & set(ours)) - len(mism), "paths_expected": len(ref)}


_compare = compare_upper


def kernel_replay(fixtures=None) -> dict:
    """Replay the dpkg trace's operations (as :mod:`thinp.traces.strace`
    reads them) on a REAL kernel overlayfs mount (tmpfs lower built from the
    Debian manifest, tmpfs upper) and compare the real upper with the
    fixture.  This checks the reader and the replay against the kernel,
    independently of the simulated drivers.  Raises PermissionError when the
    machine refuses the mounts."""
    from ..fs.populate import wl_rootfs
    from .fixtures import load_manifest
    from ..traces import strace

    fx = _fixtures(fixtures)
    trace = strace.read(fx / "workloads" / "dpkg-install-nginx.strace.gz")
    ref = _read_csv(fx / "workloads" / "dpkg-install-nginx.overlay-upper.csv.gz")
    rows = load_manifest(fx / "rootfs" / "debian-bookworm-minbase.csv.gz")
    old_umask = os.umask(0)      # modes come from the manifest and the replay (which applies 022)
    try:
        with _scratch("512m") as (base, mounted):
            lower = os.path.join(base, "lower")
            wl_rootfs(RealDir(lower), rows)
            os.makedirs(os.path.join(lower, "var/log"), exist_ok=True)
            with open(os.path.join(lower, "var/log/dpkg.log"), "wb") as f:
                f.write(b"x" * DPKG_LOG_LOWER_BYTES)
            os.chmod(os.path.join(lower, "var/log/dpkg.log"), 0o644)
            merged = os.path.join(base, "merged")
            _mount(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={base}/upper,workdir={base}/work", merged])
            mounted.append(merged)
            view = RealView(merged)
            debs = {p: size for p, (mode, size) in trace.stats.items()
                    if p.startswith("/tmp/debs/") and _stat.S_ISREG(mode)}
            view.mkdir("/tmp/debs")
            for p, size in debs.items():
                view.write(p, 0, size)
            result = strace.replay(trace.ops, view)
            for p in debs:
                view.unlink(p)
            view.rmdir("/tmp/debs")
            _umount(merged)
            mounted.remove(merged)
            ours = _real_manifest(os.path.join(base, "upper"))
    finally:
        os.umask(old_umask)
    out = _compare(ref, ours)
    out["replay"] = result
    out["file_kib"] = sum(o["blocks"] for o in ours.values() if o["type"] == "f") // 2
    return out


def validate_union_drivers(fixtures=None) -> list[dict]:
    """All union-driver validation rows: the kernel comparison, then the
    overlay2 dpkg replay against the kernel's upper directory.  (The captured
    reference scenario's row is :func:`thinp.validate.capture.scenario_row`,
    which builds on this module.)"""
    rows = real_overlay_rows()
    if overlay_mountable()[0]:
        try:
            kr = kernel_replay(fixtures)
            rows.append({"check": "dpkg-nginx trace replayed on a real overlay mount: upper paths",
                         "kernel": f"{kr['paths_expected']} paths (fixture)",
                         "replay": f"{kr['paths_matched']} matched, {len(kr['missing'])} missing, "
                                   f"{len(kr['extra'])} extra, {len(kr['mismatched'])} differing",
                         "match": kr["paths_matched"] == kr["paths_expected"] and not kr["extra"]})
        except (PermissionError, FileNotFoundError) as e:
            rows.append({"check": "dpkg-nginx trace replayed on a real overlay mount", "skipped": str(e)})
    try:
        cal = overlay2_replay_calibration(fixtures)
    except FileNotFoundError as e:
        rows.append({"check": "overlay2 dpkg-nginx replay", "skipped": f"fixture missing: {e}"})
        return rows
    rows.append({"check": "overlay2 dpkg-nginx replay: upper paths",
                 "kernel": f"{cal['paths_expected']} paths",
                 "overlay2": f"{cal['paths_matched']} matched, {len(cal['missing'])} missing, "
                             f"{len(cal['extra'])} extra",
                 "match": cal["paths_matched"] == cal["paths_expected"] and not cal["extra"]})
    rows.append({"check": "overlay2 dpkg-nginx replay: upper du -sk",
                 "kernel": f"{cal['kernel_du_kib']:,} KiB", "overlay2": f"{cal['du_kib']:,} KiB",
                 "match": abs(cal["du_kib"] - cal["kernel_du_kib"]) <= 0.05 * cal["kernel_du_kib"]})
    return rows

"""How many containers fit?  The overcommit experiment.

``overcommit(...)`` starts ``containers`` containers one after another and
records, after each, the pool's Data% and Meta%, mapped vs virtual bytes,
the overcommit ratio and the events that happened while it ran.

devicemapper (a :class:`thinp.ThinPool` with Docker's loop-lvm defaults):

* thin id 1 is the base device (``basesize`` 10 GiB), "formatted" and holding
  the image; a container is ``<id>-init`` (a snapshot of the image device)
  plus its read-write snapshot, as Docker's layer store makes them;
* before each container, ``dm.min_free_space`` (10%) is checked as Docker
  does, and a refusal carries Docker's message (``events`` column
  ``min_free_space``; the container does not start);
* each container does ``write_per_container`` bytes of 4 KiB writes in random
  order over a region of that size in its rw device, replayed through
  :meth:`thinp.ThinPool.replay` as one trace (chunks when autoextend is on);
* low water mark: Docker's 32,768 blocks, capped at 5% of the pool;
* out of data space: with ``no_space="error"`` (the table line's
  ``error_if_no_space``) writes needing a new block fail at once (ENOSPC,
  counted in ``enospc``); with ``"queue"`` they queue (dm's
  retry_on_resume) while the rest of the container's writes run.  If
  autoextend does not grow the pool, the container's writer waits for its
  queued writes, and after ``no_space_timeout`` seconds (dm_thin_pool's
  module parameter, default 60) dm-thin fails them with ENOSPC and keeps
  the pool out of data space in ``error_if_no_space`` mode until it has
  space again (event ``no_space_timeout``; ``waited_s`` is the writer's
  wait, ``enospc`` the failed blocks, ``no_space`` the mode the status
  line shows).  Later containers' writes then fail at once, until removed
  containers give blocks back and the pool queues again.  With
  ``no_space_timeout=0`` (queue for ever) the container hangs and the run
  stops (``queued_hang``).  The run has no clock of its own: time passes
  only while a writer waits, so the timeout's length shows in
  ``waited_s``, not in which writes fail (nothing else frees space while
  a container waits; autoextend, checked between chunks of writes, acts
  before any timeout, dmeventd's polling delay not being modelled);
* out of metadata space (``metadata_size``, default Docker's loop-lvm 2 GiB):
  at dm's metadata reserve the pool commits what came before and turns
  read-only without needs_check: the container's writes needing a new
  block fail (EIO, counted in ``eio``), its other writes run, and the next
  container cannot be created (dm refuses pool messages); the event is
  ``out_of_metadata_space`` and the run stops.  A metadata operation that
  fails outright (dm's metadata_operation_failed) aborts to the last commit
  with needs_check set (column ``needs_check``): event ``metadata_failure``,
  and the run stops;
* autoextend (LVM's ``thin_pool_autoextend_threshold``/``percent``): checked
  between chunks of writes (dmeventd polls); 100 = off, under 50 acts as 50;
  the pool grows by ``percent`` of its current size via ``resize_data``;
* churn: with ``lifetime=L`` container ``i-L`` is removed before container
  ``i`` starts.  Removal deletes the thin devices (dm-thin frees their
  blocks in the pool).  With ``fstrim_after_delete`` the driver discards the
  device first (Docker's ``dm.blkdiscard``).  ``host_bytes`` is what the
  loop data file holds on the host disk: blocks once used stay allocated
  there unless the discard reaches the pool *and* the pool passes it down
  (``discard="passdown"``) -- moby issue #3182's complaint.

Not modelled: the per-device filesystem's own metadata and allocator
(approximated by a constant measured once from :func:`thinp.fs.mkfs` of the
base device); the image's files (its footprint is the Debian minbase
manifest's bytes, rounded to 4 KiB per file, written once to the base
device); container start-up writes other than the workload; page cache.

Union drivers (overlay2, overlay, aufs, vfs) run on a
:class:`thinp.blockdev.PlainDevice` of the same size with the ext4 model:
the image is extracted once into a lower dir (vfs copies it per container),
and each container's writes are one file of ``write_per_container`` bytes in
its upper dir (written in one call: the block count matches random 4 KiB
writes covering the file, the extent layout does not).  ``data_pct`` is the
filesystem's used blocks, ``meta_pct`` its used inodes; running out is ENOSPC.
overlay2, overlay and aufs give the same curve here: their differences
(lower-layer links, whiteouts, copy-up) do not show in a write-only workload
on fresh files; vfs differs by its full copy of the image per container.
``started`` there means the container's directories were made; ``enospc``
marks one whose writes failed.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time

import numpy as np

from ..config import METADATA_BLOCK_SIZE, PAGE_SIZE
from ..drivers.devicemapper import BASE_DEVICE_SIZE, LOOP_METADATA_SIZE, LOW_WATER_MARK_BLOCKS as DOCKER_LWM
from ..trace import DISCARD, TRACE_DTYPE, WRITE
from ..units import check_block_size, parse_size

UNION_DRIVERS = ("overlay2", "overlay", "aufs", "vfs")
DRIVERS = ("devicemapper",) + UNION_DRIVERS
DISCARDS = ("passdown", "nopassdown", "ignore")
BASE_SIZE = parse_size(BASE_DEVICE_SIZE)
PAGE = PAGE_SIZE


@functools.lru_cache(maxsize=None)
def image_bytes(image: str) -> int:
    """The image's footprint: the regular files of its profile (shipped in
    the package), 4 KiB-rounded, a hard-linked file once."""
    if image in ("debian-minbase", "debian-bookworm-minbase"):
        from ..workloads.format import profile_rows

        return int(sum(-(-r[2] // PAGE) * PAGE for r in profile_rows("debian-minbase") if r[1] == "f"))
    if image in ("scratch", "empty"):
        return 0
    return parse_size(image, what="image")


@functools.lru_cache(maxsize=None)
def fs_metadata_bytes(fstype: str = "xfs", size: int = BASE_SIZE) -> int:
    """Bytes :func:`thinp.fs.mkfs` maps on a fresh ``size`` device (measured once)."""
    from ..blockdev import PlainDevice
    from ..fs import mkfs

    dev = PlainDevice(size)
    fs = mkfs(dev, fstype)
    fs.sync()
    return int(dev.physical_bytes)


class UnionOptionsWarning(UserWarning):
    """Thin-pool options given to an overcommit run that includes union
    drivers, which run on a plain disk and ignore them."""


def _autoextend_threshold(t: int) -> int:
    t = int(t)
    if t >= 100:
        return 100
    return max(50, t)


def overcommit(pool="100G", block_size="64k", image="debian-minbase", containers=2000,
               write_per_container="200M", zeroing=False, discard="passdown", fstrim_after_delete=False,
               autoextend_threshold=100, autoextend_percent=20, no_space="error", lifetime=None,
               driver="devicemapper", seed=0, progress=True, plot=True, min_free_space=10, metadata_size=None,
               no_space_timeout=60):
    """Run the experiment; returns ``(DataFrame, Figure)`` (Figure is None with
    ``plot=False``).  ``driver`` is one name, a list of names, or ``"all"``:
    several drivers give one frame (a ``driver`` column) and one figure."""
    _check_args(containers, no_space, discard, lifetime, autoextend_threshold, autoextend_percent, min_free_space,
                no_space_timeout)
    if driver == "all":
        driver = list(DRIVERS)
    names = [driver] if isinstance(driver, str) else list(driver)
    union = [d for d in names if d in UNION_DRIVERS]
    pool_only = {"block_size": (block_size, "64k"), "zeroing": (zeroing, False), "discard": (discard, "passdown"),
                 "autoextend_threshold": (autoextend_threshold, 100), "no_space": (no_space, "error"),
                 "min_free_space": (min_free_space, 10), "metadata_size": (metadata_size, None),
                 "no_space_timeout": (no_space_timeout, 60)}
    changed = [k for k, (v, default) in pool_only.items() if str(v).lower() != str(default).lower()]
    if union and changed:
        import warnings

        warnings.warn(f"{', '.join(union)} run on a plain disk with no thin pool: {', '.join(changed)} "
                      "apply to devicemapper only", UnionOptionsWarning, stacklevel=2)
    import pandas as pd

    frames = []
    for d in names:
        kw = dict(pool=pool, block_size=block_size, image=image, containers=containers,
                  write_per_container=write_per_container, zeroing=zeroing, discard=discard,
                  fstrim_after_delete=fstrim_after_delete, autoextend_threshold=autoextend_threshold,
                  autoextend_percent=autoextend_percent, no_space=no_space, lifetime=lifetime, seed=seed,
                  progress=progress, min_free_space=min_free_space)
        if d == "devicemapper":
            rows = run_devicemapper(**kw, metadata_size=metadata_size, no_space_timeout=no_space_timeout)
        elif d in UNION_DRIVERS:
            rows = run_union(d, **kw)
        else:
            raise ValueError(f"driver {d!r}: one of {', '.join(DRIVERS)}")
        frames.append(pd.DataFrame(rows))
    df = pd.concat(frames, ignore_index=True)
    fig = None
    if plot:
        from ..plot import overcommit_plot

        extra = []
        if discard != "passdown" or fstrim_after_delete:
            extra.append(f"discard {discard}" + (" + fstrim" if fstrim_after_delete else ""))
        if lifetime:
            extra.append(f"lifetime {lifetime}")
        if int(autoextend_threshold) < 100:
            extra.append(f"autoextend {autoextend_threshold}%/+{autoextend_percent}%")
        if zeroing:
            extra.append("zeroing")
        if no_space != "error":
            extra.append(f"no_space {no_space}, timeout " + (f"{no_space_timeout} s" if no_space_timeout else "off"))
        fig = overcommit_plot(df, title=(
            f"Overcommit: {_gib(pool)} pool, {block_size} blocks, {write_per_container} of random 4 KiB "
            f"writes per container" + (f" ({', '.join(extra)})" if extra else "")))
    return df, fig


def _gib(size) -> str:
    b = parse_size(size, what="pool")
    return f"{b / (1 << 30):g} GiB"


def _progress(total, label, enabled):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import Progress

    p = Progress(console=Console(stderr=True), transient=True)
    p.start()
    return p, p.add_task(label, total=total)


def _check_args(containers, no_space, discard, lifetime, autoextend_threshold=100, autoextend_percent=20,
                min_free_space=10, no_space_timeout=60):
    if no_space not in ("error", "queue"):
        raise ValueError(f"no_space {no_space!r}: 'error' or 'queue'")
    if discard not in DISCARDS:
        raise ValueError(f"discard {discard!r}: one of {', '.join(DISCARDS)}")
    ranges = (("containers", containers, 1, None), ("lifetime", lifetime, 1, None),
              ("autoextend_threshold", autoextend_threshold, 0, 100),
              ("autoextend_percent", autoextend_percent, 1, None), ("min_free_space", min_free_space, 0, 99),
              ("no_space_timeout", no_space_timeout, 0, None))
    for name, v, lo, hi in ranges:
        if v is None and name == "lifetime":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
            want = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{name} must be an integer {want}, not {v!r}")


def run_devicemapper(pool="100G", block_size="64k", image="debian-minbase", containers=2000,
                     write_per_container="200M", zeroing=False, discard="passdown", fstrim_after_delete=False,
                     autoextend_threshold=100, autoextend_percent=20, no_space="error", lifetime=None,
                     seed=0, progress=True, min_free_space=10, metadata_size=None,
                     no_space_timeout=60) -> list[dict]:
    """The devicemapper experiment; one row per container (see the module)."""
    from .. import errors
    from ..thin import ThinPool

    _check_args(containers, no_space, discard, lifetime, autoextend_threshold, autoextend_percent, min_free_space,
                no_space_timeout)
    bs = check_block_size(block_size)
    pool_bytes = parse_size(pool, what="pool")
    wbytes = parse_size(write_per_container, what="write_per_container") // PAGE * PAGE
    nr_blocks = pool_bytes // bs
    if nr_blocks < 1:
        raise ValueError(f"pool {pool_bytes} bytes is smaller than one block")
    threshold = _autoextend_threshold(autoextend_threshold)
    ext_pct = int(autoextend_percent)
    lwm = min(DOCKER_LWM, nr_blocks // 20)
    rng = np.random.default_rng(seed)
    tmp = tempfile.mkdtemp(prefix="thinp-oc-")
    rows: list[dict] = []
    bar = _progress(int(containers), "devicemapper", progress)
    try:
        meta = LOOP_METADATA_SIZE if metadata_size is None else metadata_size
        p = ThinPool.create(os.path.join(tmp, "pool"), pool_bytes, block_size=bs, metadata_size=meta,
                            low_water_mark=lwm, zero_new_blocks=bool(zeroing),
                            discard_passdown=(discard == "passdown"), ignore_discard=(discard == "ignore"),
                            error_if_no_space=(no_space == "error"), sync=False, commit_interval=0)
        host = np.zeros(p.nr_data_blocks, dtype=bool)   # loop file blocks allocated on the host
        pending: list[str] = []

        def on_event(ev):
            pending.append(ev.kind)
        for kind in ("low_water_mark", "out_of_data_space", "metadata_low_water_mark", "out_of_metadata_space"):
            p.on_event(kind, on_event)

        # the base device: mkfs's metadata + the image, written once
        base_fill = -(-(fs_metadata_bytes("xfs") + image_bytes(image)) // PAGE) * PAGE
        p.create_thin(1, BASE_SIZE)
        if base_fill:
            tr = np.zeros(1, dtype=TRACE_DTYPE)
            tr[0] = (1, WRITE, 0, min(base_fill, BASE_SIZE))
            p.replay(tr)
        region_max = BASE_SIZE - base_fill - wbytes
        if region_max < 0:
            raise ValueError(f"write_per_container {wbytes} bytes does not fit a {BASE_SIZE >> 30} GiB device")
        live: dict[int, tuple[int, int, int, int]] = {}   # container -> (init id, rw id, offset, nbytes)
        next_id = 2
        stopped = None
        resizes = 0
        t0 = time.perf_counter()

        def mark_host():
            rc = p.refcounts()
            n = min(len(rc), len(host))
            host[:n] |= rc[:n] > 0

        def autoextend():
            nonlocal resizes
            if threshold >= 100:
                return False
            st = p.status()
            if 100.0 * st.used_data_blocks / st.total_data_blocks < threshold and not p.nr_queued:
                return False
            new = st.total_data_blocks + max(1, st.total_data_blocks * ext_pct // 100)
            p.resize_data(new * bs)
            resizes += 1
            pending.append("autoextend")
            return True

        for i in range(int(containers)):
            if stopped:
                break
            ev: list[str] = []
            enospc = eio = 0
            waited = 0
            started = False
            # churn: remove the container that has lived its lifetime
            if lifetime is not None and i - int(lifetime) in live:
                init_id, rw_id, off, nb = live.pop(i - int(lifetime))
                mark_host()
                if fstrim_after_delete:
                    tr = np.zeros(2, dtype=TRACE_DTYPE)
                    tr[0] = (rw_id, DISCARD, 0, BASE_SIZE)
                    tr[1] = (init_id, DISCARD, 0, BASE_SIZE)
                    p.replay(tr)
                p.delete(rw_id)
                p.delete(init_id)
                p.commit()
                if fstrim_after_delete and discard == "passdown":
                    rc = p.refcounts()
                    host[: len(rc)] &= rc > 0
                ev.append("removed")
            # dm.min_free_space, checked as Docker's devmapper does before a create
            st = p.status()
            min_data = max(1, st.total_data_blocks * min_free_space // 100) if min_free_space else 0
            min_meta = max(1, st.total_metadata_blocks * min_free_space // 100) if min_free_space else 0
            free_data = st.total_data_blocks - st.used_data_blocks
            free_meta = st.total_metadata_blocks - st.used_metadata_blocks
            message = ""
            if free_data < min_data:
                message = (f"devmapper: Thin Pool has {free_data} free data blocks which is less than minimum "
                           f"required {int(min_data)} free data blocks. Create more free space in thin pool or "
                           f"use dm.min_free_space option to change behavior")
            elif free_meta < min_meta:
                message = (f"devmapper: Thin Pool has {free_meta} free metadata blocks which is less than "
                           f"minimum required {int(min_meta)} free metadata blocks. Create more free metadata "
                           f"space in thin pool or use dm.min_free_space option to change behavior")
            if message:
                ev.append("min_free_space")
                if autoextend():
                    message = ""
            if not message:
                try:
                    init_id, rw_id = next_id, next_id + 1
                    p.create_snap(init_id, 1)
                    p.create_snap(rw_id, init_id)
                    next_id += 2
                    started = True
                    off = int(rng.integers(0, region_max // bs + 1)) * bs + base_fill // bs * bs
                    off = min(off, BASE_SIZE - wbytes) // PAGE * PAGE
                    live[i] = (init_id, rw_id, off, wbytes)
                    npages = wbytes // PAGE
                    tr = np.empty(npages, dtype=TRACE_DTYPE)
                    tr["dev_id"] = rw_id
                    tr["op"] = WRITE
                    tr["offset"] = rng.permutation(npages).astype(np.uint64) * PAGE + off
                    tr["length"] = PAGE
                    nchunks = 1 if threshold >= 100 else 8
                    for chunk in np.array_split(tr, nchunks):
                        if not len(chunk):
                            continue
                        try:
                            r = p.replay(chunk)
                        except errors.OutOfMetadataSpaceError as e:
                            r = e.result   # the run went on: its blocks needing a new mapping failed
                            stopped = "out_of_metadata_space"
                        enospc += r.counters["nr_enospc"]
                        eio += r.counters["nr_eio"]
                        if stopped:
                            break
                        autoextend()
                    while p.nr_queued and autoextend():
                        pass
                    if p.nr_queued and not stopped:
                        if no_space_timeout:
                            # the writer waits for its queued writes until dm's
                            # no_space_timeout fails them (ENOSPC)
                            waited = int(no_space_timeout)
                            enospc += p.expire_no_space_timeout()
                            ev.append("no_space_timeout")
                        else:
                            ev.append("queued_hang")
                            stopped = "queued_hang"
                except errors.ReadOnlyPoolError:
                    # a commit that went out of metadata space (or a message
                    # refused after one), or a real metadata failure
                    stopped = "out_of_metadata_space" if p.out_of_metadata_space else "metadata_failure"
                if stopped in ("out_of_metadata_space", "metadata_failure") and stopped not in pending:
                    pending.append(stopped)
            ev.extend(pending)
            pending.clear()
            st = p.status(observer=True)
            if st.needs_check and "out_of_metadata_space" in ev:
                # the pool's event told of metadata running out, but the outcome is dm's
                # metadata_operation_failed (a real failure, or, without zeroing, the reserve
                # commit's triggering insert into metadata that commit made read-only)
                ev[:] = list(dict.fromkeys("metadata_failure" if k == "out_of_metadata_space" else k for k in ev))
            if len(host) < st.total_data_blocks:
                host = np.concatenate([host, np.zeros(st.total_data_blocks - len(host), dtype=bool)])
            mark_host()
            virtual = BASE_SIZE * (1 + 2 * len(live))
            rows.append(dict(
                driver="devicemapper", container=i + 1, started=started, live=len(live),
                data_used_bytes=st.used_data_blocks * bs, data_total_bytes=st.total_data_blocks * bs,
                data_pct=100.0 * st.used_data_blocks / st.total_data_blocks,
                meta_used_bytes=st.used_metadata_blocks * METADATA_BLOCK_SIZE, meta_total_bytes=st.total_metadata_blocks * 4096,
                meta_pct=100.0 * st.used_metadata_blocks / st.total_metadata_blocks,
                mapped_bytes=st.used_data_blocks * bs, virtual_bytes=virtual,
                overcommit_ratio=virtual / (st.total_data_blocks * bs),
                host_bytes=int(host.sum()) * bs, enospc=int(enospc), eio=int(eio), queued=int(p.nr_queued),
                waited_s=waited, events=",".join(ev), message=message, mode=st.mode, no_space=st.no_space,
                needs_check=bool(st.needs_check),
                seconds=time.perf_counter() - t0))
            if bar:
                bar[0].update(bar[1], advance=1)
        p.close()
    finally:
        if bar:
            bar[0].stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def run_union(driver, pool="100G", block_size="64k", image="debian-minbase", containers=2000,
              write_per_container="200M", zeroing=False, discard="passdown", fstrim_after_delete=False,
              autoextend_threshold=100, autoextend_percent=20, no_space="error", lifetime=None,
              seed=0, progress=True, min_free_space=10) -> list[dict]:
    """A union driver on a plain disk of ``pool`` bytes with the ext4 model."""
    from .. import errors
    from ..blockdev import PlainDevice
    from ..fs import mkfs

    _check_args(containers, no_space, discard, lifetime, autoextend_threshold, autoextend_percent, min_free_space)
    check_block_size(block_size)
    size = parse_size(pool, what="pool") // PAGE * PAGE
    wbytes = parse_size(write_per_container, what="write_per_container") // PAGE * PAGE
    img = image_bytes(image)
    dev = PlainDevice(size)
    fs = mkfs(dev, "ext4", discard=(discard != "ignore"))
    rows: list[dict] = []
    bar = _progress(int(containers), driver, progress)
    out = False
    t0 = time.perf_counter()
    try:
        fs.mkdir("/image")
        fs.create("/image/rootfs")
        if img:
            fs.write("/image/rootfs", 0, img)
        fs.mkdir("/containers")
        live = []
        for i in range(int(containers)):
            ev = []
            started = False
            if lifetime is not None and i - int(lifetime) in live:
                live.remove(i - int(lifetime))
                fs.rmtree(f"/containers/{i - int(lifetime)}")
                fs.sync()
                if fstrim_after_delete and discard != "ignore":
                    fs.fstrim()
                ev.append("removed")
            if not out:
                try:
                    d = f"/containers/{i}"
                    fs.mkdir(d)
                    live.append(i)
                    started = True
                    if driver == "vfs" and img:
                        fs.create(d + "/rootfs")
                        fs.write(d + "/rootfs", 0, img)
                    fs.mkdir(d + "/upper")
                    fs.create(d + "/upper/data")
                    if wbytes:
                        fs.write(d + "/upper/data", 0, wbytes)
                    fs.sync()
                except (errors.NoSpaceError, OSError) as e:
                    if isinstance(e, errors.NoSpaceError) or getattr(e, "errno", None) == 28:
                        ev.append("out_of_data_space")
                        out = no_space == "queue"   # a blocked writer: nothing else starts
                    else:
                        raise
            s = fs.statfs()
            used = s["f_blocks"] - s["f_bfree"]
            virtual = (len(live) + 1) * size
            rows.append(dict(
                driver=driver, container=i + 1, started=started, live=len(live),
                data_used_bytes=used * s["f_bsize"], data_total_bytes=s["f_blocks"] * s["f_bsize"],
                data_pct=100.0 * used / s["f_blocks"],
                meta_used_bytes=(s["f_files"] - s["f_ffree"]) * 256, meta_total_bytes=s["f_files"] * 256,
                meta_pct=100.0 * (s["f_files"] - s["f_ffree"]) / s["f_files"],
                mapped_bytes=used * s["f_bsize"], virtual_bytes=virtual, overcommit_ratio=1.0,
                host_bytes=int(dev.physical_bytes), enospc=int("out_of_data_space" in ev), eio=0, queued=0,
                waited_s=0, events=",".join(ev), message="", mode="rw", no_space="", needs_check=False,
                seconds=time.perf_counter() - t0))
            if bar:
                bar[0].update(bar[1], advance=1)
    finally:
        if bar:
            bar[0].stop()
    return rows


EVENT_KINDS = ("low_water_mark", "min_free_space", "out_of_data_space", "out_of_metadata_space",
               "metadata_failure", "autoextend", "no_space_timeout", "queued_hang")


def summary(df) -> list[dict]:
    """One row per driver of an :func:`overcommit` frame: containers
    started, containers that wrote all their data, final Data%/Meta%, and
    the first container at which each kind of event happened."""
    out = []
    for driver, g in df.groupby("driver", sort=False):
        events = g["events"].fillna("").str.split(",")
        first = {}
        for kind in EVENT_KINDS:
            h = g[events.apply(lambda e, k=kind: k in e)]
            if len(h):
                first[kind] = f"container {int(h['container'].iloc[0])} (Data% {h['data_pct'].iloc[0]:.1f})"
        out.append({"driver": driver, "started": int(g["started"].sum()),
                    "completed": int((g["started"] & (g["enospc"] == 0) & (g["eio"] == 0)).sum()),
                    "data_pct": round(float(g["data_pct"].iloc[-1]), 2),
                    "meta_pct": round(float(g["meta_pct"].iloc[-1]), 2),
                    "events": "; ".join(f"{k} at {v}" for k, v in first.items()) or "none"})
    return out


def save(df, fig, out) -> dict:
    """Write ``overcommit.csv``, ``overcommit.parquet`` and (with a figure)
    ``overcommit.png`` into the directory ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"overcommit.{ext}") for ext in ("csv", "parquet")}
    df.to_csv(paths["csv"], index=False)
    df.to_parquet(paths["parquet"], index=False)
    if fig is not None:
        paths["png"] = os.path.join(out, "overcommit.png")
        fig.savefig(paths["png"], dpi=120)
    return paths


def check_params(**params) -> None:
    """Check :func:`overcommit`'s arguments without running anything:
    unknown names, sizes, ranges, driver and image names.  Raises
    ``ValueError`` naming the parameter."""
    import inspect

    known = set(inspect.signature(overcommit).parameters) - {"progress", "plot"}
    for k in params:
        if k not in known:
            import difflib

            near = difflib.get_close_matches(k, sorted(known), n=1)
            raise ValueError(f"unknown parameter {k!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                             f" (known: {', '.join(sorted(known))})"))
    defaults = {k: v.default for k, v in inspect.signature(overcommit).parameters.items()}
    p = {**defaults, **params}
    _check_args(p["containers"], p["no_space"], p["discard"], p["lifetime"], p["autoextend_threshold"],
                p["autoextend_percent"], p["min_free_space"], p["no_space_timeout"])
    try:
        check_block_size(p["block_size"])
    except ValueError as e:
        raise ValueError(f"block_size: {e}") from None
    for k in ("pool", "write_per_container"):
        parse_size(p[k], what=k)
    if p["metadata_size"] is not None:
        parse_size(p["metadata_size"], what="metadata_size")
    if isinstance(p["image"], str) and p["image"] not in ("debian-minbase", "debian-bookworm-minbase",
                                                          "scratch", "empty"):
        parse_size(p["image"], what="image")
    names = list(DRIVERS) if p["driver"] == "all" else (
        [p["driver"]] if isinstance(p["driver"], str) else list(p["driver"]))
    for d in names:
        if d not in DRIVERS:
            raise ValueError(f"driver {d!r}: one of {', '.join(DRIVERS)}")
    if isinstance(p["seed"], bool) or not isinstance(p["seed"], int) or p["seed"] < 0:
        raise ValueError(f"seed must be an integer >= 0, not {p['seed']!r}")

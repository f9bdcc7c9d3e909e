"""The byte accounting of :func:`thinp.compare`'s table, the device profiles
the timing model runs on, and the published findings the comparison is
tested against.

The drivers count what they do (bytes written, bytes copied up whole-file,
bytes copied by block CoW, branch probes, pages cached); :func:`estimate`
turns those counts into the table's byte and ratio columns, with the few
documented and overridable constants of :class:`CostConstants`:

``disk_used_bytes``, ``disk_data_bytes``, ``disk_metadata_bytes``
    what the driver allocated on its device(s), metadata counted once;
``bytes_written``, ``copy_up_bytes``, ``cow_bytes``, ``zeroing_bytes``
    device writes, and the part of them that whole-file copy-up, block CoW
    and zeroing of new blocks caused;
``write_amplification``
    bytes written to the device by the workload's phases / bytes the
    containers asked to write (``app_bytes_written`` from
    :func:`thinp.workloads.run`, the same for every driver; when a run does
    not report it, the device bytes that were not copy-up/CoW copies);
``page_cache_bytes``, ``page_cache_miss_bytes``, ``page_cache_hit_bytes``
    from the timing model's simulated page cache (:func:`page_cache_columns`,
    the same LRU the read times were priced with): the memory the
    containers' reads occupy in it -- one copy of an image file's pages
    where the driver shares them (overlay2, aufs, zfs' ARC), one per
    container where it does not (devicemapper, btrfs, vfs), at most the
    cache's ``timing.cache_bytes`` -- and the bytes of reads that missed
    and hit, inside a container as well as across containers.

Times are not priced here: every ``sim_*`` column comes from the concurrent
timing model (:mod:`thinp.timing`), which replays the run's operation log as
processes on cores, locks, a device queue and an LRU page cache, with the
constants and sources of :class:`thinp.timing.TimingConstants`.

:data:`DEVICES` are the built-in device profiles; :func:`load_device` also
reads a user's device from TOML::

    [device]
    name = "my-ssd"
    read_latency_s = 80e-6
    write_latency_s = 30e-6
    discard_latency_s = 200e-6
    read_bandwidth = "500M"     # bytes per second, size strings allowed
    write_bandwidth = "450M"
    discard_bandwidth = "2G"

:data:`FINDINGS` lists the published results (Tarasov et al., "In Search of
the Ideal Storage Configuration for Docker Containers", IEEE FAS*W 2017;
Docker's storage-driver documentation) the comparison reproduces, with the
tests that assert them, and the ones it does not.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ThinpError
from .units import parse_size

PAGE = 4096
MiB = 1 << 20
GiB = 1 << 30


class CostModelError(ThinpError, ValueError):
    """A device profile or constants file that cannot be used (one line)."""


@dataclass(frozen=True)
class DeviceProfile:
    """Latency (seconds per request) and bandwidth (bytes per second) for
    reads, writes and discards of one device."""

    name: str
    read_latency_s: float
    write_latency_s: float
    discard_latency_s: float
    read_bandwidth: float
    write_bandwidth: float
    discard_bandwidth: float
    source: str = ""
    #: the transfers are copies one kernel thread makes on the host's own
    #: cores, one request at a time: a loop device over a file in memory
    #: (its worker's memcpy to and from the tmpfs file); the timing model
    #: then has a transfer hold a core as well as the device
    transfer_on_cpu: bool = False

    def read_s(self, nbytes: float, requests: float) -> float:
        return requests * self.read_latency_s + nbytes / self.read_bandwidth

    def write_s(self, nbytes: float, requests: float) -> float:
        return requests * self.write_latency_s + nbytes / self.write_bandwidth

    def discard_s(self, nbytes: float, requests: float) -> float:
        return requests * self.discard_latency_s + nbytes / self.discard_bandwidth


#: Built-in profiles.  Sources / rationale per profile in ``source``.
DEVICES: dict[str, DeviceProfile] = {
    "hdd": DeviceProfile(
        "hdd", 8e-3, 8e-3, 8e-3, 180 * MiB, 170 * MiB, 1e12,
        "7200 rpm SATA disk: ~4.2 ms half-rotation + ~4 ms average seek per random "
        "request; ~170-200 MB/s sequential (vendor datasheets, e.g. Seagate Exos 7E8); "
        "a disk without TRIM discards by dropping the request (bandwidth unbounded)"),
    "sata-ssd": DeviceProfile(
        "sata-ssd", 90e-6, 40e-6, 250e-6, 520 * MiB, 480 * MiB, 4 * GiB,
        "SATA 6 Gb/s SSD (e.g. Samsung 870 EVO datasheet: 560/530 MB/s sequential, "
        "~98K/88K random 4K IOPS at QD32, ~90 us QD1 read latency); TRIM is a "
        "non-queued command on most SATA drives, hence the higher discard latency"),
    "nvme": DeviceProfile(
        "nvme", 80e-6, 20e-6, 50e-6, 3000 * MiB, 2000 * MiB, 16 * GiB,
        "PCIe 3.0 x4 NVMe (e.g. Samsung 970 EVO Plus datasheet: 3500/3300 MB/s "
        "sequential; ~80 us QD1 4K read, ~20 us write into the SLC/DRAM cache); "
        "deallocate is cheap"),
    "ram": DeviceProfile(
        "ram", 1e-6, 1e-6, 1e-6, 10 * GiB, 8 * GiB, 100 * GiB,
        "brd/tmpfs-backed device: ~1 us per request of kernel block-layer "
        "overhead, memcpy bandwidth ~10 GB/s"),
}

_DEVICE_FIELDS = ("read_latency_s", "write_latency_s", "discard_latency_s",
                  "read_bandwidth", "write_bandwidth", "discard_bandwidth")


def toml_load(path) -> dict:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CostModelError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise CostModelError(f"{path}: not valid TOML: {e}") from None


def load_device(spec) -> DeviceProfile:
    """A built-in profile by name, a :class:`DeviceProfile`, or a TOML file
    with a ``[device]`` table (every field of :class:`DeviceProfile` except
    ``name``/``source`` required; bandwidths accept size strings)."""
    if isinstance(spec, DeviceProfile):
        return spec
    s = str(spec)
    if s in DEVICES:
        return DEVICES[s]
    if not s.endswith(".toml"):
        raise CostModelError(f"unknown device {s!r} (built-in: {', '.join(DEVICES)}; or a .toml file)")
    data = toml_load(s)
    table = data.get("device")
    if not isinstance(table, dict):
        raise CostModelError(f"{s}: no [device] table")
    unknown = sorted(set(table) - set(_DEVICE_FIELDS) - {"name", "source", "transfer_on_cpu"})
    if unknown:
        raise CostModelError(f"{s}: unknown key device.{unknown[0]} = {table[unknown[0]]!r}")
    vals = {}
    for k in _DEVICE_FIELDS:
        if k not in table:
            raise CostModelError(f"{s}: missing key device.{k}")
        v = table[k]
        try:
            v = float(parse_size(v)) if isinstance(v, str) else float(v)
        except (ValueError, ThinpError):
            raise CostModelError(f"{s}: bad value device.{k} = {v!r}") from None
        if not v > 0 and not (k.endswith("latency_s") and v == 0):
            raise CostModelError(f"{s}: bad value device.{k} = {table[k]!r} (must be > 0)")
        vals[k] = v
    on_cpu = table.get("transfer_on_cpu", False)
    if not isinstance(on_cpu, bool):
        raise CostModelError(f"{s}: bad value device.transfer_on_cpu = {on_cpu!r} (want true or false)")
    return DeviceProfile(name=str(table.get("name", s)), source=str(table.get("source", s)),
                         transfer_on_cpu=on_cpu, **vals)


def _per_driver(**kw) -> dict:
    return dict(kw)


def _constant(path, key, like, v):
    """``v`` from a constants file as the type of the default ``like``;
    a bad value names the file and the key."""
    try:
        if isinstance(like, bool):
            if not isinstance(v, bool):
                raise ValueError("want true or false")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError("not a number")
        if isinstance(like, int) and not isinstance(like, bool) and isinstance(v, str):
            out = parse_size(v)
        else:
            out = type(like)(v)
        if isinstance(out, (int, float)) and not (out >= 0 and out != float("inf")):
            raise ValueError("want a finite number >= 0")
        return out
    except (ValueError, TypeError) as e:
        raise CostModelError(f"{path}: constants.{key} = {v!r}: {e}") from None


#: constants removed when the timing model (thinp.timing) took over every
#: time column (the old order-of-magnitude time estimates) and the page-cache
#: columns (``cache_bytes``): where each one's role went, for the one-line
#: error a stale constants file gets
MOVED_TO_TIMING = {
    "merge_bytes": "timing.merge_bytes", "page_hit_s": "timing.page_hit_s", "probe_s": "timing.probe_s",
    "commit_writes": "timing.journal_commit_writes", "commits_per_create": "timing.start_s",
    "create_s": "timing.start_s", "activate_s": "timing.start_s", "mount_s": "timing.start_s",
    "remove_s": "timing.remove_s", "discards_on_remove": "timing.remove_s",
    "request_bytes": "each logged operation's own requests",
    "random_write_fraction": "each logged operation's own requests",
    "sequential_latency_fraction": "the simulated device queue (timing.queue_depth)",
    "shares_page_cache": "the drivers' page-cache keys (thinp.drivers.pagecache)",
    # the page-cache columns come from the timing model's LRU, of its size
    "cache_bytes": "timing.cache_bytes",
}


@dataclass(frozen=True)
class CostConstants:
    """The constants of the byte accounting, each with its source.

    Per-driver tables map a driver name to a value; a driver missing from a
    table uses ``"default"``.  Override with ``dataclasses.replace`` or
    ``CostConstants.from_toml(path)`` (a ``[constants]`` table with the same
    names; per-driver tables as TOML sub-tables)."""

    #: dm-thin zeroes a newly provisioned block a write does not cover fully
    #: unless ``skip_block_zeroing``; Docker's devicemapper driver sets
    #: ``skip_block_zeroing`` (moby daemon/graphdriver/devmapper), so False.
    zeroes_new_blocks: dict = field(default_factory=lambda: _per_driver(default=False))
    #: the driver's ``physical_bytes`` already hold its ``metadata_bytes``:
    #: union drivers (one ext4/xfs: physical is the device's allocation,
    #: metadata the part that is not file data), btrfs and zfs (their trees
    #: live on the same device).  devicemapper keeps pool metadata on its own
    #: device (the ``metadata`` loop file), outside ``physical_bytes`` (the
    #: ``data`` file).  ``disk_used_bytes`` counts metadata once either way.
    metadata_in_physical: dict = field(default_factory=lambda: _per_driver(
        default=True, devicemapper=False))

    def get(self, table: str, driver: str):
        t = getattr(self, table)
        return t.get(driver, t.get("default"))

    @classmethod
    def from_toml(cls, path) -> "CostConstants":
        data = toml_load(path).get("constants", {})
        names = {f.name for f in dataclasses.fields(cls)}
        base = cls()
        kw = {}
        for k, v in data.items():
            if k not in names:
                where = MOVED_TO_TIMING.get(k)
                hint = f" (no longer a byte-accounting constant; the timing model's {where} took its role)" \
                    if where else ""
                raise CostModelError(f"{path}: unknown key constants.{k} = {v!r}{hint}")
            cur = getattr(base, k)
            if isinstance(cur, dict):
                if not isinstance(v, dict):
                    raise CostModelError(f"{path}: constants.{k} must be a table of driver = value")
                like = next(iter(cur.values()), 0.0)
                kw[k] = {**cur, **{d: _constant(path, f"{k}.{d}", like, x) for d, x in v.items()}}
            else:
                kw[k] = _constant(path, k, cur, v)
        return dataclasses.replace(base, **kw)


#: The published findings the comparison reproduces, through the timing
#: model's simulated columns (``sim_*``) and the byte accounting, each asserted
#: in ``tests/compare/test_cost.py``, ``tests/timing/test_model.py`` or
#: ``tests/fs/test_writeback.py``; and the ones it does not.
FINDINGS = {
    "reproduced": [
        "Tarasov 2017: devicemapper container start (writable-layer setup) is slower than aufs/overlay2 "
        "(sim_start_s, more than 3x on nvme and hdd)",
        "Tarasov 2017: devicemapper read workloads cost N page-cache copies (no shared page cache), "
        "overlay2/aufs one (page_cache_bytes, from the timing model's LRU), and their steps take longer "
        "(sim_steps_s)",
        "Tarasov 2017 / Docker overlayfs docs: the first write to a big image file is expensive on "
        "aufs/overlay2 (whole-file copy-up inside the write call) and cheap on devicemapper/btrfs (block "
        "CoW; devicemapper's at writeback) (sim_first_write_s, more than 10x on nvme, sata-ssd and hdd)",
        "Tarasov 2017 / Docker vfs docs: vfs copies the whole image per container (disk used, bytes "
        "written and start time grow with image size x containers)",
        "Tarasov 2017: devicemapper's writable layer is slow to destroy: a workload that removes its "
        "containers spends more than 5x as long in its rm phase on devicemapper as on overlay2, aufs and "
        "vfs (sim_phases)",
        "Docker aufs docs: lookups cost grows with the number of layers (lookup_probes)",
        "Docker overlayfs docs: N containers reading one image file share its page cache on overlay2 (one miss, then hits, within a container and across) and miss once per container on devicemapper (thinp.timing's LRU over the drivers' page-cache keys)",
        "moby's devicemapper DeviceSet lock: devicemapper container starts serialize, so N started at once take about N times one",
        "the Linux page cache: small appends coalesce into dirty pages on every filesystem, so 5-byte appends reach the device one page per writeback on ext4 and xfs alike (devicemapper's xfs and vfs wrote 4 KiB per append before)",
    ],
    "not_reproduced": [
        "Tarasov 2017's small-file slowdown on devicemapper beyond setup/teardown: in the timing model the "
        "steps of many-small-files take about as long per container on devicemapper as on overlay2 "
        "(sim_steps_s 15 ms against 17 ms at scale 0.1); devicemapper is slower there only through its "
        "start and removal",
        "absolute times: the timing constants are published figures from other hosts (loop-lvm, a cloud "
        "VM, a kernel build) or estimates, each with its source in thinp.timing.SOURCES, not fits to the "
        "paper's testbed",
        "Tarasov's many-threads curves and aufs' lock scalability as measured: thinp.timing now "
        "simulates processes on cores, the locks each driver's path holds and the device queue, with "
        "its CPU constants from one machine's thinp calibrate, and thinp validate timing still misses "
        "its targets there (the kept quiet run, 9 interleaved runs per cell on 2 vCPUs, each driver's "
        "run between two overlay2 runs: 8 of the 9 case/N groups whose measured order is decided "
        "ordered the same, 95 of 98 decided driver pairs, time relative to overlay2 within 1.5x in 44 "
        "of 54 rows, 6 noisy rows within noise and 4 missed: zfs-fuse's small appends at N = 16 and "
        "its tree at N = 1, vfs's small reads and start at N = 1; on three earlier quiet runs 9 of 10, "
        "9 of 10 and 8 of 8 decided groups and 2, 1 and 1 misses; README: Timing against the real "
        "kernel)",
        "devicemapper's discard at removal (dm.blkdiscard): a removal costs a fixed remove_s, not a "
        "discard of the container's bytes",
        "filesystem-internal effects below the drivers' counts (ext4 vs xfs journalling, btrfs "
        "fragmentation over time)",
    ],
}


def _flat_steps(d: dict) -> dict:
    """A per-container entry as flat metric deltas of its steps:
    ``thinp.workloads.run`` nests them (``{"container": i, "create": {...},
    "steps": {...}}``); a flat dict of deltas is taken as it is."""
    if isinstance(d.get("steps"), dict):
        return d["steps"]
    return d


#: the columns :func:`page_cache_columns` gives
PAGE_CACHE_COLUMNS = ("page_cache_bytes", "page_cache_miss_bytes", "page_cache_hit_bytes")


def page_cache_columns(report, cache_bytes: int) -> dict:
    """The page-cache columns from a :class:`thinp.timing.TimingReport`: the
    simulated LRU (of ``cache_bytes``, the timing constants' ``cache_bytes``)
    over the drivers' page-cache keys that priced the run's reads.

    ``page_cache_miss_bytes`` / ``page_cache_hit_bytes`` are the pages the
    containers' reads missed and hit, in the order the simulated processes
    made them.  ``page_cache_bytes`` is the memory those reads occupy in the
    cache: every miss enters one page, and the LRU evicts only to stay
    within its capacity (it drops nothing when a container goes away), so
    this is the missed pages up to the capacity -- the cache's size at the
    end of the run, which is also its peak."""
    miss = int(report.miss_pages) * PAGE
    return {
        "page_cache_bytes": float(min(miss, max(int(cache_bytes) // PAGE, 1) * PAGE)),
        "page_cache_miss_bytes": float(miss),
        "page_cache_hit_bytes": float(int(report.hit_pages) * PAGE),
    }


def estimate(driver: str, metrics: dict, *, per_container=None, phases=None, containers=None,
             device=None, constants: CostConstants | None = None) -> dict:
    """The byte and ratio columns for one driver run (see the module docstring).

    Every count must be read after :meth:`thinp.Engine.sync` (as
    :func:`thinp.workloads.run` reads them): a mounted filesystem's delayed
    data has not reached the device before.

    ``metrics`` is :meth:`thinp.Engine.metrics` at the end of the run;
    ``phases`` the metric deltas per phase (``"containers_create"``, then
    ``"steps"`` and any other phase -- ``"commit"``, ``"diff"``,
    ``"export"``, ``"rm"`` -- counted as the workload's work; missing phases
    count as empty); ``per_container`` the deltas per container, flat or
    nested as ``{"create": {...}, "steps": {...}}`` (used for the container
    count and the steps when no phases are given).  The page-cache columns
    are not here: :func:`page_cache_columns` reads them from the timing
    model's report.  ``device`` is accepted for compatibility and unused: bytes do
    not depend on the device."""
    k = constants or CostConstants()
    phases = phases or {}
    per_container = [_flat_steps(d) for d in (per_container or [])]
    n = containers or len(per_container) or int(metrics.get("containers", 0) or 0) or 1
    # the workload's own work: every phase but loading the image and
    # creating the containers (thinp.workloads.run files commit, diff,
    # export and rm steps under their own phase names)
    work = [v for name, v in phases.items()
            if name not in ("image_load", "containers_create", "error") and isinstance(v, dict)]
    steps = {}
    for d in work or per_container:
        for m, v in d.items():
            if isinstance(v, (int, float)):
                steps[m] = steps.get(m, 0) + v

    def g(d, m):
        return float(d.get(m, 0) or 0)

    cu_bytes, cow_bytes = g(steps, "copy_up_bytes"), g(steps, "cow_bytes")
    w_bytes = g(steps, "bytes_written")
    own_bytes = max(w_bytes - cu_bytes - cow_bytes, 0.0)
    zero_bytes = 0.0
    if k.get("zeroes_new_blocks", driver):
        zero_bytes = max(g(steps, "physical_bytes") - own_bytes, 0.0)
    # what the containers asked to write: counted by thinp.workloads.run
    # (``app_bytes_written``, the same on every driver); without it, the
    # device bytes that were not copies
    asked = g(steps, "app_bytes_written") if "app_bytes_written" in steps else own_bytes
    wa = (w_bytes / max(asked, 1.0)) if asked else float("nan")
    phys = float(metrics.get("physical_bytes", 0) or 0)
    meta = float(metrics.get("metadata_bytes", 0) or 0)
    inside = k.get("metadata_in_physical", driver)
    return {
        "disk_data_bytes": max(phys - meta, 0.0) if inside else phys,
        "disk_metadata_bytes": meta,
        "disk_used_bytes": max(phys, meta) if inside else phys + meta,
        "bytes_written": float(metrics.get("bytes_written", 0) or 0),
        "copy_up_bytes": cu_bytes,
        "cow_bytes": cow_bytes,
        "zeroing_bytes": zero_bytes,
        "lookup_probes": g(steps, "lookup_probes"),
        "write_amplification": wa,
        "containers": float(n),
    }

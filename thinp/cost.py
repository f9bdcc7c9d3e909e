"""A cost model: each driver's counts (:data:`thinp.drivers.METRIC_KEYS`) turned
into seconds and bytes on a device.

The drivers count what they do (bytes written, bytes copied up whole-file,
bytes copied by block CoW, branch probes, mounts, creates, pages cached); the
model prices those counts on a :class:`DeviceProfile` with the named,
documented and overridable constants of :class:`CostConstants`.

Estimates (:func:`estimate`, one dict per driver run):

``start_time_s``
    container create + mount: the driver's fixed create/activate/mount costs
    (:attr:`CostConstants.create_s`, ``activate_s``, ``mount_s``) plus the
    bytes the create phase wrote per container (vfs copies the whole image
    here), priced as sequential merged requests, plus metadata commits.
``first_write_s``
    time to the first write of a file that came from the image: one 4 KiB
    write plus the copy it forces -- on aufs/overlay/overlay2 the whole file
    (``copy_up_bytes / copy_up_count``), on devicemapper/btrfs/zfs one chunk
    (``cow_bytes / cow_count``), read then written, plus a metadata commit.
``workload_s_per_container``
    the steps phase per container: its writes (random requests, with
    sequential merging of contiguous bytes up to :attr:`merge_bytes`), its
    copies, its lookups (``lookup_probes`` x :attr:`probe_s`), its page-cache
    misses and hits.
``teardown_s``
    ``docker rm`` of one container: two layer removals
    (:attr:`CostConstants.remove_s`) plus, where the driver discards on
    removal (devicemapper's ``dm.blkdiscard``), a discard of its bytes.
``write_amplification``
    bytes written to the device by the workload's phases / bytes the
    containers asked to write (``app_bytes_written`` from
    :func:`thinp.workloads.run`, the same for every driver; when a run does
    not report it, the device bytes that were not copy-up/CoW copies).
``page_cache_bytes``
    page-cache memory for what the containers read (the driver's count),
    capped at :attr:`cache_bytes`.

Published findings the constants are chosen to reproduce (see
:data:`FINDINGS` and ``tests/compare/test_cost.py``):

* Tarasov et al., "In Search of the Ideal Storage Configuration for Docker
  Containers", IEEE FAS*W 2017 (AMLCS): devicemapper is slower on
  small-file and read workloads because its writable layer is slow to set up
  and destroy (a thin snapshot, a dm table load, an fs mount, and a discard at
  removal) and because every container is its own block device, so the page
  cache holds one copy of each image file per container; whole-file copy-up
  makes the first write to a big file expensive on aufs and overlay2; vfs
  copies the whole image per container.
* Docker's storage-driver documentation (docs.docker.com/engine/storage/drivers/,
  the per-driver pages' performance sections; paraphrased here, and the
  overlayfs page checked against its current text):

  - ``overlayfs-driver``: OverlayFS supports page-cache sharing -- several
    containers reading one file share one page-cache entry, which makes
    overlay2 memory-efficient for dense hosts; the copy-up on a container's
    first write to a file adds latency to that write, especially for large
    files, and later writes do not copy again; lookups can cost more in
    images with many layers.
  - ``aufs-driver``: the same whole-file copy-up, and searching many layers
    for a file costs more with deep images.
  - ``device-mapper-driver``: block-level thin provisioning and snapshots
    (64 KiB allocation), so a write to a big file copies one block, not the
    file; each container is its own thin device with its own filesystem,
    so nothing is shared in the page cache; allocate-on-demand costs on
    first writes; ``dm.blkdiscard`` (default on) discards at removal.
  - ``btrfs-driver`` / ``zfs-driver``: block/extent/record CoW like
    devicemapper; zfs's ARC caches physical blocks shared by clones, btrfs
    caches per subvolume inode.
  - ``vfs-driver``: no copy-on-write; every layer is a full copy of the one
    below, so disk use and creation time grow with image size.

Every constant is overridable: ``estimate(..., constants=CostConstants(mount_s=
{...}))``, ``CostConstants.from_toml(path)`` or :func:`load_device` for a
user's device in TOML::

    [device]
    name = "my-ssd"
    read_latency_s = 80e-6
    write_latency_s = 30e-6
    discard_latency_s = 200e-6
    read_bandwidth = "500M"     # bytes per second, size strings allowed
    write_bandwidth = "450M"
    discard_bandwidth = "2G"
"""
from __future__ import annotations

import dataclasses
import math
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
    unknown = sorted(set(table) - set(_DEVICE_FIELDS) - {"name", "source"})
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
    return DeviceProfile(name=str(table.get("name", s)), source=str(table.get("source", s)), **vals)


def _per_driver(**kw) -> dict:
    return dict(kw)


def _constant(path, key, like, v):
    """``v`` from a constants file as the type of the default ``like``;
    a bad value names the file and the key."""
    try:
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


@dataclass(frozen=True)
class CostConstants:
    """Every constant of the model, with its source or rationale.

    Per-driver tables map a driver name to a value; a driver missing from a
    table uses ``"default"``.  Override with ``dataclasses.replace`` or
    ``CostConstants.from_toml(path)`` (a ``[constants]`` table with the same
    names; per-driver tables as TOML sub-tables)."""

    #: largest request after the block layer merges contiguous I/O.  Linux's
    #: ``max_sectors_kb`` default is 512 KiB for most SCSI/NVMe queues
    #: (Documentation/block/queue-sysfs.rst); sequential copies are priced as
    #: ``ceil(bytes / merge_bytes)`` requests.
    merge_bytes: int = 512 * 1024
    #: size of one application write/read request for random I/O (a page).
    request_bytes: int = PAGE
    #: page-cache size for the containers' reads.  1 GiB: a modest host's
    #: free memory; reads past it miss (LRU, as the kernel's active/inactive
    #: lists approximate).
    cache_bytes: int = 1 * GiB
    #: CPU cost of one page-cache hit (a 4 KiB copy_to_user ~ 1 us at a few GB/s).
    page_hit_s: float = 1e-6
    #: one branch probe of a path lookup: a dcache/lookup miss in one layer
    #: directory (~1 us of kernel CPU; overlayfs' ovl_lookup and aufs'
    #: lookup walk every lower layer until a hit -- Docker's aufs-driver
    #: page: "searching through many image layers" costs).
    probe_s: float = 1e-6
    #: flush requests per metadata commit (a journal commit or a dm-thin
    #: metadata commit ends with a FLUSH/FUA write: priced as that many writes
    #: of one page each).
    commit_writes: int = 2
    #: metadata commits per container create (ext4 journal or pool metadata).
    commits_per_create: dict = field(default_factory=lambda: _per_driver(
        default=1, devicemapper=2, btrfs=1, zfs=1))
    #: fixed CPU/kernel cost of creating one layer (create_ops), seconds.
    #: union drivers: mkdir + a few files (~0.5 ms); devicemapper: a
    #: ``create_snap`` pool message, suspending/resuming the origin, and
    #: udev sync for the new device (Docker's device-mapper-driver page and
    #: Tarasov et al. 2017: "slow writable-layer setup"), ~40 ms; btrfs: a
    #: ``subvolume snapshot`` ioctl with a transaction commit (~10 ms);
    #: zfs: ``zfs snapshot`` + ``zfs clone`` via the zfs CLI (~30 ms); vfs:
    #: mkdir only (its copy is priced from bytes written).
    create_s: dict = field(default_factory=lambda: _per_driver(
        default=0.5e-3, devicemapper=40e-3, btrfs=10e-3, zfs=30e-3, vfs=0.5e-3))
    #: activating a layer's device before the mount: devicemapper loads a
    #: dm table (``dmsetup create`` + udev settle, ~20 ms); others none.
    activate_s: dict = field(default_factory=lambda: _per_driver(
        default=0.0, devicemapper=20e-3))
    #: mounting a layer (mount_ops): overlay/aufs mount(2) with the lower
    #: dirs, ~1 ms (aufs more per branch: Docker's aufs page); devicemapper
    #: mounts an ext4/xfs on the thin device (journal replay check, ~15 ms);
    #: btrfs/zfs mount a subvolume/dataset (~5 ms); vfs bind-mount ~0.1 ms.
    mount_s: dict = field(default_factory=lambda: _per_driver(
        default=1e-3, aufs=2e-3, devicemapper=15e-3, btrfs=5e-3, zfs=5e-3, vfs=0.1e-3))
    #: whether the driver's page cache is shared across containers for the
    #: image's files (documentation only; the counts come from the driver's
    #: :class:`~thinp.drivers.pagecache.PageCache` keys).
    shares_page_cache: dict = field(default_factory=lambda: _per_driver(
        default=True, devicemapper=False, btrfs=False, vfs=False))
    #: dm-thin zeroes a newly provisioned block a write does not cover fully
    #: unless ``skip_block_zeroing``; Docker's devicemapper driver sets
    #: ``skip_block_zeroing`` (moby daemon/graphdriver/devmapper), so False.
    zeroes_new_blocks: dict = field(default_factory=lambda: _per_driver(default=False))
    #: latency of each follow-on request of one sequential stream (a
    #: copy-up or CoW copy merged into ``merge_bytes`` requests), as a
    #: fraction of the device's per-request latency: the first request pays
    #: the seek/rotation (HDD) or the full command latency; the rest stream
    #: (track-to-track ~0.5-1 ms vs ~8 ms average access on a 7200 rpm disk,
    #: hence 0.1; SSDs pipeline queued requests similarly).
    sequential_latency_fraction: float = 0.1
    #: removing one layer (``docker rm`` runs it for the container's layer
    #: and its init layer): union drivers rm -rf a small directory (~1 ms);
    #: devicemapper deactivates the device (udev sync), sends ``delete`` to
    #: the pool and commits its metadata (~30 ms; Tarasov et al. 2017 "slow
    #: ... destroy"); btrfs ``subvolume delete`` (~5 ms, the cleaner runs
    #: later); zfs ``zfs destroy`` (~20 ms).
    remove_s: dict = field(default_factory=lambda: _per_driver(
        default=1e-3, devicemapper=30e-3, btrfs=5e-3, zfs=20e-3))
    #: the driver discards a removed container's blocks: Docker's
    #: devicemapper ``dm.blkdiscard`` defaults to true (device-mapper-driver
    #: docs), so its teardown also pays a discard of the container's bytes.
    discards_on_remove: dict = field(default_factory=lambda: _per_driver(
        default=False, devicemapper=True))
    #: fraction of a driver's bytes_written that are random small requests
    #: (the rest merges sequentially).  Container steps (log appends, 4 KiB
    #: rewrites) are small; copies are sequential and priced separately.
    random_write_fraction: float = 1.0
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
                raise CostModelError(f"{path}: unknown key constants.{k} = {v!r}")
            cur = getattr(base, k)
            if isinstance(cur, dict):
                if not isinstance(v, dict):
                    raise CostModelError(f"{path}: constants.{k} must be a table of driver = value")
                like = next(iter(cur.values()), 0.0)
                kw[k] = {**cur, **{d: _constant(path, f"{k}.{d}", like, x) for d, x in v.items()}}
            else:
                kw[k] = _constant(path, k, cur, v)
        return dataclasses.replace(base, **kw)


#: The findings the model is tested to reproduce (``tests/compare/test_cost.py``),
#: and the ones it does not.
FINDINGS = {
    "reproduced": [
        "Tarasov 2017: devicemapper container start (writable-layer setup) is slower than aufs/overlay2",
        "Tarasov 2017: devicemapper read workloads cost N page-cache copies (no shared page cache), "
        "overlay2/aufs one",
        "Tarasov 2017 / Docker overlayfs docs: the first write to a big image file is expensive on "
        "aufs/overlay2 (whole-file copy-up) and cheap on devicemapper/btrfs (block CoW)",
        "Tarasov 2017 / Docker vfs docs: vfs copies the whole image per container (disk used, bytes "
        "written and start time grow with image size x containers)",
        "Docker aufs docs: lookups cost grows with the number of layers (lookup_probes)",
        "Docker overlayfs docs: N containers reading one image file share its page cache on overlay2 (one miss, then hits, within a container and across) and miss once per container on devicemapper (thinp.timing's LRU over the drivers' page-cache keys)",
        "moby's devicemapper DeviceSet lock: devicemapper container starts serialize, so N started at once take about N times one",
        "the Linux page cache: small appends coalesce into dirty pages on every filesystem, so 5-byte appends reach the device one page per writeback on ext4 and xfs alike (devicemapper's xfs and vfs wrote 4 KiB per append before)",
    ],
    "not_reproduced": [
        "Tarasov 2017's small-file slowdown on devicemapper beyond setup/teardown: the steps of "
        "many-small-files cost about the same per container on devicemapper as on overlay2 (the "
        "model prices blocks written; dm is slower there only through start/teardown)",
        "absolute times: the constants are order-of-magnitude device and kernel costs, not fits "
        "to the paper's testbed",
        "Tarasov's many-threads curves and aufs' lock scalability as measured: thinp.timing now "
        "simulates processes on cores, the locks each driver's path holds and the device queue, but "
        "its CPU constants are estimates or one machine's thinp calibrate, and thinp validate timing "
        "misses its targets here (the same driver ranking in 4 of 18 case/N groups, time relative "
        "to overlay2 within 1.5x in 24 of 54 rows; README: Timing against the real kernel)",
        "devicemapper teardown (discard at removal) enters only when a workload removes containers",
        "filesystem-internal effects below the drivers' counts (ext4 vs xfs journalling, btrfs "
        "fragmentation over time)",
    ],
}


def _requests(nbytes: float, merge: int) -> float:
    return math.ceil(nbytes / merge) if nbytes > 0 else 0


def _seq_requests(nbytes: float, k: "CostConstants") -> float:
    """Latency-weighted requests of one sequential stream: the first pays
    full latency, the follow-on merged requests ``sequential_latency_fraction``."""
    r = _requests(nbytes, k.merge_bytes)
    return 0 if r == 0 else 1 + (r - 1) * k.sequential_latency_fraction


def _flat_steps(d: dict) -> dict:
    """A per-container entry as flat metric deltas of its steps:
    ``thinp.workloads.run`` nests them (``{"container": i, "create": {...},
    "steps": {...}}``); a flat dict of deltas is taken as it is."""
    if isinstance(d.get("steps"), dict):
        return d["steps"]
    return d


def estimate(driver: str, metrics: dict, *, per_container=None, phases=None, containers=None,
             device="nvme", constants: CostConstants | None = None) -> dict:
    """Seconds and bytes for one driver run (see the module docstring).

    Every count must be read after :meth:`thinp.Engine.sync` (as
    :func:`thinp.workloads.run` reads them): the model prices what reached the
    device, and a mounted filesystem's delayed data has not yet.

    ``metrics`` is :meth:`thinp.Engine.metrics` at the end of the run;
    ``phases`` the metric deltas per phase (``"containers_create"``, then
    ``"steps"`` and any other phase -- ``"commit"``, ``"diff"``,
    ``"export"``, ``"rm"`` -- counted as the workload's work; missing phases
    count as empty); ``per_container`` the deltas per container, flat or
    nested as ``{"create": {...}, "steps": {...}}`` (used for the container
    count, the page-cache misses per container, and the steps when no
    phases are given)."""
    dev = load_device(device)
    k = constants or CostConstants()
    phases = phases or {}
    per_container = [_flat_steps(d) for d in (per_container or [])]
    n = containers or len(per_container) or int(metrics.get("containers", 0) or 0) or 1
    create = phases.get("containers_create") or {}
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

    # ---- container start: create + activate + mount + what create wrote
    create_ops = g(create, "create_ops") / n if create else 2.0   # init layer + rw layer
    mount_ops = g(create, "mount_ops") / n if create else 1.0
    mount_ops = max(mount_ops, 1.0)   # a started container is mounted once
    c_bytes = g(create, "bytes_written") / n
    commits = k.get("commits_per_create", driver) * max(create_ops, 1.0)
    start = (create_ops * k.get("create_s", driver)
             + k.get("activate_s", driver)
             + mount_ops * k.get("mount_s", driver)
             + dev.write_s(c_bytes, _seq_requests(c_bytes, k))
             + dev.read_s(c_bytes, _seq_requests(c_bytes, k)) * (driver == "vfs")
             + dev.write_s(commits * k.commit_writes * PAGE, commits * k.commit_writes))

    # ---- copies forced by writes: whole-file copy-up or block/extent CoW
    cu_bytes, cu_n = g(steps, "copy_up_bytes"), g(steps, "copy_up_count")
    cow_bytes, cow_n = g(steps, "cow_bytes"), g(steps, "cow_count")
    copy_bytes, copy_n = cu_bytes + cow_bytes, cu_n + cow_n
    per_copy = copy_bytes / copy_n if copy_n else 0.0
    one_copy_req = _seq_requests(per_copy, k)
    first_write = (dev.write_s(k.request_bytes, 1)
                   + dev.read_s(per_copy, one_copy_req) + dev.write_s(per_copy, one_copy_req)
                   + dev.write_s(k.commit_writes * PAGE, k.commit_writes))

    # ---- workload (steps) per container
    w_bytes = g(steps, "bytes_written")
    # the counts are taken after ``sync`` (thinp.workloads.run syncs before
    # every reading), so delayed allocation is already in bytes_written
    own_bytes = max(w_bytes - copy_bytes, 0.0)
    own_req = max(own_bytes * k.random_write_fraction / k.request_bytes, 0.0) + \
        _requests(own_bytes * (1 - k.random_write_fraction), k.merge_bytes)
    copy_req = copy_n * max(one_copy_req, 1) if copy_n else 0
    zero_bytes = 0.0
    if k.get("zeroes_new_blocks", driver):
        zero_bytes = max(g(steps, "physical_bytes") - own_bytes, 0.0)
    write_s = (dev.write_s(own_bytes, own_req) + dev.read_s(copy_bytes, copy_req)
               + dev.write_s(copy_bytes, copy_req) + dev.write_s(zero_bytes, _requests(zero_bytes, k.merge_bytes)))
    probes_s = g(steps, "lookup_probes") * k.probe_s
    # page cache: each container's new pages are misses; its working set is
    # the largest any container read (the first reader of a shared file);
    # when the cache is smaller than what all containers cached, the
    # shared part misses in proportion.
    pcs = [float(d.get("page_cache_bytes", 0) or 0) for d in per_container] or \
        [g(steps, "page_cache_bytes") / n] * n
    total_cached = float(metrics.get("page_cache_bytes", 0) or 0) or sum(pcs)
    working_set = max(pcs) if pcs else 0.0
    overflow = max(0.0, 1.0 - k.cache_bytes / total_cached) if total_cached else 0.0
    miss_bytes = sum(p + (working_set - p) * overflow for p in pcs)
    hit_bytes = max(working_set * len(pcs) - miss_bytes, 0.0)
    read_s = dev.read_s(miss_bytes, miss_bytes / k.request_bytes) + hit_bytes / PAGE * k.page_hit_s
    workload = (write_s + probes_s + read_s) / n

    # what the containers asked to write: counted by thinp.workloads.run
    # (``app_bytes_written``, the same on every driver); without it, the
    # device bytes that were not copies
    asked = g(steps, "app_bytes_written") if "app_bytes_written" in steps else own_bytes
    wa = (w_bytes / max(asked, 1.0)) if asked else float("nan")
    phys = float(metrics.get("physical_bytes", 0) or 0)
    meta = float(metrics.get("metadata_bytes", 0) or 0)
    # ---- teardown: remove the container's two layers (+ discard its bytes)
    own_phys = max(g(steps, "physical_bytes") / n, 0.0)
    teardown = 2 * k.get("remove_s", driver)
    if k.get("discards_on_remove", driver):
        teardown += dev.discard_s(own_phys, max(_requests(own_phys, k.merge_bytes), 1))

    return {
        "disk_data_bytes": max(phys - meta, 0.0) if k.get("metadata_in_physical", driver) else phys,
        "disk_metadata_bytes": meta,
        "disk_used_bytes": max(phys, meta) if k.get("metadata_in_physical", driver) else phys + meta,
        "bytes_written": float(metrics.get("bytes_written", 0) or 0),
        "copy_up_bytes": cu_bytes,
        "cow_bytes": cow_bytes,
        "zeroing_bytes": zero_bytes,
        "lookup_probes": g(steps, "lookup_probes"),
        "start_time_s": start,
        "first_write_s": first_write,
        "teardown_s": teardown,
        "workload_s_per_container": workload,
        "write_amplification": wa,
        "page_cache_bytes": min(total_cached, float(k.cache_bytes)),
        "page_cache_miss_bytes": miss_bytes,
        "page_cache_hit_bytes": hit_bytes,
        "containers": float(n),
    }

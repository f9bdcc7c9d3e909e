"""The timing model: an :class:`~thinp.timing.oplog.OpLog` replayed as
concurrent processes on a machine (:mod:`thinp.timing.sim`).

Each logged operation becomes stages:

1. the locks its driver's kernel path holds (:func:`locks_for`), taken in a
   fixed order;
2. CPU on one of the machine's cores: the system call's cost on this
   driver's path (:attr:`TimingConstants.cpu_s` plus the union layer's
   :attr:`~TimingConstants.layer_cpu_s`), a per-page copy cost, a cost per
   branch probe of the lookup, per page-cache hit; then the time the
   process sleeps on the driver's daemon (zfs-fuse's round trips,
   :attr:`~TimingConstants.daemon_wait_share`), holding no core, and the
   round trips' wake-ups of idle cores, CPU paid only when a core is idle
   (:attr:`~TimingConstants.idle_wake_s`);
3. the device: page-cache misses as reads, with readahead merging a run of
   missed pages into requests of :attr:`~TimingConstants.readahead_bytes`
   (asynchronous: past the first window, the reader's copy overlaps the
   transfer of the next; a driver's checksum verification per page is CPU
   of its worker threads, on the cores beside the copy -- but on a loop
   device a share of btrfs' is the device worker's, after each transfer
   (:attr:`~TimingConstants.verify_chain_share`), and the worker's copy of
   a page into the page cache costs :attr:`~TimingConstants.read_fill_s`);
   whole-file copy-up (read + write, synchronous: overlayfs fsyncs the copy);
   block CoW and provisioning on devicemapper through the pool's single
   worker; the bytes a ``sync``/``fsync`` writes back, with a journal
   commit;
4. the locks released.

The page cache is an LRU of :attr:`~TimingConstants.cache_bytes` over the
keys the driver chose (:mod:`thinp.drivers.pagecache`): one copy per inode on
overlay/aufs, per container on devicemapper/btrfs, per record on zfs, per
layer on vfs; hits count within a container as well as across containers,
in the order the simulated processes make them.

Every constant has its source or rationale in :data:`SOURCES`.  The CPU
costs are this model's estimates until ``thinp calibrate`` measures them
(issue #13, step 4): treat absolute seconds as order-of-magnitude, rankings
and contention shares as the model's answer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import posixpath
from collections import OrderedDict
from dataclasses import dataclass, field

from . import sim
from ..workloads.oplog import OpLog

PAGE = 4096
US = 1e-6

UNION = ("overlay2", "overlay", "aufs")


def _t(**kw):
    return dict(kw)


@dataclass(frozen=True)
class TimingConstants:
    """The timing model's constants (sources in :data:`SOURCES`)."""

    #: cores of the simulated machine
    cores: int = 4
    #: CPU seconds of one system call on a native ext4/xfs path, warm dcache
    cpu_s: dict = field(default_factory=lambda: _t(
        stat=0.8e-6, readlink=1.0e-6, readdir=3.0e-6, open=2.0e-6, read=1.0e-6,
        write=1.5e-6, create=10e-6, mkdir=12e-6, unlink=8e-6, rename=12e-6,
        setattr=3.0e-6, fsync=5e-6, sync=20e-6, exec=400e-6, commit=2e-3, diff=1e-3,
        export=1e-3, container_rm=1e-3))
    #: CPU per page copied to or from user space (4 KiB at ~8 GB/s memcpy)
    page_copy_s: float = 0.5e-6
    #: CPU per page-cache hit besides the copy (find_get_page, mark_accessed)
    page_hit_s: float = 0.2e-6
    #: extra CPU per operation on the driver's stacked path (the union layer's
    #: own inode/dentry/file indirection; btrfs/zfs checksumming and CoW
    #: bookkeeping per op)
    layer_cpu_s: dict = field(default_factory=lambda: _t(
        default=0.0, overlay2=0.6e-6, overlay=0.6e-6, aufs=2.5e-6, btrfs=1.5e-6,
        zfs=3.0e-6))
    #: extra CPU of one operation of a kind on the driver's path over ext4's,
    #: besides ``layer_cpu_s`` (which every operation pays), keyed
    #: ``"driver.kind"``: overlayfs opens a second (backing) file under
    #: overridden credentials for every open, and creates through the upper
    #: directory with its own lookups; btrfs' create/unlink update the
    #: subvolume's fs tree and inode refs
    layer_kind_s: dict = field(default_factory=lambda: _t(default=0.0, **{
        "overlay2.write": 1.3e-6, "overlay2.read": 1.5e-6, "overlay2.mkdir": 9.8e-6, "overlay2.readdir": 4.2e-6,
        "overlay.write": 1.3e-6, "overlay.read": 1.5e-6, "overlay.mkdir": 9.8e-6, "overlay.readdir": 4.2e-6,
        "btrfs.write": 2.3e-6}))
    #: share of one operation's CPU, per ``"driver.kind"``, that the
    #: driver's path runs under one lock for the whole filesystem (btrfs'
    #: fs-tree and delayed-inode locks; zfs-fuse's daemon, which serves
    #: every request of the pool): N processes doing that kind at once
    #: scale no further than that share allows.  Absent: 0 (ext4 and
    #: overlayfs scale with the cores)
    #: ``"driver.write.page"``: the same for a write that fills a whole
    #: new page, in place of ``"driver.write"``'s (a write of part of a
    #: page takes the two in proportion, :func:`write_serial_share`)
    serial_share: dict = field(default_factory=lambda: _t(default=0.0, **{"zfs.meta_miss": 1.0}))
    #: seconds, per ``"driver.kind"``, that a process which waited for the
    #: driver's one lock (``serial_share``) resumes after the holder let it
    #: go: the lock is a sleeping one (btrfs' tree locks, an rwsem), so each
    #: hand-over wakes the waiter and switches to it, and N processes at
    #: once get less done than one alone.  Absent: 0
    serial_handoff_s: dict = field(default_factory=lambda: _t(default=0.0))
    #: share of ``layer_kind_s["driver.kind"]`` that the process spends
    #: asleep, waiting for the driver's daemon rather than on a core:
    #: zfs-fuse serves every call by FUSE round trips to its daemon, whose
    #: listener threads (40 of them, fuse_listener.c) run the requests in
    #: parallel, and on an idle machine each round trip also waits for the
    #: woken thread's CPU to come out of idle.  That part holds no core, so
    #: N processes overlap it; the rest is CPU on the cores.  Absent: 0
    daemon_wait_share: dict = field(default_factory=lambda: _t(default=0.0))
    #: seconds of ``layer_kind_s["driver.kind"]`` that one operation of
    #: that kind costs only when it finds a core idle: zfs-fuse's round
    #: trips wake a daemon thread and then the caller, and on an idle
    #: (virtual) core each wake-up is an idle exit and an interrupt, where
    #: on a busy core the woken thread just takes its turn.  Paid as CPU
    #: when a core is free and none is waited for (:data:`sim.WAKE`), not
    #: when N processes keep every core busy.  Absent: 0.
    #: ``"driver.write.page"``: the same for a write that fills a whole new
    #: page, in place of ``"driver.write"``'s (a write of part of a page
    #: pays the two in proportion, :func:`write_wake_s`): on zfs-fuse a
    #: lone 4 KiB append cost no more than a lone 5-byte one, where with
    #: the cores busy it cost its new page's CPU more -- the page's work
    #: hides the wake-ups (``thinp calibrate``: zfs.append4k alone less
    #: with the cores busy)
    idle_wake_s: dict = field(default_factory=lambda: _t(default=0.0))
    #: CPU of a path's first lookup (a dentry and inode cache miss) on the
    #: driver's path besides the device read of its inode
    #: (:attr:`meta_read_bytes`): the filesystem's directory search and
    #: inode set-up; on zfs-fuse the FUSE LOOKUP, OPEN and GETATTR round
    #: trips to the daemon and its ZAP lookup.  Its share under the
    #: driver's one lock is ``serial_share["<driver>.meta_miss"]``; a
    #: process that needs a lookup another process has in flight waits for
    #: it (the kernel's in-lookup dentry)
    meta_miss_s: dict = field(default_factory=lambda: _t(default=0.0, zfs=60e-6))
    #: CPU per page a read brings into the page cache from the device
    #: (page allocation, page-cache and LRU insertion, the bio's setup and
    #: completion), on every driver
    page_miss_s: float = 0.1e-6
    #: extra CPU per page read from the device on the driver's path (btrfs
    #: verifies each block's crc32c in its end-io workers; zfs-fuse's
    #: daemon threads read the record, verify and copy it), paid before the
    #: pages are up to date; it runs on the cores, several readers' at once
    #: (the workers are a pool), and past the first readahead window it
    #: overlaps the device's transfer -- where the device's transfers are a
    #: worker's CPU, a driver of :data:`VERIFY_IN_COMPLETION` runs it on that
    #: worker after each transfer instead
    page_read_cpu_s: dict = field(default_factory=lambda: _t(default=0.0, btrfs=1.2e-6, zfs=0.6e-6))
    #: share of ``page_read_cpu_s`` that runs on the device worker's chain,
    #: after each transfer, where the device's transfers are a worker's CPU
    #: (:attr:`thinp.cost.DeviceProfile.transfer_on_cpu`); the rest runs on
    #: the cores beside the readers.  btrfs verifies a read in its end-io
    #: work, queued from the bio's completion (on a loop device the
    #: worker's): how much of it waits for the worker is the machine's,
    #: measured by ``thinp calibrate`` (its cold big reads by 1 and 4
    #: processes).  Absent: 0 (btrfs: 1, :data:`VERIFY_IN_COMPLETION`)
    verify_chain_share: dict = field(default_factory=lambda: _t(btrfs=1.0))
    #: CPU seconds per page the device's worker spends on a read that fills
    #: the page cache, where the device's transfers are a worker's CPU: a
    #: loop device copies each page of a buffered read into a freshly
    #: allocated page-cache page, slower than its 1 MiB O_DIRECT reads into
    #: one reused buffer (the device's ``read_bandwidth``).  The larger of
    #: the two prices a page-cache miss's transfer.  0: the bandwidth's
    read_fill_s: float = 0.0
    #: extra CPU per page written on the driver's path (btrfs crc32c and
    #: extent CoW, zfs checksum + compression check)
    page_write_cpu_s: dict = field(default_factory=lambda: _t(default=5e-6, btrfs=1.0e-6, zfs=1.2e-6))
    #: CPU of one branch probe of a path lookup (a negative dentry or a
    #: lookup in one lower directory)
    probe_s: dict = field(default_factory=lambda: _t(default=0.3e-6, aufs=0.9e-6))
    #: CPU of whole-file copy-up besides its I/O (open, xattrs, rename from
    #: the work dir)
    copy_up_cpu_s: dict = field(default_factory=lambda: _t(default=30e-6, aufs=60e-6))
    #: CPU per page copied by copy-up (a splice, page cache to page cache,
    #: and the copy's fsync)
    copy_up_page_s: float = 3.5e-6
    #: on a device whose transfers are a host thread's copies
    #: (:attr:`thinp.cost.DeviceProfile.transfer_on_cpu`: a loop device over
    #: a tmpfs file), the share of a copy-up's per-page cost -- its
    #: ``copy_up_page_s`` and its read and write transfers together -- that
    #: the device's one worker runs (the lower file's readahead and the
    #: upper copy's fsync writeback, copied by the loop worker, and the
    #: journal commit behind the fsync), not the copying process: N
    #: copy-ups at once queue for that one worker.  At least the transfers
    #: themselves
    copy_up_worker_share: float = 0.6
    #: dm-thin pool worker CPU per provisioned or CoW-broken block
    #: (btree insert, space-map update, bio remap)
    dm_worker_block_s: float = 8e-6
    #: dm-thin pool metadata commit on a flush (superblock + btree shadows)
    dm_commit_writes: int = 4
    #: btrfs extent-tree / zfs txg CPU per extent or record allocated
    alloc_extent_s: dict = field(default_factory=lambda: _t(default=0.0, btrfs=3e-6, zfs=4e-6))
    #: readahead window: a run of missed pages is read in requests this big
    readahead_bytes: int = 128 * 1024
    #: largest write request after the block layer merges
    merge_bytes: int = 512 * 1024
    #: page-cache capacity (LRU)
    cache_bytes: int = 1 << 30
    #: device queue depth (requests in flight)
    queue_depth: dict = field(default_factory=lambda: _t(default=32, hdd=4, ram=64))
    #: flush requests of one journal commit (descriptor + commit block)
    journal_commit_writes: int = 2
    #: container start on the driver besides its logged filesystem work:
    #: create (snapshot or mkdir), activate, mount -- CPU and waits of the
    #: daemon, udev and the kernel, seconds
    start_s: dict = field(default_factory=lambda: _t(
        default=2.5e-3, aufs=4e-3, overlay=2.5e-3, overlay2=2.5e-3, devicemapper=0.1,
        btrfs=25e-3, zfs=70e-3, vfs=1.5e-3))
    #: what each container start adds when N start at once, per driver
    #: (seconds): the part of a start that holds the driver's start lock
    #: (:data:`GLOBAL_LOCK`; the mount namespace for the union drivers).
    #: A start of ``start_s`` holds the lock for ``min(start_serial_s,
    #: start_s)`` and runs the rest beside the others; past ``start_s``,
    #: each start that waited resumes that much later (the waiter's wake-up
    #: and what the lock's hand-over redoes, :mod:`thinp.timing.sim`).
    #: Absent: the whole start holds it
    start_serial_s: dict = field(default_factory=lambda: _t())
    #: removing a container's two layers (``docker rm``)
    remove_s: dict = field(default_factory=lambda: _t(
        default=2e-3, devicemapper=0.09, btrfs=12e-3, zfs=45e-3))
    #: CPU per inode a vfs layer copy makes (create + copy of a small file)
    vfs_copy_inode_s: float = 22e-6
    #: a path's first lookup reads its inode (and, through a union, each
    #: branch probed) from the device: requests of this many bytes
    meta_read_bytes: int = 4096
    #: the engine's own part of ``docker run --rm`` (API round trips,
    #: containerd task create, runc create/start, network namespace) and of
    #: the stop + remove at its end, apart from the storage driver
    engine_run_s: float = 0.30
    engine_rm_s: float = 0.08
    #: how much longer a process's CPU stage runs when every other core is
    #: busy too (:mod:`thinp.timing.sim`'s ``busy_slowdown``): N processes
    #: that keep all the cores busy get less than ``cores`` times one
    #: process's work done.  0: they get all of it
    busy_slowdown: float = 0.0

    def get(self, table: str, key: str):
        t = getattr(self, table)
        return t.get(key, t.get("default"))

    @classmethod
    def from_toml(cls, path) -> "TimingConstants":
        """The defaults overridden by the ``[timing]`` table of a TOML file
        (the same names; per-kind and per-driver tables as sub-tables).
        Raises :class:`thinp.cost.CostModelError` naming the key."""
        from ..cost import CostModelError, toml_load

        data = toml_load(path).get("timing", {})
        if not isinstance(data, dict):
            raise CostModelError(f"{path}: [timing] must be a table")
        base = cls()
        kw = {}
        for key, v in data.items():
            if not hasattr(base, key) or key.startswith("_"):
                raise CostModelError(f"{path}: unknown key timing.{key} = {v!r}")
            cur = getattr(base, key)
            if isinstance(cur, dict):
                if not isinstance(v, dict):
                    raise CostModelError(f"{path}: timing.{key} must be a table of name = value")
                bad = [x for x in v.values() if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0]
                if bad:
                    raise CostModelError(f"{path}: bad value in timing.{key}: {bad[0]!r} (want a number >= 0)")
                kw[key] = {**cur, **{n: float(x) for n, x in v.items()}}
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or \
                        (key in ("cores",) and v < 1):
                    raise CostModelError(f"{path}: bad value timing.{key} = {v!r}")
                kw[key] = type(cur)(v)
        return dataclasses.replace(base, **kw)


#: Where each constant comes from.
SOURCES = {
    "cores": "the simulated host; 4 by default (a small server), set it to the machine's",
    "cpu_s": "order of magnitude of Linux system-call costs on a warm dcache (lmbench lat_syscall "
             "stat/open ~1-2 us; create/unlink of a small file ~10 us on ext4; fork+exec ~0.4 ms) -- "
             "estimates until `thinp calibrate` measures them",
    "page_copy_s": "copy_to_user/copy_from_user of 4 KiB at ~8 GB/s",
    "page_hit_s": "find_get_page + mark_page_accessed, ~0.2 us",
    "layer_cpu_s": (
        "aufs: Okajima, aufs' author, built a Linux kernel with make -j8, -j80 and -j800 on "
        "both (moby issue 20885, 2016): 183.8 s of system time on aufs against 136.2 s on "
        "overlayfs, 35% more at -j8 and at -j80, so a per-operation cost, not lock contention; "
        "the filesystem's share of that system time is not given: if about half, aufs' path "
        "costs ~70% more per operation than overlay's ~2.6 us (cpu_s ~2 us + 0.6 us), ~1.8 us "
        "more, so aufs 2.5 us. overlay/overlay2 0.6 us (ovl_* indirection, a second inode and "
        "file per op), btrfs 1.5 us, zfs 3 us (checksum and CoW bookkeeping per op): no "
        "published per-op figure found; estimates"),
    "layer_kind_s": "measured by `thinp calibrate` on a 2-vCPU AMD EPYC VM (2026-12-06, kernel 6.18, load "
                    "3-7; docs/timing/calibrate.toml): open/append/close (write), open/read/close (read; of 256 "
                    "small files in turn, calibrate's warm small reads, where measured: workloads read "
                    "many files, and one file read over and over costs less, 1-2 us on ext4, overlayfs "
                    "and btrfs, 13-16 us on zfs-fuse), "
                    "create+unlink, a depth-6 tree of new directories (mkdir), readdir through overlayfs "
                    "and in a btrfs snapshot, less the same on ext4 and less layer_cpu_s for each op the "
                    "runner logs for it (an append: 3 stats and a write), the least of 5 "
                    "runs of 1,000 ops each; kinds that came out at or below ext4's are left out. "
                    "overlayfs: ovl_open's backing file and ovl_override_creds per call, a directory's "
                    "opaque xattr",
    "serial_share": "`thinp calibrate`: the same per-op benchmarks run by 1 and by 4 processes at once "
                    "(each in its own file or directory): where 4 processes on C cores got less done per "
                    "second than C/4 of one process's rate by over 25%, the share of the one-process time "
                    "that 4 processes' time per operation shows serialized, min(t4, t1) / t1 (a lock held "
                    "for S of every t1 caps the rate at 1/S); ext4 came out below the margin, and overlayfs but for "
                    "its readdir (4 processes reading one directory). zfs.read: zfs-fuse's daemon serves "
                    "several readers one at a time: calibrate's cold small reads by 4 processes at once, "
                    "every process every file, took (p4 - p1) / 3 longer per file for each reader past "
                    "the first than 1 alone (2026-12-07 04:44: 135 us a file alone, 246 us by 4), the "
                    "share of a read (its CPU with the cores busy) that much is, at most 1. zfs.mkdir: "
                    "zfs-fuse's tree by 4 processes per directory (its files' serialized share taken off) "
                    "over the mkdir's CPU, the hold no longer than plain mkdirs by 4 at once took a "
                    "directory (kept calibration 2026-12-07 20:31 UTC: 62 us, where the tree by 4 took 119). "
                    "zfs.write.page: a 4 KiB append past a file's first record, held one at a time "
                    "(calibrate.zfs_append_first_record_fit): calibrate's 4 KiB appends by 4 at once, less "
                    "the surplus of their new files' first 32 appends (3.9x a later one: "
                    "scripts/probe_zfs_lone.py --split, 2026-12-08 01:32 UTC), as a share of the write's CPU; "
                    "validate's big appends took 39, 36 and 39 us an append by 1, 4 and 16 processes. "
                    "overlay2.mkdir / overlay.mkdir (and create, unlink where ext4's hold longer): "
                    "overlayfs makes them in its upper directory with ext4's own operation beneath "
                    "(fs/overlayfs/dir.c ovl_create_upper under the upper parent's lock), so they hold the "
                    "lock at least as long as vfs's (ext4's) fitted share does (calibrate.union_upper_serial_fit)",
    "serial_handoff_s": "`thinp calibrate`: where the same per-op benchmark run by 4 processes at once "
                        "took longer per operation than by 1 alone (t4 = p4 / 4 > t1: btrfs' create+unlink, "
                        "its tree of new directories and readdir; overlayfs' readdir), the difference t4 - "
                        "t1 per operation, which a lock held by one at a time (serial_share = 1) cannot "
                        "give: each hand-over of a sleeping lock wakes the waiter. On the quiet 2-vCPU VM "
                        "(2026-12-07 04:44 UTC) btrfs' tree: 31.6 us a directory alone, 37.4 us by 4 at "
                        "once (4.1 us a mkdir after the files' share); validate timing's tree at N = 16 "
                        "took 1.8x overlay2's there (1.7x in the interrupted second run)",
    "daemon_wait_share": "`thinp calibrate`: per kind of op on zfs-fuse, the wall time of one process's "
                         "open/append/close, open/read/close, create+unlink and readdir less the CPU time it "
                         "used, its own and the zfs-fuse daemon's (every thread's, /proc/PID/task/*/schedstat), "
                         "as a share of that kind's layer_kind_s. zfs-fuse serves FUSE requests with 40 "
                         "listener threads that take turns receiving and process in parallel "
                         "(src/zfs-fuse/fuse_listener.c, NUM_THREADS; the installed 0.7.0 daemon ran 124 "
                         "threads here); on the quiet 2-vCPU VM one process's "
                         "open/append/close took 92 us (calibrate) and 16 at once 484 us each (validate "
                         "timing's append-small: 60 us of the 2 cores per op); on the same VM at load 4 "
                         "(2026-12-07 00:05 UTC) one process's took 63-65 us of wall time and as much CPU, its "
                         "own and the daemon's (the busy vCPUs never idle): the rest of the quiet 92 us is "
                         "waiting for woken threads on idle vCPUs. Default 0: the kept calibration predates "
                         "the CPU measurement",
    "idle_wake_s": "`thinp calibrate`: per kind of op on zfs-fuse, one process's open/append/close, "
                   "open/read/close, create+unlink and readdir less the same with every core kept busy by "
                   "SCHED_IDLE spinners (which give way at once to any other thread, so no core is ever "
                   "idle and no wake-up leaves idle), less the share asleep (daemon_wait_share). On the "
                   "quiet 2-vCPU VM one process's open/append/close took 93 us of wall time and as much CPU, "
                   "its own and the daemon's (calibrate 2026-12-07 03:00 UTC), where 16 at once in "
                   "validate timing's append-small took 2 cores x 956 ms / 32,000 = 60 us each, and one "
                   "at load 4 (README: 00:05 UTC) 63-65 us: what a lone caller pays more is waking idle "
                   "cores. Default 0: calibrations before the busy measurement lack it",
    "meta_miss_s": "`thinp calibrate`'s cold small reads (256 files of 4 KiB in 4 directories read whole after "
                   "drop_caches, less the same reads warm, less the device reads the model prices for them: "
                   "an inode read and a data page each, 53 us on the kept loop device); zfs 60 us: zfs-fuse on a "
                   "2-vCPU AMD EPYC VM (2026-12-06 20:43 UTC, load 3-4), 7 runs in one clone: the first, the "
                   "clone's first lookups as in validate's read-small (a new clone per run), 160 us a file "
                   "against 48 us warm (median), 160 - 48 - 53 = 60 us; the later runs, whose files the "
                   "daemon had looked up before the caches were dropped, 90-157 us (so calibrate now reads "
                   "a new clone or snapshot each run); ext4 and btrfs came out within the device reads "
                   "(0); 4 processes reading their own quarter of the files took as long as 1 reading all "
                   "on zfs-fuse (serial_share zfs.meta_miss = 1), not on ext4. zfs: no device part is "
                   "taken off: zfs-fuse serves a page-cache miss from its ARC (max-arc-size = 100 MiB "
                   "in /etc/zfs/zfsrc here; drop_caches leaves it alone), which holds the files "
                   "calibrate has just written, so those cold reads read nothing from the device -- "
                   "where validate timing's do: its image writes 256 MiB of big files after the small "
                   "ones, which leaves them out of the ARC (calibrate now empties the ARC before each "
                   "cold run and takes the device part off). overlayfs, btrfs and zfs-fuse: what a cold "
                   "read takes over a warm one is ext4's times their ratio to ext4's measured file by "
                   "file, ext4's file i and theirs in turn (calibrate.cold_small_rel): one process's "
                   "cold small reads took 15-20 or 40-300 us a file as the shared machine's load let them "
                   "(2026-12-07 16:10 UTC, load 3-7; one page-cache miss and one sleep per file on every "
                   "driver, the reader's own CPU 14-17 us a file on ext4, overlayfs and btrfs alike), so "
                   "the kept btrfs figure, measured minutes after ext4's (24 against 59 us), priced "
                   "btrfs' lookups at 8 us against ext4's 43 where validate's read-small took as long on "
                   "both; file by file (the median read's cold over warm, 5 runs): at load 6 btrfs "
                   "1.20-1.44x ext4's, overlayfs 1.04-1.29x, zfs-fuse 2.0-3.8x; a whole calibrate at "
                   "load 5-11 (16:31 UTC) 1.06-1.88x, 1.16-1.37x and 0.73-2.31x (zfs-fuse's medians "
                   "may leave out its reads of metadata blocks, once per many files)",
    "page_miss_s": "`thinp calibrate` (as layer_kind_s): a cold 16 MiB read on ext4 over a loop device "
                   "took no longer than the device's transfer and the copy to user space (the fit's "
                   "floor, 0.05 us a page); 0.1 us for alloc_page + filemap_add_folio + LRU insertion. The fit "
                   "(calibrate.cold_read_fit) inverts the model's own pricing of that read, the asynchronous "
                   "readahead's overlap of copy and transfer included",
    "page_read_cpu_s": "btrfs: `thinp calibrate`'s cold 16 MiB read in a snapshot over ext4's, 1.2 us a page "
                       "(btrfs_check_data_csum: crc32c and the csum-tree lookup); zfs: fletcher4 of the "
                       "record and the ARC-to-page-cache copy, an estimate (zfs-fuse measured 4.7 us, "
                       "FUSE included); fitted as page_miss_s, with verification overlapping the transfer "
                       "past the first readahead window. It is CPU on the cores, several readers' at once: "
                       "btrfs completes a read bio in its end-io workqueue (btrfs_simple_end_io queues "
                       "btrfs_end_bio_work on fs_info's endio workers, up to thread_pool_size = min(CPUs + 2, "
                       "8) at once), zfs-fuse serves FUSE reads with its 40 listener threads; 4 readers of "
                       "4 files of 16 MiB took 3.5x one reader's time on btrfs and 2.4x on zfs-fuse in the "
                       "kept validate run (2 vCPUs), where a verification on the device's one transfer "
                       "channel predicted 3.9x and 4x",
    "verify_chain_share": "`thinp calibrate`: one process's cold read of an image file of 16 MiB in a btrfs "
                          "snapshot less the same read on ext4, in CPU time: the kernel threads' extra CPU "
                          "(btrfs' end-io workers' crc32c, queued from the loop worker's completion) and the "
                          "reader's own (the csum-tree lookup at submission), the threads' part of the sum, "
                          "capped by how much of 4 readers' wall time the threads' CPU filled. On the 2-vCPU "
                          "Intel Xeon VM (2026-12-07 13:00 UTC, load 1.7-2.8, least of 9) 2.3 ms and 1.5 ms "
                          "more than ext4's 3.7 and 2.1 ms: 0.61; 4 readers took 25-39 ms where the kernel "
                          "threads ran 24-28 ms of CPU (one after another); a whole calibrate at load 6-8 "
                          "(13:16 UTC) 0.47. Absent: 1 for btrfs, fitted so on a "
                          "2-vCPU AMD EPYC VM (2026-12-07: 4 readers 2.43x overlay2's, 1.91x predicted with it, "
                          "1.45x without)",
    "read_fill_s": "`thinp calibrate`: the kernel threads' CPU during one process's cold 16 MiB read on ext4 over "
                   "the loop device, per page: the loop worker's copies into new page-cache pages, 3.7-4.2 ms "
                   "on the 2-vCPU Intel Xeon VM (2026-12-07 13:00 UTC, load 1.7-2.8), 0.9-1.0 us a page where "
                   "its 1 MiB O_DIRECT reads into one buffer (read_bandwidth) take 0.51 us; 4 readers of their "
                   "own files took 19-24 ms, the worker's 15-16 ms of CPU and little more (a whole calibrate "
                   "at load 6-8, 13:16 UTC: 1.05 us). Default 0: the "
                   "device's bandwidth",
    "page_write_cpu_s": "default: `thinp calibrate` on a 2-vCPU AMD EPYC VM (2026-12-06): open/append/close "
                        "of 4 KiB less that of 5 bytes on ext4, 5-15 us over three runs at load 3-6 (the "
                        "least, rounded; 2.8 us at load 1, 17:24 UTC); a driver's entry is its whole cost per new "
                        "page, in place of the default's: btrfs the same benchmark in a snapshot, 1.0-1.4 us "
                        "(crc32c of 4 KiB ~0.3 us plus extent bookkeeping; btrfs reserves no blocks at write "
                        "time as ext4's delayed allocation does); zfs: record checksum + compression check, "
                        "an estimate; `thinp calibrate` with the cores busy (idle_wake_s): zfs-fuse's 4 KiB "
                        "open/append/close less its 5-byte one, less the copy, both with every core kept "
                        "busy (a lone run's difference mixes in the wake-ups of idle cores), at most what "
                        "leaves a lone 4 KiB append at what it measured alone (kept calibration 2026-12-07 "
                        "20:31 UTC: 15.9 us where the busy figures gave 29.7)",
    "probe_s": (
        "no published per-branch lookup figure found; an estimate: 0.3 us for one lookup in one "
        "branch directory (ovl_lookup_single, a dcache miss), 0.9 us on aufs (3x, as its per-op "
        "overhead in layer_cpu_s). Bounded above by moby PR 25824 (2016), which measured "
        "overlay2's layer mount at 0.23 ms with 1 lower, 0.31 ms with 20 and 0.42 ms with 50: "
        "~4 us per extra lower, each a whole path walk"),
    "copy_up_cpu_s": "ovl_copy_up_one: tmpfile in workdir, xattr copy, its fsync's journal commit, rename "
                     "into upper; default an estimate; overlay/overlay2: `thinp calibrate`'s cold copy-ups "
                     "of 4 and 16 MiB lower files (the first 1-byte append after drop_caches, least of 3 "
                     "files each), less a later append and the device's read and write of the file as the "
                     "model prices them: what is left of the 4 MiB one beyond copy_up_page_s per page",
    "copy_up_page_s": "`thinp calibrate` (as layer_kind_s): the cold copy-ups of 16 and 4 MiB lower files "
                      "(copy_up_cpu_s) differ by this per page, less the device's part; calibrations "
                      "without them: the first 1-byte append to a warm 4 MiB lower file through overlayfs "
                      "less a later append, per page (the copy and the upper file's fsync), least of 5 "
                      "runs: 3.5 us",
    "copy_up_worker_share": "`thinp calibrate`: of its cold copy-ups (copy_up_cpu_s), the largest's kernel-thread "
                            "CPU (the loop worker's copies, the journal thread; /proc/PID/schedstat of every "
                            "kthread) over that and the copying process's own CPU (getrusage). Default 0.6: "
                            "overlay2's 16 MiB copy-ups here (2026-12-07 13:00 UTC, 2 vCPUs, load 1.6-2.4, "
                            "/tmp probe of validate timing's append-big, 3 runs): alone 9.0 ms of kthread CPU "
                            "against 5.9 ms of the process's own (0.60), with wall = the two summed (17.4 ms): a "
                            "chain, not an overlap; mounted with `volatile` (no fsync of the copy) 4.1 ms "
                            "against 5.0 ms, so the fsync's writeback and journal commit are 4.9 ms of the "
                            "worker's. The kept validate run's N = 1: 8.3 ms kthread, 7.4 ms own with the 512 "
                            "appends (0.61). 4 and 16 copy-ups at once took 35 and 151 ms of kthread CPU "
                            "(4x and 17x one's): the worker is one thread, so N copy-ups queue for it",
    "dm_worker_block_s": (
        "Xu on dm-devel (2019-11-22): 4 KiB reads by 4 fio jobs through a thin device with 1 "
        "GiB blocks on nvme ran at 1274 MiB/s with dm-thin's single worker thread at 100% CPU, "
        "process_bio 86% of it: ~3.1 us of worker per bio (326k bios/s) for a mapping lookup "
        "alone; provisioning or breaking sharing adds a btree insert, a space-map increment and "
        "the copy's remap, so we take 8 us, ~2.5x a lookup, an estimate anchored on that figure"),
    "dm_commit_writes": (
        "no published figure found; an estimate from dm-thin-metadata.c's commit: the shadowed "
        "data-mapping btree leaf and its parent, the data space map's bitmap and index blocks, "
        "then the superblock: ~4 writes of 4 KiB after a few provisions"),
    "alloc_extent_s": "btrfs extent-tree insert / zfs metaslab allocation per extent",
    "readahead_bytes": "Linux read_ahead_kb default 128 (Documentation/ABI/stable/sysfs-block)",
    "merge_bytes": "max_sectors_kb default 512 (Documentation/block/queue-sysfs.rst)",
    "cache_bytes": "1 GiB of free memory for the page cache",
    "queue_depth": "NVMe/SATA NCQ 32 outstanding commands; a disk gains little past 4",
    "journal_commit_writes": "jbd2 descriptor + commit block (xfs: log record + flush)",
    "start_s": (
        "union drivers: moby PR 25824 (2016) measured overlay2's layer mount (Get) at 0.23 ms "
        "with 1 lower to 0.42 ms with 50, overlay 0.20-0.34 ms; the rest of our 2.5 ms (aufs 4 "
        "ms: more per branch) is creating the container's and its init layer's directories and "
        "files: no published figure found, an estimate. devicemapper: rhvgoyal timed creating "
        "300 containers on loop-lvm (moby issue 18314, 2015): 113 s on Docker 1.7.1, 165 s on "
        "1.9.1, 0.38-0.55 s each for two thin snapshots, their activation with udev sync, the "
        "init layer's mount and writes, and the engine's create; no direct-lvm figure found; we "
        "take 0.1 s for direct-lvm without loop files on a fast device, an estimate bounded "
        "above by that figure. zfs 70 ms: King timed zfs clone through the CLI (openzfs issue "
        "6372, 2017): 7 s for 100 clones with mountpoints, 70 ms each, growing with the number "
        "of clones (90 s for 1000); we take one clone's 70 ms. btrfs 25 ms (subvolume snapshot, "
        "transaction commit), vfs 1.5 ms besides its logged copy: no published figure found; "
        "estimates"),
    "start_serial_s": (
        "`thinp calibrate`: N containers of the Debian-rootfs image started at once by N processes "
        "(N = 1, 2, 4, 16; overlay2: directories + mount(2) of the overlay, btrfs: the snapshot "
        "ioctl, zfs: `zfs clone`, one at a time under a lock because zfs-fuse's daemon hangs on two "
        "mounts at once), each after drop_caches as `thinp validate timing` starts them; "
        "the slope of the wall time in N, (t16 - t1) / 15, median of the runs. btrfs' snapshots "
        "in one directory serialize on its i_rwsem, held across the transaction commit "
        "(btrfs_mksubvol); mounts on namespace_sem and the mount lock (do_add_mount); "
        "zfs-fuse's clones on the harness's lock and its daemon's txg sync. Absent (aufs, devicemapper): the whole "
        "start_s serialized, as moby's devmapper DeviceSet lock does"),
    "remove_s": (
        "devicemapper: rhvgoyal timed removing 300 containers on loop-lvm (moby issue 18314, "
        "2015): 217-227 s, 0.72-0.76 s each, which on loop devices includes dm.blkdiscard of "
        "the 10 GB thin device through a loop file (he notes that deleting a 100 GB device is a "
        "problem on loop devices), plus the engine's share; no direct-lvm figure found; we take "
        "0.09 s to deactivate (udev sync) and delete the container's two thin devices without a "
        "loop file's discard, an estimate bounded above by that figure. Union drivers 2 ms (rm "
        "-rf of two small directories), btrfs 12 ms (two subvolume deletes; the cleaner runs "
        "later), zfs 45 ms (two zfs destroy through the CLI): no published figure found; "
        "estimates"),
    "vfs_copy_inode_s": "measured: thinp's vfs lays a 120 MB image at ~22 us per file "
                        "create+write on this machine (issue #13)",
    "meta_read_bytes": "an ext4 inode-table or directory block, 4 KiB",
    "engine_run_s": (
        "Khan (arXiv 2602.15214, 2026) measured docker run startup at 568 ms on an Azure "
        "Premium SSD VM with 2 vCPUs (1157 ms on Standard HDD), varying 2.5% across images of "
        "5-155 MB, with namespace creation 8-10 ms of it: the engine's share dominates and does "
        "not depend on the image; we take 0.30 s for create + start on a bare-metal host and "
        "engine_rm_s for the stop + remove, 0.38 s together, two thirds of that VM's figure -- "
        "an estimate to replace by thinp calibrate's measurement"),
    "busy_slowdown": "`thinp calibrate` (calibrate.busy_slowdown_fit): the median over the benchmarks that hold "
                     "no lock (open/append/close of each process's own file, open/read/close and stat on ext4, "
                     "overlayfs with 1 and 4 lowers and btrfs) of their time by 4 processes at once over the "
                     "cores' bound (4 / cores times one's), less 1: the kept calibration (2026-12-07 20:31 UTC, "
                     "2 vCPUs) 0.99-1.32, median 1.18. The kept validate runs (vt10, vt11) show it in rusage: 4 "
                     "and 16 processes' small appends took 1.03-1.33x the bound, wall x cores over their CPU "
                     "1.02-1.54 (bimodal at N = 4: 2 + 2 or 3 + 1 processes placed on the 2 cores), CPU per "
                     "process 3-10% above one alone's. Default 0",
    "engine_rm_s": (
        "no published figure for stop + remove of an exited container apart from its driver "
        "found; 0.08 s is an estimate (see engine_run_s); rhvgoyal's 0.72-0.76 s per docker rm "
        "on devicemapper loop-lvm (moby issue 18314) includes the driver's removal (remove_s)"),
}


#: the lock a driver's layer create/remove serializes on: moby's devmapper
#: DeviceSet lock (``devices.Lock()`` around create, activate, mount and
#: delete); a btrfs transaction commit for a snapshot; a zfs txg sync for
#: ``zfs snapshot``/``clone``/``destroy``
#: the lock a driver's serialized share of an operation holds (``serial_share``)
SERIAL_LOCK = {"btrfs": ("btrfs_tree_lock", 0), "zfs": ("zfs_fuse_daemon", 0)}

#: drivers whose verification of a page read from the device
#: (:attr:`TimingConstants.page_read_cpu_s`) runs in the read's completion,
#: on the CPU that completed the bio: btrfs queues its data end-io work (the
#: crc32c check) there.  On a device whose transfers are a host thread's
#: copies (:attr:`thinp.cost.DeviceProfile.transfer_on_cpu`, a loop device)
#: that is the device worker's own chain, so it runs one bio at a time with
#: the transfers, not beside them on the other cores: the kept real run
#: (docs/timing/validate-timing.json, 2026-12-07) read 4 and 16 btrfs files
#: of 16 MiB at once in 26 and 82 ms, where kernel threads ran 22.7 and 73
#: ms of CPU -- the wall time is the kernel threads' CPU end to end, while
#: 2 cores would have run it in half.  zfs-fuse's daemon threads read their
#: own vdev files: its verification stays on the cores.  That AMD EPYC run's
#: figures; how much of it does is the machine's (on the Intel Xeon VM, 4
#: readers' wall time was 1.4x overlay2's where the whole chain predicted
#: 2.2x): ``thinp calibrate`` measures it, as
#: :attr:`TimingConstants.verify_chain_share`, whose default for these
#: drivers is 1
VERIFY_IN_COMPLETION = ("btrfs",)


def page_write_wake(k: TimingConstants, driver: str, kind_extra: dict, daemon_wait: dict) -> float | None:
    """``idle_wake_s["<driver>.write.page"]``, the idle wake-ups of a write
    that fills a whole new page, no more than the write's extra cost awake
    (as :attr:`TimingConstants.idle_wake_s` of any kind); None where absent."""
    v = k.idle_wake_s.get(driver + ".write.page")
    if v is None:
        return None
    return min(max(float(v), 0.0), max(kind_extra.get("write", 0.0) - daemon_wait.get("write", 0.0), 0.0))


def write_wake_s(wake: float, wake_page: float, nbytes: int) -> float:
    """The idle wake-ups of a write of ``nbytes``: ``wake`` (a small
    write's) and ``wake_page`` (a write that fills a new page's) in
    proportion to the share of a page it writes."""
    f = min(max(nbytes, 0) / PAGE, 1.0)
    return wake + f * (wake_page - wake)


def write_serial_share(share: float, share_page: float | None, nbytes: int) -> float:
    """The share of a write of ``nbytes`` that runs under its driver's one
    lock: ``share`` (``serial_share["<driver>.write"]``, a small write's)
    and ``share_page`` (``serial_share["<driver>.write.page"]``, a write
    that fills a whole new page's; None: absent, the small write's) in
    proportion to the share of a page it writes, at most 1.  On zfs-fuse
    4 KiB appends to a big file ran one at a time (validate timing's
    append-big: 39, 36 and 39 us an append by 1, 4 and 16 processes in the
    kept run; ``scripts/probe_zfs_lone.py``: by 4 at once the wall time was
    the clients' and the daemon's CPU summed), where 5-byte appends into
    the block already dirty did not (57 us alone, 35 by 4 at once)."""
    if share_page is None:
        return share
    f = min(max(nbytes, 0) / PAGE, 1.0)
    return min(max(share + f * (share_page - share), 0.0), 1.0)


def kind_tables(k: TimingConstants, driver: str) -> tuple[dict, dict, dict]:
    """``driver``'s per-kind costs as :func:`simulate` prices them:
    (kind -> its layer_kind_s; kind -> the part of that the process sleeps
    on the driver's daemon, daemon_wait_share; kind -> the part of the rest
    paid only on an idle core, idle_wake_s)."""
    pre = driver + "."
    kind_extra = {kk[len(pre):]: v for kk, v in k.layer_kind_s.items() if kk.startswith(pre)}
    daemon_wait = {kk[len(pre):]: kind_extra.get(kk[len(pre):], 0.0) * min(max(v, 0.0), 1.0)
                   for kk, v in k.daemon_wait_share.items() if kk.startswith(pre)}
    idle_wake = {kk[len(pre):]: min(max(v, 0.0), max(kind_extra.get(kk[len(pre):], 0.0)
                                                     - daemon_wait.get(kk[len(pre):], 0.0), 0.0))
                 for kk, v in k.idle_wake_s.items() if kk.startswith(pre)}
    return kind_extra, daemon_wait, idle_wake


def op_cpu_s(k: TimingConstants, driver: str, kind: str, nbytes: int = 0) -> float:
    """The CPU stage of one ``kind`` operation of ``nbytes`` on ``driver``'s
    path as :func:`simulate` prices it with nothing in the page cache to
    read, no lookup probes and no copy-up: the system call, the layer's
    costs, less what the process sleeps on the driver's daemon and the
    idle cores' wake-ups (their own stages, :func:`kind_tables`), and a
    write's pages."""
    kind_extra, daemon_wait, idle_wake = kind_tables(k, driver)
    cpu = (k.cpu_s.get(kind, 2 * US) + k.get("layer_cpu_s", driver) + kind_extra.get(kind, 0.0)
           - daemon_wait.get(kind, 0.0) - idle_wake.get(kind, 0.0))
    if kind == "write":
        cpu += (nbytes / PAGE) * (k.page_copy_s + k.get("page_write_cpu_s", driver))
    return cpu


def verify_chain_share(k: TimingConstants, driver: str) -> float:
    """The share of ``driver``'s verification of a page read that runs on
    the device worker's chain (:attr:`TimingConstants.verify_chain_share`;
    absent: 1 for :data:`VERIFY_IN_COMPLETION`'s drivers, else 0), in [0, 1]."""
    v = k.verify_chain_share.get(driver, k.verify_chain_share.get(
        "default", 1.0 if driver in VERIFY_IN_COMPLETION else 0.0))
    return min(max(float(v), 0.0), 1.0)

GLOBAL_LOCK = {"devicemapper": ("devmapper_deviceset", 0), "btrfs": ("btrfs_extent_tree", 0),
               "zfs": ("zfs_txg", 0)}


def _lock_class(lid) -> str:
    return lid[0]


def locks_for(driver: str, kind: str, ci: int, path: str, copy_up: bool) -> list:
    """The lock ids an operation holds on ``driver``'s kernel path, in
    acquisition order.  Ids are tuples whose first item is the class the
    report shows."""
    out = []
    if driver == "aufs" and (copy_up or kind in ("create", "mkdir", "unlink", "rename", "setattr")):
        out.append(("aufs_si_write", ci))          # per-superblock rwsem, write side
    parent = posixpath.dirname(path) if path else ""
    if kind in ("create", "mkdir", "unlink", "rename"):
        out.append(("dir_i_rwsem", ci if driver != "vfs" else -1, parent))
    if kind == "write" and path:
        out.append(("inode_i_rwsem", ci, path))    # generic_file_write_iter's inode_lock
    return out


#: the columns :meth:`TimingReport.row` adds to :func:`thinp.compare`'s table
SIM_COLUMNS = ("sim_time_s", "sim_start_s", "sim_first_write_s", "sim_steps_s", "sim_wait_cpu_share",
               "sim_wait_device_share", "sim_wait_lock_share", "sim_top_lock", "sim_waits", "sim_phases")
#: of those, the text columns (JSON objects for the breakdowns)
SIM_TEXT_COLUMNS = ("sim_top_lock", "sim_waits", "sim_phases")


class _LRU:
    """The simulated page cache: (key, page) in LRU order, ``cap`` pages."""

    def __init__(self, cap_pages: int):
        self.cap = cap_pages
        self.pages: OrderedDict = OrderedDict()

    def access(self, key, p0: int, p1: int, now: float) -> tuple[list, float]:
        """Touch pages [p0, p1) of ``key`` at ``now``; returns the missed
        runs [(a, b)] and the latest time a hit page's read (another
        process's, still in flight) completes -- the reader waits on the
        page lock until then.  Missed pages are entered as in flight; call
        :meth:`ready` with their completion time."""
        pages = self.pages
        runs = []
        start = None
        wait = 0.0
        for p in range(p0, p1):
            k = (key, p)
            t = pages.get(k, -1.0)
            if t != -1.0:
                pages.move_to_end(k)
                if t > wait:
                    wait = t
                if start is not None:
                    runs.append((start, p))
                    start = None
            else:
                pages[k] = now
                if start is None:
                    start = p
        if start is not None:
            runs.append((start, p1))
        while len(pages) > self.cap:
            pages.popitem(last=False)
        return runs, wait

    def ready(self, key, runs, t: float) -> None:
        """The missed ``runs`` of ``key`` are read by ``t``."""
        pages = self.pages
        for a, b in runs:
            for p in range(a, b):
                if (key, p) in pages:
                    pages[(key, p)] = t


@dataclass
class TimingReport:
    """What :func:`simulate` found for one driver run."""

    driver: str
    time_s: float                       # simulated wall time, first op to last
    per_container: list                 # dicts: container, start_s, first_write_s, steps_s, end_s
    phases: dict                        # phase -> seconds of process time
    wait_s: dict                        # resource class -> seconds waited
    busy_s: dict                        # "cpu"/"device" -> seconds held
    ops: int
    events: int
    hit_pages: int = 0
    miss_pages: int = 0

    def wait_shares(self) -> dict:
        """Share of all process time spent waiting on each resource class."""
        total = sum(self.phases.values()) or 1.0
        return {k: v / total for k, v in sorted(self.wait_s.items(), key=lambda kv: -kv[1])}

    def row(self) -> dict:
        """Flat columns for :func:`thinp.compare`'s DataFrame."""
        pc = self.per_container
        n = max(len(pc), 1)
        shares = self.wait_shares()
        locks = {k: v for k, v in shares.items() if k not in ("cpu", "device", "barrier")}
        top = max(locks, key=locks.get) if locks else ""
        return {
            "sim_time_s": self.time_s,
            "sim_start_s": sum(c["start_s"] for c in pc) / n,
            "sim_first_write_s": _mean([c.get("first_write_s", math.nan) for c in pc]),
            "sim_steps_s": sum(c["steps_s"] for c in pc) / n,
            "sim_wait_cpu_share": shares.get("cpu", 0.0),
            "sim_wait_device_share": shares.get("device", 0.0),
            "sim_wait_lock_share": sum(locks.values()),
            "sim_top_lock": top,
            # the breakdown a ranking needs, as JSON text (CSV and Parquet keep it)
            "sim_waits": json.dumps({k: round(v, 4) for k, v in shares.items()}),
            "sim_phases": json.dumps({k: round(v, 6) for k, v in self.phases.items()}),
        }


def _mean(xs) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else math.nan


def _device(dev, k: TimingConstants):
    qd = k.get("queue_depth", dev.name)
    return qd


def simulate(log: OpLog, *, device="nvme", constants: TimingConstants | None = None) -> TimingReport:
    """Replay ``log`` as concurrent processes and return a :class:`TimingReport`.

    Each container's processes start together at time 0 (``docker run`` of
    every container at once); a process runs its logged operations in order.
    ``device`` is a :class:`thinp.cost.DeviceProfile` or a profile name."""
    from ..cost import load_device

    dev = load_device(device)
    k = constants or TimingConstants()
    d = log.driver
    qd = int(k.get("queue_depth", dev.name))
    lru = _LRU(max(int(k.cache_bytes) // PAGE, 1))
    by_pid = log.by_pid()
    union = d in UNION
    layer = k.get("layer_cpu_s", d)
    # kind -> its layer_kind_s; seconds of that spent asleep on the driver's
    # daemon; seconds of the rest paid only on an idle core
    kind_extra, daemon_wait, idle_wake = kind_tables(k, d)
    serial = {kk.split(".", 1)[1]: min(max(v, 0.0), 1.0) for kk, v in k.serial_share.items()
              if kk.startswith(d + ".")}
    serial_lock = SERIAL_LOCK.get(d, ("fs_serial", 0))
    handoff = {kk.split(".", 1)[1]: max(v, 0.0) for kk, v in k.serial_handoff_s.items() if kk.startswith(d + ".")}
    # a write filling a new page: its wake-ups (idle_wake_s "<driver>.write.page")
    wake_page = page_write_wake(k, d, kind_extra, daemon_wait)
    miss_cpu = k.page_miss_s
    # the driver's own work per page read (btrfs' and zfs' checksum
    # verification) is done at the read's completion, before the pages are
    # up to date, by the driver's worker threads (btrfs' end-io workqueue,
    # up to min(CPUs + 2, 8) at once; zfs-fuse's 40 listener threads): CPU
    # on the cores, in parallel for several readers
    verify_s = k.get("page_read_cpu_s", d)
    # ... unless it runs in the completion, on the device worker's chain
    on_cpu = getattr(dev, "transfer_on_cpu", False)
    chain_verify_s = verify_s * verify_chain_share(k, d) if on_cpu else 0.0
    verify_s -= chain_verify_s
    # a page-cache miss's transfer beyond the device's bandwidth: the
    # worker's copy into a new page (on a device whose transfers are CPU)
    fill_extra_s = max(k.read_fill_s - PAGE / dev.read_bandwidth, 0.0) if on_cpu else 0.0
    chain_verify_s += fill_extra_s
    probe = k.get("probe_s", d)
    pw_cpu = k.get("page_write_cpu_s", d)
    alloc_s = k.get("alloc_extent_s", d)
    cpu_tab = k.cpu_s
    on_cpu = bool(getattr(dev, "transfer_on_cpu", False))
    cu_up_share = max(float(k.copy_up_worker_share), 0.0)
    ra_pages = max(k.readahead_bytes // PAGE, 1)
    procs = log.procs
    hits = [0]
    misses = [0]
    # bytes a copy-up wrote synchronously, per container: the later
    # writeback of the same bytes is not written again
    credit: dict = {}
    # dirty bytes (and write requests) per (container, path) that buffered
    # writes left for write-back
    dirty: dict = {}
    fs_scope = "dev" if d != "devicemapper" else None
    # dentries and inodes already read: shared by every container where the
    # image's inodes are one (overlay, aufs; zfs's ARC), per container where
    # each has its own copy or device (vfs, devicemapper, btrfs)
    # path -> when its first lookup (another process's, maybe still in
    # flight) completes
    dcache: dict = {}
    shared_meta = d in UNION or d == "zfs"
    meta_miss = k.get("meta_miss_s", d)
    meta_serial = serial.get("meta_miss", 0.0)

    def cold_lookup(nreq):
        """Stages of a lookup that misses the dentry and inode caches (its
        CPU, the share under the driver's one lock, its inode reads) and
        their duration, unqueued."""
        st = []
        if meta_miss:
            if meta_serial > 0.0:
                st += [(sim.CPU, meta_miss * (1.0 - meta_serial)), (sim.LOCK, serial_lock),
                       (sim.CPU, meta_miss * meta_serial), (sim.UNLOCK, serial_lock)]
            else:
                st.append((sim.CPU, meta_miss))
        rd = dev_read(nreq * k.meta_read_bytes, nreq)
        st.append(rd)
        return st, meta_miss + rd[1] + rd[2]

    def source_read(r0, r1, now):
        """A layer copy's read of its source tree (vfs: an image layer), file
        after file as ``cp`` reads: each missed file a cold lookup and its
        pages' requests one after another; pages another copy has in flight
        are waited for."""
        missed = []
        files = 0
        mp = 0
        nreq = 0
        wait = 0.0
        for key, p0, p1 in log.reads[r0:r1]:
            runs, w = lru.access(key, p0, p1, now)
            wait = max(wait, w)
            if runs:
                missed.append((key, runs))
                files += 1
                m = sum(b - a for a, b in runs)
                mp += m
                nreq += sum(-(-(b - a) // ra_pages) for a, b in runs)
        hits[0] += sum(p1 - p0 for _k, p0, p1 in log.reads[r0:r1]) - mp
        misses[0] += mp
        if not files:
            return ([(sim.DELAY, wait - now)] if wait > now else [])
        # sequential: one request in flight at a time (the inode's, then the data's)
        lat = dev.read_latency_s * (files + nreq)
        xfer = (mp * PAGE + files * k.meta_read_bytes) / dev.read_bandwidth + mp * fill_extra_s
        cpu_s = files * meta_miss + mp * (miss_cpu + verify_s)
        st = [(sim.CPU, cpu_s), (sim.DEV, lat, xfer)]
        done = now + cpu_s + lat + xfer
        for key, runs in missed:
            lru.ready(key, runs, done)
        if wait > done:
            st.append((sim.DELAY, wait - done))
        return st

    def dev_read(nbytes, nreq):
        return (sim.DEV, dev.read_latency_s * math.ceil(nreq / qd), nbytes / dev.read_bandwidth)

    def dev_write(nbytes, nreq):
        return (sim.DEV, dev.write_latency_s * math.ceil(nreq / qd), nbytes / dev.write_bandwidth)

    def build(pid, i, now):
        ops = by_pid[pid]
        if i >= len(ops):
            return None
        j = ops[i]
        kind = log.kind[j]
        ci = procs[pid][0]
        path = log.path[j]
        dl = log.deltas[j]
        if dl is not None:
            bw, wreq, cu_b, cu_n, cow_b, cow_n, probes, prov, inodes = dl
        else:
            bw, wreq, cu_b, cu_n, cow_b, cow_n, probes, prov, inodes = (0, -1, 0, 0, 0, 0, 0, 0, 0)
        stages = []
        if kind == "barrier":
            return [(sim.BARRIER, path, log.nbytes[j])]
        if kind in ("engine_run", "engine_rm"):
            return [(sim.DELAY, k.engine_run_s if kind == "engine_run" else k.engine_rm_s)]
        if kind in ("container_start", "container_rm"):
            # union drivers' mount(2)/umount(2) serialize on the mount
            # namespace's lock (namespace_sem); the others on GLOBAL_LOCK
            # the layers' own file work first, outside any global lock: a
            # layer copied file by file (vfs), what it wrote
            r0, r1 = log.pc[j]
            if r1 > r0:
                stages += source_read(r0, r1, now)
            if inodes > 0:
                # vfs copies every file of the layer; the union drivers' init
                # layer is empty files and directories (hosts, resolv.conf,
                # /dev/console, ...) created afresh
                per_inode = k.vfs_copy_inode_s if d == "vfs" else cpu_tab.get("create", 10 * US)
                stages.append((sim.CPU, inodes * per_inode))
            if bw:
                stages.append(dev_write(bw, max(1, math.ceil(bw / k.merge_bytes))))
            glock = GLOBAL_LOCK.get(d, ("mount_namespace", 0))
            t1 = k.get("start_s" if kind == "container_start" else "remove_s", d)
            each_s = k.start_serial_s.get(d) if kind == "container_start" else None
            if each_s is None:
                stages += [(sim.LOCK, glock), (sim.DELAY, t1), (sim.UNLOCK, glock)]
            else:
                # t1 alone; n at once: t1 + (n - 1) * each_s
                hold = min(each_s, t1)
                stages += [(sim.DELAY, t1 - hold), (sim.LOCK, glock, max(each_s - t1, 0.0)),
                           (sim.DELAY, hold), (sim.UNLOCK, glock)]
            return stages
        copy_up = cu_n > 0
        locks = locks_for(d, kind, ci, path, copy_up)
        for lid in locks:
            stages.append((sim.LOCK, lid))
        asleep = daemon_wait.get(kind, 0.0)
        wake = idle_wake.get(kind, 0.0)
        cpu = cpu_tab.get(kind, 2 * US) + layer + kind_extra.get(kind, 0.0) - asleep - wake + probes * probe
        nb = log.nbytes[j]
        if kind == "write" and wake_page is not None:
            # (after the CPU above on purpose: layer_kind_s "write" was
            # measured on small appends, wake-ups included, so the CPU leaves
            # out the small write's wake and the WAKE stage pays this blend:
            # a 4 KiB append's new page then takes the wake-ups' place)
            wake = write_wake_s(wake, wake_page, nb)
        if kind == "write":
            # the copy from user space and the new pages the write fills
            # (allocation, block reservation, checksums) scale with its
            # bytes: 5-byte appends fill one new page per 819 of them
            cpu += (nb / PAGE) * (k.page_copy_s + pw_cpu)
        # page-cache reads, replayed through the simulated LRU now
        r0, r1 = log.pc[j]
        miss_runs = []
        missed = []
        hit_pages = 0
        inflight = 0.0
        for key, p0, p1 in log.reads[r0:r1]:
            runs, w = lru.access(key, p0, p1, now)
            m = sum(b - a for a, b in runs)
            hit_pages += (p1 - p0) - m
            miss_runs += runs
            if runs:
                missed.append((key, runs))
            inflight = max(inflight, w)
        if r1 > r0:
            hits[0] += hit_pages
            mp = sum(b - a for a, b in miss_runs)
            misses[0] += mp
            # a page brought in: its allocation and insertion, and the
            # driver's verification (btrfs' end-io workers, zfs-fuse's
            # daemon threads: CPU on the machine's cores, several readers'
            # at once, not the device's one transfer channel)
            cpu += (hit_pages + mp) * k.page_copy_s + hit_pages * k.page_hit_s + mp * (miss_cpu + verify_s)
            ra_windows = sum(-(-(b - a) // ra_pages) for a, b in miss_runs)
            if ra_windows > 1:
                # asynchronous readahead: the device fills the next window
                # while this one is verified and copied, so the missed
                # pages' CPU and the transfer overlap but for the first
                # window (the overlapped CPU is left out of the cores' time)
                later = (ra_windows - 1) / ra_windows
                cpu -= min(mp * (k.page_copy_s + miss_cpu + verify_s),
                           mp * (PAGE / dev.read_bandwidth + chain_verify_s)) * later
        cu_worker = 0.0
        cu_once = k.get("copy_up_cpu_s", d) * cu_n
        if copy_up:
            cu_cpu = (cu_b / PAGE) * k.copy_up_page_s
            if on_cpu and cu_b:
                # of the whole copy-up's cost, the device worker's share
                # (its transfers at least) runs on the worker's chain: taken
                # from the per-page copy first, then from the once-cost
                xfer = cu_b / dev.read_bandwidth + cu_b / dev.write_bandwidth
                cu_worker = max(xfer, min(cu_up_share, 1.0) * (cu_cpu + xfer + cu_once))
                take = cu_worker - xfer
                cu_cpu, take = max(cu_cpu - take, 0.0), max(take - cu_cpu, 0.0)
                cu_once = max(cu_once - take, 0.0)
            cpu += cu_cpu
        sh = serial.get(kind, 0.0)
        if kind == "write":
            sh = write_serial_share(sh, serial.get("write.page"), nb)
        if sh > 0.0:
            # the share the driver's path runs under its one lock
            stages += [(sim.CPU, cpu * (1.0 - sh)), (sim.LOCK, serial_lock, handoff.get(kind, 0.0)),
                       (sim.CPU, cpu * sh), (sim.UNLOCK, serial_lock)]
        else:
            stages.append((sim.CPU, cpu))
        if wake > 0.0:              # the round trips' wake-ups of idle cores
            stages.append((sim.WAKE, wake))
        if asleep > 0.0:            # the daemon's round trips' waits: no core held
            stages.append((sim.DELAY, asleep))
        if inflight > now:          # a page another process is still reading
            stages.append((sim.DELAY, inflight - now))
        lookup_s = 0.0
        if path and kind not in ("create", "mkdir", "write", "barrier"):
            dkey = (-1 if shared_meta else ci, path)
            ready = dcache.get(dkey)
            if ready is None:
                st, lookup_s = cold_lookup(max(int(probes), 1))
                dcache[dkey] = now + cpu + lookup_s
                stages += st
            elif ready > now:       # another process's lookup of it, in flight
                stages.append((sim.DELAY, ready - now))
        if miss_runs:
            nreq = sum(-(-(b - a) // ra_pages) for a, b in miss_runs)
            mbytes = sum(b - a for a, b in miss_runs) * PAGE
            st = dev_read(mbytes, nreq)
            if chain_verify_s:
                # verified where the transfer completes: the worker's chain
                st = (st[0], st[1], st[2] + mbytes // PAGE * chain_verify_s)
            stages.append(st)
            done = now + cpu + lookup_s + st[1] + st[2]     # when the pages are up to date, unqueued
            for key, runs in missed:
                lru.ready(key, runs, done)
        if copy_up:
            if cu_b:
                # read the lower file, write and fsync the upper copy
                nreq = max(1, math.ceil(cu_b / k.merge_bytes))
                rd, wr = dev_read(cu_b, nreq), dev_write(cu_b, nreq)
                if cu_worker:
                    # the worker's share, split as the transfers are
                    part = rd[2] / (rd[2] + wr[2]) if rd[2] + wr[2] > 0 else 0.5
                    rd, wr = (rd[0], rd[1], cu_worker * part), (wr[0], wr[1], cu_worker * (1.0 - part))
                stages.append(rd)
                stages.append(wr)
                if on_cpu and d in ("overlay", "overlay2"):
                    # the copy's fsync returns with its journal commit, which
                    # (ext4 data=ordered) waits for the data of every inode
                    # in the transaction: the other copy-ups' writes the
                    # device's one worker has in flight
                    stages.append((sim.DRAIN, DEVICE_WORKER))
                credit[ci] = credit.get(ci, 0) + cu_b
            if d in ("overlay", "overlay2"):
                # the copy is made in the work dir, then renamed into the
                # upper dir under ovl_lock_rename_workdir (one per mount)
                stages += [(sim.LOCK, ("ovl_workdir", ci)), (sim.CPU, cu_once),
                           (sim.UNLOCK, ("ovl_workdir", ci))]
            else:
                stages.append((sim.CPU, cu_once))
        for lid in reversed(locks):
            stages.append((sim.UNLOCK, lid))
        # what reached the device during the op: writeback at sync/fsync
        # (or the dirty limit), CoW copies, provisioning
        own = max(bw - cow_b, 0)
        c = credit.get(ci, 0)
        if c and own:
            take = min(c, own)
            credit[ci] = c - take
            own -= take
        if kind == "write" and own:
            # a buffered write dirties the page cache; its bytes reach the
            # device at the file's fsync or the container's sync (drivers
            # that count device bytes at write time, btrfs and zfs, no
            # longer pay a device round trip per append)
            dk = (ci, path)
            q0, r0 = dirty.get(dk, (0, 0))
            dirty[dk] = (q0 + own, r0 + (wreq if wreq and wreq > 0 else 0))
            own = 0
        elif kind in ("fsync", "sync") and dirty:
            keys = [dk for dk in dirty if dk[0] == ci and (kind == "sync" or dk[1] == path)]
            for dk in keys:
                q0, r0 = dirty.pop(dk)
                own += q0
                wreq = (wreq if wreq and wreq > 0 else 0) + r0 or -1
        if own or cow_b or kind in ("fsync", "sync"):
            jscope = ("journal", ci if d == "devicemapper" else fs_scope)
            if d == "devicemapper" and (prov > 0 or cow_n):
                blocks = max(prov, 0) // (64 * 1024) + cow_n
                stages += [(sim.LOCK, ("dm_pool_worker", 0)),
                           (sim.CPU, blocks * k.dm_worker_block_s)]
                if cow_b:
                    n = max(1, math.ceil(cow_b / k.merge_bytes))
                    stages += [dev_read(cow_b, n), dev_write(cow_b, n)]
                stages.append((sim.UNLOCK, ("dm_pool_worker", 0)))
            elif d in ("btrfs", "zfs") and (cow_n or own):
                lid = ("btrfs_extent_tree", 0) if d == "btrfs" else ("zfs_txg", 0)
                extents = cow_n + max(1, own // (128 * 1024 if d == "zfs" else 32 * PAGE))
                stages += [(sim.LOCK, lid), (sim.CPU, extents * alloc_s)]
                if cow_b:
                    n = max(1, math.ceil(cow_b / k.merge_bytes))
                    stages += [dev_read(cow_b, n), dev_write(cow_b, n)]
                stages.append((sim.UNLOCK, lid))
            if own:
                nreq = wreq if wreq and wreq > 0 else max(1, math.ceil(own / k.merge_bytes))
                stages.append(dev_write(own, nreq))
            if kind in ("fsync", "sync"):
                stages += [(sim.LOCK, jscope), dev_write(k.journal_commit_writes * PAGE,
                                                         k.journal_commit_writes)]
                if d == "devicemapper":
                    stages.append(dev_write(k.dm_commit_writes * PAGE, k.dm_commit_writes))
                stages.append((sim.UNLOCK, jscope))
        return stages

    if getattr(dev, "transfer_on_cpu", False):
        build = _transfers_on_cpu(build)
    r = sim.run(len(procs), build, cores=max(1, int(k.cores)), queue_depth=qd,
                lock_class=_lock_class, busy_slowdown=max(float(k.busy_slowdown), 0.0))
    # per container and phase, from the ops' begin/end times
    phases: dict = {}
    conts: dict = {}
    # a container's start is the span of its containers_create ops; its
    # steps the wall span from there to its last op (its processes overlap)
    for pid, ops in enumerate(by_pid):
        ci = procs[pid][0]
        c = conts.setdefault(ci, {"container": ci, "start_s": 0.0, "first_write_s": math.nan,
                                  "steps_s": 0.0, "end_s": 0.0, "_t0": None, "_t1": 0.0, "_fw": None,
                                  "_s0": None})
        b, e = r.op_begin[pid], r.op_end[pid]
        for n, j in enumerate(ops[:len(e)]):
            ph = log.phase[j]
            phases[ph] = phases.get(ph, 0.0) + (e[n] - b[n])
            if ph == "containers_create":
                c["_t0"] = b[n] if c["_t0"] is None else min(c["_t0"], b[n])
                c["_t1"] = max(c["_t1"], e[n])
            else:
                if ph == "steps" and (c["_s0"] is None or b[n] < c["_s0"]):
                    c["_s0"] = b[n]         # the first step of any of its processes
                if log.kind[j] == "write" and ph != "image_load":
                    # the first write call that copied (a copy-up or a CoW
                    # during the call), else the first write call at all
                    dl = log.deltas[j]
                    key = (0 if dl is not None and (dl[3] > 0 or dl[5] > 0) else 1, b[n])
                    if c["_fw"] is None or key < c["_fw"][0]:
                        c["_fw"] = (key, e[n] - b[n])
        if e:
            c["end_s"] = max(c["end_s"], e[-1])
    for c in conts.values():
        t0, t1, s0 = c.pop("_t0"), c.pop("_t1"), c.pop("_s0")
        fw = c.pop("_fw")
        if fw is not None:
            c["first_write_s"] = fw[1]
        c["start_s"] = t1 - t0 if t0 is not None else 0.0
        # the steps run from the first step any of its processes began (the
        # others may begin while the first still syncs the new container)
        if s0 is None:
            s0 = t1 if t0 is not None else 0.0
        c["steps_s"] = max(c["end_s"] - s0, 0.0)
    return TimingReport(d, r.end_s, [conts[i] for i in sorted(conts)], phases, dict(r.wait_s),
                        dict(r.busy_s), len(log), r.events, hits[0], misses[0])


#: the one kernel thread that copies a loop device's transfers (its
#: per-cgroup worker: one for all of a run's processes); its waits are
#: reported as the device's
DEVICE_WORKER = ("device", "worker")


def _transfers_on_cpu(build):
    """``build`` whose device transfers also hold a core, one at a time: on
    a device whose transfers are a host thread's copies
    (:attr:`thinp.cost.DeviceProfile.transfer_on_cpu`, a loop device over a
    tmpfs file), a request's latency stays the device's and its transfer is
    CPU of the device's one worker, queued for the cores with the
    processes' own.  (The worker lock is always the innermost, released at
    once: it orders with every other lock.)"""
    def wrapped(pid, i, now):
        st = build(pid, i, now)
        if not st:
            return st
        out = []
        for s in st:
            if s[0] == sim.DEV and s[2] > 0:
                out += [(sim.DEV, s[1], 0.0), (sim.LOCK, DEVICE_WORKER), (sim.CPU, s[2], False),
                        (sim.UNLOCK, DEVICE_WORKER)]
            else:
                out.append(s)
        return out
    return wrapped


def replace(k: TimingConstants, **kw) -> TimingConstants:
    return dataclasses.replace(k, **kw)

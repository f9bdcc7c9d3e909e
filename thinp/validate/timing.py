"""``thinp validate timing``: a small suite of workloads run for real and in
thinp on the same machine, measured seconds beside the timing model's
(:mod:`thinp.timing`) predicted seconds.

The real side, on loop devices over sparse files in a tmpfs (so the device
is memory, as the ``ram`` profile the predictions use):

* ``overlay2``: kernel overlayfs in Docker's overlay2 layout -- the image as
  four lower directories (big files, two small layers, the small files) on
  an ext4 loop device, each container an ``upper``/``work`` pair mounted by
  a mount(2) call from the measuring process, as Docker's daemon mounts (no
  ``mount`` process);
* ``vfs``: each container a ``cp -a`` of the image directory on that ext4
  (a start: two, as Docker's vfs makes the ``-init`` layer and then the
  container's; the runs before 2026-12-06 18:30 UTC made one);
* ``btrfs``: the image a subvolume on a btrfs loop device, each container a
  snapshot of it made by the BTRFS_IOC_SNAP_CREATE_V2 ioctl, as Docker's
  btrfs driver makes one (no ``btrfs`` process);
* ``zfs``: the image a zfs-fuse dataset, each container a ``zfs clone`` of
  its snapshot through the ``zfs`` command, as Docker's zfs driver runs it
  (go-zfs executes the CLI); zfs-fuse's clone also mounts the clone, so
  the clones of N containers started at once run one at a time
  (:func:`zfs_mount_lock`: two mounts at once can wedge zfs-fuse's
  daemon), and a container is removed by unmounting it, then ``zfs destroy
  -r`` (:func:`zfs_destroy`); zfs-fuse runs in user
  space: every system call crosses FUSE, which the model -- of the
  kernel's zfs -- does not price.

Cases, each at N = 1, 4 and 16 processes in one container (``start``: N
containers started at once): 5-byte appends to a new small file per
process (open, append, close), 4 KiB appends to a big image file per
process (the first copies it up on overlay2), a file tree per process,
reads of a big image file per process, reads of every small image file by
every process (caches dropped before each read case), and container starts
of a Debian-rootfs-sized image (``debian-minbase``: 5,230 files, 120 MB).

Every mount, loop device and daemon is released by its own path, device or
pid on the way out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

from ..errors import RealRunError
from . import block as real_block
from ..workloads.format import ImageSpec, LayerSpec, Step, Workload

MiB = 1 << 20
#: the copies of the image a vfs container start makes (Docker's vfs: the
#: ``-init`` layer, then the container's layer)
VFS_START_COPIES = 2
NS = (1, 4, 16)
DRIVERS = ("overlay2", "vfs", "btrfs", "zfs")
#: sized so that each real run takes tens of milliseconds at least on a
#: loop device over a tmpfs (a 1 ms run is timer and scheduler noise)
BIG_FILES, BIG_BYTES = 16, 16 * MiB
SMALL_FILES, SMALL_DIRS, SMALL_BYTES = 400, 8, 4096
APPENDS_SMALL, APPENDS_BIG = 2000, 512
TREE_DEPTH = 8
#: real runs per cell, in rounds where each driver's run sits between two
#: overlay2 runs (:func:`round_order`), so a change of the machine's load
#: falls on a run and the overlay2 runs it is divided by alike
REPS = 5


def big_file(k: int) -> str:
    """The image's ``k``-th big file, from the container's root (the big
    cases' files; thinp calibrate's cold big read reads them too)."""
    return f"/data/big{k}"


def image_spec() -> ImageSpec:
    """The file cases' image: small files at the bottom, two small layers,
    the big files on top (four layers, as the real overlay2 has four lowers)."""
    return ImageSpec("synthetic", None, layers=[
        LayerSpec(SMALL_FILES, SMALL_BYTES, SMALL_DIRS, "/small"),
        LayerSpec(4, 1024, 1, "/etc/l1"), LayerSpec(4, 1024, 1, "/etc/l2")],
        extra=[(big_file(k), BIG_BYTES) for k in range(BIG_FILES)])


@dataclass(frozen=True)
class Case:
    name: str
    what: str

    def workload(self, n: int) -> Workload:
        """The case as a thinp workload of ``n`` processes (``start``: ``n`` containers)."""
        if self.name == "start":
            return Workload("start", ImageSpec(), n, [], 0)
        steps = {
            "append-small": [Step("append", path="/logs/log-{p}", size=5, count=APPENDS_SMALL)],
            "append-big": [Step("append", path="/data/big{p}", size=4096, count=APPENDS_BIG)],
            "tree": [Step("tree", path="/t{p}", depth=TREE_DEPTH, fanout=2, size=1024)],
            "read-big": [Step("read", path="/data/big{p}")],
            "read-small": [Step("read", glob="/small/**")],
        }[self.name]
        return Workload(self.name, image_spec(), 1, steps, 0, processes=n)


CASES = (
    Case("append-small", f"{APPENDS_SMALL} five-byte appends (open/append/close) to a new file per process"),
    Case("append-big", f"{APPENDS_BIG} appends of 4 KiB to a {BIG_BYTES // MiB} MiB image file per process"),
    Case("tree", f"a binary tree of directories, depth {TREE_DEPTH}, a 1 KiB file in each inner one, "
                 "per process"),
    Case("read-big", f"read a {BIG_BYTES // MiB} MiB image file per process, cold cache"),
    Case("read-small", "every process reads the 400 small image files, cold cache"),
    Case("start", "N containers of a Debian-rootfs-sized image started at once"),
)


# --------------------------------------------------------------------- the real side
def available() -> tuple[bool, str]:
    """Whether the real side can run here, and why not."""
    from .target import can_mount

    return can_mount(tools=("mkfs.ext4", "cp"), fstype="overlay", what="losetup and mount")


#: seconds a real-side command may take before it counts as hung (the
#: slowest, a cold ``cp -a`` of the Debian image by 16 processes at once,
#: takes about 10 s here); read when a command runs, so a test may lower it
CMD_TIMEOUT_S = 300
#: seconds a hung command, killed, gets to exit before it is left behind: a
#: client of a wedged zfs-fuse daemon (``zfs clone``/``zfs destroy`` seen in
#: D state in ``thinp calibrate --runs 3``, 2026-12-06) sleeps
#: uninterruptibly, and SIGKILL ends it only once the daemon answers --
#: waiting for it, as ``subprocess.run`` does after its timeout, hangs the run
KILL_GRACE_S = real_block.KILL_GRACE_S


def run_bounded(cmd, timeout: float | None = None):
    """``(returncode, stdout, stderr)`` of ``cmd``, or None when it did not
    finish in ``timeout`` seconds (default :data:`CMD_TIMEOUT_S`); see
    :func:`thinp.validate.block.run_bounded`."""
    return real_block.run_bounded(cmd, CMD_TIMEOUT_S if timeout is None else timeout)


def run_cmd(cmd, timeout: float | None = None) -> str:
    """Run a real-side command; a failure or a hang is a :class:`RealRunError`
    naming it (a hung command is killed by its own pid, :func:`run_bounded`)."""
    timeout = CMD_TIMEOUT_S if timeout is None else timeout
    r = run_bounded(cmd, timeout)
    if r is None:
        raise RealRunError(f"{' '.join(cmd)} did not finish in {timeout:g} s")
    if r[0]:
        raise RealRunError(f"{' '.join(cmd)} failed ({r[0]}): {r[2].strip()[:300]}")
    return r[1]


def remove_each(real, driver: str, ids) -> RealRunError | None:
    """``real.remove(driver, i)`` for every id in ``ids``, the later ones
    too when one fails; returns the first :class:`RealRunError` (a hung
    ``zfs destroy``: that container is left to the pool's teardown), None
    when all went."""
    first = None
    for i in ids:
        try:
            real.remove(driver, i)
        except RealRunError as e:
            first = first or e
    return first


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def make_tree(top: str, depth: int) -> None:
    """A binary tree of new directories below the new directory ``top``,
    ``depth`` levels, a 1 KiB file in each inner one: what the workloads'
    tree step makes (``fanout=2, size=1024``)."""
    os.mkdir(top)
    level = [top]
    data = b"t" * 1024
    for _d in range(depth):
        nxt = []
        for d in level:
            for k in range(2):
                os.mkdir(f"{d}/{k}")
                nxt.append(f"{d}/{k}")
            with open(d + "/f", "wb") as f:
                f.write(data)
        level = nxt


def kthread_cpu_s() -> float:
    """CPU seconds every kernel thread has run so far (``/proc/PID/schedstat``
    of the processes marked PF_KTHREAD; 0 where there is none): the loop
    devices' workers, whose copies to and from a tmpfs file are a loop
    device's transfers, writeback, the filesystems' end-io workers."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            if not int(st[st.rindex(")") + 2:].split()[6]) & 0x00200000:        # PF_KTHREAD
                continue
            with open(f"/proc/{d}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def terminable():
    """While inside, a SIGTERM ends the process as a normal exit would
    (``SystemExit(143)``), so every ``finally`` block and exit stack below
    unwinds: without a handler, SIGTERM (``timeout``'s signal) kills Python
    on the spot and leaves its mounts and loop devices behind.  A second
    SIGTERM during that cleanup is ignored.  Outside the main thread (where
    no handler can be set) it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)       # let the cleanup finish
        raise SystemExit(128 + signum)
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def scratch(stack: contextlib.ExitStack, size: str) -> str:
    """A tmpfs of ``size`` for the real side's loop files, unmounted on the
    way out of ``stack`` -- also when the process is sent SIGTERM
    (:func:`terminable`, entered first so it outlives the cleanup)."""
    stack.enter_context(terminable())
    return stack.enter_context(tmpfs(size))


@contextlib.contextmanager
def tmpfs(size: str):
    base = tempfile.mkdtemp(prefix="thinp-vt-")
    run_cmd(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", base])
    try:
        yield base
    finally:
        subprocess.run(["umount", base], capture_output=True)
        os.rmdir(base)


@contextlib.contextmanager
def loop_fs(base: str, name: str, size: int, mkfs: list[str]):
    """A loop device over a sparse file ``base/name.img``, formatted and
    mounted at ``base/name``; unmounted and detached by its own path and
    device on the way out."""
    img, mnt = os.path.join(base, name + ".img"), os.path.join(base, name)
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(size)
    loop = run_cmd(["losetup", "-f", "--show", img]).strip()
    mounted = False
    try:
        run_cmd([*mkfs, loop])
        run_cmd(["mount", loop, mnt])
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _LIBC


def mount_overlay(opts: str, target: str) -> None:
    """mount(2) of an overlay at ``target`` from this process, as Docker's
    overlay2 driver mounts (``unix.Mount`` in the daemon, no ``mount``
    process to fork and exec)."""
    import ctypes

    if _libc().mount(b"overlay", target.encode(), b"overlay", 0, opts.encode()) != 0:
        e = ctypes.get_errno()
        raise RealRunError(f"mount(2) overlay at {target} failed: {os.strerror(e)}")


def umount(target: str) -> None:
    """umount(2) of ``target`` from this process (errors ignored: cleanup)."""
    _libc().umount2(target.encode(), 0)


#: BTRFS_IOC_SNAP_CREATE_V2: _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2), 4096 bytes
BTRFS_IOC_SNAP_CREATE_V2 = (1 << 30) | (4096 << 16) | (0x94 << 8) | 23


def btrfs_snapshot(src: str, dst: str) -> None:
    """A writable snapshot of subvolume ``src`` at ``dst`` through the
    BTRFS_IOC_SNAP_CREATE_V2 ioctl from this process, as Docker's btrfs
    driver makes a layer (no ``btrfs`` process)."""
    import fcntl
    import struct

    name = os.path.basename(dst).encode()
    if not name or len(name) >= 4040:
        raise ValueError(f"bad snapshot name {dst!r}")
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd = os.open(os.path.dirname(dst), os.O_RDONLY | os.O_DIRECTORY)
        try:
            # fd, transid, flags, then a 32-byte union, then the name (4040 bytes)
            args = bytearray(struct.pack("=qQQ32s", sfd, 0, 0, b"") + name.ljust(4040, b"\0"))
            fcntl.ioctl(dfd, BTRFS_IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def write_file(path: str, size: int, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    block = bytes([(seed * 31 + i) % 251 + 1 for i in range(256)]) * 16
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def _lay_image(root: str) -> dict[str, str]:
    """The file cases' image under ``root`` as four layer directories
    (bottom first, as :func:`image_spec`); returns name -> directory."""
    dirs = {}
    for name in ("small", "l1", "l2", "big"):
        dirs[name] = os.path.join(root, name)
        os.makedirs(dirs[name])
    for i in range(SMALL_FILES):
        write_file(f"{dirs['small']}/small/d{i % SMALL_DIRS:04d}/f{i:06d}", SMALL_BYTES, i)
    for n, key in ((1, "l1"), (2, "l2")):
        for i in range(4):
            write_file(f"{dirs[key]}/etc/l{n}/d0000/f{i:06d}", 1024, i)
    for k in range(BIG_FILES):
        write_file(dirs["big"] + big_file(k), BIG_BYTES, k)
    return dirs


def _lay_debian(root: str) -> str:
    """The debian-minbase profile's regular files and directories under
    ``root`` (deterministic contents; symlinks as symlinks)."""
    from ..workloads.format import profile_rows

    for path, kind, size, mode, _uid, _gid, target in profile_rows("debian-minbase"):
        p = os.path.join(root, path.strip("/"))
        if kind == "d":
            os.makedirs(p, exist_ok=True)
        elif kind in "fh":
            write_file(p, size, len(path))
        elif kind == "l":
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if not os.path.lexists(p):
                os.symlink(target, p)
    return root


def _merge(dirs: list[str], dst: str) -> None:
    """One directory holding every layer's files (vfs's, btrfs's and zfs's image)."""
    for d in dirs:
        run_cmd(["cp", "-a", d + "/.", dst])


def read_whole(path: str) -> bytes:
    """Read a small file whole as the read-small case does (and ``thinp
    calibrate``'s cold small reads): Python's unbuffered ``open`` and
    ``read()`` -- openat, two fstats and an lseek, the reads, close; each
    fstat is a FUSE GETATTR on zfs-fuse."""
    with open(path, "rb", buffering=0) as f:
        return f.read()


# the per-process work, on a container root
def _proc_work(case: str, root: str, p: int) -> None:
    if case == "append-small":
        path = f"{root}/logs/log-{p}"
        os.makedirs(f"{root}/logs", exist_ok=True)      # the workload's append makes it too
        for _ in range(APPENDS_SMALL):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, b"hello")
            os.close(fd)
    elif case == "append-big":
        buf = b"x" * 4096
        path = f"{root}/data/big{p}"
        for _ in range(APPENDS_BIG):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, buf)
            os.close(fd)
    elif case == "tree":
        make_tree(f"{root}/t{p}", TREE_DEPTH)
    elif case == "read-big":
        with open(f"{root}/data/big{p}", "rb", buffering=0) as f:
            while f.read(128 << 10):
                pass
    elif case == "read-small":
        for i in range(SMALL_FILES):
            read_whole(f"{root}/small/d{i % SMALL_DIRS:04d}/f{i:06d}")
    else:
        raise ValueError(case)


def _worker(fn, args, go_fd, done_fd, q):
    import select

    try:
        # the queue's feeder thread starts here, before the release, not
        # while the others run
        q.put("ready")
        # every worker polls the same pipe: the parent's one write makes them
        # all runnable at once (poll waiters are woken together)
        if not select.select([go_fd], [], [], 120)[0]:
            raise RealRunError("not released in 120 s")
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        fn(*args)
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in ((r0, r1), (c0, c1)))
        q.put((t0, t1, cpu,
               r1.ru_nivcsw - r0.ru_nivcsw, r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_minflt - r0.ru_minflt))
    except BaseException as e:      # the parent must hear of it, not wait
        q.put(f"{type(e).__name__}: {e}")
    # exit (tearing down a forked copy of the parent) only once every
    # worker is done, so that no exit takes a core from a worker still timed
    select.select([done_fd], [], [], 600)


def concurrently(calls, detail: dict | None = None) -> float:
    """Run each ``(fn, args)`` in its own process, all released together;
    seconds from the first start to the last end.  ``detail``, when given,
    is filled with what the processes' own ``getrusage`` says of their
    timed part: ``cpu_s`` (user and system CPU, summed, with that of the
    commands they ran: ``cp``, ``zfs``), ``preempted``
    (involuntary context switches: another task took the core) and
    ``waits`` (voluntary ones: a lock, the device, a page), ``faults``
    (minor page faults: a forked process's copy-on-write among them).

    The processes are released by one write to a pipe they all poll, which
    wakes every one of them at once, and exit only after the last one is
    done.  A ``multiprocessing.Barrier`` wakes them one after another
    instead, each taking the barrier's lock in turn: on this 2-core machine
    at load 4 that handoff chain alone spread 16 no-op processes over 24-62
    ms (median 54 ms, 2026-12-06), more than 16 overlay mounts take."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    procs = [ctx.Process(target=_worker, args=(fn, args, go_r, done_r, q)) for fn, args in calls]
    try:
        for pr in procs:
            pr.start()
        try:
            got = [q.get(timeout=120) for _ in procs]
            if any(g != "ready" for g in got):
                raise RealRunError(f"a measuring process failed: {next(g for g in got if g != 'ready')}")
            os.write(go_w, b"g")
            times = [q.get(timeout=600) for _ in procs]
        except queue.Empty:
            raise RealRunError(f"{len(procs)} measuring processes did not all finish in time") from None
    except BaseException:           # a hang, SIGTERM: stop ours now, by their own pids
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        raise
    finally:
        os.write(done_w, b"d")
        for pr in procs:
            if pr.pid is None:
                continue
            pr.join(timeout=60)
            if pr.is_alive():       # only ours, by its own pid
                pr.kill()
                pr.join()
        for fd in (go_r, go_w, done_r, done_w):
            os.close(fd)
    errs = [t for t in times if isinstance(t, str)]
    if errs:
        raise RealRunError(f"a measuring process failed: {errs[0]}")
    if detail is not None:
        detail.update(cpu_s=sum(t[2] for t in times), preempted=sum(t[3] for t in times),
                      waits=sum(t[4] for t in times), faults=sum(t[5] for t in times))
    return max(t[1] for t in times) - min(t[0] for t in times)


class RealSetup:
    """The four real drivers' images and containers (see the module docstring)."""

    devices: list[str] = []     # our loop devices, by name (:func:`io_settled`), set in __init__

    def __init__(self, stack: contextlib.ExitStack, base: str, drivers):
        from . import block

        self.drivers = list(drivers)
        self.skipped: dict[str, str] = {}
        self.last_kthread_s: float | None = None     # the kernel threads' CPU in the last run
        self.last_detail: dict = {}                  # the measuring processes' rusage (:func:`concurrently`)
        # vfs at N = 16 starts: 32 copies of the 120 MB image (each container's
        # -init layer and its own), beside the images: 3 GiB ran out
        self.ext4 = stack.enter_context(loop_fs(base, "ext4", 6 << 30, ["mkfs.ext4", "-q", "-F"]))
        self.layers = _lay_image(os.path.join(self.ext4, "image"))
        self.flat = os.path.join(self.ext4, "flat")
        os.mkdir(self.flat)
        _merge([self.layers[k] for k in ("small", "l1", "l2", "big")], self.flat)
        self.debian = _lay_debian(os.path.join(self.ext4, "debian"))
        self.deb_small = [os.path.join(self.ext4, "debl1"), os.path.join(self.ext4, "debl2")]
        for i, d in enumerate(self.deb_small):
            write_file(f"{d}/etc/debl{i}", 1024, i)
        self.n = 0
        self.btrfs = self.zfs = None
        if "btrfs" in self.drivers:
            ok, why = block.btrfs_available()
            if ok:
                self.btrfs = stack.enter_context(loop_fs(base, "btrfs", 3 << 30, ["mkfs.btrfs", "-q", "-f"]))
                for name, src in (("img", self.flat), ("deb", self.debian)):
                    run_cmd(["btrfs", "subvolume", "create", f"{self.btrfs}/{name}"])
                    run_cmd(["cp", "-a", src + "/.", f"{self.btrfs}/{name}"])
            else:
                self.skipped["btrfs"] = why
        if "zfs" in self.drivers:
            ok, why = block.zfs_available()
            if ok:
                try:
                    self.zpool, self.zmnt = stack.enter_context(block.real_zfs(workdir=base, size="2G"))
                except RuntimeError as e:
                    # for example a zfs-fuse daemon already running (another
                    # calibrate, a probe): real_zfs has stopped the one it started
                    ok, why = False, f"zfs-fuse did not start ({e}); is another zfs-fuse daemon running?"
            if ok:
                self.zfs_lock = os.path.join(base, "zfs-mount.lock")
                for name, src in (("img", self.flat), ("deb", self.debian)):
                    run_cmd(["zfs", "create", f"{self.zpool}/{name}"])
                    run_cmd(["cp", "-a", src + "/.", f"{self.zmnt}/{name}"])
                    run_cmd(["zfs", "snapshot", f"{self.zpool}/{name}@base"])
                self.zfs = True
            else:
                self.skipped["zfs"] = why
        os.sync()
        self.devices = [d for d in (real_block.device_at(m) for m in (self.ext4, self.btrfs) if m) if d]

    def create(self, driver: str, n: int, debian: bool = False) -> str:
        """Create and start container ``n`` (see :meth:`remove`); returns its root."""
        if driver == "overlay2":
            lowers = ([self.debian, *self.deb_small] if debian else
                      [self.layers[k] for k in ("small", "l1", "l2", "big")])
            d = os.path.join(self.ext4, f"ctr{n}")
            for sub in ("diff", "work", "merged"):
                os.makedirs(os.path.join(d, sub))
            opts = f"lowerdir={':'.join(reversed(lowers))},upperdir={d}/diff,workdir={d}/work"
            mount_overlay(opts, f"{d}/merged")
            return f"{d}/merged"
        if driver == "vfs":
            d = os.path.join(self.ext4, f"ctr{n}")
            if debian:
                # a container start as Docker's vfs makes it: the image copied
                # to the container's -init layer, that layer copied to the
                # container's own (VFS_START_COPIES copies)
                run_cmd(["cp", "-a", self.debian, d + "-init"])
                run_cmd(["cp", "-a", d + "-init", d])
            else:       # the file cases time the container's files only: one copy
                run_cmd(["cp", "-a", self.flat, d])
            return d
        src = "deb" if debian else "img"
        if driver == "btrfs":
            d = f"{self.btrfs}/ctr{n}"
            btrfs_snapshot(f"{self.btrfs}/{src}", d)
            return d
        if driver == "zfs":
            # zfs-fuse's clone mounts its clone: one at a time (ZFS_NOTE)
            with zfs_mount_lock(self.zfs_lock):
                run_cmd(["zfs", "clone", f"{self.zpool}/{src}@base", f"{self.zpool}/ctr{n}"])
            return f"{self.zmnt}/ctr{n}"
        raise ValueError(driver)

    def warm_tool(self, driver: str) -> None:
        """Bring the command a driver's create runs back into the page cache
        after ``drop_caches`` (Docker's zfs driver runs ``zfs``; vfs here
        runs ``cp``): on a running Docker host the tools are resident, and
        the model prices their exec warm -- the image stays cold."""
        if driver == "zfs":
            run_cmd(["zfs", "list", "-H", "-o", "name", self.zpool])
        elif driver == "vfs":
            run_cmd(["cp", "--version"])

    def remove(self, driver: str, n: int) -> None:
        """Stop and remove container ``n``, by its own mount point or name.
        A tool that fails is let be (a clone a lost run never made); one
        that hangs past :data:`CMD_TIMEOUT_S` is killed by its pid and
        raised as a :class:`RealRunError` (:func:`remove_tool`)."""
        if driver == "overlay2":
            d = os.path.join(self.ext4, f"ctr{n}")
            if os.path.ismount(f"{d}/merged"):
                umount(f"{d}/merged")
            shutil.rmtree(d, ignore_errors=True)
        elif driver == "vfs":
            for sfx in ("", "-init"):
                shutil.rmtree(os.path.join(self.ext4, f"ctr{n}{sfx}"), ignore_errors=True)
        elif driver == "btrfs":
            remove_tool(["btrfs", "subvolume", "delete", f"{self.btrfs}/ctr{n}"])
        elif driver == "zfs":
            zfs_destroy(f"{self.zpool}/ctr{n}", f"{self.zmnt}/ctr{n}")

    def settle(self, driver: str) -> None:
        """Wait for what removals left to the driver's background threads:
        btrfs' cleaner drops deleted subvolumes after the delete returns, and
        left running it slowed the next run's snapshots (16 snapshots at
        once measured 190-300 ms right after 16 deletes, 64-190 ms after
        ``btrfs subvolume sync``, 2026-12-06, load 3-5)."""
        if driver == "btrfs" and self.btrfs:
            # BTRFS_IOC_SYNC commits and wakes the cleaner; then poll for the
            # deleted subvolumes to be gone (``btrfs subvolume sync`` polls
            # once a second: seconds per run)
            remove_tool(["btrfs", "filesystem", "sync", self.btrfs])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cmd = ["btrfs", "subvolume", "list", "-d", self.btrfs]
                r = run_bounded(cmd)
                if r is None:
                    raise RealRunError(f"{' '.join(cmd)} did not finish in {CMD_TIMEOUT_S:g} s")
                if r[0] or not r[1].strip():
                    break
                time.sleep(0.02)

    def measure(self, case: str, driver: str, n: int) -> float:
        """Seconds the real side takes for ``case`` with ``n`` processes.
        Every run starts cold, as the model's page cache and dentry cache
        do: written back and dropped (``drop_caches``) after the container
        is made (``start``: before, and the driver's command brought back,
        :meth:`warm_tool`).  On a loop device over a tmpfs file a
        cold read still reads memory, through the loop driver."""
        first = self.n + 1
        self.n += n if case == "start" else 1
        ids = list(range(first, self.n + 1))
        try:
            if case == "start":
                drop_caches()
                self.warm_tool(driver)
                calls = [(self.create, (driver, i, True)) for i in ids]
            else:
                root = self.create(driver, ids[0])
                drop_caches()
                calls = [(_proc_work, (case, root, p)) for p in range(n)]
            # the sync's last writes through our loop devices finished
            io_settled(self.devices)
            k0 = kthread_cpu_s()
            detail: dict = {}
            t = concurrently(calls, detail)
            # what kernel threads ran meanwhile (the loop worker's copies:
            # a run whose copies went slow shows here, 2026-12-06)
            self.last_kthread_s = kthread_cpu_s() - k0
            self.last_detail = detail
        except BaseException:
            self.clean_up(driver, ids)      # (what the cleanup meets besides is second)
            raise
        err = self.clean_up(driver, ids)
        if err is not None:                 # a hung removal costs the run
            raise err
        return t

    def clean_up(self, driver: str, ids) -> RealRunError | None:
        """Remove containers ``ids`` and settle the driver; the first
        :class:`RealRunError` met (a hung tool, killed), None if none."""
        err = remove_each(self, driver, ids)
        try:
            self.settle(driver)
        except RealRunError as e:
            err = err or e
        return err


def remove_tool(cmd) -> None:
    """A removal tool's run (``zfs destroy``, ``btrfs subvolume delete``): a
    failure is let be, a hang past :data:`CMD_TIMEOUT_S` is killed by its
    pid and raised."""
    if run_bounded(cmd) is None:
        raise RealRunError(f"{' '.join(cmd)} did not finish in {CMD_TIMEOUT_S:g} s")


#: what the zfs rows' note says (``thinp validate timing``'s table and the README's)
ZFS_NOTE = ("zfs-fuse: the N zfs clones of a start run one at a time, each mounting its clone "
            "(two mounts at once can wedge zfs-fuse's daemon)")


@contextlib.contextmanager
def zfs_mount_lock(path: str):
    """Hold an exclusive flock(2) on ``path`` (made if missing): the
    processes that start zfs containers at once take it around their ``zfs
    clone``, which mounts the clone, so zfs-fuse's daemon registers one new
    FUSE mount at a time.

    Why: zfs-fuse 0.7.0 hands a new mount to its FUSE listener threads as
    two writes to one pipe (the mount's info, then its mountpoint:
    ``zfsfuse_newfs`` in ``src/zfs-fuse/fuse_listener.c``), unlocked, and a
    listener reads them back while holding the one mutex every listener
    thread needs.  Two mounts at once can interleave their writes; the
    reader then waits on the pipe for bytes that never come, the mutex
    held, and no FUSE request on any of the pool's filesystems is answered
    again.  Seen here (``scripts/probe_zfs_starts.py``, 2026-12-07, load
    3-8): 16 ``zfs clone``s at once, each mounting its clone, wedged the
    daemon in round 17 of one run and round 18 of another (of 16 clones
    each) -- 39 of its 40 listener threads waiting on one mutex (gdb), one
    reading the pipe, the clients in ``request_wait_answer`` or in D state
    in ``fuse_lock_inode`` -- as ``thinp validate timing`` lost zfs at start
    N = 16 in 3 of 4 quiet runs.  The kernel's zfs, which Docker users
    run, has no such pipe.

    The whole clone goes under the lock: zfs-fuse's clone mounts its clone
    whatever ``canmount`` says (``noauto`` too), and a clone made with
    ``mountpoint=none`` at once, then mounted by ``zfs set mountpoint`` one
    at a time, paid a property change's txg sync per container besides --
    16 starts took 490-910 ms that way against 220-360 ms one clone at a
    time (``probe_zfs_starts.py --mount serial`` / ``locked-clone``, 10
    rounds each, load 6).  So a zfs start by N is N clones in turn, and
    ``thinp calibrate``'s fit of it (``start_serial_s``) prices that."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)            # (closing releases the lock)


#: seconds a ``zfs destroy`` refused with "dataset is busy" is tried again
#: for (every 50 ms) before the removal counts as failed
ZFS_BUSY_RETRY_S = 10.0


def zfs_destroy(dataset: str, mountpoint: str | None = None) -> None:
    """Remove a zfs-fuse dataset as Docker's zfs driver removes a layer:
    its mount unmounted first (Docker's ``Put``: umount(2); here the
    ``umount`` command, bounded by :data:`CMD_TIMEOUT_S` as every tool is,
    where ``mountpoint`` is mounted), then ``zfs destroy -r`` (go-zfs's
    ``DestroyRecursive``).

    Not ``zfs destroy -f``: its lazy unmount (``umount -l``) returns before
    zfs-fuse's daemon has let go of the dataset, and the destroy that
    follows is refused as busy -- 9 of 16 right after 16 clones at once,
    2026-12-07 -- so a run left its clones mounted in the daemon, by the
    hundred over a whole ``thinp validate timing``.  A plain unmount first
    still meets "busy" now and then (0 to 3 retries a round of 16): such a destroy
    is tried again for :data:`ZFS_BUSY_RETRY_S`, then raised as a
    :class:`RealRunError` (the run is lost, not the pool's hygiene); a
    dataset that does not exist (a clone a lost run never made) is let be."""
    if mountpoint is not None and mountpoint in real_block.mounts_at_or_below(mountpoint):
        remove_tool(["umount", mountpoint])
    cmd = ["zfs", "destroy", "-r", dataset]
    deadline = time.monotonic() + ZFS_BUSY_RETRY_S
    while True:
        r = run_bounded(cmd)
        if r is None:
            raise RealRunError(f"{' '.join(cmd)} did not finish in {CMD_TIMEOUT_S:g} s")
        if r[0] == 0 or "dataset is busy" not in r[2]:
            return
        if time.monotonic() > deadline:
            raise RealRunError(f"{' '.join(cmd)}: still busy after {ZFS_BUSY_RETRY_S:g} s")
        time.sleep(0.05)


def _measure_once_more(r: RealSetup, case: str, driver: str, n: int) -> float:
    """``r.measure``, run a second time when the first run's tool failed or
    hung (a lost ``zfs clone`` or ``zfs destroy`` under zfs-fuse): one failure costs a run, not
    the whole table; a second one is the machine's and is raised (:func:`validate_timing` then
    leaves that driver out of the rest of the run and keeps every other cell)."""
    try:
        return r.measure(case, driver, n)
    except RealRunError:
        return r.measure(case, driver, n)


# --------------------------------------------------------------------- predictions
def predict(case: Case, driver: str, n: int, timing=None, device="ram") -> float:
    """The timing model's seconds for ``case`` at ``n`` on ``driver`` (the
    steps' wall time; ``start``: the whole run), on ``device`` (default the
    ``ram`` profile; ``thinp calibrate`` measures the loop device)."""
    from ..timing import TimingConstants, simulate
    from ..workloads import run

    # the real side runs on this machine's cores, whatever the constants say
    k = dataclasses.replace(timing or TimingConstants(), cores=len(os.sched_getaffinity(0)))
    res = run(case.workload(n), driver)
    if res.error:
        raise RuntimeError(f"{driver}: {res.error}")
    rep = simulate(res.oplog, device=device, constants=k)
    if case.name == "start":
        return rep.time_s
    return max(c["steps_s"] for c in rep.per_container)


def spread(runs: list) -> tuple[float, float, float]:
    """Median and the range a run's load can move it by: the interquartile
    range (inclusive quartiles: 5 runs give the 2nd to the 4th, 9 runs the
    3rd to the 7th), or all the runs when fewer than 5.  Quartiles rather
    than "all but the extremes", so that more runs narrow the spread instead
    of widening it."""
    r = sorted(runs)
    if len(r) < 5:
        return statistics.median(r), r[0], r[-1]
    q1, _, q3 = statistics.quantiles(r, n=4, method="inclusive")
    return statistics.median(r), q1, q3


#: what each run keeps beside its time, by the name a row lists it under:
#: the kernel threads' CPU (:func:`kthread_cpu_s`) and the measuring
#: processes' own rusage (:func:`concurrently`)
RUN_DETAIL = (("kthread_s", None), ("cpu_s", "cpu_s"), ("preempted", "preempted"), ("waits", "waits"))
#: every per-run list a row keeps (and ``--measured`` takes back)
RUN_LISTS = ("runs_s", "pair_s", "pair_after_s", *(k for k, _ in RUN_DETAIL))
#: the target: each driver's time relative to overlay2 within this factor
#: of the measured one; a row whose measured ratio's own spread is wider
#: than this is *noisy* (:func:`rel_verdict`)
REL_TARGET = 1.5


def round_order(live: list[str], rep: int) -> list[tuple[str, bool]]:
    """One round of real runs: ``(driver, is_pair)`` in the order they run.

    Every driver other than overlay2 runs between two overlay2 runs
    (``is_pair``: that overlay2 run is the pair of the next one; the one
    after is the next round's first, or the one :func:`_measured_cell` adds
    at the end), so each of its runs has overlay2 runs seconds away on
    either side to be divided by: a change of the machine's speed -- another
    tenant, a host that got busier -- falls on them alike and cancels in
    the ratio (:func:`paired_rel`).  The drivers' order turns round by
    round, so none always follows the removal of the same other driver.
    Without overlay2 among ``live``, each driver once, in turn, unpaired."""
    others = [d for d in live if d != "overlay2"]
    if not others or "overlay2" not in live:
        k = rep % len(live) if live else 0
        return [(d, False) for d in live[k:] + live[:k]]
    k = rep % len(others)
    out = []
    for d in others[k:] + others[:k]:
        out += [("overlay2", True), (d, False)]
    return out


def paired_rel(row: dict) -> list[float]:
    """The row's runs each divided by the overlay2 runs beside it
    (:func:`round_order`): the geometric mean of the one before and the one
    after, or the one there was.  Measured on the shared 2-vCPU machine at
    load 4.5-15 (2026-12-07 10:21-10:49 UTC, all 54 rows, 9 rounds; other
    sessions' work coming and going), the 3rd to 7th of these ratios
    spanned 2.02x (geometric mean over the rows) against 2.34x dividing
    by the overlay2 run before alone, 2.08x by overlay2 runs half a cell
    away, and 2.63x for the ratio of the medians with each median's like
    interval (3rd-7th of 9, 10th-19th of 28 overlay2 runs).  So there the
    noise was mostly run by run, not a drift within a cell (of the 76 runs
    at N = 1 slower than 1.5x their row's median, 43 were preempted with
    their CPU time unchanged, 28 took 1.5x the CPU time too, 5 waited),
    and averaging the two
    neighbours is what narrowed it; the pairing also cancels what does
    drift (a host that gets busier for a minute)."""
    before = row.get("pair_s") or ()
    after = row.get("pair_after_s") or [None] * len(before)
    out = []
    for t, b, a in zip(row.get("runs_s") or (), before, after):
        o = (b * a) ** 0.5 if (b and a) else (b or a)
        if o:
            out.append(t / o)
    return out


def rel_spread(row: dict, base: dict | None) -> tuple[float | None, float | None, float | None, bool]:
    """``(ratio, lo, hi, paired)``: the row's time relative to overlay2's
    (``base``) and the range of its middle runs.  Paired where the row has
    overlay2 runs beside its own (:func:`paired_rel`): the median and the
    spread of the per-run ratios.  Otherwise (a run kept from before
    pairing, or overlay2 lost) the ratio of the medians, its range the
    medians' ranges against each other (lowest over highest, highest over
    lowest)."""
    rel = paired_rel(row)
    if rel:
        m, lo, hi = spread(rel)
        return m, lo, hi, True
    if base is None or not base.get("measured_s") or row.get("measured_s") is None:
        return None, None, None, False
    m = row["measured_s"] / base["measured_s"]
    if row.get("measured_lo") is None or not base.get("measured_lo"):
        return m, m, m, False
    return m, row["measured_lo"] / base["measured_hi"], row["measured_hi"] / base["measured_lo"], False


def rel_verdict(predicted_rel: float, measured_rel: float, lo: float, hi: float) -> str:
    """How a row meets the ratio target (:data:`REL_TARGET`, 1.5x):

    * a *noisy* row first -- one whose measured ratio's middle runs span
      more than 1.5x (``hi / lo > 1.5``): the measurement cannot tell 1.5x
      apart, and the row is not counted a pass whatever the prediction
      (with 9 runs the 3rd to the 7th are a distribution-free 82%
      confidence interval of the median ratio; with 5, the 2nd to the 4th,
      62%):
      ``"within noise"`` when the predicted ratio is within 1.5x of some
      ratio in that range (``lo / 1.5 <= predicted <= hi * 1.5``), else
      ``"miss"``;
    * otherwise ``"within"`` when the predicted ratio is within 1.5x of the
      measured one (its median), else ``"miss"``."""
    t = REL_TARGET
    if lo > 0 and hi / lo > t:
        return "within noise" if lo / t <= predicted_rel <= hi * t else "miss"
    ratio = predicted_rel / measured_rel
    return "within" if 1 / t <= ratio <= t else "miss"


def io_settled(devices, timeout: float = 1.0) -> float:
    """Wait until none of ``devices`` (block device names, ``loop0``) has a
    request in flight (``/sys/block/DEV/inflight``), at most ``timeout``
    seconds; returns the seconds waited.  After ``drop_caches``'s sync a
    loop device may still be finishing what the sync's last writes queued;
    a timed run starts on a quiet device."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        busy = False
        for dev in devices:
            try:
                with open(f"/sys/block/{dev}/inflight") as f:
                    busy = busy or any(int(v) for v in f.read().split())
            except (OSError, ValueError):
                continue
        if not busy:
            break
        time.sleep(0.002)
    return time.monotonic() - t0


def _measured_cell(r, group: list[dict], case, n: int, reps: int) -> None:
    """The real runs of one case/N group: ``reps`` rounds (:func:`round_order`)
    and, when paired, one more overlay2 run after the last driver's; each
    run's time and detail appended to its row, the overlay2 runs on either
    side of a driver's run to that row's ``pair_s`` and ``pair_after_s``."""
    live = [x for x in group if x["driver"] not in r.skipped]
    by = {x["driver"]: x for x in live}
    order = [step for rep in range(reps) for step in round_order(list(by), rep)]
    if any(is_pair for _d, is_pair in order):
        order.append(("overlay2", False))
    pair = waiting = None           # the overlay2 run before; the row waiting for the one after
    for d, is_pair in order:
        x = by[d]
        if d in r.skipped:
            pair = waiting = None
            continue
        try:
            t = _measure_once_more(r, case.name, d, n)
        except RealRunError as e:
            # twice lost (a wedged zfs-fuse stays wedged): the driver
            # is left out from here on, the other cells are kept
            r.skipped[d] = f"lost at {case.name} N = {n}: {e}"
            x["note"] = r.skipped[d]
            pair = waiting = None
            continue
        x["runs_s"].append(t)
        detail = getattr(r, "last_detail", None) or {}
        for key, src in RUN_DETAIL:
            x[key].append(r.last_kthread_s if src is None else detail.get(src))
        if d == "overlay2":
            if waiting is not None:
                waiting["pair_after_s"][-1] = t
            waiting = None
        else:
            x["pair_s"].append(pair)
            x["pair_after_s"].append(None)
            waiting = x
        pair = t if is_pair else None


def validate_timing(ns=NS, drivers=DRIVERS, cases=CASES, *, real: bool = True, timing=None,
                    device="ram", reps: int = REPS, measured: list | None = None,
                    progress=None) -> list[dict]:
    """Rows of ``case, n, driver, measured_s, predicted_s`` and each time
    relative to overlay2's in the same case and N (``measured_rel``,
    ``predicted_rel``).

    The real side runs each cell ``reps`` times in rounds, each driver's
    run between two overlay2 runs (:func:`round_order`): ``measured_s`` is
    the median, ``measured_lo``/``measured_hi`` the range of the middle runs
    (:func:`spread`), ``runs_s`` every run, ``pair_s``/``pair_after_s`` the
    overlay2 runs before and after each (overlay2's row: all its runs, three
    a round with four drivers, and one more).  ``measured_rel`` is the median of the
    per-round ratios, ``rel_lo``/``rel_hi`` their middle runs' range
    (:func:`rel_spread`; ``rel_paired`` False where it is the ratio of the
    medians), ``rel_verdict`` how it meets the 1.5x target
    (:func:`rel_verdict`).  Each run keeps beside it ``kthread_s``, the CPU
    seconds kernel threads ran during it (:func:`kthread_cpu_s`: on a loop
    device over a tmpfs file, its worker's copies -- the device's work, on
    the same cores), and the measuring processes' ``cpu_s``, ``preempted``
    and ``waits`` (:func:`concurrently`): a slow run whose CPU grew with
    it was slow on the core, one that was preempted lost the core to
    another task.  ``measured`` takes the real side from earlier rows
    (``--json`` output) instead of running it: the model re-predicted
    against kept measurements.  ``measured_s`` is None where the real side
    cannot run (``note`` says why)."""
    if reps < 1:
        raise ValueError(f"reps {reps} must be >= 1")
    rows = []
    why = ""
    kept = {(x["case"], x["n"], x["driver"]): x for x in measured or ()}
    if measured is not None:
        real = False
        why = "not in the kept measurements"
    elif real:
        ok, why = available()
        real = ok
    with contextlib.ExitStack() as stack:
        r = None
        if real:
            base = scratch(stack, "10G")
            r = RealSetup(stack, base, drivers)
        for case in cases:
            for n in ns:
                group = []
                for d in drivers:
                    row = {"case": case.name, "n": n, "driver": d,
                           "predicted_s": predict(case, d, n, timing, device),
                           "measured_s": None, "measured_lo": None, "measured_hi": None,
                           **{key: [] for key in RUN_LISTS}, "note": why}
                    k = kept.get((case.name, n, d))
                    if k is not None:
                        row.update({x: k.get(x) for x in ("measured_s", "measured_lo", "measured_hi",
                                                          "note", "load")})
                        row.update({x: list(k.get(x) or ()) for x in RUN_LISTS})
                        if row["runs_s"]:       # a kept run's spread by today's definition
                            row["measured_s"], row["measured_lo"], row["measured_hi"] = spread(row["runs_s"])
                    elif r is not None and d in r.skipped:
                        row["note"] = r.skipped[d]
                    group.append(row)
                if r is not None:
                    _measured_cell(r, group, case, n, reps)
                    load = os.getloadavg()[0]
                    for x in group:
                        if x["driver"] in r.skipped or not x["runs_s"]:
                            continue
                        x["measured_s"], x["measured_lo"], x["measured_hi"] = spread(x["runs_s"])
                        # how the real side made zfs's starts (:func:`zfs_mount_lock`)
                        x["note"] = ZFS_NOTE if (x["driver"], case.name) == ("zfs", "start") else ""
                        x["load"] = load        # the 1-minute load average when the group ended
                base_row = next((x for x in group if x["driver"] == "overlay2"), None)
                for x in group:
                    b = base_row["predicted_s"] if base_row else None
                    x["predicted_rel"] = x["predicted_s"] / b if b else None
                    if x is base_row:
                        m = lo = hi = 1.0 if x["measured_s"] else None
                        paired = False
                    else:
                        m, lo, hi, paired = rel_spread(x, base_row)
                    x["measured_rel"], x["rel_lo"], x["rel_hi"], x["rel_paired"] = m, lo, hi, paired
                    x["rel_verdict"] = (rel_verdict(x["predicted_rel"], m, lo, hi)
                                        if x is not base_row and m is not None and x["predicted_rel"]
                                        else None)
                if progress:
                    for x in group:
                        progress(x)
                rows += group
    return rows


def _rel_range(x: dict) -> tuple[float, float, float] | None:
    """A row's time relative to overlay2's as its paired runs give it
    (:func:`paired_rel`): ``(median, lo, hi)`` of the per-round ratios,
    overlay2's own (1, 1, 1); None where the row has no paired ratios (a
    run kept from before pairing, overlay2 lost, no measurement)."""
    if x.get("measured_s") is None:
        return None
    if x["driver"] == "overlay2":
        return 1.0, 1.0, 1.0
    m, lo, hi = x.get("measured_rel"), x.get("rel_lo"), x.get("rel_hi")
    if not x.get("rel_paired") or None in (m, lo, hi):
        return None
    return m, lo, hi


def _decided(a: dict, b: dict) -> bool:
    """Whether the measured order of two rows is beyond their spread: by
    their paired ratios to overlay2 (:func:`_rel_range`) where both have
    them -- each run over the overlay2 runs seconds beside it, so a change
    of the machine's speed that falls on both cancels -- else by their own
    runs' ranges."""
    ra, rb = _rel_range(a), _rel_range(b)
    if ra is not None and rb is not None:
        return ra[2] < rb[1] or rb[2] < ra[1]
    if a.get("measured_lo") is None or b.get("measured_lo") is None:
        return a["measured_s"] != b["measured_s"]
    return a["measured_hi"] < b["measured_lo"] or b["measured_hi"] < a["measured_lo"]


def _measured_order(g: list[dict]) -> list[dict]:
    """The measured rows of one group, fastest first: by their paired
    ratios to overlay2 where every row has them (:func:`_rel_range`), as
    :func:`_decided` compares them, else by their medians."""
    g = [x for x in g if x["measured_s"] is not None]
    if g and all(_rel_range(x) is not None for x in g):
        return sorted(g, key=lambda x: _rel_range(x)[0])
    return sorted(g, key=lambda x: x["measured_s"])


def summary(rows: list[dict]) -> dict:
    """How the predictions met the targets.

    Per (case, N) group: its measured order is *decided* when every two
    drivers next to each other in it are apart beyond their spread
    (:func:`_decided`: the middle half of their paired ratios to overlay2
    where both rows have them, else of their own runs); ``same_ranking`` counts the decided groups whose
    predicted order is the same.  Per pair of drivers in a group whose
    measured order is decided: whether the model orders them the same
    (``pairs_agree`` of ``pairs_decided``).  Per row, whether the time
    relative to overlay2 meets the 1.5x target (:func:`rel_verdict`):
    ``rel_within_1_5x`` rows within 1.5x whose measured ratio is known to
    within 1.5x, ``rel_within_noise`` noisy rows whose prediction the noise
    cannot refute, ``rel_miss`` the rest; ``rel_noisy`` counts the noisy
    rows, ``rel_median_within_1_5x`` the rows within 1.5x of the measured
    median whatever their noise (the count before noisy rows were told
    apart)."""
    from itertools import combinations, groupby

    groups = decided = ok_rank = ok_rank_all = 0
    pairs = pairs_ok = 0
    verdicts = {"within": 0, "within noise": 0, "miss": 0}
    noisy = total = median_within = unpaired = 0
    for _key, g in groupby(rows, key=lambda x: (x["case"], x["n"])):
        g = [x for x in g if x["measured_s"] is not None]
        if len(g) < 2:
            continue
        groups += 1
        ms = _measured_order(g)
        m = [x["driver"] for x in ms]
        p = [x["driver"] for x in sorted(g, key=lambda x: x["predicted_s"])]
        is_decided = all(_decided(a, b) for a, b in zip(ms, ms[1:]))
        for x in g:
            x["group_decided"] = is_decided
            x["same_order"] = m == p
        ok_rank_all += m == p
        if is_decided:
            decided += 1
            ok_rank += m == p
        for a, b in combinations(g, 2):
            if _decided(a, b):
                pairs += 1
                pairs_ok += (ms.index(a) < ms.index(b)) == (a["predicted_s"] < b["predicted_s"])
        for x in g:
            if x["driver"] == "overlay2" or x["measured_rel"] is None:
                continue
            mr = x["measured_rel"]
            lo = x.get("rel_lo") if x.get("rel_lo") is not None else mr
            hi = x.get("rel_hi") if x.get("rel_hi") is not None else mr
            x["rel_verdict"] = v = rel_verdict(x["predicted_rel"], mr, lo, hi)
            verdicts[v] += 1
            total += 1
            noisy += lo > 0 and hi / lo > REL_TARGET
            unpaired += x.get("rel_paired") is False
            median_within += 1 / REL_TARGET <= x["predicted_rel"] / mr <= REL_TARGET
    return {"groups": groups, "decided_groups": decided, "same_ranking": ok_rank,
            "same_ranking_all_groups": ok_rank_all, "pairs_decided": pairs, "pairs_agree": pairs_ok,
            "rel_rows": total, "rel_within_1_5x": verdicts["within"], "rel_noisy": noisy,
            "rel_within_noise": verdicts["within noise"], "rel_miss": verdicts["miss"],
            "rel_median_within_1_5x": median_within, "rel_unpaired": unpaired}


def summary_sentence(s: dict) -> str:
    """:func:`summary` in words (the README's and the CLI's)."""
    noisy = s.get("rel_noisy", 0)
    how = "the median of its runs each divided by the overlay2 runs just before and after it"
    if s.get("rel_unpaired"):
        how += (f"; in {s['rel_unpaired']} rows, measured before the runs were paired, the ratio of the "
                f"medians, its range the middle runs' ranges against each other")
    return (f"The measured order is decided beyond the runs' spread in {s['decided_groups']} of "
            f"{s['groups']} case/N groups, and the model orders those the same in {s['same_ranking']} "
            f"(all groups: {s['same_ranking_all_groups']} of {s['groups']}). Of the driver pairs whose "
            f"measured order is decided, the model orders {s['pairs_agree']} of {s['pairs_decided']} "
            f"alike. Each driver's time relative to overlay2 ({how}) is within 1.5x of the measured ratio in "
            f"{s['rel_within_1_5x']} of {s['rel_rows']} rows and misses in {s.get('rel_miss', 0)}; "
            f"{noisy} rows are noisy -- the middle half of their measured ratios spans more than 1.5x, "
            f"so they are not counted as passes -- and of those the prediction is within 1.5x of "
            f"the measured range in {s.get('rel_within_noise', 0)} (within noise). Within 1.5x of the "
            f"measured median, noise aside: {s.get('rel_median_within_1_5x', s['rel_within_1_5x'])} of "
            f"{s['rel_rows']}.")


def _secs(v: float) -> str:
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 0.01:
        return f"{v * 1e3:.0f} ms"
    return f"{v * 1e3:.1f} ms"


def _rel(v: float) -> str:
    return f"{v:.2g}x" if v < 10 else f"{v:.0f}x"


def markdown(rows: list[dict], drivers=DRIVERS) -> str:
    """The README's table: per case and N, each driver's measured median
    with the range of its middle runs, the prediction, and both relative to
    overlay2 (the measured ratio with the range of its middle runs, and
    ``miss`` or ``noise`` where the row is no pass, :func:`rel_verdict`);
    whether the measured order is decided and the model's the same."""
    from itertools import groupby

    summary(rows)           # marks group_decided / same_order
    head = ["case", "N", *(f"{d} measured (range) / predicted" for d in drivers), "measured order",
            "same order"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (case, n), g in groupby(rows, key=lambda x: (x["case"], x["n"])):
        g = {x["driver"]: x for x in g}
        cells = [case, str(n)]
        for d in drivers:
            x = g.get(d)
            if x is None or x["measured_s"] is None:
                cells.append(f"- / {_secs(x['predicted_s'])}" if x else "-")
                continue
            c = f"{_secs(x['measured_s'])} ({_secs(x['measured_lo'])}-{_secs(x['measured_hi'])}) / " \
                f"{_secs(x['predicted_s'])}"
            if d != "overlay2" and x["measured_rel"] is not None:
                lo, hi = x.get("rel_lo"), x.get("rel_hi")
                rng = f" [{lo:.2g}-{hi:.2g}]" if lo is not None and hi is not None and hi > lo else ""
                c += f" ({_rel(x['measured_rel'])}{rng} / {_rel(x['predicted_rel'])})"
                if x.get("rel_verdict") in ("miss", "within noise"):
                    c += f" {'noise' if x['rel_verdict'] == 'within noise' else 'miss'}"
            cells.append(c)
        ms = _measured_order(list(g.values()))
        order = " < ".join(x["driver"] for x in ms)
        dec = ms[0].get("group_decided") if ms else False
        cells.append(order if dec else f"undecided ({order})")
        cells.append(("yes" if ms[0].get("same_order") else "no") if ms else "-")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Relative to overlay2: measured [the middle half of the per-round ratios, each run over the "
                "overlay2 runs just before and after it] / predicted. miss: not within 1.5x; noise: the measured ratios' "
                "middle half spans more than 1.5x, so the row is no pass, and the prediction is within 1.5x "
                "of that range."]
    if any(x.get("rel_paired") is False and x["driver"] != "overlay2" and x.get("measured_rel") is not None
           for x in rows):
        out[-1] += (" Rows measured before the runs were paired: the ratio of the medians, its range the "
                    "middle runs' ranges against each other (lowest over highest, highest over lowest).")
    # how the real side made what it measured, where a row says (once each)
    notes = dict.fromkeys(f"{x['driver']} {x['case']}: {x['note']}" for x in rows
                          if x.get("measured_s") is not None and x.get("note"))
    if notes:
        out += ["", *(f"Note -- {n}" for n in notes)]
    return "\n".join(out)

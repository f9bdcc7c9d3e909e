"""Reproduce zfs-fuse wedging under concurrent ``zfs clone``s (issue #13).

A zfs-fuse pool on a sparse file in a tmpfs (as ``thinp validate timing``
makes it: :func:`thinp.validate.block.real_zfs`), the Debian-minbase rootfs
as a dataset with a snapshot, then ``--rounds`` rounds of: caches dropped,
``N`` ``zfs clone``s started at once (waves of ``--wave`` at a time when
given), every clone destroyed.  A clone or destroy still running after
``--bound`` seconds is a wedge: the script prints the state of the stuck
client and of every daemon thread (``/proc/PID/task/*/{stat,wchan,stack}``)
before it kills the client by its pid.  Everything it starts is stopped by
its own pid, path or device on the way out.

    PYTHONPATH=$PWD python scripts/probe_zfs_starts.py --rounds 10 --n 16
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

from thinp.validate import block
from thinp.validate import timing as vt


def _threads(pid: int) -> list[str]:
    out = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return out
    for tid in tids:
        p = f"/proc/{pid}/task/{tid}"
        try:
            st = open(f"{p}/stat").read()
            comm = st[st.index("(") + 1:st.rindex(")")]
            state = st[st.rindex(")") + 2]
            wchan = open(f"{p}/wchan").read().strip()
            try:
                stack = " <- ".join(x.split()[-1] for x in open(f"{p}/stack").read().split("\n")[:6] if x)
            except OSError:
                stack = "?"
            out.append(f"  {tid} {comm} {state} {wchan} | {stack}")
        except OSError:
            continue
    return out


def diagnose(label: str, stuck: list, daemon: int) -> None:
    print(f"--- WEDGE at {label}: {len(stuck)} client(s) still running", flush=True)
    for p in stuck:
        print(f" client {p.pid} {' '.join(p.args)}")
        print("\n".join(_threads(p.pid)))
    lines = _threads(daemon)
    states: dict = {}
    for line in lines:
        parts = line.split()
        states[(parts[2], parts[3])] = states.get((parts[2], parts[3]), 0) + 1
    print(f" daemon {daemon}: {len(lines)} threads; by (state, wchan): {states}")
    print("\n".join(lines))
    sys.stdout.flush()


def _exists(name: str) -> bool:
    return subprocess.run(["zfs", "list", "-H", "-o", "name", name], capture_output=True).returncode == 0


def run_all(cmds, bound: float, daemon: int, label: str, quiet: bool = False) -> tuple[float, int]:
    """Start every command at once, wait up to ``bound`` s; (seconds, wedged)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.005)
    t = time.perf_counter() - t0
    stuck = [p for p in procs if p.poll() is None]
    if stuck:
        diagnose(label, stuck, daemon)
        for p in stuck:
            p.kill()
    for p in procs:
        try:
            _o, err = p.communicate(timeout=5)
            if p.returncode and not stuck and not quiet:
                print(f" {' '.join(p.args)} failed {p.returncode}: {err.strip()[:200]}")
        except subprocess.TimeoutExpired:
            print(f" client {p.pid} left behind (uninterruptible)")
    return t, len(stuck)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--wave", type=int, default=0, help="clones at once (0: all N)")
    ap.add_argument("--bound", type=float, default=60.0)
    ap.add_argument("--retry-busy", type=float, default=0.0,
                    help="seconds a destroy refused as busy is retried for (0: let be, as the harness did)")
    ap.add_argument("--remove", choices=("force", "unmount"), default="unmount",
                    help="force: zfs destroy -f (the harness before 2026-12-07); unmount: umount, then "
                         "zfs destroy -r (thinp.validate.timing.zfs_destroy)")
    ap.add_argument("--mount", choices=("clone", "serial", "locked-clone"), default="locked-clone",
                    help="clone: each zfs clone mounts its clone (the harness before 2026-12-07); serial: "
                         "zfs clone -o mountpoint=none at once, then zfs set mountpoint (the mount) one at a "
                         "time under a lock; locked-clone: each whole zfs clone (with its mount) under the lock, "
                         "as thinp.validate.timing.RealSetup.create makes them")
    ap.add_argument("--daemon-args", default="", help="extra zfs-fuse options")
    a = ap.parse_args(argv)
    wedges = 0
    with contextlib.ExitStack() as stack:
        base = vt.scratch(stack, "2G")
        pool, mnt = stack.enter_context(block.real_zfs(workdir=base, size="2G",
                                                       daemon_args=a.daemon_args.split()))
        daemon = [int(x) for x in os.listdir("/proc") if x.isdigit() and
                  open(f"/proc/{x}/comm").read().strip() == "zfs-fuse" and
                  int(open(f"/proc/{x}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid()][0]
        vt.run_cmd(["zfs", "create", f"{pool}/deb"])
        vt._lay_debian(f"{mnt}/deb")
        vt.run_cmd(["zfs", "snapshot", f"{pool}/deb@base"])
        print(f"pool {pool} daemon {daemon}: {len(_threads(daemon))} threads", flush=True)
        k = 0
        for r in range(a.rounds):
            vt.drop_caches()
            vt.run_cmd(["zfs", "list", "-H", "-o", "name", pool])
            ids = list(range(k + 1, k + a.n + 1))
            k += a.n
            wave = a.wave or a.n
            t_clone, stuck = 0.0, 0
            for w in range(0, a.n, wave):
                lock = os.path.join(base, "zfs-mount.lock")
                cmds = ([["zfs", "clone", f"{pool}/deb@base", f"{pool}/ctr{i}"] for i in ids[w:w + wave]]
                        if a.mount == "clone" else
                        [["flock", lock, "zfs", "clone", f"{pool}/deb@base", f"{pool}/ctr{i}"]
                         for i in ids[w:w + wave]] if a.mount == "locked-clone" else
                        [["sh", "-c", f"zfs clone -o mountpoint=none {pool}/deb@base {pool}/ctr{i} && "
                                      f"flock {lock} zfs set mountpoint={mnt}/ctr{i} {pool}/ctr{i}"]
                         for i in ids[w:w + wave]])
                t, s = run_all(cmds,
                               a.bound, daemon, f"round {r + 1} clone wave {w // wave + 1}")
                t_clone += t
                stuck += s
            if stuck:           # a wedged daemon answers no destroy either
                wedges += 1
                print(f"round {r + 1}: {stuck} of {a.n} clones stuck: daemon wedged, stopping", flush=True)
                break
            s_rm = 0
            t0 = time.perf_counter()
            tries = 0
            for i in ids:       # one at a time, as the harness removes them
                end = time.monotonic() + a.retry_busy
                if a.remove == "unmount":       # as vt.zfs_destroy: umount, then destroy -r
                    if f" {mnt}/ctr{i} " in open("/proc/self/mounts").read():
                        _t, s = run_all([["umount", f"{mnt}/ctr{i}"]], a.bound, daemon, f"round {r + 1} umount ctr{i}")
                        s_rm += s
                    cmd = ["zfs", "destroy", "-r", f"{pool}/ctr{i}"]
                else:                           # as the harness did before: destroy -f
                    cmd = ["zfs", "destroy", "-f", f"{pool}/ctr{i}"]
                while True:
                    tries += 1
                    _t, s = run_all([cmd], a.bound, daemon, f"round {r + 1} destroy ctr{i}",
                                    quiet=a.retry_busy > 0)
                    s_rm += s
                    if s or time.monotonic() > end or not _exists(f"{pool}/ctr{i}"):
                        break
                    time.sleep(0.05)
            t_rm = time.perf_counter() - t0
            left = len(vt.run_cmd(["zfs", "list", "-H", "-o", "name", "-r", pool]).split()) - 2
            wedges += bool(stuck or s_rm)
            print(f"round {r + 1}: {a.n} clones {t_clone * 1e3:.0f} ms ({stuck} stuck), destroys {t_rm:.2f} s "
                  f"({s_rm} stuck, {tries} tries, {left} datasets left), daemon threads {len(_threads(daemon))}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
            if s_rm:
                print("daemon wedged: stopping", flush=True)
                break
    print(f"wedged rounds: {wedges} of {r + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

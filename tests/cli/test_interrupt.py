"""Ctrl-C stops a parallel compare and sweep: the worker processes are gone
and their temporary pools and engine roots removed.  SIGINT goes to the
parent alone (a terminal would signal the workers too), the harder case."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _as_a_terminal_starts_it() -> None:
    """SIGINT at its default disposition and unblocked, as a shell with job
    control starts a foreground command.  A runner started in the background
    of a non-interactive shell (``cmd &``) has SIGINT ignored, and that is
    inherited: a Python started so keeps ignoring it and Ctrl-C never
    reaches thinp (a CI run launched that way failed here with exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt(argv, tmp_path, want_workers, want_files):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    p = subprocess.Popen([sys.executable, "-m", "thinp", *argv], env=env, cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_a_terminal_starts_it)
    try:
        deadline = time.monotonic() + 600
        # wait (by state, not by time) until the workers run and have made their temporary roots
        while (len(_children(p.pid)) < want_workers or len(os.listdir(tmp)) < want_files) \
                and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        workers = _children(p.pid)
        assert len(workers) >= want_workers and len(os.listdir(tmp)) >= want_files
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err.strip().endswith("thinp: interrupted"), err
    assert "Traceback" not in err
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and
             open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    assert alive == [], "worker processes outlived Ctrl-C"
    assert os.listdir(tmp) == [], "temporary files left behind"
    return p.returncode


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_parallel_compare(tmp_path):
    _interrupt(["compare", "webapp", "--drivers", "overlay2,devicemapper,vfs", "-j", "3", "-q"], tmp_path, 3, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_parallel_sweep(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[grid]\nseed = [0, 1, 2, 3]\n[fixed]\npool = "100G"\ncontainers = 2000\n'
                    'write_per_container = "200M"\n')
    rc = _interrupt(["sweep", str(spec), "--out", str(tmp_path / "res"), "-j", "2", "-q"], tmp_path, 2, 1)
    assert rc == 130

"""A process killed at any instant leaves dm-format metadata at its last commit."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from thinp.thin.dm_metadata import DmMetadata

from .dm_crash_worker import digest
from .dm_fixtures import real_tool

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _state(path):
    with DmMetadata.open(path) as r:
        assert r.check().ok
        model = {}
        for d in r.devices():
            v, p, _ = r.mappings(d)
            model[d.dev_id] = dict(zip(v.tolist(), p.tolist()))
        return r.sb.trans_id, digest(model)


@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_reopens_at_a_commit(tmp_path, seed):
    tool = real_tool("thin_check")
    path, log = tmp_path / "metadata", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for round_ in range(4):
        before = log.read_text().splitlines() if log.exists() else []
        child = subprocess.Popen([sys.executable, "-m", "tests.thin.dm_crash_worker", str(path), str(log),
                                  str(seed * 100 + round_)], cwd=ROOT, env=env)
        # kill once it has committed a few more times, wherever it then is
        while child.poll() is None:
            done = log.read_text().splitlines() if log.exists() else []
            if len(done) >= len(before) + 3 + round_:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert subprocess.run([tool, str(path)], capture_output=True).returncode == 0
        trans, dig = _state(path)
        logged = dict(line.split() for line in log.read_text().splitlines())
        # the image is the last commit: logged with its digest, or committed
        # just before the kill, after the last logged one
        if str(trans) in logged:
            assert logged[str(trans)] == dig
            assert trans >= max(int(t) for t in logged)
        else:
            assert trans == max(int(t) for t in logged) + 1

"""A fresh clone or ``pip install`` has no ``../shared/fixtures``: every
built-in scenario, the overcommit image and the shipped data must work
without it.  The check runs in a subprocess whose audit hook refuses any
open() below a ``shared/fixtures`` directory, with ``THINP_FIXTURES``
pointing nowhere."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

GUARD = textwrap.dedent("""
    import sys

    def refuse(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            p = args[0].decode() if isinstance(args[0], bytes) else args[0]
            if "shared/fixtures" in p:
                raise PermissionError(f"read the fixtures at run time: {p}")
    sys.addaudithook(refuse)
""")


def run_hidden(code: str, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "THINP_FIXTURES": "/nonexistent/fixtures", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", GUARD + textwrap.dedent(code)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_guard_catches_a_fixture_read(tmp_path):
    r = run_hidden("open('/work/wt/shared/fixtures/SOURCES.md')")
    assert r.returncode != 0 and "read the fixtures at run time" in r.stderr


def test_every_builtin_scenario_runs_without_the_fixtures():
    r = run_hidden("""
        from thinp.workloads import run
        from thinp.workloads.scenarios import SCENARIOS
        for name in SCENARIOS:
            res = run(name, "overlay2", scale=0.02)
            assert res.error is None, (name, res.error)
            assert res.metrics["bytes_written"] > 0 or name == "read-heavy", name
            print(name, "ok")
        from thinp.experiments.overcommit import image_bytes
        assert image_bytes("debian-minbase") > 100 << 20
        print("overcommit image ok")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(" ok") == 8


def test_builtin_trace_matches_the_fixture_it_came_from(fixtures_dir):
    """The shipped operation list is what the strace reader makes of the
    fixture today; after a reader change, rerun scripts/make_traces.py."""
    from thinp.traces import builtin as builtin_traces, strace

    for name, rel in builtin_traces.BUILTIN.items():
        want = strace.read(fixtures_dir / rel)
        got = builtin_traces.load(name)
        assert got.stats == want.stats
        assert [(o.kind, o.path, o.path2, o.offset, o.size, o.mode, o.uid, o.gid, o.flags) for o in got.ops] == \
               [(o.kind, o.path, o.path2, o.offset, o.size, o.mode, o.uid, o.gid, o.flags) for o in want.ops]
        assert builtin_traces.builtin_name(rel) == name


def test_builtin_trace_names():
    from thinp.traces import builtin as builtin_traces

    assert builtin_traces.builtin_name("dpkg-install-nginx") == "dpkg-install-nginx"
    assert builtin_traces.builtin_name("/x/fixtures/workloads/dpkg-install-nginx.strace.gz") == "dpkg-install-nginx"
    assert builtin_traces.builtin_name("mine.strace") is None
    with pytest.raises(ValueError, match="unknown built-in trace 'nope'"):
        builtin_traces.load("nope")

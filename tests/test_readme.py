"""Every code block of README.md runs, and what it shows is what the code
prints, timings aside (``scripts/readme_blocks.py`` has the conventions;
``scripts/make_readme.py`` rewrites the shown outputs).  ``toml`` blocks
are loaded by tests/workloads/test_readme_examples.py.  Blocks marked
``<!-- readme-test: slow ... -->`` (the full default ``thinp compare``, a
2,000-container overcommit, the Dask cluster) run with ``--slow`` only; CI's
smoke run covers ``thinp compare`` at a small scale."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import readme_blocks as RB  # noqa: E402

BLOCKS = RB.parse((ROOT / "README.md").read_text())
RUNNABLE = [b for b in BLOCKS if b.lang in ("sh", "python")]


def test_the_readme_has_blocks_of_each_kind():
    assert {b.lang for b in BLOCKS} >= {"sh", "python", "toml"}
    assert all(b.lang in ("sh", "python", "toml", "text") for b in BLOCKS), {b.lang for b in BLOCKS}
    assert any(shown for b in RUNNABLE for _k, _s, shown in RB.statements(b))   # outputs are shown


def test_no_block_reads_the_fixtures():
    assert not [b.start for b in BLOCKS if "shared/fixtures" in b.code]


@pytest.fixture
def sandbox():
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="rd", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_every_block_runs_and_shows_what_it_prints(sandbox, slow):
    """In README order, in one sandbox (later blocks use what earlier ones made)."""
    tmp_path = sandbox
    RB.prepare_sandbox(str(tmp_path))
    ns: dict = {"__name__": "__readme__"}
    ran, skipped = 0, []
    for b in RUNNABLE:
        if b.mark == "skip" or (b.mark == "slow" and not slow):
            skipped.append(f"line {b.start}: {b.reason}")
            continue
        for k, shown, printed in RB.run_block(b, str(tmp_path), ns):
            ran += 1
            if shown is not None:
                assert RB.normalise(printed) == RB.normalise("\n".join(shown)), \
                    f"README line {b.start + k + 1}: shown output differs; run scripts/make_readme.py"
    assert ran > 10
    if skipped:
        print("not run:", *skipped, sep="\n  ")


def test_normalise_allows_timings_only():
    assert RB.normalise("done in 3.7 s (2.17 points/s)") == RB.normalise("done in 12.0 s (0.5 points/s)")
    assert RB.normalise("8 points ran") != RB.normalise("9 points ran")

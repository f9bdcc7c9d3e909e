"""compare() on the real ``thinp.workloads.run`` (skips until the workloads
branch is merged): the glue between RunResult, the byte accounting and the timing model."""
from __future__ import annotations

import pytest

import thinp.workloads as workloads

pytestmark = pytest.mark.skipif(not hasattr(workloads, "run"),
                                reason="thinp.workloads.run not merged into this build yet")


@pytest.fixture(scope="module")
def df():
    import thinp

    d, _fig = thinp.compare("webapp", drivers="overlay2,devicemapper", scale=0.1, progress=False)
    return d.set_index("driver")


def test_rows_and_no_errors(df):
    assert list(df.index) == ["overlay2", "devicemapper"]
    assert df["error"].isna().all()
    assert (df["containers"] >= 1).all()
    assert (df["sim_steps_s"] > 0).all() and (df["sim_first_write_s"] > 0).all()


def test_rankings_on_webapp(df):
    assert df.loc["devicemapper", "sim_start_s"] > df.loc["overlay2", "sim_start_s"]
    assert df.loc["devicemapper", "page_cache_bytes"] >= df.loc["overlay2", "page_cache_bytes"]
    assert df.loc["overlay2", "copy_up_bytes"] > 0 and df.loc["devicemapper", "cow_bytes"] > 0


def test_malformed_workload_is_one_line(tmp_path, capsys):
    from thinp.cli import main

    p = tmp_path / "w.toml"
    p.write_text("[workload]\nbogus_key = 1\n")
    rc = main(["compare", str(p), "--drivers", "overlay2", "--json"])
    err = capsys.readouterr().err
    assert rc != 0 and str(p) in err and err.count("\n") == 1 and "Traceback" not in err

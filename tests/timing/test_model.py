"""The timing model over real runs' operation logs: what it must show
whatever its constants (orderings with wide margins, never host timing)."""
import pytest

from thinp.timing import OpLog, TimingConstants, simulate
from thinp.workloads import Step, Workload, run
from thinp.workloads.format import ImageSpec, LayerSpec

MiB = 1 << 20


def _wl(steps, containers=1, layers=None, extra=()):
    img = ImageSpec("synthetic", None, layers=layers or [LayerSpec(4, 64 << 10, 1, "/data")],
                    extra=list(extra))
    return Workload("t", img, containers, steps, 1)


def test_every_container_operation_is_logged_with_driver_deltas():
    r = run(_wl([Step("append", path="/log", size=5, count=30), Step("read", glob="/data/**")]),
            "overlay2")
    log = r.oplog
    kinds = set(log.kind)
    assert {"container_start", "write", "read", "sync"} <= kinds
    assert log.kind.count("write") == 30
    assert all(d is None or len(d) == 9 for d in log.deltas)
    reads = [i for i, k in enumerate(log.kind) if k == "read"]
    assert all(log.pc[i][1] > log.pc[i][0] for i in reads)      # each read touched the page cache


def test_rereads_inside_one_container_hit_the_page_cache():
    once = run(_wl([Step("read", glob="/data/**")]), "overlay2").oplog
    twice = run(_wl([Step("read", glob="/data/**"), Step("read", glob="/data/**")]), "overlay2").oplog
    a, b = simulate(once), simulate(twice)
    assert a.hit_pages == 0 and a.miss_pages == 4 * 16
    assert b.miss_pages == a.miss_pages and b.hit_pages == 4 * 16


def test_page_cache_shared_on_overlay2_not_on_devicemapper():
    steps = [Step("read", glob="/data/**")]
    ov = simulate(run(_wl(steps, containers=4), "overlay2").oplog)
    dm = simulate(run(_wl(steps, containers=4), "devicemapper").oplog)
    assert ov.miss_pages == 64 and ov.hit_pages == 3 * 64
    assert dm.miss_pages == 4 * 64 and dm.hit_pages == 0


def test_a_small_cache_evicts():
    steps = [Step("read", glob="/data/**"), Step("read", glob="/data/**")]
    log = run(_wl(steps), "overlay2").oplog
    small = simulate(log, constants=TimingConstants(cache_bytes=16 * 4096))
    assert small.hit_pages == 0 and small.miss_pages == 2 * 64


def test_small_appends_reach_the_device_at_writeback_only():
    log = run(_wl([Step("append", path="/log", size=5, count=200)]), "devicemapper").oplog
    writes = [i for i, k in enumerate(log.kind) if k == "write"]
    assert sum(log.deltas[i][0] for i in writes) == 0          # no device bytes per append
    syncs = [i for i, k in enumerate(log.kind) if k == "sync" and log.phase[i] == "steps"]
    assert 0 < sum(log.deltas[i][0] for i in syncs) < 64 * 4096


def test_whole_file_copy_up_costs_more_than_block_cow_for_a_big_file():
    wl = _wl([Step("write", path="/big", offset=0, size=4096)], extra=[("/big", 64 * MiB)])
    ov = simulate(run(wl, "overlay2").oplog, device="sata-ssd")
    dm = simulate(run(wl, "devicemapper").oplog, device="sata-ssd")
    # 64 MiB read and written at ~500 MB/s against one 64 KiB chunk
    assert ov.per_container[0]["steps_s"] > 0.2
    assert ov.per_container[0]["steps_s"] > 10 * dm.per_container[0]["steps_s"]


def _contended(n):
    log = OpLog("overlay2")
    for p in range(n):
        pid = log.proc(0, p)
        for _ in range(100):
            log.add(pid, "write", "steps", 5, "/var/log/app.log", (0, -1, 0, 0, 0, 0, 0, 0, 0))
    return simulate(log, constants=TimingConstants(cores=4))


def test_appends_to_one_file_serialize_on_its_inode_lock():
    one, many = _contended(1), _contended(8)
    assert many.time_s > 5 * one.time_s            # 8x the work, on one lock: no parallel speed-up
    assert many.wait_shares().get("inode_i_rwsem", 0) > 0.5
    assert "inode_i_rwsem" not in one.wait_s


def test_devicemapper_starts_serialize_on_the_deviceset_lock():
    one = simulate(run(_wl([], containers=1), "devicemapper").oplog)
    rep = simulate(run(_wl([], containers=6), "devicemapper").oplog)
    assert rep.wait_s.get("devmapper_deviceset", 0) > 0
    assert rep.time_s == pytest.approx(6 * one.time_s, rel=0.1)
    ov = simulate(run(_wl([], containers=6), "overlay2").oplog)
    assert rep.time_s > 10 * ov.time_s


def test_compare_rows_carry_the_simulation():
    from thinp.experiments.compare import row_from_result

    r = run(_wl([Step("append", path="/log", size=5, count=10)], containers=2), "aufs")
    row = row_from_result(r)
    assert row["sim_time_s"] > 0 and row["sim_start_s"] > 0
    assert 0 <= row["sim_wait_device_share"] <= 1


def test_constants_from_toml_and_bad_values_name_the_key(tmp_path):
    from thinp.cost import CostModelError

    p = tmp_path / "c.toml"
    p.write_text("[timing]\ncores = 2\ncache_bytes = 8192\n[timing.start_s]\naufs = 0.5\n")
    k = TimingConstants.from_toml(p)
    assert k.cores == 2 and k.cache_bytes == 8192 and k.get("start_s", "aufs") == 0.5
    assert k.get("start_s", "devicemapper") == TimingConstants().get("start_s", "devicemapper")
    for body, msg in [("[timing]\ncorez = 2\n", "timing.corez"), ("[timing]\ncores = 0\n", "timing.cores = 0"),
                      ("[timing.start_s]\naufs = \"x\"\n", "timing.start_s")]:
        p.write_text(body)
        with pytest.raises(CostModelError, match=msg):
            TimingConstants.from_toml(p)


def test_more_cores_never_slow_a_cpu_bound_run():
    log = OpLog("overlay2")
    for p in range(8):
        pid = log.proc(0, p)
        for i in range(50):
            log.add(pid, "create", "steps", 0, f"/d{p}/f{i}", (0, -1, 0, 0, 0, 0, 0, 0, 0))
    t = [simulate(log, constants=TimingConstants(cores=c)).time_s for c in (1, 2, 4, 8)]
    assert t[0] > t[1] > t[2] > t[3]
    assert t[0] == pytest.approx(8 * t[3], rel=0.01)


def test_cli_bad_timing_key_is_one_line(tmp_path, capsys):
    from thinp.cli import main

    p = tmp_path / "bad.toml"
    p.write_text("[timing]\ncorez = 2\n")
    assert main(["compare", "webapp", "--constants", str(p), "--drivers", "overlay2", "--scale", "0.02",
                 "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"thinp: error: {p}: unknown key timing.corez = 2"]


def test_cli_cores_reaches_the_model(tmp_path, capsys):
    import json

    from thinp.cli import main

    rows = {}
    for cores in (1, 8):
        assert main(["compare", "webapp", "--drivers", "overlay2", "--scale", "0.1", "--json",
                     "--cores", str(cores)]) == 0
        out = json.loads(capsys.readouterr().out)
        rows[cores] = (out if isinstance(out, list) else out["rows"])[0]
    assert rows[1]["sim_time_s"] > rows[8]["sim_time_s"]         # 5 containers at once: CPU-bound in part
    assert rows[1]["bytes_written"] == rows[8]["bytes_written"]


def test_readme_lists_every_timing_constant_with_its_source():
    import dataclasses
    import pathlib

    from thinp.timing import SOURCES

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    k = TimingConstants()
    assert set(SOURCES) == {f.name for f in dataclasses.fields(k)}
    for f in dataclasses.fields(k):
        v = getattr(k, f.name)
        shown = ", ".join(f"{a}={b!r}" for a, b in v.items()) if isinstance(v, dict) else repr(v)
        assert f"| `{f.name}` | [timing] | `{shown}` | {SOURCES[f.name]} |" in readme, f.name


def test_waits_view_breaks_the_ranking_down(capsys):
    import json

    import pandas as pd

    from thinp.cli import main
    from thinp.experiments.compare import row_from_result, waits_view

    rows = [row_from_result(run(_wl([], containers=4), d)) for d in ("overlay2", "devicemapper")]
    for r in rows:
        shares = json.loads(r["sim_waits"])
        assert abs(sum(v for k, v in shares.items() if k not in ("cpu", "device", "barrier"))
                   - r["sim_wait_lock_share"]) < 1e-3
        assert json.loads(r["sim_phases"])["containers_create"] > 0
    view, cols = waits_view(pd.DataFrame(rows))
    assert cols[:2] == ["driver", "sim total s"]
    dm = next(v for v in view if v["driver"] == "devicemapper")
    assert dm["devmapper_deviceset"] > 0.5 and all(c in dm for c in cols)
    assert main(["compare", "webapp", "--scale", "0.1", "--drivers", "devicemapper", "-q", "--waits"]) == 0
    assert "devmapper_deviceset" in capsys.readouterr().out

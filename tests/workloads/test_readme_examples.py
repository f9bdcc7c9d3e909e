"""The README cannot rot: every ```toml block in it loads with thinp's own loaders
(workload, device/constants or sweep, told apart by their tables), the workload
blocks run, and its reference tables, findings and paths match the code."""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
import tomllib

import pytest

from thinp import cost
from thinp.experiments import sweep as S
from thinp.experiments.overcommit import overcommit
from thinp.workloads import format as F
from thinp.workloads import loads, run
from thinp.workloads.scenarios import load as load_workload

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TEXT = README.read_text()
FIXTURES = ROOT.parent / "shared" / "fixtures"


def toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", TEXT, flags=re.S | re.M)


def kind(block: str) -> str:
    tables = set(tomllib.loads(block))
    if tables & {"device", "constants"}:
        return "device"
    if tables & {"grid", "fixed", "experiment"}:
        return "sweep"
    return "workload"


def section(title: str) -> str:
    """The README text under a heading, up to the next heading of any level
    (fenced code blocks left out: their ``#`` comments are not headings)."""
    prose = re.sub(r"^```.*?^```\n", "", TEXT, flags=re.S | re.M)
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", prose, flags=re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def first_column_keys(table_text: str) -> set[str]:
    """Backticked names in the first column of every row of the markdown tables in ``table_text``."""
    keys = set()
    for line in table_text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            keys |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


BLOCKS = toml_blocks()


def test_the_readme_has_toml_blocks_of_every_kind():
    assert {kind(b) for b in BLOCKS} == {"workload", "device", "sweep"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}-{kind(b)}" for i, b in enumerate(BLOCKS)])
def test_toml_block_loads(block, tmp_path):
    k = kind(block)
    if k == "workload":
        if "../shared/fixtures" in block and not FIXTURES.is_dir():
            pytest.skip(f"real-data fixtures not found at {FIXTURES}")
        if "trace =" in block and not FIXTURES.is_dir():
            pytest.skip(f"real-data fixtures not found at {FIXTURES}")
        # src = the README: relative paths resolve from the project root, as for a file there
        w = loads(block, src=str(README))
        assert w.steps
    elif k == "device":
        path = tmp_path / "device.toml"
        path.write_text(block)
        data = tomllib.loads(block)
        if "device" in data:
            dev = cost.load_device(str(path))
            assert dev.name == data["device"].get("name", str(path))
        if "constants" in data:
            k2 = cost.CostConstants.from_toml(str(path))
            assert k2 != cost.CostConstants()
        if "timing" in data:
            from thinp.timing import TimingConstants

            assert TimingConstants.from_toml(str(path)) != TimingConstants()
    else:
        spec = tomllib.loads(block)
        assert spec.get("experiment", "overcommit") == "overcommit"
        params = set(inspect.signature(overcommit).parameters) - {"progress", "plot"}
        for table in ("grid", "fixed"):
            unknown = set(spec.get(table, {})) - params
            assert not unknown, f"[{table}] keys that thinp.overcommit does not take: {unknown}"
        points = S.expand(spec)
        assert points and len({S.point_hash(p) for p in points}) == len(points)
        row = S.run_point(points[0])        # one point really runs
        assert row["error"] == "", row["traceback"]


@pytest.mark.parametrize("block", [b for b in BLOCKS if kind(b) == "workload"],
                         ids=lambda b: tomllib.loads(b).get("name", "?"))
def test_workload_block_runs(block):
    """Loading is not enough: a step can still fail at run time (a glob that
    selects a file an earlier step deleted, say)."""
    if ("../shared/fixtures" in block or "trace =" in block) and not FIXTURES.is_dir():
        pytest.skip(f"real-data fixtures not found at {FIXTURES}")
    w = loads(block, src=str(README))
    r = run(w, "reference", scale=0.5 if w.containers > 2 else 1.0)
    assert r.error is None, r.error


@pytest.mark.parametrize("name", ["layered-app.toml", "device-sata-raid.toml", "sweep-small.toml"])
def test_example_files_are_in_the_readme_word_for_word(name):
    assert (ROOT / "examples" / name).read_text() in BLOCKS


def test_every_example_file_loads():
    for path in sorted((ROOT / "examples").glob("*.toml")):
        block = path.read_text()
        k = kind(block)
        if k == "workload":
            load_workload(str(path))
        elif k == "device":
            cost.load_device(str(path)) if "device" in tomllib.loads(block) else None
            cost.CostConstants.from_toml(str(path))
            from thinp.timing import TimingConstants

            TimingConstants.from_toml(str(path))
        else:
            assert S.expand(S.load_spec(str(path)))


# ------------------------------------------------------------------ the reference tables
def test_workload_reference_names_every_key_and_op():
    top = section("Top level")
    assert first_column_keys(top) - {"[image]", "[[steps]]"} == F._TOP_KEYS - {"image", "steps"}
    image = section("`[image]`: four kinds")
    for key in F._IMAGE_KEYS - {"layers", "extra"}:
        assert f"`{key} =" in image, key
    assert "[[image.layers]]" in image and "[[image.extra]]" in image
    layer_keys = first_column_keys(image.split("`[[image.layers]]` keys:")[1])
    assert layer_keys == F._LAYER_KEYS
    steps = section("`[[steps]]`")
    tables = [t.strip() for t in steps.split("\n\n")]
    key_table = next(t for t in tables if t.startswith("| key |"))
    op_table = next(t for t in tables if t.startswith("| op |"))
    assert first_column_keys(key_table) == F._STEP_KEYS
    assert first_column_keys(op_table) == set(F.OPS)


def test_device_table_is_thinp_cost_devices():
    want = set()
    for n, d in cost.DEVICES.items():
        lat = " / ".join(f"{x * 1e6:g}" for x in (d.read_latency_s, d.write_latency_s, d.discard_latency_s))
        bw = " / ".join(f"{x / 2**20:g}" for x in (d.read_bandwidth, d.write_bandwidth, d.discard_bandwidth))
        want.add(f"| `{n}` | {lat} | {bw} |")
    have = {line for line in section("Device profiles and cost constants").splitlines()
            if line.startswith("| `") and line.count("|") == 4
            and not line.split("|")[2].strip().startswith("`")}     # not a constants row
    assert have == want


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={v2!r}" for k, v2 in v.items())
    return repr(v)


def test_constants_table_is_thinp_cost_constants():
    k = cost.CostConstants()
    want = {f.name: _fmt(getattr(k, f.name)) for f in dataclasses.fields(k)}
    have = {}
    for line in section("Device profiles and cost constants").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            have[cells[0].strip("`")] = cells[1].strip("`")
    assert have == want


def test_timing_constants_table_is_generated_from_the_code():
    """The README's timing-constants table is scripts/make_readme.py's
    rendering of thinp.timing's defaults and SOURCES, row for row."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import make_readme

    region = re.search(r"<!-- generated: timing-constants -->\n(.*?)\n<!-- /generated -->", TEXT, flags=re.S)
    assert region, "no timing-constants region in the README"
    assert region.group(1) == make_readme.timing_constants_table()
    assert region.group(1) in section("Device profiles and cost constants")


def test_every_timing_constant_has_its_own_source():
    """One source per constant; an estimate says so, and a published figure is named with its figure."""
    from thinp.timing import SOURCES, TimingConstants

    assert set(SOURCES) == {f.name for f in dataclasses.fields(TimingConstants)}
    assert len(set(SOURCES.values())) == len(SOURCES)
    for name in ("start_s", "remove_s", "layer_cpu_s", "probe_s", "dm_worker_block_s", "dm_commit_writes",
                 "engine_run_s", "engine_rm_s"):
        text = SOURCES[name]
        assert "|" not in text                      # a markdown table cell
        assert "estimate" in text or re.search(r"\d", text), name
        # a value that is only an estimate says so plainly
        assert ("no published" in text) or re.search(r"(moby|dm-devel|arXiv)", text), name


def test_findings_are_thinp_cost_findings():
    text = section("Published findings")
    reproduced = text.split("\nReproduced:\n")[1].split("\nNot reproduced:\n")[0]
    not_reproduced = text.split("\nNot reproduced:\n")[1]

    def bullets(t):
        return [b.strip() for b in re.findall(r"^- (.*)$", t, flags=re.M)]

    assert bullets(reproduced) == cost.FINDINGS["reproduced"]
    assert bullets(not_reproduced) == cost.FINDINGS["not_reproduced"]


def test_paths_the_readme_names_exist():
    paths = set(re.findall(r"`((?:tests|examples|thinp|scripts|benchmarks|docs)/[\w./-]+)`", TEXT))
    paths |= set(re.findall(r"\]\(((?:docs|examples)/[\w./-]+)\)", TEXT))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_workload_python_api_block_runs(monkeypatch):
    [block] = [b for b in re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.S | re.M)
               if "from thinp.workloads import" in b]
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(compile(block, "README.md (workload API)", "exec"), ns)
    assert ns["r"].error is None
    assert sorted(ns["df"]["driver"]) == ["devicemapper", "overlay2"]
    assert ns["webapp"].name == "webapp" and ns["w2"].containers == 2

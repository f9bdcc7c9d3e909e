"""Workload format additions for timing: processes, metadata ops, exec,
read counts, docker run --rm, and --scale leaving small I/O alone."""
import pytest

from thinp.timing import simulate
from thinp.workloads import WorkloadError, loads, run
from thinp.workloads.run import SCALE_MIN_BYTES, scaled

IMAGE = """
[image]
layers = []
[[image.extra]]
path = "/data/big"
size = "256K"
"""


def wl(top="", steps=""):
    """A workload: top-level keys, the image, then the steps (TOML puts keys
    after a table header into that table)."""
    return loads('name = "t"\n' + top + IMAGE + steps)


def test_processes_run_the_steps_each_and_engine_steps_once():
    w = wl("""
containers = 2
processes = 3
""", """[[steps]]
op = "append"
path = "/log-{p}"
size = 5
count = 10
[[steps]]
op = "diff"
""")
    assert w.processes == 3
    r = run(w, "overlay2")
    log = r.oplog
    assert len(log.procs) == 6                              # (container, process) pairs
    writes = [log.path[i] for i, k in enumerate(log.kind) if k == "write"]
    assert sorted(set(writes)) == ["/log-0", "/log-1", "/log-2"]
    assert len(writes) == 2 * 3 * 10
    assert log.kind.count("diff") == 2                      # once per container
    rep = simulate(log)
    assert len(rep.per_container) == 2


def test_metadata_ops_exec_and_read_count_are_logged():
    w = wl("""
""", """[[steps]]
op = "stat"
path = "/data/big"
count = 7
[[steps]]
op = "readdir"
path = "/data"
count = 2
[[steps]]
op = "walk"
path = "/data"
[[steps]]
op = "exec"
path = "/data/big"
count = 2
[[steps]]
op = "read"
path = "/data/big"
count = 4
""")
    log = run(w, "aufs").oplog
    kinds = [k for k in log.kind if k not in ("container_start", "sync")]
    assert kinds.count("exec") == 2
    assert kinds.count("read") == 4
    assert kinds.count("readdir") == 2 + 1                  # 2 readdirs, 1 by the walk
    assert kinds.count("stat") == 7 + 1                     # the walk's lstat of /data/big
    rep = simulate(log)
    assert rep.miss_pages == 64 and rep.hit_pages == 5 * 64   # exec x2 + read x4 of 64 pages


def test_readlink_of_a_symlink():
    w = loads("""
name = "l"
[[steps]]
op = "readlink"
path = "/bin"
""")
    log = run(w, "overlay2", scale=0.05).oplog
    assert "readlink" in log.kind


def test_run_rm_prices_the_engine_and_removes_the_container():
    w = wl("""
containers = 2
run_rm = true
""", """[[steps]]
op = "append"
path = "/log"
size = 5
""")
    r = run(w, "overlay2")
    kinds = r.oplog.kind
    assert kinds.count("engine_run") == 2 and kinds.count("engine_rm") == 2
    assert kinds.count("container_rm") == 2
    plain = simulate(run(wl("containers = 2\n"), "overlay2").oplog)
    assert simulate(r.oplog).time_s > plain.time_s + 0.2


@pytest.mark.parametrize("bad, msg", [
    ("processes = 0\n", "processes = 0"),
    ("run_rm = 1\n", "run_rm = 1"),
    ('[[steps]]\nop = "readdir"\nglob = "/data/*"\n', "takes a path"),
    ('[[steps]]\nop = "walk"\n', "needs path"),
    ('[[steps]]\nop = "exec"\n', "needs path, glob or sample"),
])
def test_bad_values_name_the_key(bad, msg):
    with pytest.raises(WorkloadError, match=msg):
        wl(bad) if not bad.startswith("[[") else wl("", bad)


def test_scale_keeps_small_sizes_and_scales_big_ones():
    w = wl("""
containers = 10
""", """[[steps]]
op = "append"
path = "/log"
size = 5
count = 100
[[steps]]
op = "create"
path = "/out"
size = "10M"
""")
    s = scaled(w, 0.1)
    assert s.containers == 1
    assert s.steps[0].size == 5 and s.steps[0].count == 10          # a 5-byte append stays 5 bytes
    assert s.steps[1].size == 1 << 20
    assert s.image.extra[0][1] == max(SCALE_MIN_BYTES, round(256 * 1024 * 0.1))

"""The built-in scenarios (see :func:`scenarios`); ``scale`` in :func:`~thinp.workloads.run` shrinks them."""
from __future__ import annotations

import os

from .format import ImageSpec, LayerSpec, Step, Workload, WorkloadError, loads

#: the built-in trace (thinp/data/traces, made by scripts/make_traces.py from the fixture strace)
FIXTURE_STRACE = "dpkg-install-nginx"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def _webapp():
    return Workload("webapp", ImageSpec(extra=[("/srv/app/db.sqlite", 4 * MiB)]), 50, [
        Step("mkdir", path="/var/log/app"),
        Step("append", path="/var/log/app/access.log", size=200, count=200),
        Step("write", path="/srv/app/db.sqlite", offset="random", size=4 * KiB, count=64),
        Step("fsync", path="/srv/app/db.sqlite"),
        Step("read", sample=20, glob="/usr/lib/**"),
    ], 1, "50 containers on debian-minbase appending logs and rewriting a 4 MiB sqlite-like "
          "file with random 4 KiB writes")


def _ci_build():
    steps = []
    for i in range(10):
        steps += [Step("create", path=f"/build/out-{i}.bin", size=10 * MiB),
                  Step("commit", chain=True)]
    return Workload("ci-build", ImageSpec(), 1, steps, 2,
                    "a chain of 10 commits, each changing 10 MiB")


def _package_install():
    return Workload("package-install", ImageSpec(), 4, [Step("strace", trace=FIXTURE_STRACE)], 3,
                    "the real nginx `dpkg -i` strace replayed in N containers")


def _big_file():
    return Workload("big-file-update", ImageSpec("synthetic", None, extra=[("/data/big.img", 1 * GiB)]), 1,
                    [Step("write", path="/data/big.img", offset="random", size=4 * KiB, count=2000),
                     Step("fsync", path="/data/big.img")], 4,
                    "random 4 KiB updates to a 1 GiB file")


def _many_small():
    return Workload("many-small-files", ImageSpec(), 1,
                    [Step("files", path="/data/small", count=10001, size=512)], 5,
                    "10,001 files of 512 B")


def _file_tree():
    return Workload("file-tree", ImageSpec(), 1,
                    [Step("tree", path="/tree", depth=10, fanout=2, size=1 * KiB)], 6,
                    "a deep binary directory tree (depth 10, a 1 KiB file per directory)")


def _read_heavy():
    return Workload("read-heavy", ImageSpec("synthetic", None, layers=[LayerSpec(8, 64 * MiB, 1, "/data")]), 10,
                    [Step("read", glob="/data/**")], 7, "N containers reading the same large files")


SCENARIOS = {"webapp": _webapp, "ci-build": _ci_build, "package-install": _package_install,
             "big-file-update": _big_file, "many-small-files": _many_small, "file-tree": _file_tree,
             "read-heavy": _read_heavy}


def scenario(name: str) -> Workload:
    w = SCENARIOS[name]()
    w.source = f"scenario:{name}"
    return w


def scenarios() -> list[str]:
    return list(SCENARIOS)


def load(source) -> Workload:
    """A workload from a TOML path or a built-in scenario name, as parsed
    (:func:`thinp.workloads.load` also dry-runs a file)."""
    s = os.fspath(source)
    if s in SCENARIOS:
        return scenario(s)
    if not os.path.exists(s):
        raise WorkloadError(f"{s}: no such workload file or built-in scenario "
                            f"(scenarios: {', '.join(SCENARIOS)})")
    with open(s, "rb") as f:
        data = f.read()
    try:
        return loads(data.decode(), s)
    except UnicodeDecodeError:
        raise WorkloadError(f"{s}: not a UTF-8 TOML file") from None

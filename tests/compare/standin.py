"""A tiny stand-in for ``thinp.workloads`` (``load``/``run``) until the
workloads branch is merged: RunResult-shaped objects straight from
:class:`thinp.Engine`.

Workload ``"applog"``: an image with a big file, a shared library and a log;
each container appends to the log, reads the library and rewrites 4 KiB of
the big file.  ``"readers"``: each container only reads the library.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field

import thinp


@dataclass
class Workload:
    name: str
    containers: int = 5
    big: int = 1 << 20
    lib: int = 256 << 10
    write_big: bool = True
    append: bool = True


@dataclass
class RunResult:
    driver: str
    workload: str
    metrics: dict = field(default_factory=dict)
    per_container: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    error: str | None = None


SCENARIOS = {
    "applog": Workload("applog"),
    "readers": Workload("readers", write_big=False, append=False),
    "bigimage": Workload("bigimage", big=8 << 20, write_big=False),
    "bigwrite": Workload("bigwrite", big=8 << 20, append=False),
}


def load(source):
    if str(source).endswith(".toml"):       # as thinp.workloads.load says it
        raise ValueError(f"{source}: no such workload file or built-in scenario")
    if source not in SCENARIOS:
        raise ValueError(f"unknown scenario {source!r}")
    return SCENARIOS[source]


def scenarios():
    return sorted(SCENARIOS)


def _image_tar(w: Workload):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        for d in ("etc", "usr", "usr/lib", "var", "var/log"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        for name, size in (("etc/big.db", w.big), ("usr/lib/libc.so", w.lib), ("var/log/app.log", 4096)):
            ti = tarfile.TarInfo(name)
            ti.size = size
            t.addfile(ti, io.BytesIO(bytes(size)))
    b.seek(0)
    return b


def _delta(a, b):
    return {k: b[k] - a[k] for k in b}


def run(workload, driver, *, root=None, scale=1.0, progress=None, **driver_options):
    w = load(workload) if isinstance(workload, str) else workload
    res = RunResult(driver, w.name)
    try:
        with thinp.Engine(driver, root=root, **driver_options) as e:
            def metrics():      # as thinp.workloads.run measures: after sync(1)
                e.sync()
                return e.metrics()

            m0 = metrics()
            e.import_(_image_tar(w), "img:1")
            m1 = metrics()
            cs = [e.create("img:1") for _ in range(max(1, int(w.containers * scale)))]
            for c in cs:
                e.start(c)
            m2 = metrics()
            for c in cs:
                a = metrics()
                ops = [("read", "/usr/lib/libc.so")]
                if w.append:
                    ops.append(("write", "/var/log/app.log", 4096, 200))
                if w.write_big:
                    ops.append(("write", "/etc/big.db", 8192, 4096))
                e.exec(c, ops)
                res.per_container.append(_delta(a, metrics()))
            m3 = metrics()
            res.phases = {"image_load": _delta(m0, m1), "containers_create": _delta(m1, m2),
                          "steps": _delta(m2, m3)}
            res.metrics = m3
    except Exception as ex:
        res.error = f"{type(ex).__name__}: {ex}"
    return res

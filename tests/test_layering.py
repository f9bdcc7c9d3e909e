"""The package's layers, as ../shared/DESIGN.md draws them: a module imports
only from layers below its own (lazy imports inside functions count too), and
no two modules import each other, directly or round a circle.

The order is DESIGN.md's layout list, read bottom-up, with two facts the code
shows: ``trace`` (the trace dtype) and ``units`` sit with the leaves, and
``plot`` sits below ``experiments`` (which draws its figures with it)."""
from __future__ import annotations

import ast
import pathlib

import thinp

PKG = pathlib.Path(thinp.__file__).resolve().parent

#: bottom first; a component may import only components listed before it
LAYERS = [
    "errors", "jitcache", "config", "jitnotice", "units", "trace",
    "pdata",        # dm's persistent data: block manager, transactions, btrees, space maps
    "thin",         # pool, device, tools
    "blockdev",     # the BlockDevice protocol, PlainDevice
    "fs",           # filesystem models
    "image",        # layers, tars, manifests, references
    "traces",       # strace and block-trace readers
    "drivers",      # Docker's storage drivers
    "engine",       # Docker-like facade
    "workloads",    # TOML format, scenarios, image profiles, runs
    "cost", "timing",
    "plot",
    "experiments",  # compare, overcommit, sweep
    "validate",     # side by side with the real kernel and tools
    "docker",       # docker verbs over a persistent root, registry client, builder (runs RUN via validate.capture)
    "cli", "__main__",
]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(mod: str, path: pathlib.Path):
    """(line, imported thinp module) for every import in ``path``, lazy ones included."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for top in ast.walk(tree)          # ``if TYPE_CHECKING:`` imports never run
                   if isinstance(top, ast.If) and getattr(top.test, "id", "") == "TYPE_CHECKING"
                   for stmt in top.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:     # ``from . import x`` may name a module
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def _component(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if parts[0] == "thinp" and len(parts) > 1 else None


def test_every_component_has_a_layer():
    comps = {_component(m) for m in MODULES} - {None}
    assert comps <= set(LAYERS), sorted(comps - set(LAYERS))


def test_no_upward_imports():
    rank = {c: i for i, c in enumerate(LAYERS)}
    bad = []
    for mod, path in MODULES.items():
        me = _component(mod)
        if me is None:      # thinp/__init__.py: the curated API may name any layer
            continue
        for line, target in _imports(mod, path):
            other = _component(target)
            if other is not None and other != me and rank[other] > rank[me]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} imports {target} (above it)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for _line, target in _imports(mod, path):
            if target in MODULES and target != mod:
                graph[mod].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on, cycles, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk really finds imports, relative and lazy: drivers import fs."""
    found = {t for _l, t in _imports("thinp.drivers.union", MODULES["thinp.drivers.union"])}
    assert "thinp.fs" in found and "thinp.drivers.base" in found
    lazy = {t for _l, t in _imports("thinp.cli.compare", MODULES["thinp.cli.compare"])}
    assert any(t.startswith("thinp.experiments") for t in lazy)     # imported inside a function

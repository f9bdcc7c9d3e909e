"""A module's underscore names are its own (../shared/STYLE.md, "Public entry
points, no reach-ins"): no module of the package imports another module's
``_name`` or reaches into ``obj._name`` that its own source does not define.

Rules, checked on the AST of every module under thinp/:

* ``from M import _x`` is allowed only for a private *module* ``_x`` of the
  importer's own package (``from . import _kernels`` inside ``fs/``);
* ``obj._x`` (``obj`` not ``self``, ``cls`` or ``super()``) is allowed only
  when the same module defines ``_x`` -- a function, class, method, or an
  attribute it assigns -- as a view and its driver written side by side do.
"""
from __future__ import annotations

import ast
import pathlib

import thinp

PKG = pathlib.Path(thinp.__file__).resolve().parent

#: NamedTuple's public API is spelt with an underscore
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}



def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            out.add(node.value)      # __slots__ entries, setattr(obj, "_x", ...)
    return out


def violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG.parent)
    pkg = ".".join(rel.parent.parts)
    mine = _defined(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for i, part in enumerate(target.split(".")):
                if _private(part) and ".".join(target.split(".")[:i]) != pkg:
                    out.append(f"{rel}:{node.lineno}: imports from another package's private module {target}")
                    break
            for alias in node.names:
                if _private(alias.name):
                    own_module = node.module is None and target == pkg and (
                        (PKG.parent / target.replace(".", "/") / f"{alias.name}.py").exists())
                    if not own_module:
                        out.append(f"{rel}:{node.lineno}: imports {target}.{alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            v = node.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                continue
            if node.attr not in mine and node.attr not in NAMEDTUPLE_API:
                out.append(f"{rel}:{node.lineno}: reaches into {ast.unparse(node)}")
    return out


def test_no_module_uses_another_modules_underscore_names():
    bad = [v for f in sorted(PKG.rglob("*.py")) for v in violations(f)]
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_reach_in(tmp_path):
    probe = PKG / "_probe_reach_in_tmp.py"
    probe.write_text("from .fs.core import _split\n\ndef f(fs):\n    return fs._lookup('/')\n"
                     "\nclass A:\n    def _mine(self):\n        return other._mine()\n")
    try:
        got = violations(probe)
    finally:
        probe.unlink()
    assert any("imports thinp.fs.core._split" in g for g in got), got
    assert any("fs._lookup" in g for g in got), got
    assert not any("_mine" in g for g in got), got

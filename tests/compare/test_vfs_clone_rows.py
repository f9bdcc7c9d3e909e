"""The vfs row of ``thinp compare`` is the same whether a layer's tree is
copied by :meth:`Filesystem.clone_tree` (the bulk path vfs uses) or by the
per-path calls it replaced (tests/reference/copy_tree.py): every byte, count
and modelled-time column; only ``run_s`` (this machine's wall clock) may differ."""
from __future__ import annotations

import math

from tests.reference.copy_tree import copy_tree_per_path
from thinp.experiments.compare import compare
from thinp.fs.core import Filesystem


def _row(root):
    df, _fig = compare("webapp", drivers="vfs", scale=0.05, progress=False, jobs=1, root=root)
    assert len(df) == 1
    return df.iloc[0].to_dict()


def test_vfs_row_same_with_per_path_copy(monkeypatch, tmp_path):
    import thinp.drivers.vfs as vfs_mod

    calls = []
    orig = Filesystem.clone_tree

    def counting(self, src, dst):
        calls.append(dst)
        return orig(self, src, dst)

    monkeypatch.setattr(Filesystem, "clone_tree", counting)
    bulk = _row(tmp_path / "a")
    assert calls, "vfs did not copy its layers through Filesystem.clone_tree"
    assert not bulk["error"] and bulk["inodes"] > 1000
    n = len(calls)
    monkeypatch.setattr(vfs_mod, "copy_dir", copy_tree_per_path)
    per_path = _row(tmp_path / "b")
    assert len(calls) == n, "the reference run still went through clone_tree"
    assert bulk.keys() == per_path.keys()
    for k, v in bulk.items():
        if k == "run_s":
            continue
        w = per_path[k]
        if isinstance(v, float) and math.isnan(v):
            assert isinstance(w, float) and math.isnan(w), k
        else:
            assert v == w, f"{k}: clone_tree {v!r} != per-path {w!r}"

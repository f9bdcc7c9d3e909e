"""thin_restore into dm's format builds the trees thin_restore 0.9.0 builds."""
from __future__ import annotations

import io
import subprocess

from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.dm_restore import restore_image
from thinp.thin.dump import dump_xml

from .dm_fixtures import real_tool, unpack


def test_halves_restore_is_thin_restore_090(fixtures_dir, tmp_path):
    tool = real_tool("thin_restore")
    img = unpack(fixtures_dir, "tmeta_with_shared_internals_and_leaves", tmp_path)
    with DmMetadata.open(img) as r:
        buf = io.StringIO()
        dump_xml(r.pool_view(), buf)
    xml = tmp_path / "x.xml"
    xml.write_text(buf.getvalue())
    real = tmp_path / "real"
    with open(real, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([tool, "-i", str(xml), "-o", str(real)], check=True, capture_output=True)
    mine = tmp_path / "mine"
    assert restore_image(xml, mine, nr_metadata_blocks=4096) == 131136
    with DmMetadata.open(real) as a, DmMetadata.open(mine) as b:
        assert a.check().ok and b.check().ok
        sa, sb = a.shapes(), b.shapes()
        for tree in ("details", "top", "subtrees"):
            x, y = getattr(sa, tree), getattr(sb, tree)
            assert (x.nr_leaves, x.nr_internal, x.nr_entries) == (y.nr_leaves, y.nr_internal, y.nr_entries), tree
        assert sb.subtrees.nr_leaves == 1040  # even halves: sequential leaves half full, no sharing
        assert (a.metadata_counts() > 0).sum() == (b.metadata_counts() > 0).sum()
        view = io.StringIO()
        dump_xml(b.pool_view(), view)
    assert view.getvalue() == xml.read_text()
    assert subprocess.run([real_tool("thin_check"), str(mine)], capture_output=True).returncode == 0

"""thinp.plot's notebook figures: titled, labelled with units, and drawn from real values."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")

from thinp import plot  # noqa: E402
from thinp.thin import ThinPool, block_map, grow_devices  # noqa: E402

BS = 64 * 1024


def texts(fig):
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return out


def test_block_map_figure(tmp_path):
    pool = ThinPool.create(tmp_path / "p", data_size=64 * BS, block_size=BS)
    pool.create_thin(0, 16 * BS).write(0, 8 * BS)
    pool.create_snap(1, 0).write(0, BS)
    bm = block_map(pool)
    fig = plot.block_map_figure(bm, title="origin and one snapshot", names={0: "origin", 1: "snap"})
    t = texts(fig)
    assert "origin and one snapshot" in t
    assert any("64 KiB" in s for s in t)          # the x axis says how big a block is
    heat, matrix = fig.axes[0], fig.axes[1]
    assert [x.get_text() for x in heat.get_yticklabels()] == ["origin", "snap"]
    # the state image is the block map's state; the matrix annotates shared counts
    assert np.array_equal(heat.get_images()[0].get_array(), bm.state)
    cells = [x.get_text() for x in matrix.texts]
    assert cells == ["8", "7", "7", "8"]
    fig.savefig(tmp_path / "bm.png")
    pool.close()


def test_growth_plot(tmp_path):
    pool = ThinPool.create(tmp_path / "p", data_size=100 * BS, block_size=BS, low_water_mark=10)
    for dev_id in (0, 1):
        pool.create_thin(dev_id, 64 * BS).write(0, 30 * BS)
    r = grow_devices(pool, 1.0)   # 60 blocks asked for, 40 free
    fig = plot.growth_plot(r, title="what if")
    t = texts(fig)
    assert "Data% and Meta% (% used)" in t
    assert any("writes issued" in s and "64 KiB" in s for s in t)
    assert any(s.startswith("asked to write (MiB)") for s in t)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "out of data space (write 40)" in labels
    assert "low water mark (write 29)" in labels
    fig.savefig(tmp_path / "g.png")
    pool.close()


def test_overcommit_whatif_plot():
    runs = {}
    for name, full in (("small blocks", 80.0), ("big blocks", 95.0)):
        runs[name] = pd.DataFrame({"container": [1, 2, 3], "data_pct": [10.0, 50.0, full],
                                   "meta_pct": [1.0, 2.0, 3.0], "host_bytes": [1 << 30, 2 << 30, 3 << 30],
                                   "events": ["", "low_water_mark", "out_of_data_space"]})
    fig = plot.overcommit_whatif_plot(runs, columns=("data_pct", "host_bytes"), title="block size")
    ax_data, ax_host = fig.axes
    assert ax_data.get_title() == "block size"
    assert ax_host.get_ylabel() == "loop file on the host disk (GiB)"
    assert list(ax_host.get_lines()[0].get_ydata()) == [1.0, 2.0, 3.0]
    labels = ax_data.get_legend_handles_labels()[1]
    assert labels[:2] == ["small blocks", "low water mark"] and "out of data space" in labels
    assert "containers launched" in fig.axes[-1].get_xlabel()


def test_fill_curves():
    fig = plot.fill_curves({"64 KiB": ([0, 1, 2], [0, 10, 20]), "1 MiB": ([0, 1, 2], [0, 50, 100])},
                           "random 4 KiB writes (MiB written)", "block size")
    (ax,) = fig.axes
    assert ax.get_title() == "block size" and ax.get_xlabel() == "random 4 KiB writes (MiB written)"
    assert ax.get_ylabel() == "Data% (data used, % of pool)"
    assert [line.get_label() for line in ax.get_lines()[:2]] == ["64 KiB", "1 MiB"]
    assert list(ax.get_lines()[1].get_ydata()) == [0, 50, 100]

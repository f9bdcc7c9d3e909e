"""Figures (matplotlib is imported only when a figure is drawn).

Every figure has a title saying what it shows and axes labelled with units."""
from __future__ import annotations

import math


def _mib(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else x / (1 << 20)


def _ms(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else x * 1e3


def compare_figure(df, title: str = ""):
    """A 2x2 figure of a :func:`thinp.compare` DataFrame: disk used (data vs
    metadata, stacked, MiB), bytes written (MiB), the timing model's time per
    container (start and steps, stacked, ms) and page-cache memory (MiB),
    one bar per driver.  A failed driver shows
    as an empty slot labelled "failed"."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover
            pass
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    drivers = list(df["driver"])
    failed = [bool(e) and isinstance(e, str) for e in df.get("error", [None] * len(df))]
    x = range(len(drivers))
    labels = [d + ("\n(failed)" if f else "") for d, f in zip(drivers, failed)]

    def panel(ax, ylabel, heading, values=(), parts=()):
        ax.set_title(heading, fontsize=11, fontweight="bold")
        pos = [v for v in values if v and v > 0]
        if pos and max(pos) / min(pos) > 30:    # one driver (vfs) dwarfs the rest
            ax.set_yscale("log")
            ylabel += " (log scale)"
            # the axis starts below the smallest bar or stacked part, so a
            # stacked bar's lower part is not cut off by the log axis
            small = [v for v in list(parts) + pos if v and v > 0]
            ax.set_ylim(bottom=min(small) / 2, top=max(pos) * 1.6)
        ax.set_ylabel(ylabel)
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=9)
        ax.grid(axis="y", alpha=0.3)

    ax = axes[0][0]
    data = [_mib(v) for v in df["disk_data_bytes"]]
    meta = [_mib(v) for v in df["disk_metadata_bytes"]]
    ax.bar(x, data, label="data", color="#4C72B0")
    ax.bar(x, meta, bottom=data, label="metadata", color="#DD8452")
    ax.legend(fontsize=8)
    panel(ax, "MiB", "Disk used (data + metadata)", [a + b for a, b in zip(data, meta)], data + meta)

    ax = axes[0][1]
    written = [_mib(v) for v in df["bytes_written"]]
    ax.bar(x, written, color="#55A868")
    panel(ax, "MiB", "Bytes written to the device", written)

    ax = axes[1][0]
    start = [_ms(v) for v in df["sim_start_s"]]
    steps = [_ms(v) for v in df["sim_steps_s"]]
    ax.bar(x, start, label="start", color="#C44E52")
    ax.bar(x, steps, bottom=start, label="steps", color="#E8A0A2")
    ax.legend(fontsize=8)
    panel(ax, "ms per container", "Time per container (simulated: start + steps)",
          [a + b for a, b in zip(start, steps)], start + steps)

    ax = axes[1][1]
    ax.bar(x, [_mib(v) for v in df["page_cache_bytes"]], color="#8172B3")
    panel(ax, "MiB", "Page-cache memory")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig  # constrained layout: no tight_layout() (it would switch engines and warn)


_MARKERS = {"low_water_mark": ("v", "tab:orange", "low water mark"),
            "min_free_space": ("x", "tab:red", "dm.min_free_space refusal"),
            "out_of_data_space": ("o", "black", "out of data space"),
            "out_of_metadata_space": ("s", "tab:purple", "out of metadata space"),
            "metadata_failure": ("X", "tab:red", "metadata failure (needs_check)"),
            "autoextend": ("^", "tab:green", "autoextend (pool grew)"),
            "no_space_timeout": ("P", "tab:brown", "no_space_timeout: queued writes failed"),
            "queued_hang": ("D", "tab:brown", "writes queued, no space")}


def overcommit_plot(df, title=None):
    """Data% and Meta% against containers started, events marked, one line
    per driver; a second axis shows the pool size (GiB) when it grew."""
    import matplotlib

    if not matplotlib.get_backend() or "inline" not in matplotlib.get_backend():
        try:
            matplotlib.use("Agg", force=False)
        except Exception:
            pass
    import matplotlib.pyplot as plt

    fig, (ax, axm) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[3, 1.4])
    seen = set()
    for driver, g in df.groupby("driver", sort=False):
        line, = ax.plot(g["container"], g["data_pct"], label=f"{driver} Data%")
        if "host_bytes" in g and driver == "devicemapper":
            host = 100.0 * g["host_bytes"] / g["data_total_bytes"]
            if (host - g["data_pct"]).abs().max() > 1.0:   # blocks freed in the pool, not on the host
                ax.plot(g["container"], host, color=line.get_color(), ls="--",
                        label=f"{driver} loop file on the host (% of pool)")
        axm.plot(g["container"], g["meta_pct"], color=line.get_color(),
                 label=f"{driver} Meta%" + (" (inodes)" if driver != "devicemapper" else ""))
        for kind, (m, c, label) in _MARKERS.items():
            hit = g[g["events"].fillna("").str.split(",").apply(lambda e: kind in e)]
            if kind in ("min_free_space", "out_of_data_space") and len(hit):
                hit = hit.iloc[:1]   # the first one; the rest repeat it
            if len(hit):
                ax.scatter(hit["container"], hit["data_pct"], marker=m, color=c, zorder=3, s=50,
                           label=None if kind in seen else label)
                seen.add(kind)
        if g["data_total_bytes"].nunique() > 1:
            ax2 = ax.twinx()
            ax2.step(g["container"], g["data_total_bytes"] / 2**30, color="tab:green", ls="--", where="post",
                     label="pool size (GiB)")
            ax2.set_ylabel("pool data size (GiB)")
            ax2.legend(loc="center right", fontsize=8)
    if (df["driver"] == "devicemapper").any():
        ax.axhline(90, color="grey", lw=0.8, ls=":", label="90%: Docker's default dm.min_free_space")
    ax.set_ylabel("data used (% of pool)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Overcommit: pool use as containers start", fontsize=10, wrap=True)
    axm.set_ylabel("metadata used (%)")
    axm.set_xlabel("containers launched, in order (count; refused ones included)")
    axm.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _figure(figsize, **kw):
    """A Figure not attached to pyplot (Agg canvas), so scripts and tests
    leak no open windows; notebooks display it as the cell's value."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, **kw)


def block_map_figure(bm, title=None, names=None):
    """Two heatmaps of a :class:`thinp.thin.BlockMap`.

    Left: one row per device, one column per virtual block, each cell
    coloured by what the device maps there: unmapped, a data block only this
    device maps (exclusive), or one other mappings point at too (shared).
    Right: how many data blocks each pair of devices has in common (the
    diagonal is each device's own mapped blocks), annotated.  ``names`` maps
    dev_id to a row label (default ``dev <id>``)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    from .thin.blockmap import EXCLUSIVE, SHARED, STATE_NAMES, UNMAPPED

    names = names or {}
    labels = [names.get(int(d), f"dev {int(d)}") for d in bm.dev_ids]
    n, width = bm.pblocks.shape
    fig = _figure((12, 1.6 + 0.45 * n), layout="constrained")
    ax, axm = fig.subplots(1, 2, width_ratios=[3, 1.2])
    colours = {UNMAPPED: "#eeeeee", EXCLUSIVE: "#4C72B0", SHARED: "#DD8452"}
    cmap = ListedColormap([colours[k] for k in (UNMAPPED, EXCLUSIVE, SHARED)])
    ax.imshow(bm.state, cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3), aspect="auto",
              interpolation="nearest", extent=(bm.begin - 0.5, bm.end - 0.5, n - 0.5, -0.5))
    ax.set_yticks(range(n), labels)
    kib = bm.block_size // 1024
    ax.set_xlabel(f"virtual block of the thin device (one block = {kib} KiB)")
    ax.set_title("What each device maps, block by block", fontsize=11, fontweight="bold")
    ax.legend(handles=[Patch(color=colours[k], label=STATE_NAMES[k]) for k in (EXCLUSIVE, SHARED, UNMAPPED)],
              loc="upper left", bbox_to_anchor=(0, -0.18 if n > 2 else -0.35), ncol=3, fontsize=8, frameon=False)
    if width <= 64 and n <= 12:   # small maps: print the data block each cell maps to
        for i in range(n):
            for j in range(width):
                p = bm.pblocks[i, j]
                if p >= 0:
                    ax.text(bm.begin + j, i, str(int(p)), ha="center", va="center", fontsize=6,
                            color="white" if bm.state[i, j] == EXCLUSIVE else "black")
    m = bm.shared_matrix()
    im = axm.imshow(m, cmap="Greens", vmin=0, vmax=max(1, int(m.max())))
    axm.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    axm.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            axm.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                     color="white" if m[i, j] > 0.6 * m.max() else "black")
    axm.set_title("Data blocks in common\n(count of data blocks)", fontsize=11, fontweight="bold")
    fig.colorbar(im, ax=axm, shrink=0.8, label="data blocks")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


_OC_COLUMNS = {"data_pct": ("Data% (data used, % of pool)", 1.0),
               "meta_pct": ("Meta% (metadata used, % of pool metadata)", 1.0),
               "host_bytes": ("loop file on the host disk (GiB)", 2.0 ** -30),
               "data_used_bytes": ("pool data used (GiB)", 2.0 ** -30),
               "overcommit_ratio": ("overcommit (virtual / real size, x)", 1.0)}


def overcommit_whatif_plot(runs, columns=("data_pct", "meta_pct"), title=None):
    """Several :func:`thinp.overcommit` runs side by side: ``runs`` maps a
    label (say ``"64 KiB blocks"``) to the run's DataFrame.  One panel per
    column (``data_pct``, ``meta_pct``, ``host_bytes``, ``data_used_bytes``,
    ``overcommit_ratio``), one line per run, against containers launched;
    the first low-water-mark, out-of-data-space and ``dm.min_free_space``
    events of each run are marked on every panel.  Runs that coincide stay
    visible: each later run's line is thinner and dashed differently."""
    fig = _figure((9, 2.2 + 2.6 * len(columns)), layout="constrained")
    axes = fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    seen = set()
    for k, (label, df) in enumerate(runs.items()):
        colour = f"C{k}"
        # runs that coincide stay visible: later lines are thinner and dashed
        style = dict(ls=("-", "--", ":", "-.")[k % 4], lw=max(0.8, 3.2 - 0.7 * k))
        for ax, col in zip(axes, columns):
            ylabel, scale = _OC_COLUMNS.get(col, (col, 1.0))
            ax.plot(df["container"], df[col] * scale, color=colour, label=label, **style)
            ax.set_ylabel(ylabel, fontsize=9)
            for kind in ("low_water_mark", "min_free_space", "out_of_data_space"):
                hit = df[df["events"].fillna("").str.split(",").apply(lambda e: kind in e)]
                if len(hit):
                    m, c, name = _MARKERS[kind]
                    ax.scatter(hit["container"].iloc[:1], hit[col].iloc[:1] * scale, marker=m, color=c, s=55,
                               zorder=3, label=None if (kind, ax) in seen else name)
                    seen.add((kind, ax))
    for ax, col in zip(axes, columns):
        if col.endswith("_pct"):
            ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("containers launched, in order (count; refused ones included)")
    axes[0].set_title(title or "Overcommit what-if: pool use as containers start", fontsize=12)
    return fig


def growth_plot(result, title=None, names=None):
    """A :class:`thinp.thin.GrowthResult` (every device writing more): left,
    the pool's Data% and Meta% as the writes are issued, with the low water
    mark and the out-of-data-space (or out-of-metadata-space) point marked;
    right, per device, the bytes (GiB or MiB) it was asked to write, split
    into written and failed (no free data block).  ``names`` maps dev_id to
    a label (default ``dev <id>``)."""
    import numpy as np

    names = names or {}
    fig = _figure((12, 4.6), layout="constrained")
    ax, axd = fig.subplots(1, 2, width_ratios=[1.3, 1])
    cv = result.curve
    ax.plot(cv["writes_issued"], cv["data_pct"], color="C0", label="Data%")
    ax.plot(cv["writes_issued"], cv["meta_pct"], color="tab:purple", ls="--", label="Meta%")
    total = result.before.total_data_blocks
    lwm_pct = 100.0 * (total - result.low_water_mark) / total
    if result.low_water_mark:
        ax.axhline(lwm_pct, color="tab:orange", ls=":", lw=1,
                   label=f"low water mark ({result.low_water_mark:,} blocks free)")
    ax.axhline(100, color="grey", ls="--", lw=0.8)
    for kind in ("low_water_mark", "out_of_data_space", "out_of_metadata_space", "metadata_failure"):
        e = result.first_event(kind)
        if e:
            m, c, name = _MARKERS[kind]
            ax.scatter([e["write_index"]], [e["data_pct"]], marker=m, color=c, s=70, zorder=3,
                       label=f"{name} (write {e['write_index']:,})")
    ax.set_xlabel(f"writes issued, all devices ({result.block_size // 1024} KiB each, count)")
    ax.set_ylabel("Data% and Meta% (% used)")
    ax.set_ylim(max(0, min(cv["data_pct"].min(), cv["meta_pct"].min(), lwm_pct) - 5), 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Pool data use while the devices write", fontsize=11, fontweight="bold")
    d = result.devices
    y = np.arange(len(d))
    big = (d["written_bytes"] + d["failed_bytes"]).max() >= 1 << 30
    unit, scale = ("GiB", 2.0 ** -30) if big else ("MiB", 2.0 ** -20)
    axd.barh(y, d["written_bytes"] * scale, color="#55A868", label="written")
    axd.barh(y, d["failed_bytes"] * scale, left=d["written_bytes"] * scale, color="#C44E52",
             label="failed: no free data block")
    axd.set_yticks(y, [names.get(int(i), f"dev {int(i)}") for i in d["dev_id"]], fontsize=8)
    axd.invert_yaxis()
    axd.set_xlabel(f"asked to write ({unit})")
    axd.legend(fontsize=8, loc="upper right")
    axd.grid(axis="x", alpha=0.3)
    basis = "mapped data" if result.of == "mapped" else "virtual size"
    axd.set_title(f"Each device writes {100 * result.fraction:g}% of its {basis} more",
                  fontsize=11, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def fill_curves(curves, xlabel, title, ylabel="Data% (data used, % of pool)"):
    """Pool fill against some measure of work, one line per case: ``curves``
    maps a label to ``(x, y)`` (array-likes; ``y`` in percent by default).
    ``xlabel`` must name the unit of ``x``, e.g. ``"bytes written (MiB)"``.
    The 100% line is drawn dashed."""
    fig = _figure((8, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    ax.axhline(100, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title, fontsize=12)
    return fig

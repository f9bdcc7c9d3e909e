"""Figures (matplotlib is imported only when a figure is drawn)."""
from __future__ import annotations

import math


def _mib(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else x / (1 << 20)


def compare_figure(df, title: str = ""):
    """A 2x2 figure of a :func:`thinp.compare` DataFrame: disk used (data vs
    metadata, stacked, MiB), bytes written (MiB), container start time (ms)
    and page-cache memory (MiB), one bar per driver.  A failed driver shows
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

    def panel(ax, ylabel, heading, values=()):
        ax.set_title(heading, fontsize=11, fontweight="bold")
        pos = [v for v in values if v and v > 0]
        if pos and max(pos) / min(pos) > 30:    # one driver (vfs) dwarfs the rest
            ax.set_yscale("log")
            ylabel += " (log scale)"
        ax.set_ylabel(ylabel)
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=9)
        ax.grid(axis="y", alpha=0.3)

    ax = axes[0][0]
    data = [_mib(v) for v in df["disk_data_bytes"]]
    meta = [_mib(v) for v in df["disk_metadata_bytes"]]
    ax.bar(x, data, label="data", color="#4C72B0")
    ax.bar(x, meta, bottom=data, label="metadata", color="#DD8452")
    ax.legend(fontsize=8)
    panel(ax, "MiB", "Disk used (data + metadata)", [a + b for a, b in zip(data, meta)])

    ax = axes[0][1]
    written = [_mib(v) for v in df["bytes_written"]]
    ax.bar(x, written, color="#55A868")
    panel(ax, "MiB", "Bytes written to the device", written)

    ax = axes[1][0]
    start = [0 if (isinstance(v, float) and math.isnan(v)) else v * 1e3 for v in df["start_time_s"]]
    ax.bar(x, start, color="#C44E52")
    panel(ax, "ms per container", "Container start time (model)", start)

    ax = axes[1][1]
    ax.bar(x, [_mib(v) for v in df["page_cache_bytes"]], color="#8172B3")
    panel(ax, "MiB", "Page-cache memory")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig

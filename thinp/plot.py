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
    return fig  # constrained layout: no tight_layout() (it would switch engines and warn)


_MARKERS = {"low_water_mark": ("v", "tab:orange", "low water mark"),
            "min_free_space": ("x", "tab:red", "dm.min_free_space refusal"),
            "out_of_data_space": ("o", "black", "out of data space"),
            "out_of_metadata_space": ("s", "tab:purple", "out of metadata space"),
            "autoextend": ("^", "tab:green", "autoextend (pool grew)"),
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

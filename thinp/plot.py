"""Plots from thinp's experiments (matplotlib, imported only when used)."""
from __future__ import annotations

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
    ax.axhline(90, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("data used (% of pool)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Overcommit: pool use as containers start")
    axm.set_ylabel("metadata used (%)")
    axm.set_xlabel("containers launched, in order (count; refused ones included)")
    axm.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig

"""What the docker CLI prints: its column tables, sizes and ages.

* :func:`tabwrite` -- Go's ``tabwriter`` as the docker CLI sets it up
  (minimum cell width 10, padding 3, the last column unpadded);
* :func:`human_size` -- ``units.HumanSizeWithPrecision(n, 3)``: decimal
  units (``kB``, ``MB``, ``GB``), three significant digits;
* :func:`human_duration` -- ``units.HumanDuration`` ("About a minute",
  "3 hours", "2 weeks").

One function per command turns the :class:`~thinp.docker.daemon.Daemon`'s
rows into the lines docker prints.
"""
from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["tabwrite", "human_size", "human_duration", "since", "images", "history", "ps", "system_df",
           "info", "diff", "stats"]


def tabwrite(rows: list[list[str]], minwidth: int = 10, padding: int = 3) -> list[str]:
    widths = [0] * max((len(r) for r in rows), default=0)
    for r in rows:
        for i, c in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(c) + padding, minwidth)
    return ["".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip()
            for r in rows]


def human_size(n: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    n = float(n)
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{units[i]}"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    t = text.rstrip("Z")
    if "." in t:
        head, frac = t.split(".", 1)
        frac = "".join(ch for ch in frac if ch.isdigit())[:6]
        t = f"{head}.{frac}"
    t = t.split("+")[0]
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(t, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def since(created: str, now: datetime | None = None) -> str:
    """``2 minutes ago`` for an RFC 3339 time (``N/A`` when there is none)."""
    t = _parse_time(created)
    if t is None:
        return "N/A"
    now = now or datetime.now(timezone.utc)
    return human_duration(max(0.0, (now - t).total_seconds())) + " ago"


def _trunc(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def images(rows: list[dict], now=None) -> list[str]:
    out = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
    for r in rows:
        out.append([r["repository"], r["tag"], r["id"], since(r["created"], now), human_size(r["size"])])
    return tabwrite(out)


def history(rows: list[dict], now=None) -> list[str]:
    out = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for r in rows:
        iid = r["id"][7:19] if r["id"] and r["id"].startswith("sha256:") else (r["id"] or "<missing>")
        out.append([iid, since(r["created"], now), _trunc(r["created_by"], 45), human_size(r["size"]),
                    r["comment"]])
    return tabwrite(out)


def _status(r: dict, now=None) -> str:
    if r["status"] == "running":
        return "Up " + since(r["created"], now)[:-4]
    if r["status"] == "exited":
        return f"Exited ({r.get('exit_code') or 0}) {since(r.get('finished') or r['created'], now)}"
    return "Created"


def ps(rows: list[dict], now=None) -> list[str]:
    out = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
    for r in rows:
        out.append([r["id"], r["image"], '"' + _trunc(r.get("command", ""), 20) + '"', since(r["created"], now),
                    _status(r, now), "", r["name"]])
    return tabwrite(out)


def system_df(rows: list[dict]) -> list[str]:
    out = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    for r in rows:
        pct = f" ({100 * r['reclaimable'] // r['size']}%)" if r["size"] else ""
        out.append([r["type"], str(r["total"]), str(r["active"]), human_size(r["size"]),
                    human_size(r["reclaimable"]) + pct])
    return tabwrite(out)


def info(d: dict) -> list[str]:
    lines = [f"Containers: {d['Containers']}", f" Running: {d['Running']}", f" Paused: {d['Paused']}",
             f" Stopped: {d['Stopped']}", f"Images: {d['Images']}", f"Storage Driver: {d['Storage Driver']}"]
    lines += [f" {k}: {v}" for k, v in d["driver_status"]]
    lines.append(f"Docker Root Dir: {d['Docker Root Dir']}")
    return lines


def diff(changes) -> list[str]:
    return [f"{c.kind} {c.path}" for c in changes]


def stats(d: dict) -> str:
    """The ``--stats`` line: what the driver did for this command."""
    parts = [f"wrote {d['bytes_written']:,} B", f"copy-up {d['copy_up_count']} files/{d['copy_up_bytes']:,} B",
             f"CoW {d['cow_count']} blocks/{d['cow_bytes']:,} B",
             f"layers +{d['layers_created']} shared {d['layers_shared']} -{d['layers_removed']}",
             f"physical {d['physical_bytes']:,} B", f"metadata {d['metadata_bytes']:,} B"]
    if "data_percent" in d:
        parts.append(f"Data% {d['data_percent']:.2f} Meta% {d['metadata_percent']:.2f}")
    for k in ("bytes_transferred", "bytes_stored"):
        if k in d:
            parts.append(f"{k.replace('_', ' ')} {d[k]:,} B")
    return "stats: " + ", ".join(parts)

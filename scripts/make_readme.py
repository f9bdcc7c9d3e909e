#!/usr/bin/env python3
"""Regenerate what README.md shows: the outputs of its code blocks (the
``#>`` lines, see ``scripts/readme_blocks.py``) and, with ``--slow``, the
generated regions (``<!-- generated: NAME -->`` ... ``<!-- /generated -->``:
the compare table and its figure ``docs/compare-webapp.png``) and the slow
blocks' outputs; the quick generated regions (the timing constants' table)
are rewritten on every run.

    python scripts/make_readme.py            # the quick blocks (a minute or two)
    python scripts/make_readme.py --slow     # everything (the full default compare, overcommit)

``tests/test_readme.py`` runs the same blocks and fails when an output here
differs from what the code prints, timings aside.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import readme_blocks as RB  # noqa: E402

sys.path.insert(0, RB.ROOT)


def compare_table() -> str:
    """The markdown table of ``thinp compare`` (webapp, all drivers, nvme) and its figure."""
    from thinp.experiments.compare import VIEW, compare, table_view

    df, fig = compare("webapp", progress=False)
    fig.savefig(os.path.join(RB.ROOT, "docs", "compare-webapp.png"), dpi=110, bbox_inches="tight")
    rows, _best = table_view(df)
    from thinp.cli._output import cell

    heads = ["driver", *(h for _c, h, _d in VIEW)]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        out.append("| " + " | ".join([r["driver"], *(cell(r[h]) for h in heads[1:])]) + " |")
    return "\n".join(out)


def example_image() -> None:
    """``examples/app.tar``: the README Engine example's two-layer image, built
    the same way (a tarfile rootfs, import, a change, commit, save), with
    fixed timestamps so the file only changes when thinp's output does."""
    import io
    import tarfile

    import thinp

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in {"etc/hostname": b"demo\n", "etc/motd": b"hi\n", "srv/app.py": b"print(1)\n"}.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with thinp.Engine(driver="vfs") as eng:
        eng.import_(buf, "me/base:1", created="2024-01-01T00:00:00Z")
        c = eng.create("me/base:1")
        c.write("/srv/config.toml", 0, b"debug = false\n")
        eng.commit(c, "me/app:1", message="config", created="2024-01-01T00:00:00Z")
        eng.save("me/app:1", os.path.join(RB.ROOT, "examples", "app.tar"))
    os.chmod(os.path.join(RB.ROOT, "examples", "app.tar"), 0o644)


#: the kept real run of ``thinp validate timing`` and the ``thinp calibrate``
#: file its predictions used (both measured on the machine the README names)
TIMING_RUN = os.path.join(RB.ROOT, "docs", "timing", "validate-timing.json")
TIMING_CAL = os.path.join(RB.ROOT, "docs", "timing", "calibrate.toml")


def timing_table() -> str:
    """The "Timing against the real kernel" table: the kept measurements
    beside the current model's predictions (re-predicted with the kept
    calibration, on this machine's cores), and the sentence that counts how far the targets are met."""
    import json

    from thinp.timing import TimingConstants
    from thinp.validate import timing as vt

    with open(TIMING_RUN) as f:
        kept = json.load(f)
    k = TimingConstants.from_toml(TIMING_CAL)
    rows = vt.validate_timing(timing=k, device=TIMING_CAL, measured=kept["rows"])
    loads = [r["load"] for r in kept["rows"] if r.get("load") is not None]
    start = (f" (start: {kept['start_date']}, after the real side began copying the image twice per vfs "
             f"container, as Docker's -init and container layers do)" if kept.get("start_date") else "")
    when = (f"Measured {kept.get('date', '')}{start} on {kept.get('cores')} vCPUs ({kept.get('cpu')}): the "
            f"1-minute load average, the measuring processes included, was {min(loads):.1f} to "
            f"{max(loads):.1f} as the case/N groups ended. " if loads else "")
    return when + vt.summary_sentence(vt.summary(rows)) + "\n\n" + vt.markdown(rows)




def timing_constants_table() -> str:
    """The markdown table of the timing model's constants: each default and
    its source (``thinp.timing.SOURCES``), so the README cannot drift from
    the code (``tests/workloads/test_readme_examples.py`` checks it)."""
    import dataclasses

    from thinp.timing import SOURCES, TimingConstants

    k = TimingConstants()
    out = ["| timing constant | table | default | source |", "|---|---|---|---|"]
    for f in dataclasses.fields(k):
        v = getattr(k, f.name)
        shown = ", ".join(f"{a}={b!r}" for a, b in v.items()) if isinstance(v, dict) else repr(v)
        out.append(f"| `{f.name}` | [timing] | `{shown}` | {SOURCES[f.name]} |")
    return "\n".join(out)


#: generated regions, regenerated on every run (quick) or with --slow only
FAST_REGIONS = {"timing-constants": timing_constants_table}
REGIONS = {"compare-table": compare_table, "timing-table": timing_table}


def fill_regions(text: str, regions: dict) -> str:
    """``text`` with each ``<!-- generated: NAME -->`` region replaced by ``regions[NAME]()``."""
    for name, fn in regions.items():
        print(f"README region {name}", file=sys.stderr)
        text = re.sub(rf"(<!-- generated: {name} -->\n).*?(\n<!-- /generated -->)",
                      lambda m: m.group(1) + fn() + m.group(2), text, flags=re.S)
    return text


def main(argv) -> int:
    slow = "--slow" in argv
    example_image()
    text = open(RB.README).read()
    lines = text.split("\n")
    blocks = RB.parse(text)
    edits = {}      # line index in README -> (number of old lines, new lines)
    with tempfile.TemporaryDirectory(prefix="thinp-readme-") as sandbox:
        RB.prepare_sandbox(sandbox)
        ns: dict = {"__name__": "__readme__"}
        for b in blocks:
            if b.lang not in ("sh", "python") or b.mark == "skip" or (b.mark == "slow" and not slow):
                continue
            print(f"README line {b.start}: {b.lang} block", file=sys.stderr)
            for k, shown, printed in RB.run_block(b, sandbox, ns):
                if shown is None:
                    continue
                j = k
                while not (b.lines[j].startswith(RB.OUT) or b.lines[j] == RB.OUT.rstrip()):
                    j += 1          # sh: k is the command, its output follows; python: k is the group
                new = [(RB.OUT + ln).rstrip() for ln in printed.rstrip("\n").split("\n")]
                edits[b.start + j] = (len(shown), new)
        for i in sorted(edits, reverse=True):
            n, new = edits[i]
            lines[i:i + n] = new
        text = fill_regions("\n".join(lines), FAST_REGIONS)
        if slow:
            text = fill_regions(text, REGIONS)
    with open(RB.README, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

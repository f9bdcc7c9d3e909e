#!/usr/bin/env python3
"""Derive the built-in traces (package data) from the fixtures.

For each entry of ``thinp.traces.builtin.BUILTIN``, read the
captured strace in ``../shared/fixtures`` with ``thinp.traces.strace.read``
and write its operation list to ``thinp/data/traces/<name>.ops.gz``, with the
source, its sha256 and the counts in the header.  The strace text itself is
not copied: only the file-tree operations thinp replays.  Rerun after a change
to the strace reader (``tests/test_fresh_clone.py`` fails until
you do).

    python scripts/make_traces.py [FIXTURES_DIR]
"""
import hashlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from thinp.traces import builtin as builtin_traces, strace  # noqa: E402


def main(argv):
    fixtures = pathlib.Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared" / "fixtures"
    outdir = ROOT / "thinp" / "data" / "traces"
    outdir.mkdir(parents=True, exist_ok=True)
    for name, rel in builtin_traces.BUILTIN.items():
        src = fixtures / rel
        tr = strace.read(src)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        header = (f"{name}: the file operations thinp.traces.strace.read finds in\n"
                  f"../shared/fixtures/{rel} (sha256 {digest}),\n"
                  f"derived by scripts/make_traces.py; {len(tr.ops)} operations, {len(tr.stats)} pre-existing paths.\n"
                  "See ../shared/fixtures/SOURCES.md for how the trace was captured.")
        out = outdir / f"{name}.ops.gz"
        builtin_traces.write(tr, out, header)
        print(f"{out.relative_to(ROOT)}: {len(tr.ops)} ops, {len(tr.stats)} stats, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Execute notebooks/*.ipynb in place, so the committed copies show their outputs.

    python scripts/run_notebooks.py [NAME-PART ...]

CI only checks that the notebooks run (``pytest`` collects them with nbmake,
which does not write them back); run this after changing a notebook or a
figure, then commit the notebooks.  Each runs in its own directory on the
``python3`` kernel, with no cell timings recorded (they would change every run).
"""
from __future__ import annotations

import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def main(argv: list[str]) -> int:
    paths = sorted(ROOT.glob("*.ipynb"))
    if argv:
        paths = [p for p in paths if any(a in p.name for a in argv)]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

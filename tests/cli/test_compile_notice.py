"""The first run says it is compiling, on stderr; a cached run says nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT


def test_compile_notice_once_then_silent(tmp_path):
    mod = tmp_path / "kern.py"
    mod.write_text(textwrap.dedent("""
        from thinp.config import njit

        @njit
        def twice(x):
            return 2 * x
    """))
    code = textwrap.dedent("""
        import sys
        from thinp.jitnotice import announce_compiles
        with announce_compiles():
            import kern
            print(kern.twice(21))
    """)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert [r.stdout for r in runs] == ["42\n", "42\n"], runs[0].stderr
    first = runs[0].stderr.splitlines()
    assert first[0] == "thinp: compiling kernels (first run only; cached for later runs)..."
    assert first[1].startswith("thinp: compiled 1 kernels in ")
    assert runs[1].stderr == ""           # loaded from the cache: nothing to say


def test_help_does_not_import_numba():
    r = subprocess.run([sys.executable, "-c", "import sys; from thinp.cli import main\n"
                        "try:\n    main(['compare', '--help'])\nexcept SystemExit:\n    pass\n"
                        "print('numba' in sys.modules, file=sys.stderr)"],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.stderr.strip() == "False"


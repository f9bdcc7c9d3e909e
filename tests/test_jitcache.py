"""thinp.jitcache: numba's caches are dropped when a kernel module changes,
and only then (a cached caller would keep an edited callee's old code)."""
import os

from thinp.jitcache import drop_stale


def _touch(p, text):
    p.write_text(text)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # a later edit, whatever the clock


def test_caches_go_when_a_kernel_source_changes_and_stay_otherwise(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    kern = pkg / "sub" / "kern.py"
    kern.write_text("from x import njit\n@njit\ndef f(a):\n    return a\n")
    (pkg / "cli.py").write_text("print('hi')\n")
    cache = pkg / "sub" / "__pycache__" / "kern.f-3.py311.nbi"
    cache.write_bytes(b"index")
    assert drop_stale(pkg) is True and not cache.exists()      # no stamp yet: the caches' sources are unknown
    cache.write_bytes(b"index")
    assert drop_stale(pkg) is False and cache.exists()         # nothing changed
    _touch(pkg / "cli.py", "print('hello')\n")
    assert drop_stale(pkg) is False and cache.exists()         # a module without kernels changed
    _touch(kern, "from x import njit\n@njit\ndef f(a):\n    return a + 1\n")
    assert drop_stale(pkg) is True and not cache.exists()      # a kernel changed: every cache goes
    cache.write_bytes(b"index")
    assert drop_stale(pkg) is False and cache.exists()


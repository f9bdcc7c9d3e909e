"""The per-process layer directory (``workloads.images.cache_dir``): a
process killed before its exit handler ran leaves it behind, and the next
one made removes it; a live process's directory is never touched."""
import os
import subprocess
import sys

from thinp.workloads import images

MAKE = "import sys; from thinp.workloads import images; print(images.cache_dir(), flush=True); "


def _start(tmp_path, then: str):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(images.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen([sys.executable, "-c", MAKE + then], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                         env=env, text=True)
    return p, p.stdout.readline().strip()


def test_a_killed_process_directory_is_removed_by_the_next(tmp_path):
    p, d = _start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    p.wait(timeout=60)
    assert p.returncode == -9
    assert os.path.isdir(d) and os.path.basename(d).startswith("thinp-wl-layers-")
    assert images.remove_orphans(str(tmp_path)) == [d]
    assert not os.path.exists(d)


def test_a_live_process_directory_is_kept_and_removed_at_its_exit(tmp_path):
    p, d = _start(tmp_path, "sys.stdin.read()")
    try:
        assert images.remove_orphans(str(tmp_path)) == []
        assert os.path.isdir(d)
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert p.returncode == 0
    assert not os.path.exists(d)


def test_a_directory_without_its_lock_file_is_left_alone(tmp_path):
    d = tmp_path / "thinp-wl-layers-setup"
    d.mkdir()
    assert images.remove_orphans(str(tmp_path)) == []
    assert d.is_dir()

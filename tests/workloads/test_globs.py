"""Path selection: globs follow ``glob.glob(recursive=True, include_hidden=True)``
(checked against it on a real directory tree), directories for chmod, paths
made by earlier steps, one-line errors."""
from __future__ import annotations

import glob as _glob
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinp.workloads as W
from thinp.workloads.format import Selectable, Step, WorkloadError, glob_match, image_tree

from .test_format import _write

# ------------------------------------------------------------------ the matcher
TREE_FILES = ["/usr/lib/libc.so.6", "/usr/lib/x86_64/libm.so", "/usr/lib/os-release",
              "/usr/bin/ls", "/usr/bin/[", "/etc/.pwd.lock", "/etc/hosts", "/a/b/c/d/e.txt",
              "/a/e.txt", "/a/b/.hidden/f.so"]


def test_final_globstar_takes_zero_components_after_a_directory_only():
    assert glob_match("/usr/lib/**", "/usr/lib", is_dir=True)       # ... only after a directory
    assert not glob_match("/etc/hosts/**", "/etc/hosts", is_dir=False)
    assert glob_match("/a/**/**", "/a/x") and glob_match("/a/**/**", "/a", is_dir=True)


@pytest.mark.parametrize("pattern, path, want", [
    ("/usr/lib/*", "/usr/lib/libc.so.6", True),
    ("/usr/lib/*", "/usr/lib/x86_64/libm.so", False),          # * does not cross /
    ("/usr/lib/*.so", "/usr/lib/x86_64/libm.so", False),
    ("/usr/lib/**", "/usr/lib/x86_64/libm.so", True),
    ("/usr/lib/**", "/usr/lib", False),                        # a final ** takes zero ...
    ("/etc/hosts/**", "/etc/hosts", False),
    ("/usr/**/*.so", "/usr/lib/x86_64/libm.so", True),
    ("/usr/**/libm.so", "/usr/libm.so", True),
    ("/a/**/e.txt", "/a/e.txt", True),
    ("/a/**/e.txt", "/a/b/c/d/e.txt", True),
    ("/a/**/d/*", "/a/b/c/d/e.txt", True),
    ("/a/**/**/e.txt", "/a/e.txt", True),
    ("/a/*/e.txt", "/a/e.txt", False),
    ("/a/b**", "/a/b/c", False),                               # ** inside a name is *
    ("/a/b**", "/a/bxx", True),
    ("/usr/?in/ls", "/usr/bin/ls", True),
    ("/usr/?/ls", "/usr/bin/ls", False),
    ("/usr/bin/[[]", "/usr/bin/[", True),
    ("/usr/bin/[a-m]s", "/usr/bin/ls", True),
    ("/usr/bin/[!l]s", "/usr/bin/ls", False),
    ("/etc/*", "/etc/.pwd.lock", True),                        # hidden names match
    ("/ETC/*", "/etc/hosts", False),                           # case-sensitive
    ("etc/hosts", "/etc/hosts", True),                         # relative: from /
    ("/etc//hosts", "/etc/hosts", True),
    ("/etc/hosts", "/etc/hosts/x", False),
    ("/*", "/etc/hosts", False),
    ("/**", "/etc/hosts", True),
])
def test_glob_table(pattern, path, want):
    assert glob_match(pattern, path) is want


_NAMES = st.sampled_from(["a", "b", "ab", ".h", "x.so", "x.so.6", "[", "a-b"])
_SEGS = st.sampled_from(["*", "?", "**", "a", "b", "ab", "*.so", "*.so*", ".*", "[ab]", "[!a]*",
                         "[[]", "a*", "?b", "x.so", "*b"])


def _tree(tmp, rels):
    files = set()
    for r in rels:
        p = os.path.join(tmp, *r)
        if os.path.isdir(p) or any(os.path.isfile(os.path.join(tmp, *r[:k])) for k in range(1, len(r))):
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()
        files.add("/" + "/".join(r))
    dirs = set()
    for d, ds, _fs in os.walk(tmp):
        for x in ds:
            dirs.add("/" + os.path.relpath(os.path.join(d, x), tmp))
    files = {f for f in files if os.path.isfile(os.path.join(tmp, f[1:]))}
    return files, dirs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rels=st.lists(st.lists(_NAMES, min_size=1, max_size=4).map(tuple), min_size=1, max_size=12),
       pat=st.lists(_SEGS, min_size=1, max_size=4))
def test_glob_agrees_with_stdlib_glob(tmp_path_factory, rels, pat):
    """The stdlib's own glob on a real directory is the oracle."""
    tmp = str(tmp_path_factory.mktemp("g"))
    files, dirs = _tree(tmp, rels)
    pattern = "/" + "/".join(pat)
    # (the stdlib yields "a/" for a literal "a/**" when "a" is a file: a path
    # that does not exist -- ENOTDIR -- so the oracle keeps existing paths only)
    want = {"/" + p.rstrip("/") for p in _glob.glob("/".join(pat), root_dir=tmp, recursive=True,
                                                    include_hidden=True)
            if os.path.exists(os.path.join(tmp, p))}
    want.discard("/")
    got = {p for p in files | dirs if glob_match(pattern, p, is_dir=p in dirs)}
    assert got == want, (pattern, sorted(files), sorted(dirs))
    sel = Selectable(sorted(files), sorted(dirs))
    assert set(sel.select(pattern)) == want & files
    assert set(sel.select(pattern, dirs=True)) == want


# ------------------------------------------------------------------ what is selectable
def test_profile_tree_has_dirs_and_files():
    files, dirs = image_tree(W.format.ImageSpec())
    assert "/usr/lib" in dirs and "/etc" in dirs and "/" not in dirs
    assert "/etc/hosts" not in dirs and not set(files) & set(dirs)
    lib = Selectable(files, dirs).select("/usr/lib/*")
    deep = Selectable(files, dirs).select("/usr/lib/**")
    assert lib and all(p.count("/") == 3 for p in lib)
    assert len(deep) > 10 * len(lib) and set(lib) < set(deep)


def test_earlier_steps_make_paths_selectable_and_delete_removes():
    sel = Selectable(["/etc/hosts"], ["/etc"])
    sel.record(Step("mkdir", path="/var/log/app"), ["/var/log/app"])
    sel.record(Step("append", path="/var/log/app/a-{i}.log", count=2),
               ["/var/log/app/a-0.log", "/var/log/app/a-1.log"])
    assert sel.select("/var/log/**/*.log") == ["/var/log/app/a-0.log", "/var/log/app/a-1.log"]
    assert sel.select("/var/*", dirs=True) == ["/var/log"]
    sel.record(Step("delete", glob="/var/log/app/a-0.log"), ["/var/log/app/a-0.log"])
    sel.record(Step("rename", path="/var/log/app/a-1.log", to="/var/log/app/old.log"), ["/var/log/app/a-1.log"])
    assert sel.select("/var/log/app/*") == ["/var/log/app/old.log"]
    sel.record(Step("files", path="/data/s", count=1001), [])
    assert len(sel.select("/data/s/d000/*")) == 1000 and sel.select("/data/s/d001/*") == ["/data/s/d001/f01000"]
    sel.record(Step("rename", path="/data/s", to="/data/t"), ["/data/s"])
    assert sel.select("/data/s/**") == [] and len(sel.select("/data/t/**")) == 1001
    sel.record(Step("tree", path="/tree", depth=2, fanout=2, size=10), [])
    assert sel.select("/tree/**/f") == ["/tree/0/f", "/tree/1/f", "/tree/f"]
    assert sel.select("/tree/*", dirs=True) == ["/tree/0", "/tree/1", "/tree/f"]
    sel.record(Step("delete", path="/etc/hosts"), ["/etc/hosts"])
    assert sel.select("/etc/*") == [] and sel.select("/etc/*", dirs=True) == []




def test_glob_over_files_made_by_earlier_steps_runs(tmp_path):
    w = W.load(_write(tmp_path, """
containers = 2
[[steps]]
op = "append"
path = "/var/log/app/{c}-{i}.log"
size = 100
count = 3
[[steps]]
op = "write"
glob = "/var/log/**/*.log"
offset = "end"
size = 50
[[steps]]
op = "chmod"
glob = "/var/log/ap?"
mode = "0700"
[[steps]]
op = "delete"
glob = "/var/log/app/*-0.log"
"""))
    r = W.run(w, "reference", payload=True)
    assert r.error is None
    import importlib

    R = importlib.import_module("thinp.workloads.run")     # the module, not W.run

    seen = {}
    orig = R._Runner.step

    def spy(self, c, ci, si, st, rng):
        out = orig(self, c, ci, si, st, rng)
        if si == 3:
            v = self.eng.mount(out)
            seen[ci] = (sorted(v.listdir("/var/log/app")), oct(v.stat("/var/log/app").st_mode & 0o777),
                        v.stat(f"/var/log/app/{ci}-1.log").st_size)
        return out
    R._Runner.step = spy
    try:
        W.run(w, "overlay2")
    finally:
        R._Runner.step = orig
    assert seen[0] == (["0-1.log", "0-2.log"], "0o700", 150)
    assert seen[1] == (["1-1.log", "1-2.log"], "0o700", 150)


def test_globs_on_files_made_earlier_pass_the_check(tmp_path):
    w = W.load(_write(tmp_path, '[[steps]]\nop = "create"\npath = "/opt/x/{c}.bin"\nsize = 10\n'
                                '[[steps]]\nop = "read"\nglob = "/opt/**/*.bin"\n'
                                '[[steps]]\nop = "chmod"\nglob = "/opt/*"\nmode = "0700"\n'))
    assert [s.op for s in w.steps] == ["create", "read", "chmod"]


def test_a_glob_emptied_at_run_time_is_one_line(tmp_path):
    # sampled deletes are unknown to the parse-time check; the dry run at load finds out,
    # and so does a run of an unchecked load
    p = _write(tmp_path, '[[steps]]\nop = "delete"\nglob = "/etc/host*"\nsample = 9\n'
                         '[[steps]]\nop = "read"\nglob = "/etc/host*"\n')
    for attempt in (lambda: W.load(p), lambda: W.run(W.load(p, check=False), "overlay2")):
        with pytest.raises(WorkloadError) as ei:
            attempt()
        msg = str(ei.value)
        assert "\n" not in msg and "steps[1].glob = '/etc/host*'" in msg and "container 0" in msg


def test_webapp_reads_library_files_below_usr_lib():
    w = W.load("webapp")
    assert w.steps[-1].glob == "/usr/lib/**"
    files, dirs = image_tree(w.image)
    pool = Selectable(files, dirs).select(w.steps[-1].glob)
    assert len(pool) > 1000 and all(p.startswith("/usr/lib/") for p in pool)


@pytest.mark.parametrize("pattern", ["/usr/lib/**", "/usr/lib", "/usr/lib/*", "/usr/**", "/usr/lib/**/x",
                                     "usr/lib/**", "/usr/l?b/**"])
def test_select_literal_prefix_agrees_with_glob_match(pattern):
    """select() compares a pattern's literal leading components as one string;
    paths written unnormalised (a step's ``//usr/lib/x``) or sharing a
    prefix's letters (``/usr/libx``) still match as glob_match says."""
    files = ["/usr/lib/a", "/usr/lib/x", "/usr/libx/a", "/usr/li", "//usr/lib//y", "usr/lib/z",
             "/usr/lib/", "/usr/lib/d/x", "/usr"]
    dirs = ["/usr/lib", "/usr/lib/d", "/usr/libx"]
    want = sorted({p for p in files if glob_match(pattern, p)})
    assert Selectable(files, dirs).select(pattern) == want
    want_d = sorted({p for p in files if glob_match(pattern, p)} | {p for p in dirs if glob_match(pattern, p, True)})
    assert Selectable(files, dirs).select(pattern, dirs=True) == want_d
    sel = Selectable([], [])           # the same paths made by steps
    for p in files:
        sel.add_file(p)
    assert set(sel.select(pattern)) == set(want)

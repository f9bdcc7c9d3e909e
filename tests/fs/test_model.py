"""Random operation sequences against the reference model (hypothesis)."""
import os
import stat

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from thinp.blockdev import PlainDevice
from thinp.fs import mkfs

from .reference_model import RefError, RefFS

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)
DATA = st.binary(min_size=0, max_size=9000)
OFFSETS = st.sampled_from([0, 1, 4095, 4096, 5000, 12288, 70000])


def fs_tree(fs):
    out = {}
    for dpath, dirs, files in fs.walk("/"):
        base = dpath.rstrip("/")
        for d in dirs:
            p = base + "/" + d
            if p == "/lost+found":
                continue
            out[p] = ("d", None, fs.lstat(p).st_nlink)
        for f in files:
            p = base + "/" + f
            s = fs.lstat(p)
            if stat.S_ISLNK(s.st_mode):
                out[p] = ("l", fs.readlink(p), s.st_nlink)
            else:
                out[p] = ("f", fs.read(p), s.st_nlink)
    return out


class FsMachine(RuleBasedStateMachine):
    fstype = "ext4"
    extra = {}

    def __init__(self):
        super().__init__()
        opts = {"lazy_journal_init": True} if self.fstype == "ext4" else {}
        opts.update(self.extra)
        self.dev = PlainDevice("128M" if self.fstype == "ext4" else "300M", payload=True)
        self.fs = mkfs(self.dev, self.fstype, **opts)
        self.fs.commit_blocks = 16          # commit often, so journal paths run too
        self.ref = RefFS()

    def both(self, name, *args):
        try:
            want = getattr(self.ref, name)(*args)
            want_err = None
        except RefError as e:
            want, want_err = None, e.errno
        try:
            got = getattr(self.fs, name)(*args)
            got_err = None
        except OSError as e:
            got, got_err = None, e.errno
        assert got_err == want_err, f"{name}{args}: fs errno {got_err}, model {want_err}"
        return got, want

    @rule(p=PATHS)
    def mkdir(self, p):
        self.both("mkdir", p)

    @rule(p=PATHS)
    def create(self, p):
        self.both("create", p)

    @rule(p=PATHS, off=OFFSETS, data=DATA)
    def write(self, p, off, data):
        self.both("write", p, off, data)

    @rule(p=PATHS, size=OFFSETS)
    def truncate(self, p, size):
        self.both("truncate", p, size)

    @rule(p=PATHS)
    def unlink(self, p):
        self.both("unlink", p)

    @rule(p=PATHS)
    def rmdir(self, p):
        self.both("rmdir", p)

    @rule(p=PATHS, q=PATHS)
    def rename(self, p, q):
        self.both("rename", p, q)

    @rule(p=PATHS, q=PATHS)
    def link(self, p, q):
        self.both("link", p, q)

    @rule(p=PATHS)
    def symlink(self, p):
        self.both("symlink", "zz-nowhere", p)

    @rule(p=PATHS)
    def read(self, p):
        got, want = self.both("read", p)
        assert got == want

    @rule(p=PATHS, name=st.sampled_from(["user.a", "trusted.overlay.opaque", "security.capability"]),
          size=st.sampled_from([1, 40, 300, 3000]))
    def setxattr(self, p, name, size):
        self.both("setxattr", p, name, b"v" * size)

    @rule(p=PATHS, name=st.sampled_from(["user.a", "trusted.overlay.opaque"]))
    def removexattr(self, p, name):
        self.both("removexattr", p, name)

    @rule(p=PATHS)
    def listxattr(self, p):
        got, want = self.both("listxattr", p)
        assert got == want

    @rule()
    def sync(self):
        self.fs.sync()

    @rule()
    def fstrim(self):
        self.fs.sync()
        before = self.fs.statfs()["f_bfree"]
        self.fs.fstrim()
        assert self.fs.statfs()["f_bfree"] == before

    @invariant()
    def same_tree(self):
        assert fs_tree(self.fs) == self.ref.tree()

    @invariant()
    def structure_checks(self):
        self.fs.check()


class XfsMachine(FsMachine):
    fstype = "xfs"


class Ext4NoJournalDiscardMachine(FsMachine):
    extra = {"journal": False, "discard": True}


class XfsDiscardMachine(FsMachine):
    fstype = "xfs"
    extra = {"discard": True}


SETTINGS = settings(max_examples=int(os.environ.get("THINP_FS_EXAMPLES", 60)), stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestExt4Model = FsMachine.TestCase
TestExt4Model.settings = SETTINGS
TestXfsModel = XfsMachine.TestCase
TestXfsModel.settings = SETTINGS
TestExt4NoJournalDiscardModel = Ext4NoJournalDiscardMachine.TestCase
TestExt4NoJournalDiscardModel.settings = settings(SETTINGS, max_examples=20)
TestXfsDiscardModel = XfsDiscardMachine.TestCase
TestXfsDiscardModel.settings = settings(SETTINGS, max_examples=20)

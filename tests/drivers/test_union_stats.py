"""The union drivers' statistics come from running totals of the backing
filesystem (``Filesystem.file_bytes``, ``data_blocks``); these tests hold
them to a full walk of every layer's tree after real workloads."""
import pytest

from thinp.drivers import union as naive
from thinp.workloads.run import run


@pytest.fixture
def walked(monkeypatch):
    seen = []
    orig = naive.UnionDriver.stats

    def stats(self):
        out = orig(self)
        seen.append((self.name, out["logical_bytes"], self._logical_by_walk(),
                     out["metadata_bytes"], self.fs))
        return out

    monkeypatch.setattr(naive.UnionDriver, "stats", stats)
    return seen


@pytest.mark.parametrize("driver", ["vfs", "aufs", "overlay", "overlay2"])
@pytest.mark.parametrize("scenario", ["webapp", "ci-build", "package-install", "big-file-update"])
def test_running_totals_match_a_walk(walked, driver, scenario, request):
    if scenario == "package-install":
        request.getfixturevalue("fixtures_dir")     # its strace is a fixture: skip, saying why, without it
    r = run(scenario, driver, scale=0.05)
    assert r.error is None
    assert len(walked) >= 3
    for name, total, walk, meta, fs in walked:
        assert total == walk, f"{name}: running total {total} != walk {walk}"
        # what the device holds beyond file data: inode tables, bitmaps, journal, directories
        assert 0 < meta < fs.device.physical_bytes, (name, meta)
    fs = walked[-1][4]
    assert fs.data_blocks == sum(n.nr_data_blocks for n in fs.inodes.values())
    assert walked[-1][1] > 0
    fs.check()      # recomputes both totals and raises on a mismatch

"""thinp writes dm-thin metadata that the real tools accept, with the kernel's tree shapes."""
from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thinp import errors
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.dump import dump_xml
from thinp.thin.pool_metadata import PoolMetadata

from .dm_fixtures import real_tool, unpack


def _thin_check(path) -> None:
    tool = real_tool("thin_check")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _dump(path, held=False) -> str:
    with DmMetadata.open(path) as md:
        buf = io.StringIO()
        dump_xml(md.pool_view(held), buf)
        return buf.getvalue()


def test_fresh_pool_uses_dm_block_count(tmp_path):
    # superblock; data space map: 101 bitmaps for 1,638,400 blocks + index
    # leaf + ref-count root; metadata space map: index, 1 bitmap, ref-count
    # root; empty mapping and details roots -- 109 blocks, the figure
    p = tmp_path / "metadata"
    md = PoolMetadata.format(p, nr_metadata_blocks=16000, nr_data_blocks=1_638_400, data_block_sectors=128)
    md.close()
    with DmMetadata.open(p) as r:
        assert r.check().ok
        assert r.sb.metadata_sm_root.nr_allocated == 109
    _thin_check(p)


def test_format_refuses_a_device_dm_cannot_index(tmp_path):
    with pytest.raises(ValueError, match="metadata device of 5000000 blocks"):
        PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=5_000_000, nr_data_blocks=10, data_block_sectors=128)
    assert not (tmp_path / "m").exists()


def _replay_shared_internals(path, split):
    """The operations SOURCES.md gives for tmeta_with_shared_internals_and_leaves:
    8 GiB/64 KiB pool, 4 MiB metadata, a thin written sequentially for 4 GiB,
    a snapshot, 4 MiB written into the snapshot past the origin's data."""
    md = PoolMetadata.format(path, nr_metadata_blocks=1024, nr_data_blocks=131072, data_block_sectors=128,
                             split=split)
    md.sync = False
    md.create_thin(1)
    md.set_transaction_id(0, 1)
    md.commit()
    for vb in range(65536):
        md.insert(1, vb, md.alloc_data())
        if vb % 16384 == 16383:
            md.commit()
    md.create_snap(2, 1)
    md.set_transaction_id(1, 2)
    md.commit()
    for vb in range(65536, 65600):
        md.insert(2, vb, md.alloc_data())
    md.close()


def test_tree_shapes_are_the_kernels(fixtures_dir, tmp_path):
    kernel = unpack(fixtures_dir, "tmeta_with_shared_internals_and_leaves", tmp_path)
    mine = tmp_path / "replayed"
    _replay_shared_internals(mine, "current")
    with DmMetadata.open(kernel) as k, DmMetadata.open(mine) as m:
        assert m.check().ok
        assert m.sb.metadata_sm_root.nr_allocated == k.sb.metadata_sm_root.nr_allocated == 288
        ks, ms = k.shapes(), m.shapes()
        for tree in ("details", "top", "subtrees"):
            a, b = getattr(ks, tree), getattr(ms, tree)
            assert (a.nr_leaves, a.nr_internal, a.nr_entries) == (b.nr_leaves, b.nr_internal, b.nr_entries), tree
        assert m.data_counts().tolist() == k.data_counts().tolist()
    assert _dump(mine) == _dump(kernel)
    _thin_check(mine)


def test_halves_split_is_the_older_rule(tmp_path):
    # the same writes with even-halves splits leave sequentially filled
    # leaves half full: about twice the leaves, the same mappings
    p = tmp_path / "halves"
    _replay_shared_internals(p, "halves")
    with DmMetadata.open(p) as m:
        assert m.check().ok
        sh = m.shapes().subtrees
        assert sh.nr_leaves == 521 and sh.nr_internal == 7
        assert m.sb.metadata_sm_root.nr_allocated == 545
    _thin_check(p)


def test_metadata_snapshot_is_what_thin_dump_m_reads(tmp_path):
    p = tmp_path / "m"
    md = PoolMetadata.format(p, nr_metadata_blocks=512, nr_data_blocks=1000, data_block_sectors=128)
    md.create_thin(0)
    for vb in range(300):
        md.insert(0, vb, md.alloc_data())
    md.reserve_metadata_snap()
    before = _dump(p)  # committed by the reserve
    for vb in range(0, 300, 2):
        md.remove(0, vb)
    md.create_snap(1, 0)
    md.commit()
    held = _dump(p, held=True)
    assert held.replace(' time="0" transaction="0"', "") .count("<device") == 1
    tool = real_tool("thin_dump")
    assert subprocess.run([tool, "-m", str(p)], capture_output=True, text=True, check=True).stdout == held
    assert subprocess.run([tool, str(p)], capture_output=True, text=True, check=True).stdout == _dump(p)
    assert '<range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>' in held
    assert before.count("mapped_blocks=\"300\"") == 1
    _thin_check(p)
    md.release_metadata_snap()
    md.close()
    with DmMetadata.open(p) as r:
        assert r.check().ok and not r.sb.held_root
    _thin_check(p)


def test_delete_returns_every_block(tmp_path):
    p = tmp_path / "m"
    md = PoolMetadata.format(p, nr_metadata_blocks=512, nr_data_blocks=20000, data_block_sectors=128)
    fresh_used = md.nr_used_metadata_blocks
    md.create_thin(5)
    for vb in range(0, 20000, 3):
        md.insert(5, vb, md.alloc_data())
    md.create_snap(6, 5)
    for vb in range(0, 20000, 7):
        md.insert(6, vb, md.alloc_data())
    md.commit()
    md.delete(5)
    md.delete(6)
    md.commit()
    assert md.nr_used_metadata_blocks == fresh_used
    assert md.data_sm.nr_free == 20000
    md.close()
    _thin_check(p)


def test_errors_are_specific(tmp_path):
    md = PoolMetadata.format(tmp_path / "m", nr_metadata_blocks=64, nr_data_blocks=100, data_block_sectors=128)
    md.create_thin(1)
    with pytest.raises(errors.DeviceExistsError, match="thin device 1 already exists"):
        md.create_thin(1)
    with pytest.raises(errors.DeviceNotFoundError, match="thin device 9"):
        md.create_snap(2, 9)
    with pytest.raises(ValueError, match="24-bit"):
        md.create_thin(1 << 24)
    with pytest.raises(errors.TransactionIdMismatchError, match="current id is 0, not 5"):
        md.set_transaction_id(5, 6)
    md.close(commit=False)


def test_running_out_of_metadata_keeps_the_last_commit(tmp_path):
    p = tmp_path / "m"
    md = PoolMetadata.format(p, nr_metadata_blocks=64, nr_data_blocks=30000, data_block_sectors=128)
    md.sync = False
    md.create_thin(1)
    md.commit()
    committed = 0
    with pytest.raises(errors.NoSpaceError, match="out of metadata space: all 64 metadata blocks"):
        for vb in range(30000):
            md.insert(1, vb, md.alloc_data())
            if vb % 1000 == 999:
                md.commit()
                committed = vb + 1
    md.close(commit=False)  # the transaction is abandoned, as dm aborts it
    assert committed > 1000
    with DmMetadata.open(p) as r:
        assert r.check().ok
        (d,) = r.devices()
        assert d.mapped_blocks == committed
    _thin_check(p)


# --------------------------------------------------------------- stateful
class DmWriterMachine(RuleBasedStateMachine):
    """Random operations against a dict model; after each commit our checker
    and the real thin_check accept the file, and thin_dump prints our dump."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.path = f"{self.dir.name}/metadata"
        self.model: dict[int, dict[int, int]] = {}
        self.held: dict | None = None

    @initialize(split=st.sampled_from(["current", "halves"]))
    def start(self, split):
        self.md = PoolMetadata.format(self.path, nr_metadata_blocks=1024, nr_data_blocks=3000,
                                      data_block_sectors=128, split=split)
        self.md.sync = False

    def teardown(self):
        if hasattr(self, "md"):
            self.md.close(commit=False)
        self.dir.cleanup()

    @rule(dev=st.integers(0, 40))
    def create_thin(self, dev):
        if dev in self.model:
            return
        self.md.create_thin(dev)
        self.model[dev] = {}

    @precondition(lambda self: self.model)
    @rule(dev=st.integers(0, 40), data=st.data())
    def create_snap(self, dev, data):
        if dev in self.model:
            return
        origin = data.draw(st.sampled_from(sorted(self.model)))
        self.md.create_snap(dev, origin)
        self.model[dev] = dict(self.model[origin])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), begin=st.integers(0, 2500), length=st.integers(1, 400))
    def write(self, data, begin, length):
        dev = data.draw(st.sampled_from(sorted(self.model)))
        for vb in range(begin, begin + length):
            p = self.md.alloc_data()
            if p is None:
                return
            self.md.insert(dev, vb, p)
            self.model[dev][vb] = p

    @precondition(lambda self: self.model)
    @rule(data=st.data(), begin=st.integers(0, 2500), length=st.integers(1, 600))
    def discard(self, data, begin, length):
        dev = data.draw(st.sampled_from(sorted(self.model)))
        for vb in range(begin, begin + length):
            assert self.md.remove(dev, vb) == (vb in self.model[dev])
            self.model[dev].pop(vb, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        dev = data.draw(st.sampled_from(sorted(self.model)))
        self.md.delete(dev)
        del self.model[dev]

    @rule()
    def metadata_snap(self):
        if self.md.sb.held_root:
            self.md.release_metadata_snap()
            self.held = None
        else:
            self.md.reserve_metadata_snap()
            self.held = {d: dict(m) for d, m in self.model.items()}

    @rule(extra=st.integers(1, 20000))
    def resize_data(self, extra):
        self.md.resize_data(self.md.data_sm.nr_blocks + extra)

    @rule()
    def commit(self):
        self.md.commit()
        with DmMetadata.open(self.path) as r:
            res = r.check()
            assert res.ok, res.problems
            got = {}
            for d in r.devices():
                v, p, _ = r.mappings(d)
                got[d.dev_id] = dict(zip(v.tolist(), p.tolist()))
                assert d.mapped_blocks == len(got[d.dev_id])
            assert got == self.model
            if self.held is not None:
                hv = {}
                for d in r.devices(held=True):
                    v, p, _ = r.mappings(d)
                    hv[d.dev_id] = dict(zip(v.tolist(), p.tolist()))
                assert hv == self.held
        _thin_check(self.path)
        tool = real_tool("thin_dump")
        assert subprocess.run([tool, self.path], capture_output=True, text=True, check=True).stdout == _dump(self.path)
        if self.held is not None:
            assert subprocess.run([tool, "-m", self.path], capture_output=True, text=True,
                                  check=True).stdout == _dump(self.path, held=True)

    @invariant()
    def counts_add_up(self):
        if hasattr(self, "md"):
            assert np.count_nonzero(self.md.data_sm.count) <= self.md.data_sm.nr_blocks


TestDmWriter = DmWriterMachine.TestCase
TestDmWriter.settings = settings(max_examples=12, stateful_step_count=25, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

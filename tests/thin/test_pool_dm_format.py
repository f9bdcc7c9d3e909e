"""ThinPool's metadata file is a dm-thin image: after random operation
sequences the real thin_check accepts ``pool/metadata`` after every commit,
thin_dump (and thin_dump -m while a metadata snapshot is held) prints what
``thinp dump`` prints, thin_ls, thin_delta and thin_rmap print what thinp's
ls, delta and rmap print, and the in-RAM index maps exactly what dm's
leaves do."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import thinp
from thinp import errors
from thinp.pdata import radix as K
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.delta import delta
from thinp.thin.dump import dump
from thinp.thin.ls import ls
from thinp.thin.rmap import parse_region, rmap
from thinp.thin.sidecar import read_sidecar
from thinp.trace import DISCARD, TRACE_DTYPE, WRITE

from .dm_fixtures import real_tool

BS = 64 << 10


def _thin_check(path) -> None:
    out = subprocess.run([real_tool("thin_check"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _thin_dump(path, held=False) -> str:
    argv = [real_tool("thin_dump")] + (["-m"] if held else []) + [str(path)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _leaves(meta_path) -> dict:
    with DmMetadata.open(meta_path) as md:
        out = {}
        for d in md.devices():
            v, p, t = md.mappings(d)
            out[d.dev_id] = (v.tolist(), p.tolist(), t.tolist())
        return out


def _index(pool) -> dict:
    out = {}
    for d in pool.devices():
        v, p, t = pool.device(d).mapping()
        out[d] = (v.tolist(), p.tolist(), t.tolist())
    return out


_LS_FIELDS = ("DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS", "TRANSACTION",
              "CREATE_TIME", "SNAP_TIME")


def _other_tools_agree(meta, devs, nr_data_blocks, held: bool) -> None:
    """thin_ls and thin_delta (and both with -m while a metadata snapshot
    is held) and thin_rmap print what thinp's ls, delta and rmap print for
    the metadata file (the first and last devices' delta; rmap over every
    data block, its lines compared as a set)."""
    for snap in (False, True) if held else (False,):
        real = subprocess.run([real_tool("thin_ls")] + (["-m"] if snap else []) + ["-o", ",".join(_LS_FIELDS),
                              str(meta)], capture_output=True, text=True, check=True).stdout
        assert ls(meta, _LS_FIELDS, metadata_snap=snap) == real
        if snap:
            with DmMetadata.open(meta) as md:
                devs = [d.dev_id for d in md.devices(held=True)]
        if devs:
            a, b = devs[0], devs[-1]
            real = subprocess.run([real_tool("thin_delta")] + (["-m"] if snap else []) + [
                "--snap1", str(a), "--snap2", str(b), str(meta)], capture_output=True, text=True, check=True).stdout
            assert delta(meta, a, b, metadata_snap=snap) == real
    region = f"0..{nr_data_blocks}"
    real = subprocess.run([real_tool("thin_rmap"), "--region", region, str(meta)], capture_output=True, text=True,
                          check=True).stdout
    assert sorted(rmap(meta, [parse_region(region)]).splitlines()) == sorted(real.splitlines())


class PoolDmMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="thinp-dmfmt-")
        self.path = f"{self.dir}/pool"
        self.meta = f"{self.path}/metadata"
        self.pool = None

    @initialize(split=st.sampled_from(["current", "halves"]), payload=st.booleans(),
                nr_data=st.integers(200, 3000))
    def start(self, split, payload, nr_data):
        self.pool = thinp.ThinPool.create(self.path, nr_data * BS, metadata_size="4M", split=split,
                                          payload=payload, sync=False, error_if_no_space=True)
        self.pool.create_thin(0, "256M")

    def teardown(self):
        if self.pool is not None:
            self.pool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _dev(self, data):
        return data.draw(st.sampled_from(self.pool.devices()))

    @rule(dev=st.integers(0, 30), size=st.sampled_from(["64M", "256M", "1G"]))
    def create_thin(self, dev, size):
        if dev not in self.pool.devices():
            self.pool.create_thin(dev, size)

    @precondition(lambda self: self.pool.devices())
    @rule(dev=st.integers(0, 30), data=st.data())
    def create_snap(self, dev, data):
        if dev not in self.pool.devices():
            self.pool.create_snap(dev, self._dev(data))   # any origin: snapshots of snapshots too

    @precondition(lambda self: self.pool.devices())
    @rule(data=st.data(), n=st.integers(1, 300), discard=st.booleans(), seq=st.booleans())
    def io(self, data, n, discard, seq):
        dev = self._dev(data)
        nr = self.pool.device(dev).size // BS
        rng = np.random.default_rng(data.draw(st.integers(0, 1 << 30)))
        start = int(rng.integers(0, nr))
        vbs = (start + np.arange(n)) % nr if seq else rng.integers(0, nr, n)
        tr = np.zeros(n, dtype=TRACE_DTYPE)
        tr["dev_id"] = dev
        tr["op"] = DISCARD if discard else WRITE
        tr["offset"] = vbs * BS
        tr["length"] = BS if discard else 4096
        if self.pool.payload and not discard:
            d = self.pool.device(dev)
            for vb in vbs[:20].tolist():
                try:
                    d.write(vb * BS, bytes([vb & 255]) * 4096)
                except errors.NoSpaceError:
                    return
            return
        self.pool.replay(tr)

    @precondition(lambda self: len(self.pool.devices()) > 1)
    @rule(data=st.data())
    def delete(self, data):
        self.pool.delete(self._dev(data))

    @rule()
    def metadata_snap(self):
        if self.pool.status().held_root:
            self.pool.release_metadata_snap()
        else:
            self.pool.reserve_metadata_snap()

    @rule(extra=st.integers(1, 2000))
    def resize_data(self, extra):
        self.pool.resize_data((self.pool.nr_data_blocks + extra) * BS)

    @rule(reopen=st.booleans())
    def commit(self, reopen):
        self.pool.commit()
        _thin_check(self.meta)
        # (thinp dump of the file itself: the pool directory is locked by the open pool)
        assert _thin_dump(self.meta) == dump(self.meta)
        if self.pool.status().held_root:
            assert _thin_dump(self.meta, held=True) == dump(self.meta, metadata_snap=True)
        _other_tools_agree(self.meta, self.pool.devices(), self.pool.nr_data_blocks, bool(self.pool.status().held_root))
        assert _index(self.pool) == _leaves(self.meta)
        # dm's data space map and the index hold the same blocks (a held
        # metadata snapshot's leaves included)
        np.testing.assert_array_equal(self.pool._dm.data_sm.count > 0, self.pool.refcounts() > 0)
        if reopen:
            before = _index(self.pool)
            status = str(self.pool.status())
            self.pool.close()
            self.pool = thinp.ThinPool.open(self.path)
            assert _index(self.pool) == before
            # dm binds a reloaded pool in PM_WRITE: out-of-data-space is
            # volatile and comes back at the next allocation that fails
            # (dm-thin.c: bind_control_target/set_pool_mode), so a full pool
            # that reported it before the reload reports rw after
            assert str(self.pool.status()) == status.replace(" out_of_data_space ", " rw ")


TestPoolDm = PoolDmMachine.TestCase
TestPoolDm.settings = settings(max_examples=10, stateful_step_count=20, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_fresh_100g_pool_meta_percent_is_dms(tmp_path):
    # the figure: a fresh 100 GiB pool at 64 KiB blocks, default
    # metadata size, uses 109 blocks (Meta% 10.8 with the reserve)
    with thinp.ThinPool.create(tmp_path / "p", "100G", sync=False) as pool:
        st_ = pool.status()
        assert pool._dm.nr_used_metadata_blocks == 109
        assert 10.5 < st_.metadata_percent < 11.2, st_
    _thin_check(tmp_path / "p" / "metadata")


def _pool_with_snap(path):
    pool = thinp.ThinPool.create(path, "1G", sync=False)
    pool.create_thin(1, "256M")
    pool.device(1).write(0, 8 * BS)
    pool.create_snap(2, 1)
    pool.close()


def test_sidecar_that_disagrees_is_refused_then_reconciled(tmp_path):
    p = tmp_path / "p"
    _pool_with_snap(p)
    side = read_sidecar(p)
    del side["devices"]["2"]
    side.pop("previous", None)
    (p / "pool.json").write_text(json.dumps(side))
    with pytest.raises(errors.TransactionIdMismatchError, match=r"devices \[1\] in pool.json, \[1, 2\] in the metadata"):
        thinp.ThinPool.open(p)
    with thinp.ThinPool.open(p, reconcile=True) as pool:
        assert pool.devices() == [1, 2]
        assert pool.device(1).size == 256 << 20
        assert pool.device(2).size == 8 * BS     # from its highest mapped block
    os.unlink(p / "pool.json")
    with pytest.raises(errors.TransactionIdMismatchError, match="there is no pool.json"):
        thinp.ThinPool.open(p)


def test_crash_between_sidecar_and_superblock_opens_the_last_commit(tmp_path):
    p = tmp_path / "p"
    _pool_with_snap(p)
    committed = (p / "metadata").read_bytes()
    with thinp.ThinPool.open(p) as pool:
        pool.create_thin(3, "64M")              # one commit: sidecar, then superblock
        sidecar = (p / "pool.json").read_bytes()
    # the files as a crash after the sidecar's write and before the
    # superblock's leaves them: the sidecar belongs to a commit that never
    # made it, and carries the one that did as "previous"
    (p / "metadata").write_bytes(committed)
    (p / "pool.json").write_bytes(sidecar)
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2]
    _thin_check(p / "metadata")


def test_cli_names_the_reconcile_path(tmp_path, capsys):
    from thinp.cli import main

    p = tmp_path / "p"
    _pool_with_snap(p)
    os.unlink(p / "pool.json")
    assert main(["pool", "status", str(p)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "there is no pool.json" in err and "--reconcile" in err
    assert main(["pool", "status", str(p), "--reconcile", "--line"]) == 0
    assert " rw " in capsys.readouterr().out
    assert (p / "pool.json").exists()


def test_sidecar_is_rewritten_only_when_its_commit_changes_it(tmp_path):
    p = tmp_path / "p"
    _pool_with_snap(p)
    with thinp.ThinPool.open(p) as pool:
        pool.device(1).write(0, 4096)            # breaks sharing with the snapshot: new roots
        pool.commit()
        ino = os.stat(p / "pool.json").st_ino
        writes = list(pool._sidecar.nr_writes)
        pool.device(1).write(0, 4096)            # an overwrite of a provisioned, unshared block
        pool.commit()
        assert pool._sidecar.nr_writes == writes
        sidecar = (p / "pool.json").read_bytes()
        committed = (p / "metadata").read_bytes()
        pool.device(1).write(100 * BS, 4096)     # provisions: new roots, new cursor
        pool.commit()
        # written in place, into the slot not holding the last commit's
        assert pool._sidecar.nr_writes == [writes[0] + 1, writes[1]]
        assert os.stat(p / "pool.json").st_ino == ino
        new = (p / "pool.json").read_bytes()
        half = len(new) // 2
        assert len(new) == len(sidecar) and (new[:half] == sidecar[:half]) != (new[half:] == sidecar[half:])
        side = read_sidecar(p)
        assert side["seq"] == side["previous"]["seq"] + 1
        assert side["commit"] != side["previous"]["commit"]
    # the sidecar left alone by the overwrite's commit still opens that commit
    (p / "metadata").write_bytes(committed)
    (p / "pool.json").write_bytes(sidecar)
    with thinp.ThinPool.open(p) as pool:
        assert pool.device(1).lookup(100) is None and pool.device(1).lookup(0) is not None
    _thin_check(p / "metadata")


def test_sidecar_slots_torn_or_lost(tmp_path):
    """A slot torn by a crash fails its crc and the other slot is used; a
    sidecar whose new slot never reached the disk while the superblock
    did (what the slot's flush before the superblock prevents) is named,
    not trusted, and reconcile adopts the metadata's view."""
    p = tmp_path / "p"
    _pool_with_snap(p)
    before = (p / "pool.json").read_bytes()
    committed = (p / "metadata").read_bytes()
    with thinp.ThinPool.open(p) as pool:
        pool.create_snap(3, 1)
        slot = pool._sidecar.live
    after = (p / "pool.json").read_bytes()
    half = len(after) // 2
    # torn: the new slot half written when the metadata is still the old commit
    torn = bytearray(after)
    torn[slot * half + 40:(slot + 1) * half] = before[slot * half + 40:(slot + 1) * half]
    (p / "pool.json").write_bytes(bytes(torn))
    (p / "metadata").write_bytes(committed)
    with thinp.ThinPool.open(p) as pool:
        assert pool.devices() == [1, 2]
    _thin_check(p / "metadata")
    # lost: the superblock of the snapshot's commit is out, its slot is not
    with thinp.ThinPool.open(p) as pool:
        pool.create_snap(3, 1)
    (p / "pool.json").write_bytes(before)
    with pytest.raises(errors.TransactionIdMismatchError, match=r"devices \[1, 2\] in pool.json, \[1, 2, 3\] in the "
                       r"metadata.*--reconcile"):
        thinp.ThinPool.open(p)
    with thinp.ThinPool.open(p, reconcile=True) as pool:
        assert pool.devices() == [1, 2, 3]
    # both slots torn: the file names itself
    (p / "pool.json").write_bytes(b'{"crc32": "00000000",' + b" " * 8170 + b"\n")
    with pytest.raises(errors.MetadataCorruptError, match="neither slot of the sidecar passes its checksum"):
        thinp.ThinPool.open(p)


def _pool_with_shared_trees(p):
    pool = thinp.ThinPool.create(p, "1G", sync=False)
    pool.create_thin(1, "256M")
    pool.replay(_writes(1, np.arange(0, 4000, 3)))
    pool.create_snap(2, 1)
    pool.replay(_writes(2, np.arange(0, 600, 7)))
    pool.reserve_metadata_snap()
    pool.create_snap(3, 2)
    pool.replay(_writes(1, np.arange(1, 4000, 11)))
    pool.close()


def _writes(dev, vblocks):
    t = np.zeros(len(vblocks), dtype=TRACE_DTYPE)
    t["dev_id"], t["op"], t["offset"], t["length"] = dev, WRITE, vblocks.astype(np.uint64) * BS, 4096
    return t


def test_fast_check_finds_what_the_node_by_node_check_finds(tmp_path):
    p = tmp_path / "p"
    _pool_with_shared_trees(p)
    with DmMetadata.open(p / "metadata") as md:
        fast, slow = md.check(), md.check(fast=False)
    assert fast == slow and fast.ok and fast.nr_mappings > 1000 and fast.nr_devices == 3
    # a leaf of a shared subtree damaged: the open names it as the slow walk does
    raw = bytearray((p / "metadata").read_bytes())
    from thinp.pdata import btree as bt
    with DmMetadata.open(p / "metadata") as md:
        sh = md.shapes()
        leaves = [b for b in sh.subtrees.blocks if bt.read_node(md.bm, b, 8).is_leaf]
    victim = leaves[len(leaves) // 2]
    raw[victim * 4096 + 100] ^= 0xFF
    (p / "metadata").write_bytes(bytes(raw))
    with DmMetadata.open(p / "metadata") as md:
        with pytest.raises(errors.MetadataCorruptError) as slow_err:
            md.check(fast=False)
        with pytest.raises(errors.MetadataCorruptError) as fast_err:
            md.check()
    assert str(fast_err.value) == str(slow_err.value) and f"{victim}" in str(fast_err.value)
    with pytest.raises(errors.MetadataCorruptError, match=f"{victim}"):
        thinp.ThinPool.open(p)


def test_open_reads_each_leaf_once_for_the_check_and_the_index(tmp_path):
    """The open's one walk of the leaves gives both counts: the check's
    (one per leaf mapping a block: dm's data space map) and the index's
    (one per device mapping it, a held metadata snapshot's included).
    Shared leaves make them differ."""
    p = tmp_path / "p"
    _pool_with_shared_trees(p)
    with DmMetadata.open(p / "metadata") as md:
        maps = [d.pblocks for held in (False, True) for d in md.pool_view(held=held).devices]
        leaves = md.data_counts()
    with thinp.ThinPool.open(p) as pool:
        rc = pool.refcounts()
        per_mapping = np.bincount(np.concatenate(maps), minlength=len(rc))
        np.testing.assert_array_equal(rc, per_mapping)
        np.testing.assert_array_equal(pool.data_counts(), leaves)
        assert (per_mapping[:len(leaves)] > leaves).any()
        assert int(pool._md.sp.scal[K.S_DUSED]) == int(np.count_nonzero(per_mapping))
        assert pool.status().used_data_blocks == int(np.count_nonzero(leaves))


def test_open_keeps_a_leaked_block_and_refuses_an_undercounted_one(tmp_path):
    # the open's one walk is also the check's.  A data block counted more
    # often than leaves map it is a leak (what dm's alloc_data_block leaves
    # in the commit it makes at the metadata reserve): non-fatal, as the
    # Rust thin_check has it, and the block stays allocated, as in dm.  A
    # mapped block counted too low could be handed out twice: refused.
    from thinp.thin.check import check
    from thinp.thin.pool_metadata import PoolMetadata

    p = tmp_path / "p"
    _pool_with_snap(p)
    md = PoolMetadata.open(p / "metadata")
    md.data_sm.inc(np.array([8], dtype=np.int64))   # the next block the allocator would hand out, unmapped
    md.commit()
    md.close(commit=False)
    rep = check(p)
    assert rep.ok and rep.notes == ["data space map: 1 blocks have leaked (first: block 8 has count 1, "
                                    "0 leaves map it)"]
    _thin_check(p / "metadata")
    with thinp.ThinPool.open(p) as pool:
        assert pool.status().used_data_blocks == 9
        pool.device(1).write(100 * BS, 4096)
        assert pool.device(1).lookup(100)[0] != 8      # never handed out again
        assert pool.data_counts()[8] == 1
    with thinp.ThinPool.open(p) as pool:
        assert pool.status().used_data_blocks == 10
    md = PoolMetadata.open(p / "metadata")
    md.data_sm.dec(np.array([3], dtype=np.int64))   # block 3: the two devices' leaves (unshared by the write) map it
    md.commit()
    md.close(commit=False)
    with pytest.raises(errors.MetadataCorruptError,
                       match=r"data space map: 1 blocks have wrong counts \(first: block 3 has count 1, 2 leaves"):
        thinp.ThinPool.open(p)


def test_open_names_a_mapping_past_the_sidecar_size(tmp_path):
    p = tmp_path / "p"
    _pool_with_snap(p)
    side = read_sidecar(p)
    side["devices"]["2"] = 4 * BS // 512          # the snapshot maps blocks 0..7
    side.pop("previous", None)
    (p / "pool.json").write_text(json.dumps(side))
    with pytest.raises(errors.MetadataCorruptError, match="device 2 maps block 4, past its size of 512 sectors"):
        thinp.ThinPool.open(p)


def test_interval_commit_runs_only_when_the_metadata_changed(tmp_path):
    # dm-thin's periodic commit is skipped when the transaction changed
    # nothing (dm_pool_changed_this_transaction)
    pool = thinp.ThinPool.create(tmp_path / "p", "1G", commit_interval=10)
    pool.create_thin(1, "256M")
    calls = []
    commit = pool._dm.commit
    pool._dm.commit = lambda **kw: (calls.append(1), commit(**kw))[1]
    pool.replay(_writes(1, np.arange(0, 100)))          # provisions: a commit every 10 requests
    assert len(calls) == 9
    pool.commit()                                        # the last 10 provisions
    del calls[:]
    pool.replay(_writes(1, np.arange(0, 100)))          # overwrites: nothing to commit
    assert calls == []
    pool.replay(_writes(1, np.arange(0, 100, 5)))       # overwrites, then one provision past the interval
    pool.replay(_writes(1, np.concatenate([np.arange(0, 50), [200]])))
    assert calls == [] and pool.device(1).lookup(200) is not None
    pool.replay(_writes(1, np.arange(0, 20)))           # the interval commits the provision of 200
    assert len(calls) == 1
    pool._dm.commit = commit
    pool.close()
    with thinp.ThinPool.open(tmp_path / "p") as pool:
        assert pool.device(1).mapped_blocks == 101
    _thin_check(tmp_path / "p" / "metadata")


def test_unchecked_open_finds_the_highest_mapping_down_the_rightmost_path(tmp_path):
    """`thinp pool status` opens without the check or the index, and reads a
    device's highest mapped block from its dm tree's rightmost path: it
    must agree with the checked open's index, for an empty tree, a single
    leaf and a tree with internal nodes (more mappings than one leaf holds)."""
    p = tmp_path / "p"
    rng = np.random.default_rng(7)
    with thinp.ThinPool.create(p, "4G", block_size=BS) as pool:
        for dev in (1, 2, 3):
            pool.create_thin(dev, "1G")
        many = np.unique(rng.integers(0, 16384, 2000))
        writes = [(2, int(v)) for v in (5, 40)] + [(3, int(v)) for v in many]
        t = np.zeros(len(writes), dtype=TRACE_DTYPE)
        t["op"] = WRITE
        t["dev_id"] = [d for d, _ in writes]
        t["offset"] = [v * BS for _, v in writes]
        t["length"] = 4096
        pool.replay(t)
    with thinp.ThinPool.open(p) as pool:
        checked = {d: pool.device(d).highest_mapped_block() for d in (1, 2, 3)}
    assert checked == {1: None, 2: 40, 3: int(many.max())}
    with thinp.ThinPool.open(p, read_only=True, check_trees=False) as pool:
        assert {d: pool.device(d).highest_mapped_block() for d in (1, 2, 3)} == checked

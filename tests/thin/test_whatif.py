"""thinp.thin.grow_devices: who fails, and when the events fire, for a known pool."""
from __future__ import annotations

import pytest

from thinp.thin import ThinPool, grow_devices

BS = 64 * 1024


def three(tmp_path, **kw):
    """100 data blocks, low water mark 10; three 64-block devices mapping 40, 20 and 0 blocks."""
    pool = ThinPool.create(tmp_path / "pool", data_size=100 * BS, block_size=BS, low_water_mark=10, **kw)
    for dev_id, nr in ((0, 40), (1, 20), (2, 0)):
        dev = pool.create_thin(dev_id, 64 * BS)
        if nr:
            dev.write(0, nr * BS)
    return pool


def test_mapped_basis_that_fits(tmp_path):
    pool = three(tmp_path)
    r = grow_devices(pool, 0.5, of="mapped")
    assert r.devices["demand_bytes"].tolist() == [20 * BS, 10 * BS, 0]
    assert r.nr_writes == 30 and r.nr_written == 30 and r.nr_failed == 0 and r.failing_devices == []
    assert r.before.used_data_blocks == 60 and r.after.used_data_blocks == 90
    assert r.after.data_percent == 90.0 and r.after.mode == "rw"
    # free blocks fall to the mark (10) on the 30th write, index 29
    lwm = r.first_event("low_water_mark")
    assert lwm["write_index"] == 29 and lwm["data_pct"] == 90.0
    assert r.first_event("out_of_data_space") is None
    assert r.curve["data_pct"].iloc[0] == 60.0 and r.curve["data_pct"].iloc[-1] == 90.0
    # the new writes went to blocks each device did not map
    for dev_id, nr in ((0, 40), (1, 20)):
        v, _, _ = pool.device(dev_id).mapping()
        assert len(v) == nr + nr // 2
    pool.close()


def test_round_robin_fails_the_biggest_writer(tmp_path):
    pool = three(tmp_path)
    r = grow_devices(pool, 1.0, of="mapped", order="round-robin")
    d = r.devices.set_index("dev_id")
    # device 0 wants 40 but has only 24 unmapped blocks; device 1 wants 20; 40 blocks are free
    assert d.loc[0, "capped"] and not d.loc[1, "capped"]
    assert d["demand_bytes"].tolist() == [24 * BS, 20 * BS, 0]
    assert d["written_bytes"].tolist() == [20 * BS, 20 * BS, 0]
    assert d["failed_bytes"].tolist() == [4 * BS, 0, 0]
    assert r.failing_devices == [0]
    assert r.first_event("out_of_data_space")["write_index"] == 40
    assert r.after.data_percent == 100.0 and r.after.mode == "out_of_data_space"
    assert pool.nr_queued == r.nr_failed == 4   # queue_if_no_space: the failed writes wait
    pool.close()


def test_proportional_fails_everyone_still_writing(tmp_path):
    pool = three(tmp_path, error_if_no_space=True)
    r = grow_devices(pool, 1.0, of="mapped", order="proportional")
    assert r.nr_written == 40 and r.nr_failed == 4
    assert r.failing_devices == [0, 1]
    assert r.after.nr_enospc == 4 and pool.nr_queued == 0   # error_if_no_space: ENOSPC
    pool.close()


def test_virtual_basis(tmp_path):
    pool = three(tmp_path)
    r = grow_devices(pool, 0.25, of="virtual", dev_ids=[2, 1])
    assert r.devices["dev_id"].tolist() == [2, 1]
    assert r.devices["demand_bytes"].tolist() == [16 * BS, 16 * BS]
    assert r.nr_written == 32 and r.after.used_data_blocks == 92
    pool.close()


def test_same_seed_same_blocks(tmp_path):
    a, b = three(tmp_path / "a"), three(tmp_path / "b")
    ra, rb = grow_devices(a, 0.5, seed=3), grow_devices(b, 0.5, seed=3)
    assert (ra.trace == rb.trace).all()
    a.close(), b.close()


@pytest.mark.parametrize("kw", [dict(fraction=-1), dict(of="size"), dict(order="random")])
def test_bad_arguments(tmp_path, kw):
    pool = three(tmp_path)
    with pytest.raises(ValueError):
        grow_devices(pool, **kw)
    pool.close()


def test_reaching_the_metadata_reserve_stops_the_run_at_the_exact_write(tmp_path):
    """Scattered writes fill dm's leaves part way (126 to 252 mappings each):
    80,000 of them need more than a 1 MiB metadata device holds.  At the
    reserve dm commits and goes read-only without needs_check: the failing
    write is known exactly, and the writes before it are committed."""
    pool = ThinPool.create(tmp_path / "pool", data_size=131072 * BS, block_size=BS, metadata_size="1M")
    pool.create_thin(0, 1 << 36).write(0, BS)
    n = 80000
    r = grow_devices(pool, n / (1 << 20), of="virtual", nr_points=40)   # batches of 2,000
    oom = r.first_event("out_of_metadata_space")
    assert oom is not None and 20000 < oom["write_index"] < n
    assert oom["used_data_blocks"] == 1 + oom["write_index"]
    assert r.first_event("metadata_low_water_mark")["write_index"] < oom["write_index"]
    assert r.nr_written == oom["write_index"] and r.nr_failed == n - oom["write_index"]
    assert r.after.mode == "ro" and not r.after.needs_check and r.after.metadata_percent == 100.0
    assert r.curve["meta_pct"].is_monotonic_increasing and r.curve["meta_pct"].iloc[-1] == 100.0
    assert pool.device(0).mapped_blocks == 1 + oom["write_index"]
    pool.close()
    with ThinPool.open(tmp_path / "pool") as again:  # committed, and no needs_check to refuse the open
        assert again.device(0).mapped_blocks == 1 + oom["write_index"]


def test_a_metadata_failure_stops_the_run_and_says_which_batch(tmp_path):
    """On a 64-block metadata device dm's commit at the reserve needs more
    blocks than are left: a real metadata failure, so the transaction is
    aborted, needs_check set, and the batch is what is known."""
    pool = ThinPool.create(tmp_path / "pool", data_size=65536 * BS, block_size=BS, metadata_size=64 * 4096)
    pool.create_thin(0, 1 << 36).write(0, BS)
    r = grow_devices(pool, 20000 / (1 << 20), of="virtual", nr_points=40)   # 20,000 blocks, batches of 500
    assert r.first_event("out_of_metadata_space") is None
    oom = r.first_event("metadata_failure")
    assert oom is not None and oom["write_index"] > 0 and oom["write_index"] % 500 == 0
    assert r.first_event("metadata_low_water_mark")["write_index"] < oom["write_index"]
    assert r.nr_written == oom["write_index"] and r.nr_failed == 20000 - oom["write_index"]
    assert r.after.mode == "ro" and r.after.needs_check
    assert r.failing_devices == [0]
    assert r.curve["meta_pct"].is_monotonic_increasing
    pool.close()

"""Focused example tests of ThinPool and ThinDevice against dm-thin's rules."""
from __future__ import annotations

import errno

import numpy as np
import pytest

import thinp
from thinp import errors
from thinp.thin import ThinPool

KiB = 1024
MiB = 1024 * KiB
BS = 64 * KiB


def mk(tmp_path, name="pool", data_size=16 * BS, **kw) -> ThinPool:
    return ThinPool.create(tmp_path / name, data_size=data_size, block_size=BS, **kw)


# ---------------------------------------------------------------- queue mode
def test_delete_refuses_a_device_with_queued_io(tmp_path):
    """A queued request names its device's slot.  Deleting the device used to
    leave the request to run later against the freed slot: it landed on the
    next device created there, or leaked a mapping tree that made the next
    open fail with MetadataCorruptError."""
    pool = mk(tmp_path, data_size=2 * BS)
    a = pool.create_thin(0, MiB)
    b = pool.create_thin(1, MiB)
    a.write(0, 2 * BS)
    b.write(0, 100)
    assert pool.nr_queued == 1
    with pytest.raises(errors.PoolBusyError) as e:
        pool.delete(1)
    assert e.value.errno == errno.EBUSY
    assert "queued" in str(e.value)
    assert pool.devices() == [0, 1]
    c = pool.create_thin(2, MiB)
    pool.resize_data(4 * BS)
    assert pool.nr_queued == 0
    assert b.mapped_blocks == 1 and c.mapped_blocks == 0
    pool.delete(1)  # nothing queued any more
    pool.close()
    pool = ThinPool.open(tmp_path / "pool")  # validates every tree and refcount
    assert pool.devices() == [0, 2]
    assert pool.status().used_data_blocks == 2
    pool.close()


@pytest.mark.parametrize("payload", [True, False])
def test_a_read_only_pool_reads_and_replays_reads_without_touching_its_files(tmp_path, payload):
    """Read-only opens used to map the files PROT_READ; the kernels are
    compiled for writable arrays, so every read died in numba's typing."""
    import hashlib

    pool = mk(tmp_path, payload=payload)
    pool.create_thin(0, MiB).write(BS - 2, b"edge" if payload else 4)
    pool.close()
    files = [tmp_path / "pool" / n for n in ("metadata", "data")]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    ro = ThinPool.open(tmp_path / "pool", read_only=True)
    assert ro.device(0).read(BS - 2, 4) == (b"edge" if payload else bytes(4))
    trace = thinp.make_trace(2)
    trace[0] = (0, thinp.READ, 0, 2 * BS)
    trace[1] = (0, thinp.READ, 3 * BS, 10)
    res = ro.replay(trace)
    assert res.counters["nr_block_reads"] == 3 and res.counters["nr_unmapped_reads"] == 1
    ro.close()
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests

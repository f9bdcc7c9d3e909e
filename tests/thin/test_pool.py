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

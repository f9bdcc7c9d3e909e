"""A discard's passdown must not touch blocks the last commit still maps."""
from __future__ import annotations

import os

from thinp.thin import ThinPool

BS = 64 * 1024


def test_passdown_waits_for_the_commit(tmp_path):
    path = str(tmp_path / "p")
    pool = ThinPool.create(path, data_size=64 * BS, payload=True, sync=False, discard_passdown=True)
    dev = pool.create_thin(0, 16 * BS)
    dev.write(0, b"x" * BS)
    pool.commit()
    pb = dev.lookup(0)[0]
    dev.discard(0, BS)
    with open(os.path.join(path, "data"), "rb") as f:
        f.seek(pb * BS)
        assert f.read(BS) == b"x" * BS, "discarded block punched before the commit that frees it"
    assert pool.status().nr_passdown == 1
    pool.commit()
    with open(os.path.join(path, "data"), "rb") as f:
        f.seek(pb * BS)
        assert f.read(BS) == bytes(BS), "freed block not punched after the commit"
    pool.close()

"""restore(): device sizes and the table parameters the XML does not carry."""
from __future__ import annotations

import numpy as np
import pytest

from thinp.thin import ThinPool
from thinp.thin.dump import dump
from thinp.thin.restore import RestoreError, restore

BS = 64 * 1024


def source(tmp_path):
    pool = ThinPool.create(tmp_path / "src", data_size=256 * BS, block_size=BS)
    pool.create_thin(1, 32 * BS).write(0, 10 * BS)
    pool.create_snap(2, 1).write(3 * BS, BS)
    pool.create_thin(3, 100 * BS).write(50 * BS, 5 * BS)
    pool.close()
    xml = tmp_path / "pool.xml"
    dump(tmp_path / "src", xml)
    return xml


def test_sizes_and_table_parameters(tmp_path):
    xml = source(tmp_path)
    restore(xml, tmp_path / "dst", sizes={1: 32 * BS, 2: "2MiB", 3: 100 * BS}, low_water_mark=7,
            error_if_no_space=True)
    with ThinPool.open(tmp_path / "dst") as pool, ThinPool.open(tmp_path / "src", read_only=True) as src:
        assert [pool.device(d).size for d in (1, 2, 3)] == [32 * BS, 2 << 20, 100 * BS]
        assert pool.low_water_mark == 7
        assert pool.status().no_space == "error_if_no_space"
        for d in (1, 2, 3):
            for a, b in zip(pool.device(d).mapping(), src.device(d).mapping()):
                assert np.array_equal(a, b)
        assert pool.status().used_data_blocks == src.status().used_data_blocks == 16


def test_without_sizes_a_device_is_as_big_as_the_pool(tmp_path):
    xml = source(tmp_path)
    restore(xml, tmp_path / "dst", sizes={1: 32 * BS})
    with ThinPool.open(tmp_path / "dst") as pool:
        assert pool.device(1).size == 32 * BS
        assert pool.device(3).size == 256 * BS
        assert pool.low_water_mark == 0


def test_a_size_below_the_highest_mapping_is_refused_before_anything_is_made(tmp_path):
    xml = source(tmp_path)
    with pytest.raises(RestoreError, match="device 3.*highest mapped block 54"):
        restore(xml, tmp_path / "dst", sizes={3: 50 * BS})
    assert not (tmp_path / "dst").exists()
    with pytest.raises(ValueError, match="device 9"):
        restore(xml, tmp_path / "dst", sizes={9: BS})
    assert not (tmp_path / "dst").exists()


def test_cli_takes_sizes_and_table_parameters(tmp_path, capsys):
    from thinp.cli import main

    xml = source(tmp_path)
    assert main(["restore", "-i", str(xml), str(tmp_path / "dst"), "--size", "1=2MiB", "--size", "3=100M",
                 "--low-water-mark", "5", "--error-if-no-space"]) == 0
    assert "restored 25 mappings" in capsys.readouterr().out   # 10 + 10 (snapshot) + 5
    with ThinPool.open(tmp_path / "dst") as pool:
        assert pool.device(1).size == 2 << 20 and pool.device(3).size == 100 << 20
        assert pool.device(2).size == 256 * BS
        assert pool.low_water_mark == 5 and pool.status().no_space == "error_if_no_space"
    assert main(["restore", "-i", str(xml), str(tmp_path / "bad"), "--size", "1:20G"]) == 1
    assert "want DEV=SIZE" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

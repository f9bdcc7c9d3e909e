import numpy as np

from thinp.pdata.crc32c import crc32c, dm_checksum


def test_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_incremental():
    assert crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")


def test_dm_form_is_the_raw_register_xor_salt():
    data = np.arange(4092, dtype=np.uint8)
    assert dm_checksum(data, 0) == crc32c(data) ^ 0xFFFFFFFF
    assert dm_checksum(data, 160774) == (crc32c(data) ^ 0xFFFFFFFF) ^ 160774


def test_seal_many_stamps_what_seal_stamps():
    """The batch kernel (slicing-by-8 crc32c) writes the same headers as
    the per-block Python path, for every validator."""
    import numpy as np

    from thinp.pdata.block import KIND_OF, BlockManager, VALIDATORS

    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, size=(12, 4096), dtype=np.uint8)
    one, many = BlockManager(data.copy()), BlockManager(data.copy())
    bs = np.array([1, 2, 3, 5, 8, 9, 10, 11], dtype=np.int64)
    kinds = np.array([1, 2, 3, 4, 1, 2, 3, 4], dtype=np.uint8)
    for b, k in zip(bs.tolist(), kinds.tolist()):
        one.seal(b, VALIDATORS[k])
    many.seal_many(bs, kinds)
    assert np.array_equal(one.blocks, many.blocks)
    assert not np.array_equal(many.blocks, data)
    for b, k in zip(bs.tolist(), kinds.tolist()):
        assert many.read(b, VALIDATORS[k]) is not None
        assert VALIDATORS[KIND_OF[VALIDATORS[k].name]].check(many.blocks[b], b) is None

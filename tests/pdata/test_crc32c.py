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


def test_crc32_instruction_matches_the_tables():
    """Where the CPU has SSE4.2's crc32, sealing and checking use it; the
    headers and checksums are the table kernels', bit for bit."""
    import pytest

    from thinp.pdata.crc32c import TABLE8, hw_kernels, seal_blocks

    hw = hw_kernels()
    if hw is None:
        pytest.skip("this CPU has no crc32c instruction (SSE4.2): the table kernels are used")
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, size=(40, 4096), dtype=np.uint8)
    data[3] = 0
    data[4] = 255
    bs = rng.permutation(40).astype(np.int64)
    xors = rng.integers(0, 1 << 20, 40).astype(np.int64)
    # four blocks a loop, then the rest one at a time: every remainder
    for n in (1, 2, 3, 4, 5, 6, 7, 39, 40):
        a, b = data.copy(), data.copy()
        seal_blocks(TABLE8, a, bs[:n], xors[:n])
        hw[1](b.view(np.uint64), b.view(np.uint32), bs[:n], xors[:n])
        assert np.array_equal(a, b)
        assert not np.array_equal(a[bs[:n]], data[bs[:n]])
    for i in range(40):
        assert int(hw[0](data.view(np.uint64), data.view(np.uint32), i)) == dm_checksum(data[i, 4:], 0)

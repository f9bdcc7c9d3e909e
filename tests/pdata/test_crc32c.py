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

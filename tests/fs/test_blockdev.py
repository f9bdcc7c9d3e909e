import errno
import os

import numpy as np
import pytest

from thinp.blockdev import BlockDevice, PlainDevice, count_chunks
from thinp.trace import DISCARD, READ, WRITE, TraceRecorder


def test_plain_device_is_a_block_device():
    assert isinstance(PlainDevice("1M"), BlockDevice)


def test_accounting_tracks_blocks_and_chunks():
    d = PlainDevice("1M")
    d.write(4096, 100)          # one block
    d.write(70000, b"x" * 10)   # bytes are accepted, not kept
    assert d.physical_bytes == 8192
    assert d.chunks_touched(65536) == 2
    assert d.chunks_touched(512 * 1024) == 1
    assert d.read(4096, 4) == bytes(4)
    d.discard(0, 65536)         # covers the first block entirely
    assert d.physical_bytes == 4096
    d.discard(65536 + 1, 4096)  # partial blocks are not punched
    assert d.physical_bytes == 4096


def test_stats_count_requests_and_bytes():
    d = PlainDevice("1M")
    d.write(0, 8192)
    d.read(0, 100)
    d.discard(0, 4096)
    s = d.stats.as_dict()
    assert s == {"nr_reads": 1, "nr_writes": 1, "nr_discards": 1, "bytes_read": 100,
                 "bytes_written": 8192, "bytes_discarded": 4096}


def test_payload_round_trip_unaligned():
    d = PlainDevice("1M", payload=True)
    data = bytes(range(256)) * 40
    d.write(4000, data)
    assert d.read(4000, len(data)) == data
    assert d.read(0, 4000) == bytes(4000)
    assert d.physical_bytes == 4 * 4096    # bytes 4000..14240 touch blocks 0-3
    with pytest.raises(ValueError):
        d.write(0, 100)                    # a payload device needs bytes


def test_out_of_range_is_eio():
    d = PlainDevice("64K")
    with pytest.raises(OSError) as e:
        d.write(65536 - 10, b"x" * 20)
    assert e.value.errno == errno.EIO


def test_bad_size():
    with pytest.raises(ValueError):
        PlainDevice(1000)


def test_sparse_file_backing_matches_du(tmp_path):
    p = tmp_path / "disk.img"
    with PlainDevice("16M", path=p) as d:
        d.write(1 << 20, 256 * 1024)
        d.write(8 << 20, 4096)
        du = os.stat(p).st_blocks * 512
        assert du >= d.physical_bytes == 260 * 1024
        d.discard(1 << 20, 256 * 1024)
        assert os.stat(p).st_blocks * 512 < 64 * 1024
        assert d.physical_bytes == 4096


def test_sparse_file_payload(tmp_path):
    p = tmp_path / "disk.img"
    with PlainDevice("4M", path=p, payload=True) as d:
        d.write(12345, b"hello world")
        assert d.read(12345, 11) == b"hello world"
        assert p.read_bytes()[12345:12356] == b"hello world"
        d.discard(0, 1 << 20)
        assert d.read(12345, 11) == bytes(11)


def test_trace_recorder():
    t = TraceRecorder(dev_id=7)
    d = PlainDevice("1M", trace=t)
    d.write(0, 4096)
    d.read(0, 512)
    d.discard(0, 4096)
    tr = t.trace()
    assert list(tr["op"]) == [WRITE, READ, DISCARD]
    assert list(tr["length"]) == [4096, 512, 4096]
    assert set(tr["dev_id"]) == {7}


def test_count_chunks_edge():
    from bitarray import bitarray

    ba = bitarray(33)
    ba.setall(0)
    ba[32] = 1
    assert count_chunks(ba, 65536) == 1
    ba[0] = 1
    assert count_chunks(ba, 65536) == 2
    assert count_chunks(ba, 4096) == 2


from hypothesis import given, settings
from hypothesis import strategies as st

OPS = st.lists(st.tuples(st.sampled_from(["w", "d"]), st.integers(0, 60000), st.integers(0, 9000),
                         st.integers(0, 255)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_payload_memory_device_matches_a_bytearray(ops):
    size = 65536
    d = PlainDevice(size, payload=True)
    model = bytearray(size)
    alloc = np.zeros(size // 4096, dtype=bool)
    for op, off, n, byte in ops:
        n = min(n, size - off)
        if op == "w":
            data = bytes([byte]) * n
            d.write(off, data)
            model[off:off + n] = data
            if n:
                alloc[off // 4096:(off + n + 4095) // 4096] = True
        else:
            d.discard(off, n)
            b0, b1 = (off + 4095) // 4096, (off + n) // 4096
            for b in range(b0, b1):
                model[b * 4096:(b + 1) * 4096] = bytes(4096)
                alloc[b] = False
    assert d.read(0, size) == bytes(model)
    assert d.physical_bytes == alloc.sum() * 4096


def test_write_runs_is_the_writes_one_by_one():
    runs = [(0, 1), (10, 300), (5, 0), (2000, 7), (11, 2), (262143, 1)]
    one, batch = PlainDevice("1GiB"), PlainDevice("1GiB")
    for s, n in runs:
        one.write(s * 4096, n * 4096)
    batch.write_runs(runs)
    assert batch.stats.as_dict() == one.stats.as_dict()
    assert batch.stats.nr_writes == len(runs)
    assert batch.allocated_blocks() == one.allocated_blocks()
    assert batch.physical_bytes == one.physical_bytes == (1 + 300 + 7 + 1) * 4096   # (11, 2) lies inside (10, 300)
    # a run beyond the end: the runs before it are written, then EIO, as one by one
    with pytest.raises(OSError) as e:
        batch.write_runs([(3000, 1), (262143, 2), (4000, 1)])
    assert e.value.errno == errno.EIO
    assert batch.stats.nr_writes == len(runs) + 1
    assert batch.physical_bytes == one.physical_bytes + 4096

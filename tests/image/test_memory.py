"""Reading a layer streams: peak memory does not grow with the layer's size."""
import tarfile
import tracemalloc

import numpy as np
import pytest

from thinp.image import Layer, flatten
from thinp.image.layer import FILE


def _big_layer(path, nr_bytes: int) -> None:
    block = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()

    class Src:
        def __init__(self):
            self.left = nr_bytes

        def read(self, n=-1):
            n = min(self.left, len(block) if n is None or n < 0 else n)
            self.left -= n
            return (block * (n // len(block) + 1))[:n]

    with tarfile.open(path, "w") as tf:
        ti = tarfile.TarInfo("big.bin")
        ti.size = nr_bytes
        tf.addfile(ti, Src())
        ti = tarfile.TarInfo("small.txt")
        ti.size = 5
        import io
        tf.addfile(ti, io.BytesIO(b"small"))


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("verify", [True, False])
def test_peak_memory_flat_in_layer_size(tmp_path, verify):
    peaks = {}
    for mib in (4, 48):
        p = tmp_path / f"{mib}.tar"
        _big_layer(p, mib << 20)
        diff_id = None if verify else Layer.from_path(p).scan().diff_id
        peaks[mib] = _peak(lambda: flatten([Layer.from_path(p, diff_id=diff_id)], verify=verify))
    assert peaks[48] < 6 << 20, peaks
    assert peaks[48] < peaks[4] + (1 << 20), peaks


def test_content_stream_is_chunked(tmp_path):
    p = tmp_path / "x.tar"
    _big_layer(p, 24 << 20)
    layer = Layer.from_path(p)

    def consume():
        for e, stream in layer.walk():
            if e.kind == FILE:
                while stream.read(1 << 16):
                    pass
    assert _peak(consume) < 6 << 20
    assert layer.size == (24 << 20) + 5

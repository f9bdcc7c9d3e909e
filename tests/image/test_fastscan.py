"""The fast header scanner yields exactly what the reference reader yields.

``thinp.image.fastscan`` lists an uncompressed tar with one numba kernel over
a mapping; ``tarstream.iter_tar`` is the reference.  For every input, both
must yield the same headers and then end the same way: cleanly, or with the
same ``ImageFormatError`` message.  Both reference modes are compared: the
one that seeks over data (an unverified walk of a file) and the one that
reads through it (a hashing walk), since they word truncation differently.
"""
import glob
import io
import os
import tarfile
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinp.errors import ImageFormatError
from thinp.image import Layer, flatten, load
from thinp.image import fastscan as fsc
from thinp.image import layer as layer_mod
from thinp.image import tarstream as ts

from .conftest import FIXTURES, make_tar


# ------------------------------------------------------------------ helpers
def reference(data: bytes, seek_mode: bool):
    """``(headers, error message or None)`` from the reference reader."""
    inp = ts.HashingInput(io.BytesIO(data), "t.tar", hash_data=not seek_mode,
                          size_bytes=len(data) if seek_mode else None)
    out = []
    try:
        for h, _stream in ts.iter_tar(inp):
            out.append(h)
    except ImageFormatError as e:
        return out, str(e)
    return out, None


def fast(data: bytes, seek_mode: bool, via_file: bool = False):
    """The fast scanner over ``data`` in memory, or as bytes 700.. of a file
    between junk (the ``pread`` window path, as for a layer inside an
    uncompressed ``docker save``)."""
    out = []
    if via_file:
        fd, path = tempfile.mkstemp(suffix=".tar")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\x55" * 700 + data + b"\x66" * 1500)
        src = fsc.TarSource.open(path, 700, len(data)) if data else None
    else:
        path, src = None, fsc.TarSource.from_bytes(data) if data else None
    try:
        if src is None:   # Layer never takes an empty source this way
            return reference(data, seek_mode)
        for h in fsc.iter_headers(src, "t.tar", seek_mode=seek_mode):
            out.append(h)
    except ImageFormatError as e:
        return out, str(e)
    finally:
        if src is not None:
            src.close()
        if path:
            os.unlink(path)
    return out, None


def assert_same(data: bytes):
    for seek_mode in (True, False):
        ref = reference(data, seek_mode)
        for via_file in (False, True):
            got = fast(data, seek_mode, via_file)
            assert got[1] == ref[1], (seek_mode, via_file, got[1], ref[1])
            assert len(got[0]) == len(ref[0])
            for a, b in zip(got[0], ref[0]):
                assert a == b
    return ref


def kernel_only(data: bytes, window: int | None = None):
    """How far the kernel alone gets: (status, pos, records) of repeated calls."""
    if window is None:
        src = fsc.TarSource.from_bytes(data)
        path = None
    else:
        fd, path = tempfile.mkstemp(suffix=".tar")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\x01" * 3 + data + b"\x02" * 2000)
        src = fsc.TarSource.open(path, 3, len(data))
        src.win = np.zeros(window, dtype=np.uint8)
    s = fsc.Scratch(batch=4)
    pos, total = 0, 0
    try:
        while True:
            status, pos, nr, npos = fsc.scan_batch(src, pos, s)
            total += nr
            assert 0 <= pos <= len(data) and 0 <= nr <= 4 and 0 <= npos <= s.names.shape[0]
            if status != fsc.ST_FULL:
                return status, pos, total
    finally:
        src.close()
        if path:
            os.unlink(path)


def uncompressed_layers():
    """(name, uncompressed tar bytes) of every fixture layer."""
    out = []
    for p in sorted(glob.glob(str(FIXTURES / "layers" / "*.tar"))):
        out.append((os.path.basename(p), open(p, "rb").read()))
    for p in sorted(glob.glob(str(FIXTURES / "images" / "*.tar"))):
        seen = set()
        for img in load(p):
            for layer in img.layers:
                if layer.diff_id in seen:
                    continue
                seen.add(layer.diff_id)
                with layer.open_uncompressed() as r:
                    out.append((f"{os.path.basename(p)}:{layer.diff_id[7:19]}", r.read()))
    return out


# ------------------------------------------------------------------ fixtures
def test_every_fixture_layer_is_listed_the_same():
    layers = uncompressed_layers()
    if not layers:
        pytest.skip(f"no fixtures under {FIXTURES}")
    assert len(layers) >= 10
    nr_fast = nr_all = 0
    for name, data in layers:
        headers, err = assert_same(data)
        assert err is None, name
        status, _, nr = kernel_only(data)
        assert status == fsc.ST_EOA, name
        nr_fast += nr
        nr_all += len(headers)
        # and through Layer: entries() (fast) against walk() (reference)
        ref = [e for e, _ in Layer.from_bytes(data, name=name).walk()]
        lay = Layer.from_bytes(data, name=name)
        assert list(lay.entries()) == ref, name
    # the fixtures are plain: the kernel alone walks every header of every one
    assert nr_fast == nr_all > 500


def test_fixture_layer_files_by_path_and_window(tmp_path):
    """FileSource layers (a whole file, and a window of a bigger one) take the
    fast path, with the same entries, DiffID and sizes as the reference."""
    layers = uncompressed_layers()
    if not layers:
        pytest.skip(f"no fixtures under {FIXTURES}")
    for name, data in layers[:6]:
        p = tmp_path / "l.tar"
        p.write_bytes(data)
        ref_layer = Layer.from_bytes(data)
        ref = [e for e, _ in ref_layer.walk()]
        lay = Layer.from_path(p)
        assert list(lay.entries()) == ref
        assert (lay.diff_id, lay.size, lay.nr_entries, lay.tar_size) == \
            (ref_layer.diff_id, ref_layer.size, ref_layer.nr_entries, ref_layer.tar_size)
        known = Layer.from_path(p, diff_id=lay.diff_id)
        assert list(known.entries(verify=False)) == ref
        big = tmp_path / "outer.bin"
        big.write_bytes(b"\x07" * 1536 + data + b"\x09" * 700)
        win = Layer(layer_mod.FileSource(big, offset=1536, length=len(data)))
        assert list(win.entries()) == ref and win.diff_id == ref_layer.diff_id


def test_fast_path_is_taken(monkeypatch, tmp_path):
    calls = []
    real = fsc.iter_batches

    def spy(*a, **kw):
        calls.append(kw["seek_mode"])
        return real(*a, **kw)
    monkeypatch.setattr(fsc, "iter_batches", spy)
    data = make_tar([("a/", "d"), ("a/b", "f", b"bee")])
    p = tmp_path / "x.tar"
    p.write_bytes(data)
    lay = Layer.from_path(p)
    flatten([lay])
    flatten([Layer.from_path(p, diff_id=lay.diff_id)], verify=False)
    flatten([Layer.from_bytes(data)], verify=False)
    assert calls == [False, True, False]
    # compressed layers stream through the reference reader
    import gzip
    flatten([Layer.from_bytes(gzip.compress(data))])
    assert len(calls) == 3


# ------------------------------------------------------------------ verification
def test_diff_id_and_digest_mismatches_match_reference(tmp_path):
    data = make_tar([("a", "f", b"x" * 5000)])
    p = tmp_path / "x.tar"
    p.write_bytes(data)
    wrong = "sha256:" + "0" * 64
    for kw in ({"diff_id": wrong}, {"blob_digest": wrong}, {"blob_size": 3}):
        with pytest.raises(ImageFormatError) as ref:
            for _ in Layer.from_path(p, **kw).walk():
                pass
        with pytest.raises(ImageFormatError) as got:
            list(Layer.from_path(p, **kw).entries())
        assert str(got.value) == str(ref.value)
    # unverified with the DiffID known: no hash, no error
    assert [e.path for e in Layer.from_path(p, diff_id=wrong).entries(verify=False)] == ["a"]


def test_threaded_hash_of_a_large_layer(tmp_path):
    p = tmp_path / "big.tar"
    payload = np.random.default_rng(3).integers(0, 256, 9 << 20, dtype=np.uint8).tobytes()
    p.write_bytes(make_tar([("big", "f", payload), ("small", "f", b"s")]))
    ref = Layer.from_bytes(p.read_bytes()).scan()
    lay = Layer.from_path(p)
    assert [e.path for e in lay.entries()] == ["big", "small"]
    assert lay.diff_id == ref.diff_id and lay.size == len(payload) + 1
    # abandoning the listing stops the hashing thread and releases the mapping
    it = Layer.from_path(p).entries()
    next(it)
    it.close()


# ------------------------------------------------------------------ hostile input
HOSTILE = {
    "absolute": make_tar([("/etc/passwd", "f", b"x")]),
    "dotdot": make_tar([("a/../../evil", "f", b"x")]),
    "hardlink-out": make_tar([("a", "f", b"x"), ("b", "h", "../a")]),
    "hardlink-abs": make_tar([("a", "f", b"x"), ("b", "h", "/a")]),
    "hardlink-root": make_tar([("b", "h", ".")]),
    "symlink-empty": make_tar([("s", "l", "")]),
    "root-not-dir": make_tar([("./", "f", b"x")]),
    "unsupported-type": make_tar([("a", "f", b"x"), ("s", "l", "t")]).replace(b"2", b"S", 1),
    "empty": b"",
    "no-eoa": make_tar([("a", "f", b"x")])[:1024],
    "short-header": make_tar([("a", "f", b"x")])[:1024 + 100],
    "truncated-data": make_tar([("a", "f", b"x" * 3000)])[:2048],
    "truncated-padding": make_tar([("a", "f", b"x" * 3000)])[:512 + 3000 + 10],
    "pax-at-eoa": make_tar([("a" * 200, "f", b"x")])[:1024] + b"\0" * 1024,
    "gnu-longname": make_tar([("d/" + "n" * 150, "f", b"x")], fmt=tarfile.GNU_FORMAT),
    "gnu-base256-uid": make_tar([("a", "f", b"x", {"uid": 8 ** 8 + 5})], fmt=tarfile.GNU_FORMAT),
    "pax-global": make_tar([("a", "f", b"x")]).replace(b"0000644", b"0000644", 1),
}


def _with_field(data: bytes, block: int, off: int, value: bytes, fix=True) -> bytes:
    b = bytearray(data)
    b[block + off:block + off + len(value)] = value
    if fix:
        b[block + 148:block + 156] = b" " * 8
        b[block + 148:block + 156] = b"%06o\0 " % sum(b[block:block + 512])
    return bytes(b)


_ONE = make_tar([("a", "f", b"x" * 10), ("b", "d")], fmt=tarfile.USTAR_FORMAT)
HOSTILE.update({
    "bad-checksum": _with_field(_ONE, 0, 0, b"z", fix=False),
    "octal-9": _with_field(_ONE, 0, 100, b"0000949\0"),
    "octal-spaces": _with_field(_ONE, 0, 100, b"  644  \0"),
    "octal-inner-nul": _with_field(_ONE, 0, 100, b"06\x00044\0\0"),
    "octal-underscore": _with_field(_ONE, 0, 100, b"0_644\0\0\0"),
    "octal-plus": _with_field(_ONE, 0, 108, b"+17\0\0\0\0\0"),
    "octal-tab": _with_field(_ONE, 0, 116, b"\t17\0\0\0\0\0"),
    "size-past-end": _with_field(_ONE, 0, 124, b"77777777777\0"),
    "size-base256": _with_field(_ONE, 0, 124, b"\x80" + b"\0" * 10 + b"\x0a"),
    "size-negative": _with_field(_ONE, 0, 124, b"\xff" * 12),
    "checksum-empty": _with_field(_ONE, 0, 148, b"\0" * 8, fix=False),
    "signed-checksum": _with_field(_ONE, 0, 0, b"\xe9t\xe9"),
    "ustar-prefix": _with_field(_ONE, 0, 345, b"pre/fix\0"),
    "ustar-prefix-dotdot": _with_field(_ONE, 0, 345, b"..\0"),
    "gnu-magic-prefix-ignored": _with_field(_with_field(_ONE, 0, 257, b"ustar  \0"), 0, 345, b"x\0"),
    "surrogate-name": _with_field(_ONE, 0, 0, b"caf\xe9/\xff\xfe./x\0"),
    "dev-garbage-on-file": _with_field(_ONE, 0, 329, b"zz\0"),
    "char-dev-garbage": _with_field(_with_field(_ONE, 0, 156, b"3"), 0, 329, b"zz\0"),
    "empty-name": _with_field(_ONE, 0, 0, b"\0" * 100),
    "dot-dir": _with_field(_with_field(_ONE, 512 + 512, 0, b"./\0"), 1024, 156, b"5"),

    "rooted-dotdot": make_tar([("/../etc/x", "f", b"x")]),
    "inner-dotdot": make_tar([("a/b/../c", "f", b"x")]),
    "root-slash": make_tar([("/", "d"), ("/a", "f", b"x")], fmt=tarfile.USTAR_FORMAT),
    "v7-dir": _with_field(_with_field(_with_field(_ONE, 0, 257, b"\0" * 8), 0, 156, b"\0"), 0, 0, b"a/\0"),
})


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_inputs_fail_the_same_way(case):
    assert_same(HOSTILE[case])


def test_hostile_inputs_through_layers(tmp_path):
    for case, data in sorted(HOSTILE.items()):
        p = tmp_path / f"{case}.tar"
        p.write_bytes(data)
        for verify in (True, False):
            outcome = []
            for how in ("walk", "entries"):
                lay = Layer.from_path(p, diff_id=None if verify else "sha256:" + "1" * 64)
                got = []
                try:
                    it = lay.walk(verify) if how == "walk" else ((e, None) for e in lay.entries(verify))
                    for e, _ in it:
                        got.append(e)
                    err = None
                except ImageFormatError as e:
                    err = str(e)
                outcome.append((got, err))
            assert outcome[0] == outcome[1], (case, verify)


# ------------------------------------------------------------------ kernel bounds
def test_kernel_rejects_bad_arguments():
    src = fsc.TarSource.from_bytes(bytes(1024))
    s = fsc.Scratch(batch=4)
    with pytest.raises(ValueError):
        fsc.scan_batch(src, 1025, s)
    with pytest.raises(ValueError):
        fsc.scan_batch(src, -1, s)
    src.win = src.win.astype(np.int16)
    with pytest.raises(TypeError):
        fsc.scan_batch(src, 0, s)
    src.win = np.zeros(512, dtype=np.uint8)     # an in-memory tar must be its own window
    with pytest.raises(ValueError):
        fsc.scan_batch(src, 0, s)
    src = fsc.TarSource.from_bytes(bytes(1024))
    s.names = np.zeros(8, dtype=np.uint8)      # too small to hold one name
    with pytest.raises(ValueError):
        fsc.scan_batch(src, 0, s)
    s = fsc.Scratch(batch=4)
    s.rec = np.zeros((3, 4), dtype=np.int64)    # wrong record layout
    with pytest.raises(ValueError):
        fsc.scan_batch(src, 0, s)


@pytest.mark.parametrize("window", [None, 512, 1024, 4096])
@pytest.mark.parametrize("n", [1, 511, 512, 513, 1023])
def test_kernel_stops_before_short_input(n, window):
    status, pos, nr = kernel_only(_ONE[:n], window)
    assert (status, pos, nr) == (fsc.ST_SLOW, 0, 0)


@pytest.mark.parametrize("window", [None, 512, 1000, 4096])
def test_kernel_windows_walk_every_header(window):
    """However small the pread window, the kernel walks the same headers and
    never reads the junk around the layer in its file."""
    data = make_tar([(f"f{i}", "f", b"y" * (i * 300)) for i in range(12)] + [("d/", "d")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        eoa = tf.getmembers()[-1].offset + 512
    assert kernel_only(data, window) == (fsc.ST_EOA, eoa, 13)
    # f0 (0 bytes) at 0, f1 (300 bytes) at 512, f2 at 1536: a header one byte
    # short of the layer's end is not completed from the junk after it
    assert kernel_only(data[:1536 + 511], window) == (fsc.ST_SLOW, 1536, 2)
    # nor is data that runs past the end
    assert kernel_only(data[:1536 - 1], window) == (fsc.ST_SLOW, 512, 1)


def test_kernel_stops_at_end_of_archive_and_extended_headers():
    assert kernel_only(_ONE)[0] == fsc.ST_EOA
    pax = make_tar([("a", "f", b"1"), ("b" * 120, "f", b"2"), ("c", "f", b"3")])
    status, pos, nr = kernel_only(pax)
    assert (status, nr) == (fsc.ST_SLOW, 1) and pax[pos + 156:pos + 157] == b"x"


# ------------------------------------------------------------------ generated tars
_NAME_PART = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12),
    st.sampled_from([".", "..", "", ".wh.x", ".wh..wh..opq", "a" * 80, "ü" * 40]),
)
_NAME = st.lists(_NAME_PART, min_size=1, max_size=6).map("/".join) \
    .map(lambda s: s.encode("utf-8", "surrogateescape")[:300].decode("utf-8", "ignore") or "x")
_MEMBER = st.tuples(
    st.one_of(_NAME, st.sampled_from(["/abs", "./x/", "a//b", "x/./y/", "./"])),
    st.sampled_from("ffffdlhcbp"),
    st.binary(max_size=1100),
    st.one_of(_NAME, st.sampled_from(["", "/etc", "../x", "."])),
    st.integers(0, 8 ** 8 + 3),
    st.sampled_from([0, 0o644, 0o4755, 0o177777]),
)


def _build(members, fmt, raw_names: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for name, kind, content, link, uid, mode in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.mode = mode & 0o7777
            ti.uid = uid if fmt != tarfile.USTAR_FORMAT else uid % (8 ** 7)
            data = None
            if kind == "f":
                ti.size, data = len(content), io.BytesIO(content)
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind in "lh":
                ti.type = tarfile.SYMTYPE if kind == "l" else tarfile.LNKTYPE
                ti.linkname = link
            elif kind in "cb":
                ti.type = tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = uid % 300, uid % 7
            else:
                ti.type = tarfile.FIFOTYPE
            try:
                tf.addfile(ti, data)
            except ValueError:   # a name or number this format cannot hold
                continue
    return buf.getvalue()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MEMBER, max_size=8),
       st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
       st.booleans())
def test_generated_tars_are_listed_the_same(members, fmt, raw):
    assert_same(_build(members, fmt, raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MEMBER, min_size=1, max_size=5),
       st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
       st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6),
       st.booleans(), st.integers(0, 10 ** 6))
def test_mutated_tars_fail_the_same_way(members, fmt, mutations, fix_checksum, cut):
    data = bytearray(_build(members, fmt, False))
    blocks = set()
    for where, value in mutations:
        i = where % len(data)
        data[i] = value
        blocks.add(i - i % 512)
    if fix_checksum:
        for b in blocks:
            data[b + 148:b + 156] = b" " * 8
            data[b + 148:b + 156] = b"%06o\0 " % sum(data[b:b + 512])
    assert_same(bytes(data))
    assert_same(bytes(data[:cut % (len(data) + 1)]))


# ------------------------------------------------------------------ memory
def test_fast_listing_memory_is_flat(tmp_path):
    """Peak Python allocation of a mapped listing does not grow with the
    number of entries or bytes: fixed batches (of ``BATCH`` entries, so both
    sizes are several batches), no per-layer buffers."""
    peaks = {}
    small, large = 2 * fsc.BATCH + 5, 8 * fsc.BATCH + 5
    for nr in (small, large):
        members = [(f"d{i % 17}/f{i}", "f", b"x" * (i % 1500)) for i in range(nr)]
        p = tmp_path / f"{nr}.tar"
        p.write_bytes(make_tar(members))
        assert p.stat().st_size > layer_mod._THREAD_MIN_BYTES   # both hash in a thread
        diff_id = Layer.from_path(p).scan().diff_id
        for verify in (True, False):
            lay = Layer.from_path(p, diff_id=None if verify else diff_id)
            list(lay.entries(verify))   # warm (numba, scratch pool)
            tracemalloc.start()
            try:
                count = 0
                for _ in lay.entries(verify):
                    count += 1
                peaks[nr, verify] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert count == nr
    # the hashing thread's one chunk buffer may or may not be alive at the
    # peak (thread timing): the tolerance covers it, and nothing else
    slack = 512 << 10
    assert layer_mod._HASH_CHUNK < slack
    for verify in (True, False):
        assert peaks[large, verify] < peaks[small, verify] + slack, peaks
        assert peaks[large, verify] < 4 << 20, peaks


# ------------------------------------------------------------------ the file under the reader
def test_file_written_during_a_verified_read_is_an_error(tmp_path):
    """Hash and listing are two reads of one descriptor: a write in between
    (seen by size, mtime or ctime) fails the load instead of pairing one
    content's digest with another's entries."""
    data = make_tar([(f"f{i}", "f", b"z" * 100) for i in range(5000)])
    p = tmp_path / "x.tar"
    p.write_bytes(data)
    it = Layer.from_path(p).entries()
    next(it)
    with open(p, "ab") as f:       # past the end of archive: the listing cannot see it
        f.write(b"\0" * 512)
    with pytest.raises(ImageFormatError, match="changed while it was read"):
        list(it)
    assert len(list(Layer.from_path(p).entries())) == 5000   # a fresh read is fine


def test_replaced_path_does_not_split_the_read(tmp_path):
    """The hasher reads the scanner's descriptor, not the path: replacing the
    path mid-read never pairs one file's digest with the other's entries.
    (Unlinking the old file moves its ctime, so the read may also refuse.)"""
    a = make_tar([(f"a{i}", "f", b"a" * 3000) for i in range(1500)])
    b = make_tar([(f"b{i}", "f", b"b" * 3000) for i in range(1500)])
    p = tmp_path / "x.tar"
    p.write_bytes(a)
    lay = Layer.from_path(p)
    it = lay.entries()
    first = next(it)
    (tmp_path / "y.tar").write_bytes(b)
    os.replace(tmp_path / "y.tar", p)
    try:
        rest = list(it)
    except ImageFormatError as e:
        assert "changed while it was read" in str(e)
        return
    assert [first.path] + [e.path for e in rest] == [f"a{i}" for i in range(1500)]
    assert lay.diff_id == Layer.from_bytes(a).scan().diff_id

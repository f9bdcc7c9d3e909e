"""thinp reads metadata the real kernel wrote, as thin_check and thin_dump do."""
from __future__ import annotations

import io
import subprocess

import pytest

from thinp import errors
from thinp.thin.dm_metadata import DmMetadata
from thinp.thin.dump import dump_xml

from .dm_fixtures import CORRUPTED, INTACT, real_tool, unpack


@pytest.fixture(scope="module")
def images(fixtures_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm")
    return {n: unpack(fixtures_dir, n, tmp) for n in INTACT + (CORRUPTED,)}


def _dump(path, held=False) -> str:
    with DmMetadata.open(path) as md:
        buf = io.StringIO()
        dump_xml(md.pool_view(held), buf)
        return buf.getvalue()


@pytest.mark.parametrize("name", INTACT)
def test_kernel_image_checks_clean(images, name):
    with DmMetadata.open(images[name]) as md:
        res = md.check()
    assert res.problems == []
    assert res.nr_metadata_blocks_used == md.sb.metadata_sm_root.nr_allocated


# the figures SOURCES.md gives for the images (read there with another reader)
SHAPES = {
    "tmeta": dict(time=15, trans=21, used=288, devices=11, entries=40829, leaves=230, internal=11),
    "tmeta_with_shared_internals_and_leaves": dict(time=1, trans=2, used=288, devices=2, entries=65786,
                                                   leaves=266, internal=5),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_kernel_image_shapes(images, name):
    want = SHAPES[name]
    with DmMetadata.open(images[name]) as md:
        sh = md.shapes()
        assert (md.sb.time, md.sb.trans_id) == (want["time"], want["trans"])
        assert md.sb.metadata_sm_root.nr_allocated == want["used"]
        assert sh.details.nr_entries == want["devices"]
        assert (sh.subtrees.nr_entries, sh.subtrees.nr_leaves, sh.subtrees.nr_internal) == \
            (want["entries"], want["leaves"], want["internal"])


@pytest.mark.parametrize("name", INTACT)
def test_dump_equals_thin_dump(images, name):
    tool = real_tool("thin_dump")
    real = subprocess.run([tool, str(images[name])], capture_output=True, text=True, check=True).stdout
    assert _dump(images[name]) == real
    with DmMetadata.open(images[name]) as md:
        held = bool(md.sb.held_root)
    if held:
        real_m = subprocess.run([tool, "-m", str(images[name])], capture_output=True, text=True, check=True).stdout
        assert _dump(images[name], held=True) == real_m


def test_corrupted_image_is_named(images):
    with pytest.raises(errors.MetadataCorruptError, match=r"block \d+"):
        with DmMetadata.open(images[CORRUPTED]) as md:
            md.check()


def test_corrupted_superblock_checksum(images, tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(images["tmeta_with_deleted_snapshot"].read_bytes())
    with open(p, "r+b") as f:
        f.seek(44)  # the time field
        f.write(b"\x07")
    with pytest.raises(errors.MetadataCorruptError, match="superblock block 0: bad checksum"):
        DmMetadata.open(p)

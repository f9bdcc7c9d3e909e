"""The kernel-written metadata images of ../shared/fixtures/dm-metadata, unpacked."""
from __future__ import annotations

import gzip
import pathlib
import shutil

import pytest

INTACT = ("tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internals_and_leaves",
          "tmeta_with_deleted_snapshot")
CORRUPTED = "corrupted_tmeta_with_metadata_snap"


def unpack(fixtures_dir: pathlib.Path, name: str, tmp: pathlib.Path) -> pathlib.Path:
    src = fixtures_dir / "dm-metadata" / f"{name}.bin.gz"
    if not src.exists():
        pytest.skip(f"kernel metadata image {src} not found")
    out = tmp / f"{name}.bin"
    if not out.exists():
        with gzip.open(src, "rb") as f, open(out, "wb") as g:
            shutil.copyfileobj(f, g)
    return out


def real_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (thin-provisioning-tools) is not installed")
    return path

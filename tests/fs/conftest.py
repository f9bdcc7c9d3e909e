import os
from pathlib import Path

import pytest

from thinp.fs.validate import real_kernel_available
from thinp.fs.workloads import ROOTFS_MANIFEST, fixtures_dir


@pytest.fixture(scope="session")
def rootfs_manifest() -> Path:
    p = fixtures_dir() / ROOTFS_MANIFEST
    if not p.exists():
        pytest.skip(f"fixture {p} is missing (fixtures live at <repo>/../shared/fixtures)")
    return p


@pytest.fixture(scope="session")
def real_kernel():
    ok, why = real_kernel_available()
    if not ok:
        pytest.skip(f"real kernel: {why}")
    return True

from pathlib import Path

import pytest

from thinp.validate.fs import real_kernel_available
from thinp.validate.fixtures import ROOTFS_MANIFEST, fixtures_dir


@pytest.fixture(scope="session")
def rootfs_manifest() -> Path:
    p = fixtures_dir() / ROOTFS_MANIFEST
    if not p.exists():
        pytest.skip(f"fixture {p} is missing (fixtures live at <repo>/../shared/fixtures)")
    return p


@pytest.fixture(scope="session")
def real_kernel():
    """Skip unless this process may losetup, mkfs and mount (probed once)."""
    ok, why = real_kernel_available()
    if not ok:
        pytest.skip(f"real kernel: {why}")
    from thinp.validate.fs import real_fs

    try:
        with real_fs("ext4", "1G") as (_img, _loop, _mnt, mount, umount):
            mount()
            umount()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"real kernel refused a loop mount: {e}")
    return True

"""Fixtures for the [integrity] tests: one populated pool per session,
dumped once; tests restore private copies from the XML (cheap)."""
from __future__ import annotations

import shutil

import pytest

from thinp.thin.dump import dump

from .populate import populate


@pytest.fixture(scope="session")
def populated(tmp_path_factory):
    """(pool dir, its dump XML path).  Treat the pool as read-only."""
    base = tmp_path_factory.mktemp("populated")
    path = str(base / "pool")
    populate(path).close()
    xml = str(base / "pool.xml")
    dump(path, output=xml)
    return path, xml


@pytest.fixture
def real_tools():
    missing = [t for t in ("thin_check", "thin_dump", "thin_restore", "thin_ls", "thin_delta")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"thin-provisioning-tools not installed ({', '.join(missing)} missing): "
                    "apt-get install thin-provisioning-tools")

"""Shared helpers for the image tests.

Fixtures are read in place from ``../shared/fixtures`` relative to the
project root; tests that need them skip with the reason when it is absent.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = (REPO_ROOT / ".." / "shared" / "fixtures").resolve()
DATA = Path(__file__).resolve().parent / "data"


def fixture_path(*parts: str) -> Path:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"fixture {p} not found (expected the shared fixtures at {FIXTURES})")
    return p


def golden(name: str) -> list[str]:
    return (DATA / name).read_text().split("\n")[:-1]


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """``members``: (name, kind, extra) tuples; kind in f d l h c b p.

    ``extra`` is the content (bytes) for ``f``, the link target for ``l``/``h``,
    (major, minor) for devices; an optional 4th item is a dict of TarInfo attrs.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            name, kind = m[0], m[1]
            extra = m[2] if len(m) > 2 else None
            attrs = m[3] if len(m) > 3 else {}
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            data = None
            if kind == "f":
                data = extra or b""
                ti.size = len(data)
                ti.mode = 0o644
            elif kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, extra, 0o777
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
            elif kind in "cb":
                ti.type = tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = extra
            elif kind == "p":
                ti.type = tarfile.FIFOTYPE
            for k, v in attrs.items():
                setattr(ti, k, v)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture
def tar_bytes():
    return make_tar

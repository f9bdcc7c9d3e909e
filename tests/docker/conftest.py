"""Helpers for ``thinp docker`` tests: run the CLI in-process, read its output."""
from __future__ import annotations

import pytest

from thinp.cli import main


class Docker:
    """``thinp docker --root ROOT ...`` in this process; ``run`` returns (rc, stdout, stderr)."""

    def __init__(self, root, capsys, driver=None):
        self.root, self.capsys, self.driver = str(root), capsys, driver

    def run(self, *args, stats=False):
        self.capsys.readouterr()
        pre = ["docker", "--root", self.root] + (["-s", self.driver] if self.driver else []) + \
            (["--stats"] if stats else [])
        rc = main(pre + [str(a) for a in args])
        o = self.capsys.readouterr()
        return rc, o.out, o.err

    def ok(self, *args, **kw) -> str:
        rc, out, err = self.run(*args, **kw)
        assert rc == 0, (args, out, err)
        return out

    def fails(self, *args) -> str:
        """The one error line of a refused command."""
        rc, out, err = self.run(*args)
        assert rc != 0, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("thinp: error: "), err
        assert "Traceback" not in err
        return lines[0]


@pytest.fixture
def docker(tmp_path, capsys):
    return Docker(tmp_path / "root", capsys)


@pytest.fixture
def test_image(fixtures_dir):
    p = fixtures_dir / "images" / "test-docker-image.tar"
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p

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


class LocalRegistry:
    """Debian's docker-registry (distribution 2.8) on a free 127.0.0.1 port."""

    def __init__(self, tmp_path):
        import shutil
        import socket
        import subprocess

        exe = shutil.which("docker-registry")
        if exe is None:
            pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.storage = tmp_path / "registry-data"
        cfg = tmp_path / "registry.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n")
        self.log = open(tmp_path / "registry.log", "wb")
        self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        if not self._wait_ready():
            self.stop()
            pytest.skip(f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()[-300:]}")

    def _wait_ready(self) -> bool:
        import http.client
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/v2/")
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def blob_data(self, digest: str):
        h = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def registry(tmp_path):
    reg = LocalRegistry(tmp_path)
    try:
        yield reg
    finally:
        reg.stop()

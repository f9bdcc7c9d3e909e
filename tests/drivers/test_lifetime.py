"""A closed engine's driver state goes on its last reference, without the
cyclic collector: a vfs run holds millions of objects, and leaving them to a
full collection cost `thinp compare` 2.5 s per vfs run (#13)."""
from __future__ import annotations

import gc
import io
import tarfile
import weakref

import pytest

from thinp.engine import Engine


def _rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("etc/hostname", b"box\n"), ("usr/bin/app", b"\x7fELF" * 900)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("driver", ["vfs", "overlay2", "aufs", "overlay"])
def test_closed_engine_frees_its_filesystem_without_the_cyclic_collector(driver):
    gc.collect()
    gc.disable()
    try:
        eng = Engine(driver)
        eng.import_(io.BytesIO(_rootfs_tar()), "img:1")
        c = eng.create("img:1", name="c0")
        c.write("/tmp-file", 0, 4096 * 3)
        fs = weakref.ref(eng.driver.fs)
        drv = weakref.ref(eng.driver)
        eng.close()
        del eng, c
        assert drv() is None, "the driver outlived its engine (a reference cycle holds it)"
        assert fs() is None, "the filesystem outlived its driver (a reference cycle holds it)"
    finally:
        gc.enable()

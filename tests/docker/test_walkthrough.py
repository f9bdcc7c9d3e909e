"""The classic Docker images tour, step by step, with ``thinp docker`` in place
of docker, on every storage driver, against a real registry on 127.0.0.1:
pull, images, run, diff, commit, history, tag, push, rmi, pull back,
save/load, export/import, build -- and what each driver did to the disk."""
from __future__ import annotations

import json
import os

import pytest

from thinp.drivers import known_drivers
from thinp.validate.capture import refusal

from ._dive import base_and_context
from .conftest import Docker

UNION = ("aufs", "overlay", "overlay2")
BLOCK_COW = {"devicemapper": 64 * 1024, "btrfs": 4096, "zfs": 128 * 1024}


def _stat(err: str, key: str) -> int:
    """A figure from the ``--stats`` line, e.g. ``_stat(err, "copy-up")`` -> bytes."""
    import re

    line = err.strip().splitlines()[-1]
    m = re.search(re.escape(key) + r" (?:\d+ \w+/)?([\d,]+) B", line)
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("driver", known_drivers())
def test_images_tour(driver, tmp_path, capsys, test_image, registry):
    host = registry.host
    base_tar, _ctx, real = base_and_context(test_image, str(tmp_path))
    # the registry starts with busybox in it, pushed from another root
    seed = Docker(tmp_path / "seed", capsys)
    seed.ok("load", "-i", base_tar)
    seed.ok("tag", "busybox:latest", f"{host}/busybox:latest")
    seed.ok("push", f"{host}/busybox")
    seed_id = seed.ok("images", "-q").strip()

    dk = Docker(tmp_path / "root", capsys, driver=driver)
    # docker pull busybox
    out = dk.ok("pull", f"{host}/busybox")
    assert out.splitlines()[0] == "Using default tag: latest"
    assert out.splitlines()[-1] == f"{host}/busybox:latest"
    busybox_id = dk.ok("images", "-q").strip()
    assert busybox_id == seed_id          # the image ID survives push and pull
    # docker images
    rows = dk.ok("images").splitlines()
    assert rows[1].split()[:3] == [f"{host}/busybox", "latest", busybox_id] and rows[1].endswith("1.15MB")
    dk.driver = None        # from here on the root keeps its driver by itself
    # docker run: a container that adds, changes and deletes
    if refusal() is None:
        rc, out, err = dk.run("run", "--name", "web", f"{host}/busybox", "sh", "-c",
                              "echo hello > /hello.txt && rm /etc/group && mkdir /srv")
        assert rc == 0, err
    else:
        steps = tmp_path / "web.json"
        steps.write_text(json.dumps([["create", "/hello.txt"], ["write", "/hello.txt", 0, 6],
                                     ["unlink", "/etc/group"], ["mkdir", "/srv"]]))
        dk.ok("run", "--name", "web", "--thinp-steps", steps, f"{host}/busybox")
    # docker diff
    assert dk.ok("diff", "web").splitlines() == ["C /etc", "D /etc/group", "A /hello.txt", "A /srv"]
    # docker commit, history, tag
    new_id = dk.ok("commit", "-m", "hello file", "-a", "tour", "web", f"{host}/me/hello:v1").strip()
    hist = dk.ok("history", f"{host}/me/hello:v1").splitlines()
    assert hist[1].split()[0] == new_id[7:19] and hist[1].endswith("hello file")
    assert hist[2].split()[0] == busybox_id and len(hist) == 4
    dk.ok("tag", f"{host}/me/hello:v1", f"{host}/me/hello:latest")
    # docker push: only the new layer goes; busybox's comes from the other repository
    rc, out, err = dk.run("push", f"{host}/me/hello:v1", stats=True)
    lines = out.splitlines()
    assert lines[1].endswith(": Pushed") and lines[2] == f"{lines[2][:12]}: Mounted from busybox"
    assert lines[-1].startswith("v1: digest: sha256:")
    assert _stat(err, "bytes transferred") < 100_000
    # docker rm, rmi
    assert dk.ok("rm", "web") == "web\n"
    out = dk.ok("rmi", f"{host}/me/hello:v1", f"{host}/me/hello:latest").splitlines()
    assert out == [f"Untagged: {host}/me/hello:v1", f"Untagged: {host}/me/hello:latest", f"Deleted: {new_id}"]
    # docker pull it back: busybox's layer is already here
    out = dk.ok("pull", f"{host}/me/hello:v1")
    assert out.count("Already exists") == 1 and out.count("Pull complete") == 1
    assert dk.ok("inspect", f"{host}/me/hello:v1").count(new_id) == 1
    # docker save / rmi / load: the same image ID
    dk.ok("save", "-o", tmp_path / "hello.tar", f"{host}/me/hello:v1")
    dk.ok("rmi", f"{host}/me/hello:v1")
    assert dk.ok("load", "-i", tmp_path / "hello.tar") == f"Loaded image: {host}/me/hello:v1\n"
    assert json.loads(dk.ok("inspect", f"{host}/me/hello:v1"))[0]["Id"] == new_id
    # docker export / import: one flat layer, the history gone
    dk.ok("create", "--name", "flat", f"{host}/me/hello:v1")
    dk.ok("export", "-o", tmp_path / "flat.tar", "flat")
    flat_id = dk.ok("import", "-m", "flattened", tmp_path / "flat.tar", "flat:1").strip()
    [insp] = json.loads(dk.ok("inspect", "flat:1"))
    assert insp["Id"] == flat_id and len(insp["RootFS"]["Layers"]) == 1
    hist = dk.ok("history", "flat:1").splitlines()
    assert len(hist) == 2 and hist[1].endswith("flattened")
    # docker build on the pulled image
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "index.html").write_text("<p>hi</p>\n")
    (ctx / "Dockerfile").write_text(f"FROM {host}/me/hello:v1\nCOPY index.html /srv/\n"
                                    "CMD [\"cat\", \"/srv/index.html\"]\n")
    out = dk.ok("build", "-t", "app:1", ctx)
    assert out.splitlines()[-1] == "Successfully tagged app:1"
    [insp] = json.loads(dk.ok("inspect", "app:1"))
    assert insp["Config"]["Cmd"] == ["cat", "/srv/index.html"] and len(insp["RootFS"]["Layers"]) == 3
    # docker images, ps, system df, info at the end
    names = [r["repository"] + ":" + r["tag"] for r in json.loads(dk.ok("images", "--format", "json"))]
    assert sorted(names) == sorted(["app:1", "flat:1", f"{host}/me/hello:v1", f"{host}/busybox:latest"])
    assert dk.ok("ps", "-a", "-q").split() and dk.ok("ps", "-q") == ""
    df = json.loads(dk.ok("system", "df", "--format", "json"))
    assert df[0]["type"] == "Images" and df[0]["total"] == 4 and df[1]["total"] == 1
    info = dk.ok("info")
    # docker info counts every image in the store, the build's intermediate one too
    assert f"Storage Driver: {driver}" in info and "Images: 5" in info

    # what the driver did: 4 KiB written into the 1 MB busybox binary
    big = tmp_path / "big.json"
    big.write_text(json.dumps([["write", "/bin/busybox", 0, 4096]]))
    rc, out, err = dk.run("run", "--name", "big", "--thinp-steps", big, f"{host}/busybox", stats=True)
    assert rc == 0, err
    entries = {e.path: e for e in real.layers[0].entries()}
    e = entries["bin/busybox"]
    size = entries[e.linkname].size if e.kind == "hardlink" else e.size
    assert size > 1_000_000
    if driver in UNION:
        assert _stat(err, "copy-up") >= size            # the whole file is copied up
    elif driver in BLOCK_COW:
        # a few blocks (data, inode, journal) are copied or re-pointed, not the whole file
        assert "CoW 0 blocks" not in err and _stat(err, "CoW") <= 4 * BLOCK_COW[driver] < size
        assert _stat(err, "copy-up") == 0
    dk.ok("commit", "big", "big:1")
    layer_sizes = [h["size"] for h in json.loads(dk.ok("history", "big:1", "--format", "json"))]
    assert layer_sizes[0] == size        # every driver commits the whole changed file

    # state on disk matches what the commands said
    with open(os.path.join(dk.root, "state.json")) as f:
        state = json.load(f)
    assert state["driver"] == driver and len(state["containers"]) == 2

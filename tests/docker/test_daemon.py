"""``thinp docker`` over a persistent root: state across commands, the lock,
the driver refusal, all-or-nothing commands, docker's output."""
from __future__ import annotations

import json
import os

import pytest

from thinp.docker.daemon import Daemon, parse_storage_opts
from thinp.docker import output
from thinp.errors import PoolBusyError


def _steps(tmp_path, steps, name="steps.json"):
    p = tmp_path / name
    p.write_text(json.dumps(steps))
    return p


def test_state_survives_between_commands(docker, test_image, tmp_path):
    assert docker.ok("load", "-i", test_image) == "Loaded image: dive-test:latest\n"
    out = docker.ok("images").splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert out[1].split()[:3] == ["dive-test", "latest", "75ae28b8ebf8"]
    steps = _steps(tmp_path, [["write", "/hello", 0, 5000], ["mkdir", "/newdir"], ["unlink", "/somefile.txt"]])
    docker.ok("run", "--name", "c1", "--thinp-steps", steps, "dive-test")
    assert docker.ok("diff", "c1").splitlines() == ["A /hello", "A /newdir", "D /somefile.txt"]
    ps = docker.ok("ps", "-a").splitlines()
    assert ps[1].split()[-1] == "c1" and "Exited (0)" in ps[1]
    assert docker.ok("ps").splitlines()[1:] == []
    new_id = docker.ok("commit", "-m", "three changes", "-c", "ENV A=b", "c1", "me/app:v1").strip()
    assert new_id.startswith("sha256:") and len(new_id) == 71
    hist = docker.ok("history", "me/app:v1").splitlines()
    assert hist[1].split()[0] == new_id[7:19] and hist[1].endswith("three changes")
    assert hist[2].split()[0] == "75ae28b8ebf8"
    [insp] = json.loads(docker.ok("inspect", "me/app:v1"))
    assert insp["Config"]["Env"][-1] == "A=b" and insp["Comment"] == "three changes"
    assert insp["Parent"] == "sha256:75ae28b8ebf8" + insp["Parent"][19:]
    # the committed layer holds exactly the container's changes
    assert len(insp["RootFS"]["Layers"]) == 15
    rows = json.loads(docker.ok("images", "--format", "json"))
    assert [(r["repository"], r["tag"]) for r in rows] == [("me/app", "v1"), ("dive-test", "latest")]
    assert docker.ok("rm", "c1") == "c1\n"
    assert docker.ok("rmi", "me/app:v1").splitlines() == ["Untagged: me/app:v1", f"Deleted: {new_id}"]
    assert os.listdir(os.path.join(docker.root, "containers")) == []
    blobs = os.listdir(os.path.join(docker.root, "image", "layers"))
    assert len(blobs) == 14   # the committed layer's blob left with its image


def test_replay_reaches_the_same_disk(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    docker.ok("run", "--name", "c1", "--thinp-steps", _steps(tmp_path, [["write", "/f", 0, 70000]]), "dive-test")
    with Daemon(docker.root) as d:
        d.engine.sync()
        first = d.engine.metrics()
    with Daemon(docker.root) as d:
        again = d.baseline
    for k in ("physical_bytes", "metadata_bytes", "logical_bytes", "inodes", "layers", "image_layers"):
        assert again[k] == first[k], k


def test_driver_change_refused_and_kept(tmp_path, capsys, test_image):
    from .conftest import Docker

    dk = Docker(tmp_path / "r", capsys, driver="vfs")
    dk.ok("load", "-i", test_image)
    line = Docker(tmp_path / "r", capsys, driver="btrfs").fails("images")
    assert "'vfs'" in line and "'btrfs'" in line
    # without -s the root keeps its driver
    assert "Storage Driver: vfs" in Docker(tmp_path / "r", capsys).ok("info")


def test_second_writer_is_locked_out(tmp_path):
    with Daemon(tmp_path / "r"):
        with pytest.raises(PoolBusyError, match="holds its lock"):
            Daemon(tmp_path / "r")
    with Daemon(tmp_path / "r"):   # released
        pass


def test_failed_command_leaves_nothing(docker, test_image):
    docker.ok("images")
    state = open(os.path.join(docker.root, "state.json")).read()
    with pytest.raises(RuntimeError):
        with Daemon(docker.root) as d:
            d.load(str(test_image))
            assert os.listdir(os.path.join(docker.root, "image", "layers"))
            raise RuntimeError("interrupted")
    assert open(os.path.join(docker.root, "state.json")).read() == state
    docker.ok("images")    # the next command sweeps what the failed one left
    assert os.listdir(os.path.join(docker.root, "image", "layers")) == []
    assert docker.ok("images").splitlines()[1:] == []


def test_bad_input_one_line(docker, test_image):
    assert docker.fails("history", "nosuch").endswith("No such image: nosuch")
    assert "invalid reference format" in docker.fails("tag", "nosuch", "Bad/UPPER")
    assert "Unable to find image 'nosuch:latest' locally" in docker.fails("run", "nosuch")
    assert "No such container: c9" in docker.fails("diff", "c9")
    assert "invalid storage option 'x'" in docker.fails("--storage-opt", "x", "images")
    docker.ok("load", "-i", test_image)
    assert "invalid reference format" in docker.fails("commit", "x", "UP")


def test_devicemapper_info_and_stats(tmp_path, capsys, test_image):
    from .conftest import Docker

    dk = Docker(tmp_path / "r", capsys, driver="devicemapper")
    rc, out, err = dk.run("load", "-i", test_image, stats=True)
    assert rc == 0
    assert "layers +14" in err and "Data% " in err and "Meta% " in err
    info = dk.ok("info")
    for key in ("Data Space Used", "Data Space Total", "Data Space Available", "Metadata Space Used",
                "Metadata Space Total", "Metadata Space Available"):
        assert f" {key}: " in info
    j = json.loads(dk.ok("info", "--format", "json"))
    assert j["Storage Driver"] == "devicemapper" and j["Images"] == 1
    assert dict(j["driver_status"])["Data Space Total"] == "107.4 GB"      # loop-lvm's 100 GiB


def test_storage_opts_reach_the_driver(tmp_path, capsys):
    from .conftest import Docker

    dk = Docker(tmp_path / "r", capsys, driver="devicemapper")
    info = dk.ok("--storage-opt", "dm.loopdatasize=2G", "--storage-opt", "dm.basesize=5G", "info")
    assert " Data Space Total: 2.1 GB" in info and " Base Device Size: 5.4 GB" in info
    line = Docker(tmp_path / "r", capsys).fails("--storage-opt", "dm.loopdatasize=3G", "info")
    assert "was made with --storage-opt basesize=5G loopdatasize=2G" in line
    assert "unknown option(s) ['nosuch']" in Docker(tmp_path / "r2", capsys, driver="devicemapper").fails(
        "--storage-opt", "dm.nosuch=1", "info")


def test_storage_opts_parse():
    assert parse_storage_opts(["dm.basesize=10G", "size=20G", "overlay2.payload=true"]) == \
        {"basesize": "10G", "size": "20G", "payload": True}
    with pytest.raises(ValueError, match="'x'"):
        parse_storage_opts(["x"])


def test_output_helpers():
    assert output.human_size(1_223_456) == "1.22MB" and output.human_size(512) == "512B"
    assert output.human_size(5000) == "5kB"
    assert output.human_duration(90) == "About a minute" and output.human_duration(7200) == "2 hours"
    assert output.tabwrite([["A", "BB"], ["CCCCCCCCCCCC", "D"]]) == ["A              BB", "CCCCCCCCCCCC   D"]


def test_run_executes_for_real(docker, test_image):
    from thinp.validate.capture import refusal

    why = refusal()
    if why:
        pytest.skip(why)
    docker.ok("load", "-i", test_image)
    rc, out, err = docker.run("run", "--name", "c2", "dive-test", "sh", "-c",
                              "echo hi > /x; rm /root/saved.txt; echo printed; exit 3")
    assert rc == 3, err          # the command's exit code, as docker run returns it
    assert out == "printed\n"    # and what it printed
    assert docker.ok("diff", "c2").splitlines() == ["C /root", "D /root/saved.txt", "A /x"]
    assert "Exited (3)" in docker.ok("ps", "-a")
    # the recorded trace replays on the next command: the diff is the same
    assert docker.ok("diff", "c2").splitlines() == ["C /root", "D /root/saved.txt", "A /x"]


def test_bad_steps_and_files_one_line(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    (tmp_path / "a.json").write_text("not json")
    (tmp_path / "b.json").write_text('[["explode", "/x"]]')
    assert "a.json: not JSON" in docker.fails("run", "--thinp-steps", tmp_path / "a.json", "dive-test")
    assert "unknown operation 'explode'" in docker.fails("run", "--thinp-steps", tmp_path / "b.json", "dive-test")
    assert docker.fails("load", "-i", tmp_path / "none.tar").endswith("none.tar: no such file or directory")
    assert "truncated tar" in docker.fails("import", tmp_path / "a.json", "x:1")
    assert docker.ok("ps", "-a", "-q") == ""        # the failed runs left no container


def test_image_and_container_made_in_one_command_replay_in_order(tmp_path, test_image):
    steps = _steps(tmp_path, [["write", "/f", 0, 100]])
    with Daemon(tmp_path / "r") as d:
        d.load(str(test_image))
        d.run("dive-test", name="c1", steps=str(steps))
        d.commit("c1", "after:1")
    with Daemon(tmp_path / "r") as d:
        assert [c.name for c in d.engine.containers.values()] == ["c1"]
        assert [str(x) for x in d.diff("c1")] == ["A /f"]
        assert d.engine.image("after:1").parent == d.engine.image("dive-test").id


def test_rmi_of_an_image_in_use(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    docker.ok("tag", "dive-test", "second:1")
    docker.ok("create", "--name", "c1", "dive-test")
    assert "must be forced" in docker.fails("rmi", "75ae28b8ebf8")
    assert docker.ok("rmi", "-f", "second:1") == "Untagged: second:1\n"
    assert "cannot be forced" in docker.fails("rmi", "-f", "dive-test")
    assert docker.ok("ps", "-a", "-q").split() and docker.ok("images", "-q").split() == ["75ae28b8ebf8"]
    docker.ok("rm", "c1")
    assert docker.ok("rmi", "dive-test").splitlines()[-1].startswith("Deleted: sha256:75ae28b8ebf8")


def test_unknown_driver_leaves_no_root(tmp_path, capsys):
    from .conftest import Docker

    line = Docker(tmp_path / "new", capsys, driver="nosuch").fails("images")
    assert "'nosuch' is not supported" in line and not (tmp_path / "new").exists()


def test_run_rm_and_create(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    docker.ok("run", "--rm", "--thinp-steps", _steps(tmp_path, [["write", "/f", 0, 10]]), "dive-test")
    assert docker.ok("ps", "-a", "-q") == "" and os.listdir(os.path.join(docker.root, "containers")) == []
    cid = docker.ok("create", "--name", "made", "dive-test", "echo", "hi").strip()
    assert len(cid) == 64
    row = json.loads(docker.ok("ps", "-a", "--format", "json"))[0]
    assert row["container_id"] == cid and row["status"] == "created" and row["command"] == "echo hi"
    assert "Created" in docker.ok("ps", "-a").splitlines()[1]
    assert docker.ok("diff", "made") == ""
    [insp] = json.loads(docker.ok("inspect", "made"))
    assert insp["Name"] == "/made" and insp["Config"]["Cmd"] == ["echo", "hi"]
    assert insp["GraphDriver"]["Name"] == "overlay2"
    assert "Conflict" in docker.fails("create", "--name", "made", "dive-test")

"""The Dockerfile parser and ``thinp docker build`` (classic builder: one layer
per filesystem step, its cache, RUN executed for real or replayed)."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest

from thinp.docker.build import DockerIgnore
from thinp.docker.daemon import Daemon
from thinp.docker.dockerfile import DockerfileError, parse
from thinp.drivers import known_drivers
from thinp.validate.capture import refusal

from ._dive import base_and_context


# ---------------------------------------------------------------- parser
def test_parser_forms_continuations_comments():
    text = ("# a comment\n"
            "ARG BASE=busybox\n"
            "FROM $BASE\n"
            "RUN echo a \\\n"
            "  # a comment inside the continuation\n"
            "\n"
            "  && echo b\n"
            'CMD ["sh", "-c", "x"]\n'
            "ENTRYPOINT [not json\n"
            "COPY --chown=1:2 a b /dst/\n"
            "label k=v\n")
    ins = parse(text)
    assert [i.cmd for i in ins] == ["ARG", "FROM", "RUN", "CMD", "ENTRYPOINT", "COPY", "LABEL"]
    assert [i.line for i in ins] == [2, 3, 4, 8, 9, 10, 11]
    assert ins[2].args == "echo a   && echo b" and ins[2].json is None
    assert ins[3].json == ["sh", "-c", "x"]
    assert ins[4].json is None and ins[4].args == "[not json"
    assert ins[5].flags == {"chown": "1:2"} and ins[5].args == "a b /dst/"


def test_parser_escape_directive():
    ins = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n")
    assert ins[1].args == "dir c:\\   && echo"


@pytest.mark.parametrize("text, line, what", [
    ("FROM x\nRUN a\nFOO bar\n", 3, "unknown instruction: FOO"),
    ("RUN a\nFROM x\n", 1, "no build stage"),
    ("FROM x\n\nCOPY\n", 3, "COPY requires at least one argument"),
    ("# only a comment\n", None, "no instructions"),
])
def test_parser_errors_name_the_line(text, line, what):
    with pytest.raises(DockerfileError, match=what) as e:
        parse(text)
    if line is not None:
        assert f"line {line}:" in str(e.value)


def test_expansion_as_the_word_parser(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    ctx = _ctx(tmp_path, "ARG B=dive-test\nFROM $B\nARG A=1\nENV E= Q='$A' D=\"${A}x\" N=${NONE:-d} P=${A:+set}\n"
                         "LABEL l=\\$A\nWORKDIR /w/$A\n")
    docker.ok("build", "-t", "x:1", ctx)
    cfg = json.loads(docker.ok("inspect", "x:1"))[0]["Config"]
    assert cfg["Env"][-5:] == ["E=", "Q=$A", "D=1x", "N=d", "P=set"]
    assert cfg["Labels"] == {"l": "$A"} and cfg["WorkingDir"] == "/w/1"


def test_dockerignore():
    ig = DockerIgnore(["# c", "*.log", "build/", "!build/keep.txt", "**/secret", "docs/*.md"])
    assert ig.excluded("x.log") and not ig.excluded("a/x.log")
    assert ig.excluded("build/a.o") and not ig.excluded("build/keep.txt")
    assert ig.excluded("deep/er/secret") and ig.excluded("secret")
    assert ig.excluded("docs/a.md") and not ig.excluded("docs/sub/a.md")


# ---------------------------------------------------------------- the real recipe
@pytest.fixture
def dive(test_image, tmp_path):
    tar, ctx, real = base_and_context(test_image, str(tmp_path))
    shutil.copy(os.path.join(os.path.dirname(test_image), "Dockerfile.test-image"), os.path.join(ctx, "Dockerfile"))
    return tar, ctx, real


def _rows(layer):
    return [(e.path, e.kind, e.size, e.mode, e.uid, e.gid) for e in layer.entries()]


@pytest.mark.parametrize("driver", known_drivers())
def test_recipe_builds_the_real_layers(driver, dive, tmp_path):
    """Dockerfile.test-image, RUN executed for real, gives the layers the real
    docker build gave: same paths, types, sizes, modes, owners and whiteouts."""
    why = refusal()
    if why:
        pytest.skip(why)
    tar, ctx, real = dive
    with Daemon(tmp_path / "root", driver) as d:
        d.load(tar)
        res = d.build(ctx, tags=["built:1"])
        img = d.engine.image("built:1")
        assert len(img.layers) == len(real.layers) == 14
        for i, (ours, theirs) in enumerate(zip(img.layers, real.layers)):
            assert _rows(ours) == _rows(theirs), i
        ours_by = [h["created_by"] for h in img.history_entries]
        real_by = [h["created_by"] for h in real.history_entries]
        assert ours_by[3:11] == real_by[3:11] and ours_by[12:] == real_by[12:]   # the RUN steps
        assert ours_by[2].startswith("/bin/sh -c #(nop) ADD file:") and ours_by[2].endswith(" in /somefile.txt ")
        assert res["cache_hits"] == 0
        again = d.build(ctx, tags=["built:2"])
        assert again["cache_hits"] == 13 and again["id"] == res["id"]


# ---------------------------------------------------------------- steps without RUN
def _ctx(tmp_path, dockerfile, files=None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, data in (files or {}).items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, tuple):
            p.write_bytes(data[0])
            os.chmod(p, data[1])
        else:
            p.write_bytes(data)
    return ctx


def _tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o600
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_config_steps_copy_add_and_cache(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    ctx = _ctx(tmp_path, (
        "FROM dive-test\n"
        "ARG VER=1\n"
        "ENV APP=/opt/app V=$VER\n"
        "LABEL org.example.v=\"$V\" k=v\n"
        "WORKDIR $APP\n"
        "COPY --chown=1000:1000 src/ ./src/\n"
        "COPY a.txt .\n"
        "ADD pkg.tgz /opt/pkg/\n"
        "ADD a.txt /opt/plain.tgz.txt\n"
        "USER 1000\n"
        "EXPOSE 80 53/udp\n"
        "VOLUME /data\n"
        "ENTRYPOINT [\"/bin/sh\"]\n"
        "CMD [\"-c\", \"true\"]\n"
        "ONBUILD RUN --thinp-steps=steps.json echo child\n"
        "HEALTHCHECK --interval=1m30s --retries=3 CMD wget -q localhost || exit 1\n"
        "RUN --thinp-steps=steps.json make\n"),
        {"src/m.c": b"int main;\n", "src/skip.log": b"x", "a.txt": (b"hello\n", 0o640),
         "pkg.tgz": _tar_bytes({"bin/tool": b"#!/bin/sh\n", "README": b"r"}),
         ".dockerignore": b"**/*.log\n",
         "steps.json": json.dumps([["write", "/opt/app/out.bin", 0, 10000]]).encode()})
    rc, out, err = docker.run("build", "-t", "app:1", "--build-arg", "VER=7", ctx)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Sending build context to Docker daemon")
    assert lines[-2].startswith("Successfully built ") and lines[-1] == "Successfully tagged app:1"
    assert "replayed steps steps.json (not executed)" in out
    [insp] = json.loads(docker.ok("inspect", "app:1"))
    cfg = insp["Config"]
    assert cfg["Env"][-2:] == ["APP=/opt/app", "V=7"]
    assert cfg["Labels"] == {"org.example.v": "7", "k": "v"} and cfg["WorkingDir"] == "/opt/app"
    assert cfg["User"] == "1000" and cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}} and cfg["Entrypoint"] == ["/bin/sh"] and cfg["Cmd"] == ["-c", "true"]
    assert cfg["OnBuild"] == ["RUN --thinp-steps=steps.json echo child"]
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost || exit 1"], "Interval": 90 * 10**9,
                                  "Retries": 3}
    hist = json.loads(docker.ok("history", "app:1", "--format", "json"))
    by = [h["created_by"] for h in hist]
    assert by[0] == "|1 VER=7 /bin/sh -c make"
    assert "/bin/sh -c #(nop)  USER 1000" in by and "/bin/sh -c #(nop)  ENV APP=/opt/app V=7" in by
    # one layer per filesystem step: WORKDIR (made /opt/app), 2 COPY, 2 ADD, RUN
    assert len(insp["RootFS"]["Layers"]) == 14 + 6
    with Daemon(docker.root) as d:
        img = d.engine.image("app:1")
        rows = {e.path: e for layer in img.layers[14:] for e in layer.entries()}
    assert rows["opt/app/src/m.c"].uid == 1000 and "opt/app/src/skip.log" not in rows
    assert rows["opt/app/a.txt"].mode == 0o640 and rows["opt/app/a.txt"].size == 6
    assert rows["opt/pkg/bin/tool"].size == 10 and rows["opt/pkg/README"].kind == "file"   # extracted
    assert rows["opt/plain.tgz.txt"].size == 6 and rows["opt/app/out.bin"].size == 10000
    # the same build again comes from the cache; a changed source misses from its step on
    out2 = docker.ok("build", "-t", "app:2", "--build-arg", "VER=7", ctx)
    assert out2.count("Using cache") == 16
    (ctx / "a.txt").write_text("changed\n")
    out3 = docker.ok("build", "--build-arg", "VER=7", ctx)
    assert out3.count("Using cache") == 5
    # a child image runs the ONBUILD trigger
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "Dockerfile").write_text("FROM app:1\n")
    (tmp_path / "child" / "steps.json").write_text(json.dumps([["write", "/opt/app/child", 0, 10]]))
    out4 = docker.ok("build", "-t", "child", tmp_path / "child")
    assert "# Executing 1 build trigger" in out4


def test_build_errors_store_nothing(docker, test_image, tmp_path):
    docker.ok("load", "-i", test_image)
    before = sorted(os.listdir(os.path.join(docker.root, "image", "layers")))
    ctx = _ctx(tmp_path, "FROM dive-test\nCOPY a.txt /a\nCOPY ../outside /x\n", {"a.txt": b"a"})
    line = docker.fails("build", ctx)
    assert "forbidden path outside the build context: ../outside" in line and "line 3" in line
    assert docker.ok("images", "-a", "-q").split() == ["75ae28b8ebf8"]
    assert sorted(os.listdir(os.path.join(docker.root, "image", "layers"))) == before
    (ctx / "Dockerfile").write_text("FROM dive-test\nENV A=1\nCOPY a.txt /a\nBOGUS x\n")
    line = docker.fails("build", ctx)
    assert "line 4" in line and "unknown instruction: BOGUS" in line
    (ctx / "Dockerfile").write_text("FROM nosuch:1\n")
    assert "nosuch:1" in docker.fails("build", ctx)
    (ctx / "Dockerfile").write_text("FROM dive-test\nCOPY missing /m\n")
    assert "file not found in build context" in docker.fails("build", ctx)
    (ctx / "Dockerfile").write_text("FROM dive-test\nRUN --thinp-steps=none.json x\n")
    assert "none.json" in docker.fails("build", ctx)
    assert docker.ok("images", "-a", "-q").split() == ["75ae28b8ebf8"]
    assert sorted(os.listdir(os.path.join(docker.root, "image", "layers"))) == before


def test_failing_run_stores_nothing(docker, test_image, tmp_path):
    why = refusal()
    if why:
        pytest.skip(why)
    docker.ok("load", "-i", test_image)
    ctx = _ctx(tmp_path, "FROM dive-test\nRUN echo a > /a\nRUN exit 7\n")
    line = docker.fails("build", ctx)
    assert "returned a non-zero code: 7" in line
    assert docker.ok("images", "-a", "-q").split() == ["75ae28b8ebf8"]
    assert len(os.listdir(os.path.join(docker.root, "image", "layers"))) == 14


def test_build_interrupted_by_the_user(docker, test_image, tmp_path, monkeypatch):
    import thinp.docker.build as b

    docker.ok("load", "-i", test_image)
    ctx = _ctx(tmp_path, "FROM dive-test\nCOPY a.txt /a\nENV X=1\nCOPY b.txt /b\n", {"a.txt": b"a", "b.txt": b"b"})
    calls = []
    real_copy = b._copy_file

    def copy_file(*a):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_copy(*a)
    monkeypatch.setattr(b, "_copy_file", copy_file)
    rc, out, err = docker.run("build", "-t", "x:1", ctx)
    assert rc == 130 and len(calls) == 2
    monkeypatch.undo()
    # the two steps that had finished are gone too: no image, no layer, no container
    assert docker.ok("images", "-a", "-q").split() == ["75ae28b8ebf8"]
    assert len(os.listdir(os.path.join(docker.root, "image", "layers"))) == 14
    assert docker.ok("ps", "-a", "-q") == ""


def test_run_refused_says_how_to_give_it(docker, test_image, tmp_path, monkeypatch):
    import thinp.validate.capture as cap

    monkeypatch.setattr(cap, "refusal", lambda: "thinp capture needs root: it mounts overlayfs")
    docker.ok("load", "-i", test_image)
    line = docker.fails("run", "dive-test", "touch", "/x")
    assert "cannot execute 'touch /x' here (thinp capture needs root" in line and "--thinp-trace FILE" in line
    ctx = _ctx(tmp_path, "FROM dive-test\nRUN touch /x\n")
    line = docker.fails("build", ctx)
    assert "line 2:" in line and "RUN --thinp-trace=FILE" in line
    assert docker.ok("ps", "-a", "-q") == "" and docker.ok("images", "-a", "-q").split() == ["75ae28b8ebf8"]


def test_from_scratch(docker, tmp_path):
    ctx = _ctx(tmp_path, "FROM scratch\nADD rootfs.tgz /\nCMD [\"/bin/tool\"]\n",
               {"rootfs.tgz": _tar_bytes({"bin/tool": b"#!/bin/sh\n", "etc/conf": b"c=1\n"})})
    out = docker.ok("build", "-t", "mini:1", ctx)
    assert out.splitlines()[-1] == "Successfully tagged mini:1"
    [insp] = json.loads(docker.ok("inspect", "mini:1"))
    assert len(insp["RootFS"]["Layers"]) == 1 and insp["Config"]["Cmd"] == ["/bin/tool"]
    # the scratch starting point is nobody's parent and does not stay
    assert docker.ok("images", "-q").split() == [insp["Id"][7:19]]
    assert len(docker.ok("images", "-a", "-q").split()) == 2        # the ADD step's image and the result
    with Daemon(docker.root) as d:
        img = d.engine.image("mini:1")
        parent = d.engine.store.images[img.parent]
        assert parent.parent is None and len(parent.layers) == 1
        assert sorted(e.path for e in img.layers[0].entries()) == ["bin", "bin/tool", "etc", "etc/conf"]
    assert docker.ok("build", ctx).count("Using cache") == 2

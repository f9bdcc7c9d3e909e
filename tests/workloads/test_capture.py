"""``thinp capture``: a trace recorded on a real overlay mount, replayed by the
overlay2 model, must leave the upper directory the kernel left."""
from __future__ import annotations

import os
import subprocess

import pytest

from thinp.cli import main
from thinp.errors import NotSupportedError, ThinpError
from thinp.validate import capture as cap
from thinp.workloads import load as load_workload
from thinp.traces import strace


# ---------------------------------------------------------------- without root
def test_rewrite_trace_drops_the_host_part_and_maps_paths_into_the_container():
    merged = "/tmp/thinp-capture-x/merged"
    lines = [
        '1 10:00:00.1 execve("/usr/sbin/chroot", [...], 0x7ff /* 3 vars */) = 0\n',
        '1 10:00:00.2 openat(AT_FDCWD</root>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>\n',
        f'1 10:00:00.3 chroot("{merged}") = 0\n',
        f'1 10:00:00.4 openat(AT_FDCWD<{merged}>, "/data/f", O_WRONLY|O_CREAT, 0644) = 3<{merged}/data/f>\n',
        '1 10:00:00.5 write(2</host/tty>, ""..., 5) = 5\n',
        f'1 10:00:00.6 fchdir(4<{merged}/data>) = 0\n',
    ]
    out = list(cap.rewrite_trace(lines, merged))
    assert out == ['1 10:00:00.4 openat(AT_FDCWD</>, "/data/f", O_WRONLY|O_CREAT, 0644) = 3</data/f>\n',
                   '1 10:00:00.5 write(2</outside/host/tty>, ""..., 5) = 5\n',
                   '1 10:00:00.6 fchdir(4</data>) = 0\n']
    assert [(o.kind, o.path) for o in strace.parse(out)] == [("open", "/data/f")]


def test_uncovered_names_upper_paths_no_operation_explains():
    ops = strace.parse(['1 10:00:00.1 mkdir("/a/b", 0755) = 0',
                        '1 10:00:00.2 rename("/x/y", "/z/w") = 0']).ops
    rows = {p: {} for p in ("a", "a/b", "x", "x/y", "z", "z/w", "z/w/came-along", "stray", "a/other")}
    assert cap.uncovered(ops, rows) == ["a/other", "stray"]


def test_without_root_capture_refuses_in_one_line(monkeypatch, tmp_path, capsys):
    img = tmp_path / "img.tar"
    img.write_bytes(b"")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cap.refusal() == "thinp capture needs root: it mounts overlayfs and chroots into it"
    with pytest.raises(NotSupportedError, match="needs root"):
        cap.capture(img, "true", tmp_path / "out")
    assert main(["capture", str(img), str(tmp_path / "out"), "true"]) != 0
    err = capsys.readouterr().err
    assert err == "thinp: error: thinp capture needs root: it mounts overlayfs and chroots into it\n"
    assert not (tmp_path / "out").exists()


def test_capture_names_a_missing_image_and_a_used_output(tmp_path):
    with pytest.raises(ThinpError, match="nope.tar: no such image archive"):
        cap.capture(tmp_path / "nope.tar", "true", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    (tmp_path / "img.tar").write_bytes(b"")
    with pytest.raises(ThinpError, match="exists and is not an empty directory"):
        cap.capture(tmp_path / "img.tar", "true", tmp_path / "out")
    with pytest.raises(ValueError, match="driver 'bogus' is not one of aufs, btrfs"):
        cap.capture(tmp_path / "img.tar", "true", tmp_path / "out2", replay_driver="bogus")
    with pytest.raises(ValueError, match="string_bytes -1 is negative"):
        cap.capture(tmp_path / "img.tar", "true", tmp_path / "out2", string_bytes=-1)
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- the real thing
@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    why = cap.refusal()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("capture")
    try:
        cap.build_tools_image(tmp / "image.tar", cap.SCENARIO_FILES)
    except NotSupportedError as e:
        pytest.skip(str(e))
    try:
        return cap.capture(tmp / "image.tar", cap.SCENARIO_COMMAND, tmp / "out")
    except NotSupportedError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def captured_s0(captured, tmp_path_factory):
    """The same scenario recorded with ``-s 0``: names and ACL values elided."""
    return cap.capture(captured.image, cap.SCENARIO_COMMAND, tmp_path_factory.mktemp("s0") / "out", string_bytes=0)


def test_the_captured_scenario_is_what_the_kernel_did(captured):
    assert captured.returncode == 0
    kernel = cap.read_upper_csv(captured.upper)
    # what the kernel's upper directory says about each step
    assert kernel["data/gone"]["type"] == "c" and kernel["data/gone"]["target"] == "0:0"   # rm -rf
    assert kernel["data/gone"]["mode"] == 0 and "data/gone/p" not in kernel
    assert kernel["data/from/moving"]["type"] == "c"                                       # mv away
    assert kernel["data/to/moving/deep/y"]["size"] == 7000                                 # mv in
    assert kernel["data/hl1"]["mode"] == 0o600 and kernel["data/hl1"]["nlink"] == 1        # chmod
    assert "trusted.overlay.origin" not in kernel["data/hl1"]["xattrs"]                    # link broken
    assert "data/hl2" not in kernel
    assert kernel["data/copy/sub/b"]["mode"] == 0o600 and kernel["data/copy/l"]["target"] == "a"  # cp -a
    assert kernel["data/new"]["size"] == 3 * 4096                                          # dd
    text = captured.trace.read_text()
    assert 'fsetxattr(4</data/copy/sub/b>, "system.posix_acl_access", "\\2\\0\\0\\0' in text
    assert "copy_file_range(" in text and "thinp-capture-" not in text
    assert captured.modes_inferred == 0      # -s 64: every ACL value printed, decoded


@pytest.mark.parametrize("which", ["s64", "s0"])
def test_overlay2_replay_reproduces_the_kernel_upper_exactly(captured, captured_s0, which):
    res = captured if which == "s64" else captured_s0
    kernel = cap.read_upper_csv(res.upper)
    ours, counts = cap.replay_upper(res.image, res.trace)
    assert counts["errors"] == {} and counts["modes_inferred"] == res.modes_inferred
    if which == "s0":
        assert res.modes_inferred > 0 and '""..., ""..., 28, 0) = 0' in res.trace.read_text()
    cmp = cap.compare_upper(kernel, ours)
    assert (cmp["missing"], cmp["extra"], cmp["mismatched"]) == ([], [], [])
    assert cmp["paths_matched"] == len(kernel) > 10
    assert kernel == cap.read_upper_csv(captured.upper)   # the same command, the same kernel upper


def test_the_capture_is_a_workload_compare_takes(captured):
    wl = load_workload(str(captured.workload))
    assert wl.image.kind == "archive" and os.path.samefile(wl.image.path, captured.image)
    assert [s.op for s in wl.steps] == ["strace"]
    assert os.path.samefile(wl.steps[0].trace, captured.trace)


def test_the_captured_workload_runs_and_writes_what_the_trace_wrote(captured):
    from thinp.workloads import run
    from thinp.workloads.run import APP_BYTES

    r = run(str(captured.workload), "overlay2")
    assert r.error is None
    ops = strace.read(captured.trace).ops
    assert r.phases["steps"][APP_BYTES] == sum(o.size for o in ops if o.kind == "write") > 12288


MORE = {
    "links-and-renames": "touch /data/tree/a && ln /data/tree/sub/b /data/bl && ln -s /data/x /data/sl"
                         " && mv /data/tree/sub/b /data/to/b2 && echo hi >> /data/hl2 && mkdir -p /data/n1/n2"
                         " && mv /data/n1 /data/from/ && chmod 700 /data/tree && rm /data/tree/l"
                         " && cp -p /data/tree/h /data/hcopy && cat /data/tree/a > /data/catout"
                         " && touch /data/from/moving/deep && mv /data/to/.keep /data/from/moving/",
    "opaque-and-whiteouts": "rm -rf /data/from && mkdir /data/from && mkdir /data/newd && touch /data/newd/f"
                            " && mv /data/newd /data/to/ && dd if=/dev/zero of=/data/tree/a bs=10 count=1"
                            " conv=notrunc && chmod 640 /data/hl1 /data/hl2 && cp -a /data/gone /data/to/"
                            " && mv /data/tree/sub /data/subx && rm -rf /data/to/gone/q && mkdir /data/gone/q2"
                            " && ln /data/hl1 /data/gone/q2/x && rm /data/tree/h && mv /data/tree /data/tree2",
}


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_captured_commands_are_reproduced_exactly(captured, name, tmp_path):
    res = cap.capture(captured.image, MORE[name], tmp_path / "out")
    assert res.returncode == 0
    kernel = cap.read_upper_csv(res.upper)
    ours, counts = cap.replay_upper(res.image, res.trace)
    cmp = cap.compare_upper(kernel, ours)
    assert counts["errors"] == {}
    assert (cmp["missing"], cmp["extra"], cmp["mismatched"]) == ([], [], [])
    assert cmp["paths_matched"] == len(kernel) >= 15


def test_a_refused_overlay_mount_is_one_line_naming_the_mount(monkeypatch, tmp_path, capsys):
    """As on a kernel without overlayfs: the mount's own message, one line, nothing written."""
    if cap.refusal():
        pytest.skip(cap.refusal())
    real_run = cap.subprocess.run

    def fake_run(args, *a, **kw):
        if args[:3] == ["mount", "-t", "overlay"]:
            return cap.subprocess.CompletedProcess(args, 32, "", "mount: unknown filesystem type 'overlay'.")
        return real_run(args, *a, **kw)

    img = tmp_path / "image.tar"
    cap.build_tools_image(img, {"data/x": b"x"})
    monkeypatch.setattr(cap.subprocess, "run", fake_run)
    assert main(["capture", str(img), str(tmp_path / "out"), "true"]) == 1
    assert capsys.readouterr().err == "thinp: error: overlay mount refused: mount: unknown filesystem type 'overlay'.\n"
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


DPKG_TOOLS = ("dpkg", "dpkg-deb", "dpkg-split", "start-stop-daemon", "ldconfig", "tar", "diff")


def _build_deb(tmp_path) -> bytes:
    """A small .deb made here with dpkg-deb: a conffile, a symlink, a 0640
    file, and a postinst that runs cp -p, chmod and mkdir -p."""
    src = tmp_path / "debsrc"
    for d in ("DEBIAN", "usr/share/demo", "etc", "usr/bin"):
        (src / d).mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text("Package: demo\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: t <t@example.com>\nDescription: demo\n")
    (src / "DEBIAN" / "postinst").write_text("#!/bin/sh\nset -e\ncp -p /usr/share/demo/a /usr/share/demo/a.bak\n"
                                             "chmod 600 /usr/share/demo/b\nmkdir -p /var/lib/demo\n")
    os.chmod(src / "DEBIAN" / "postinst", 0o755)
    (src / "DEBIAN" / "conffiles").write_text("/etc/demo.conf\n")
    (src / "etc" / "demo.conf").write_text("conf\n")
    (src / "usr/share/demo/a").write_bytes(bytes(range(256)) * 12)
    os.chmod(src / "usr/share/demo/a", 0o640)
    (src / "usr/share/demo/b").write_text("b\n")
    os.symlink("../share/demo/b", src / "usr/bin/demo")
    out = tmp_path / "demo.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(src), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


def test_dpkg_install_of_a_deb_built_here_is_reproduced_exactly(captured, tmp_path):
    import shutil

    missing = [t for t in DPKG_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the host lacks {', '.join(missing)} to build a dpkg image from")
    files = {"var/lib/dpkg/status": b"", "var/lib/dpkg/info": ("dir", 0o755), "var/lib/dpkg/updates": ("dir", 0o755),
             "var/lib/dpkg/triggers": ("dir", 0o755), "var/log": ("dir", 0o755), "etc": ("dir", 0o755),
             "usr/share": ("dir", 0o755), "usr/bin": ("dir", 0o755), "tmp/demo.deb": _build_deb(tmp_path)}
    cap.build_tools_image(tmp_path / "dpkg.tar", files, tools=cap.TOOLS + DPKG_TOOLS)
    res = cap.capture(tmp_path / "dpkg.tar", "dpkg -i /tmp/demo.deb", tmp_path / "out")
    assert res.returncode == 0
    kernel = cap.read_upper_csv(res.upper)
    assert kernel["usr/share/demo/a.bak"]["mode"] == 0o640 and kernel["usr/share/demo/b"]["mode"] == 0o600
    assert kernel["usr/bin/demo"]["target"] == "../share/demo/b" and "var/lib/demo" in kernel
    # dpkg makes the new directory under another name and renames it into place:
    # a pure-upper directory moved into a merged one is opaque
    assert "trusted.overlay.opaque" in kernel["usr/share/demo"]["xattrs"]
    ours, counts = cap.replay_upper(res.image, res.trace)
    cmp = cap.compare_upper(kernel, ours)
    assert counts["errors"] == {}
    assert (cmp["missing"], cmp["extra"], cmp["mismatched"]) == ([], [], [])
    assert cmp["paths_matched"] == len(kernel) > 20


def test_a_multi_layer_image_is_mounted_layer_by_layer(captured, tmp_path):
    """A second layer whites out one name of a hard-linked pair and makes a
    directory opaque.  The lower inode still has two links, so the kernel's
    copy-up of the other name breaks the link and records no origin, as the
    overlay2 model does; a flattened rootfs would have shown one link."""
    import io
    import tarfile

    from thinp.image import Image, Layer, load, save

    [base] = load(captured.image)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("data/.wh.hl2", "data/tree/.wh..wh..opq"):
            tf.addfile(tarfile.TarInfo(name))
        ti = tarfile.TarInfo("data/tree/new")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"new"))
    top = Layer.from_bytes(buf.getvalue(), name="top.tar").scan()
    cfg = dict(base.config)
    cfg["rootfs"] = {"type": "layers", "diff_ids": base.diff_ids + [top.diff_id]}
    img = Image.from_config(cfg, base.layers + [top], tags=["two-layers:1"])
    save([img], tmp_path / "two.tar")
    res = cap.capture(tmp_path / "two.tar", "chmod 600 /data/hl1 && echo /data/tree/* > /data/listing",
                      tmp_path / "out")
    assert res.returncode == 0
    kernel = cap.read_upper_csv(res.upper)
    assert kernel["data/hl1"]["mode"] == 0o600 and "trusted.overlay.origin" not in kernel["data/hl1"]["xattrs"]
    assert kernel["data/listing"]["size"] == len("/data/tree/new\n")   # the opaque layer hid the lower tree
    ours, counts = cap.replay_upper(res.image, res.trace)
    cmp = cap.compare_upper(kernel, ours)
    assert counts["errors"] == {}
    assert (cmp["missing"], cmp["extra"], cmp["mismatched"]) == ([], [], [])

"""Reality test: a scripted workload on a real kernel overlayfs mount vs the simulated drivers."""
from __future__ import annotations

import os

import pytest

from thinp.validate.union import real_overlay_rows

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def rows():
    r = real_overlay_rows()
    if len(r) == 1 and "skipped" in r[0]:
        pytest.skip(r[0]["skipped"])
    return {row["check"]: row for row in r}


def test_every_check_matches_the_kernel(rows):
    bad = [r for r in rows.values() if not r["match"]]
    assert bad == []


def test_figures_from_sources_md(rows):
    append = rows["append to a 4 MiB lower file"]
    assert append["kernel"].startswith("copy-up 4,1") and append["overlay2"] == append["kernel"]
    assert rows["delete a lower file"]["kernel"] == "whiteout"
    assert rows["delete a lower dir, mkdir it again"]["kernel"] == "opaque dir"
    assert rows["rename(2) of a lower dir"]["kernel"] == "EXDEV"
    meta = rows["chmod of a 2 MiB file, metacopy=on"]
    if not meta["kernel"].startswith("skipped"):
        assert meta["kernel"].startswith("0 KiB") and meta["overlay2"].startswith("0 KiB")


def test_no_mount_is_left_behind(rows):
    with open("/proc/self/mounts") as f:
        assert "thinp-ovl-" not in f.read()
    assert not [d for d in os.listdir("/tmp") if d.startswith("thinp-ovl-")]


def test_validate_union_drivers_rows_for_the_cli(fixtures_dir):
    from thinp.validate.union import validate_union_drivers

    rows = validate_union_drivers(fixtures_dir)
    assert all("check" in r and ("match" in r or "skipped" in r) for r in rows)
    replay = [r for r in rows if r["check"].startswith("overlay2 dpkg-nginx replay")]
    assert len(replay) == 2 and all(r["match"] for r in replay)
    assert replay[1]["overlay2"] == "4,620 KiB"


def test_the_trace_replayed_on_the_real_kernel_leaves_the_fixture_upper(fixtures_dir):
    """The reader + replay, on a real overlay mount (not the simulator), give the kernel's upper."""
    from thinp.validate.union import kernel_replay, overlay_mountable

    ok, why = overlay_mountable()
    if not ok:
        pytest.skip(why)
    try:
        r = kernel_replay(fixtures_dir)
    except PermissionError as e:
        pytest.skip(f"mount refused: {e}")
    assert r["replay"]["errors"] == {}
    assert (r["missing"], r["extra"], r["mismatched"]) == ([], [], [])
    assert r["paths_matched"] == 155
    assert r["file_kib"] == 4276      # the fixture's files, 4 KiB blocks (tmpfs dirs take none)
    with open("/proc/self/mounts") as f:
        assert "thinp-ovl-" not in f.read()

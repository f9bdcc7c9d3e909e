"""The overcommit experiment: events in the right order at the right fill levels."""
import numpy as np
import pytest

pd = pytest.importorskip("pandas")
from thinp.experiments.overcommit import overcommit  # noqa: E402

SMALL = dict(pool="1G", write_per_container="32M", containers=40, image="16M", progress=False, plot=False)


def first(df, kind):
    hit = df[df["events"].str.split(",").apply(lambda e: kind in e)]
    return hit.iloc[0] if len(hit) else None


def test_low_water_mark_before_out_of_data_space():
    df, _ = overcommit(**SMALL, min_free_space=0)
    lwm, oods = first(df, "low_water_mark"), first(df, "out_of_data_space")
    assert lwm is not None and oods is not None
    assert lwm["container"] < oods["container"]
    nr = 1 << 30 >> 16
    # the mark is 5% of this pool's blocks: it fires once free blocks fall to it
    assert lwm["data_used_bytes"] >= (nr - nr // 20) * 65536
    prev = df[df["container"] == lwm["container"] - 1].iloc[0]
    assert prev["data_used_bytes"] < (nr - nr // 20) * 65536
    assert oods["data_pct"] == 100.0 and oods["enospc"] > 0
    assert (df[df["container"] < oods["container"]]["enospc"] == 0).all()


def test_min_free_space_refuses_at_90_percent():
    df, _ = overcommit(**SMALL)
    ref = first(df, "min_free_space")
    assert ref is not None and not ref["started"]
    assert ref["data_pct"] > 90.0
    assert "Thin Pool has" in ref["message"] and "dm.min_free_space" in ref["message"]
    before = df[df["container"] < ref["container"]]
    assert before["started"].all() and (before["data_pct"].iloc[-1] - before["data_pct"].iloc[-2]) > 0
    # every container before the refusal started under 90%
    assert before["data_pct"].iloc[-2] < 90.0
    # nothing starts after; no write ever failed
    assert not df[df["container"] >= ref["container"]]["started"].any()
    assert df["enospc"].sum() == 0 and first(df, "out_of_data_space") is None


def test_autoextend_grows_the_pool():
    df, fig = overcommit(**{**SMALL, "plot": True}, autoextend_threshold=70, autoextend_percent=20)
    assert fig is not None
    assert df["data_total_bytes"].is_monotonic_increasing
    assert df["data_total_bytes"].iloc[-1] > 1 << 30
    assert df["started"].all() and df["enospc"].sum() == 0
    ext = df[df["events"].str.contains("autoextend")]
    assert len(ext) >= 2
    # every extension grew the pool by 20% of its size then
    sizes = df["data_total_bytes"].unique()
    for a, b in zip(sizes, sizes[1:]):
        assert b == a + (a >> 16) * 20 // 100 * 65536


def test_autoextend_threshold_under_50_acts_as_50():
    df, _ = overcommit(**SMALL, autoextend_threshold=10, autoextend_percent=20)
    ext = first(df, "autoextend")
    assert ext is not None
    prev = df[df["container"] < ext["container"]]
    assert (prev["data_total_bytes"] == 1 << 30).all()
    assert prev["data_pct"].iloc[-1] < 50.0 + 32 / 1024 * 100   # not before 50%


def test_autoextend_off_at_100():
    df, _ = overcommit(**SMALL, autoextend_threshold=100)
    assert (df["data_total_bytes"] == 1 << 30).all()


def test_queue_mode_hangs_without_autoextend_and_timeout():
    df, _ = overcommit(**SMALL, min_free_space=0, no_space="queue", no_space_timeout=0)
    hang = first(df, "queued_hang")
    assert hang is not None and hang["queued"] > 0 and hang["mode"] == "out_of_data_space"
    assert df["container"].iloc[-1] == hang["container"]   # the run stops there
    assert df["enospc"].sum() == 0


def test_queue_mode_no_space_timeout_fails_the_queued_writes():
    """dm's default 60 s no_space_timeout: the container whose writes queue
    waits 60 s, its queued writes then fail with ENOSPC and the pool stays
    out of data space in error_if_no_space mode: the next containers'
    writes needing a block fail at once.  The blocks that fail are those
    error_if_no_space fails from the start; only the wait differs."""
    df, fig = overcommit(**{**SMALL, "plot": True}, min_free_space=0, no_space="queue")
    assert fig is not None
    hit = first(df, "no_space_timeout")
    assert first(df, "queued_hang") is None and len(df) == SMALL["containers"]   # the run goes on
    assert hit is not None and hit["waited_s"] == 60 and hit["enospc"] > 0 and hit["queued"] == 0
    assert hit["mode"] == "out_of_data_space" and hit["no_space"] == "error_if_no_space"
    before = df[df["container"] < hit["container"]]
    assert (before["no_space"] == "queue_if_no_space").all() and (before["enospc"] == 0).all()
    after = df[df["container"] > hit["container"]]
    assert (after["waited_s"] == 0).all() and (after["enospc"] > 0).all()   # no queueing: errors at once
    assert (after["no_space"] == "error_if_no_space").all()
    err, _ = overcommit(**SMALL, min_free_space=0, no_space="error")
    assert (err["no_space"] == "error_if_no_space").all() and (err["waited_s"] == 0).all()
    assert err["enospc"].tolist() == df["enospc"].tolist()
    short, _ = overcommit(**SMALL, min_free_space=0, no_space="queue", no_space_timeout=5)
    assert first(short, "no_space_timeout")["waited_s"] == 5


def test_no_space_timeout_then_churn_queues_again():
    """Removed containers give blocks back: the pool leaves out-of-data-space
    and the table's queue_if_no_space returns."""
    df, _ = overcommit(**{**SMALL, "containers": 40}, min_free_space=0, no_space="queue", lifetime=34)
    hit = first(df, "no_space_timeout")
    assert hit is not None and hit["container"] < 34
    back = df[df["events"].str.contains("removed")]
    assert len(back) == 6
    assert (back["mode"] == "rw").all() and (back["no_space"] == "queue_if_no_space").all()
    assert (back["enospc"] == 0).all() and back["started"].all()


def test_no_space_timeout_rejects_a_negative_value():
    with pytest.raises(ValueError, match="no_space_timeout"):
        overcommit(**SMALL, no_space="queue", no_space_timeout=-1)


def test_queue_mode_with_autoextend_runs_the_queue():
    df, _ = overcommit(**SMALL, min_free_space=0, no_space="queue", autoextend_threshold=90, autoextend_percent=10)
    assert first(df, "queued_hang") is None and (df["queued"] == 0).all()
    assert df["started"].all()


def test_churn_without_discard_keeps_host_space():
    df, _ = overcommit(**SMALL, lifetime=5, discard="ignore")
    assert df["started"].all()                       # the pool itself gets its blocks back on delete
    assert df["host_bytes"].is_monotonic_increasing  # the loop file never shrinks
    assert df["host_bytes"].iloc[-1] > 2 * df["data_used_bytes"].iloc[-1]
    df2, _ = overcommit(**SMALL, lifetime=5, discard="nopassdown", fstrim_after_delete=True)
    assert df2["host_bytes"].is_monotonic_increasing


def test_churn_with_discard_and_fstrim_returns_space():
    df, _ = overcommit(**SMALL, lifetime=5, discard="passdown", fstrim_after_delete=True)
    assert df["started"].all()
    # every removed container's blocks leave the loop file: it holds only what the pool maps
    assert (df["host_bytes"] == df["data_used_bytes"]).all()
    assert df["host_bytes"].iloc[-1] == df["host_bytes"].iloc[5]   # steady once churn starts
    keep, _ = overcommit(**SMALL, lifetime=5, discard="ignore")
    assert keep["host_bytes"].iloc[-1] > 2 * df["host_bytes"].iloc[-1]


def test_overcommit_ratio_and_mapped_vs_virtual():
    df, _ = overcommit(**SMALL)
    live = df["live"]
    assert (df["virtual_bytes"] == (1 + 2 * live) * (10 << 30)).all()
    assert np.allclose(df["overcommit_ratio"], df["virtual_bytes"] / df["data_total_bytes"])
    assert (df["mapped_bytes"] <= df["data_total_bytes"]).all()
    assert df["meta_pct"].is_monotonic_increasing and (df["meta_pct"] > 0).all()


def test_union_drivers_on_a_plain_disk():
    df, fig = overcommit(**{**SMALL, "plot": True, "image": "64M"}, driver=["devicemapper", "overlay2", "vfs"])
    assert set(df["driver"]) == {"devicemapper", "overlay2", "vfs"}
    assert fig is not None
    out = {d: first(g, "out_of_data_space") for d, g in df.groupby("driver")}
    # vfs copies the image per container, so it runs out first; overlay2 nearly fills the disk
    assert out["vfs"]["container"] < out["overlay2"]["container"]
    assert out["devicemapper"] is None                       # devicemapper refuses at 90% instead
    assert df[df.driver == "overlay2"]["data_pct"].max() > 95


def test_bad_arguments():
    with pytest.raises(ValueError):
        overcommit(**SMALL, discard="sometimes")
    with pytest.raises(ValueError):
        overcommit(**SMALL, driver="floppy")
    with pytest.raises(ValueError):
        overcommit(**{**SMALL, "containers": 1}, block_size="3k")


def test_figure_shows_the_host_file_only_when_it_keeps_freed_space():
    import matplotlib.pyplot as plt

    def labels(**kw):
        _, fig = overcommit(**{**SMALL, "plot": True}, lifetime=5, **kw)
        ax = fig.get_axes()[0]
        out = [line.get_label() for line in ax.get_lines()]
        assert "1 GiB pool" in ax.get_title() and "lifetime 5" in ax.get_title()
        plt.close(fig)
        return out

    kept = labels(discard="ignore")
    assert "devicemapper loop file on the host (% of pool)" in kept
    returned = labels(discard="passdown", fstrim_after_delete=True)
    assert not any("host" in x for x in returned) and "devicemapper Data%" in returned


def test_out_of_metadata_space_is_an_event_of_its_own():
    """A zeroing pool with a tiny metadata device runs out of it: dm's
    PM_OUT_OF_METADATA_SPACE, ``ro`` without needs_check; the container's
    writes needing a new block fail with EIO (``eio``), its others run, and
    the run stops there."""
    df, _ = overcommit(**SMALL, min_free_space=0, metadata_size="512K", zeroing=True)
    hit = first(df, "out_of_metadata_space")
    assert hit is not None and first(df, "metadata_failure") is None
    assert hit["mode"] == "ro" and not hit["needs_check"] and hit["eio"] > 0
    assert hit["meta_pct"] == 100.0   # the reserve counts as used
    assert df["container"].iloc[-1] == hit["container"]


def test_out_of_metadata_space_without_zeroing_is_a_metadata_failure():
    """Docker's pool (skip_block_zeroing): at the reserve commit dm inserts
    the triggering block's mapping at once into metadata now read-only, so
    metadata_operation_failed sets needs_check: ``metadata_failure``."""
    df, _ = overcommit(**SMALL, min_free_space=0, metadata_size="512K")
    hit = first(df, "metadata_failure")
    assert hit is not None and first(df, "out_of_metadata_space") is None
    assert hit["mode"] == "ro" and hit["needs_check"]
    assert df["container"].iloc[-1] == hit["container"]
    before = df[df["container"] < hit["container"]]
    assert len(before) > 2 and (before["eio"] == 0).all() and (before["mode"] == "rw").all()
    assert not before["needs_check"].any()


def test_a_metadata_failure_is_told_apart_from_running_out():
    """A metadata device so small that dm's commit at the reserve itself
    fails: metadata_operation_failed, needs_check set."""
    df, _ = overcommit(**SMALL, min_free_space=0, metadata_size="256K")
    hit = first(df, "metadata_failure")
    assert hit is not None and first(df, "out_of_metadata_space") is None
    assert hit["mode"] == "ro" and hit["needs_check"]
    assert df["container"].iloc[-1] == hit["container"]

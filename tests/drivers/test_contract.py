"""Every registered driver (plus the reference oracle) against the contract.

The bodies live in :mod:`tests.drivers.contract`; this file only lists them,
parametrised over :func:`contract.driver_names` so each driver that lands is
tested without touching this file."""
from __future__ import annotations

import pytest

from thinp.drivers import get_driver, known_drivers
from thinp.errors import NotSupportedError

from . import contract

DRIVERS = contract.driver_names()


@pytest.fixture(params=DRIVERS)
def make(request, tmp_path):
    made = []

    def _make(payload=True, **options):
        root = tmp_path / f"{request.param}-{len(made)}"
        root.mkdir()
        d = contract.make_driver(request.param, root, payload=payload, **options)
        made.append(d)
        return d

    yield _make
    for d in made:
        d.cleanup()


def test_stats_keys(make):
    contract.stats_keys(make)


def test_create_remove(make):
    contract.create_remove(make)


def test_apply_diff_view(make):
    contract.apply_diff_view(make)


def test_snapshot_chain(make):
    contract.snapshot_chain(make)


def test_diff_roundtrip(make):
    contract.diff_roundtrip(make)


def test_changes_docker_semantics(make):
    contract.changes_docker_semantics(make)


def test_whiteouts(make):
    contract.whiteouts(make)


def test_opaque_dirs(make):
    contract.opaque_dirs(make)


def test_hardlinks(make):
    contract.hardlinks(make)


def test_symlinks(make):
    contract.symlinks(make)


def test_rename_and_exdev(make):
    contract.rename(make)


def test_deep_chain(make):
    contract.deep_chain(make)


def test_remove_in_use_refused(make):
    contract.remove_in_use(make)


def test_get_put_refcount(make):
    contract.get_put_refcount(make)


def test_errnos(make):
    contract.errnos(make)


def test_metadata_ops(make):
    contract.metadata_ops(make)


def test_usage_and_counters(make):
    contract.usage_and_counters(make)


def test_stat_only_changes(make):
    contract.stat_only_changes(make)


def test_accounting_content(make):
    contract.accounting_content(make)


def test_page_cache_sharing(make):
    contract.page_cache_sharing(make)


# ------------------------------------------------------------------ registry
def test_unknown_driver_lists_the_known_ones():
    with pytest.raises(NotSupportedError) as info:
        get_driver("floppy")
    assert "floppy" in str(info.value)
    for name in known_drivers():
        assert name in str(info.value)
    assert "reference" not in known_drivers()
    assert "reference" in known_drivers(hidden=True)


def test_reference_limit_raises_too_many_layers(tmp_path):
    """The reference with ``max_layers`` exercises the limit path of the contract."""
    contract.deep_chain(lambda payload=True, **kw: get_driver(
        "reference", tmp_path, payload=payload, max_layers=12))


def test_changes_disagree_rules_for_upper_walks():
    """The comparison union drivers are held to, on rows as overlay2 reports them."""
    from thinp.drivers import Capabilities, Change as C

    ref = get_driver("reference", None, payload=True)
    contract.load_base(ref)
    ref.create("c", "L0", read_write=True)
    v = ref.get("c")
    for name in v.listdir("/var/lib/d"):
        v.unlink("/var/lib/d/" + name)
    v.rmdir("/var/lib/d")
    v.mkdir("/var/lib/d")
    v.write("/var/lib/d/new", 0, b"n")
    v.write("/etc/passwd", 0, b"R")
    want = ref.changes("c", "L0")
    assert C("/var/lib/d/a", "D") in want and C("/var/lib/d", "C") in want
    upper = Capabilities(changes="upper")
    overlay_rows = [C("/etc", "C"), C("/etc/motd", "C"), C("/etc/passwd", "C"),
                    C("/var/lib/d", "D"), C("/var/lib/d/new", "A")]
    assert contract.changes_disagree(overlay_rows, want, upper, v) == []
    assert contract.changes_disagree(overlay_rows, want, Capabilities(), v)   # naive: exact
    missing = [r for r in overlay_rows if r.path != "/etc/passwd"]
    assert contract.changes_disagree(missing, want, upper, v) == ["missing C /etc/passwd"]
    extra = overlay_rows + [C("/etc/motd", "D")]
    assert contract.changes_disagree(extra, want, upper, v) == ["extra D /etc/motd"]
    no_del = [r for r in overlay_rows if r.kind != "D"]
    assert "missing D /var/lib/d/a" in contract.changes_disagree(no_del, want, upper, v)

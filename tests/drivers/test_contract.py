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
        d = get_driver(request.param, root, payload=payload, **options)
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


def test_accounting_content(make):
    contract.accounting_content(make)


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

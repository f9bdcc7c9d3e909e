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


#: The contract's behaviours: each body in :mod:`tests.drivers.contract`
#: asserts what every driver must do (metric keys, create/remove, diff,
#: whiteouts, hard links, EXDEV, refcounts, errnos, page-cache sharing...).
BODIES = [
    "stats_keys", "create_remove", "apply_diff_view", "snapshot_chain", "diff_roundtrip",
    "changes_docker_semantics", "whiteouts", "apply_mtimes_and_same_layer_whiteouts", "opaque_dirs", "hardlinks", "symlinks", "rename", "deep_chain",
    "layer_bookkeeping", "remove_in_use", "get_put_refcount", "errnos", "metadata_ops", "usage_and_counters",
    "stat_only_changes", "accounting_content", "page_cache_sharing"
]


@pytest.mark.parametrize("body", BODIES)
def test_contract(make, body):
    made = contract.run_body(body, make)     # the body's own asserts, then the invariants
    assert all(d.name for d in made)


def test_every_contract_body_is_run():
    import inspect

    bodies = {n for n, f in inspect.getmembers(contract, inspect.isfunction)
              if f.__module__ == contract.__name__ and list(inspect.signature(f).parameters)[:1] == ["make"]}
    assert bodies - {"load_base", "run_body"} <= set(BODIES), sorted(bodies - set(BODIES))
    assert len(BODIES) == len(set(BODIES)) == 22


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

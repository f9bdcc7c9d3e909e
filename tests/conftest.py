"""Shared test configuration: where the real-world fixtures live, and --slow."""
from __future__ import annotations

import pathlib

import pytest

from thinp.validate.fixtures import fixtures_dir

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: ``../shared/fixtures`` beside the checkout, or ``$THINP_FIXTURES`` (CI's smoke run tests the
#: installed package from a copy of ``tests/`` outside the source tree, and points here)
FIXTURES = fixtures_dir()


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="run the long versions of the tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs, selected with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long run: use --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """``../shared/fixtures`` beside the project; skip when it is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real-data fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def slow(request) -> bool:
    return bool(request.config.getoption("--slow"))


@pytest.fixture(autouse=True)
def _no_compile_notice(monkeypatch):
    """In-process ``thinp.cli.main`` calls keep stderr to what the test
    checks: whether numba compiled first depends on the cache, not on the
    test (tests/cli/test_compile_notice.py checks the notice itself)."""
    import contextlib

    import thinp.jitnotice

    monkeypatch.setattr(thinp.jitnotice, "announce_compiles", lambda stream=None: contextlib.nullcontext())

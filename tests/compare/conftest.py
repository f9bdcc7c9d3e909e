from __future__ import annotations

import pytest

from thinp.workloads import run

#: the built-in scenarios behind the README's findings, shrunk (containers,
#: repetitions and sizes) so the suite stays quick; the findings hold at
#: these scales as at 1.0
SCALES = {"webapp": 0.1, "read-heavy": 0.5, "big-file-update": 0.05}

_CACHE: dict = {}


@pytest.fixture(scope="session")
def results():
    """``results(scenario, driver)`` -> thinp.workloads.run's RunResult for a
    built-in scenario at :data:`SCALES`, run once per session."""
    def get(scenario, driver):
        key = (scenario, driver)
        if key not in _CACHE:
            _CACHE[key] = run(scenario, driver, scale=SCALES[scenario])
            assert _CACHE[key].error is None, _CACHE[key].error
        return _CACHE[key]
    return get

"""Test-wide settings.

Hypothesis' per-example deadline (200 ms by default) is a timed assertion: on a loaded machine
(CI, or two cores shared by several jobs) a correct example takes longer and the test fails as
"flaky". Speed is measured in bench/, never asserted in tests, so the deadline is off
everywhere; max_examples stays whatever each test sets.

Tests marked ``guest`` (they fetch Debian kernels with apt-get download and boot them) run only
when asked for by name: ``pytest -m guest``.  Any other run -- CI's ``pytest -q``, ``-m "not
slow"``, ``-m slow`` -- deselects them, and pytest's summary counts them as deselected.
"""

import pytest
from hypothesis import settings

settings.register_profile("vbproto", deadline=None)
settings.load_profile("vbproto")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "guest" in (config.option.markexpr or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("guest") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

"""The application domain's tests run on both event loops.

A module with ``pytestmark = pytest.mark.anyio`` runs each async test once under asyncio and
once under Trio through AnyIO's pytest plugin (it ships with AnyIO, a core dependency: no new
test dependency). pytest-trio's ``trio_mode`` marks every async test for Trio; for the
``anyio``-marked ones that mark is taken off again, so AnyIO alone runs them.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]

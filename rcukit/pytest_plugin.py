"""pytest fixtures for testing code against rcukit (registered through ``pytest11``).

Install ``rcukit[pytest]`` (it brings pytest-trio, which runs the Trio fixtures). Nothing else
is needed in your project: no ``trio_mode``, no marks. A test that uses a Trio fixture of this
plugin (``sim_kernel``, ``rcu_domain``) is marked ``trio`` for you; a test that uses
``asyncio_rcu_domain`` runs under asyncio through AnyIO's pytest plugin (AnyIO is a dependency
of rcukit).

* ``sim_kernel`` boots a simulated kernel on pytest-trio's autojump clock; override its config
  with ``@pytest.mark.kernel_config(nr_cpus=8, prove_raw_lock_nesting=True)``. With
  ``@pytest.mark.no_splats`` the test fails at teardown if the kernel printed any splat or bug
  report (the ``no_splats(kernel)`` fixture checks at a point of your choosing).
* ``rcu_domain`` is an open application RCU domain (``rcukit.open_domain(debug=True)``) on
  Trio's real clock, so misuse (``synchronize_rcu()`` inside a read section, an unlock from
  another task, ``RcuPointer.dereference()`` outside a section) raises at once. It is closed
  after the test, which runs the barriers: errors raised by callbacks or release functions fail
  the test there, and so does a read section the test left open. ``asyncio_rcu_domain`` is
  the same under ``asyncio``.
  ``@pytest.mark.rcu_domain(max_pending=100, ...)`` passes keywords to ``open_domain``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, boot

trio_fixture: Callable[[Callable[..., Any]], Any] | None
try:
    from pytest_trio import trio_fixture  # type: ignore[import-untyped,no-redef]
except ImportError:  # pragma: no cover - rcukit installed without its pytest extra
    trio_fixture = None

#: The fixtures that need pytest-trio (a test using one is a Trio test), and the asyncio one.
TRIO_FIXTURES = ("sim_kernel", "rcu_domain")
ASYNCIO_FIXTURE = "asyncio_rcu_domain"


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "kernel_config(**fields): KernelConfig overrides for the sim_kernel fixture",
        "no_splats: fail the test at teardown if its sim_kernel reported any splat",
        "rcu_domain(**kwargs): open_domain() keywords for the rcu_domain fixtures",
    ):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of ``asyncio_rcu_domain`` runs once, under asyncio (AnyIO's ``anyio_backend``)."""
    if ASYNCIO_FIXTURE in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("anyio_backend", ["asyncio"]))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the async tests that use a Trio fixture ``trio`` (pytest-trio then runs them and
    their fixtures without ``trio_mode``); take the mark off tests of the asyncio fixture,
    which AnyIO runs, in projects that do set ``trio_mode``."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        names = item.fixturenames
        if ASYNCIO_FIXTURE in names:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
            continue
        if not any(n in names for n in TRIO_FIXTURES):
            continue
        if trio_fixture is None:
            raise pytest.UsageError(
                f"{item.nodeid} uses rcukit's Trio fixtures, which need pytest-trio: "
                "pip install 'rcukit[pytest]'"
            )
        if inspect.iscoroutinefunction(item.obj) and item.get_closest_marker("trio") is None:
            item.add_marker(pytest.mark.trio)


def _trio_fixture(fn: Callable[..., Any]) -> Any:
    """pytest-trio's ``trio_fixture`` (a Trio fixture whatever ``trio_mode`` says)."""
    return pytest.fixture(fn) if trio_fixture is None else trio_fixture(fn)


@pytest.fixture
def kernel_config(request: pytest.FixtureRequest) -> KernelConfig:
    """The config ``sim_kernel`` boots: defaults plus the ``kernel_config`` marker's fields."""
    marker = request.node.get_closest_marker("kernel_config")
    overrides: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return KernelConfig().replace(**overrides) if overrides else KernelConfig()


@_trio_fixture
async def sim_kernel(
    kernel_config: KernelConfig, autojump_clock: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Kernel]:
    """A booted simulated kernel; spawn tasks with ``kernel.spawn`` and ``await kernel.run()``.

    With ``@pytest.mark.no_splats`` the test fails at teardown on any splat.
    """
    async with boot(kernel_config) as kernel:
        yield kernel
        if request.node.get_closest_marker("no_splats") is not None:
            assert_no_splats(kernel)


def assert_no_splats(kernel: Kernel) -> None:
    """Fail with the first report's kernel-format text if the kernel reported any: a lock
    splat, or a bug report (WARNING, KASAN, bad page) that the kernel survived but that left it
    tainted, as rcutorture's console check fails a log with a BUG or WARNING in it."""
    if kernel.locks.splats:
        first = kernel.locks.splats[0]
        counts = {k: v for k, v in kernel.splat_counts().items() if v}
        pytest.fail(f"kernel reported splats {counts}; first:\n{first.format()}", pytrace=False)
    reports = kernel.panic.reports
    if reports:
        kinds = {r.kind for r in reports}
        pytest.fail(
            f"kernel printed {len(reports)} bug report(s) {sorted(kinds)}, tainted "
            f"{kernel.panic.taint!r}; first:\n{reports[0].text}",
            pytrace=False,
        )


@pytest.fixture
def no_splats() -> Callable[[Kernel], None]:
    """``no_splats(kernel)`` fails the test on any splat."""
    return assert_no_splats


def _domain_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("rcu_domain")
    kwargs: dict[str, Any] = {"debug": True}
    if marker is not None:
        kwargs.update(marker.kwargs)
    return kwargs


def _no_section_left_open(rcu: Any) -> None:
    """Fail a test that left a read section open.

    With nothing queued the domain closes without waiting for readers, so a forgotten
    ``rcu_read_unlock()`` (a ``read_lock().__enter__()`` without its exit) passed silently.
    """
    held = rcu.statistics().readers
    if held:
        pytest.fail(
            f"the test left {held} RCU read section(s) open: a read_lock() entered and never "
            "left (use `with rcu.read_lock():`)",
            pytrace=False,
        )


@_trio_fixture
async def rcu_domain(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """An open ``rcukit.RcuDomain`` (``debug=True``) under Trio, on the real clock."""
    from rcukit.app import open_domain

    async with open_domain(**_domain_kwargs(request)) as rcu:
        yield rcu
    _no_section_left_open(rcu)


@pytest.fixture
async def asyncio_rcu_domain(
    anyio_backend: Any, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    """An open ``rcukit.RcuDomain`` (``debug=True``) under asyncio (run by AnyIO's plugin)."""
    from rcukit.app import open_domain

    async with open_domain(**_domain_kwargs(request)) as rcu:
        yield rcu
    _no_section_left_open(rcu)

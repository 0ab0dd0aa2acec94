"""pytest fixtures for testing code against rcukit (registered through ``pytest11``).

``sim_kernel`` boots a simulated kernel on pytest-trio's autojump clock; override its config
with ``@pytest.mark.kernel_config(nr_cpus=8, prove_raw_lock_nesting=True)``. ``no_splats``
fails the test if the kernel printed any splat.

``rcu_domain`` is an open application RCU domain (``rcukit.open_domain(debug=True)``) on Trio's
real clock, so misuse (``synchronize_rcu()`` inside a read section, an unlock from another task,
``RcuPointer.dereference()`` outside a section) raises at once. It is closed after the test,
which runs the barriers: errors raised by callbacks or release functions fail the test there.
Example::

    async def test_retire(rcu_domain):
        pool = rcukit.ObjectPool(bytearray, debug=True)
        ptr = rcukit.RcuPointer(rcu_domain, pool.alloc())
        rcu_domain.kvfree_rcu(ptr.assign(pool.alloc()), release=pool)
        await rcu_domain.kvfree_rcu_barrier()
        assert pool.statistics().in_use == 1
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, boot


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kernel_config(**fields): KernelConfig overrides for the sim_kernel fixture"
    )


@pytest.fixture
def kernel_config(request: pytest.FixtureRequest) -> KernelConfig:
    """The config ``sim_kernel`` boots: defaults plus the ``kernel_config`` marker's fields."""
    marker = request.node.get_closest_marker("kernel_config")
    overrides: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return KernelConfig().replace(**overrides) if overrides else KernelConfig()


@pytest.fixture
async def sim_kernel(kernel_config: KernelConfig, autojump_clock: Any) -> AsyncIterator[Kernel]:
    """A booted simulated kernel; spawn tasks with ``kernel.spawn`` and ``await kernel.run()``."""
    async with boot(kernel_config) as kernel:
        yield kernel


def assert_no_splats(kernel: Kernel) -> None:
    """Fail with the first splat's kernel-format text if the kernel reported any."""
    if kernel.locks.splats:
        first = kernel.locks.splats[0]
        counts = {k: v for k, v in kernel.splat_counts().items() if v}
        pytest.fail(f"kernel reported splats {counts}; first:\n{first.format()}", pytrace=False)


@pytest.fixture
def no_splats() -> Callable[[Kernel], None]:
    """``no_splats(kernel)`` fails the test on any splat."""
    return assert_no_splats


@pytest.fixture
async def rcu_domain() -> AsyncIterator[Any]:
    """An open ``rcukit.app.RcuDomain`` with ``debug=True`` on the real clock (see above)."""
    from rcukit.app import open_domain

    async with open_domain(debug=True) as rcu:
        yield rcu

"""The ``rcu_domain`` pytest fixture (rcukit's pytest11 plugin)."""

from __future__ import annotations

import pytest

import rcukit
from rcukit.app import RcuDomain
from rcukit.errors import RcuUsageError

pytest_plugins = ["pytester"]


async def test_rcu_domain_fixture_is_an_open_debug_domain(rcu_domain: RcuDomain) -> None:
    assert isinstance(rcu_domain, RcuDomain)
    assert rcu_domain.debug and not rcu_domain.closed
    pool = rcukit.ObjectPool(bytearray, debug=True)
    ptr = rcukit.RcuPointer(rcu_domain, pool.alloc())
    rcu_domain.kvfree_rcu(ptr.assign(pool.alloc()), release=pool)
    await rcu_domain.kvfree_rcu_barrier()
    assert pool.statistics().in_use == 1
    with rcu_domain.read_lock(), pytest.raises(RcuUsageError, match="deadlock"):
        await rcu_domain.synchronize_rcu()


def test_a_user_test_using_the_fixture_fails_on_callback_errors(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        """
        async def test_ok(rcu_domain):
            got = []
            rcu_domain.call_rcu(got.append, 1)
            await rcu_domain.rcu_barrier()
            assert got == [1]

        async def test_bad_callback(rcu_domain):
            rcu_domain.call_rcu(int, "not a number")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)  # pytest-trio reports fixture exits as failures
    result.stdout.fnmatch_lines(["*ValueError*invalid literal*"])


async def test_asyncio_rcu_domain_runs_under_asyncio_in_a_trio_mode_project(
    asyncio_rcu_domain: RcuDomain,
) -> None:
    """This project sets ``trio_mode``; the plugin takes the ``trio`` mark off a test of the
    asyncio fixture, so AnyIO runs it under asyncio."""
    import sniffio

    assert sniffio.current_async_library() == "asyncio"
    assert asyncio_rcu_domain.event_loop == "asyncio" and asyncio_rcu_domain.debug
    got: list[int] = []
    asyncio_rcu_domain.call_rcu(got.append, 1)
    await asyncio_rcu_domain.rcu_barrier()
    assert got == [1]

"""Opening and closing a domain: barriers at exit, cancellation, leaks, misuse after close."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from apptools import SpyPool

from rcukit.app import DomainConfig, open_domain
from rcukit.app.callbacks import Callbacks
from rcukit.errors import ConfigError, RcuClosedError, RcuLeakError

pytestmark = pytest.mark.anyio



async def test_leaving_the_block_releases_everything_without_waiting_for_the_drain() -> None:
    spy = SpyPool()
    ran: list[int] = []
    t0 = anyio.current_time()
    async with open_domain(release=spy, drain_delay=None) as rcu:  # the kernel's 5 s drain
        for i in range(1500):
            rcu.kvfree_rcu(i)
            rcu.call_rcu(ran.append, i)
    assert anyio.current_time() - t0 < 2.0  # the barriers, not the drain timer
    assert len(spy.freed) == 1500 and len(ran) == 1500
    s = rcu.statistics()
    assert s.closed and s.kvfree_pending == 0 and s.callbacks_pending == 0


async def test_use_after_close_is_a_clear_error() -> None:
    async with open_domain() as rcu:
        pass
    with pytest.raises(RcuClosedError, match="closed RCU domain"):
        rcu.kvfree_rcu(object())
    with pytest.raises(RcuClosedError, match="closed RCU domain"):
        rcu.call_rcu(print)
    with pytest.raises(RcuClosedError):
        await rcu.call_rcu_wait(print)
    with pytest.raises(RcuClosedError):
        await rcu.kvfree_rcu_wait(object())
    with pytest.raises(RcuClosedError):
        rcu.kvfree_queue()
    assert rcu.statistics().closed


async def test_cancelled_from_outside_frees_everything_and_leaves_nothing_running() -> None:
    spy = SpyPool()
    ran: list[int] = []
    with anyio.CancelScope() as cs:
        async with open_domain(release=spy) as rcu, anyio.create_task_group() as n:

            async def busy_reader() -> None:
                while True:
                    with rcu.read_lock():
                        await anyio.lowlevel.checkpoint()

            n.start_soon(busy_reader)
            for i in range(700):
                rcu.kvfree_rcu(i)
                rcu.call_rcu(ran.append, i)
            cs.cancel()
            await anyio.sleep_forever()
    assert cs.cancelled_caught
    assert len(spy.freed) == 700 and len(ran) == 700
    s = rcu.statistics()
    assert s.closed and s.readers == 0 and s.kvfree_pending == 0 and s.callbacks_pending == 0
    with pytest.raises(RcuClosedError):
        rcu.call_rcu(print)


async def test_readers_that_never_leave_turn_a_cancelled_close_into_a_leak_report() -> None:
    spy = SpyPool()
    async with anyio.create_task_group() as outer:
        holding = anyio.Event()
        leak = pytest.RaisesGroup(pytest.RaisesExc(RcuLeakError, match="were not released"))
        with leak, anyio.CancelScope() as cs:
            async with open_domain(release=spy, close_timeout=0.05, debug=True) as rcu:

                async def stuck_reader() -> None:
                    with rcu.read_lock():
                        holding.set()
                        await anyio.sleep_forever()

                outer.start_soon(stuck_reader)  # outside the cancelled scope
                await holding.wait()
                rcu.kvfree_rcu(object())
                rcu.call_rcu(print)
                cs.cancel()
                await anyio.sleep_forever()
        assert spy.freed == []  # a reader may still use them: reported, not freed
        s = rcu.statistics()
        assert s.closed and s.kvfree_pending == 0 and s.callbacks_pending == 0
        outer.cancel_scope.cancel()


async def test_leak_reports_name_the_stuck_section_and_go_to_on_error() -> None:
    seen: list[Exception] = []
    async with anyio.create_task_group() as outer:
        holding = anyio.Event()
        with anyio.CancelScope() as cs:
            async with open_domain(on_error=seen.append, close_timeout=0.02, debug=True) as rcu:

                async def stuck_reader() -> None:
                    with rcu.read_lock():
                        holding.set()
                        await anyio.sleep_forever()

                outer.start_soon(stuck_reader)
                await holding.wait()
                rcu.kvfree_rcu(object())
                cs.cancel()
                await anyio.sleep_forever()
        outer.cancel_scope.cancel()
    assert len(seen) == 1 and isinstance(seen[0], RcuLeakError)
    assert "test_app_lifecycle.py" in str(seen[0])  # debug mode names the section's site


async def test_an_exception_in_the_body_still_releases_what_was_queued() -> None:
    spy = SpyPool()
    with pytest.raises(KeyError):
        async with open_domain(release=spy) as rcu:
            rcu.kvfree_rcu(1)
            raise KeyError("body")
    assert spy.freed == [1]


async def test_body_exception_and_callback_errors_are_raised_together() -> None:
    def bad() -> None:
        raise ValueError("cb")

    with pytest.RaisesGroup(KeyError, ValueError):
        async with open_domain() as rcu:
            rcu.call_rcu(bad)
            raise KeyError("body")


@pytest.mark.parametrize("anyio_backend", ["trio"])  # a Trio nursery, and its child_tasks
async def test_tasks_can_live_in_the_callers_nursery() -> None:
    async with trio.open_nursery() as n:
        async with open_domain(nursery=n) as rcu:
            assert len(n.child_tasks) == 2
            await rcu.synchronize_rcu()
        assert len(n.child_tasks) == 0  # stopped on exit


@pytest.mark.parametrize("anyio_backend", ["trio"])  # a Trio nursery, and its child_tasks
async def test_cancelling_the_callers_nursery_does_not_kill_an_open_domain() -> None:
    """The background tasks belong to the domain's lifetime, not to the nursery's scope."""
    async with trio.open_nursery() as outer:

        async def hold(task_status: trio.TaskStatus[trio.Nursery]) -> None:
            async with trio.open_nursery() as inner:
                task_status.started(inner)
                await trio.sleep_forever()

        inner: trio.Nursery = await outer.start(hold)
        spy = SpyPool()
        async with open_domain(nursery=inner, release=spy) as rcu:
            inner.cancel_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            await rcu.synchronize_rcu()
            rcu.kvfree_rcu(1)
        assert spy.freed == [1]
        assert len(inner.child_tasks) == 0


async def test_a_crashed_background_task_fails_waiters_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: Callbacks) -> None:
        raise RuntimeError("bug in the callback task")

    spy = SpyPool()
    seen: list[BaseException] = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_domain(release=spy) as rcu:
            monkeypatch.setattr(Callbacks, "_rcu_core", broken)
            rcu.kvfree_rcu(1)
            rcu.call_rcu(lambda: None)
            try:
                await rcu.rcu_barrier()
            except RcuClosedError as exc:
                seen.append(exc)
                raise
    crash, _ = info.value.split(RuntimeError)
    assert crash is not None
    assert seen and "task has stopped" in str(seen[0])
    assert spy.freed == [1]  # the close still released it, inline
    assert rcu.statistics().closed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_pending", 0),
        ("profile", "v9.9"),
        ("drain_delay", -1),
        ("kick_delay", float("inf")),
        ("page_size", 1000),
        ("release", 42),
        ("on_error", "log"),
        ("initial_gp_seq", 5),
        ("debug", "yes"),
        # a GP waiting "longer than 0 s" warned in a loop: 2000 log lines in 0.2 s
        ("stall_timeout", 0),
        ("stall_timeout", -1),
    ],
)
async def test_bad_configuration_is_refused(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises((ConfigError, TypeError)):
        DomainConfig(**kwargs)
    with pytest.raises((ConfigError, TypeError)):
        async with open_domain(**kwargs):
            pass  # pragma: no cover


async def test_tasks_can_live_in_the_callers_task_group() -> None:
    """``nursery=`` takes an AnyIO task group on either loop."""
    async with anyio.create_task_group() as tg:
        async with open_domain(nursery=tg) as rcu:
            await rcu.synchronize_rcu()
            rcu.call_rcu(len, "x")
        assert rcu.closed and rcu.statistics().callbacks_pending == 0


async def test_exit_error_group_names_the_body_and_counts_only_the_domain_errors() -> None:
    """A body that raises while a read section leaks: the group holds the body's error and the
    close's RcuLeakError, and its message neither calls the leak a callback error nor counts the
    body among the domain's errors."""
    with pytest.raises(BaseExceptionGroup) as info:
        async with open_domain(close_timeout=0.05) as rcu:
            rcu.read_lock().__enter__()  # a reader that never leaves
            rcu.kvfree_rcu(1, release=lambda obj: None)
            raise ValueError("bug in the body")
    group = info.value
    assert [type(e) for e in group.exceptions] == [ValueError, RcuLeakError]
    assert group.message == (
        "the async with body raised ValueError, and the RCU domain reported 1 more error(s) "
        "(see each one's note)"
    )
    assert "callbacks or release functions" not in group.message
    assert "reported by the closing RCU domain" in getattr(group.exceptions[1], "__notes__", [])


async def test_exit_error_group_without_a_body_error_counts_what_the_domain_reported() -> None:
    """Only the domain's own errors (a release function that raised): the count is theirs."""

    def bad(obj: object) -> None:
        raise KeyError(obj)

    with pytest.raises(ExceptionGroup) as info:
        async with open_domain() as rcu:
            rcu.kvfree_rcu(1, release=bad)
            rcu.kvfree_rcu(2, release=bad)
    assert info.value.message == "2 error(s) reported by the RCU domain (see each one's note)"
    assert [type(e) for e in info.value.exceptions] == [KeyError, KeyError]


@pytest.mark.parametrize("nursery", [42, "tg", object()])
async def test_a_nursery_that_is_not_one_is_refused_by_name(nursery: object) -> None:
    """``open_domain(nursery=42)`` failed deep inside with "'int' object has no attribute
    'start'"; it names the keyword and what it takes."""
    with pytest.raises(ConfigError, match=r"nursery = .*: expected an AnyIO task group or a "
                       r"Trio nursery"):
        async with open_domain(nursery=nursery):
            pass  # pragma: no cover
